"""What every dataset adapter returns, and the raster reading they share."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rasterio.windows import Window

from data_pipeline.config import InputSpec
from data_pipeline.read import open_scene, resolve_scene
from data_pipeline.samples import read_normalized
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import SensorSpec

log = logging.getLogger(__name__)

IGNORE = -1  # label of pixels that are not scored (no data, clouds, invalid in either date)
KINDS = ("scene", "multilabel", "segmentation", "change")
SPLITS = ("train", "val", "test")  # ``LabelledSet.split`` holds indexes into this


@dataclass
class LabelledSet:
    """Images of one sensor with their labels.

    ``labels``: scene ``(N,)`` class index; multilabel ``(N, K)`` 0/1; segmentation and change ``(N, H, W)``
    class index (change: 1 changed, 0 not) with ``IGNORE`` where a pixel is not scored. ``groups``: samples with
    the same group share a footprint and never go to different folds (tiles of one place on several dates).
    ``images_after``: the second date of a change pair. ``skipped``: why samples were left out, counted.
    ``split``: for a set with fixed split files, each sample's index into ``SPLITS``; probes then train on
    ``train`` and report on ``test`` instead of cross-validating.
    """

    name: str
    kind: str
    modality: str
    sensor: str
    images: torch.Tensor  # (N, C, H, W) float32, normalized as in the shards
    labels: torch.Tensor
    groups: torch.Tensor
    class_names: list[str]
    keys: list[str]
    images_after: Optional[torch.Tensor] = None
    skipped: dict[str, int] = field(default_factory=dict)
    split: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def read_scene(path: Path, sensor: SensorSpec, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """The whole scene at ``path`` as the pretraining shards see it: normalized image ``(C, H, W)`` and valid
    mask ``(H, W)``. Non-finite pixels are invalid, and counted in the log."""
    with open_scene(resolve_scene(path, spec, sensor), sensor) as reader:
        height, width = reader.shape
        image, valid, nonfinite = read_normalized(reader, Window(0, 0, width, height), sensor)
    if nonfinite:
        log.warning("%s: %d non-finite pixels, scored as invalid", path, nonfinite)
    return image, valid.astype(bool)


def stack_images(images: list[np.ndarray], where: str) -> torch.Tensor:
    shapes = Counter(image.shape for image in images)
    if len(shapes) > 1:
        raise DataError(f"{where}: images differ in shape {dict(shapes)}; every sample of a set must share one")
    return torch.from_numpy(np.stack(images)).float()


def log_skipped(name: str, kept: int, skipped: dict[str, int]) -> None:
    if skipped:
        log.warning("%s: %d samples kept, skipped %s", name, kept, skipped)
