"""Coordinate reference systems of point clouds and rasters: one place for every format.

A CRS travels as ``(crs_wkt, epsg)``: the WKT (or ``"EPSG:NNNN"`` when only a code is known)
and its EPSG code when one can be read (``None`` otherwise). No pyproj is needed:

- LAS/LAZ: the OGC WKT VLR (``LASF_Projection`` 2112) first, else the GeoTIFF keys VLR
  (34735: ProjectedCSTypeGeoKey, then GeographicTypeGeoKey); written back as a WKT VLR, or
  as GeoTIFF keys for ``"EPSG:NNNN"``;
- PLY: a ``comment crs <WKT or EPSG:NNNN>`` header line;
- GeoTIFF: a rasterio CRS from the EPSG code, else from the WKT.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

__all__ = ["WKT_ID", "GEOKEYS_ID", "epsg_from_wkt", "crs_from_vlr_records", "crs_vlr_record",
           "crs_from_comments", "crs_comment", "rasterio_crs"]

WKT_ID = ("LASF_Projection", 2112)
GEOKEYS_ID = ("LASF_Projection", 34735)
_AUTH = re.compile(r'(?:AUTHORITY|ID)\[\s*"EPSG"\s*,\s*"?(\d+)"?')


def epsg_from_wkt(wkt: str) -> int | None:
    """EPSG code of the outermost CRS of a WKT (or of its first child for a compound CRS)."""
    best: dict[int, int] = {}
    for m in _AUTH.finditer(wkt):
        depth = wkt.count("[", 0, m.start()) - wkt.count("]", 0, m.start())
        best.setdefault(depth, int(m.group(1)))
    for depth in (1, 2):
        if depth in best:
            return best[depth]
    return None


def crs_from_vlr_records(records: Iterable[tuple[str, int, bytes]]) -> tuple[str | None, int | None]:
    """``(crs_wkt, epsg)`` from LAS (user_id, record_id, data) records: the WKT VLR, else GeoTIFF keys."""
    records = list(records)
    wkt_data = next((d for u, r, d in records if (u, r) == WKT_ID), None)
    if wkt_data is not None:
        wkt = wkt_data.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if wkt:
            return wkt, epsg_from_wkt(wkt)
    geo = next((d for u, r, d in records if (u, r) == GEOKEYS_ID), None)
    if geo is not None and len(geo) >= 8:
        keys = np.frombuffer(geo[: len(geo) // 2 * 2], "<u2")
        n = min(int(keys[3]), (len(keys) - 4) // 4)
        entries = keys[4:4 + 4 * n].reshape(n, 4)
        for key_id in (3072, 2048):  # ProjectedCSTypeGeoKey, then GeographicTypeGeoKey
            hit = entries[(entries[:, 0] == key_id) & (entries[:, 1] == 0)]
            if len(hit) and 0 < int(hit[0, 3]) < 32767:
                code = int(hit[0, 3])
                return f"EPSG:{code}", code
    return None, None


def crs_vlr_record(crs: str) -> tuple[str, int, str, bytes, bool]:
    """The LAS VLR for a CRS given as WKT or ``"EPSG:NNNN"``: ``(user_id, record_id,
    description, data, is_wkt)``."""
    m = re.fullmatch(r"\s*EPSG:(\d+)\s*", crs, re.IGNORECASE)
    if m:
        code = int(m.group(1))
        keys = np.array([1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, code], "<u2")
        return GEOKEYS_ID[0], GEOKEYS_ID[1], "GeoTiff GeoKeyDirectoryTag", keys.tobytes(), False
    return WKT_ID[0], WKT_ID[1], "OGC Coordinate System WKT", crs.encode() + b"\0", True


def crs_from_comments(comments: Iterable[str]) -> tuple[str | None, int | None]:
    """``(crs_wkt, epsg)`` from PLY header comments (``comment crs ...``)."""
    for c in comments:
        m = re.match(r"\s*crs\s+(.+)$", c, re.IGNORECASE)
        if m:
            crs = m.group(1).strip()
            code = re.fullmatch(r"EPSG:(\d+)", crs, re.IGNORECASE)
            if code:
                return crs, int(code.group(1))
            return crs, epsg_from_wkt(crs)
    return None, None


def crs_comment(crs: str) -> str:
    """The PLY comment text for a CRS (one line)."""
    return "crs " + " ".join(crs.split())


def rasterio_crs(epsg: int | None, wkt: str | None) -> object | None:
    """A rasterio CRS (EPSG preferred, else the WKT), or None (none known, or an exotic WKT)."""
    from rasterio.crs import CRS

    if epsg:
        return CRS.from_epsg(int(epsg))
    if not wkt:
        return None
    try:
        return CRS.from_user_input(wkt)
    except Exception:  # noqa: BLE001 - an exotic WKT must not stop the raster; written without CRS
        return None
