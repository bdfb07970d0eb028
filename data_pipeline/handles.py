"""Opening a scene's rasterio datasets with errors that name the file and keep GDAL's cause, and closing them
together (readers are context managers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import rasterio
from rasterio.errors import RasterioError

from data_pipeline.subdatasets import open_raster
from ringmoe.core.errors import DataError


def gdal_reason(exc: BaseException) -> str:
    """rasterio's message with GDAL's own beneath it: a failed read says only "Read failed. See previous
    exception for details." and keeps GDAL's message (the file, the block, the codec) in ``__cause__``."""
    messages: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(messages) < 5:
        text = str(seen).replace("See previous exception for details.", "").strip()
        if text and text not in messages:
            messages.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(messages) or type(exc).__name__


def open_dataset(source: str | Path) -> rasterio.DatasetReader:
    """``source`` (a path or GDAL subdataset URI) opened, or a ``DataError`` naming it with GDAL's reason."""
    try:
        return open_raster(source)
    except RasterioError as exc:
        raise DataError(f"{source}: cannot open raster ({gdal_reason(exc)})") from None


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
