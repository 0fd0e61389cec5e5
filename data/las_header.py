"""LAS/LAZ headers without decoding points: the fixed header, VLRs and EVLRs parsed in pure
Python, and the layout checks (point-data size, LASzip chunk table, chunk layer sizes against
the file size) that decide whether lazrs may decode the file in-process.

The lazrs decoder can abort the whole process on some corrupt files (a chunk table announcing
2**31 chunks makes it allocate until it aborts): a file failing these checks is decoded in a
child process by ``data.las`` instead. Keep this guard.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

import laspy
import numpy as np

from laspy.point import dims as laspy_dims

from .errors import DataError

LASZIP_ID = ("laszip encoded", 22204)
EXTRA_BYTES_ID = ("LASF_Spec", 4)
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

    @property
    def write_problem(self) -> str | None:
        """Why a copy of this file cannot be written faithfully, or None: waveform packets
        stored inside the file (global encoding bit 1) would lose what the records point to."""
        if self.point_format in (4, 5, 9, 10) and self.global_encoding & WAVEFORM_INTERNAL:
            return (f"holds its waveform packets inside the file (point format {self.point_format}, internal "
                    "waveform data): a labelled copy would not carry them and its waveform pointers would "
                    "dangle, so it is refused; move the waveforms to an external .wdp file (e.g. las2las) first")
        return None


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


#: largest |coordinate| a header may allow (metres or degrees; grids and int64 cell indices
#: stay exact far beyond every real coordinate system)
MAX_COORDINATE = 1e15
#: global encoding bit 1: waveform data packets inside the file (LAS 1.3/1.4)
WAVEFORM_INTERNAL = 0b10


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
    with np.errstate(over="ignore"):
        reach = np.abs(scales) * 2.0 ** 31 + np.abs(offsets)   # the largest |coordinate| a record can hold
    if np.any(reach > MAX_COORDINATE):
        i = int(np.argmax(reach > MAX_COORDINATE))
        raise DataError(path, f"header {'xyz'[i]} scale {float(scales[i])!r} / offset {float(offsets[i])!r} "
                              f"allow coordinates up to {float(reach[i]):.3g}, beyond +-{MAX_COORDINATE:.0e} "
                              "of any coordinate system: a broken header")
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
