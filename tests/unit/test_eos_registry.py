"""Ensemble-of-Specialists building blocks: the registry keeps added specialists byte-identical and refuses a
changed one; the combiner attends only over the specialists a sample has."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ringmoe.core.errors import CheckpointError
from ringmoe.models.convnextv2 import convnextv2
from ringmoe.recipes.eos.combiner import Combiner
from ringmoe.recipes.eos.registry import REGISTRY_NAME, SpecialistRegistry


def test_adding_a_specialist_leaves_the_others_byte_identical(tmp_path):
    registry = SpecialistRegistry(tmp_path)
    torch.manual_seed(0)
    registry.add("s2", convnextv2("atto", 4), "sentinel2_l2a", "multispectral", "masked-modelling", "atto")
    before = registry.checksums()
    torch.manual_seed(1)
    record = SpecialistRegistry(tmp_path).add(
        "s1", convnextv2("atto", 3), "sentinel1_grd", "sar_amplitude", "mim", "atto"
    )
    reopened = SpecialistRegistry(tmp_path)
    assert reopened.checksums()["s2"] == before["s2"] and set(reopened.records) == {"s1", "s2"}
    assert record.parameters == sum(p.numel() for p in convnextv2("atto", 3).parameters())
    loaded = reopened.load("s2")
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    with pytest.raises(CheckpointError, match="specialist 's2' exists"):
        reopened.add("s2", convnextv2("atto", 4), "x", "multispectral", "mim", "atto")


def test_a_changed_or_missing_specialist_is_refused(tmp_path):
    registry = SpecialistRegistry(tmp_path)
    registry.add("s2", convnextv2("atto", 4), "sentinel2_l2a", "multispectral", "mim", "atto")
    weights = tmp_path / "s2.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="s2.safetensors: missing or its sha256 differs"):
        SpecialistRegistry(tmp_path).load("s2")
    (tmp_path / REGISTRY_NAME).write_text('{"format_version": 9}')
    with pytest.raises(CheckpointError, match="not a specialist registry"):
        SpecialistRegistry(tmp_path)


def test_combiner_masks_absent_specialists():
    torch.manual_seed(0)
    combiner = Combiner({"s2": 320, "s1": 160}, dim=32)
    s2, s1 = torch.randn(3, 320), torch.randn(3, 160)
    present = {"s2": torch.tensor([True, True, False]), "s1": torch.tensor([True, False, True])}
    out, weights = combiner({"s2": s2, "s1": s1}, present)
    assert out.shape == (3, 32)
    assert weights[1, 1] == 0 and weights[2, 0] == 0 and torch.allclose(weights.sum(dim=1), torch.ones(3))
    # What a sample does not have cannot change its representation.
    other, _ = combiner({"s2": s2, "s1": s1 + 5.0 * torch.tensor([[0.0], [1.0], [0.0]])}, present)
    assert torch.equal(other[1], out[1])
    only_s2, _ = combiner({"s2": s2})
    assert only_s2.shape == (3, 32)


def test_specialist_masked_pretraining_learns_real_tiles_and_repeats():
    from ringmoe.eval.datasets import ADAPTERS
    from ringmoe.models.convnextv2 import ConvNeXtV2
    from ringmoe.recipes.eos.pretrain import pretrain_specialist, random_masks
    from tests.unit.test_eval_harness import EOLEARN

    mask = random_masks(2, 32, 8, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (2, 1, 32, 32) and mask.mean(dim=(1, 2, 3)).tolist() == [0.5, 0.5]
    tiles = ADAPTERS["eolearn_lulc"](EOLEARN, kind="segmentation", tile=32).images  # 27 real L1C tiles

    def run() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        encoder = ConvNeXtV2(4, (1, 1, 1, 1), (16, 32, 64, 128))
        return pretrain_specialist(encoder, tiles, steps=20, batch_size=4), encoder.stem[0].weight.detach()

    losses, weights = run()
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    again, weights_again = run()
    assert again == losses and torch.equal(weights, weights_again)  # deterministic for a seed


def test_ablation_path_drops_the_cheapest_specialist_first():
    from ringmoe.recipes.eos.ablation import ablation_path

    value = {"s2": 0.5, "s1": 0.3, "rgb": 0.05}  # an additive toy score: each specialist's contribution

    def score(kept):
        return sum(value[n] for n in kept)

    path = ablation_path(["s2", "s1", "rgb"], {"s2": 10, "s1": 8, "rgb": 3}, score)
    assert [(p.removed, p.kept, p.parameters) for p in path] == [
        ("", ("rgb", "s1", "s2"), 21), ("rgb", ("s1", "s2"), 18), ("s1", ("s2",), 10),
    ]  # fmt: skip
    assert [round(p.score, 2) for p in path] == [0.85, 0.8, 0.5]


def _fit_result(arrays, examples, owns, client):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    metrics = {"client": client, "owns": owns}
    return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)


def test_ownership_fedavg_averages_a_projection_only_over_its_owners():
    from flwr.common import parameters_to_ndarrays

    from ringmoe.federated.server import OwnershipFedAvg

    strategy = OwnershipFedAvg([None, "s2", "s1"])
    shared_a, shared_b = np.array([1.0, 1.0]), np.array([4.0, 4.0])
    results = [
        _fit_result([shared_a, np.array([10.0]), np.array([0.0])], 1, "s2", "b"),  # trained s2's projection only
        _fit_result([shared_b, np.array([0.0]), np.array([20.0])], 3, "s1", "a"),
    ]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    shared, s2, s1 = parameters_to_ndarrays(parameters)
    assert shared.tolist() == [3.25, 3.25]  # (1 * 1 + 3 * 4) / 4, over everyone
    assert s2.tolist() == [10.0] and s1.tolist() == [20.0]  # each over its owner only
    assert [m["metrics"]["client"] for m in strategy.boundary] == ["a", "b"]  # by name, not by arrival


def test_fedavg_is_the_same_whatever_order_the_clients_reply_in():
    """Float sums depend on order: replies are taken by client name, so racing clients give one model."""
    from flwr.common import parameters_to_ndarrays

    from ringmoe.federated.server import OwnershipFedAvg

    generator = np.random.default_rng(0)
    examples = {"s2": 16, "s1": 16, "l1c": 72}  # eos_tiny's clients: weights 2/13, 2/13, 9/13
    results = [
        _fit_result([generator.standard_normal(35_000).astype(np.float32)], n, None, name)
        for name, n in examples.items()
    ]
    orders = list(itertools.permutations(range(3)))
    averages = []
    for order in orders:
        parameters, _ = OwnershipFedAvg([None]).aggregate_fit(1, [results[i] for i in order], [])
        averages.append(parameters_to_ndarrays(parameters)[0])
    assert all(np.array_equal(averages[0], other) for other in averages[1:])
    # The same weighted float64 sum taken in arrival order differs in float32's last bits: what this guards.
    total = sum(examples.values())

    def in_arrival_order(order):
        terms = [(parameters_to_ndarrays(results[i][1].parameters)[0], results[i][1].num_examples) for i in order]
        return sum(a.astype(np.float64) * (n / total) for a, n in terms).astype(np.float32)

    assert any(not np.array_equal(in_arrival_order(orders[0]), in_arrival_order(order)) for order in orders[1:])
    nameless = [_fit_result([np.zeros(1)], 1, None, "a")]
    del nameless[0][1].metrics["client"]
    with pytest.raises(RuntimeError, match="without its 'client' name"):
        OwnershipFedAvg([None]).aggregate_fit(1, nameless, [])


def test_fedprox_keeps_a_client_closer_to_the_global_combiner():
    """The proximal term: with a large mu the locally trained combiner moves less from the global one."""
    from ringmoe.config.federated import ClientConfig, FederatedConfig
    from ringmoe.federated.client import SpecialistClient, build_combiner, get_state

    config = FederatedConfig(clients=[ClientConfig(name="a", specialist="sa"), ClientConfig(name="b", specialist="sb")])
    start = get_state(build_combiner(config))

    def moved(mu: float) -> float:
        client = object.__new__(SpecialistClient)  # the fit step alone, on fixed features (no files needed)
        client.client, client.config = config.clients[0], FederatedConfig(**{**config.__dict__, "proximal_mu": mu})
        generator = torch.Generator().manual_seed(0)
        client.train_x = torch.randn(16, 320, generator=generator)
        client.train_y = (client.train_x[:, 0] > 0).float()
        client.combiner = build_combiner(config)
        arrays, examples, metrics = client.fit(start, {})
        assert examples == 16 and metrics["owns"] == "sa"
        return float(sum(np.abs(a - b).sum() for a, b in zip(arrays, start)))

    assert moved(10.0) < moved(0.0)


def test_combiner_files_and_client_names_are_checked(tmp_path):
    """One loader for init_combiner and held-out scoring: a missing file, a tensor of another shape or name is a
    named error; an unknown client name is a config error, not a StopIteration."""
    from safetensors.torch import save_file

    from ringmoe.config.federated import ClientConfig, FederatedConfig
    from ringmoe.core.errors import ConfigError
    from ringmoe.federated.client import build_combiner, find_client, load_combiner_file

    config = FederatedConfig(clients=[ClientConfig(name="a", specialist="sa"), ClientConfig(name="b", specialist="sb")])
    combiner = build_combiner(config)
    with pytest.raises(CheckpointError, match="combiner file not found"):
        load_combiner_file(combiner, tmp_path / "missing.safetensors")
    partial = {k: torch.full_like(v, 0.5) for k, v in combiner.state_dict().items() if k.startswith("project.sa")}
    save_file(partial, tmp_path / "partial.safetensors")
    fresh = load_combiner_file(combiner, tmp_path / "partial.safetensors")
    assert fresh and not any(k.startswith("project.sa") for k in fresh)
    assert all(torch.equal(combiner.state_dict()[k], v) for k, v in partial.items())
    save_file({"query": torch.zeros(3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong.safetensors: tensors \['query'\] do not fit"):
        load_combiner_file(combiner, tmp_path / "wrong.safetensors")
    assert find_client(config, "b").specialist == "sb"
    with pytest.raises(ConfigError, match="'c' is not in the config's clients"):
        find_client(config, "c")
