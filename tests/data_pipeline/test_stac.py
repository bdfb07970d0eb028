"""STAC Items as scenes: assets are band files (relative hrefs resolve against the item), ``datetime`` is the
acquisition time sequences are ordered by; a remote or missing asset is an error naming the item and the asset."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, SequenceSpec
from tests.data_pipeline.helpers import S2_SCENE, read_samples

pystac = pytest.importorskip("pystac")

BANDS = ["B02", "B03", "B04", "B08"]


def _item(folder: Path, item_id: str, when: datetime, hrefs: dict[str, str]) -> Path:
    """A STAC Item written by pystac, its asset hrefs relative to the item's JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    item = pystac.Item(item_id, geometry, [0, 0, 1, 1], when, properties={})
    for key, href in hrefs.items():
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
    path = folder / f"{item_id}.json"
    item.set_self_href(str(path))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    return path


def _s2_hrefs(names: dict[str, str]) -> dict[str, str]:
    """Asset key -> absolute path of the real Sentinel-2 patch's band file (``names``: band -> asset key)."""
    return {key: str(S2_SCENE / f"{S2_SCENE.name}_{band}.tif") for band, key in names.items()}


def test_items_build_the_samples_of_their_band_files_and_sequences_follow_datetime(tmp_path):
    assets = {"B02": "B02", "B03": "B03", "B04": "B04", "B08": "nir"}  # one asset not named after its band
    _item(tmp_path / "items", "patch_late", datetime(2021, 7, 2, 10, 30, tzinfo=timezone.utc), _s2_hrefs(assets))
    _item(tmp_path / "items", "patch_early", datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc), _s2_hrefs(assets))
    spec = InputSpec("sentinel2_l2a", str(tmp_path / "items" / "*.json"), assets={"B08": "nir"})
    config = BuildConfig(
        inputs=[spec], sequences=[SequenceSpec("patch", input=spec, footprint=r"^(patch)_")],
        out_dir=str(tmp_path / "out"), tile_size=60, strict=True,
    )  # fmt: skip
    build(config)
    reference = InputSpec("sentinel2_l2a", str(S2_SCENE), band_files="{scene}_{band}.tif")
    build(BuildConfig(inputs=[reference], out_dir=str(tmp_path / "tif"), tile_size=60, strict=True))
    want = [s["image.npy"] for s in read_samples(tmp_path / "tif")]
    singles = read_samples(tmp_path / "out", "sentinel2_l2a")
    assert {s["json"]["scene"] for s in singles} == {"patch_early", "patch_late"} and len(singles) == 8
    for sample in singles:
        assert any(np.array_equal(sample["image.npy"], image) for image in want)
    sequences = read_samples(tmp_path / "out", "patch")
    assert len(sequences) == 4
    assert all(s["json"]["timestamps"] == ["2021-05-01T10:30:00", "2021-07-02T10:30:00"] for s in sequences)


def test_a_remote_or_missing_asset_names_the_item_and_the_asset(tmp_path):
    hrefs = _s2_hrefs({"B02": "B02", "B03": "B03", "B04": "B04"})
    _item(tmp_path / "a", "no_nir", datetime(2021, 5, 1, tzinfo=timezone.utc), hrefs)
    config = BuildConfig(
        inputs=[InputSpec("sentinel2_l2a", str(tmp_path / "a" / "*.json"))], out_dir=str(tmp_path / "o"), tile_size=60
    )
    (quarantined,) = build(config)["quarantined"]
    assert "STAC item 'no_nir' has no asset for band 'B08'" in quarantined["reason"]
    assert "assets: ['B02', 'B03', 'B04']" in quarantined["reason"]
    _item(tmp_path / "b", "remote", datetime(2021, 5, 1, tzinfo=timezone.utc),
          {**hrefs, "B08": "https://example.com/B08.tif"})  # fmt: skip
    config.inputs = [InputSpec("sentinel2_l2a", str(tmp_path / "b" / "*.json"))]
    (quarantined,) = build(config)["quarantined"]
    assert quarantined["file"].endswith("remote.json")
    assert "asset 'B08' of item 'remote' is remote (https://example.com/B08.tif)" in quarantined["reason"]


def test_an_item_collection_is_one_scene_per_item_with_hrefs_relative_to_it(tmp_path):
    """A saved search result: items inside one FeatureCollection; a broken item is quarantined by its own name."""
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    relative = {band: f"bands/{S2_SCENE.name}_{band}.tif" for band in BANDS}
    (tmp_path / "bands").mkdir()
    for href in relative.values():
        (tmp_path / href).symlink_to(S2_SCENE / Path(href).name)
    items = []
    for item_id, keys in (("good", BANDS), ("broken", BANDS[:3])):
        item = pystac.Item(item_id, geometry, [0, 0, 1, 1], datetime(2021, 5, 1, tzinfo=timezone.utc), properties={})
        for band in keys:
            item.add_asset(band, pystac.Asset(relative[band], media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    collection = tmp_path / "search.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    config = BuildConfig(
        inputs=[InputSpec("sentinel2_l2a", str(collection))], out_dir=str(tmp_path / "o"), tile_size=60
    )
    manifest = build(config)
    (quarantined,) = manifest["quarantined"]
    assert quarantined["file"] == f"{collection}#broken" and "has no asset for band 'B08'" in quarantined["reason"]
    samples = read_samples(tmp_path / "o")
    assert {s["json"]["scene"] for s in samples} == {"good"} and len(samples) == 4
