"""Point-cloud file I/O: one entry point per operation, format chosen by suffix.

::

    from data.io import read_cloud, write_cloud, read_header_info
    cloud = read_cloud("tile.laz")                   # .las / .laz / .ply (any case)
    part = read_cloud("tile.copc.laz", bounds=Bounds(x0, y0, x1, y1))  # a window
    write_cloud(cloud, "out.laz", extra={"pred": p})  # atomic; extra dims added/replaced
    info = read_header_info("tile.laz")               # no point decoding

Every problem with a file (missing, wrong format, truncated, corrupt, no points, NaN
coordinates, ...) raises ``DataError`` naming the file. See ``data.las`` / ``data.ply``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bounds import Bounds
from .errors import DataError
from .las import LasMeta, RawVlr, ExtraDim, las_header_info, read_las, write_las
from .ply import PlyMeta, ply_header_info, read_ply, write_ply
from .pointcloud import PointCloud

__all__ = ["read_cloud", "write_cloud", "read_header_info", "cloud_format", "HeaderInfo", "Bounds", "LasMeta", "PlyMeta",
           "RawVlr", "ExtraDim", "SUFFIXES"]

SUFFIXES = (".las", ".laz", ".ply")


@dataclass
class HeaderInfo:
    """Cheap facts about a point-cloud file (from the header; PLY bounds need x/y/z)."""

    path: str
    format: str                     # "las", "laz" or "ply"
    point_count: int
    mins: np.ndarray                # [3] header bounds
    maxs: np.ndarray
    crs_wkt: str | None             # WKT, "EPSG:NNNN" (GeoTIFF keys only) or None
    epsg: int | None
    point_format: int | None        # LAS point format id; None for PLY
    version: str                    # LAS version "1.4" / PLY format "ascii", ...
    scales: np.ndarray | None
    offsets: np.ndarray | None
    dimensions: list[str]           # every dimension but X/Y/Z, file order
    compressed: bool
    copc: bool = False              # a COPC file: bounded reads decode only the nodes they need
    warnings: list[str] = field(default_factory=list)  # suspicious but readable layout


def _sniff(path: Path) -> str | None:
    """The format of a file by its first bytes (``LASF``: LAS, or LAZ when its header says
    compressed; ``ply``: PLY), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    if head[:4] == b"LASF":
        return ".laz" if las_header_info(path)["compressed"] else ".las"
    if head[:4] in (b"ply\n", b"ply\r"):
        return ".ply"
    return None


def cloud_format(path: str | os.PathLike) -> str:
    """``.las``, ``.laz`` or ``.ply``: by the name's suffix (any case), or, for a name with no
    suffix (a git-annex or DVC object behind a link), by the file's first bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return suffix
    if not path.suffix:
        _regular(path)
        sniffed = _sniff(path)
        if sniffed:
            return sniffed
        raise DataError(path, f"has no suffix and is neither LAS/LAZ nor PLY by its first bytes "
                              f"(expected one of {', '.join(SUFFIXES)})")
    raise DataError(path, f"unsupported point-cloud suffix {path.suffix!r} "
                          f"(expected one of {', '.join(SUFFIXES)})")


def _regular(path: Path) -> None:
    """A FIFO, a device or a folder given as a cloud is refused before it is opened (a FIFO
    would block the read forever)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise DataError(path, "is not a regular file (a folder, FIFO or device)")


def read_cloud(path: str | os.PathLike, bounds: Bounds | None = None) -> PointCloud:
    """Read a LAS/LAZ/PLY file (by suffix, case-insensitive; by content when it has none) into a PointCloud.

    ``bounds``: only the points in the window ``[xmin, xmax) x [ymin, ymax)``; COPC files
    decode only the octree nodes that meet it (``data.bounds``).
    """
    path = Path(path)
    kind = cloud_format(path)
    _regular(path)
    if kind == ".ply":
        return read_ply(path, bounds)
    return read_las(path, bounds)


def write_cloud(cloud: PointCloud, path: str | os.PathLike,
                extra: dict[str, np.ndarray] | None = None, las14: bool = False) -> None:
    """Write ``cloud`` to ``path`` (.las/.laz/.ply by suffix), atomically.

    ``extra``: ``{name: [N] array}`` written as extra dimensions (LAS extra bytes / PLY
    properties) after the cloud's own fields; a name already in ``cloud.fields`` replaces
    that field. ``cloud`` itself is not modified. ``las14``: LAS output in a LAS 1.4 point
    format (6-10) even when the input's legacy one would hold it.
    """
    path = Path(path)
    if cloud_format(path) == ".ply":
        write_ply(cloud, path, extra)
    else:
        write_las(cloud, path, extra, las14)


def read_header_info(path: str | os.PathLike) -> HeaderInfo:
    """Point count, bounds, CRS, point format... without decoding LAS/LAZ points."""
    path = Path(path)
    kind = cloud_format(path)
    _regular(path)
    info = ply_header_info(path) if kind == ".ply" else las_header_info(path)
    return HeaderInfo(**info)
