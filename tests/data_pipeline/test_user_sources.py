"""Sensors users add themselves (``extra_sources``), single-band sensors (``fill_channels: replicate``) and the
encoding check: a file whose dtype or packing is not what its source expects stops the build with an error naming
file, source, expected and found, unless the input declares ``scaling``, whose values then match a direct read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, PairSpec, ScalingSpec
from ringmoe.core.errors import ConfigError, DataError
from ringmoe.core.sensors import load_registry
from ringmoe.data.catalog import load_place_catalog
from ringmoe.data.store import LocalStore
from tests.data_pipeline.helpers import DEMO, S2_SCENE, read_samples, write_geotiff

S1_DIR = DEMO / "sentinel1_grd_bigearthnet"
S2_BANDS = ["B02", "B03", "B04", "B08"]

PAN_SOURCE = """\
name: pan_example
platform: an 11-bit panchromatic imager
modality: optical
dtype: uint16
gsd_m: 0.5
bands:
- {name: PAN, wavelength_nm: 625.0}
modality_bands: [PAN]
fill_channels: replicate
normalization: {kind: reflectance, scale: 0.0005, clip: [0.0, 1.0]}
"""

VV_SOURCE = """\
name: vv_only
platform: a single-pol C-band SAR (VV backscatter in dB)
modality: sar_amplitude
dtype: float32
bands:
- {name: VV, polarization: VV}
modality_bands: [VV]
fill_channels: replicate
normalization: {kind: db, clip: [-35.0, 10.0], input_is_db: true}
"""


def _sources(folder: Path, *texts: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for text in texts:
        name = text.split("\n", 1)[0].split(": ")[1]
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return folder


def _s2_band(band: str) -> np.ndarray:
    with rasterio.open(S2_SCENE / f"{S2_SCENE.name}_{band}.tif") as ds:
        return ds.read(1)


def _geotiff_samples(out: Path) -> list[dict]:
    """The samples of the real Sentinel-2 patch read from its GeoTIFFs as uint16 DN: the reference."""
    spec = InputSpec("sentinel2_l2a", str(S2_SCENE), band_files="{scene}_{band}.tif")
    build(BuildConfig(inputs=[spec], out_dir=str(out), tile_size=60, strict=True))
    return read_samples(out)


def test_a_user_source_adds_to_the_builtins_and_the_manifest_records_it(tmp_path):
    sources = _sources(tmp_path / "sources", PAN_SOURCE)
    registry = load_registry(extra=[sources])
    assert set(registry) == set(load_registry()) | {"pan_example"}
    dn = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64) % 2048
    write_geotiff(tmp_path / "pan.tif", dn)
    config = BuildConfig(
        inputs=[InputSpec("pan_example", str(tmp_path / "pan.tif"))],
        extra_sources=[str(sources)], out_dir=str(tmp_path / "out"), tile_size=64, strict=True,
    )  # fmt: skip
    manifest = build(config)
    assert manifest["sensors"]["pan_example"]["fill_channels"] == "replicate"
    (sample,) = read_samples(tmp_path / "out")
    want = np.clip(dn[0].astype(np.float64) * 0.0005, 0.0, 1.0).astype(np.float32)
    assert sample["image.npy"].shape == (3, 64, 64)
    valid = sample["valid.npy"].astype(bool)
    for channel in sample["image.npy"]:  # the one band, replicated into the three optical channels
        assert np.array_equal(channel[valid], want[valid])
    assert sample["json"]["channel_names"] == ["PAN", "PAN", "PAN"]


def test_a_user_source_named_like_a_builtin_is_an_error_naming_both_files(tmp_path):
    sources = _sources(tmp_path / "sources", PAN_SOURCE.replace("pan_example", "sentinel2_l2a"))
    with pytest.raises(ConfigError, match=r"sentinel2_l2a.yaml: source .sentinel2_l2a. is already defined by .*"):
        load_registry(extra=[sources])


def test_places_of_a_user_source_load_from_the_manifest_registry(tmp_path):
    """Training reads the sensors the data was built with: the built-in registry alone lacks ``vv_only``."""
    sources = _sources(tmp_path / "sources", VV_SOURCE)
    s2 = InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
    vv = InputSpec("vv_only", str(S1_DIR / "*"), band_files="{scene}_{band}.tif")
    config = BuildConfig(
        pairs=[PairSpec("s2_vv", inputs=[s2, vv])], extra_sources=[str(sources)],
        out_dir=str(tmp_path / "out"), tile_size=60, min_valid_fraction=0.0,
    )  # fmt: skip
    build(config)
    catalog = load_place_catalog(LocalStore(str(tmp_path / "out")), ["multispectral", "sar_amplitude"])
    parts = {part.source: (part.modality, part.channels) for part in catalog.sources["s2_vv"].parts}
    assert parts == {"sentinel2_l2a": ("multispectral", 4), "vv_only": ("sar_amplitude", 3)}


def test_8bit_sar_under_a_float_db_source_names_file_source_expected_and_found(tmp_path):
    tif = write_geotiff(tmp_path / "amp.tif", np.full((1, 64, 64), 200, np.uint8))
    spec = InputSpec("sentinel1_grd", str(tmp_path / "amp.tif"), band_indexes={"VV": 1, "VH": 1})
    config = BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=64, strict=True)
    with pytest.raises(ConfigError, match=r"band_indexes map \['VV', 'VH'\] to the same band 1.*fill_channels"):
        build(config)
    config.inputs = [InputSpec("sentinel1_grd", str(tmp_path / "amp.tif"), band_indexes={"VV": 1, "VH": 2})]
    write_geotiff(tif, np.full((2, 64, 64), 200, np.uint8))
    with pytest.raises(DataError, match=r"amp.tif: band 1 is uint8, source 'sentinel1_grd' expects float32"):
        build(config)


def test_declared_scaling_maps_8bit_amplitude_to_db(tmp_path):
    """A quick-look product: DN = (dB + 40) * 5 in 8 bits; scaling undoes it, values match the direct read."""
    sources = _sources(tmp_path / "sources", VV_SOURCE)
    dn = (np.arange(64 * 64).reshape(1, 64, 64) % 255 + 1).astype(np.uint8)
    write_geotiff(tmp_path / "ql.tif", dn)
    scaling = ScalingSpec(dtype="uint8", scale=0.2, offset=-40.0)
    config = BuildConfig(
        inputs=[InputSpec("vv_only", str(tmp_path / "ql.tif"), scaling=scaling)], extra_sources=[str(sources)],
        out_dir=str(tmp_path / "out"), tile_size=64, strict=True,
    )  # fmt: skip
    build(config)
    (sample,) = read_samples(tmp_path / "out")
    db = np.clip(dn[0] * 0.2 - 40.0, -35.0, 10.0)
    want = ((db - -35.0) / 45.0).astype(np.float32)
    assert np.array_equal(sample["image.npy"][0], want) and np.array_equal(sample["image.npy"][2], want)


def test_float_reflectance_under_a_dn_source_is_refused_then_read_through_scaling(tmp_path):
    reflectance = np.stack([_s2_band(b) for b in S2_BANDS]).astype(np.float32) / np.float32(10000)
    write_geotiff(tmp_path / "refl.tif", reflectance, nodata=0.0)
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "refl.tif"))
    config = BuildConfig(inputs=[spec], out_dir=str(tmp_path / "float"), tile_size=60, strict=True)
    with pytest.raises(DataError, match=r"refl.tif: band 1 is float32, source 'sentinel2_l2a' expects uint16"):
        build(config)
    spec.scaling = ScalingSpec(dtype="float32", scale=10000.0)
    build(config)
    got, want = read_samples(tmp_path / "float"), _geotiff_samples(tmp_path / "dn")
    assert len(got) == len(want) == 4
    # DN -> float32 / 1e4 -> * 1e4 -> * 1e-4 differs from DN * 1e-4 by float32 rounding of the stored file only.
    tolerance = np.finfo(np.float32).eps
    for a, b in zip(got, want):
        assert np.array_equal(a["valid.npy"], b["valid.npy"])
        assert np.max(np.abs(a["image.npy"] - b["image.npy"])) <= tolerance


def test_packed_netcdf_needs_declared_scaling(tmp_path):
    pytest.importorskip("netCDF4")
    from tests.data_pipeline.containers import write_cf_netcdf

    tifs = {band.lower(): S2_SCENE / f"{S2_SCENE.name}_{band}.tif" for band in S2_BANDS}
    nc = write_cf_netcdf(tmp_path / "packed.nc", tifs, scale_factor=0.0001, add_offset=0.0)
    spec = InputSpec("sentinel2_l2a", str(nc), subdataset="{band_lower}")
    config = BuildConfig(inputs=[spec], out_dir=str(tmp_path / "out"), tile_size=60, strict=True)
    with pytest.raises(DataError, match=r"packed.nc.*b02.*declares scale 0.0001 and offset 0.0 \(packed values\)"):
        build(config)
    spec.scaling = ScalingSpec(dtype="uint16")  # the source expects the stored DN, so keep them as they are
    build(config)
    got, want = read_samples(tmp_path / "out"), _geotiff_samples(tmp_path / "dn")
    assert len(got) == 4 and all(np.array_equal(a["image.npy"], b["image.npy"]) for a, b in zip(got, want))


def test_an_eval_task_reads_a_user_sensor_from_its_extra_sources(tmp_path):
    from ringmoe.config.evaluation import EvalTaskConfig
    from ringmoe.eval.run import load_task_data

    _sources(tmp_path / "sources", PAN_SOURCE)
    for label, value in (("dark", 100), ("bright", 1800)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for k in range(2):
            write_geotiff(tmp_path / "imgs" / label / f"{k}.tif", np.full((1, 32, 32), value + k, np.uint16))
    task = EvalTaskConfig("class_folders", "imgs", options={"sensor": "pan_example"}, extra_sources=["sources"])
    data = load_task_data(task, 0, tmp_path)  # both paths relative to the config's folder, here tmp_path
    assert data.modality == "optical" and tuple(data.images.shape) == (4, 3, 32, 32)
    assert sorted({round(float(v), 4) for v in data.images[:, 1].reshape(4, -1)[:, 0]}) == [0.05, 0.0505, 0.9, 0.9005]
    task.extra_sources = []
    with pytest.raises(ConfigError, match=r"unknown source 'pan_example'.*extra_sources"):
        load_task_data(task, 0, tmp_path)
