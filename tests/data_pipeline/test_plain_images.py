"""Plain images (PNG, JPEG: no CRS, no transform) are first-class single-image inputs: flat or class folders,
a split file picks the images; pairing them needs a map grid and is an error naming the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, PairSpec
from tests.data_pipeline.helpers import DEMO, read_samples


def _png(path: Path, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(1, 256, size=(3, 64, 64), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a plain image has no georeferencing: that is the point
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as ds:
            ds.write(pixels)
    return pixels


def test_class_folders_of_pngs_with_a_split_file(tmp_path):
    images = {name: _png(tmp_path / "imgs" / name, seed) for seed, name in enumerate(["Forest/1.png", "River/2.png"])}
    _png(tmp_path / "imgs" / "River" / "3.png", 9)  # not in the split: left out
    (tmp_path / "train.txt").write_text("Forest/1.png\nRiver/2.png\n")
    spec = InputSpec("worldview2_rgb", str(tmp_path / "imgs" / "*" / "*.png"), scene_list=str(tmp_path / "train.txt"))
    manifest = build(BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=64, strict=True))
    assert manifest["samples"] == 2 and manifest["quarantined"] == []
    samples = {s["json"]["scene"]: s for s in read_samples(tmp_path / "out")}
    for name, pixels in images.items():
        sample = samples[Path(name).stem]
        assert np.array_equal(sample["image.npy"], (pixels.astype(np.float64) / 255.0).astype(np.float32))
        assert sample["valid.npy"].all()


def test_pairing_a_plain_image_is_an_error_naming_it(tmp_path):
    _png(tmp_path / "rgb" / "S2_x_87_48.png", 0)
    pair = PairSpec(
        "rgb_s2",
        inputs=[
            InputSpec("worldview2_rgb", str(tmp_path / "rgb" / "*.png")),
            InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif"),
        ],
    )
    manifest = build(BuildConfig(pairs=[pair], out_dir=str(tmp_path / "out"), tile_size=60))
    (quarantined,) = manifest["quarantined"]
    assert quarantined["file"] == str(tmp_path / "rgb" / "S2_x_87_48.png")
    assert "not georeferenced (no CRS), so stream 'rgb_s2' cannot reproject it" in quarantined["reason"]
    assert manifest["samples"] == 0
