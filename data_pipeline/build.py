"""Build a shard dataset: plan every source's scenes, tile and normalize them, write shards and the manifest.

Every scene is opened and checked before the first shard is written, so a bad input fails fast. The old
manifest is removed before any shard is replaced and the new one is written last: a crashed build leaves no
manifest rather than one that describes other shards. With ``resume``, a source whose inputs, settings and
sensor spec are unchanged (same fingerprint) and whose shards still hash as recorded is not rebuilt.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from data_pipeline.config import BuildConfig, InputSpec, canonical_hash, config_dict, load_build_config, validate
from data_pipeline.manifest import manifest_path, read_manifest, sha256_file, write_json_atomic
from data_pipeline.normalize import channel_names, normalize
from data_pipeline.read import Scene, SceneReader, find_scenes, resolve_scene
from data_pipeline.shards import ShardWriter, json_bytes, npy_bytes
from data_pipeline.tiling import tile_count, tile_geometry, tile_windows
from ringmoe.core.errors import DataError
from ringmoe.core.schema import IMAGE_EXT, MANIFEST_FORMAT_VERSION, META_EXT, VALID_EXT, sample_key
from ringmoe.core.sensors import SensorRegistry, SensorSpec, default_sources_dir, load_registry

log = logging.getLogger(__name__)

# Bump whenever the bytes written for the same input change (tiling, normalization, metadata), so that
# ``resume`` never reuses shards made by older code.
PIPELINE_VERSION = 1
SKIP_LOW_VALID = "low_valid_fraction"


@dataclass
class SourceJob:
    """Everything needed to build one source's shards; picklable for worker processes."""

    sensor: SensorSpec
    scenes: list[Scene]
    out_dir: Path
    tile_size: int
    stride: int
    min_valid_fraction: float
    max_samples: int
    max_bytes: int
    fingerprint: str


def build(config: BuildConfig, config_dir: str | Path = ".", resume: bool = False) -> dict[str, Any]:
    """Build shards for ``config`` (scene globs relative to ``config_dir``); returns the manifest written."""
    validate(config)
    config_dir = Path(config_dir)
    out_dir = Path(config.out_dir)
    sources_dir = Path(config.sources_dir) if config.sources_dir else default_sources_dir()
    if config.sources_dir and not sources_dir.is_absolute():
        sources_dir = config_dir / sources_dir
    jobs = plan(config, config_dir, load_registry(sources_dir), out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(out_dir) if resume else None
    manifest_path(out_dir).unlink(missing_ok=True)

    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        reused = _reuse(job, previous) if previous else None
        if reused is not None:
            log.info("%s: unchanged since the last build, reusing %d shard(s)", job.sensor.name, len(reused["shards"]))
            results[job.sensor.name] = reused
        else:
            todo.append(job)
    results.update(_run(todo, config.workers))

    manifest = _manifest(config, [results[job.sensor.name] for job in jobs])
    write_json_atomic(manifest_path(out_dir), manifest)
    return manifest


def build_from_file(path: str | Path, overrides: Sequence[str] = (), resume: bool = False) -> dict[str, Any]:
    """Load a build YAML (plus ``key=value`` overrides) and build it; scene globs resolve against its folder."""
    config = load_build_config(path, overrides)
    return build(config, config_dir=Path(path).parent, resume=resume)


def plan(config: BuildConfig, config_dir: Path, registry: SensorRegistry, out_dir: Path) -> list[SourceJob]:
    """One job per source (inputs of the same source are merged), every scene resolved and checked."""
    grouped: dict[str, list[InputSpec]] = {}
    for spec in config.inputs:
        grouped.setdefault(spec.source, []).append(spec)
    jobs = []
    for source, specs in grouped.items():
        sensor = registry.get_spec(source)
        scenes: list[Scene] = []
        keys: dict[str, Path] = {}
        for spec in specs:
            for path in find_scenes(spec, config_dir):
                scene = resolve_scene(path, spec, sensor)
                key = sample_key(source, scene.name, 0, 0)
                if key in keys:
                    raise DataError(f"{path}: scene name {scene.name!r} of source {source!r} clashes with {keys[key]}")
                keys[key] = path
                with SceneReader(scene, sensor):  # opening checks band count, grid and dtype
                    pass
                scenes.append(scene)
        job = SourceJob(
            sensor=sensor,
            scenes=scenes,
            out_dir=out_dir,
            tile_size=config.tile_size,
            stride=config.stride,
            min_valid_fraction=config.min_valid_fraction,
            max_samples=config.shard_max_samples,
            max_bytes=config.shard_max_bytes,
            fingerprint="",
        )
        job.fingerprint = _fingerprint(job, specs, config_dir)
        jobs.append(job)
    return jobs


def _fingerprint(job: SourceJob, specs: list[InputSpec], config_dir: Path) -> str:
    """What one source's shards depend on; the input files enter by size and mtime (not content, for speed)."""
    files = []
    for scene in job.scenes:
        for file in dict.fromkeys(scene.files):
            stat = file.stat()
            files.append([os.path.relpath(file, config_dir), stat.st_size, stat.st_mtime_ns])
    settings = {k: v for k, v in dataclasses.asdict(job).items() if k not in ("scenes", "out_dir", "fingerprint")}
    return canonical_hash(
        {
            "pipeline_version": PIPELINE_VERSION,
            "format_version": MANIFEST_FORMAT_VERSION,
            "settings": settings,
            "inputs": [dataclasses.asdict(s) for s in specs],
            "files": files,
        }
    )


def _run(jobs: list[SourceJob], workers: int) -> dict[str, dict[str, Any]]:
    if not jobs:
        return {}
    if workers <= 1 or len(jobs) == 1:
        results = {}
        with tqdm(total=sum(len(j.scenes) for j in jobs), unit="scene", desc="build", disable=None) as bar:
            for job in jobs:
                bar.set_postfix_str(job.sensor.name)
                results[job.sensor.name] = build_source(job, on_scene=lambda: bar.update(1))
        return results
    # Spawn, not fork: forking a parent that holds GDAL handles and tqdm's monitor thread can deadlock.
    context = multiprocessing.get_context("spawn")
    results = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(build_source, job): job.sensor.name for job in jobs}
        for future in tqdm(as_completed(futures), total=len(futures), unit="source", desc="build", disable=None):
            results[futures[future]] = future.result()
    return results


def build_source(job: SourceJob, on_scene: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """Tile, normalize and shard every scene of one source; returns its manifest section."""
    sensor = job.sensor
    names = channel_names(sensor)
    skipped: Counter[str] = Counter()
    samples = 0
    without_tiles = 0
    with ShardWriter(job.out_dir, sensor.name, sensor.modality, job.max_samples, job.max_bytes) as writer:
        for scene in job.scenes:
            with SceneReader(scene, sensor) as reader:
                height, width = reader.shape
                if tile_count(height, width, job.tile_size, job.stride) == 0:
                    without_tiles += 1
                    log.warning("%s: scene %s (%dx%d) is smaller than one tile", sensor.name, scene.path, height, width)
                file_nodata = reader.file_nodata()
                for window in tile_windows(height, width, job.tile_size, job.stride):
                    image, valid = normalize(reader.read(window), sensor, file_nodata)
                    fraction = float(valid.mean())
                    if fraction < job.min_valid_fraction:
                        skipped[SKIP_LOW_VALID] += 1
                        continue
                    row, col = int(window.row_off), int(window.col_off)
                    key = sample_key(sensor.name, scene.name, row, col)
                    geometry = tile_geometry(window, reader.transform)
                    meta = {
                        "source": sensor.name,
                        "modality": sensor.modality,
                        "scene": scene.name,
                        "crs": reader.crs,
                        **geometry,
                        "row": row,
                        "col": col,
                        "size": [job.tile_size, job.tile_size],
                        "bands": list(sensor.modality_bands),
                        "channels": len(names),
                        "channel_names": names,
                        "valid_fraction": fraction,
                    }
                    members = {IMAGE_EXT: npy_bytes(image), VALID_EXT: npy_bytes(valid), META_EXT: json_bytes(meta)}
                    item = {
                        "key": key,
                        "source": sensor.name,
                        "modality": sensor.modality,
                        "crs": reader.crs,
                        "bounds": geometry["bounds"],
                    }
                    writer.write(key, members, item)
                    samples += 1
            if on_scene is not None:
                on_scene()
    shards = writer.entries
    _remove_stale(job.out_dir, sensor.name, {entry["path"] for entry in shards})
    if samples == 0:
        log.warning("%s: no tile passed min_valid_fraction=%s", sensor.name, job.min_valid_fraction)
    log.info("%s: %d samples in %d shard(s), skipped %s", sensor.name, samples, len(shards), dict(skipped) or "none")
    return {
        "source": sensor.name,
        "modality": sensor.modality,
        "channels": len(names),
        "channel_names": names,
        "bands": list(sensor.modality_bands),
        "scenes": len(job.scenes),
        "scenes_without_tiles": without_tiles,
        "samples": samples,
        "skipped": dict(skipped),
        "fingerprint": job.fingerprint,
        "shards": shards,
    }


def _remove_stale(out_dir: Path, source: str, keep: set[str]) -> None:
    """Delete this source's shards (and crash leftovers) from an earlier, larger build of ``out_dir``."""
    pattern = re.compile(rf"{re.escape(source)}-\d{{6}}\.tar(\.tmp)?")
    for path in out_dir.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep:
            log.info("removing stale %s", path)
            path.unlink()


def _previous_manifest(out_dir: Path) -> Optional[dict[str, Any]]:
    if not manifest_path(out_dir).is_file():
        return None
    try:
        return read_manifest(out_dir)
    except DataError as exc:
        log.warning("not resuming: %s", exc)
        return None


def _reuse(job: SourceJob, previous: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The previous build's section for this source if nothing it depends on changed and its shards are intact."""
    section = previous.get("sources", {}).get(job.sensor.name)
    if not section or section.get("fingerprint") != job.fingerprint:
        return None
    shards = [entry for entry in previous["shards"] if entry.get("source") == job.sensor.name]
    if len(shards) != section.get("shards"):
        return None
    for entry in shards:
        path = job.out_dir / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            return None
    _remove_stale(job.out_dir, job.sensor.name, {entry["path"] for entry in shards})
    kept = {k: v for k, v in section.items() if k not in ("shards", "bytes")}
    return {"source": job.sensor.name, **kept, "shards": shards}


def _manifest(config: BuildConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = config_dict(config)
    sources: dict[str, Any] = {}
    modalities: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    for result in results:
        section = {k: v for k, v in result.items() if k not in ("source", "shards")}
        section["shards"] = len(result["shards"])
        section["bytes"] = sum(entry["bytes"] for entry in result["shards"])
        sources[result["source"]] = section
        modalities[result["modality"]] += result["samples"]
        skipped.update(result["skipped"])
        shards.extend(result["shards"])
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "config": cfg,
        "config_hash": canonical_hash(cfg),
        "tile_size": config.tile_size,
        "tile_stride": config.stride,
        "min_valid_fraction": config.min_valid_fraction,
        "samples": sum(r["samples"] for r in results),
        "modalities": dict(modalities),
        "sources": sources,
        "skipped": dict(skipped),
        "shards": shards,
    }
