"""LAS point records for writing: fields packed into a point format's record array
(bit fields, range-checked casts), coordinates quantised, a chunk of points at a time.

:func:`point_chunks` yields ``laspy.PackedPointRecord`` chunks of :data:`WRITE_CHUNK`
points, packing chunk ``i + 1`` in a second thread while the caller writes chunk ``i``;
``data.las.write_las`` writes them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import laspy
import numpy as np
from laspy.point import dims as laspy_dims

from .errors import DataError
from .las_header import SCAN_ANGLE_UNIT
from .pointcloud import PointCloud

__all__ = ["WRITE_CHUNK", "point_chunks"]


def _check_cast(path: Path, name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype == dtype:
        return values
    out = values.astype(dtype)
    if np.issubdtype(dtype, np.integer) and not np.array_equal(out, values):
        raise DataError(path, f"field {name!r}: values in [{values.min()}, {values.max()}] do "
                              f"not fit the file's {dtype} dimension")
    return out


def _quantize(path: Path, xyz: np.ndarray, scales: np.ndarray, offsets: np.ndarray,
              raw: np.ndarray | None, whole: np.ndarray | None = None) -> np.ndarray:
    """Integer X/Y/Z: the original ints where xyz is unchanged, else rounded. ``whole``: the
    cloud's coordinates when ``xyz`` is a chunk of them (for the error message's count)."""
    if raw is not None and raw.shape == xyz.shape:
        same = (raw * scales + offsets) == xyz
        if same.all():
            return raw
    else:
        same = None
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        every = xyz if whole is None else whole
        raise DataError(path, f"{int((~np.isfinite(every).all(axis=1)).sum())} of {len(every)} points have "
                              "NaN/inf coordinates")
    q = np.round((xyz - offsets) / scales)
    if same is not None:
        q = np.where(same, raw, q)
    lim = np.iinfo(np.int32)
    if q.size and (q.min() < lim.min or q.max() > lim.max):
        raise DataError(path, f"coordinates do not fit 32-bit integers with scales "
                              f"{scales.tolist()} and offsets {offsets.tolist()}")
    return q.astype(np.int32)


#: Points packed per chunk when writing (two LAZ chunks of 50,000): the next one is packed
#: in a second thread while laspy/lazrs write (compress) this one.
WRITE_CHUNK = 100_000


def point_chunks(cloud: PointCloud, fields: dict[str, np.ndarray], header: laspy.LasHeader,
                  raw_xyz: np.ndarray | None, path: Path) -> Iterator[laspy.PackedPointRecord]:
    """The packed point records, :data:`WRITE_CHUNK` points at a time: X/Y/Z quantised (the
    input's raw integers where unchanged), standard dimensions with bit fields packed, extra
    dimensions cast with range checks. Block ``i + 1`` is packed in a second thread while the
    caller writes chunk ``i`` (NumPy and lazrs release the GIL)."""
    point_format = header.point_format
    xyz = np.asarray(cloud.xyz, np.float64)
    cols = {name: np.asarray(v) for name, v in fields.items()}
    n = len(xyz)

    def pack(s: int) -> laspy.PackedPointRecord:
        e = min(n, s + WRITE_CHUNK)
        arr = np.zeros(e - s, dtype=point_format.dtype())
        _pack_fields(arr, {name: v[s:e] for name, v in cols.items()}, point_format, path)
        raw = _quantize(path, xyz[s:e], header.scales, header.offsets,
                        None if raw_xyz is None or raw_xyz.shape != xyz.shape else raw_xyz[s:e], whole=xyz)
        arr["X"], arr["Y"], arr["Z"] = raw[:, 0], raw[:, 1], raw[:, 2]
        return laspy.PackedPointRecord(arr, point_format)

    starts = range(0, max(n, 1), WRITE_CHUNK)       # an empty cloud: one empty chunk
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(pack, 0)
        for s in starts:
            chunk = nxt.result()
            if s + WRITE_CHUNK < n:
                nxt = pool.submit(pack, s + WRITE_CHUNK)
            yield chunk


def _pack_fields(arr: np.ndarray, fields: dict[str, np.ndarray], point_format: laspy.PointFormat,
                 path: Path) -> None:
    """Every dimension but X/Y/Z into the record array ``arr`` (bit fields packed)."""
    pf_id = point_format.id
    sub = laspy_dims.get_sub_fields_dict(pf_id)
    for name in point_format.dimension_names:
        if name in ("X", "Y", "Z"):
            continue
        values = fields.get(name)
        if values is None and name == "scan_angle" and "scan_angle_rank" in fields:
            values = np.round(np.asarray(fields["scan_angle_rank"], np.float64) / SCAN_ANGLE_UNIT)
        if values is None:
            continue
        values = np.asarray(values)
        if name in sub:
            composed, sf = sub[name]
            shift = (sf.mask & -sf.mask).bit_length() - 1
            top = sf.mask >> shift
            if values.size and (values.min() < 0 or values.max() > top):
                raise DataError(path, f"field {name!r}: values in [{values.min()}, {values.max()}] "
                                      f"do not fit {top.bit_length()} bits of point format {pf_id}")
            arr[composed] |= (values.astype(arr[composed].dtype) << shift) & sf.mask
        else:
            arr[name] = _check_cast(path, name, values, arr.dtype[name].base
                                    if arr.dtype[name].shape else arr.dtype[name])
