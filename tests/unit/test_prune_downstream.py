"""Downstream retention of ``ringmoe prune`` on a small real labelled set: 16 px tiles of the real Sentinel-2 L1C
stack in demo_data/, written as EuroSAT_MS-style GeoTIFFs into one folder per class with split files, probed on
the tiny model's frozen features (random init: the check is of the bookkeeping, not of the model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from ringmoe.checkpoint.consolidate import load_consolidated_model
from ringmoe.config.schema import load_config
from ringmoe.core.batch import MultiModalBatch
from ringmoe.core.errors import ConfigError
from ringmoe.eval.datasets import ADAPTERS
from ringmoe.eval.metrics import accuracy, confusion_matrix
from ringmoe.eval.probe import linear_probe
from ringmoe.models.factory import build_model
from ringmoe.prune.calibrate import calibrate
from ringmoe.prune.run import prune_checkpoint
from tests.unit.test_model import batch_for
from tests.unit.test_prune import write_consolidated

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
EOLEARN = REPO / "demo_data" / "sentinel2_l1c_timeseries_eolearn"
EUROSAT_MS_ORDER = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8]  # B01..B08, B09, B10, B11, B12, B8A
BANDS = "{B02: 2, B03: 3, B04: 4, B08: 8}"
SPLIT_DATES = {"2015-07-11": "train", "2015-08-30": "test"}  # two cloud-free dates of the stack


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 tiles: every 16 px tile of two dates, labelled with its majority land cover; one date trains, the
    other tests (the same places: fine for comparing two encoders, not for a published score)."""
    root = tmp_path_factory.mktemp("labelled")
    scenes = ADAPTERS["eolearn_lulc"](EOLEARN, kind="scene", tile=16)
    raw = np.load(EOLEARN / "REFERENCE_SCENES.npy", allow_pickle=False)
    frames = {"2015-07-11": 4, "2015-08-30": 3}  # the stack's frame of each date
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    profile = dict(driver="GTiff", height=16, width=16, count=13, dtype="uint16", crs="EPSG:32633")
    for key, label in zip(scenes.keys, scenes.labels):
        date = key.split("_")[0]
        if date not in SPLIT_DATES:
            continue
        y, x = (int(part[1:]) for part in key.split("_")[1:])
        tile = (raw[frames[date], y : y + 16, x : x + 16][..., EUROSAT_MS_ORDER] * 10000).round().astype(np.uint16)
        folder = root / scenes.class_names[int(label)]
        folder.mkdir(exist_ok=True)
        with rasterio.open(folder / f"{key}.tif", "w", transform=from_origin(0, 0, 10, 10), **profile) as f:
            f.write(tile.transpose(2, 0, 1))
        splits[SPLIT_DATES[date]].append(f"{folder.name}/{key}.tif")
    (root / "splits").mkdir()
    for split, keys in splits.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{k}\n" for k in keys))
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A consolidated tiny model (random init) and a routing report calibrated on it, so that pruning reads no
    shards (``--report`` with ``eval_batches=0 rescale=false``)."""
    out = tmp_path_factory.mktemp("source")
    run = load_config(TINY)
    model = build_model(run.model, seed=0).eval()
    report = calibrate(model, [batch_for(run.model, seed=s) for s in range(2)])
    (out / "routing_report.json").write_text(json.dumps(report.to_dict()))
    return write_consolidated(model, run.model, out / "consolidated"), out / "routing_report.json"


def _prune(source, labelled: Path, out: Path, *overrides: str):
    consolidated, report = source
    config = load_config(
        TINY,
        [
            "prune.eval_batches=0",
            "prune.rescale=false",
            f"prune.downstream.root={labelled}",
            "prune.downstream.sensor=sentinel2_l1c",
            f"prune.downstream.options={{band_indexes: {BANDS}}}",
            "prune.downstream.bootstrap=200",
            *overrides,
        ],
    )
    return prune_checkpoint(consolidated, out, config, report)


def test_keeping_every_expert_retains_exactly_one(source, labelled, tmp_path):
    result = _prune(source, labelled, tmp_path / "same", "prune.modal_experts=[4,4]", "prune.collab_experts=[4,4]")
    d = result.downstream
    assert (d.train_images, d.test_images, d.modality) == (36, 36, "multispectral")
    assert d.pruned_accuracy == d.unpruned_accuracy
    # Exactly [1, 1]: every bootstrap draw scores both encoders on the same resample (an unpaired interval of
    # two equal encoders would still spread around 1).
    assert (d.retention, d.low, d.high) == (1.0, 1.0, 1.0)


def _scored_alone(directory: Path, data, train, test) -> float:
    """Test accuracy of a probe on ``directory``'s encoder, without the harness's encoder wrapper: the module
    called directly in eval mode on the train and test images resized to its input."""
    model, config = load_consolidated_model(directory)
    images = torch.nn.functional.interpolate(
        data.images[torch.cat([train, test])], size=(config.img_size,) * 2, mode="bilinear", antialias=True
    )
    with torch.no_grad():
        features = model.eval().encoder(MultiModalBatch({data.modality: images})).features.mean(dim=(2, 3)).double()
    predicted = linear_probe(features[: len(train)], data.labels[train], features[len(train) :], 2).argmax(1)
    return accuracy(confusion_matrix(predicted, data.labels[test], 2))


@pytest.mark.parametrize(
    "overrides",
    [("prune.modal_experts=[2,2]", "prune.collab_experts=[2,2]"), ("prune.strategy=to_dense",)],
    ids=["half_modality_aware", "to_dense"],
)
def test_reported_numbers_match_scoring_each_encoder_alone(source, labelled, tmp_path, overrides):
    # One forward for all 72 images here and in the harness: the same matmuls, so equal predictions are exact.
    result = _prune(source, labelled, tmp_path / "pruned", "prune.downstream.batch_size=72", *overrides)
    d = result.downstream
    bands = {"B02": 2, "B03": 3, "B04": 4, "B08": 8}
    data = ADAPTERS["class_folders"](labelled, sensor="sentinel2_l1c", band_indexes=bands)
    train, test = torch.nonzero(data.split == 0).flatten(), torch.nonzero(data.split == 2).flatten()
    assert d.unpruned_accuracy == _scored_alone(source[0], data, train, test)
    assert d.pruned_accuracy == _scored_alone(tmp_path / "pruned", data, train, test)
    assert d.retention == pytest.approx(d.pruned_accuracy / d.unpruned_accuracy)
    assert d.low <= d.retention <= d.high
    saved = json.loads((tmp_path / "pruned" / "retention.json").read_text())["downstream"]
    assert saved == d.to_dict()
    row = f"36 train, 36 test images | {d.unpruned_accuracy:.4f} | {d.pruned_accuracy:.4f} | {d.retention:.3f}"
    assert row in (tmp_path / "pruned" / "PRUNE.md").read_text()


def test_bad_downstream_settings_fail_before_anything_is_written(source, labelled, tmp_path):
    half = ("prune.modal_experts=[2,2]", "prune.collab_experts=[2,2]")
    with pytest.raises(ConfigError, match="deployment modalities"):
        _prune(source, labelled, tmp_path / "sar", *half, "prune.modalities=[sar_amplitude]")
    assert not (tmp_path / "sar").exists()
    no_splits = tmp_path / "no_splits"
    for folder in ("forest", "grassland"):
        (no_splits / folder).mkdir(parents=True)
        (no_splits / folder / "a.tif").write_bytes(next((labelled / folder).glob("*.tif")).read_bytes())
    with pytest.raises(ConfigError, match="needs scene classification with train and test split files"):
        _prune(source, no_splits, tmp_path / "out", *half)
    with pytest.raises(ConfigError, match="prune.downstream.options.sensor: set prune.downstream.sensor"):
        _prune(source, labelled, tmp_path / "out", *half, "prune.downstream.options.sensor=worldview2_rgb")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'tiles'"):
        _prune(source, labelled, tmp_path / "out", *half, "prune.downstream.options.tiles=3")
    with pytest.raises(ConfigError, match=r"prune.downstream.label_fraction=0.0 must be in \(0, 1\]"):
        load_config(TINY, ["prune.downstream.label_fraction=0"])
