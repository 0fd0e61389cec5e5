"""LAS / LAZ reading and writing (laspy + lazrs), bit-exact and guarded against corrupt files.

Reading
-------
``read_las(path)`` returns a ``PointCloud`` whose ``fields`` hold every point dimension but
X/Y/Z in file order, by laspy's lowercase names (bit fields unpacked to ``uint8``), then the
extra-bytes dimensions by name in their *stored* dtype (scaled extra dims are kept raw, so
they round-trip exactly). ``meta`` is a :class:`LasMeta` with everything the writer needs to
reproduce the file.

Before any point is decoded the header, VLRs, point-data size and (for LAZ) the LASzip chunk
table and the layer sizes of every chunk are checked against the file size in pure Python.
The lazrs decoder can abort the whole process (e.g. a chunk table announcing 2**31 chunks
makes it allocate until it aborts), so a LAZ file that fails these checks is decoded in a
child process instead (``python -c``); a crash there becomes a ``DataError``. A file that
passes is decoded in-process (no overhead). Obvious truncation is reported directly.

Writing
-------
``write_las(cloud, path, extra=None)``: the suffix decides compression (``.laz`` -> LAZ via
lazrs). With a ``LasMeta`` the original version, point format, scales/offsets, VLRs (raw
bytes, original order), EVLRs, header fields and extra-bytes definitions are reused; raw
X/Y/Z integers are written back unchanged wherever ``xyz`` still equals what was read.
Fields not in the point format (and ``extra``) become extra-bytes dimensions.

Format upgrade: classification codes > 31 do not fit legacy formats 0-5 (5 bits), so the
file is upgraded to the matching LAS 1.4 format (0/1 -> 6, 2/3 -> 7, 4 -> 9, 5 -> 10; 8 if
NIR is present), every dimension copied (``scan_angle_rank`` degrees -> ``scan_angle``
0.006 degree units). Likewise a field that only exists in a bigger format (e.g. ``red`` on
format 1) selects the smallest format of the same family that holds all dimensions.
"""
from __future__ import annotations

import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import laspy
import numpy as np
from laspy.header import GlobalEncoding
from laspy.point import dims as laspy_dims
from laspy.vlrs.vlrlist import VLRList

from .atomic import atomic_path
from .errors import DataError
from .pointcloud import PointCloud

LASZIP_ID = ("laszip encoded", 22204)
EXTRA_BYTES_ID = ("LASF_Spec", 4)
WKT_ID = ("LASF_Projection", 2112)
GEOKEYS_ID = ("LASF_Projection", 34735)
_HEADER_SIZES = {0: 227, 1: 227, 2: 227, 3: 235, 4: 375}
_EB_STRUCT_SIZE = 192
#: LASzip v3 item type -> number of layers in a layered chunk (Byte14: one per byte).
_LAYERS = {10: 9, 11: 1, 12: 2, 13: 1}
_LEGACY_TO_14 = {0: 6, 1: 6, 2: 7, 3: 7, 4: 9, 5: 10}
_STANDARD = {pf: [n for n in laspy.PointFormat(pf).standard_dimension_names
                  if n not in ("X", "Y", "Z")] for pf in range(11)}
ALL_STANDARD = frozenset(n for names in _STANDARD.values() for n in names)
SCAN_ANGLE_UNIT = 0.006  # degrees per LAS 1.4 scan_angle unit


@dataclass
class RawVlr:
    """A VLR or EVLR exactly as stored (user id and description without NUL padding)."""

    user_id: str
    record_id: int
    description: str
    data: bytes


@dataclass
class ExtraDim:
    """An extra-bytes dimension: name, stored dtype (numpy str, e.g. '<f8' or '3<u2') and
    its original 192-byte EXTRA_BYTES struct (None when created by us)."""

    name: str
    dtype: str
    struct: bytes | None = None


@dataclass
class LasMeta:
    """Everything needed to write a LAS/LAZ file back bit-exactly (opaque to the pipeline)."""

    version: str                       # "1.2", "1.4"
    point_format: int                  # 0..10
    scales: np.ndarray                 # [3] float64
    offsets: np.ndarray                # [3] float64
    raw_xyz: np.ndarray | None         # [N, 3] int32 as stored; None for new clouds
    vlrs: list[RawVlr] = field(default_factory=list)   # file order, without the LASzip VLR
    evlrs: list[RawVlr] = field(default_factory=list)
    global_encoding: int = 0
    file_source_id: int = 0
    uuid: bytes = b"\0" * 16
    system_identifier: str = "OTHER"
    generating_software: str = "lidarseg"
    creation_date: date | None = None
    extra_dims: list[ExtraDim] = field(default_factory=list)
    extra_header_bytes: bytes = b""
    extra_vlr_bytes: bytes = b""
    compressed: bool = False
    crs_wkt: str | None = None         # WKT, or "EPSG:NNNN" when only GeoTIFF keys give it
    epsg: int | None = None

    @property
    def extra_dim_names(self) -> list[str]:
        return [d.name for d in self.extra_dims]


# ----------------------------------------------------------------------------- header parse
@dataclass
class _Header:
    """The fixed header and VLRs parsed from the file's first bytes (pure Python)."""

    file_size: int
    version: tuple[int, int]
    pf: int
    compressed: bool
    record_length: int
    point_count: int
    header_size: int
    offset_to_points: int
    scales: np.ndarray
    offsets: np.ndarray
    maxs: np.ndarray
    mins: np.ndarray
    global_encoding: int
    file_source_id: int
    uuid: bytes
    system_identifier: str
    generating_software: str
    creation_date: date | None
    vlrs: list[RawVlr]
    start_of_first_evlr: int
    number_of_evlrs: int
    extra_header_bytes: bytes
    extra_vlr_bytes: bytes

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def find_vlr(self, key: tuple[str, int]) -> RawVlr | None:
        return next((v for v in self.vlrs if (v.user_id, v.record_id) == key), None)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a point-cloud file") from None
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from None


def _parse_header(path: Path, f: BinaryIO) -> _Header:
    """Parse and sanity-check the LAS header and VLRs; DataError when they are unusable."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(375)
    if head[:4] != b"LASF":
        what = "an empty file" if size == 0 else f"starts with {head[:4]!r}"
        raise DataError(path, f"not a LAS/LAZ file ({what}, expected 'LASF')")
    if len(head) < 227:
        raise DataError(path, f"truncated LAS header ({size} bytes, need at least 227)")
    major, minor = head[24], head[25]
    if major != 1 or minor not in _HEADER_SIZES:
        raise DataError(path, f"unsupported LAS version {major}.{minor}")
    (header_size, offset_to_points, n_vlrs, pf_raw, record_length,
     legacy_count) = struct.unpack_from("<HIIBHI", head, 94)
    scales = np.array(struct.unpack_from("<3d", head, 131))
    offsets = np.array(struct.unpack_from("<3d", head, 155))
    mm = struct.unpack_from("<6d", head, 179)
    maxs, mins = np.array(mm[0::2]), np.array(mm[1::2])
    point_count, start_evlr, n_evlrs = legacy_count, 0, 0
    if minor >= 4:
        if len(head) < 375:
            raise DataError(path, f"truncated LAS 1.4 header ({size} bytes)")
        start_evlr, n_evlrs, count64 = struct.unpack_from("<QIQ", head, 235)
        point_count = count64 or legacy_count
    compressed = bool(pf_raw & 0xC0)
    pf = pf_raw & 0x3F
    if pf > 10:
        raise DataError(path, f"unknown point format {pf_raw}")
    min_len = laspy_dims.size_of_point_format_id(pf)
    if record_length < min_len:
        raise DataError(path, f"point record length {record_length} is too small for "
                              f"point format {pf} ({min_len} bytes)")
    if header_size < _HEADER_SIZES[minor] or offset_to_points < header_size:
        raise DataError(path, f"corrupt header (header size {header_size}, offset to points "
                              f"{offset_to_points})")
    if offset_to_points > size:
        raise DataError(path, f"truncated file: header says points start at byte "
                              f"{offset_to_points} but the file has {size} bytes")
    if not (np.all(np.isfinite(scales)) and np.all(scales != 0) and np.all(np.isfinite(offsets))):
        raise DataError(path, f"invalid scales {scales.tolist()} / offsets {offsets.tolist()}")
    f.seek(0)
    block = f.read(offset_to_points)
    vlrs, pos = [], header_size
    for i in range(n_vlrs):
        if pos + 54 > offset_to_points:
            raise DataError(path, f"corrupt header: VLR {i + 1} of {n_vlrs} runs past the "
                                  f"start of point data")
        _, user, rid, length, desc = struct.unpack_from("<H16sHH32s", block, pos)
        if pos + 54 + length > offset_to_points:
            raise DataError(path, f"corrupt header: VLR {i + 1} ({_cstr(user)}/{rid}) runs "
                                  f"past the start of point data")
        vlrs.append(RawVlr(_cstr(user), rid, _cstr(desc), bytes(block[pos + 54:pos + 54 + length])))
        pos += 54 + length
    day, year = struct.unpack_from("<HH", head, 90)
    try:
        created = date(year, 1, 1) + timedelta(day - 1) if year else None
    except (ValueError, OverflowError):
        created = None
    return _Header(
        file_size=size, version=(major, minor), pf=pf, compressed=compressed,
        record_length=record_length, point_count=point_count, header_size=header_size,
        offset_to_points=offset_to_points, scales=scales, offsets=offsets, maxs=maxs,
        mins=mins, global_encoding=struct.unpack_from("<H", head, 6)[0],
        file_source_id=struct.unpack_from("<H", head, 4)[0], uuid=bytes(head[8:24]),
        system_identifier=_cstr(head[26:58]), generating_software=_cstr(head[58:90]),
        creation_date=created, vlrs=vlrs, start_of_first_evlr=start_evlr,
        number_of_evlrs=n_evlrs, extra_header_bytes=bytes(block[_HEADER_SIZES[minor]:header_size]),
        extra_vlr_bytes=bytes(block[pos:offset_to_points]))


def _read_evlrs(path: Path, f: BinaryIO, h: _Header) -> list[RawVlr]:
    if h.version[1] < 4 or h.number_of_evlrs == 0:
        return []
    evlrs, pos = [], h.start_of_first_evlr
    for i in range(h.number_of_evlrs):
        f.seek(pos)
        raw = f.read(60)
        if len(raw) < 60:
            raise DataError(path, f"truncated file: EVLR {i + 1} of {h.number_of_evlrs} "
                                  f"starts past the end of the file")
        _, user, rid, length, desc = struct.unpack("<H16sHQ32s", raw)
        if pos + 60 + length > h.file_size:
            raise DataError(path, f"truncated file: EVLR {i + 1} ({_cstr(user)}/{rid}) runs "
                                  f"past the end of the file")
        evlrs.append(RawVlr(_cstr(user), rid, _cstr(desc), f.read(length)))
        pos += 60 + length
    return evlrs


def _data_end(h: _Header) -> int:
    """Where point data must end: the first EVLR, or the end of the file."""
    if h.version[1] >= 4 and h.number_of_evlrs and h.offset_to_points < h.start_of_first_evlr:
        return min(h.start_of_first_evlr, h.file_size)
    return h.file_size


def _check_layout(path: Path, f: BinaryIO, h: _Header) -> list[str]:
    """Check the point data against the file size before decoding.

    Raises DataError for certain truncation; returns the list of *suspicious* findings for a
    LAZ file (empty when it is safe to decode in-process).
    """
    end = _data_end(h)
    available = end - h.offset_to_points
    if not h.compressed:
        need = h.point_count * h.record_length
        if need > available:
            raise DataError(path, f"truncated or corrupt LAS: header says {h.point_count} points "
                                  f"({need} bytes) but the file holds {available} bytes of "
                                  f"points ({available // h.record_length} points)")
        return []
    lz = h.find_vlr(LASZIP_ID)
    if lz is None:
        raise DataError(path, "compressed point format but no LASzip VLR: not a valid LAZ file")
    if len(lz.data) < 34:
        return ["LASzip VLR is too short"]
    compressor, _, _, _, _, _, chunk_size, _, _, n_items = struct.unpack_from("<HHBBHIIqqH", lz.data)
    if len(lz.data) < 34 + 6 * n_items:
        return ["LASzip VLR is too short for its item list"]
    items = [struct.unpack_from("<HHH", lz.data, 34 + 6 * i) for i in range(n_items)]
    if sum(size for _, size, _ in items) != h.record_length:
        return [f"LASzip items ({sum(s for _, s, _ in items)} bytes) do not match the point "
                f"record length ({h.record_length})"]
    if compressor not in (2, 3):
        return [f"LASzip compressor {compressor} has no chunk table to check"]
    if available < 8:
        raise DataError(path, "truncated LAZ: no point data after the header")
    f.seek(h.offset_to_points)
    (table_at,) = struct.unpack("<q", f.read(8))
    if table_at == -1:
        return ["no chunk table (stream-written LAZ)"]
    if table_at > end - 8:
        raise DataError(path, f"truncated or corrupt LAZ: the chunk table should be at byte "
                              f"{table_at} but the point data ends at byte {end}")
    if table_at < h.offset_to_points + 8:
        return [f"chunk table offset {table_at} points inside the header"]
    f.seek(table_at)
    table_version, n_chunks = struct.unpack("<II", f.read(8))
    if table_version != 0:
        return [f"unknown chunk table version {table_version}"]
    fixed = chunk_size != 0xFFFFFFFF
    if fixed:
        expected = max(1, math.ceil(h.point_count / max(chunk_size, 1)))
        if n_chunks != expected:
            return [f"chunk table lists {n_chunks} chunks but {h.point_count} points in chunks "
                    f"of {chunk_size} need {expected}"]
    elif not 0 < n_chunks <= min(h.point_count, table_at - h.offset_to_points - 8):
        return [f"implausible number of chunks {n_chunks} for {h.point_count} points"]
    try:
        import lazrs
        f.seek(h.offset_to_points)
        table = np.asarray(lazrs.read_chunk_table(f, lazrs.LazVlr(lz.data)), dtype=np.int64)
    except BaseException as e:  # lazrs panics raise pyo3 PanicException (a BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return [f"unreadable chunk table ({e})"]
    if table.shape != (n_chunks, 2):
        return ["unreadable chunk table"]
    counts, sizes = table[:, 0], table[:, 1]
    if np.any(sizes <= 0) or sizes.sum() != table_at - h.offset_to_points - 8:
        return [f"chunk sizes add up to {sizes.sum()} bytes, but the compressed data holds "
                f"{table_at - h.offset_to_points - 8} bytes"]
    if not fixed and counts.sum() != h.point_count:
        return [f"chunks hold {counts.sum()} points but the header says {h.point_count}"]
    if compressor == 3 and all(t in _LAYERS or t == 14 for t, _, _ in items):
        n_layers = sum(_LAYERS.get(t, size) for t, size, _ in items)
        starts = h.offset_to_points + 8 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
        head_len = h.record_length + 4 + 4 * n_layers
        for i, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
            f.seek(start + h.record_length)
            raw = f.read(4 + 4 * n_layers)
            layers = np.frombuffer(raw, "<u4", count=len(raw) // 4)
            if len(layers) != 1 + n_layers or head_len + int(layers[1:].sum()) != size:
                return [f"chunk {i + 1} of {n_chunks} is corrupt (its layer sizes do not add "
                        f"up to its {size} bytes)"]
    return []


# ----------------------------------------------------------------------------------- CRS
_AUTH = re.compile(r'(?:AUTHORITY|ID)\[\s*"EPSG"\s*,\s*"?(\d+)"?')


def _epsg_from_wkt(wkt: str) -> int | None:
    """EPSG code of the outermost CRS of a WKT (or of its first child for a compound CRS)."""
    best: dict[int, int] = {}
    for m in _AUTH.finditer(wkt):
        depth = wkt.count("[", 0, m.start()) - wkt.count("]", 0, m.start())
        best.setdefault(depth, int(m.group(1)))
    for depth in (1, 2):
        if depth in best:
            return best[depth]
    return None


def _crs_from_vlrs(vlrs: list[RawVlr]) -> tuple[str | None, int | None]:
    """(crs_wkt, epsg) from the OGC WKT VLR, else from GeoTIFF keys (no pyproj needed)."""
    wkt_vlr = next((v for v in vlrs if (v.user_id, v.record_id) == WKT_ID), None)
    if wkt_vlr is not None:
        wkt = wkt_vlr.data.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if wkt:
            return wkt, _epsg_from_wkt(wkt)
    geo = next((v for v in vlrs if (v.user_id, v.record_id) == GEOKEYS_ID), None)
    if geo is not None and len(geo.data) >= 8:
        keys = np.frombuffer(geo.data[: len(geo.data) // 2 * 2], "<u2")
        n = min(int(keys[3]), (len(keys) - 4) // 4)
        entries = keys[4:4 + 4 * n].reshape(n, 4)
        for key_id in (3072, 2048):  # ProjectedCSTypeGeoKey, then GeographicTypeGeoKey
            hit = entries[(entries[:, 0] == key_id) & (entries[:, 1] == 0)]
            if len(hit) and 0 < int(hit[0, 3]) < 32767:
                code = int(hit[0, 3])
                return f"EPSG:{code}", code
    return None, None


def _crs_vlr(crs: str) -> tuple[RawVlr, bool]:
    """A VLR for a CRS given as WKT or 'EPSG:NNNN' -> (vlr, is_wkt)."""
    m = re.fullmatch(r"\s*EPSG:(\d+)\s*", crs, re.IGNORECASE)
    if m:
        code = int(m.group(1))
        keys = np.array([1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, code], "<u2")
        return RawVlr(GEOKEYS_ID[0], GEOKEYS_ID[1], "GeoTiff GeoKeyDirectoryTag", keys.tobytes()), False
    return RawVlr(WKT_ID[0], WKT_ID[1], "OGC Coordinate System WKT", crs.encode() + b"\0"), True


# -------------------------------------------------------------------------------- reading
_CHILD = r"""
import sys, numpy as np, laspy
las = laspy.read(sys.argv[1])
np.save(sys.argv[2], las.points.array, allow_pickle=False)
"""


def _decode_in_child(path: Path, problems: list[str]) -> np.ndarray:
    """Decode a suspicious LAZ in a child process so a decoder abort cannot kill us."""
    why = "; ".join(problems)
    with tempfile.TemporaryDirectory(prefix="lidarseg-laz-") as tmp:
        out = Path(tmp) / "points.npy"
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out)],
                                  capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            raise DataError(path, f"corrupt LAZ ({why}): decoding did not finish") from None
        if proc.returncode != 0:
            if proc.returncode < 0:
                try:
                    detail = f"the LAZ decoder crashed ({signal.Signals(-proc.returncode).name})"
                except ValueError:
                    detail = f"the LAZ decoder crashed (signal {-proc.returncode})"
            else:
                lines = proc.stderr.strip().splitlines()
                detail = lines[-1] if lines else f"exit code {proc.returncode}"
            raise DataError(path, f"corrupt LAZ ({why}); {detail}")
        return np.load(out, allow_pickle=False)


def _decode_in_process(path: Path, kind: str) -> np.ndarray:
    try:
        with laspy.open(path) as reader:
            return reader.read().points.array
    except BaseException as e:  # includes lazrs' PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise DataError(path, f"corrupt or truncated {kind} point data: "
                              f"{type(e).__name__}: {e}") from None


def _laspy_point_format(path: Path, f: BinaryIO) -> laspy.PointFormat:
    """The point format with extra dims, via laspy's pure-Python header parser."""
    f.seek(0)
    try:
        return laspy.LasHeader.read_from(f).point_format
    except Exception as e:
        raise DataError(path, f"corrupt LAS header: {e}") from None


def _unpack_fields(arr: np.ndarray, pf: laspy.PointFormat) -> dict[str, np.ndarray]:
    """Every dimension but X/Y/Z as contiguous arrays (bit fields unpacked, vectorised)."""
    sub = laspy_dims.get_sub_fields_dict(pf.id)
    composed_cache: dict[str, np.ndarray] = {}
    fields: dict[str, np.ndarray] = {}
    for name in pf.dimension_names:
        if name in ("X", "Y", "Z"):
            continue
        if name in sub:
            composed, sf = sub[name]
            if composed not in composed_cache:  # one strided gather per packed byte, not per bit field
                composed_cache[composed] = np.ascontiguousarray(arr[composed])
            shift = (sf.mask & -sf.mask).bit_length() - 1
            values = composed_cache[composed] & np.array(sf.mask, composed_cache[composed].dtype)
            values >>= shift
            fields[name] = values.astype(np.uint8, copy=False)
        else:
            fields[name] = np.ascontiguousarray(arr[name])
    return fields


def _open_checked(path: Path) -> tuple[BinaryIO, _Header]:
    f = _open(path)
    try:
        return f, _parse_header(path, f)
    except BaseException:
        f.close()
        raise


def read_las(path: str | os.PathLike) -> PointCloud:
    """Read a LAS/LAZ file into a PointCloud (see module docstring); DataError on bad input."""
    path = Path(path)
    f, h = _open_checked(path)
    with f:
        kind = "LAZ" if h.compressed else "LAS"
        if h.point_count == 0:
            raise DataError(path, f"{kind} file has no points")
        problems = _check_layout(path, f, h)
        evlrs = _read_evlrs(path, f, h)
        pf = _laspy_point_format(path, f)
    arr = _decode_in_child(path, problems) if problems else _decode_in_process(path, kind)
    if len(arr) != h.point_count:
        raise DataError(path, f"truncated or corrupt {kind}: decoded {len(arr)} points, header "
                              f"says {h.point_count}")
    # X, Y, Z are the first 12 bytes of every record: one strided [N, 3] int32 view, one copy.
    raw_xyz = np.ndarray((len(arr), 3), dtype="<i4", buffer=arr, strides=(arr.itemsize, 4)).copy()
    xyz = np.multiply(raw_xyz, h.scales)
    xyz += h.offsets
    vlrs = [v for v in h.vlrs if (v.user_id, v.record_id) != LASZIP_ID]
    eb = h.find_vlr(EXTRA_BYTES_ID)
    eb_structs = {}
    if eb is not None:
        for i in range(len(eb.data) // _EB_STRUCT_SIZE):
            s = eb.data[i * _EB_STRUCT_SIZE:(i + 1) * _EB_STRUCT_SIZE]
            eb_structs[_cstr(s[4:36])] = s
    extra_dims = [ExtraDim(d.name, d.type_str(), eb_structs.get(d.name))
                  for d in pf.extra_dimensions]
    crs_wkt, epsg = _crs_from_vlrs(vlrs + evlrs)
    meta = LasMeta(
        version=h.version_str, point_format=h.pf, scales=h.scales, offsets=h.offsets,
        raw_xyz=raw_xyz, vlrs=vlrs, evlrs=evlrs, global_encoding=h.global_encoding,
        file_source_id=h.file_source_id, uuid=h.uuid, system_identifier=h.system_identifier,
        generating_software=h.generating_software, creation_date=h.creation_date,
        extra_dims=extra_dims, extra_header_bytes=h.extra_header_bytes,
        extra_vlr_bytes=h.extra_vlr_bytes, compressed=h.compressed, crs_wkt=crs_wkt, epsg=epsg)
    return PointCloud(xyz, _unpack_fields(arr, pf), meta, str(path))


def las_header_info(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts without decoding points (validates the layout, never decodes)."""
    path = Path(path)
    f, h = _open_checked(path)
    with f:
        problems = _check_layout(path, f, h)
        evlrs = _read_evlrs(path, f, h)
        pf = _laspy_point_format(path, f)
    crs_wkt, epsg = _crs_from_vlrs(h.vlrs + evlrs)
    return dict(
        path=str(path), format="laz" if h.compressed else "las", point_count=h.point_count,
        mins=h.mins, maxs=h.maxs, crs_wkt=crs_wkt, epsg=epsg, point_format=h.pf,
        version=h.version_str, scales=h.scales, offsets=h.offsets,
        dimensions=[n for n in pf.dimension_names if n not in ("X", "Y", "Z")],
        compressed=h.compressed, warnings=problems)


# -------------------------------------------------------------------------------- writing
def _choose_format(src: int | None, names: set[str], need14: bool) -> int:
    """Smallest point format of the right family holding ``names`` (and all of ``src``'s)."""
    legacy_only = {"scan_angle_rank"}
    modern_only = {"scan_angle", "overlap", "scanner_channel"}
    family14 = src is None or src >= 6 or need14 or bool(names & modern_only)
    required = set(names)
    if src is not None:
        if src >= 6 or not family14:
            required |= set(_STANDARD[src])
        else:
            required |= set(_STANDARD[_LEGACY_TO_14[src]])
    if family14:
        required = {("scan_angle" if n in legacy_only else n) for n in required}
    candidates = ([src] if src is not None else []) + (list(range(6, 11)) if family14 else list(range(6)))
    for pf in candidates:
        if pf is not None and (pf >= 6) == family14 and required <= set(_STANDARD[pf]):
            return pf
    raise DataError("<write>", f"no LAS point format holds the dimensions {sorted(required)}")


def _check_cast(path: Path, name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype == dtype:
        return values
    out = values.astype(dtype)
    if np.issubdtype(dtype, np.integer) and not np.array_equal(out, values):
        raise DataError(path, f"field {name!r}: values in [{values.min()}, {values.max()}] do "
                              f"not fit the file's {dtype} dimension")
    return out


def _extra_dtype(path: Path, name: str, values: np.ndarray) -> str:
    """numpy type string for a new extra-bytes dimension."""
    dt = values.dtype
    if dt == np.bool_:
        dt = np.dtype(np.uint8)
    if dt.kind not in "iuf" or dt.itemsize not in (1, 2, 4, 8) or (dt.kind == "f" and dt.itemsize < 4):
        raise DataError(path, f"field {name!r}: dtype {values.dtype} cannot be stored as LAS extra bytes")
    if values.ndim == 2 and 1 <= values.shape[1] <= 3:
        return f"{values.shape[1]}{dt.newbyteorder('<').str}" if values.shape[1] > 1 else dt.newbyteorder("<").str
    if values.ndim != 1:
        raise DataError(path, f"field {name!r}: shape {values.shape} cannot be stored as LAS extra bytes")
    return dt.newbyteorder("<").str


def _quantize(path: Path, xyz: np.ndarray, scales: np.ndarray, offsets: np.ndarray,
              raw: np.ndarray | None) -> np.ndarray:
    """Integer X/Y/Z: the original ints where xyz is unchanged, else rounded."""
    if raw is not None and raw.shape == xyz.shape:
        same = (raw * scales + offsets) == xyz
        if same.all():
            return raw
    else:
        same = None
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} of {len(xyz)} points have NaN/inf coordinates")
    q = np.round((xyz - offsets) / scales)
    if same is not None:
        q = np.where(same, raw, q)
    lim = np.iinfo(np.int32)
    if q.size and (q.min() < lim.min or q.max() > lim.max):
        raise DataError(path, f"coordinates do not fit 32-bit integers with scales "
                              f"{scales.tolist()} and offsets {offsets.tolist()}")
    return q.astype(np.int32)


def _new_meta(cloud: PointCloud) -> LasMeta:
    """Header values for a cloud that does not come from a LAS file (e.g. PLY)."""
    xyz = cloud.xyz
    finite = xyz[np.isfinite(xyz).all(axis=1)]
    offsets = np.floor(finite.min(axis=0)) if len(finite) else np.zeros(3)
    vlrs, encoding = [], 0
    crs = cloud.crs_wkt
    if crs:
        vlr, is_wkt = _crs_vlr(crs)
        vlrs.append(vlr)
        encoding = 16 if is_wkt else 0
    return LasMeta(version="1.4", point_format=6, scales=np.full(3, 0.001), offsets=offsets,
                   raw_xyz=None, vlrs=vlrs, global_encoding=encoding,
                   creation_date=date.today(), crs_wkt=crs)


def write_las(cloud: PointCloud, path: str | os.PathLike,
              extra: dict[str, np.ndarray] | None = None) -> None:
    """Write ``cloud`` (+ ``extra`` dims) as LAS, or LAZ when the suffix is ``.laz``. Atomic."""
    path = Path(path)
    n = len(cloud)
    fields = cloud.fields_with(extra, path)
    meta = cloud.meta if isinstance(cloud.meta, LasMeta) else _new_meta(cloud)
    src = meta.point_format if isinstance(cloud.meta, LasMeta) else None

    cls = fields.get("classification")
    need14 = cls is not None and cls.size > 0 and int(np.max(cls)) > 31
    standard = {k for k in fields if k in ALL_STANDARD}
    try:
        pf_id = _choose_format(src, standard, need14)
    except DataError as e:
        raise DataError(path, str(e).split(": ", 1)[1]) from None
    version = meta.version if pf_id == src else ("1.4" if pf_id >= 6 else max(meta.version, "1.2"))

    # extra-bytes dimensions: original ones still present first, then new names
    old = {d.name: d for d in meta.extra_dims}
    extra_dims: list[ExtraDim] = []
    for name in [d.name for d in meta.extra_dims if d.name in fields] + \
                [k for k in fields if k not in ALL_STANDARD and k not in old]:
        values = np.asarray(fields[name])
        d = old.get(name)
        if d is not None:
            stored = np.dtype(d.dtype.lstrip("0123456789") or d.dtype)
            cast = values.astype(stored)
            fits = values.dtype == stored or (values.dtype.kind in "iub" and np.array_equal(cast, values)) \
                or (values.dtype.kind == "f" and stored.kind == "f" and stored.itemsize >= values.dtype.itemsize)
            if fits and np.ndim(values) == (2 if d.dtype[0].isdigit() else 1):
                extra_dims.append(d)
                continue
        extra_dims.append(ExtraDim(name, _extra_dtype(path, name, values)))

    header = laspy.LasHeader(version=version, point_format=pf_id)
    if extra_dims:
        header.add_extra_dims([laspy.ExtraBytesParams(d.name, d.dtype) for d in extra_dims])
        generated = header.vlrs.extract("ExtraBytesVlr")[0].record_data_bytes()
        eb_data = b"".join(
            d.struct if d.struct is not None else generated[i * _EB_STRUCT_SIZE:(i + 1) * _EB_STRUCT_SIZE]
            for i, d in enumerate(extra_dims))
    vlrs = []
    for v in meta.vlrs:
        if (v.user_id, v.record_id) == EXTRA_BYTES_ID:
            if extra_dims:
                vlrs.append(RawVlr(v.user_id, v.record_id, v.description, eb_data))
        else:
            vlrs.append(v)
    if extra_dims and not any((v.user_id, v.record_id) == EXTRA_BYTES_ID for v in meta.vlrs):
        vlrs.insert(0, RawVlr(EXTRA_BYTES_ID[0], EXTRA_BYTES_ID[1], "Extra Bytes Record", eb_data))
    header.vlrs = [laspy.VLR(v.user_id, v.record_id, v.description, v.data) for v in vlrs]
    try:  # the setter re-adds laspy's own ExtraBytesVlr; we wrote the exact one above
        header.vlrs.extract("ExtraBytesVlr")
    except IndexError:
        pass
    header.scales = np.asarray(meta.scales, np.float64)
    header.offsets = np.asarray(meta.offsets, np.float64)
    header.global_encoding = GlobalEncoding(meta.global_encoding)
    header.file_source_id = meta.file_source_id
    from uuid import UUID
    header.uuid = UUID(bytes_le=meta.uuid)
    header.system_identifier = meta.system_identifier
    header.generating_software = meta.generating_software
    header.creation_date = meta.creation_date
    header.extra_header_bytes = meta.extra_header_bytes
    header.extra_vlr_bytes = meta.extra_vlr_bytes

    # point records
    point_format = header.point_format
    arr = np.zeros(n, dtype=point_format.dtype())
    raw = _quantize(path, np.asarray(cloud.xyz, np.float64), header.scales, header.offsets,
                    meta.raw_xyz if isinstance(cloud.meta, LasMeta) else None)
    arr["X"], arr["Y"], arr["Z"] = raw[:, 0], raw[:, 1], raw[:, 2]
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
    record = laspy.PackedPointRecord(arr, point_format)

    compress = path.suffix.lower() == ".laz"
    if not path.parent.is_dir():
        raise DataError(path, f"cannot write: folder {str(path.parent)!r} does not exist")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            with laspy.LasWriter(f, header, do_compress=compress, closefd=False) as writer:
                writer.write_points(record)
                if meta.evlrs and header.version.minor >= 4:
                    writer.write_evlrs(VLRList(
                        [laspy.VLR(v.user_id, v.record_id, v.description, v.data) for v in meta.evlrs]))
    except DataError:
        raise
    except Exception as e:
        raise DataError(path, f"cannot write {'LAZ' if compress else 'LAS'}: {type(e).__name__}: {e}") from e
