"""End to end on the real demo rasters: shards -> 2-process DeepSpeed EP=2 training -> consolidate -> HF export.

The demo runs once per session (the CLI, as a user runs it); the tests then inspect what it wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ringmoe.core.errors import CheckpointError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
STEPS = 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ringmoe.cli.main", "demo", "--output", str(out), "--steps", str(STEPS)],
        capture_output=True,
        text=True,
        timeout=1100,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def meta_dir(out: Path) -> Path:
    return out / "train" / "checkpoints" / f"global_step{STEPS}"


def test_two_process_ep2_training_lowers_the_loss(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    losses = [json.loads(line)["loss/total"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    meta = json.loads((out / "train" / "checkpoints" / f"global_step{STEPS}" / "ringmoe_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["expert_parallel_size"] == 2
    # Each rank's loader position is in the checkpoint: STEPS batches handed out, rank-specific.
    states = [json.loads(p.read_text()) for p in sorted(meta_dir(out).glob("data_state_rank*.json"))]
    assert [(s["batches"], s["rank"], s["world_size"]) for s in states] == [(STEPS, 0, 2), (STEPS, 1, 2)]
    assert "== summary" in stdout and "loss: first" in stdout


def test_training_metrics_and_router_heatmap(demo: tuple[Path, str]) -> None:
    from PIL import Image

    out, _ = demo
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    for name in ("throughput/tokens_per_s", "throughput/tflops_per_device", "router/max_imbalance",
                 "router/dropped_fraction", "accounting/device_hours", "accounting/energy_kwh", "grad_norm",
                 "loss_scale", "lr"):  # fmt: skip
        assert all(name in row for row in rows), name
    # 8 samples x 256 patch tokens on each of 2 ranks per step.
    assert rows[0]["throughput/tokens_per_s"] == pytest.approx(rows[0]["throughput/samples_per_s"] * 256)
    hours = [row["accounting/device_hours"] for row in rows]
    assert hours == sorted(hours) and hours[-1] > 0
    assert rows[-1]["accounting/energy_kwh"] == pytest.approx(hours[-1] * 0.7)  # 700 W per device
    load = json.loads((meta_dir(out) / "router_load.json").read_text())
    assert len(load["routers"]) == 20 and all(abs(sum(row) - 1) < 1e-9 for row in load["share"])
    # Every routed token was counted once: per step, each router of the 2 ranks routes its modality's tokens.
    assert sum(load["tokens"][load["routers"].index("stages.0.blocks.0.ffn.collab")]) == STEPS * 2 * 8 * 256
    with Image.open(meta_dir(out) / "router_load.png") as image:
        assert image.format == "PNG" and image.size[1] == 20 * 12 + 1


def test_each_modality_and_physical_target_loss_falls(demo: tuple[Path, str]) -> None:
    """The physics-informed objective on all four real modalities: every term is logged and goes down."""
    out, stdout = demo
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    expected = {
        "loss/optical",
        "loss/multispectral",
        "loss/multispectral/ndvi",
        "loss/multispectral/ndwi",
        "loss/sar_amplitude",
        "loss/sar_complex",
        "loss/sar_complex/span",
        "loss/sar_complex/pauli",
    }
    assert expected <= set(rows[0]), sorted(rows[0])
    for name in expected:
        values = [row[name] for row in rows]
        assert sum(values[-5:]) / 5 < sum(values[:5]) / 5, (name, values)
        assert f"    {name.removeprefix('loss/')}" in stdout


def test_hf_export_reproduces_the_checkpoint(demo: tuple[Path, str]) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    from ringmoe.config.schema import DataConfig, ModelConfig
    from ringmoe.core.structured import from_dict
    from ringmoe.data.stream import ShardStream
    from ringmoe.models.factory import build_model

    out, _ = demo
    config = from_dict(ModelConfig, json.loads((out / "consolidated" / "ringmoe_model.json").read_text()), "test")
    reference = build_model(config)
    reference.load_state_dict(load_file(str(out / "consolidated" / "model.safetensors")))
    exported = AutoModel.from_pretrained(str(out / "hf"), trust_remote_code=True)
    batch = next(iter(ShardStream(DataConfig(shards=str(out / "shards"), seed=7))))
    with torch.no_grad():
        expected = reference.eval().encoder(batch).features
        actual = exported.eval()(pixel_values=batch.images).last_hidden_state
    # The same code on the same weights in aligned memory (the export's shards are laid out aligned): bitwise.
    assert torch.equal(actual, expected)
    card = (out / "hf" / "README.md").read_text()
    assert "sentinel1_grd" in card and "capella_quadpol" in card


def test_demo_prunes_to_half_the_experts_and_exports_that_too(demo: tuple[Path, str]) -> None:
    from transformers import AutoModel

    from ringmoe.checkpoint.consolidate import load_consolidated_model
    from ringmoe.config.schema import DataConfig
    from ringmoe.data.stream import ShardStream

    out, stdout = demo
    plan = json.loads((out / "pruned" / "prune_plan.json").read_text())
    assert plan["pruned_model"]["modal_experts"] == [2, 2] and plan["pruned_model"]["collab_experts"] == [2, 2]
    parameters = plan["encoder_parameters"]
    assert parameters["pruned"] < 0.75 * parameters["source"]
    retention = json.loads((out / "pruned" / "retention.json").read_text())["retention"]
    assert 0.5 < retention["loss/total"] < 1.2
    reference, _ = load_consolidated_model(out / "pruned")
    exported = AutoModel.from_pretrained(str(out / "hf_pruned"), trust_remote_code=True)
    assert exported.config.modal_experts == [2, 2]
    batch = next(iter(ShardStream(DataConfig(shards=str(out / "shards"), seed=3))))
    with torch.no_grad():
        expected = reference.eval().encoder(batch).features
        actual = exported.eval()(pixel_values=batch.images).last_hidden_state
    assert torch.equal(actual, expected)
    assert "pruned: encoder" in stdout and "retention" in stdout


def _copy_checkpoint(demo: tuple[Path, str], tmp_path: Path) -> Path:
    source = demo[0] / "train" / "checkpoints" / f"global_step{STEPS}"
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def test_consolidate_names_a_missing_expert_file(demo: tuple[Path, str], tmp_path: Path) -> None:
    from ringmoe.checkpoint.consolidate import consolidate

    checkpoint = _copy_checkpoint(demo, tmp_path)
    (checkpoint / "layer_3_expert_1_mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointError, match="expert"):
        consolidate(checkpoint, tmp_path / "out")


def test_consolidate_names_a_truncated_file(demo: tuple[Path, str], tmp_path: Path) -> None:
    from ringmoe.checkpoint.consolidate import consolidate

    checkpoint = _copy_checkpoint(demo, tmp_path)
    victim = checkpoint / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        consolidate(checkpoint, tmp_path / "out")


def test_consolidated_experts_are_the_trained_ones(demo: tuple[Path, str]) -> None:
    """Each expert of the consolidated dict equals the file DeepSpeed wrote for it (global index mapping)."""
    from ringmoe.checkpoint.safetensors_io import read_sharded

    out, _ = demo
    state = read_sharded(out / "consolidated")
    checkpoint = out / "train" / "checkpoints" / f"global_step{STEPS}"
    expert_file = torch.load(checkpoint / "layer_0_expert_3_mp_rank_00_model_states.pt", weights_only=True)
    for key, tensor in expert_file.items():
        mapped = key.replace("moe.deepspeed_moe.experts.deepspeed_experts.", "experts.")
        assert torch.equal(state[mapped], tensor), key


def test_demo_scores_trained_pruned_and_reference_encoders(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    rows = json.loads((out / "eval" / "results.json").read_text())["results"]
    encoders = {r["encoder"] for r in rows}
    assert encoders == {
        "consolidated consolidated", "huggingface hf", "consolidated pruned", "huggingface hf_pruned",
        "random init (tiny, seed 0)", "pixel statistics (64 px)",
    }  # fmt: skip
    # Cross-validated sets: 3 folds; the EuroSAT subset: its fixed test split (folds 0, a bootstrap interval).
    assert all(r["n"] > 0 and r["folds"] == (0 if r["task"].startswith("EuroSAT") else 3) for r in rows)
    assert all(r["std"] >= 0 for r in rows)

    def scores(encoder: str) -> list[tuple]:
        return [(r["task"], r["metric"], r["mean"], r["std"]) for r in rows if r["encoder"] == encoder]

    assert scores("consolidated consolidated") == scores("huggingface hf")  # identical, not close
    assert scores("consolidated pruned") == scores("huggingface hf_pruned")
    assert scores("consolidated consolidated") != scores("consolidated pruned")
    assert "HF export vs checkpoint scores: max |diff| = 0.0e+00" in stdout
    assert (out / "eval" / "plots" / "consolidated_pruned" / "sensors_pca.png").is_file()  # t-SNE off in demo.yaml


def test_demo_scores_eurosat_on_its_fixed_split(demo: tuple[Path, str]) -> None:
    """Linear probe and kNN on the in-repo EuroSAT subset: every encoder scored on the 200 test images with a
    bootstrap interval, chance 0.1 for 10 balanced classes; no claim about which encoder scores higher."""
    out, stdout = demo
    rows = json.loads((out / "eval" / "results.json").read_text())["results"]
    encoders = {r["encoder"] for r in rows}
    eurosat = [r for r in rows if r["task"].startswith("EuroSAT RGB (") and r["metric"] == "accuracy"]
    for probe in ("linear probe", "kNN"):
        task = f"EuroSAT RGB ({probe}, 100% labels, 200 train)"
        scored = [r for r in eurosat if r["task"] == task]
        assert {r["encoder"] for r in scored} == encoders, task
        for r in scored:
            assert r["n"] == 200 and r["folds"] == 0 and r["chance"] == pytest.approx(0.1)
            assert 0.0 <= r["mean"] <= 1.0 and 0.0 <= r["low"] <= r["high"] <= 1.0, r
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("  EuroSAT RGB (10 classes"))
    assert "200 train / 200 test images" in lines[header] and "chance 0.100" in lines[header]
    table = lines[header + 2 : header + 6]
    for label, line in zip(("trained", "pruned", "random init", "pixels"), table, strict=True):
        assert line.startswith(f"    EuroSAT RGB {label} "), table
        intervals = re.findall(r"(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", line)
        assert len(intervals) == 2, line  # linear probe, kNN
        for score, low, high in intervals:
            assert 0.0 <= float(score) <= 1.0 and 0.0 <= float(low) <= float(high) <= 1.0, line
    # trained minus random init / pixels, paired intervals (printed when the report carries them): any sign.
    for line in lines[header + 6 : header + 8]:
        if line.startswith("    EuroSAT RGB trained - "):
            intervals = re.findall(r"([+-]\d\.\d{3}) \[([+-]\d\.\d{3}), ([+-]\d\.\d{3})\]", line)
            assert len(intervals) == 2 and all(-1.0 <= float(v) <= 1.0 for i in intervals for v in i), line
