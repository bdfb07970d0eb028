"""``ringmoe prune``: calibrate on the user's data -> plan -> stream the pruned checkpoint -> retention check.

The output directory is a consolidated checkpoint like ``ringmoe consolidate`` writes (so ``ringmoe export``
and a further ``ringmoe prune`` take it), plus what explains it:

- ``routing_report.json`` and ``routing_heatmap_<modality>.png``: the measured routing;
- ``prune_plan.json``: per router, the experts kept, removed or merged, their scores and why;
- ``retention.json``: held-out losses of both models and their ratios, and the downstream (linear-probe) retention
  when ``prune.downstream.root`` names a labelled set;
- ``config.yaml``: the run config that fine-tunes the pruned model (``train.init_from`` points here);
- ``PRUNE.md``: the same, for people.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ringmoe.checkpoint.consolidate import load_consolidated_model, read_model_config
from ringmoe.config.schema import RunConfig
from ringmoe.core.errors import CheckpointError, ConfigError
from ringmoe.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ringmoe.core.plots import heatmap_png
from ringmoe.core.structured import to_yaml
from ringmoe.data.loader import build_loader
from ringmoe.objectives.factory import build_objective
from ringmoe.prune.apply import apply_plan
from ringmoe.prune.calibrate import RoutingReport, calibrate
from ringmoe.prune.downstream import DownstreamRetention, downstream_retention, load_labelled_set
from ringmoe.prune.plan import PrunePlan, make_plan
from ringmoe.prune.rescale import fit_output_scales
from ringmoe.prune.retention import reconstruction_losses, restrict, retention

log = logging.getLogger(__name__)
REPORT_NAME = "routing_report.json"
PLAN_NAME = "prune_plan.json"
RETENTION_NAME = "retention.json"


@dataclass
class PruneResult:
    out_dir: Path
    plan: PrunePlan
    report: RoutingReport
    losses: dict[str, dict[str, float]]  # "unpruned" / "pruned" -> loss name -> value (empty: not evaluated)
    retention: dict[str, float]
    downstream: DownstreamRetention | None = None  # None: prune.downstream.root is empty


def _source_run_config(config: RunConfig, consolidated: Path) -> RunConfig:
    """``config`` with the checkpoint's own model section: the checkpoint says what it holds."""
    source = read_model_config(consolidated)
    derived = config.objective.decoder_extra_channels(list(source.in_chans))
    if derived != dict(source.decoder_extra_channels):
        raise ConfigError(
            f"{consolidated}: its decoders predict {dict(source.decoder_extra_channels)} extra channels, the objective "
            f"section of the run config {derived}; use the objective the model was trained with (the checkpoint's "
            "config.yaml)"
        )
    run = dataclasses.replace(config, model=source)
    run.validate()
    return run


def _batches(config: RunConfig):
    modalities = [m for m in config.data.modalities if m in config.model.in_chans]
    return iter(build_loader(dataclasses.replace(config.data, modalities=modalities)))


def prune_checkpoint(
    consolidated: Path, out_dir: Path, config: RunConfig, report_path: Path | None = None
) -> PruneResult:
    """Prune ``consolidated`` as ``config.prune`` says, calibrating on ``config.data`` (or reading a routing
    report written by an earlier run, e.g. one calibrated on a GPU node)."""
    run = _source_run_config(config, consolidated)
    prune = run.prune
    device, dtype = torch.device(prune.device), getattr(torch, prune.dtype)
    # Read first: a wrong root or option fails before the calibration, not after it.
    labelled = load_labelled_set(prune.downstream) if prune.downstream.root else None
    objective = build_objective(run.objective, run.model)
    needs_model = report_path is None or prune.eval_batches or prune.rescale
    batches = _batches(run) if needs_model else iter(())  # a given report and nothing to fit: no data read
    model = load_consolidated_model(consolidated)[0].to(device, dtype) if needs_model else None
    calibration = [next(batches) for _ in range(prune.calibration_batches)] if needs_model else []
    generator = torch.Generator()

    def masks_for(batch):
        return objective.masks.for_batch(batch, generator) if prune.calibration_masked else None

    if report_path is not None:
        report = _read_report(report_path)
    else:
        generator.manual_seed(prune.seed)
        report = calibrate(model, calibration, masks_for, device, dtype, total=len(calibration))
    plan = make_plan(report, run.model, prune)
    if labelled is not None and labelled.modality not in plan.modalities:
        raise ConfigError(
            f"prune.downstream: {labelled.name} is {labelled.modality} imagery, which the pruned model does not "
            f"take (deployment modalities {plan.modalities}); use a labelled set of one of them"
        )
    if prune.merge and prune.merge_align:
        widest = int(max(run.model.embed_dim * 2**s for s in range(len(run.model.depths))) * run.model.mlp_ratio)
        if widest > 8192:
            log.warning(
                "prune.merge_align matches %d hidden units per merge: a %d x %d float64 matrix (%.1f GB) and an "
                "O(n^3) assignment each time; set prune.merge_align=false to average without matching",
                widest, widest, widest, widest**2 * 8 / 1e9,
            )  # fmt: skip
    if prune.rescale and model is not None:
        generator.manual_seed(prune.seed)
        deployed = [restrict(b, plan.modalities) for b in calibration]
        for name, scales in fit_output_scales(model, plan, deployed, masks_for, device, dtype).items():
            plan.routers[name].scales = scales
    out_dir.mkdir(parents=True, exist_ok=True)
    apply_plan(plan, consolidated, out_dir)
    losses: dict[str, dict[str, float]] = {}
    kept: dict[str, float] = {}
    held_out = [next(batches) for _ in range(prune.eval_batches)]
    deployed = plan.modalities
    if held_out:
        losses["unpruned"] = reconstruction_losses(model, objective, held_out, deployed, prune.seed, device, dtype)
    del model  # one model in memory at a time from here on
    if held_out:
        pruned_model = load_consolidated_model(out_dir)[0].to(device, dtype)
        losses["pruned"] = reconstruction_losses(pruned_model, objective, held_out, deployed, prune.seed, device, dtype)
        kept = retention(losses["unpruned"], losses["pruned"])
        del pruned_model
    downstream = None
    if labelled is not None:
        downstream = downstream_retention(consolidated, out_dir, labelled, prune.downstream, prune.seed, device, dtype)
    _write_outputs(out_dir, run, plan, report, losses, kept, downstream)
    return PruneResult(out_dir, plan, report, losses, kept, downstream)


def _read_report(path: Path) -> RoutingReport:
    try:
        return RoutingReport.from_dict(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the routing report ({exc})") from None


def fine_tune_config(run: RunConfig, plan: PrunePlan, out_dir: Path) -> RunConfig:
    """The run config that trains the pruned model from its weights, in a layout its expert counts allow."""
    counts = [c for c in (*plan.pruned.modal_experts, *plan.pruned.collab_experts) if c]
    ep = run.parallel.expert_parallel_size if counts else 1
    while any(c % ep for c in counts):
        ep -= 1
    if ep != run.parallel.expert_parallel_size:
        log.warning("pruned expert counts %s: fine-tune config uses expert_parallel_size=%d", counts, ep)
    data = dataclasses.replace(run.data, modalities=[m for m in run.data.modalities if m in plan.modalities])
    if not data.modalities:
        raise ConfigError(f"data.modalities {run.data.modalities} has none of the pruned model's {plan.modalities}")
    train = dataclasses.replace(run.train, init_from=str(out_dir), resume="")
    tuned = dataclasses.replace(
        run,
        model=plan.pruned,
        data=data,
        train=train,
        parallel=dataclasses.replace(run.parallel, expert_parallel_size=ep),
    )
    tuned.validate()
    return tuned


def _heatmaps(report: RoutingReport) -> dict[str, bytes]:
    """Per modality: one row per router that saw its tokens, each expert's share of the row's contribution
    (scaled to the row's largest, so routers with many experts stay readable)."""
    pictures = {}
    modalities = sorted({m for r in report.routers.values() for m in r.by_modality})
    for modality in modalities:
        rows = [r for r in report.routers.values() if modality in r.by_modality]
        width = max(r.experts for r in rows)
        share = torch.zeros(len(rows), width)
        for index, router in enumerate(rows):
            contribution = router.by_modality[modality].contribution.float()
            share[index, : router.experts] = contribution / contribution.max().clamp(min=1e-12)
        names = [r.name.replace("stages.", "s").replace(".blocks.", ".b").replace(".ffn.", " ") for r in rows]
        pictures[modality] = heatmap_png(share, names)
    return pictures


def _write_outputs(
    out_dir: Path,
    run: RunConfig,
    plan: PrunePlan,
    report: RoutingReport,
    losses: dict[str, dict[str, float]],
    kept: dict[str, float],
    downstream: DownstreamRetention | None,
) -> None:
    atomic_write_json(out_dir / REPORT_NAME, report.to_dict())
    for modality, png in _heatmaps(report).items():
        atomic_write_bytes(out_dir / f"routing_heatmap_{modality}.png", png)
    plan_dict = plan.to_dict()
    atomic_write_json(out_dir / PLAN_NAME, plan_dict)
    if losses or downstream is not None:
        measured = {"losses": losses, "retention": kept}
        if downstream is not None:
            measured["downstream"] = downstream.to_dict()
        atomic_write_json(out_dir / RETENTION_NAME, measured)
    atomic_write_text(out_dir / "config.yaml", to_yaml(fine_tune_config(run, plan, out_dir)))
    atomic_write_text(out_dir / "PRUNE.md", _summary(plan_dict, report, losses, kept, downstream))


def _summary(
    plan: dict, report: RoutingReport, losses: dict, kept: dict, downstream: DownstreamRetention | None
) -> str:
    params = plan["encoder_parameters"]
    source, pruned = plan["source_model"], plan["pruned_model"]
    lines = [
        f"# Pruned with `{plan['strategy']}`" + (" + merge" if plan["merge"] else ""),
        "",
        f"- encoder parameters: {params['source']:,} -> {params['pruned']:,} "
        f"({params['pruned'] / params['source']:.1%})",
        f"- deployment modalities: {', '.join(plan['modalities'])}",
        f"- modal experts per stage: {source['modal_experts']} -> {pruned['modal_experts']}",
        f"- collaborative experts per stage: {source['collab_experts']} -> {pruned['collab_experts']}",
        f"- calibration: {report.batches} batches, samples per modality {report.samples}",
        "",
    ]
    if losses:
        lines += ["| held-out loss | unpruned | pruned | retention |", "|---|---|---|---|"]
        for key, value in losses["pruned"].items():
            ratio = f"{kept[key]:.3f}" if key in kept else "n/a"
            lines.append(f"| {key} | {losses['unpruned'][key]:.4f} | {value:.4f} | {ratio} |")
        lines.append("")
    if downstream is not None:
        d = downstream
        lines += [
            f"| downstream: linear-probe test accuracy | unpruned | pruned | retention [{d.confidence:.0%} paired "
            "bootstrap] |",
            "|---|---|---|---|",
            f"| {d.task} ({d.modality}): {d.train_images} train, {d.test_images} test images | "
            f"{d.unpruned_accuracy:.4f} | {d.pruned_accuracy:.4f} | {d.retention:.3f} [{d.low:.3f}, {d.high:.3f}] |",
            "",
        ]
    lines += ["| router | decision |", "|---|---|"]
    lines += [f"| {r['name']} | {r['reason']} |" for r in plan["routers"]]
    return "\n".join(lines) + "\n"
