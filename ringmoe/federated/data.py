"""A client's own data for the federated task: an evaluation adapter's labelled set, mapped to the shared label
(``forest``: a forest class in the tile), fitted to the specialist's input size and split by place (stratified
by label, so both parts hold both classes where the data has them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ringmoe.config.federated import ClientConfig
from ringmoe.core.errors import ConfigError
from ringmoe.eval.datasets import ADAPTERS, LabelledSet
from ringmoe.eval.probe import group_folds

# CORINE classes that are forest (BigEarthNet); the eo-learn land-cover class of the same meaning.
FOREST_CLASSES = {"Broad-leaved forest", "Coniferous forest", "Mixed forest", "forest"}


@dataclass
class ClientData:
    name: str
    modality: str
    sensor: str
    train_images: torch.Tensor
    train_labels: torch.Tensor  # (N,) 0/1
    test_images: torch.Tensor
    test_labels: torch.Tensor


def forest_labels(data: LabelledSet) -> torch.Tensor:
    forest = torch.tensor([name in FOREST_CLASSES for name in data.class_names])
    if data.kind == "multilabel":
        return (data.labels.bool() & forest).any(dim=1).long()
    if data.kind == "scene":
        return forest[data.labels].long()
    raise ConfigError(f"{data.name}: a {data.kind} set has no per-tile label for the forest task")


def quadrants(data: LabelledSet, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Large patches (BigEarthNet's 120 px) as their four quadrants, each with its patch's label and group."""
    height, width = data.images.shape[-2:]
    h, w = height // 2, width // 2
    parts = [data.images[..., y : y + h, x : x + w] for y in (0, h) for x in (0, w)]
    images = torch.stack(parts, dim=1).flatten(0, 1)
    return images, labels.repeat_interleave(4), data.groups.repeat_interleave(4)


def client_data(config: ClientConfig, config_dir: Path, input_size: int, held_out: float, seed: int) -> ClientData:
    if config.dataset not in ADAPTERS:
        raise ConfigError(f"client {config.name!r}: dataset {config.dataset!r} not in {sorted(ADAPTERS)}")
    root = Path(config.root) if Path(config.root).is_absolute() else config_dir / config.root
    data = ADAPTERS[config.dataset](root, **config.options)
    labels = forest_labels(data)
    images, groups = data.images, data.groups
    if min(images.shape[-2:]) >= 2 * input_size - input_size // 4:
        images, labels, groups = quadrants(data, labels)
    images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    # Held out: one of round(1 / held_out) folds of places, stratified by label (both classes in each part).
    folds = group_folds(labels, groups, max(2, round(1 / held_out)), seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    test[folds[0]] = True
    return ClientData(config.name, data.modality, data.sensor, images[~test], labels[~test], images[test], labels[test])
