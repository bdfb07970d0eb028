"""Tile windows served from row strips equal windowed reads of a real GeoTIFF, with one read per tile row."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

import data_pipeline.strips as strips
from data_pipeline.tiling import tile_windows
from tests.data_pipeline.helpers import write_geotiff


def _counted_reader(path):
    dataset = rasterio.open(path)
    calls = []

    def read(window):
        calls.append(window)
        return dataset.read(window=window)

    return dataset, read, calls


def test_windows_from_strips_equal_direct_reads(tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (3, 70, 90)).astype(np.uint16)
    path = write_geotiff(tmp_path / "scene.tif", data)
    dataset, read, calls = _counted_reader(path)
    with dataset:
        served = strips.RowStrips(read, 90, row_bytes=3 * 90 * 2)
        windows = list(tile_windows(70, 90, 32, 24))  # overlapping tiles: strips of consecutive rows overlap
        for window in windows:
            assert np.array_equal(served.window(window), dataset.read(window=window))
    assert len(calls) == len({int(w.row_off) for w in windows}) == 2


def test_a_strip_too_large_is_read_window_by_window(tmp_path, monkeypatch) -> None:
    data = np.arange(2 * 40 * 40, dtype=np.int16).reshape(2, 40, 40)
    path = write_geotiff(tmp_path / "scene.tif", data)
    monkeypatch.setattr(strips, "MAX_STRIP_BYTES", 40 * 2 * 2 * 16 - 1)  # one byte short of a 16-row strip
    dataset, read, calls = _counted_reader(path)
    with dataset:
        served = strips.RowStrips(read, 40, row_bytes=2 * 40 * 2)
        for window in tile_windows(40, 40, 16, 16):
            assert np.array_equal(
                served.window(window),
                data[:, window.row_off : window.row_off + 16, window.col_off : window.col_off + 16],
            )
    assert len(calls) == 4 and all(int(w.width) == 16 for w in calls)


def test_a_window_past_the_edge_is_passed_through() -> None:
    calls = []
    served = strips.RowStrips(lambda window: calls.append(window) or np.zeros((1, 8, 16)), 40, row_bytes=40)
    served.window(Window(30, 0, 16, 8))
    assert calls == [Window(30, 0, 16, 8)]
