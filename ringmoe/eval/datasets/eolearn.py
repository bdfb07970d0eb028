"""The eo-learn TestEOPatch (Slovenia, 101 x 100 px at 10 m): per-pixel land-cover labels (``LULC``) under a
Sentinel-2 L1C stack of five dates (``REFERENCE_SCENES.npy``) and the 68-date validity mask.

Three tasks come from it:

- ``load_eolearn_lulc(kind="scene")``: each tile's majority land-cover class (the EuroSAT set-up: a small tile,
  one class), the nearest real stand-in for EuroSAT in the pack;
- ``load_eolearn_lulc(kind="segmentation")``: the per-pixel classes of each tile;
- ``load_eolearn_change``: tiles of two cloud-free dates, changed where NDVI moved by more than a threshold.
  The pack has no change annotations; NDVI change (phenology, harvest, mowing) is the real signal it has.

Tiles of one place on several dates share a group, so cross-validation never tests on a place it trained on.
Arrays are read with ``allow_pickle=False``; the L1C reflectance (0-1) is scaled back to digital numbers so
that ``data_pipeline``'s ``sentinel2_l1c`` normalization applies unchanged.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data_pipeline.eopatch import DN_PER_REFLECTANCE, L1C_BANDS
from ringmoe.core.errors import DataError
from ringmoe.core.normalization import normalize
from ringmoe.core.sensors import SensorSpec, load_registry
from ringmoe.eval.datasets.common import IGNORE, LabelledSet, log_skipped, stack_images

# eo-learn's Slovenia LULC ids; 0 ("no data") is never scored.
LULC_CLASSES = {
    1: "cultivated land", 2: "forest", 3: "grassland", 4: "shrubland", 5: "water", 6: "wetlands", 7: "tundra",
    8: "artificial surface", 9: "bareland", 10: "snow and ice",
}  # fmt: skip
# REFERENCE_SCENES.npy frame k is date timestamps.json[REFERENCE_DATES[k]] (frames ordered by cloud cover).
REFERENCE_DATES = (2, 1, 4, 3, 0)


def _load(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: eo-learn array not found")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy array ({exc})") from None
    if array.ndim != ndim:
        raise DataError(f"{path}: expected {ndim} axes, found shape {array.shape}")
    return array


class _Patch:
    """The arrays of one TestEOPatch folder, checked against each other."""

    def __init__(self, root: Path, reference_dates: Sequence[int]) -> None:
        root = Path(root)
        self.scenes = _load(root / "REFERENCE_SCENES.npy", 4)  # (T, H, W, 13) TOA reflectance
        valid = _load(root / "TestEOPatch" / "mask" / "IS_VALID.npy", 4)[..., 0].astype(bool)  # (68, H, W)
        self.lulc = _load(root / "TestEOPatch" / "mask_timeless" / "LULC.npy", 3)[..., 0].astype(np.int64)
        stamps_file = root / "TestEOPatch" / "timestamps.json"
        stamps = json.loads(stamps_file.read_text()) if stamps_file.is_file() else None
        if stamps is None or len(stamps) != valid.shape[0]:
            raise DataError(f"{stamps_file}: need one timestamp per IS_VALID frame ({valid.shape[0]})")
        if len(reference_dates) != self.scenes.shape[0] or self.scenes.shape[-1] != len(L1C_BANDS):
            raise DataError(
                f"{root / 'REFERENCE_SCENES.npy'}: shape {self.scenes.shape}, expected "
                f"({len(reference_dates)}, H, W, {len(L1C_BANDS)}) for reference_dates {list(reference_dates)}"
            )
        if self.lulc.shape != self.scenes.shape[1:3] or valid.shape[1:] != self.lulc.shape:
            raise DataError(f"{root}: LULC {self.lulc.shape}, IS_VALID {valid.shape} and scenes disagree on the grid")
        self.valid = valid[list(reference_dates)]
        self.dates = [stamps[index][:10] for index in reference_dates]

    def image(self, frame: int, sensor: SensorSpec) -> tuple[np.ndarray, np.ndarray]:
        bands = [L1C_BANDS.index(b) for b in sensor.modality_bands]
        raw = self.scenes[frame][..., bands].transpose(2, 0, 1) * DN_PER_REFLECTANCE
        image, valid = normalize(raw, sensor, invalid=~self.valid[frame])
        return image, valid.astype(bool)

    def ndvi(self, frame: int) -> np.ndarray:
        red, nir = self.scenes[frame][..., 3], self.scenes[frame][..., 7]
        return (nir - red) / np.maximum(nir + red, 1e-6)

    def tiles(self, size: int) -> list[tuple[int, int]]:
        height, width = self.lulc.shape
        return [(y, x) for y in range(0, height - size + 1, size) for x in range(0, width - size + 1, size)]


def load_eolearn_lulc(
    root: Path,
    kind: str = "scene",
    tile: int = 16,
    min_valid_fraction: float = 0.5,
    sensor: str = "sentinel2_l1c",
    reference_dates: Sequence[int] = REFERENCE_DATES,
    extra_sources: Sequence[str] = (),
) -> LabelledSet:
    """Tiles of every date whose valid, labelled share reaches ``min_valid_fraction``; the rest are counted."""
    spec = load_registry(extra=extra_sources).get_spec(sensor)
    patch = _Patch(root, reference_dates)
    images, labels, groups, keys = [], [], [], []
    skipped: Counter = Counter()
    for frame, date in enumerate(patch.dates):
        image, valid = patch.image(frame, spec)
        for place, (y, x) in enumerate(patch.tiles(tile)):
            window = (slice(y, y + tile), slice(x, x + tile))
            pixels = np.where(valid[window] & (patch.lulc[window] > 0), patch.lulc[window], IGNORE)
            if (pixels != IGNORE).mean() < min_valid_fraction:
                skipped["clouds or no data"] += 1
                continue
            images.append(image[(slice(None), *window)])
            labels.append(pixels)
            groups.append(place)
            keys.append(f"{date}_y{y}_x{x}")
    if not images:
        raise DataError(f"{root}: no tile of {tile} px has {min_valid_fraction:.0%} valid labelled pixels")
    log_skipped(f"eolearn {root}", len(images), dict(skipped))
    pixel_labels = np.stack(labels)
    if kind == "scene":
        ids = np.array([np.bincount(p[p != IGNORE]).argmax() for p in pixel_labels])  # majority class per tile
    elif kind == "segmentation":
        ids = pixel_labels
    else:
        raise DataError(f"eolearn_lulc: kind {kind!r} must be scene or segmentation")
    present = sorted(int(c) for c in np.unique(ids) if c != IGNORE)
    lookup = np.full(max(LULC_CLASSES) + 2, IGNORE)  # index -1 (IGNORE) stays IGNORE
    lookup[present] = np.arange(len(present))
    target = torch.from_numpy(lookup[ids]).long()
    return LabelledSet(
        name=f"eo-learn LULC {kind} ({tile} px)",
        kind=kind,
        modality=spec.modality,
        sensor=sensor,
        images=stack_images(images, str(root)),
        labels=target,
        groups=torch.tensor(groups),
        class_names=[LULC_CLASSES[c] for c in present],
        keys=keys,
        skipped=dict(skipped),
    )


def load_eolearn_change(
    root: Path,
    tile: int = 32,
    change_threshold: float = 0.1,
    min_valid_fraction: float = 0.5,
    sensor: str = "sentinel2_l1c",
    reference_dates: Sequence[int] = REFERENCE_DATES,
    extra_sources: Sequence[str] = (),
) -> LabelledSet:
    """Every pair of dates (earlier, later), tile by tile; a pixel changed where |NDVI_after - NDVI_before|
    exceeds ``change_threshold``; pixels invalid on either date are not scored."""
    spec = load_registry(extra=extra_sources).get_spec(sensor)
    patch = _Patch(root, reference_dates)
    frames = sorted(range(len(patch.dates)), key=lambda f: patch.dates[f])
    read = {f: patch.image(f, spec) for f in frames}
    before, after, labels, groups, keys = [], [], [], [], []
    skipped: Counter = Counter()
    for first, second in itertools.combinations(frames, 2):
        changed = np.abs(patch.ndvi(second) - patch.ndvi(first)) > change_threshold
        both_valid = read[first][1] & read[second][1]
        for place, (y, x) in enumerate(patch.tiles(tile)):
            window = (slice(y, y + tile), slice(x, x + tile))
            if both_valid[window].mean() < min_valid_fraction:
                skipped["clouds on either date"] += 1
                continue
            before.append(read[first][0][(slice(None), *window)])
            after.append(read[second][0][(slice(None), *window)])
            labels.append(np.where(both_valid[window], changed[window], IGNORE))
            groups.append(place)
            keys.append(f"{patch.dates[first]}_{patch.dates[second]}_y{y}_x{x}")
    if not before:
        raise DataError(f"{root}: no pair of dates has a tile of {tile} px valid on both")
    log_skipped(f"eolearn change {root}", len(before), dict(skipped))
    return LabelledSet(
        name=f"eo-learn NDVI change > {change_threshold} ({tile} px)",
        kind="change",
        modality=spec.modality,
        sensor=sensor,
        images=stack_images(before, str(root)),
        images_after=stack_images(after, str(root)),
        labels=torch.from_numpy(np.stack(labels)).long(),
        groups=torch.tensor(groups),
        class_names=["unchanged", "changed"],
        keys=keys,
        skipped=dict(skipped),
    )
