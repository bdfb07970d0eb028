"""Build a shard dataset: plan the inputs, build every part (in parallel processes), write the manifest last.

Resume is per shard: each part keeps a journal (``.journal/<stream>-<part>.json``, rewritten atomically after
every finished shard) with its shards, counters and the window where the next shard starts. With ``resume``, a
part whose fingerprint (inputs, settings, sensor spec, code version) is unchanged keeps its finished shards,
rewrites the partial one and continues; the result is byte-identical to an uninterrupted build. The old
manifest is removed before any shard is touched and the new one is written last, so a crashed build leaves no
manifest rather than one that describes other shards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from data_pipeline.config import BuildConfig, canonical_hash, config_dict, load_build_config, validate
from data_pipeline.manifest import manifest_path, sha256_file, write_json_atomic
from data_pipeline.plan import PIPELINE_VERSION, PartJob, Plan, StreamPlan, load_registry_for, make_plan
from data_pipeline.samples import Quarantined, Sample, Skipped, produce
from data_pipeline.shards import ShardWriter
from ringmoe.core.dataset_format import MANIFEST_FORMAT_VERSION
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.normalization import channel_names

log = logging.getLogger(__name__)

JOURNAL_DIR = ".journal"


def build(
    config: BuildConfig, config_dir: str | Path = ".", resume: bool = False, part_slice: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Build shards for ``config`` (scene globs relative to ``config_dir``); returns the manifest written.

    ``part_slice=(i, n)``: build only parts ``i, i + n, i + 2n, ...`` of the plan (one task of a SLURM job
    array), resuming them from their journals, and write no manifest; a final ``build(resume=True)`` then finds
    every part finished, reuses its shards and writes the manifest. Returns ``{"parts": [...]}`` then.
    """
    validate(config)
    config_dir = Path(config_dir)
    out_dir = Path(config.out_dir)
    plan = make_plan(config, config_dir, load_registry_for(config, config_dir), out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    if part_slice is not None:
        index, count = part_slice
        if not 0 <= index < count:
            raise ConfigError(f"part slice {index}:{count}: the index must be in [0, {count})")
        mine = plan.parts[index::count]
        results = _run(mine, config.workers, resume=True)
        return {"parts": [{"stream": r["stream"], "part": r["part"], "shards": len(r["shards"])} for r in results]}
    manifest_path(out_dir).unlink(missing_ok=True)
    results = _run(plan.parts, config.workers, resume)
    for stream in plan.streams:
        keep = {e["path"] for r in results if r["stream"] == stream.name for e in r["shards"]}
        _remove_stale(out_dir, stream.name, keep, parts=sum(1 for p in plan.parts if p.stream == stream.name))
    manifest = _manifest(config, plan, results)
    write_json_atomic(manifest_path(out_dir), manifest)
    return manifest


def build_from_file(
    path: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    strict: Optional[bool] = None,
    part_slice: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Load a build YAML (plus ``key=value`` overrides) and build it; scene globs resolve against its folder."""
    config = load_build_config(path, overrides)
    if strict is not None:
        config.strict = strict
    return build(config, config_dir=Path(path).parent, resume=resume, part_slice=part_slice)


def _run(parts: list[PartJob], workers: int, resume: bool) -> list[dict[str, Any]]:
    if workers <= 1 or len(parts) <= 1:
        results = []
        with tqdm(total=sum(len(p.groups) for p in parts), unit="scene", desc="build", disable=None) as bar:
            for part in parts:
                bar.set_postfix_str(f"{part.stream} part {part.part}")
                results.append(build_part(part, resume, on_group=lambda: bar.update(1)))
        return results
    # Spawn, not fork: forking a parent that holds GDAL handles and tqdm's monitor thread can deadlock.
    context = multiprocessing.get_context("spawn")
    done: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(parts)), mp_context=context) as pool:
        futures = {pool.submit(build_part, part, resume): i for i, part in enumerate(parts)}
        for future in tqdm(as_completed(futures), total=len(futures), unit="part", desc="build", disable=None):
            done[futures[future]] = future.result()
    return [done[i] for i in range(len(parts))]


def journal_path(out_dir: Path, stream: str, part: int) -> Path:
    return out_dir / JOURNAL_DIR / f"{stream}-{part:05d}.json"


def build_part(job: PartJob, resume: bool = False, on_group: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """Write one part's shards, continuing from its journal when ``resume`` and the journal still holds."""
    journal = journal_path(job.out_dir, job.stream, job.part)
    state = _load_journal(journal, job) if resume else None
    if state is not None and state["done"]:
        log.info("%s part %d: unchanged and complete, reusing %d shard(s)", job.stream, job.part, len(state["shards"]))
        return _result(job, state)
    if state is None:
        state = {"fingerprint": job.fingerprint, "done": False, "shards": [], "next": [0, 0]}
        state.update(samples=0, skipped={}, quarantined=[], nonfinite_pixels=0)
    elif state["shards"]:
        log.info("%s part %d: resuming after %d finished shard(s)", job.stream, job.part, len(state["shards"]))
    _remove_part_files(job, keep={entry["path"] for entry in state["shards"]})

    skipped: Counter[str] = Counter(state["skipped"])
    quarantined: list[dict[str, str]] = list(state["quarantined"])
    position = list(state["next"])
    nonfinite = [state["nonfinite_pixels"]]

    def save(entry: Optional[dict[str, Any]], done: bool = False) -> None:
        if entry is not None:
            state["shards"].append(entry)
            state["samples"] += entry["samples"]
        # The sample being written when a shard rolls over belongs to the next shard: resume starts there.
        state.update(next=list(position), skipped=dict(skipped), quarantined=list(quarantined), done=done)
        state["nonfinite_pixels"] = nonfinite[0]
        write_json_atomic(journal, state)

    writer = ShardWriter(
        job.out_dir, job.stream, job.part, job.kind, job.modality, job.max_samples, job.max_bytes,
        first_index=len(state["shards"]), on_shard=save,
    )  # fmt: skip
    with writer:
        for group_number in range(state["next"][0], len(job.groups)):
            group = job.groups[group_number]
            start = state["next"][1] if group_number == state["next"][0] else 0
            for offset, event in enumerate(produce(group, job.stream, job.tiles, start)):
                position[:] = [group_number, start + offset]
                if isinstance(event, Sample):
                    writer.write(event.key, event.members, event.sources)
                    nonfinite[0] += event.nonfinite
                elif isinstance(event, Skipped):
                    skipped[event.reason] += 1
                    nonfinite[0] += event.nonfinite
                elif isinstance(event, Quarantined):
                    if job.strict:
                        raise DataError(f"{event.file}: {event.reason}")
                    log.warning("quarantined tile %d of %s: %s", start + offset, event.file, event.reason)
                    quarantined.append({"stream": job.stream, "file": event.file, "reason": event.reason})
            if on_group is not None:
                on_group()
        position[:] = [len(job.groups), 0]
    save(None, done=True)
    return _result(job, state)


def _result(job: PartJob, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": job.stream,
        "part": job.part,
        "shards": state["shards"],
        "samples": state["samples"],
        "skipped": state["skipped"],
        "quarantined": state["quarantined"],
        "nonfinite_pixels": state["nonfinite_pixels"],
    }


def _load_journal(path: Path, job: PartJob) -> Optional[dict[str, Any]]:
    """The journal if it belongs to this exact part and every shard it lists is intact; else None."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable journal, rebuilding the part (%s)", path, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != job.fingerprint:
        log.info("%s: inputs or settings changed, rebuilding the part", path)
        return None
    for entry in state.get("shards", []):
        shard = job.out_dir / entry["path"]
        index = job.out_dir / entry["index"]
        if not shard.is_file() or shard.stat().st_size != entry["bytes"] or sha256_file(shard) != entry["sha256"]:
            log.warning("%s: shard %s changed since it was written, rebuilding the part", path, shard)
            return None
        if not index.is_file() or sha256_file(index) != entry["index_sha256"]:
            log.warning("%s: index %s changed since it was written, rebuilding the part", path, index)
            return None
    state.setdefault("nonfinite_pixels", 0)  # journals written before the count existed
    return state


def _part_pattern(stream: str, part: Optional[int] = None) -> re.Pattern[str]:
    part_re = rf"{part:05d}" if part is not None else r"\d{5}"
    # shard, its index, and crash leftovers of either (ShardWriter's <name>.tmp, atomic writes' .<name>.*.tmp)
    return re.compile(rf"\.?{re.escape(stream)}-{part_re}-\d{{5}}\.tar(\.idx\.json)?(\..*\.tmp|\.tmp)?")


def _remove_part_files(job: PartJob, keep: set[str]) -> None:
    pattern = _part_pattern(job.stream, job.part)
    keep_all = keep | {name + ".idx.json" for name in keep}
    for path in job.out_dir.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep_all:
            path.unlink()


def _remove_stale(out_dir: Path, stream: str, keep: set[str], parts: int) -> None:
    """Delete a stream's shards (and crash leftovers) that this build did not produce, e.g. from a larger
    earlier build, and journals of parts that no longer exist."""
    pattern = _part_pattern(stream)
    keep_all = keep | {name + ".idx.json" for name in keep}
    for path in out_dir.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep_all:
            log.info("removing stale %s", path)
            path.unlink()
    journals = out_dir / JOURNAL_DIR
    if journals.is_dir():
        for path in journals.glob(f"{stream}-*.json"):
            match = re.fullmatch(rf"{re.escape(stream)}-(\d{{5}})\.json", path.name)
            if match and int(match.group(1)) >= parts:
                path.unlink()


def _stream_section(stream: StreamPlan, plan: Plan, results: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in results if r["stream"] == stream.name]
    tiles = next((p.tiles for p in plan.parts if p.stream == stream.name), None)
    shards = [entry for r in mine for entry in r["shards"]]
    skipped: Counter[str] = Counter()
    for r in mine:
        skipped.update(r["skipped"])
    section: dict[str, Any] = {
        "kind": stream.kind,
        "modality": stream.modality,
        "sources": [s.name for s in stream.sensors],
        "groups": len(stream.groups),
        "unmatched": stream.unmatched,
        "samples": sum(r["samples"] for r in mine),
        "skipped": dict(skipped),
        "quarantined": sum(len(r["quarantined"]) for r in mine),
        # NaN/inf raw pixels: masked invalid (valid.npy = 0, image = 0), counted here, never written.
        "nonfinite_pixels": sum(r["nonfinite_pixels"] for r in mine),
        "shards": len(shards),
        "bytes": sum(entry["bytes"] for entry in shards),
        # Per-channel [mean, std] the images were standardized with (band_stats), by source; {} if none.
        "standardized": tiles.standardize if tiles is not None else {},
    }
    if stream.kind != "pair":
        sensor = stream.sensors[0]
        section.update(
            channels=sensor.channels(), channel_names=channel_names(sensor), bands=list(sensor.modality_bands)
        )
        section["scenes"] = len(stream.groups)
    else:
        section["channels"] = {s.name: s.channels() for s in stream.sensors}
    return section


def _manifest(config: BuildConfig, plan: Plan, results: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = config_dict(config)
    streams = {stream.name: _stream_section(stream, plan, results) for stream in plan.streams}
    modalities: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for section in streams.values():
        if section["kind"] == "single":
            modalities[section["modality"]] += section["samples"]
        skipped.update(section["skipped"])
    quarantined = plan.quarantined + [q for r in results for q in r["quarantined"]]
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "config": cfg,
        "config_hash": canonical_hash(cfg),
        "tile_size": config.tile_size,
        "tile_stride": config.stride,
        "min_valid_fraction": config.min_valid_fraction,
        "samples": sum(section["samples"] for section in streams.values()),
        "modalities": dict(modalities),
        "streams": streams,
        # Single-source streams by source name: what the pretraining loader mixes.
        "sources": {name: s for name, s in streams.items() if s["kind"] == "single"},
        "skipped": dict(skipped),
        "nonfinite_pixels": sum(section["nonfinite_pixels"] for section in streams.values()),
        "quarantined": quarantined,
        # The spec of every source built, so training reads the data with the registry it was made with.
        "sensors": {sensor.name: dataclasses.asdict(sensor) for stream in plan.streams for sensor in stream.sensors},
        "shards": [entry for r in results for entry in r["shards"]],
    }
