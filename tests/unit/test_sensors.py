import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ringmoe.core.batch import MODALITIES
from ringmoe.core.errors import ConfigError
from ringmoe.core.sensors import MODALITY_CHANNELS, default_sources_dir, load_registry, load_sensor


def test_every_builtin_source_file_is_registered_and_all_modalities_covered() -> None:
    registry = load_registry()
    # One source per YAML file (a sensor is added by adding a file, so no count is written down here).
    assert sorted(registry) == sorted(load_sensor(path).name for path in default_sources_dir().glob("*.yaml"))
    assert {spec.modality for spec in registry.values()} == set(MODALITIES)
    for spec in registry.values():
        assert spec.channels() == MODALITY_CHANNELS[spec.modality]


def test_sentinel2_bands_have_wavelengths() -> None:
    spec = load_registry()["sentinel2_l2a"]
    assert spec.band("B08").wavelength_nm == pytest.approx(832.8)
    assert spec.modality_bands == ["B02", "B03", "B04", "B08"]


def test_wrong_band_count_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nplatform: x\nmodality: optical\ndtype: uint8\n"
        "bands: [{name: a}, {name: b}]\nmodality_bands: [a, b]\n"
    )
    with pytest.raises(ConfigError, match=r"bad.yaml.*2 channels.*needs 3.*fill_channels: replicate"):
        load_sensor(path)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("name: t\nplatform: x\nmodality: optical\ndtype: uint8\nbands: []\nmodality_bands: []\ngsd: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*gsd"):
        load_sensor(path)


@pytest.mark.parametrize(
    "derived, problem",
    [
        ("{name: r, kind: db_sum, bands: [a, b]}", r"kind 'db_sum'"),
        ("{name: r, kind: db_ratio, bands: [a, c]}", r"bands \['a', 'c'\] must be two of"),
        ("{name: r, kind: db_ratio, bands: [a, b], clip: [5, 5]}", r"clip \[5.0, 5.0\]"),
    ],
)
def test_bad_derived_channel_names_file_and_entry(tmp_path: Path, derived: str, problem: str) -> None:
    path = tmp_path / "sar.yaml"
    path.write_text(
        "name: sar\nplatform: x\nmodality: sar_amplitude\ndtype: float32\nbands: [{name: a}, {name: b}]\n"
        f"modality_bands: [a, b]\nnormalization: {{kind: db}}\nderived_channels: [{derived}]\n"
    )
    with pytest.raises(ConfigError, match=rf"sar.yaml: derived_channels\[0\] \('r'\).*{problem}"):
        load_sensor(path)


def test_derived_channel_needs_db(tmp_path: Path) -> None:
    path = tmp_path / "opt.yaml"
    path.write_text(
        "name: opt\nplatform: x\nmodality: optical\ndtype: uint8\nbands: [{name: a}, {name: b}]\n"
        "modality_bands: [a, b]\nderived_channels: [{name: r, kind: db_ratio, bands: [a, b]}]\n"
    )
    with pytest.raises(ConfigError, match=r"needs normalization.kind 'db', not 'reflectance'"):
        load_sensor(path)


def test_a_wheel_carries_the_builtin_sources(tmp_path: Path) -> None:
    """A non-editable install reads the registry from the package, not from a checkout it no longer has."""
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    built = subprocess.run([*command, str(repo)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    packaged = sorted(Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("ringmoe/core/sources/"))
    assert packaged == sorted(path.name for path in default_sources_dir().glob("*.yaml")) and packaged
