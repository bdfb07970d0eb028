"""Scene classification from one folder per class (``root/<class>/*.tif``), the layout of EuroSAT (and of
torchgeo's copy of it): each file is one scene, read through ``data_pipeline`` with the source's bands.

Fixed splits: when ``root/splits/{train,val,test}.txt`` exist (one ``<class>/<file>`` per line, EuroSAT's split
files), only the listed scenes are read, each marked with its split, and probes train on ``train`` and report on
``test``. A listed file that does not exist, or one listed twice, is an error naming the split file; scenes in no
split file are counted as left out.

For EuroSAT_MS (13 bands, B8A last) with the ``sentinel2_l1c`` source, map the modality bands to their file
bands: ``band_indexes: {B02: 2, B03: 3, B04: 4, B08: 8}``. Every scene is its own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from data_pipeline.config import InputSpec
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import load_registry
from ringmoe.eval.datasets.common import SPLITS, LabelledSet, log_skipped, read_scene, stack_images

SCENE_SUFFIXES = (".tif", ".tiff", ".jpg", ".png")
SPLITS_FOLDER = "splits"


def read_split_files(root: Path) -> Optional[dict[str, int]]:
    """``<class>/<file>`` -> split index from ``root/splits/*.txt``; None when the set has no split files."""
    folder = root / SPLITS_FOLDER
    if not (folder / "train.txt").is_file():
        return None
    assignment: dict[str, int] = {}
    for index, split in enumerate(SPLITS):
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"{path}: missing ({folder} has train.txt, so it needs {', '.join(SPLITS)})")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            key = line.strip()
            if not key:
                continue
            if key in assignment:
                raise DataError(f"{path}:{number}: {key} is already in {SPLITS[assignment[key]]}.txt")
            if not (root / key).is_file():
                raise DataError(f"{path}:{number}: {root / key} does not exist")
            assignment[key] = index
    return assignment


def load_class_folders(
    root: Path,
    sensor: str,
    band_indexes: Optional[dict[str, int]] = None,
    limit_per_class: int = 0,
    extra_sources: Sequence[str] = (),
) -> LabelledSet:
    """``limit_per_class``: at most this many scenes of each class (of each split, with split files), in file
    name order (split file order), for a quick pass."""
    root = Path(root)
    spec_sensor = load_registry(extra=extra_sources).get_spec(sensor)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != SPLITS_FOLDER) if root.is_dir() else []
    if len(folders) < 2:
        raise DataError(f"{root}: need one folder per class (at least 2), found {[c.name for c in folders]}")
    assignment = read_split_files(root)
    spec = InputSpec(source=sensor, scenes=str(root), band_indexes=dict(band_indexes) if band_indexes else None)
    images, labels, keys, splits = [], [], [], []
    skipped = 0
    for label, folder in enumerate(folders):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SCENE_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: class folder holds no {'/'.join(SCENE_SUFFIXES)} scene")
        if assignment is None:
            chosen = [(f, -1) for f in files]
        else:
            listed = {f"{folder.name}/{f.name}": f for f in files}
            skipped += sum(1 for key in listed if key not in assignment)
            chosen = [(listed[k], s) for k, s in assignment.items() if k in listed]  # split file order
        taken: dict[int, int] = {}
        for file, split in chosen:
            if limit_per_class and taken.get(split, 0) >= limit_per_class:
                continue
            taken[split] = taken.get(split, 0) + 1
            images.append(read_scene(file, spec_sensor, spec)[0])
            labels.append(label)
            keys.append(f"{folder.name}/{file.name}")
            splits.append(split)
    left_out = {"in no split file": skipped} if skipped else {}
    name = f"{root.name} scenes"
    log_skipped(name, len(labels), left_out)
    return LabelledSet(
        name=name,
        kind="scene",
        modality=spec_sensor.modality,
        sensor=sensor,
        images=stack_images(images, str(root)),
        labels=torch.tensor(labels),
        groups=torch.arange(len(labels)),
        class_names=[c.name for c in folders],
        keys=keys,
        skipped=left_out,
        split=None if assignment is None else torch.tensor(splits),
    )
