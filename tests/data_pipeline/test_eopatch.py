"""`ringmoe-data eopatch`: eo-learn arrays -> one GeoTIFF per date with the patch's grid, DN encoding and cloud
masks; bad arrays and grids are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from data_pipeline.eopatch import eopatch_to_geotiffs
from ringmoe.core.errors import DataError
from tests.data_pipeline.helpers import DEMO

EOLEARN = DEMO / "sentinel2_l1c_timeseries_eolearn"
PATCH = EOLEARN / "TestEOPatch"


def test_dates_grid_values_and_masks(tmp_path):
    written = eopatch_to_geotiffs(
        EOLEARN / "REFERENCE_SCENES.npy", PATCH / "timestamps.json", PATCH / "bbox.geojson", tmp_path,
        frame_dates=[2, 1, 4, 3, 0], valid_file=PATCH / "mask" / "IS_VALID.npy",
    )  # fmt: skip
    assert sorted(p.name for p in written)[0] == "eopatch_20150711T100008.tif" and len(written) == 5
    scenes = np.load(EOLEARN / "REFERENCE_SCENES.npy", allow_pickle=False)
    valid = np.load(PATCH / "mask" / "IS_VALID.npy", allow_pickle=False)[..., 0]
    with rasterio.open(tmp_path / "eopatch_20150711T100008.tif") as ds:  # frame 4 = timestamps[0]
        assert (ds.count, ds.dtypes[0], ds.crs.to_string(), ds.shape) == (13, "uint16", "EPSG:32633", (101, 100))
        assert ds.descriptions[7] == "B08" and ds.nodata == 0
        np.testing.assert_array_equal(ds.read(4), np.round(scenes[4][..., 3] * 10000).astype(np.uint16))
        left, bottom, right, top = ds.bounds
    xs, ys = zip(*json.loads((PATCH / "bbox.geojson").read_text())["coordinates"][0])
    assert (left, bottom, right, top) == pytest.approx((min(xs), min(ys), max(xs), max(ys)))
    with rasterio.open(tmp_path / "masks" / "eopatch_20150731T100009.tif") as ds:  # frame 1, a cloudy date
        np.testing.assert_array_equal(ds.read(1), (~valid[1]).astype(np.uint8))
        assert ds.read(1).all()  # fully cloud-flagged


def test_bad_arrays_and_grids_are_named(tmp_path):
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((5, 101, 100), dtype=np.float32))
    with pytest.raises(DataError, match="flat.npy: shape \\(5, 101, 100\\), expected"):
        eopatch_to_geotiffs(flat, PATCH / "timestamps.json", PATCH / "bbox.geojson", tmp_path / "o")
    bbox = tmp_path / "bbox.geojson"
    shape = json.loads((PATCH / "bbox.geojson").read_text())
    shape.pop("crs", None)
    bbox.write_text(json.dumps(shape))
    with pytest.raises(DataError, match="bbox.geojson: no EPSG code"):
        eopatch_to_geotiffs(
            EOLEARN / "REFERENCE_SCENES.npy", PATCH / "timestamps.json", bbox, tmp_path / "o", [2, 1, 4, 3, 0]
        )
    with pytest.raises(DataError, match="5 frames, frame_dates \\[0, 1\\]"):
        eopatch_to_geotiffs(
            EOLEARN / "REFERENCE_SCENES.npy", PATCH / "timestamps.json", PATCH / "bbox.geojson", tmp_path / "o", [0, 1]
        )
