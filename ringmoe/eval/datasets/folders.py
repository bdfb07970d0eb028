"""Scene classification from one folder per class (``root/<class>/*.tif``), the layout of EuroSAT (and of
torchgeo's copy of it): each file is one scene, read through ``data_pipeline`` with the source's bands.

For EuroSAT_MS (13 bands, B8A last) with the ``sentinel2_l1c`` source, map the modality bands to their file
bands: ``band_indexes: {B02: 2, B03: 3, B04: 4, B08: 8}``. Every scene is its own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from data_pipeline.config import InputSpec
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import load_registry
from ringmoe.eval.datasets.common import LabelledSet, read_scene, stack_images

SCENE_SUFFIXES = (".tif", ".tiff", ".jpg", ".png")


def load_class_folders(
    root: Path, sensor: str, band_indexes: Optional[dict[str, int]] = None, limit_per_class: int = 0
) -> LabelledSet:
    spec_sensor = load_registry()[sensor]
    classes = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    if len(classes) < 2:
        raise DataError(f"{root}: need one folder per class (at least 2), found {[c.name for c in classes]}")
    spec = InputSpec(source=sensor, scenes=str(root), band_indexes=dict(band_indexes) if band_indexes else None)
    images, labels, keys = [], [], []
    for label, folder in enumerate(classes):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SCENE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: class folder holds no {'/'.join(SCENE_SUFFIXES)} scene")
        for file in files[:limit_per_class] if limit_per_class else files:
            images.append(read_scene(file, spec_sensor, spec)[0])
            labels.append(label)
            keys.append(f"{folder.name}/{file.name}")
    return LabelledSet(
        name=f"{Path(root).name} scenes",
        kind="scene",
        modality=spec_sensor.modality,
        sensor=sensor,
        images=stack_images(images, str(root)),
        labels=torch.tensor(labels),
        groups=torch.arange(len(labels)),
        class_names=[c.name for c in classes],
        keys=keys,
    )
