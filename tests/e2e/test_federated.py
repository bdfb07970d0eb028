"""Ensemble-of-Specialists over a real Flower runtime: a server and three client processes over localhost, each
client with its own real imagery (Sentinel-2 L2A, Sentinel-1 GRD, Sentinel-2 L1C) and its own frozen
specialist. The held-out loss falls over the rounds, and what crossed the Flower boundary is only the
combiner's parameters and scalar metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ringmoe.config.federated import load_federated_config
from ringmoe.federated.client import build_combiner
from ringmoe.recipes.eos.registry import SpecialistRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(900)]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "eos_tiny.yaml"


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eos")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ringmoe.cli.main", "federated", "--config", str(CONFIG), f"output_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=800, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 8: held-out loss" in result.stdout
    return out


def test_the_aggregated_combiner_improves_on_held_out_places(federation: Path) -> None:
    history = json.loads((federation / "history.json").read_text())
    assert [row["round"] for row in history] == list(range(1, 9))
    assert set(history[0]["per_client"]) == {"s2", "s1", "l1c"}
    losses = [row["loss"] for row in history]
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2, losses


def test_only_parameters_and_scalars_cross_the_flower_boundary(federation: Path) -> None:
    config = load_federated_config(CONFIG)
    combiner = [(list(t.shape), str(t.numpy().dtype)) for t in build_combiner(config).state_dict().values()]
    combiner_bytes = sum(t.numel() * t.element_size() for t in build_combiner(config).state_dict().values())
    boundary = json.loads((federation / "boundary.json").read_text())
    fits = [m for m in boundary if m["kind"] == "fit"]
    evaluations = [m for m in boundary if m["kind"] == "evaluate"]
    assert len(fits) == len(evaluations) == 8 * 3
    for message in fits:
        assert [a[:2] for a in message["arrays"]] == [[s, d] for s, d in combiner]  # the combiner, nothing else
        assert sum(a[2] for a in message["arrays"]) == combiner_bytes
        assert set(message["metrics"]) == {"client", "owns", "loss"}
        assert not any(len(shape) >= 3 and shape[-2:] == [64, 64] for shape, _, _ in message["arrays"])  # no tile
    for message in evaluations:
        assert message["arrays"] == [] and set(message["metrics"]) == {"accuracy", "client"}
    # A client's imagery is far larger than anything it sent in a round.
    assert combiner_bytes < 12 * 3 * 64 * 64 * 4


def test_each_client_keeps_its_own_checksummed_specialist(federation: Path) -> None:
    from ringmoe.models.convnextv2 import convnextv2

    for client, specialist, channels in (("s2", "s2_l2a_atto", 4), ("s1", "s1_grd_atto", 3), ("l1c", "s2_l1c_atto", 4)):
        registry = SpecialistRegistry(federation / "clients" / client / "specialists")
        assert set(registry.records) == {specialist}
        record = registry.records[specialist]
        assert registry.checksums()[specialist] == record.sha256 and record.in_chans == channels
        assert record.parameters == sum(p.numel() for p in convnextv2("atto", channels).parameters())
        assert not any(p.requires_grad for p in registry.load(specialist).parameters())
    assert np.isfinite(json.loads((federation / "history.json").read_text())[-1]["accuracy"])


def test_simulation_mode_gives_the_same_federation(federation: Path, tmp_path: Path) -> None:
    """Flower's Ray simulation of the same config: the same rounds, losses and accuracies as the processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "ringmoe.cli.main", "federated", "--simulation", "--config", str(CONFIG),
        f"output_dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    simulated = json.loads((tmp_path / "history.json").read_text())
    processes = json.loads((federation / "history.json").read_text())
    assert [(r["round"], r["loss"], r["accuracy"]) for r in simulated] == [
        (r["round"], r["loss"], r["accuracy"]) for r in processes
    ]


def _federate(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ringmoe.cli.main", "federated", "--config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_adding_a_specialist_keeps_the_others_byte_identical_and_serves_the_new_sensor(tmp_path: Path) -> None:
    """A federation of the S2 L2A and S1 clients, then the L1C client joins with a specialist of its own: only
    that specialist and the combiner train; the others are byte-identical; on the new sensor's held-out places
    the ensemble does at least as well as before, when the L2A specialist had to serve L1C imagery."""
    import shutil

    from ringmoe.federated.evaluate import score_on_client

    base = yaml.safe_load(CONFIG.read_text())
    for client in base["clients"]:
        client["root"] = str((CONFIG.parent / client["root"]).resolve())
    out = tmp_path / "eos"
    first = {**base, "clients": base["clients"][:2], "output_dir": str(out), "address": "127.0.0.1:18091"}
    _federate(first, tmp_path / "first.yaml")
    registries = {c: out / "clients" / c / "specialists" for c in ("s2", "s1", "l1c")}
    before_sums = {c: SpecialistRegistry(registries[c]).checksums() for c in ("s2", "s1")}
    shutil.copy(out / "combiner.safetensors", tmp_path / "combiner_first.safetensors")

    joined = {**base, "output_dir": str(out), "address": "127.0.0.1:18091"}
    joined["init_combiner"] = str(tmp_path / "combiner_first.safetensors")
    _federate(joined, tmp_path / "joined.yaml")
    assert {c: SpecialistRegistry(registries[c]).checksums() for c in ("s2", "s1")} == before_sums

    config = load_federated_config(tmp_path / "joined.yaml")
    before = score_on_client(
        config, tmp_path, "l1c", tmp_path / "combiner_first.safetensors", "s2_l2a_atto", registries["s2"]
    )
    after = score_on_client(config, tmp_path, "l1c", out / "combiner.safetensors", "s2_l1c_atto", registries["l1c"])
    assert after["n"] == before["n"] > 0
    assert after["loss"] <= before["loss"] and after["accuracy"] >= before["accuracy"], (before, after)


def test_export_loads_with_transformers_and_reproduces_the_ensemble(federation: Path, tmp_path: Path) -> None:
    """Specialists as plain ``ConvNextV2Model`` (no remote code), the combiner with ``trust_remote_code``: the
    exported ensemble gives the federation's output on a client's held-out tiles."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, ConvNextV2Model

    from ringmoe.cli.main import main
    from ringmoe.federated.data import client_data

    config = load_federated_config(CONFIG, [f"output_dir={federation}"])
    assert main(["export-eos", str(tmp_path / "hf"), "--config", str(CONFIG), f"output_dir={federation}"]) == 0
    client = config.clients[0]  # s2
    data = client_data(client, CONFIG.parent, config.input_size, config.held_out, config.seed)
    ours = SpecialistRegistry(federation / "clients" / client.name / "specialists").load(client.specialist)
    combiner = build_combiner(config)
    combiner.load_state_dict(load_file(federation / "combiner.safetensors"))
    exported = ConvNextV2Model.from_pretrained(str(tmp_path / "hf" / client.specialist)).eval()
    exported_combiner = AutoModel.from_pretrained(str(tmp_path / "hf" / "combiner"), trust_remote_code=True).eval()
    assert (
        exported.config.specialist["sha256"]
        == SpecialistRegistry(federation / "clients" / client.name / "specialists").records[client.specialist].sha256
    )
    with torch.no_grad():
        features, hf_features = ours(data.test_images), exported(pixel_values=data.test_images).pooler_output
        expected = combiner.eval()({client.specialist: features})[0]
        actual = exported_combiner({client.specialist: hf_features})[0]
    # transformers computes the GRN norm with linalg.vector_norm: equal up to float rounding, not bitwise.
    assert torch.allclose(hf_features, features, atol=1e-5)
    assert torch.allclose(actual, expected, atol=1e-5)
    assert torch.equal(exported_combiner({client.specialist: features})[0], expected)  # the combiner itself: bitwise


def test_evaluation_harness_scores_ensemble_single_and_pruned(federation: Path, tmp_path: Path) -> None:
    import logging

    from ringmoe.cli.main import main
    from ringmoe.config.evaluation import load_eval_config
    from ringmoe.eval.ablation import ablation
    from ringmoe.eval.run import evaluate

    logging.getLogger("ringmoe").setLevel(logging.ERROR)
    hf = tmp_path / "hf"
    assert main(["export-eos", str(hf), "--config", str(CONFIG), f"output_dir={federation}"]) == 0
    eval_config = CONFIG.parents[1] / "eval" / "demo.yaml"
    encoders = (
        f"encoders=[ensemble:{hf},ensemble:{hf}@s2_l1c_atto,specialist:{hf}/s2_l2a_atto,specialist:{hf}/s1_grd_atto]"
    )
    config = load_eval_config(eval_config, [encoders, f"output_dir={tmp_path / 'eval'}", "plots=false"])
    report = evaluate(config, eval_config.parent)
    scores = {(r.encoder, r.task, r.metric): r.mean for r in report.results}
    scene = ("eo-learn LULC scene (16 px) (linear probe)", "balanced accuracy")
    assert {e for e, *_ in scores} == {
        "ensemble hf", "ensemble hf without s2_l1c_atto", "specialist s2_l2a_atto", "specialist s1_grd_atto"
    }  # fmt: skip
    assert scores[("ensemble hf", *scene)] != scores[("ensemble hf without s2_l1c_atto", *scene)]
    assert any("specialist s1_grd_atto has no input for modality 'multispectral'" in n for n in report.notes)
    # Dense tasks see the specialists' stage maps and the combiner at every position, not one constant per image.
    dense = [r for r in report.results if r.encoder == "ensemble hf" and r.metric in ("mIoU", "F1 (changed)")]
    assert len(dense) == 2 and all(r.mean > r.chance + 0.1 for r in dense), dense
    path = ablation(hf, config, eval_config.parent)
    assert [len(step.kept) for step in path] == [3, 2, 1]
    assert [step.parameters for step in path] == sorted((step.parameters for step in path), reverse=True)
    assert path[1].removed and path[2].removed and all(0 < step.score < 1 for step in path)
