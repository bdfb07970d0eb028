"""Where one scene's pixels live: the record the planner resolves and every reader (GeoTIFF, zarr, product)
opens."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from data_pipeline.config import ScalingSpec
from data_pipeline.safe import S2Product
from data_pipeline.sentinel1 import S1Product


@dataclass
class Scene:
    """Where each modality band of one scene lives: ``files[i]`` band ``indexes[i]`` (1-based).

    ``expect_count``: the band count every file must have (1 per band file; N for a multi-band file read with
    the default 1..N indexes); ``None`` when explicit ``band_indexes`` may pick from a larger file.
    """

    name: str
    path: Path
    files: list[Path]
    indexes: list[int]
    expect_count: Optional[int]
    invalid_mask: Optional[Path] = None  # GeoTIFF scenes: file; zarr scenes: see ``array_mask``
    downsample: int = 1
    store: str = ""  # "zarr" for array stores
    array: str = ""
    dims: tuple[str, ...] = ("band", "y", "x")
    array_mask: str = ""
    time_index: Optional[int] = None  # zarr time cube read as the single image of this step
    # GDAL URI of each band's subdataset (netCDF variable, HDF5 array) inside ``files[i]``; empty: plain rasters.
    subdatasets: list[str] = field(default_factory=list)
    scaling: Optional[ScalingSpec] = None  # the files' encoding, when it is not the source's dtype
    time: Optional[str] = None  # acquisition time a catalog gives (STAC datetime); else parsed from the name
    # A product directory that reads itself: Sentinel-2 .SAFE (data_pipeline.safe), Sentinel-1 GRD .SAFE
    # (data_pipeline.sentinel1); ``crs`` is the map grid of a GCP-georeferenced one ("" = UTM of its centre).
    product: Optional[Union[S2Product, S1Product]] = None
    crs: str = ""

    def band_sources(self) -> list[str]:
        """What GDAL opens for each band: the subdataset URI, or the file path."""
        return list(self.subdatasets) if self.subdatasets else [str(file) for file in self.files]
