"""Sentinel-2 ``.SAFE`` products made from the demo's real BigEarthNet L2A patches: the product layout, metadata
and lossless JPEG 2000 band files of ESA's format, with the patch's digital numbers shifted by the processing
baseline 04.00 offset (+1000) as a product after January 2022 stores them. No SAFE product ships with the
repository or the shared pack (hundreds of MB each); these keep the layout exact and the values known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

L1C_NS = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
L2A_NS = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
OFFSET = 1000


def write_jp2(path: Path, data: np.ndarray, crs, transform) -> None:
    """Lossless (reversible) JPEG 2000, as ESA writes the band files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = data[None] if data.ndim == 2 else data
    profile = dict(driver="JP2OpenJPEG", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0])
    profile.update(dtype=str(bands.dtype), crs=crs, transform=transform, QUALITY=100, REVERSIBLE="YES")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)


def metadata(level: str, baseline: str, quantification: int, offsets: bool, start: str) -> str:
    namespace = L1C_NS if level == "L1C" else L2A_NS
    if level == "L1C":
        quantity = f'<QUANTIFICATION_VALUE unit="none">{quantification}</QUANTIFICATION_VALUE>'
        listed = "".join(f'<RADIO_ADD_OFFSET band_id="{i}">-{OFFSET}</RADIO_ADD_OFFSET>' for i in range(13))
        offset_list = f"<Radiometric_Offset_List>{listed}</Radiometric_Offset_List>" if offsets else ""
    else:
        quantity = (
            f'<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">{quantification}'
            '</BOA_QUANTIFICATION_VALUE><AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
            "</QUANTIFICATION_VALUES_LIST>"
        )
        listed = "".join(f'<BOA_ADD_OFFSET band_id="{i}">-{OFFSET}</BOA_ADD_OFFSET>' for i in range(13))
        offset_list = f"<BOA_ADD_OFFSET_VALUES_LIST>{listed}</BOA_ADD_OFFSET_VALUES_LIST>" if offsets else ""
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<n1:Level-{level[1:]}_User_Product xmlns:n1="{namespace}">'
        f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>"
        f"<PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL><PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>"
        f"</Product_Info><Product_Image_Characteristics>{quantity}{offset_list}"
        "</Product_Image_Characteristics></n1:General_Info>"
        f"</n1:Level-{level[1:]}_User_Product>\n"
    )


def make_product(
    patch: Path,
    out: Path,
    level: str = "L2A",
    baseline: str = "04.00",
    quantification: int = 10000,
    offsets: bool = True,
    cloud_block: tuple[int, int] = (10, 20),
) -> Path:
    """A product from one BigEarthNet patch directory (bands B02, B03, B04, B08 at 10 m): those bands, B05 at
    20 m (the 2x2 mean of B08, standing in for a red-edge band), and the product's mask with one 20 m block of
    cloud (L2A: SCL class 9 at ``cloud_block``; L1C baseline >= 04.00: MSK_CLASSI_B00 opaque clouds at 60 m)."""
    shifted = OFFSET if offsets else 0
    name = patch.name  # S2A_MSIL2A_20170613T101031_87_48
    product = out / f"S2A_MSI{level}_{name.split('_')[2]}_N{baseline.replace('.', '')}_R022_T33UUP_{name}.SAFE"
    tile = f"T33UUP_{name.split('_')[2]}"
    granule = product / "GRANULE" / f"{level}_T33UUP_A010339_{name.split('_')[2]}" / "IMG_DATA"
    stamp = name.split("_")[2]
    start = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}.026Z"
    product.mkdir(parents=True)
    (product / f"MTD_MSI{level}.xml").write_text(metadata(level, baseline, quantification, offsets, start))
    with rasterio.open(patch / f"{name}_B02.tif") as ds:
        crs, transform = ds.crs, ds.transform
    coarse = transform * transform.scale(2)
    for band in ("B02", "B03", "B04", "B08"):
        with rasterio.open(patch / f"{name}_{band}.tif") as ds:
            dn = ds.read(1)
        stored = np.where(dn > 0, dn.astype(np.int64) + shifted, 0).astype(np.uint16)
        target = granule / "R10m" / f"{tile}_{band}_10m.jp2" if level == "L2A" else granule / f"{tile}_{band}.jp2"
        write_jp2(target, stored, crs, transform)
        if band == "B08":
            b05 = dn.reshape(60, 2, 60, 2).mean(axis=(1, 3)).round().astype(np.int64)
            b05 = np.where(b05 > 0, b05 + shifted, 0).astype(np.uint16)
            target = granule / "R20m" / f"{tile}_B05_20m.jp2" if level == "L2A" else granule / f"{tile}_B05.jp2"
            write_jp2(target, b05, crs, coarse)
        if level == "L2A" and band == "B02":  # the 20 m copy every L2A product also has: the 10 m one is read
            write_jp2(granule / "R20m" / f"{tile}_B02_20m.jp2", stored[::2, ::2], crs, coarse)
    row, col = cloud_block
    if level == "L2A":
        scl = np.full((60, 60), 4, dtype=np.uint8)  # vegetation
        scl[row : row + 4, col : col + 4] = 9  # cloud high probability: 8 x 8 px at 10 m
        write_jp2(granule / "R20m" / f"{tile}_SCL_20m.jp2", scl, crs, coarse)
    elif baseline >= "04.00":
        classi = np.zeros((3, 20, 20), dtype=np.uint8)
        classi[0, row // 3, col // 3] = 1  # one opaque-cloud pixel of 60 m: 6 x 6 px at 10 m
        write_jp2(product / "GRANULE" / granule.parent.name / "QI_DATA" / "MSK_CLASSI_B00.jp2", classi, crs,
                  transform * transform.scale(6))  # fmt: skip
    return product
