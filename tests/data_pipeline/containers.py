"""Writers of real-format container files (CF netCDF-4, HDF5) for the ingest tests, made with the reference
libraries (netCDF4, h5py) rather than GDAL, which can only read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio


def write_cf_netcdf(path: Path, geotiffs: dict[str, Path], grid_mapping: bool = True, stack: str = "", **attrs) -> Path:
    """One variable per band (named by the dict key) from single-band GeoTIFFs, or with ``stack`` one variable
    of that name ``(band, y, x)``; CF x/y coordinates of the pixel centres and, unless ``grid_mapping`` is
    false, a ``spatial_ref`` grid-mapping variable (WKT)."""
    netCDF4 = __import__("netCDF4")
    with rasterio.open(next(iter(geotiffs.values()))) as first:
        transform, crs, (height, width) = first.transform, first.crs, first.shape
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("y", height)
        nc.createDimension("x", width)
        x = nc.createVariable("x", "f8", ("x",))
        x[:] = transform.c + transform.a * (np.arange(width) + 0.5)
        x.standard_name, x.units = "projection_x_coordinate", "m"
        y = nc.createVariable("y", "f8", ("y",))
        y[:] = transform.f + transform.e * (np.arange(height) + 0.5)
        y.standard_name, y.units = "projection_y_coordinate", "m"
        if grid_mapping:
            spatial_ref = nc.createVariable("spatial_ref", "i4")
            spatial_ref.crs_wkt = crs.to_wkt()
            spatial_ref.spatial_ref = crs.to_wkt()
        planes = {}
        for name, tif in geotiffs.items():
            with rasterio.open(tif) as ds:
                planes[name] = ds.read(1)
        if stack:
            nc.createDimension("band", len(planes))
            planes = {stack: np.stack(list(planes.values()))}
        for name, data in planes.items():
            variable = nc.createVariable(name, data.dtype, ("band", "y", "x") if stack else ("y", "x"))
            if grid_mapping:
                variable.grid_mapping = "spatial_ref"
            variable.set_auto_maskandscale(False)  # store the DN as given; scale_factor only describes them
            variable.setncatts(attrs)
            variable[:] = data
    return path


def write_hdf5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Plain HDF5 datasets (``group/name`` keys make groups) without any georeferencing."""
    h5py = __import__("h5py")
    with h5py.File(path, "w") as h5:
        for name, array in arrays.items():
            h5.create_dataset(name, data=array)
    return path
