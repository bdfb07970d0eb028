"""The open rasterio datasets of one scene reader, closed together (readers are context managers)."""

from __future__ import annotations

from typing import Optional

import rasterio


class RasterHandles:
    """Base of the scene readers: ``_datasets`` (and an optional ``_mask``) are closed by ``close`` or on exit."""

    _datasets: dict[str, rasterio.DatasetReader]
    _mask: Optional[rasterio.DatasetReader] = None

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()
        if self._mask is not None:
            self._mask.close()
            self._mask = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
