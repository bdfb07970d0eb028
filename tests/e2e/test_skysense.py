"""SkySense end to end on real places: the eo-learn Sentinel-2 time series (5 dates, 2 cloud-masked) and the
BigEarthNet S2/S1 pairs -> GeoTIFFs per date -> place shards -> 2-process DeepSpeed EP=2 training (student, EMA
teacher, routed fusion experts) -> resume -> consolidate -> HF export -> evaluation harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ringmoe.checkpoint.consolidate import consolidate, load_consolidated_model
from ringmoe.config.evaluation import load_eval_config
from ringmoe.config.schema import DataConfig
from ringmoe.data.loader import build_loader
from ringmoe.eval.run import evaluate
from ringmoe.export.huggingface import export_huggingface
from ringmoe.recipes.skysense import TERMS

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
EOLEARN = REPO / "demo_data" / "sentinel2_l1c_timeseries_eolearn"
BUILD = REPO / "configs" / "data" / "skysense_build.yaml"
RUN = REPO / "configs" / "recipes" / "skysense_tiny.yaml"
STEPS = 60


def _run(args: list[str], timeout: int = 900) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _train(shards: Path, out: Path, steps: int, *extra: str) -> None:
    _run([
        "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "ringmoe.cli.main", "train",
        "--config", str(RUN), f"data.shards={shards}", f"train.output_dir={out}", f"train.steps={steps}", *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skysense")
    _run([
        "-m", "data_pipeline.cli", "eopatch", str(EOLEARN / "REFERENCE_SCENES.npy"), str(root / "eopatch_dates"),
        "--patch", str(EOLEARN / "TestEOPatch"), "--frame-dates", "2,1,4,3,0",
        "--valid", str(EOLEARN / "TestEOPatch" / "mask" / "IS_VALID.npy"),
    ])  # fmt: skip
    # The shipped build config with its relative scene globs made absolute (the dates live in tmp here).
    config = yaml.safe_load(BUILD.read_text())
    for spec in [i for p in config["pairs"] for i in p["inputs"]] + [s["input"] for s in config["sequences"]]:
        spec["scenes"] = str((BUILD.parent / spec["scenes"]).resolve())
    config["sequences"][0]["input"]["scenes"] = str(root / "eopatch_dates" / "*.tif")
    config["out_dir"] = str(root / "shards")
    (root / "build.yaml").write_text(yaml.safe_dump(config))
    _run(["-m", "data_pipeline.cli", "build", "--config", str(root / "build.yaml")])
    return root


@pytest.fixture(scope="module")
def trained(places: Path) -> Path:
    _train(places / "shards", places / "train", STEPS, f"train.save_every={STEPS // 2}")
    return places / "train"


def _metrics(train_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def test_places_come_from_both_real_streams(places: Path) -> None:
    manifest = json.loads((places / "shards" / "manifest.json").read_text())
    streams = {name: (s["kind"], s["samples"]) for name, s in manifest["streams"].items()}
    assert streams == {"s2_s1_bigearthnet": ("pair", 54), "eopatch_l1c": ("sequence", 9)}
    config = DataConfig(
        shards=str(places / "shards"), modalities=["multispectral", "sar_amplitude"], places_per_batch=9,
        max_dates={"multispectral": 5}, source_weights={"eopatch_l1c": 1.0, "s2_s1_bigearthnet": 0.0},
    )  # fmt: skip
    batch = next(iter(build_loader(config)))
    # The two cloud-flagged dates (IS_VALID) are absent; the three clear ones are present for every tile.
    assert batch.present["multispectral"].sum(dim=1).tolist() == [3] * 9


def test_two_process_training_lowers_the_loss_and_logs_every_term(trained: Path) -> None:
    rows = _metrics(trained)
    assert len(rows) == STEPS
    for term in TERMS:
        assert all(f"loss/{term}" in row for row in rows), term

    def mean(key: str, part: slice) -> float:
        values = [row[key] for row in rows[part]]
        return sum(values) / len(values)

    assert mean("loss/total", slice(-10, None)) < 0.85 * mean("loss/total", slice(0, 10))
    falling = [t for t in TERMS if mean(f"loss/{t}", slice(-10, None)) < mean(f"loss/{t}", slice(0, 10))]
    assert len(falling) >= 4, falling
    meta = json.loads((trained / "checkpoints" / f"global_step{STEPS}" / "ringmoe_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["expert_parallel_size"] == 2


def test_prototypes_do_not_collapse(trained: Path) -> None:
    rows = _metrics(trained)
    usage = [row["prototypes/usage_entropy"] for row in rows if "prototypes/usage_entropy" in row]
    assert len(usage) >= STEPS - 5 and min(usage[-10:]) > 0.5, usage[-10:]  # log-K-normalized; collapse is 0
    assert min(row["prototypes/assignment_entropy"] for row in rows) > 0.9


def test_resume_is_bitwise_identical(places: Path, trained: Path, tmp_path: Path) -> None:
    """From the mid-run checkpoint: the same losses and, at the end, the same student, teacher, prototypes."""
    import shutil

    half = tmp_path / "half"
    name = f"global_step{STEPS // 2}"
    shutil.copytree(trained / "checkpoints" / name, half / "checkpoints" / name)
    _train(places / "shards", half, STEPS, f"train.save_every={STEPS // 2}", "--resume", "auto")
    a = consolidate(trained / "checkpoints" / f"global_step{STEPS}", tmp_path / "a")
    b = consolidate(half / "checkpoints" / f"global_step{STEPS}", tmp_path / "b")
    model_a, _ = load_consolidated_model(a)
    model_b, _ = load_consolidated_model(b)
    state_b = model_b.state_dict()
    assert all(torch.equal(t, state_b[name]) for name, t in model_a.state_dict().items())  # teacher, prototypes too
    assert [r["loss/total"] for r in _metrics(trained)][STEPS // 2 :] == [r["loss/total"] for r in _metrics(half)][
        -(STEPS // 2) :
    ]


def test_consolidate_export_and_evaluate(places: Path, trained: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    consolidated = consolidate(trained / "checkpoints" / f"global_step{STEPS}", tmp_path / "consolidated")
    hf = export_huggingface(consolidated, tmp_path / "hf")
    model, _ = load_consolidated_model(consolidated)
    exported = AutoModel.from_pretrained(str(hf), trust_remote_code=True)
    config = DataConfig(
        shards=str(places / "shards"), modalities=["multispectral", "sar_amplitude"], places_per_batch=4,
        max_dates={"multispectral": 3},
    )  # fmt: skip
    batch = next(iter(build_loader(config)))
    with torch.no_grad():
        expected = model.teacher.eval()(batch).fused
        actual = exported.eval()(
            pixel_values=batch.images, present=batch.present, days=batch.days, location=batch.location
        ).last_hidden_state
    assert torch.equal(actual, expected)
    eval_config = REPO / "configs" / "eval" / "demo.yaml"
    overrides = [f"encoders=[{consolidated},{hf}]", f"output_dir={tmp_path / 'eval'}", "plots=false"]
    report = evaluate(load_eval_config(eval_config, overrides), eval_config.parent)
    rows = {}
    for r in report.results:
        rows.setdefault(r.encoder, []).append((r.task, r.metric, r.mean, r.std))
    assert len(rows["consolidated consolidated"]) == 12
    assert rows["consolidated consolidated"] == rows["huggingface hf"]
