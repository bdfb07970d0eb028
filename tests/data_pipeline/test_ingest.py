"""Reading real rasters and normalizing them: shapes, dtypes, value ranges, channel order, NaN masking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from data_pipeline.config import InputSpec
from data_pipeline.read import SceneReader, resolve_scene
from data_pipeline.tiling import tile_count, tile_geometry, tile_windows
from ringmoe.core.normalization import channel_names, normalize
from tests.data_pipeline.helpers import DEMO, S2_SCENE, write_geotiff

WINDOW = Window(0, 0, 64, 64)


def _tile(registry, source: str, path, **input_kwargs):
    sensor = registry.get_spec(source)
    scene = resolve_scene(path, InputSpec(source=source, scenes=str(path), **input_kwargs), sensor)
    with SceneReader(scene, sensor) as reader:
        raw = reader.read(WINDOW)
        image, valid = normalize(raw, sensor, reader.file_nodata())
    return raw, image, valid


def test_sentinel2_tile_shape_dtype_range(registry):
    raw, image, valid = _tile(registry, "sentinel2_l2a", S2_SCENE, band_files="{scene}_{band}.tif")
    assert raw.dtype == np.uint16 and raw.shape == (4, 64, 64)
    assert image.dtype == np.float32 and image.shape == (4, 64, 64)
    assert valid.dtype == np.uint8 and valid.shape == (64, 64)
    assert 0.0 <= image.min() and image.max() <= 1.5
    # Channel 0 is B02 (blue): the file's values / 10000, clipped.
    with rasterio.open(S2_SCENE / f"{S2_SCENE.name}_B02.tif") as ds:
        blue = ds.read(1, window=WINDOW)
    np.testing.assert_allclose(image[0], np.clip(blue * 1e-4, 0, 1.5), rtol=1e-6)


def test_complex_sar_becomes_iq_channels(registry):
    scene_dir = DEMO / "spacenet6_capella_sar"
    raw, image, valid = _tile(registry, "capella_quadpol", scene_dir, band_files="sar_{band_lower}.tif")
    assert raw.dtype == np.complex64
    assert image.dtype == np.float32 and image.shape == (8, 64, 64)
    expected = ["HH_I", "HH_Q", "HV_I", "HV_Q", "VH_I", "VH_Q", "VV_I", "VV_Q"]
    assert channel_names(registry["capella_quadpol"]) == expected
    with rasterio.open(scene_dir / "sar_hv.tif") as ds:
        hv = ds.read(1, window=WINDOW)
    np.testing.assert_allclose(image[2], np.clip(hv.real * 5e-4, -8, 8), rtol=1e-6)
    np.testing.assert_allclose(image[3], np.clip(hv.imag * 5e-4, -8, 8), rtol=1e-6)
    assert valid.all()


def test_sentinel1_db_maps_clip_range_to_unit_interval(registry):
    scene = DEMO / "sentinel1_grd_bigearthnet" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    raw, image, _ = _tile(registry, "sentinel1_grd", scene, band_files="{scene}_{band}.tif")
    assert image.shape == (3, 64, 64) and 0.0 <= image.min() and image.max() <= 1.0
    assert channel_names(registry["sentinel1_grd"]) == ["VV", "VH", "VV_VH_ratio"]
    db = np.clip(raw.astype(np.float64), -35, 10)
    np.testing.assert_allclose(image[:2], (db + 35) / 45, rtol=1e-5)
    # VV/VH in dB, clipped to [-10, 25] (sentinel1_grd.yaml) and mapped to [0, 1].
    np.testing.assert_allclose(image[2], (np.clip(db[0] - db[1], -10, 25) + 10) / 35, rtol=1e-5)
    # Co-pol backscatter exceeds cross-pol over land: the ratio channel sits above its 0 dB point.
    assert image[2].mean() > 10 / 35


def test_db_ratio_is_finite_for_zero_amplitude_and_masks_nan(registry):
    sensor = registry["sentinel1_grd"]
    linear = dataclasses.replace(sensor, normalization=dataclasses.replace(sensor.normalization, input_is_db=False))
    vv = np.array([[1.0, 0.0, 0.1, np.nan]], dtype=np.float32)
    vh = np.array([[0.1, 0.0, 1.0, 0.5]], dtype=np.float32)
    image, valid = normalize(np.stack([vv, vh]), linear)
    assert np.isfinite(image).all() and valid[0].tolist() == [1, 1, 1, 0]
    # 0 dB - (-20 dB) = +20 dB; both at the clip floor -> 0 dB; -20 dB; NaN pixel -> invalid -> 0.
    np.testing.assert_allclose(image[2, 0], [30 / 35, 10 / 35, 0.0, 0.0], rtol=1e-6)


def test_linear_amplitude_converts_with_20_log10(registry):
    sensor = registry["sentinel1_grd"]
    linear = dataclasses.replace(sensor, normalization=dataclasses.replace(sensor.normalization, input_is_db=False))
    raw = np.array([1.0, 0.1, 0.0, -1.0], dtype=np.float32).reshape(1, 1, 4).repeat(2, axis=0)
    image, valid = normalize(raw, linear)
    # 1 -> 0 dB, 0.1 -> -20 dB, 0 -> -inf -> clip floor, negative amplitude -> invalid -> 0.
    np.testing.assert_allclose(image[0, 0], [35 / 45, 15 / 45, 0.0, 0.0], rtol=1e-6)
    assert valid[0].tolist() == [1, 1, 1, 0]


def test_band_indexes_pick_bands_from_multiband_file(registry):
    path = DEMO / "landsat7_etm" / "RGB.byte.tif"
    window = Window(300, 300, 64, 64)  # inside the scene, away from the nodata collar
    sensor = registry["landsat7_etm"]
    scene = resolve_scene(path, InputSpec("landsat7_etm", str(path), band_indexes={"B1": 3, "B2": 2, "B3": 1}), sensor)
    with SceneReader(scene, sensor) as reader, rasterio.open(path) as ds:
        image, valid = normalize(reader.read(window), sensor, reader.file_nodata())
        red, blue = ds.read(1, window=window), ds.read(3, window=window)
    ok = valid == 1  # a 0 (nodata) in any band masks the pixel in all channels
    assert ok.mean() > 0.99 and (image[:, ~ok] == 0).all()
    np.testing.assert_allclose(image[0][ok], red[ok] / 255.0, rtol=1e-6)  # red = file band 1
    np.testing.assert_allclose(image[2][ok], blue[ok] / 255.0, rtol=1e-6)  # blue = file band 3


def test_nan_and_nodata_pixels_are_masked_and_zeroed(registry, tmp_path):
    data = np.full((4, 64, 64), 500.0, dtype=np.float64)
    data[:, :10, :] = np.nan  # a NaN strip in every band
    data[2, 20:30, 20:30] = 0.0  # the source's nodata (0) in one band
    data[1, 40, 40] = np.inf
    path = write_geotiff(tmp_path / "ms.tif", data)
    _, image, valid = _tile(registry, "worldview2", path)
    assert np.isfinite(image).all()
    assert valid[:10].sum() == 0 and valid[20:30, 20:30].sum() == 0 and valid[40, 40] == 0
    assert (image[:, valid == 0] == 0).all()
    assert valid.sum() == 64 * 64 - 10 * 64 - 100 - 1
    np.testing.assert_allclose(image[:, valid == 1], 500.0 * registry["worldview2"].normalization.scale, rtol=1e-6)


def test_file_nodata_is_honoured_too(registry, tmp_path):
    data = np.full((4, 64, 64), 700.0, dtype=np.float32)
    data[:, :32] = -9999.0
    path = write_geotiff(tmp_path / "ms.tif", data, nodata=-9999.0)
    _, image, valid = _tile(registry, "worldview2", path)
    assert valid[:32].sum() == 0 and valid[32:].all() and (image[:, :32] == 0).all()


def test_tiles_drop_partial_edges_and_carry_geometry():
    windows = list(tile_windows(120, 130, 64, 56))
    assert [(w.row_off, w.col_off) for w in windows] == [(0, 0), (0, 56), (56, 0), (56, 56)]
    assert tile_count(120, 130, 64, 56) == 4 and tile_count(63, 500, 64, 64) == 0
    with rasterio.open(DEMO / "landsat7_etm" / "RGB.byte.tif") as ds:
        geometry = tile_geometry(Window(56, 112, 64, 64), ds.transform)
        left, bottom, right, top = geometry["bounds"]
        assert (left, top) == pytest.approx(ds.transform @ (56, 112))
        assert (right, bottom) == pytest.approx(ds.transform @ (120, 176))
        assert geometry["transform"][2] == pytest.approx(left) and len(geometry["transform"]) == 6
