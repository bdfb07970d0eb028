"""GDAL subdatasets: the variables of a netCDF file, the arrays of an HDF5/HDF4 file.

A container file is not a raster; GDAL opens one of its variables through a URI such as
``NETCDF:"cube.nc":blue`` or ``HDF5:"granule.h5"://group/radiance``. An input names the variable either in
``scenes`` (a URI whose file part is a glob) or with ``subdataset:`` (``{band}``/``{band_lower}`` for one
variable per band); the name is matched against the subdatasets the file lists, so a typo is an error that
lists the names the file has.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Optional

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ringmoe.core.errors import DataError

# DRIVER:"path":name or DRIVER:path:name (GDAL writes both forms; HDF4-EOS drivers have two-word prefixes).
_URI = re.compile(
    r"^(?P<driver>NETCDF|HDF5|HDF4_SDS|HDF4_IMAGE|HDF4_EOS:EOS_GRID|HDF4_EOS:EOS_SWATH):"
    r'(?:"(?P<quoted>[^"]+)"|(?P<plain>[^:"]+)):(?P<name>.+)$',
    re.IGNORECASE,
)


def split_uri(text: str) -> Optional[tuple[str, str, str]]:
    """``(driver, path, name)`` of a GDAL subdataset URI, or None when ``text`` is a plain path."""
    match = _URI.match(text)
    if match is None:
        return None
    return match["driver"].upper(), match["quoted"] or match["plain"], match["name"]


def open_raster(source: str | Path) -> rasterio.DatasetReader:
    """``rasterio.open`` without the warning for a raster that has no georeferencing (a container file, an HDF5
    array, a plain JPEG): the reader decides where that is an error and says so with the file's name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(source)


def _variable(uri: str) -> str:
    """The variable part of a listed subdataset URI, without HDF5's leading slashes."""
    parts = split_uri(uri)
    return (parts[2] if parts else uri).lstrip("/")


def subdataset_uris(path: Path, wanted: list[str]) -> list[str]:
    """The URI of each subdataset of ``path`` named in ``wanted`` (the variable name, or its tail after a ``/``
    group separator), listing the file's subdatasets once; an error names the file and lists its subdatasets
    when none or several match."""
    try:
        with open_raster(path) as container:
            listed, driver = list(container.subdatasets), container.driver
    except RasterioError as exc:
        raise DataError(f"{path}: cannot open to list its subdatasets ({exc})") from None
    if not listed:  # a file with one variable: GDAL opens it directly, lists nothing, yet takes its URI
        return [_only_variable(path, driver, name) for name in wanted]
    return [_match(path, listed, name) for name in wanted]


def _match(path: Path, listed: list[str], wanted: str) -> str:
    name = wanted.lstrip("/")
    exact = [uri for uri in listed if _variable(uri) == name]
    tails = [uri for uri in listed if _variable(uri).endswith("/" + name)]
    found = exact or tails
    if len(found) != 1:
        problem = "matches several" if found else "matches none"
        raise DataError(
            f"{path}: subdataset {wanted!r} {problem} of the file's subdatasets {[_variable(u) for u in listed]}"
        )
    return found[0]


def _only_variable(path: Path, driver: str, wanted: str) -> str:
    name = wanted.lstrip("/")
    prefixes = {"netCDF": f'NETCDF:"{path}":{name}', "HDF5": f'HDF5:"{path}"://{name}'}
    uri = prefixes.get(driver) or prefixes.get(driver.replace("Image", ""))
    if uri is not None:
        try:
            with open_raster(uri):
                return uri
        except RasterioError:
            pass
    raise DataError(f"{path}: subdataset {wanted!r} matches none (GDAL's {driver} driver lists no subdatasets)")
