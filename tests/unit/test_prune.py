"""Expert pruning on the tiny model (random weights, one process): calibration statistics against the model's own
router statistics, plans per strategy, the streamed rewrite against an in-memory reference, expert merging."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ringmoe.checkpoint.consolidate import MODEL_CONFIG_NAME, load_consolidated_model
from ringmoe.checkpoint.safetensors_io import write_sharded
from ringmoe.config.schema import ModelConfig, PruneConfig, RunConfig
from ringmoe.core.errors import CheckpointError, ConfigError
from ringmoe.core.files import atomic_write_json
from ringmoe.core.structured import to_dict
from ringmoe.models.factory import build_model
from ringmoe.prune.apply import apply_plan
from ringmoe.prune.calibrate import (
    ExpertUsage,
    RouterUsage,
    RoutingReport,
    calibrate,
    parse_router_name,
    routed_experts,
)
from ringmoe.prune.merge import align_hidden, merge_experts
from ringmoe.prune.plan import make_plan
from ringmoe.prune.run import fine_tune_config
from tests.tolerances import assert_close_up_to_rounding, loss_rtol
from tests.unit.test_model import batch_for

CONFIG = ModelConfig(capacity_factor=1.0, min_capacity=1)  # tight capacity: some tokens are dropped


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build_model(CONFIG, seed=0).eval()


@pytest.fixture(scope="module")
def report(model) -> RoutingReport:
    return calibrate(model, [batch_for(CONFIG, seed=s) for s in range(3)])


def write_consolidated(model: nn.Module, config: ModelConfig, directory: Path) -> Path:
    write_sharded({k: v.contiguous() for k, v in model.state_dict().items()}, directory, {"format": "test"}, 2**20)
    atomic_write_json(directory / MODEL_CONFIG_NAME, to_dict(config))
    return directory


def test_calibration_counts_match_the_models_router_stats(model, report):
    batches = [batch_for(CONFIG, seed=s) for s in range(3)]
    tokens, gate_mass = {}, {}
    with torch.no_grad():
        for batch in batches:
            for stat in model(batch)[1].router_stats:
                tokens[stat.name] = tokens.get(stat.name, 0) + stat.tokens.double()
                gate_mass[stat.name] = gate_mass.get(stat.name, 0) + stat.gate_mass.double()
    assert set(report.routers) == set(tokens) and len(tokens) == sum(CONFIG.depths) * 5
    for name, router in report.routers.items():
        total = router.total()
        assert torch.equal(total.tokens, tokens[name]), name
        torch.testing.assert_close(total.gate_mass, gate_mass[name])
        assert torch.all(total.kept <= total.tokens)
        # Every token's probability row sums to 1: affinity rows add up to the tokens each expert was chosen by.
        torch.testing.assert_close(total.affinity.sum(dim=1), total.tokens)
    # Calibration runs the model in eval mode, as it is deployed: dropless, every routed token is kept even
    # under this config's tight training capacity.
    assert all(torch.equal(r.total().kept, r.total().tokens) for r in report.routers.values())
    assert report.samples == {m: 6 for m in CONFIG.in_chans}


def test_contribution_is_the_gate_weighted_output_norm_split_by_modality(model, report):
    """Recompute one collaborative router's contribution per modality by calling it directly."""
    router = routed_experts(model)["stages.0.blocks.0.ffn.collab"]
    captured = []
    handle = router.register_forward_hook(lambda m, args, out: captured.append((args[0], out[0])))
    with torch.no_grad():
        for seed in range(3):
            model(batch_for(CONFIG, seed=seed))
    handle.remove()
    per_sample = (CONFIG.img_size // CONFIG.patch_size) ** 2
    usage = report.routers["stages.0.blocks.0.ffn.collab"].by_modality
    for index, modality in enumerate(CONFIG.in_chans):  # stacked in canonical order, 2 samples each
        expected = torch.zeros(router.num_experts, dtype=torch.float64)
        for tokens, routed in captured:
            rows = slice(index * 2 * per_sample, (index + 1) * 2 * per_sample)
            logits = torch.nn.functional.linear(tokens[rows], router.gate.weight)
            expected.index_add_(0, logits.argmax(dim=1), routed[rows].double().norm(dim=-1))
        torch.testing.assert_close(usage[modality].contribution, expected)


def test_an_absent_modality_records_nothing(model):
    batch = batch_for(CONFIG)
    del batch.images["optical"]
    report = calibrate(model, [batch])
    assert report.routers["stages.0.blocks.0.ffn.modal.optical"].by_modality == {}
    assert "optical" not in report.routers["stages.0.blocks.0.ffn.collab"].by_modality


def test_report_json_round_trip(report, tmp_path):
    again = RoutingReport.from_dict(json.loads(json.dumps(report.to_dict())), "report.json")
    for name, router in report.routers.items():
        for modality, usage in router.by_modality.items():
            assert torch.equal(again.routers[name].by_modality[modality].contribution, usage.contribution)
    with pytest.raises(CheckpointError, match="bad.json: not a routing report"):
        RoutingReport.from_dict({"format": "other"}, "bad.json")
    with pytest.raises(CheckpointError, match="list.json: not a routing report"):
        RoutingReport.from_dict([], "list.json")
    truncated = report.to_dict()
    del truncated["routers"][0]["by_modality"]
    with pytest.raises(CheckpointError, match="cut.json: routing report is incomplete or malformed .KeyError"):
        RoutingReport.from_dict(truncated, "cut.json")


def _reference_pruned(model: nn.Module, plan) -> nn.Module:
    """The pruned model made by editing modules in memory (no tensor names involved)."""
    reference = copy.deepcopy(model)
    for name, decision in plan.routers.items():
        router = routed_experts(reference)[name]
        if not decision.keep:
            stage, block, kind, modality = parse_router_name(name)
            ffn = reference.encoder.stages[stage].blocks[block].ffn
            if kind == "collab":
                ffn.collab = None
            else:
                del ffn.modal[modality]
            continue
        router.gate.weight = nn.Parameter(router.gate.weight.detach()[decision.keep])
        router.experts = nn.ModuleList(router.experts[i] for i in decision.keep)
        router.num_experts = len(decision.keep)
    return reference


def _forward(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    masks = {m: (torch.rand(t.shape[0], 16, 16, generator=generator) < 0.5).float() for m, t in batch.images.items()}
    with torch.no_grad():
        reconstructions, output = model.eval()(batch, masks)
    return {**reconstructions, "features": output.features}


@pytest.mark.parametrize("strategy", ["global", "modality_aware", "random"])
def test_streamed_pruning_equals_editing_the_model(model, report, tmp_path, strategy):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    prune = PruneConfig(strategy=strategy, modal_experts=[2, 1], collab_experts=[3, 2], seed=1)
    plan = make_plan(report, CONFIG, prune)
    apply_plan(plan, source, tmp_path / "pruned", max_shard_bytes=50_000)  # several output shards
    pruned, config = load_consolidated_model(tmp_path / "pruned")
    assert config.modal_experts == [2, 1] and config.collab_experts == [3, 2]
    batch = batch_for(CONFIG, seed=9)
    expected, actual = _forward(_reference_pruned(model, plan), batch), _forward(pruned, batch)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_keeping_every_expert_is_an_identical_round_trip(model, report, tmp_path):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    plan = make_plan(report, CONFIG, PruneConfig(modal_experts=[4, 4], collab_experts=[4, 4]))
    apply_plan(plan, source, tmp_path / "same")
    again, _ = load_consolidated_model(tmp_path / "same")
    original = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in again.state_dict().items())
    assert set(again.state_dict()) == set(original)


def test_deployment_modalities_drop_the_others(model, report, tmp_path):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    prune = PruneConfig(modalities=["sar_amplitude"], modal_experts=[1, 1], collab_experts=[2, 2])
    plan = make_plan(report, CONFIG, prune)
    apply_plan(plan, source, tmp_path / "sar")
    pruned, config = load_consolidated_model(tmp_path / "sar")
    assert list(config.in_chans) == ["sar_amplitude"] and list(pruned.decoders) == ["sar_amplitude"]
    assert {n for n in routed_experts(pruned)} == {
        f"stages.{s}.blocks.{b}.ffn.{kind}"
        for s in (0, 1)
        for b in (0, 1)
        for kind in ("collab", "modal.sar_amplitude")
    }
    batch = batch_for(CONFIG, seed=2)
    batch.images = {"sar_amplitude": batch.images["sar_amplitude"]}
    reference = _reference_pruned(model, plan)
    assert torch.equal(_forward(reference, batch)["sar_amplitude"], _forward(pruned, batch)["sar_amplitude"])


def test_to_dense_leaves_no_router(model, report, tmp_path):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    plan = make_plan(report, CONFIG, PruneConfig(strategy="to_dense"))
    apply_plan(plan, source, tmp_path / "dense")
    pruned, config = load_consolidated_model(tmp_path / "dense")
    assert routed_experts(pruned) == {} and config.modal_experts == [0, 0] and config.collab_experts == [0, 0]
    assert not any("gate" in name for name in pruned.state_dict())
    with pytest.raises(ConfigError, match="shared expert"):
        make_plan(report, dataclasses.replace(CONFIG, shared_expert=False), PruneConfig(strategy="to_dense"))


def _synthetic_report(favourite: dict[str, int], tokens: dict[str, float]) -> RoutingReport:
    """One collaborative router with 4 experts: each modality puts its contribution on its favourite expert."""
    by_modality = {}
    for modality, expert in favourite.items():
        contribution = torch.full((4,), 0.1, dtype=torch.float64) * tokens[modality]
        contribution[expert] = tokens[modality]
        usage = ExpertUsage.zeros(4)
        usage.contribution, usage.tokens, usage.kept = contribution, contribution.clone(), contribution.clone()
        usage.gate_mass = contribution / 2
        usage.affinity = torch.eye(4, dtype=torch.float64) + 0.5  # next choice: the lowest index kept
        usage.affinity[2, 1] = 3.0  # expert 2's tokens go to expert 1 once 2 is removed
        by_modality[modality] = usage
    router = RouterUsage("stages.0.blocks.0.ffn.collab", 0, 0, "collab", None, 4, by_modality)
    return RoutingReport(1, {m: 1 for m in favourite}, {router.name: router})


def test_modality_aware_ranks_by_each_modalitys_share_global_by_volume():
    config = ModelConfig(
        depths=[1], num_heads=[2], modal_experts=[0], collab_experts=[4], in_chans={"optical": 3, "sar_amplitude": 3}
    )
    report = _synthetic_report({"optical": 0, "sar_amplitude": 3}, {"optical": 100.0, "sar_amplitude": 1.0})
    keep = {"collab_experts": [1], "modal_experts": [0]}
    aware = make_plan(report, config, PruneConfig(modalities=["sar_amplitude"], **keep))
    assert aware.routers["stages.0.blocks.0.ffn.collab"].keep == [3]
    assert list(aware.pruned.in_chans) == ["sar_amplitude"]
    both = make_plan(report, config, PruneConfig(collab_experts=[2], modal_experts=[0]))  # equal shares: 0 and 3
    assert both.routers["stages.0.blocks.0.ffn.collab"].keep == [0, 3]
    global_plan = make_plan(report, config, PruneConfig(strategy="global", **keep))
    assert global_plan.routers["stages.0.blocks.0.ffn.collab"].keep == [0]
    assert "kept [0]" in global_plan.routers["stages.0.blocks.0.ffn.collab"].reason
    draws = {tuple(make_plan(report, config, PruneConfig(strategy="random", seed=s, **keep)).routers[
        "stages.0.blocks.0.ffn.collab"].keep) for s in range(8)}  # fmt: skip
    assert len(draws) > 1
    again = make_plan(report, config, PruneConfig(strategy="random", seed=3, **keep))
    assert (
        again.routers["stages.0.blocks.0.ffn.collab"].keep
        == make_plan(report, config, PruneConfig(strategy="random", seed=3, **keep))
        .routers["stages.0.blocks.0.ffn.collab"]
        .keep
    )


def test_merge_folds_removed_experts_into_where_their_tokens_go():
    config = ModelConfig(depths=[1], num_heads=[2], modal_experts=[0], collab_experts=[4], in_chans={"optical": 3})
    report = _synthetic_report({"optical": 0}, {"optical": 10.0})
    plan = make_plan(report, config, PruneConfig(strategy="global", collab_experts=[2], modal_experts=[0], merge=True))
    decision = plan.routers["stages.0.blocks.0.ffn.collab"]
    assert decision.keep == [0, 1]
    assert decision.merged_into == {2: 1, 3: 0}  # 2 by its affinity, 3 to the lowest index (tie)
    assert "merged 2->1, 3->0" in decision.reason


def _expert(seed: int, dim: int = 6, hidden: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(hidden, dim, generator=g),
        "fc1.bias": torch.randn(hidden, generator=g),
        "fc2.weight": torch.randn(dim, hidden, generator=g),
        "fc2.bias": torch.randn(dim, generator=g),
    }


def _apply(expert: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    hidden = torch.nn.functional.gelu(x @ expert["fc1.weight"].T + expert["fc1.bias"])
    return hidden @ expert["fc2.weight"].T + expert["fc2.bias"]


def test_alignment_undoes_a_hidden_unit_permutation_and_keeps_the_function():
    a, other = _expert(0), _expert(1)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    permuted = {"fc1.weight": a["fc1.weight"][order], "fc1.bias": a["fc1.bias"][order],
                "fc2.weight": a["fc2.weight"][:, order], "fc2.bias": a["fc2.bias"]}  # fmt: skip
    assert all(torch.equal(align_hidden(a, permuted)[k], a[k]) for k in a)
    x = torch.randn(4, 6)
    torch.testing.assert_close(_apply(align_hidden(a, other), x), _apply(other, x))
    merged = merge_experts([a, permuted], [3.0, 1.0], align=True)
    assert all(torch.allclose(merged[k], a[k]) for k in a)
    plain = merge_experts([a, other], [3.0, 1.0], align=False)
    torch.testing.assert_close(plain["fc1.weight"], 0.75 * a["fc1.weight"] + 0.25 * other["fc1.weight"])


def test_merge_streams_into_a_loadable_model(model, report, tmp_path):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    prune = PruneConfig(strategy="global", modal_experts=[2, 2], collab_experts=[1, 2], merge=True)
    plan = make_plan(report, CONFIG, prune)
    apply_plan(plan, source, tmp_path / "merged")
    pruned, _ = load_consolidated_model(tmp_path / "merged")
    name = "stages.0.blocks.0.ffn.collab"
    decision = plan.routers[name]
    members = [decision.keep[0]] + sorted(j for j, k in decision.merged_into.items() if k == decision.keep[0])
    assert len(members) == 4
    experts = [{p: v for p, v in routed_experts(model)[name].experts[m].state_dict().items()} for m in members]
    expected = merge_experts(experts, [decision.merge_weights[m] for m in members])
    got = routed_experts(pruned)[name].experts[0].state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_plan_errors_name_the_problem(report):
    with pytest.raises(ConfigError, match=r"prune.collab_experts \[5, 4\] exceeds"):
        make_plan(report, CONFIG, PruneConfig(modal_experts=[4, 4], collab_experts=[5, 4]))
    with pytest.raises(ConfigError, match="set prune.budget"):
        make_plan(report, CONFIG, PruneConfig())
    with pytest.raises(ConfigError, match=r"prune.modalities \['optical'\] are not modalities"):
        make_plan(
            report, dataclasses.replace(CONFIG, in_chans={"sar_amplitude": 3}), PruneConfig(modalities=["optical"])
        )
    with pytest.raises(ConfigError, match="no statistics for"):
        make_plan(report, dataclasses.replace(CONFIG, depths=[2, 3], modal_experts=[4, 4]), PruneConfig(budget="1M"))


def test_fine_tune_config_uses_a_layout_the_counts_allow(report):
    run = RunConfig(model=dataclasses.replace(CONFIG))  # validate() fills in derived fields
    run.parallel.expert_parallel_size = 2
    run.validate()
    plan = make_plan(
        report, run.model, PruneConfig(modal_experts=[3, 1], collab_experts=[2, 2], modalities=["optical"])
    )
    tuned = fine_tune_config(run, plan, Path("pruned"))
    assert tuned.parallel.expert_parallel_size == 1 and tuned.data.modalities == ["optical"]
    assert tuned.train.init_from == "pruned" and tuned.model.modal_experts == [3, 1]


def test_to_dense_can_fold_the_best_collaborative_expert_into_the_shared_one(model, report, tmp_path):
    source = write_consolidated(model, CONFIG, tmp_path / "source")
    plan = make_plan(report, CONFIG, PruneConfig(strategy="to_dense", dense_fold_collab=True))
    assert plan.pruned.shared_expert_multiple == [2, 2] and plan.pruned.collab_experts == [0, 0]
    apply_plan(plan, source, tmp_path / "dense")
    pruned, config = load_consolidated_model(tmp_path / "dense")
    assert routed_experts(pruned) == {}
    assert pruned.encoder.stages[1].blocks[0].ffn.shared.fc1.out_features == 2 * int(64 * CONFIG.mlp_ratio)
    # The same function as the shared expert plus a one-expert collaborative router (gate 1 for every token).
    batch = batch_for(CONFIG, seed=4)
    expected, actual = _forward(_reference_pruned(model, plan), batch), _forward(pruned, batch)
    for key in expected:  # one FFN over the concatenated hidden units sums in another order than two FFNs
        assert_close_up_to_rounding(actual[key], expected[key], loss_rtol(CONFIG), key)
    assert "folded into the shared expert" in plan.routers["stages.0.blocks.0.ffn.collab"].reason
    # The wider dense FFN travels into the HuggingFace export.
    from transformers import AutoModel

    from ringmoe.export.huggingface import export_huggingface

    export_huggingface(tmp_path / "dense", tmp_path / "hf")
    exported = AutoModel.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    assert exported.config.shared_expert_multiple == [2, 2]
    with torch.no_grad():
        assert torch.equal(exported(pixel_values=batch.images).last_hidden_state, pruned.encoder(batch).features)
