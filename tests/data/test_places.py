"""Places for spatiotemporal recipes, from real shards: BigEarthNet S2/S1 pairs and the eo-learn Sentinel-2 L1C
time series become SequenceBatches with fixed date slots, padding masks, dates and locations; the order resumes
exactly and a bad sample is quarantined and replaced, as for single images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.build import build
from data_pipeline.config import BuildConfig, InputSpec, PairSpec, SequenceSpec
from ringmoe.config.schema import DataConfig
from ringmoe.core.errors import ConfigError
from ringmoe.data.loader import build_loader
from ringmoe.data.places import days_since_epoch, evenly_spaced
from tests.data_pipeline.helpers import DEMO, write_eolearn_dates

S2 = InputSpec("sentinel2_l2a", str(DEMO / "sentinel2_l2a_bigearthnet" / "*"), band_files="{scene}_{band}.tif")
S1 = InputSpec("sentinel1_grd", str(DEMO / "sentinel1_grd_bigearthnet" / "*"), band_files="{scene}_{band}.tif")


@pytest.fixture(scope="module")
def place_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("places")
    write_eolearn_dates(DEMO, root / "dates")
    dates = InputSpec(
        "sentinel2_l1c", str(root / "dates" / "*.tif"), band_indexes={"B02": 1, "B03": 2, "B04": 3, "B08": 4}
    )
    config = BuildConfig(
        sequences=[SequenceSpec("eopatch_l1c", input=dates, footprint=r"^(eopatch)_", min_steps=2)],
        pairs=[PairSpec("s2_s1_bigearthnet", inputs=[S2, S1], footprint=r"_(\d+_\d+)$")],
        out_dir=str(root / "shards"), tile_size=32, tile_stride=32, min_valid_fraction=0.0,
    )  # fmt: skip
    build(config)
    return root / "shards"


def places_config(shards: Path, **overrides) -> DataConfig:
    settings = dict(
        shards=str(shards), modalities=["multispectral", "sar_amplitude"], places_per_batch=4,
        max_dates={"multispectral": 3}, source_weights={"eopatch_l1c": 1.0, "s2_s1_bigearthnet": 1.0},
    )  # fmt: skip
    return DataConfig(**{**settings, **overrides})


def test_pairs_and_sequences_become_places_with_padding(place_shards):
    batches = [next(iter(build_loader(places_config(place_shards, seed=s)))) for s in range(4)]
    sequences = pairs = 0
    for batch in batches:
        assert batch.images["multispectral"].shape == (4, 3, 4, 32, 32)
        assert batch.images["sar_amplitude"].shape == (4, 1, 3, 32, 32)
        for slot, key in enumerate(batch.keys):
            ms, sar = batch.present["multispectral"][slot], batch.present["sar_amplitude"][slot]
            if key.startswith("eopatch_l1c"):
                sequences += 1
                # 5 dates, 3 slots: evenly spaced dates, in time order; no SAR in this place.
                assert ms.all() and not sar.any()
                assert (batch.days["multispectral"][slot].diff() > 0).all()
                lon, lat = batch.location[slot].tolist()
                assert 14.0 < lon < 15.0 and 45.5 < lat < 46.5  # the patch is in Slovenia
            else:
                pairs += 1
                assert ms.tolist() == [True, False, False] and sar.all()  # one date each, co-registered
                assert not batch.images["multispectral"][slot, 1:].any()  # padding is zeros
    assert sequences and pairs


def test_place_order_resumes_exactly(place_shards):
    loader = build_loader(places_config(place_shards))
    stream = iter(loader)
    for _ in range(2):
        next(stream)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = next(stream)
    resumed = build_loader(places_config(place_shards))
    resumed.load_state_dict(state)
    again = next(iter(resumed))
    assert again.keys == expected.keys
    for modality in expected.images:
        assert torch.equal(again.images[modality], expected.images[modality])
        assert torch.equal(again.present[modality], expected.present[modality])
    with pytest.raises(ConfigError, match="max_dates"):
        build_loader(places_config(place_shards, max_dates={"multispectral": 5})).load_state_dict(state)


def test_a_corrupt_place_is_quarantined_and_replaced(place_shards, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(place_shards, copy)
    tar = next(copy.glob("eopatch_l1c-*.tar"))
    data = bytearray(tar.read_bytes())
    data[2048:2560] = b"\0" * 512  # inside the first sample's image
    tar.write_bytes(bytes(data))
    loader = build_loader(places_config(copy, source_weights={"eopatch_l1c": 1.0, "s2_s1_bigearthnet": 0.0}))
    stream = iter(loader)
    keys = [key for _ in range(3) for key in next(stream).keys]  # 12 draws over 9 samples: all of them
    assert len(keys) == 12 and all(k.startswith("eopatch_l1c") for k in keys)
    report = loader.report()
    assert set(report["by_problem"]) == {"checksum mismatch"} and report["quarantined"] >= 1
    assert report["recent"][0]["key"] not in keys  # replaced, never handed out


def test_dates_and_spacing_by_hand():
    assert days_since_epoch("1970-01-02T12:00:00") == 1.5
    assert math.isnan(days_since_epoch(None))  # a scene name without a readable date
    assert evenly_spaced(5, 3) == [0, 2, 4] and evenly_spaced(2, 3) == [0, 1]
    assert np.allclose(days_since_epoch("2015-07-11T10:00:08"), 16627.416759, atol=1e-6)
