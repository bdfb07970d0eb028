"""Serve a scene's tile windows from full-width strips of rows, each strip read once.

The build walks tiles row by row (``tiling.tile_windows``). Reading every window on its own pays GDAL's fixed
cost per windowed read (~0.5 ms, more than decoding a 192 px window of a tiled GeoTIFF) once per tile and
band; a strip pays it once per row of tiles. The pixels are the same: a window of a strip is the window.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from rasterio.windows import Window

# A strip larger than this (very wide mosaics with many bands) is not held: windows are read one by one.
MAX_STRIP_BYTES = 256 * 2**20


class RowStrips:
    """``window(w)`` = ``read(w)``, answered from the last full-width strip ``read`` returned when ``w`` lies
    in it. ``read(window)`` gives ``(..., h, w)``; ``row_bytes`` is the bytes of one full-width row of it."""

    def __init__(self, read: Callable[[Window], np.ndarray], width: int, row_bytes: int) -> None:
        self._read = read
        self._width = width
        self._row_bytes = row_bytes
        self._rows: Optional[tuple[int, int]] = None
        self._strip: Optional[np.ndarray] = None

    def window(self, window: Window) -> np.ndarray:
        row, height = int(window.row_off), int(window.height)
        col, width = int(window.col_off), int(window.width)
        if col < 0 or col + width > self._width or height * self._row_bytes > MAX_STRIP_BYTES:
            return self._read(window)
        if self._rows != (row, height):
            self._strip = None  # let the previous strip go before the next is read
            self._strip = self._read(Window(0, row, self._width, height))
            self._rows = (row, height)
        assert self._strip is not None
        return self._strip[..., col : col + width]
