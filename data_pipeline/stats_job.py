"""``ringmoe-data stats``: the per-channel statistics (``band_stats.ChannelStats``) of every scene a build config
names, serially or in spawned processes, merged in plan order so the float64 result does not depend on timing.
It sits above ``plan`` (which finds the scenes) while ``plan`` reads finished statistics from ``band_stats``."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from data_pipeline.band_stats import STATS_FORMAT_VERSION, ChannelStats, scene_stats
from data_pipeline.config import BuildConfig, canonical_hash, config_dict
from data_pipeline.plan import scenes_by_source
from ringmoe.core.errors import DataError
from ringmoe.core.normalization import channel_names
from ringmoe.core.sensors import SensorSpec


def compute_stats(
    config: BuildConfig, config_dir: Path, workers: int = 1, on_scene: Optional[Callable[[], None]] = None
) -> dict[str, Any]:
    """Statistics per source over every scene the config names; returns the JSON-able result."""
    jobs = [(scene, sensor, config.tile_size) for sensor, scene in scenes_by_source(config, config_dir)]
    if not jobs:
        raise DataError("no readable scene in the config's inputs; nothing to compute statistics over")
    totals: dict[str, ChannelStats] = {}
    sensors: dict[str, SensorSpec] = {}

    def add(name: str, stats: ChannelStats) -> None:
        totals.setdefault(name, ChannelStats.empty(len(stats.count))).merge(stats)

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            add(job[1].name, scene_stats(*job))
            sensors[job[1].name] = job[1]
            if on_scene is not None:
                on_scene()
    else:
        context = multiprocessing.get_context("spawn")  # see build._run: no fork with GDAL handles open
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(scene_stats, *job) for job in jobs]
            for _ in as_completed(futures):
                if on_scene is not None:
                    on_scene()
        # Merge in plan order so the float64 result does not depend on completion order.
        for (_, sensor, _), future in zip(jobs, futures):
            add(sensor.name, future.result())
            sensors[sensor.name] = sensor
    cfg = config_dict(config)
    return {
        "format_version": STATS_FORMAT_VERSION,
        "config_hash": canonical_hash(cfg),
        "sources": {
            name: {
                "channels": channel_names(sensors[name]),
                "count": [int(c) for c in stats.count],
                "mean": stats.mean.tolist(),
                "std": stats.std.tolist(),
                # null, not +-inf, for a channel without valid pixels: strict JSON readers reject Infinity.
                "min": [float(v) if n else None for v, n in zip(stats.low, stats.count)],
                "max": [float(v) if n else None for v, n in zip(stats.high, stats.count)],
            }
            for name, stats in totals.items()
        },
    }
