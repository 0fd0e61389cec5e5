"""PLY point clouds through ``plyfile``: ascii, binary_little_endian and binary_big_endian.

``plyfile`` parses the header and the element data (binary data is memory-mapped); this
module is the thin wrapper that turns a PLY ``vertex`` element into a ``PointCloud`` and back:

- x/y/z (float or double, any position) go to ``cloud.xyz`` (float64); every other scalar
  property goes to ``cloud.fields`` in file order and file dtype (in native byte order);
- ``PlyMeta`` keeps the format, the property order and types (canonical PLY names: ``float``
  for ``float32``...), comments and obj_info lines, so read -> write -> read is exact (x/y/z
  are cast back to their stored type) and a second generation is byte-identical;
- a ``comment crs <WKT or EPSG:NNNN>`` line is exposed as ``meta.crs_wkt`` / ``meta.epsg``;
- other elements (faces, camera records...) are read by plyfile and not written back;
- every failure is a ``DataError`` naming the file (plyfile's own errors are translated).

Not open3d: it drops comments and ``ushort`` properties.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plyfile

from .atomic import atomic_path
from .bounds import Bounds
from .crs import crs_comment, crs_from_comments
from .errors import DataError, EmptyWindowError
from .pointcloud import PointCloud

# numpy code -> canonical PLY type name (the names plyfile writes)
_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
          "u4": "uint", "f4": "float", "f8": "double"}
_TYPES = {name: code for code, name in _NAMES.items()}
_FORMATS = {"ascii": "=", "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass
class PlyMeta:
    """What the PLY writer needs to reproduce the file."""

    format: str = "binary_little_endian"
    properties: list[tuple[str, str]] = field(default_factory=list)  # (name, type name)
    comments: list[str] = field(default_factory=list)
    obj_info: list[str] = field(default_factory=list)
    crs_wkt: str | None = None
    epsg: int | None = None


def _open(path: Path) -> plyfile.PlyData:
    """plyfile's parse of the whole file, its errors turned into DataErrors."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from None
    if magic[:3] != b"ply" or magic[3:4] not in (b"\n", b"\r"):
        raise DataError(path, "not a PLY file (does not start with 'ply')")
    try:
        return plyfile.PlyData.read(str(path))
    except plyfile.PlyHeaderParseError as e:
        if "early end-of-file" in str(e):
            raise DataError(path, "truncated PLY header (no 'end_header')") from None
        raise DataError(path, f"bad PLY header: {e}") from None
    except plyfile.PlyElementParseError as e:
        name = e.element.name if e.element is not None else "?"
        if "early end-of-file" in str(e) and e.element is not None:
            raise DataError(path, f"truncated PLY: header says {e.element.count} {name} records "
                                  f"but the file holds {e.row}".replace(" vertex records", " vertices")) from None
        raise DataError(path, f"truncated or malformed PLY {name!r} data: {e}") from None
    except (ValueError, OSError, MemoryError) as e:  # e.g. 'two properties with same name'
        raise DataError(path, f"corrupt PLY file: {e}") from None


def _vertices(path: Path, ply: plyfile.PlyData) -> plyfile.PlyElement:
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise DataError(path, "PLY file has no 'vertex' element") from None
    if any(isinstance(p, plyfile.PlyListProperty) for p in vertex.properties):
        raise DataError(path, "PLY vertex element has list properties (unsupported)")
    names = [p.name for p in vertex.properties]
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise DataError(path, f"PLY vertex element has no {'/'.join(missing)} property "
                              f"(has: {', '.join(names) or 'none'})")
    if vertex.count == 0:
        raise DataError(path, "PLY file has no points")
    return vertex


def read_ply(path: str | os.PathLike, bounds: Bounds | None = None) -> PointCloud:
    """Read a PLY file's vertex element into a PointCloud; DataError on bad input.

    ``bounds``: only the points in that x/y window (the file is read whole and cropped)."""
    path = Path(path)
    ply = _open(path)
    vertex = _vertices(path, ply)
    data = vertex.data  # memory-mapped for binary files: copy each column once
    xyz = np.empty((vertex.count, 3), np.float64)
    for i, c in enumerate("xyz"):
        xyz[:, i] = data[c]
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(axis=1)).sum())
        raise DataError(path, f"{bad} of {len(xyz)} points have NaN/inf coordinates")
    props = [(p.name, _NAMES[p.val_dtype]) for p in vertex.properties]
    fields = {p: np.array(data[p], dtype=_TYPES[t]) for p, t in props if p not in ("x", "y", "z")}
    fmt = "ascii" if ply.text else ("binary_big_endian" if ply.byte_order == ">"
                                    else "binary_little_endian")
    crs_wkt, epsg = crs_from_comments(ply.comments)
    meta = PlyMeta(fmt, props, list(ply.comments), list(ply.obj_info), crs_wkt, epsg)
    cloud = PointCloud(xyz, fields, meta, str(path))
    if bounds is not None:
        inside = bounds.contains(xyz)
        if not inside.any():
            raise EmptyWindowError(path, f"no point inside the bounds {bounds}")
        cloud = cloud.subset(inside)
    return cloud


def ply_header_info(path: str | os.PathLike) -> dict[str, Any]:
    """Point count, bounds (computed from x/y/z), CRS comment and properties."""
    cloud = read_ply(path)
    meta: PlyMeta = cloud.meta
    return dict(path=str(path), format="ply", point_count=len(cloud),
                mins=cloud.xyz.min(axis=0), maxs=cloud.xyz.max(axis=0), crs_wkt=meta.crs_wkt,
                epsg=meta.epsg, point_format=None, version=meta.format, scales=None,
                offsets=None, dimensions=list(cloud.fields), compressed=False, warnings=[])


def _ply_type(path: Path, name: str, values: np.ndarray) -> str:
    """The PLY type that stores ``values`` exactly (bool -> uchar, int64 -> int or double)."""
    dt = np.dtype(np.uint8) if values.dtype == np.bool_ else values.dtype
    code = f"{dt.kind}{dt.itemsize}"
    if code in _NAMES:
        return _NAMES[code]
    if dt.kind in "iu" and values.size and np.abs(values).max() < 2 ** 31:
        return "int"
    if dt.kind in "iuf":
        return "double"
    raise DataError(path, f"field {name!r}: dtype {values.dtype} cannot be stored in PLY")


def write_ply(cloud: PointCloud, path: str | os.PathLike, extra: dict[str, np.ndarray] | None = None,
              format: str | None = None) -> None:
    """Write ``cloud`` (+ ``extra`` properties) as PLY. Atomic.

    ``format``: 'ascii', 'binary_little_endian' or 'binary_big_endian'; default: the
    format it was read in (PlyMeta), else binary little endian. Properties keep the order
    and type they were read with (a stored type that cannot hold new values exactly is
    widened); x/y/z default to double; a CRS (``cloud.crs_wkt``) is written as
    ``comment crs ...``.
    """
    path = Path(path)
    n = len(cloud)
    fields = cloud.fields_with(extra, path)
    for name, values in fields.items():
        if np.ndim(values) != 1:
            raise DataError(path, f"field {name!r} has shape {np.shape(values)}; PLY needs one value per point")
        if not re.fullmatch(r"[^\s]+", name) or name in ("x", "y", "z"):
            raise DataError(path, f"field name {name!r} cannot be a PLY property")
    meta = cloud.meta if isinstance(cloud.meta, PlyMeta) else PlyMeta()
    fmt = format or meta.format
    if fmt not in _FORMATS:
        raise DataError(path, f"unknown PLY format {fmt!r}")
    old = dict(meta.properties)
    order = [p for p, _ in meta.properties if p in fields or p in ("x", "y", "z")]
    for p in ("x", "y", "z"):
        if p not in order:
            order.insert(("x", "y", "z").index(p), p)
    order += [p for p in fields if p not in order]
    columns = {"x": cloud.xyz[:, 0], "y": cloud.xyz[:, 1], "z": cloud.xyz[:, 2], **fields}
    props = []
    for p in order:
        values = np.asarray(columns[p])
        t = old.get(p)
        if t is None or (values.dtype != np.dtype(_TYPES[t]) and np.dtype(_TYPES[t]).kind != "f"
                         and not np.array_equal(values.astype(_TYPES[t]), values)):
            t = "double" if p in ("x", "y", "z") else _ply_type(path, p, values)
        props.append((p, t))
    comments = list(meta.comments)
    crs = cloud.crs_wkt
    if crs and not any(re.match(r"\s*crs\s", c, re.IGNORECASE) for c in comments):
        comments.append(crs_comment(crs))
    if any(not c.isascii() or "\n" in c or "\r" in c for c in comments + list(meta.obj_info)):
        raise DataError(path, "PLY header (comment or CRS) must be ASCII text on one line")
    arr = np.empty(n, [(p, _TYPES[t]) for p, t in props])
    for p, _ in props:
        arr[p] = columns[p]
    ply = plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=fmt == "ascii",
                          byte_order=_FORMATS[fmt], comments=comments, obj_info=list(meta.obj_info))
    if not path.parent.is_dir():
        raise DataError(path, f"cannot write: folder {str(path.parent)!r} does not exist")
    try:
        with atomic_path(path) as tmp:
            if fmt == "ascii":  # plyfile writes text row by row (6x slower): body by savetxt
                with open(tmp, "wb") as f:
                    f.write((ply.header + "\n").encode("ascii"))
                    # round-trip precision: float32 9 digits, float64 17, integers exact
                    np.savetxt(f, arr, fmt=["%.9g" if t == "float" else "%.17g" if t == "double"
                                            else "%d" for _, t in props])
            else:
                ply.write(str(tmp))
    except OSError as e:
        raise DataError(path, f"cannot write PLY: {e}") from e
