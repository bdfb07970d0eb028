"""The tiny real-data demo: shards -> DeepSpeed EP=2 training -> consolidate -> prune -> HuggingFace export -> check.

Every stage runs the real libraries on the real sample rasters shipped in ``demo_data/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from ringmoe.core.errors import RingMoEError
from ringmoe.core.modalities import MODALITIES

REPO = Path(__file__).resolve().parents[2]
BUILD_CONFIG = REPO / "configs" / "data" / "demo_build.yaml"
RUN_CONFIG = REPO / "configs" / "tiny.yaml"
EVAL_CONFIG = REPO / "configs" / "eval" / "demo.yaml"
# The summary's columns: task and metric of configs/eval/demo.yaml (every score is in eval/results.md).
DEMO_EVAL_COLUMNS = {
    "S2 mAP": "bigearthnet (sentinel2_l2a) (linear probe): mAP (sample-averaged)",
    "S1 mAP": "bigearthnet (sentinel1_grd) (linear probe): mAP (sample-averaged)",
    "scene bal.acc": "eo-learn LULC scene (16 px) (linear probe): balanced accuracy",
    "seg mIoU": "eo-learn LULC segmentation (32 px) (linear decoder): mIoU",
    "change F1": "eo-learn NDVI change > 0.1 (32 px) (linear decoder): F1 (changed)",
}
# EuroSAT RGB (demo_data/eurosat_rgb, fixed split): test accuracy of each probe trained on all of train, with its
# bootstrap interval; the rows of the encoders below (the HF exports score exactly as their checkpoints).
EUROSAT_TASK = "EuroSAT RGB"
EUROSAT_PROBES = ("linear probe", "kNN")
EUROSAT_ENCODERS = {
    "trained": "consolidated consolidated",
    "pruned": "consolidated pruned",
    "random init": "random init (tiny, seed 0)",
    "pixels": "pixel statistics (64 px)",
}


def _stage(name: str, timings: dict[str, float]):
    class _Timer:
        def __enter__(self):
            print(f"== {name}", flush=True)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.start

    return _Timer()


def _train(out: Path, steps: int, nproc: int) -> list[float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
        "-m", "ringmoe.cli.main", "train", "--config", str(RUN_CONFIG),
        f"data.shards={out / 'shards'}", f"train.output_dir={out / 'train'}", f"train.steps={steps}",
        f"parallel.expert_parallel_size={min(nproc, 2)}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if subprocess.run(command, env=env).returncode != 0:
        raise RingMoEError(f"training failed: {' '.join(command)}")
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss/total"] for line in lines[-steps:]]


def _check_export(consolidated: Path, hf_dir: Path, shards: Path) -> float:
    """Largest difference between the HF model and the consolidated checkpoint on a real batch."""
    from transformers import AutoModel

    from ringmoe.checkpoint.consolidate import load_consolidated_model
    from ringmoe.config.schema import DataConfig
    from ringmoe.data.stream import ShardStream

    reference, config = load_consolidated_model(consolidated)
    exported = AutoModel.from_pretrained(str(hf_dir), trust_remote_code=True)
    batch = next(iter(ShardStream(DataConfig(shards=str(shards), modalities=list(config.in_chans)))))
    with torch.no_grad():
        expected = reference.eval().encoder(batch).features
        actual = exported.eval()(pixel_values=batch.images).last_hidden_state
    return float((expected - actual).abs().max())


def _prune(out: Path):
    from ringmoe.config.schema import load_config
    from ringmoe.prune.run import prune_checkpoint

    # Half the routed experts per router, chosen from the measured routing; counts stay EP=2-divisible.
    overrides = [f"data.shards={out / 'shards'}", "prune.modal_experts=[2,2]", "prune.collab_experts=[2,2]"]
    return prune_checkpoint(out / "consolidated", out / "pruned", load_config(RUN_CONFIG, overrides))


def _eurosat_rows(results: list) -> dict:
    """Test accuracy [bootstrap interval] of each EuroSAT probe trained on 100 % of train, per encoder, and its
    paired differences to the reference encoders (same bootstrap resamples) where the report has them."""
    pattern = re.compile(rf"{re.escape(EUROSAT_TASK)} \(({'|'.join(EUROSAT_PROBES)}), 100% labels, (\d+) train\)")
    rows: dict = {"encoders": {}}
    for row in results:
        match = pattern.fullmatch(row.task)
        if match and row.metric == "accuracy":
            differences = getattr(row, "differences", None) or {}
            probe = {
                "accuracy": row.mean,
                "low": row.low,
                "high": row.high,
                "minus": {ref: {"difference": d.score, "low": d.low, "high": d.high} for ref, d in differences.items()},
            }
            rows["encoders"].setdefault(row.encoder, {})[match[1]] = probe
            rows.update(n_train=int(match[2]), n_test=row.n, chance=row.chance)
    if not rows["encoders"]:
        raise RingMoEError(f"{EVAL_CONFIG}: no {EUROSAT_TASK!r} accuracy at 100% labels in the eval results")
    return rows


def _evaluate(out: Path) -> tuple[dict[str, dict[str, float]], float, dict]:
    """Frozen-encoder scores on the labelled demo samples for the trained, exported, pruned and reference
    encoders; returns scores per encoder, the largest score difference between a checkpoint and its export and
    the EuroSAT accuracies with their intervals."""
    from ringmoe.config.evaluation import load_eval_config
    from ringmoe.eval.run import evaluate

    encoders = [out / "consolidated", out / "hf", out / "pruned", out / "hf_pruned", f"random:{RUN_CONFIG}", "pixels"]
    overrides = [f"encoders=[{','.join(str(e) for e in encoders)}]", f"output_dir={out / 'eval'}"]
    report = evaluate(load_eval_config(EVAL_CONFIG, overrides), EVAL_CONFIG.parent)
    scores: dict[str, dict[str, float]] = {}
    for row in report.results:
        scores.setdefault(row.encoder, {})[f"{row.task}: {row.metric}"] = row.mean
    pairs = [("consolidated consolidated", "huggingface hf"), ("consolidated pruned", "huggingface hf_pruned")]
    gap = max(abs(scores[a][k] - scores[b][k]) for a, b in pairs for k in scores[a])
    return scores, gap, _eurosat_rows(report.results)


def _modality_losses(metrics_file: Path, window: int = 5) -> dict[str, tuple[float, float]]:
    """Per-modality reconstruction and physical-target losses, mean of the first and last ``window`` steps."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    names = [k for k in rows[0] if k.startswith("loss/") and k.split("/")[1] in MODALITIES]
    return {
        name.removeprefix("loss/"): (
            sum(r[name] for r in rows[:window]) / len(rows[:window]),
            sum(r[name] for r in rows[-window:]) / len(rows[-window:]),
        )
        for name in names
    }


def _print_eurosat(eurosat: dict) -> None:
    """The EuroSAT rows of the summary: accuracy [interval] per encoder and probe, then the trained encoder
    minus each reference with its paired interval (when the report carries one)."""

    def cell(score: dict | None, key: str, sign: str = "") -> str:
        return f"{score[key]:{sign}.3f} [{score['low']:{sign}.3f}, {score['high']:{sign}.3f}]" if score else "n/a"

    print(
        f"  {EUROSAT_TASK} (10 classes; fixed split, {eurosat['n_train']} train / {eurosat['n_test']} test images): "
        f"test accuracy [95% bootstrap interval], chance {eurosat['chance']:.3f}"
    )
    print(f"    {'encoder':<34}" + "".join(f"{probe:>26}" for probe in EUROSAT_PROBES))
    for label, encoder in EUROSAT_ENCODERS.items():
        probes = eurosat["encoders"].get(encoder, {})
        cells = [cell(probes.get(probe), "accuracy") for probe in EUROSAT_PROBES]
        print(f"    {EUROSAT_TASK + ' ' + label:<34}" + "".join(f"{c:>26}" for c in cells))
    trained = eurosat["encoders"].get(EUROSAT_ENCODERS["trained"], {})
    lines = []
    for label in ("random init", "pixels"):
        reference = EUROSAT_ENCODERS[label]
        differences = [trained.get(probe, {}).get("minus", {}).get(reference) for probe in EUROSAT_PROBES]
        if any(differences):
            cells = [cell(d, "difference", "+") for d in differences]
            lines.append(f"    {EUROSAT_TASK + ' trained - ' + label:<34}" + "".join(f"{c:>26}" for c in cells))
    if lines:
        print("\n".join(lines))
        print("    (trained - X: accuracy difference on the same test images, with its paired bootstrap interval)")


def run_demo(out: Path, steps: int = 20, nproc: int = 2) -> dict:
    from data_pipeline.build import build_from_file
    from ringmoe.checkpoint.consolidate import consolidate
    from ringmoe.export.huggingface import export_huggingface

    out = out.resolve()
    timings: dict[str, float] = {}
    with _stage("shards: ringmoe-data build (rasterio -> webdataset)", timings):
        build_from_file(BUILD_CONFIG, [f"out_dir={out / 'shards'}"])
    with _stage(f"train: DeepSpeed EP={min(nproc, 2)} ZeRO-1 on {nproc} processes (gloo)", timings):
        losses = _train(out, steps, nproc)
    checkpoint = out / "train" / "checkpoints" / f"global_step{steps}"
    with _stage("consolidate: DeepSpeed MoE checkpoint -> safetensors", timings):
        consolidate(checkpoint, out / "consolidated")
    with _stage("prune: calibrate routing -> keep 2 of 4 experts per router (modality-aware)", timings):
        pruned = _prune(out)
    with _stage("export: HuggingFace directories (full and pruned)", timings):
        export_huggingface(out / "consolidated", out / "hf")
        export_huggingface(out / "pruned", out / "hf_pruned")
    with _stage("check: AutoModel.from_pretrained(trust_remote_code=True) vs checkpoint", timings):
        max_diff = _check_export(out / "consolidated", out / "hf", out / "shards")
        max_diff_pruned = _check_export(out / "pruned", out / "hf_pruned", out / "shards")
    with _stage(
        "eval: frozen-encoder probes on labelled real samples (trained, HF, pruned, random init, pixels)", timings
    ):
        scores, score_gap, eurosat = _evaluate(out)
    parameters = pruned.plan.to_dict()["encoder_parameters"]
    summary = {
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "modality_losses": _modality_losses(out / "train" / "metrics.jsonl"),
        "hf_max_abs_diff": max_diff,
        "hf_pruned_max_abs_diff": max_diff_pruned,
        "pruned_encoder_parameters": parameters,
        "prune_retention": pruned.retention,
        "eval_scores": scores,
        "eval_hf_vs_checkpoint_max_score_diff": score_gap,
        "eval_eurosat": eurosat,
        "paths": {
            "shards": str(out / "shards"),
            "checkpoint": str(checkpoint),
            "consolidated": str(out / "consolidated"),
            "pruned": str(out / "pruned"),
            "hf_export": str(out / "hf"),
            "hf_pruned": str(out / "hf_pruned"),
            "eval": str(out / "eval" / "results.md"),
            "metrics": str(out / "train" / "metrics.jsonl"),
            "tensorboard": str(out / "train" / "tensorboard"),
        },
    }
    print("\n== summary")
    for name, seconds in summary["timings_s"].items():
        print(f"  {seconds:8.2f} s  {name}")
    print(f"  loss: first {losses[0]:.4f} -> last {losses[-1]:.4f} over {len(losses)} steps")
    for name, (first, last) in summary["modality_losses"].items():
        print(f"    {name:<28} {first:.4f} -> {last:.4f}  (mean of first / last 5 steps)")
    print(
        f"  pruned: encoder {parameters['source']:,} -> {parameters['pruned']:,} parameters, held-out masked "
        f"reconstruction retention {pruned.retention.get('loss/total', float('nan')):.3f} (unpruned / pruned loss)"
    )
    print(f"  HF export vs checkpoint: max |diff| = {max_diff:.2e} (full), {max_diff_pruned:.2e} (pruned)")
    print(f"  eval (mean over 3 folds; all rows with std, chance and n in {out / 'eval' / 'results.md'}):")
    print(f"    {'encoder':<28} " + "".join(f"{name:>15}" for name in DEMO_EVAL_COLUMNS))
    for encoder, rows in scores.items():
        print(
            f"    {encoder:<28} "
            + "".join(f"{rows.get(key, float('nan')):>15.3f}" for key in DEMO_EVAL_COLUMNS.values())
        )
    print(f"    HF export vs checkpoint scores: max |diff| = {score_gap:.1e}")
    _print_eurosat(eurosat)
    for name, path in summary["paths"].items():
        print(f"  {name:>12}: {path}")
    if score_gap != 0.0:
        raise RingMoEError(f"HF exports score differently from their checkpoints (max |diff| {score_gap:.2e})")
    if max(max_diff, max_diff_pruned) > 1e-4:
        raise RingMoEError(
            f"HF export does not reproduce the checkpoint (max |diff| {max_diff:.2e}, pruned {max_diff_pruned:.2e})"
        )
    if losses[-1] >= losses[0]:
        raise RingMoEError(f"loss did not decrease: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return summary
