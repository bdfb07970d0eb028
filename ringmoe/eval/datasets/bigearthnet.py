"""BigEarthNet (v1 layout): one folder per patch with one GeoTIFF per band and ``<patch>_labels_metadata.json``
holding the patch's CORINE labels (43-class nomenclature). Sentinel-2 (``sentinel2_l2a``) or Sentinel-1
(``sentinel1_grd``) patches; the full archive's folders read the same way as the pack's six."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from data_pipeline.config import InputSpec
from ringmoe.core.errors import DataError
from ringmoe.core.sensors import load_registry
from ringmoe.eval.datasets.common import LabelledSet, read_scene, stack_images

# BigEarthNet's 43 CORINE Land Cover level-3 labels (Sumbul et al. 2019), in the nomenclature's order.
LABELS_43 = [
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
    "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
    "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
    "Fruit trees and berry plantations", "Olive groves", "Pastures", "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland",
    "Moors and heathland", "Sclerophyllous vegetation", "Transitional woodland/shrub", "Beaches, dunes, sands",
    "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines",
    "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
]  # fmt: skip
LABELS_FILE = "{patch}_labels_metadata.json"


def read_labels(patch: Path) -> list[str]:
    file = patch / LABELS_FILE.format(patch=patch.name)
    if not file.is_file():
        raise DataError(f"{file}: labels of BigEarthNet patch {patch.name!r} not found")
    try:
        labels = json.loads(file.read_text())["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{file}: not a BigEarthNet labels file with a 'labels' list ({exc!r})") from None
    unknown = sorted(set(labels) - set(LABELS_43))
    if unknown:
        raise DataError(f"{file}: labels {unknown} are not in BigEarthNet's 43-class nomenclature")
    return labels


def footprint(patch_name: str) -> str:
    """``..._87_48``: the column/row suffix S1 and S2 patches of one place share."""
    return "_".join(patch_name.split("_")[-2:])


def load_bigearthnet(
    root: Path,
    sensor: str = "sentinel2_l2a",
    band_files: str = "{scene}_{band}.tif",
    limit: int = 0,
    extra_sources: Sequence[str] = (),
) -> LabelledSet:
    spec_sensor = load_registry(extra=extra_sources).get_spec(sensor)
    patches = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    if not patches:
        raise DataError(f"{root}: no BigEarthNet patch folders found")
    patches = patches[:limit] if limit else patches
    spec = InputSpec(source=sensor, scenes=str(root), band_files=band_files)
    images, labels, keys, places = [], [], [], []
    for patch in patches:
        image, _valid = read_scene(patch, spec_sensor, spec)
        images.append(image)
        hot = torch.zeros(len(LABELS_43))
        hot[[LABELS_43.index(name) for name in read_labels(patch)]] = 1.0
        labels.append(hot)
        keys.append(patch.name)
        places.append(footprint(patch.name))
    group_ids = {place: index for index, place in enumerate(dict.fromkeys(places))}
    return LabelledSet(
        name=f"bigearthnet ({sensor})",
        kind="multilabel",
        modality=spec_sensor.modality,
        sensor=sensor,
        images=stack_images(images, str(root)),
        labels=torch.stack(labels),
        groups=torch.tensor([group_ids[p] for p in places]),
        class_names=list(LABELS_43),
        keys=keys,
    )
