"""Cut a scene into square tiles and describe where each tile lies on the ground."""

from __future__ import annotations

from collections.abc import Iterator

from rasterio.transform import Affine
from rasterio.windows import Window


def tile_windows(height: int, width: int, size: int, stride: int) -> Iterator[Window]:
    """Row-major windows of ``size`` x ``size`` every ``stride`` pixels; partial tiles at the far edges are
    dropped (a padded tile would teach the model a fake border)."""
    for row in range(0, height - size + 1, stride):
        for col in range(0, width - size + 1, stride):
            yield Window(col, row, size, size)


def tile_count(height: int, width: int, size: int, stride: int) -> int:
    if height < size or width < size:
        return 0
    return ((height - size) // stride + 1) * ((width - size) // stride + 1)


def tile_geometry(window: Window, transform: Affine) -> dict:
    """Georeferencing of one tile: ``bounds`` [left, bottom, right, top] and the 6 affine terms
    ``transform`` [a, b, c, d, e, f] (rasterio ``Affine`` order: x = a*col + b*row + c, y = d*col + e*row + f)."""
    # ``@``, not ``*``: affine 3 deprecates ``*`` (rasterio.windows still uses it and warns on every tile).
    tile_transform = transform @ Affine.translation(window.col_off, window.row_off)
    corners = [tile_transform @ (x, y) for x in (0, window.width) for y in (0, window.height)]
    xs, ys = zip(*corners)
    return {
        "bounds": [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))],
        "transform": [float(v) for v in tuple(tile_transform)[:6]],
    }
