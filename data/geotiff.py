"""GeoTIFF class / probability maps (rasterio) and PNG previews, written atomically.

::

    from data.geotiff import write_class_map, write_probability_map, write_preview, crs_of
    write_class_map("tile_class.tif", grid, codes, crs=crs_of(cloud), class_names=..., class_codes=...)
    write_probability_map("tile_proba.tif", grid, proba, mask, crs=..., class_names=...)

- every GeoTIFF is a Cloud-Optimized GeoTIFF (GDAL's COG driver: 512 px tiles, overviews,
  deflate), which QGIS, GDAL and web viewers read by range requests.
- class map: one band of input codes (the first code of each class), ``uint8`` with nodata
  255 when every code is <= 254, else ``uint16`` with nodata 65535; empty cells = nodata.
  Tags ``CLASS_<code>=<name>``, the band description ``classification`` and, for ``uint8``, a
  colour table in ASPRS colours (``data.asprs``: QGIS opens it coloured).
- probability map: one ``float32`` band per class (description = class name), nodata -1.
- CRS: from the cloud's WKT (or ``EPSG:NNNN``); the EPSG code is used when the LAS names
  one (a compound horizontal + vertical WKT is reduced to its horizontal EPSG, which is
  what a 2-D raster needs). No CRS: the file is written without one.
- transform: the grid's, so the origin is a whole multiple of the cell size.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .asprs import colour, colour_table
from .atomic import DISK_ERRNOS, atomic_path
from .crs import rasterio_crs
from .errors import DataError

if TYPE_CHECKING:  # the grid geometry lives in geometry.grids; I/O only reads its transform and shape
    from geometry.grids import Grid2D

__all__ = ["crs_of", "write_class_map", "write_probability_map", "write_preview", "write_mosaic", "CLASS_NODATA_U8",
           "CLASS_NODATA_U16", "PROBA_NODATA"]

CLASS_NODATA_U8 = 255
CLASS_NODATA_U16 = 65535
PROBA_NODATA = -1.0


def crs_of(cloud) -> object | None:
    """rasterio CRS of a PointCloud (EPSG preferred, else its WKT), or None (``data.crs``)."""
    return rasterio_crs(getattr(cloud.meta, "epsg", None), cloud.crs_wkt)


def _affine(grid: Grid2D):
    from rasterio.transform import Affine

    a, b, c, d, e, f = grid.transform
    return Affine(a, b, c, d, e, f)


@contextlib.contextmanager
def _gdal_write(path: Path):
    """``atomic_path`` for GDAL writers: GDAL reports a full disk as a TIFF I/O error without
    an errno, so a failed write on a filesystem left with < 1 MiB is named as a full disk;
    any other GDAL failure is a ``DataError`` naming the file too."""
    import errno

    import rasterio.errors
    from rasterio._err import CPLE_BaseError

    try:
        with atomic_path(path) as tmp:
            yield tmp
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        full = shutil.disk_usage(path.parent).free < 2**20
        raise DataError(path, f"cannot write: {DISK_ERRNOS[errno.ENOSPC]}" if full
                        else f"cannot write the GeoTIFF ({exc})") from None


def _profile(grid: Grid2D, count: int, dtype: str, nodata, crs) -> dict:
    return {"driver": "COG", "width": grid.cols, "height": grid.rows, "count": count, "dtype": dtype,
            "nodata": nodata, "crs": crs, "transform": _affine(grid), "compress": "deflate",
            "overview_resampling": "nearest" if dtype.startswith("uint") else "average"}


def write_class_map(path: str | os.PathLike, grid: Grid2D, codes: np.ndarray, *, mask: np.ndarray | None = None,
                    crs=None, class_names: Sequence[str] = (), class_codes: Sequence[int] = ()) -> Path:
    """``codes`` [rows, cols] input codes; cells outside ``mask`` (or < 0) become nodata."""
    import rasterio

    codes = np.asarray(codes)
    if codes.shape != grid.shape:
        raise ValueError(f"codes shape {codes.shape} != grid shape {grid.shape}")
    empty = codes < 0 if mask is None else (~np.asarray(mask, bool)) | (codes < 0)
    top = int(codes[~empty].max(initial=0))
    if top <= 254:
        dtype, nodata = "uint8", CLASS_NODATA_U8
    elif top <= 65534:
        dtype, nodata = "uint16", CLASS_NODATA_U16
    else:
        raise ValueError(f"class code {top} does not fit a uint16 GeoTIFF band")
    band = np.where(empty, nodata, codes).astype(dtype)
    path = Path(path)
    with _gdal_write(path) as tmp:
        with rasterio.open(tmp, "w", **_profile(grid, 1, dtype, nodata, crs)) as dst:
            dst.write(band, 1)
            if dtype == "uint8":
                present = sorted({int(c) for c in np.unique(band)} - {nodata} | {int(c) for c in class_codes})
                dst.write_colormap(1, {c: (*colour(c), 255) for c in present if c != nodata})
            dst.set_band_description(1, "classification")
            dst.update_tags(**{f"CLASS_{c}": n for c, n in zip(class_codes, class_names)},
                            CELL_SIZE=repr(grid.cell_size))
    return path


def write_probability_map(path: str | os.PathLike, grid: Grid2D, proba: np.ndarray, mask: np.ndarray, *,
                          crs=None, class_names: Sequence[str] = ()) -> Path:
    """``proba`` [rows, cols, C] -> C float32 bands; cells outside ``mask`` = -1 (nodata)."""
    import rasterio

    proba = np.asarray(proba, dtype=np.float32)
    if proba.shape[:2] != grid.shape:
        raise ValueError(f"proba shape {proba.shape} does not start with grid shape {grid.shape}")
    bands = np.where(np.asarray(mask, bool)[..., None], proba, np.float32(PROBA_NODATA)).transpose(2, 0, 1)
    path = Path(path)
    with _gdal_write(path) as tmp:
        with rasterio.open(tmp, "w", **_profile(grid, len(bands), "float32", PROBA_NODATA, crs)) as dst:
            dst.write(np.ascontiguousarray(bands))
            for i, name in enumerate(class_names, start=1):
                dst.set_band_description(i, str(name))
    return path


def write_preview(path: str | os.PathLike, grid: Grid2D, class_idx: np.ndarray, mask: np.ndarray,
                  class_names: Sequence[str], class_codes: Sequence[int] = (), title: str = "") -> Path:
    """PNG of a class-index raster (-1 / outside ``mask`` = white) with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if len(class_codes) == len(class_names):
        colors = [tuple(v / 255 for v in rgb) for rgb in colour_table(class_codes)]
    else:
        base = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
        colors = [base(i % base.N) for i in range(len(class_names))]
    img = np.ma.masked_where(~np.asarray(mask, bool) | (class_idx < 0), class_idx)
    a, _, c, _, e, f = grid.transform
    extent = (c, c + a * grid.cols, f + e * grid.rows, f)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.set_facecolor("white")
    ax.imshow(img, cmap=ListedColormap(colors), vmin=-0.5, vmax=len(class_names) - 0.5, extent=extent,
              interpolation="nearest")
    labels = [f"{n} ({c})" if len(class_codes) else n for n, c in zip(class_names, list(class_codes) or class_names)]
    ax.legend(handles=[Patch(color=col, label=lab) for col, lab in zip(colors, labels)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or f"classes, {grid.cell_size:g} m cells", fontsize=9)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelrotation=30)
    ax.locator_params(nbins=6)
    path = Path(path)
    with atomic_path(path) as tmp:  # "tight": the legend and the long coordinate labels stay inside
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def write_mosaic(tiffs: Sequence[Path], target: Path) -> Path:
    """``target`` (``.vrt``): one GDAL virtual raster over single-band GeoTIFFs on one grid
    (same CRS, cell size and data type; cells aligned, as ``Grid2D`` makes them), so a batch's
    class maps open in QGIS as one layer. Each source is placed at its integer cell offset,
    its nodata left transparent (``ComplexSource`` with ``NODATA``); the first source's colour
    table is the mosaic's. Paths are relative to the ``.vrt``; atomic."""
    import xml.etree.ElementTree as ET

    import rasterio

    target = Path(target)
    infos = []
    for path in sorted(Path(p) for p in tiffs):
        with rasterio.open(path) as src:
            cmap = src.colormap(1) if src.colorinterp[0].name == "palette" else None
            infos.append((path, src.transform, src.width, src.height, src.crs, src.dtypes[0], src.nodata, cmap))
    if not infos:
        raise DataError(target, "no GeoTIFF to gather")
    _, t0, _, _, crs, dtype, nodata, cmap = infos[0]
    res = t0.a
    for path, t, _, _, c, d, _, _ in infos[1:]:
        if c != crs or d != dtype or abs(t.a - res) > 1e-9 * abs(res) or abs(t.e + res) > 1e-9 * abs(res):
            raise DataError(path, f"cannot join {infos[0][0].name} in one mosaic: another CRS, cell size or type")
    west = min(t.c for _, t, *_ in infos)
    north = max(t.f for _, t, *_ in infos)
    east = max(t.c + w * res for _, t, w, *_ in infos)
    south = min(t.f - h * res for _, t, _, h, *_ in infos)
    width, height = int(round((east - west) / res)), int(round((north - south) / res))
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}[dtype]
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = f"{west!r}, {res!r}, 0.0, {north!r}, 0.0, {-res!r}"
    band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band="1")
    if nodata is not None:
        ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
    if cmap:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for i in range(max(cmap) + 1):
            r, g, b, a = cmap.get(i, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    for path, t, w, h, *_ in infos:
        source = ET.SubElement(band, "ComplexSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = \
            Path(os.path.relpath(path, target.parent)).as_posix()
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
        ET.SubElement(source, "DstRect", xOff=str(int(round((t.c - west) / res))),
                      yOff=str(int(round((north - t.f) / res))), xSize=str(w), ySize=str(h))
        if nodata is not None:
            ET.SubElement(source, "NODATA").text = repr(float(nodata))
    ET.indent(root)
    with atomic_path(target) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8")
    return target
