"""Virtual point clouds (``.vpc``): one index over many LAS/LAZ files, which QGIS opens as a
single layer and PDAL reads (``readers.stac``).

The format is PDAL wrench's: a STAC API ItemCollection (a GeoJSON FeatureCollection of STAC
Items) with the ``pointcloud`` and ``projection`` extensions. Each item is one file: its
header's 3-D box in the file's own CRS (``proj:bbox``, which QGIS uses first), the same box
in WGS 84 (``bbox`` and the ``geometry`` polygon, as GeoJSON requires), the CRS
(``proj:wkt2``, and ``proj:epsg`` when the file names one), the point count and an ``href``
relative to the ``.vpc`` file. Only headers are read.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_path
from .errors import DataError

STAC_EXTENSIONS = ["https://stac-extensions.github.io/pointcloud/v1.0.0/schema.json",
                   "https://stac-extensions.github.io/projection/v1.1.0/schema.json"]


def _wgs84_box(crs: Any, mins: Sequence[float], maxs: Sequence[float]) -> list[float] | None:
    """``[west, south, east, north]`` in WGS 84 of a box in ``crs`` (None without a CRS)."""
    if crs is None:
        return None
    from rasterio.warp import transform_bounds

    return list(transform_bounds(crs, "EPSG:4326", mins[0], mins[1], maxs[0], maxs[1], densify_pts=21))


def vpc_item(path: Path, vpc_folder: Path) -> dict[str, Any]:
    """The STAC Item of one point-cloud file (its header only)."""
    from .crs import rasterio_crs
    from .io import read_header_info

    info = read_header_info(path)
    mins, maxs = [float(v) for v in info.mins], [float(v) for v in info.maxs]
    crs = rasterio_crs(info.epsg, info.crs_wkt)
    box = _wgs84_box(crs, mins, maxs)
    props: dict[str, Any] = {
        "datetime": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "pc:count": int(info.point_count), "pc:type": "lidar",
        "pc:encoding": "?", "pc:schemas": [],
        "proj:bbox": [mins[0], mins[1], mins[2], maxs[0], maxs[1], maxs[2]],
    }
    if crs is not None:
        props["proj:wkt2"] = crs.to_wkt()
        if info.epsg:
            props["proj:epsg"] = int(info.epsg)
    west, south, east, north = box if box is not None else (mins[0], mins[1], maxs[0], maxs[1])
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": STAC_EXTENSIONS,
        "id": path.name,
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                         [west, north], [west, south]]]},
        "bbox": [west, south, mins[2], east, north, maxs[2]],
        "properties": props, "links": [],
        "assets": {"data": {"href": "./" + Path(os.path.relpath(path, vpc_folder)).as_posix(), "roles": ["data"]}},
    }


def write_vpc(files: Sequence[Path], target: Path) -> Path:
    """Write ``target`` (``.vpc``) indexing ``files`` (paths relative to its folder); atomic.
    Files without a CRS are indexed by their native box (QGIS reads ``proj:bbox``)."""
    target = Path(target)
    if target.suffix.lower() != ".vpc":
        raise DataError(target, "a virtual point cloud is written as .vpc")
    items = [vpc_item(Path(f), target.parent) for f in sorted(files)]
    with atomic_path(target) as tmp:
        Path(tmp).write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1), encoding="utf-8")
    return target


__all__ = ["write_vpc", "vpc_item"]
