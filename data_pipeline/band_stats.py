"""Per-channel statistics of a build's inputs, computed streaming (``ringmoe-data stats``), and their use.

Statistics are over the valid pixels of every scene of every source the build config names, after the
source's normalization (the values the model would see without standardization). Accumulators hold count,
mean and the sum of squared deviations in float64 and merge exactly (Chan et al.), so scenes are processed in
any order, in parallel processes, with one pass over the data and constant memory.

A build with ``band_stats`` standardizes each real-valued (reflectance, dB) source listed in the file per channel,
``(x - mean) / std``; complex SAR is left as is, because shifting and scaling I and Q separately would distort
the phase the model is meant to see.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from data_pipeline.read import band_offsets, open_scene
from data_pipeline.scene import Scene
from ringmoe.core.errors import DataError
from ringmoe.core.normalization import channel_names, normalize
from ringmoe.core.sensors import SensorSpec

STATS_FORMAT_VERSION = 1


@dataclass
class ChannelStats:
    """Mergeable running statistics of C channels."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> "ChannelStats":
        zeros = np.zeros(channels, dtype=np.float64)
        return cls(zeros.copy(), zeros.copy(), zeros.copy(), np.full(channels, np.inf), np.full(channels, -np.inf))

    def update(self, image: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of ``image`` ``(C, H, W)``."""
        pixels = image[:, valid.astype(bool)].astype(np.float64)
        if pixels.shape[1] == 0:
            return
        n = pixels.shape[1]
        block = ChannelStats(
            np.full(len(pixels), float(n)),
            pixels.mean(axis=1),
            ((pixels - pixels.mean(axis=1, keepdims=True)) ** 2).sum(axis=1),
            pixels.min(axis=1),
            pixels.max(axis=1),
        )
        self.merge(block)

    def merge(self, other: "ChannelStats") -> None:
        total = self.count + other.count
        safe = np.where(total > 0, total, 1.0)
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.count / safe
        self.m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        self.count = total
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))


def scene_stats(scene: Scene, sensor: SensorSpec, block: int) -> ChannelStats:
    """Statistics of one scene, read in ``block`` x ``block`` windows covering all of it (edges included)."""
    stats = ChannelStats.empty(sensor.channels())
    with open_scene(scene, sensor) as reader:
        height, width = reader.shape
        cube = getattr(reader, "timestamps", None) is not None
        for row in range(0, height, block):
            for col in range(0, width, block):
                window = Window(col, row, min(block, width - col), min(block, height - row))
                invalid = reader.invalid(window)
                if cube:
                    for t, raw in enumerate(reader.read_sequence(window)):
                        mask = None if invalid is None else invalid[t]
                        stats.update(*normalize(raw, sensor, reader.file_nodata(), mask))
                else:
                    raw, offsets = reader.read(window), band_offsets(reader)
                    stats.update(*normalize(raw, sensor, reader.file_nodata(), invalid, offsets=offsets))
    return stats


def load_band_stats(path: Path, sensors: dict[str, SensorSpec]) -> tuple[dict[str, list[list[float]]], str]:
    """``{source: [mean, std]}`` for the real-valued sources of this build found in a stats file, and the file's
    sha256."""
    try:
        data = path.read_bytes()
        stats = json.loads(data)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read band statistics ({exc})") from None
    if not isinstance(stats, dict) or stats.get("format_version") != STATS_FORMAT_VERSION:
        raise DataError(f"{path}: not a `ringmoe-data stats` file (format_version {STATS_FORMAT_VERSION})")
    result = {}
    for name, entry in stats.get("sources", {}).items():
        if name not in sensors or sensors[name].normalization.kind == "complex":
            continue
        want = channel_names(sensors[name])
        if entry.get("channels") != want:
            raise DataError(f"{path}: source {name!r} has channels {entry.get('channels')}, the build makes {want}")
        empty = [c for c, n in zip(want, entry.get("count", [1] * len(want))) if not n]
        if empty:
            raise DataError(f"{path}: source {name!r} has no valid pixels in channel(s) {empty}; cannot standardize")
        try:
            mean, std = ([float(v) for v in entry[key]] for key in ("mean", "std"))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: source {name!r}: mean/std are not lists of numbers ({exc})") from None
        if len(mean) != len(want) or len(std) != len(want):
            raise DataError(f"{path}: source {name!r}: mean/std need {len(want)} values each")
        result[name] = [mean, std]
    return result, hashlib.sha256(data).hexdigest()
