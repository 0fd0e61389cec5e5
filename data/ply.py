"""PLY point clouds in plain NumPy: ascii, binary_little_endian and binary_big_endian.

Reading keeps the ``vertex`` element: x/y/z (float or double, any position) go to
``cloud.xyz`` (float64), every other scalar property to ``cloud.fields`` in file order and
file dtype. ``PlyMeta`` keeps the format, the property order and type names, comments and
obj_info lines, so read -> write -> read is exact (x/y/z are cast back to their stored type).
A ``comment crs <WKT or EPSG:NNNN>`` line is exposed as ``meta.crs_wkt``. Scalar-only elements
before ``vertex`` are skipped; elements after it (e.g. faces) are ignored and not written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .crs import crs_comment, crs_from_comments
from .errors import DataError
from .pointcloud import PointCloud

_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4",
          "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
          "u4": "uint", "f4": "float", "f8": "double"}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass
class PlyMeta:
    """What the PLY writer needs to reproduce the file."""

    format: str = "binary_little_endian"
    properties: list[tuple[str, str]] = field(default_factory=list)  # (name, type name)
    comments: list[str] = field(default_factory=list)
    obj_info: list[str] = field(default_factory=list)
    crs_wkt: str | None = None
    epsg: int | None = None


@dataclass
class _PlyHeader:
    format: str
    elements: list[tuple[str, int, list[tuple[str, str]]]]  # (name, count, [(prop, type)])
    comments: list[str]
    obj_info: list[str]
    data_start: int


def _parse_header(path: Path) -> _PlyHeader:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from None
    with f:
        first = f.read(4)
        if first[:3] != b"ply" or first[3:4] not in (b"\n", b"\r"):
            raise DataError(path, "not a PLY file (does not start with 'ply')")
        f.seek(0)
        lines, fmt, elements, comments, obj_info = [], None, [], [], []
        while True:
            raw = f.readline()
            if not raw:
                raise DataError(path, "truncated PLY header (no 'end_header')")
            if len(lines) > 100000:
                raise DataError(path, "corrupt PLY header (too long)")
            line = raw.decode("ascii", "replace").rstrip("\r\n")
            lines.append(line)
            words = line.split()
            if not words or len(lines) == 1:
                continue
            key = words[0]
            if key == "end_header":
                break
            if key == "format":
                if len(words) < 2 or words[1] not in _FORMATS:
                    raise DataError(path, f"unsupported PLY format line {line!r}")
                fmt = words[1]
            elif key == "comment":
                comments.append(line[len("comment "):] if len(line) > 8 else "")
            elif key == "obj_info":
                obj_info.append(line[len("obj_info "):] if len(line) > 9 else "")
            elif key == "element":
                if len(words) != 3 or not words[2].isdigit():
                    raise DataError(path, f"bad PLY element line {line!r}")
                elements.append((words[1], int(words[2]), []))
            elif key == "property":
                if not elements:
                    raise DataError(path, f"PLY property before any element: {line!r}")
                if words[1] == "list":
                    elements[-1][2].append((words[-1], "list"))
                elif len(words) == 3 and words[1] in _TYPES:
                    elements[-1][2].append((words[2], words[1]))
                else:
                    raise DataError(path, f"bad PLY property line {line!r}")
            else:
                raise DataError(path, f"unknown PLY header line {line!r}")
        if fmt is None:
            raise DataError(path, "PLY header has no 'format' line")
        return _PlyHeader(fmt, elements, comments, obj_info, f.tell())


def _vertex_layout(path: Path, h: _PlyHeader) -> tuple[int, list[tuple[str, str]], int, int]:
    """(vertex count, properties, bytes or lines to skip before the vertex block, index)."""
    skip = 0
    for i, (name, count, props) in enumerate(h.elements):
        if name == "vertex":
            if any(t == "list" for _, t in props):
                raise DataError(path, "PLY vertex element has list properties (unsupported)")
            return count, props, skip, i
        if any(t == "list" for _, t in props):
            raise DataError(path, f"PLY element {name!r} with list properties comes before "
                                  f"'vertex' (unsupported)")
        skip += count * (1 if h.format == "ascii" else sum(np.dtype(_TYPES[t]).itemsize for _, t in props))
    raise DataError(path, "PLY file has no 'vertex' element")


def _read_vertices(path: Path, h: _PlyHeader) -> tuple[np.ndarray, list[tuple[str, str]]]:
    count, props, skip, _ = _vertex_layout(path, h)
    if count == 0:
        raise DataError(path, "PLY file has no points")
    names = [p for p, _ in props]
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise DataError(path, f"PLY vertex element has no {'/'.join(missing)} property "
                              f"(has: {', '.join(names) or 'none'})")
    if len(set(names)) != len(names):
        raise DataError(path, "PLY vertex element has duplicate property names")
    if h.format == "ascii":
        dtype = np.dtype([(p, _TYPES[t]) for p, t in props])
        with open(path, "rb") as f:
            f.seek(h.data_start)
            lines = f.read().splitlines()[skip:skip + count]
        tokens = b" ".join(lines).split()
        if len(lines) < count or len(tokens) != count * len(props):
            raise DataError(path, f"truncated or malformed ASCII PLY: expected {count} vertex "
                                  f"lines of {len(props)} values")
        try:
            values = np.array(tokens, dtype=np.float64).reshape(count, len(props))
        except ValueError as e:
            raise DataError(path, f"malformed ASCII PLY value: {e}") from None
        arr = np.empty(count, dtype)
        for i, p in enumerate(names):
            arr[p] = values[:, i]
        return arr, props
    order = _FORMATS[h.format]
    dtype = np.dtype([(p, order + _TYPES[t]) for p, t in props])
    start = h.data_start + skip
    size = os.path.getsize(path)
    if start + count * dtype.itemsize > size:
        have = max(0, size - start) // dtype.itemsize
        raise DataError(path, f"truncated PLY: header says {count} vertices but the file holds "
                              f"{have}")
    return np.fromfile(path, dtype=dtype, count=count, offset=start), props


def read_ply(path: str | os.PathLike) -> PointCloud:
    """Read a PLY file's vertex element into a PointCloud; DataError on bad input."""
    path = Path(path)
    h = _parse_header(path)
    arr, props = _read_vertices(path, h)
    xyz = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float64)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} of {len(xyz)} points have NaN/inf coordinates")
    fields = {p: arr[p].astype(arr.dtype[p].newbyteorder("=")) for p, _ in props
              if p not in ("x", "y", "z")}
    crs_wkt, epsg = crs_from_comments(h.comments)
    meta = PlyMeta(h.format, list(props), h.comments, h.obj_info, crs_wkt, epsg)
    return PointCloud(xyz, fields, meta, str(path))


def ply_header_info(path: str | os.PathLike) -> dict[str, Any]:
    """Point count, bounds (computed from x/y/z), CRS comment and properties."""
    cloud = read_ply(path)
    meta: PlyMeta = cloud.meta
    return dict(path=str(path), format="ply", point_count=len(cloud),
                mins=cloud.xyz.min(axis=0), maxs=cloud.xyz.max(axis=0), crs_wkt=meta.crs_wkt,
                epsg=meta.epsg, point_format=None, version=meta.format, scales=None,
                offsets=None, dimensions=list(cloud.fields), compressed=False, warnings=[])


def _ply_type(path: Path, name: str, values: np.ndarray) -> str:
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
    format it was read in (PlyMeta), else binary little endian. x/y/z keep their stored type
    (default double); a CRS (``cloud.crs_wkt``) is written as ``comment crs ...``.
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
        if t is None or np.dtype(_TYPES[t]).kind not in "f" and not np.array_equal(
                values.astype(_TYPES[t]), values):
            t = "double" if p in ("x", "y", "z") else _ply_type(path, p, values)
        props.append((p, t))
    comments = list(meta.comments)
    crs = cloud.crs_wkt
    if crs and not any(re.match(r"\s*crs\s", c, re.IGNORECASE) for c in comments):
        comments.append(crs_comment(crs))
    header = ["ply", f"format {fmt} 1.0"] + [f"comment {c}" for c in comments] + \
        [f"obj_info {c}" for c in meta.obj_info] + [f"element vertex {n}"] + \
        [f"property {t} {p}" for p, t in props] + ["end_header"]
    byteorder = _FORMATS[fmt] or "<"
    dtype = np.dtype([(p, byteorder + _TYPES[t]) for p, t in props])
    arr = np.empty(n, dtype)
    for p, _ in props:
        arr[p] = columns[p]
    if not path.parent.is_dir():
        raise DataError(path, f"cannot write: folder {str(path.parent)!r} does not exist")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            if fmt == "ascii":
                # floats with round-trip precision (float32: 9 digits, float64: 17), ints exact
                np.savetxt(f, arr, fmt=["%.9g" if _TYPES[t] == "f4" else "%.17g" if _TYPES[t] == "f8"
                                        else "%d" for _, t in props])
            else:
                arr.tofile(f)
    except UnicodeEncodeError:
        raise DataError(path, "PLY header (comment or CRS) must be ASCII") from None
    except OSError as e:
        raise DataError(path, f"cannot write PLY: {e}") from e

