"""Bad inputs are quarantined (counted, named in the manifest) or, strict, fail naming the file at fault;
bad configs always fail naming the key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from data_pipeline.build import build
from data_pipeline.cli import main
from data_pipeline.config import BuildConfig, InputSpec, load_build_config
from ringmoe.core.errors import ConfigError, DataError
from tests.data_pipeline.helpers import DEMO, DEMO_CONFIG, S2_SCENE, write_geotiff


def _s2_copy(tmp_path: Path) -> Path:
    scene = tmp_path / "scenes" / S2_SCENE.name
    shutil.copytree(S2_SCENE, scene)
    return scene


def _build_s2(tmp_path: Path, scenes: str = "scenes/*", strict: bool = True) -> dict:
    config = BuildConfig(
        inputs=[InputSpec("sentinel2_l2a", scenes, band_files="{scene}_{band}.tif")],
        out_dir=str(tmp_path / "out"),
        tile_size=64,
        strict=strict,
    )
    return build(config, config_dir=tmp_path)


def _fails_strict_and_is_quarantined_otherwise(tmp_path: Path, match: str) -> None:
    """Strict: the build raises naming the file. Default: that scene is quarantined and named in the manifest,
    and a good scene beside it is still built."""
    good = S2_SCENE.parent / "S2A_MSIL2A_20171221T112501_56_35"
    shutil.copytree(good, tmp_path / "scenes" / good.name)
    with pytest.raises(DataError, match=match):
        _build_s2(tmp_path, strict=True)
    assert not (tmp_path / "out" / "manifest.json").exists()
    manifest = _build_s2(tmp_path, strict=False)
    assert len(manifest["quarantined"]) == 1
    item = manifest["quarantined"][0]
    assert re.search(match, f"{item['reason']}") and item["stream"] == "sentinel2_l2a"
    assert manifest["samples"] == 1 and manifest["streams"]["sentinel2_l2a"]["groups"] == 1  # 120 px: one 64 px tile


def test_missing_band_file_names_the_file(tmp_path):
    scene = _s2_copy(tmp_path)
    (scene / f"{scene.name}_B08.tif").unlink()
    _fails_strict_and_is_quarantined_otherwise(tmp_path, rf"{scene.name}_B08\.tif.*band 'B08'.*not found")


def test_band_file_with_two_bands_names_the_file(tmp_path):
    scene = _s2_copy(tmp_path)
    write_geotiff(scene / f"{scene.name}_B03.tif", np.ones((2, 120, 120), dtype=np.uint16))
    _fails_strict_and_is_quarantined_otherwise(tmp_path, rf"{scene.name}_B03\.tif: expected 1 band")


def test_band_files_on_different_grids_name_the_file(tmp_path):
    scene = _s2_copy(tmp_path)
    write_geotiff(scene / f"{scene.name}_B04.tif", np.ones((1, 60, 60), dtype=np.uint16), crs="EPSG:32633")
    _fails_strict_and_is_quarantined_otherwise(tmp_path, rf"{scene.name}_B04\.tif: shape \(60, 60\) differs")


def test_crs_mismatch_names_the_file(tmp_path):
    scene = _s2_copy(tmp_path)
    write_geotiff(scene / f"{scene.name}_B08.tif", np.ones((1, 120, 120), dtype=np.uint16), crs="EPSG:32632")
    _fails_strict_and_is_quarantined_otherwise(tmp_path, rf"{scene.name}_B08\.tif: CRS EPSG:32632 differs")


@pytest.mark.parametrize(
    ("source", "raster", "message"),
    [
        ("worldview2", "rgb_unmasked.tif", r"rgb_unmasked\.tif: expected 4 bands .* found 3"),
        ("capella_quadpol", "ms1.tif", r"ms1\.tif: band 1 is float64, source 'capella_quadpol' needs complex"),
    ],
    ids=["wrong_band_count", "real_where_complex_expected"],
)
def test_a_multiband_file_that_does_not_fit_its_source(tmp_path, source, raster, message):
    inputs = [InputSpec(source, str(DEMO / "spacenet6_worldview2" / raster))]
    with pytest.raises(DataError, match=message):
        build(BuildConfig(inputs=inputs, out_dir=str(tmp_path / "out"), strict=True))


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataError, match="matches nothing"):
        _build_s2(tmp_path, scenes="nowhere/*")


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "build.yaml"
    path.write_text(text)
    return path


def test_unknown_top_level_key_is_named(tmp_path):
    path = _yaml(tmp_path, "out_dir: x\ntile_sise: 64\ninputs: [{source: sentinel2_l2a, scenes: '*'}]\n")
    with pytest.raises(ConfigError, match="tile_sise"):
        load_build_config(path)


def test_unknown_input_key_is_named(tmp_path):
    path = _yaml(tmp_path, "out_dir: x\ninputs: [{source: sentinel2_l2a, scenes: '*', band_file: '{band}.tif'}]\n")
    with pytest.raises(ConfigError, match="band_file"):
        load_build_config(path)


def test_bad_values_and_placeholders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="min_valid_fraction"):
        load_build_config(DEMO_CONFIG, ["min_valid_fraction=1.5"])
    inputs = "[{source: sentinel2_l2a, scenes: '*', band_files: '{tile}_{band}.tif'}]"
    path = _yaml(tmp_path, f"out_dir: x\ninputs: {inputs}\n")
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.band_files.*tile"):
        load_build_config(path)
    path = _yaml(tmp_path, "out_dir: x\ninputs: [{source: sentinel3, scenes: '*'}]\n")
    with pytest.raises(ConfigError, match="unknown source 'sentinel3'"):
        build(load_build_config(path), tmp_path)
    with pytest.raises(ConfigError, match="do not fit"):
        load_build_config(DEMO_CONFIG, ["inputs.0.source=sentinel3"])


def test_cli_prints_error_without_traceback(tmp_path, capsys):
    path = _yaml(tmp_path, "out_dir: x\nbogus_key: 1\ninputs: []\n")
    assert main(["build", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bogus_key" in err and "Traceback" not in err
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_unreadable_band_file_names_the_file(tmp_path):
    scene = _s2_copy(tmp_path)
    (scene / f"{scene.name}_B02.tif").write_bytes(b"not a tiff at all")
    _fails_strict_and_is_quarantined_otherwise(tmp_path, rf"{scene.name}_B02\.tif: cannot open raster")


def test_a_build_that_writes_nothing_exits_3_and_names_where_the_quarantined_are(tmp_path, capsys):
    scene = _s2_copy(tmp_path)
    (scene / f"{scene.name}_B02.tif").write_bytes(b"not a tiff at all")
    config = _yaml(
        tmp_path,
        f"out_dir: {tmp_path / 'out'}\ntile_size: 64\ninputs:\n"
        "  - {source: sentinel2_l2a, scenes: 'scenes/*', band_files: '{scene}_{band}.tif'}\n",
    )
    assert main(["build", "--config", str(config)]) == 3
    captured = capsys.readouterr()
    manifest = tmp_path / "out" / "manifest.json"
    assert f"quarantined: 1 (all listed under 'quarantined' in {manifest})" in captured.out
    assert "wrote 0 samples (1 input(s) quarantined" in captured.err and "--allow-empty" in captured.err
    assert main(["build", "--config", str(config), "--allow-empty"]) == 0


def test_a_failed_read_keeps_gdals_reason(tmp_path):
    """rasterio says only "Read failed. See previous exception"; the quarantine reason carries GDAL's cause."""
    scene = _s2_copy(tmp_path)
    band = scene / f"{scene.name}_B02.tif"
    with rasterio.open(band) as source:
        profile, pixels = source.profile, source.read()
    profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(band, "w", **profile) as target:
        target.write(pixels)
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 4])  # header intact, most tiles gone
    reason = rf"read of window .* failed \(.*{band.name}, band 1: .*failed"
    with pytest.raises(DataError, match=reason):
        _build_s2(tmp_path, strict=True)
    manifest = _build_s2(tmp_path, strict=False)
    assert [q["file"] for q in manifest["quarantined"]] == [str(scene)]
    assert re.search(reason, manifest["quarantined"][0]["reason"])
    assert "See previous exception" not in manifest["quarantined"][0]["reason"]
