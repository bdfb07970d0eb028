"""netCDF and HDF5 scenes through GDAL subdatasets: a CF netCDF-4 of a real Sentinel-2 patch gives exactly the
shards of its GeoTIFFs; a typo, a missing grid mapping and a directory scene are errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, validate
from ringmoe.core.errors import ConfigError, DataError
from tests.data_pipeline.helpers import S2_SCENE, read_samples

pytest.importorskip("netCDF4")
from tests.data_pipeline.containers import write_cf_netcdf, write_hdf5  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08"]


def _netcdf(folder: Path, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifs = {band.lower(): S2_SCENE / f"{S2_SCENE.name}_{band}.tif" for band in BANDS}
    return write_cf_netcdf(folder / f"{S2_SCENE.name}.nc", tifs, **kw)


def _images(out: Path) -> list[np.ndarray]:
    return [s["image.npy"] for s in read_samples(out)]


def _build(tmp_path: Path, name: str, spec: InputSpec) -> Path:
    out = tmp_path / name
    build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=60, strict=True))
    return out


def test_netcdf_variables_give_the_samples_of_the_geotiffs(tmp_path):
    _netcdf(tmp_path / "nc")
    reference = _build(tmp_path, "tif", InputSpec("sentinel2_l2a", str(S2_SCENE), band_files="{scene}_{band}.tif"))
    netcdf = InputSpec("sentinel2_l2a", str(tmp_path / "nc" / "*.nc"), subdataset="{band_lower}")
    want, got = _images(reference), _images(_build(tmp_path, "nc_out", netcdf))
    assert len(want) == 4
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_a_subdataset_uri_in_scenes_selects_one_variable_of_all_bands(tmp_path):
    folder = tmp_path / "nc"
    folder.mkdir()
    tifs = {band: S2_SCENE / f"{S2_SCENE.name}_{band}.tif" for band in BANDS}
    write_cf_netcdf(folder / f"{S2_SCENE.name}.nc", tifs, stack="reflectance")
    write_cf_netcdf(folder / "other_variable.nc", tifs, stack="radiance")  # the URI's variable is not in it
    uri = f'NETCDF:"{folder / "*.nc"}":reflectance'
    config = BuildConfig(inputs=[InputSpec("sentinel2_l2a", uri)], out_dir=str(tmp_path / "uri"), tile_size=60)
    manifest = build(config)
    assert [q["file"] for q in manifest["quarantined"]] == [str(folder / "other_variable.nc")]
    assert "subdataset 'reflectance' matches none" in manifest["quarantined"][0]["reason"]
    reference = InputSpec("sentinel2_l2a", str(S2_SCENE), band_files="{scene}_{band}.tif")
    want, got = _images(_build(tmp_path, "tif", reference)), _images(tmp_path / "uri")
    assert len(got) == len(want) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_unknown_variable_names_the_file_and_lists_the_variables(tmp_path):
    nc = _netcdf(tmp_path / "nc")
    spec = InputSpec("sentinel2_l2a", str(nc), subdataset="{band}")  # B02, not b02
    with pytest.raises(DataError, match=rf"{nc.name}: subdataset 'B02' matches none .*'b02', 'b03', 'b04', 'b08'"):
        _build(tmp_path, "out", spec)


def test_a_variable_without_grid_mapping_is_an_error_naming_it(tmp_path):
    nc = _netcdf(tmp_path / "nc", grid_mapping=False)
    with pytest.raises(DataError, match=rf"{nc.name}.*b02.*no georeferencing"):
        _build(tmp_path, "out", InputSpec("sentinel2_l2a", str(nc), subdataset="{band_lower}"))


def test_hdf5_arrays_without_georeferencing_are_an_error(tmp_path):
    pytest.importorskip("h5py")
    arrays = {"measurement/reflectance": np.full((4, 60, 60), 1000, np.uint16)}
    h5 = write_hdf5(tmp_path / "granule.h5", arrays)
    with pytest.raises(DataError, match=rf"{h5.name}.*measurement/reflectance.*no georeferencing"):
        _build(tmp_path, "out", InputSpec("sentinel2_l2a", f'HDF5:"{h5}"://measurement/reflectance'))
    with pytest.raises(DataError, match=rf"{h5.name}: subdataset 'B05' matches none"):
        _build(tmp_path, "out", InputSpec("sentinel2_l2a", str(h5), subdataset="B05"))


def test_config_rejects_subdataset_beside_band_files_or_a_uri(tmp_path):
    for spec, message in [
        (InputSpec("sentinel2_l2a", "a.nc", subdataset="{band}", band_files="{scene}_{band}.tif"), "band_files"),
        (InputSpec("sentinel2_l2a", 'NETCDF:"a.nc":b02', subdataset="b02"), "keep one"),
        (InputSpec("sentinel2_l2a", "a.nc", subdataset="{band}", band_indexes={"B02": 1}), "one variable per band"),
        (InputSpec("sentinel2_l2a", "a.nc", subdataset="{scene}"), "unknown placeholder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(BuildConfig(inputs=[spec], out_dir=str(tmp_path)))
