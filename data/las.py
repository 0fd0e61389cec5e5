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

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from uuid import UUID

import laspy
import numpy as np
from laspy.header import GlobalEncoding
from laspy.point import dims as laspy_dims
from laspy.vlrs.vlrlist import VLRList

from .atomic import atomic_path
from .bounds import Bounds
from .errors import DataError, EmptyWindowError
from .pointcloud import PointCloud

from .crs import crs_from_vlr_records, crs_vlr_record
from .las_header import (_EB_STRUCT_SIZE, _LEGACY_TO_14, _STANDARD, ALL_STANDARD, EXTRA_BYTES_ID, LASZIP_ID,
                         ExtraDim, LasMeta, RawVlr, _check_layout, _cstr, _Header, _open,
                         _parse_header, _read_evlrs)
from .las_records import point_chunks


def _crs_from_vlrs(vlrs: list[RawVlr]) -> tuple[str | None, int | None]:
    """(crs_wkt, epsg) of a file's VLRs and EVLRs (``data.crs``)."""
    return crs_from_vlr_records((v.user_id, v.record_id, v.data) for v in vlrs)

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


def _coordinates(arr: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(raw [N, 3] int32, xyz [N, 3] float64 = raw * scales + offsets)`` of point records."""
    # X, Y, Z are the first 12 bytes of every record: one strided [N, 3] int32 view, one copy.
    raw = np.ndarray((len(arr), 3), dtype="<i4", buffer=arr, strides=(arr.itemsize, 4)).copy()
    xyz = np.multiply(raw, scales)
    xyz += offsets
    return raw, xyz


def _open_checked(path: Path) -> tuple[BinaryIO, _Header]:
    f = _open(path)
    try:
        return f, _parse_header(path, f)
    except BaseException:
        f.close()
        raise


def _copc_hierarchy_problem(reader: "laspy.CopcReader") -> str | None:
    """What is wrong with a COPC file's octree hierarchy (no root node, or node point counts
    that do not add up to the header's), or None. Reads every hierarchy page (a few KB)."""
    from laspy.copc import VoxelKey, load_octree_for_query

    root = VoxelKey()
    root.level = 0
    if root not in reader.root_page.entries:
        return "its hierarchy has no root node"
    nodes = load_octree_for_query(reader.source, reader.copc_info, reader.root_page)
    listed = sum(max(int(n.point_count), 0) for n in nodes)
    if listed != reader.header.point_count:
        return f"its hierarchy lists {listed:,} points, the header {reader.header.point_count:,}"
    return None


def _decode_copc_window(path: Path, bounds: Bounds) -> np.ndarray:
    """The records of the COPC octree nodes that meet ``bounds`` (laspy's CopcReader query);
    a window that decodes nothing has the hierarchy checked, so a damaged one is named."""
    try:
        with laspy.CopcReader.open(path) as reader:
            # clipped to the file's box (+1 unit): laspy casts the query to int32 grid units,
            # which a window of +-1e12 would overflow; the exact crop happens after decoding
            lo, hi = reader.header.mins[:2] - 1, reader.header.maxs[:2] + 1
            window = laspy.copc.Bounds(mins=np.maximum([bounds.xmin, bounds.ymin], lo),
                                       maxs=np.minimum([bounds.xmax, bounds.ymax], hi))
            arr = reader.query(bounds=window).array
            problem = _copc_hierarchy_problem(reader) if len(arr) == 0 else None
    except BaseException as e:  # includes lazrs' PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise DataError(path, f"corrupt COPC file (bounded read): {type(e).__name__}: {e}") from None
    if problem:
        raise DataError(path, f"corrupt COPC file: {problem}")
    return arr


COPC_INFO_ID = ("copc", 1)


def is_copc(h: _Header) -> bool:
    """A COPC file: LAZ whose first VLR is the COPC info record (``copc``/1)."""
    return h.compressed and bool(h.vlrs) and (h.vlrs[0].user_id, h.vlrs[0].record_id) == COPC_INFO_ID


def read_las(path: str | os.PathLike, bounds: Bounds | None = None) -> PointCloud:
    """Read a LAS/LAZ file into a PointCloud (see module docstring); DataError on bad input.

    ``bounds``: only the points with ``xmin <= x < xmax`` and ``ymin <= y < ymax``. A COPC
    file decodes only the octree nodes that meet the window (laspy's ``CopcReader``); other
    files are decoded whole and cropped. No point inside is a DataError.
    """
    path = Path(path)
    f, h = _open_checked(path)
    with f:
        kind = "LAZ" if h.compressed else "LAS"
        if h.point_count == 0:
            raise DataError(path, f"{kind} file has no points")
        problems = _check_layout(path, f, h)
        evlrs = _read_evlrs(path, f, h)
        pf = _laspy_point_format(path, f)
    windowed = bounds is not None and not problems and is_copc(h)
    if windowed:
        arr = _decode_copc_window(path, bounds)
    else:
        arr = _decode_in_child(path, problems) if problems else _decode_in_process(path, kind)
        if len(arr) != h.point_count:
            raise DataError(path, f"truncated or corrupt {kind}: decoded {len(arr)} points, header "
                                  f"says {h.point_count}")
    if bounds is not None:
        raw_xyz, xyz = _coordinates(arr, h.scales, h.offsets)
        inside = bounds.contains(xyz)
        if not inside.any():
            raise EmptyWindowError(path, f"no point inside the bounds {bounds} (the file spans x "
                                  f"{h.mins[0]:.2f}..{h.maxs[0]:.2f}, y {h.mins[1]:.2f}..{h.maxs[1]:.2f})")
        if not inside.all():
            arr, raw_xyz, xyz = arr[inside], raw_xyz[inside], xyz[inside]
        fields = _unpack_fields(arr, pf)
    else:
        # coordinates in a second thread while this one unpacks the fields (NumPy releases
        # the GIL): lazrs decodes on every core, this part would otherwise run on one
        with ThreadPoolExecutor(1) as pool:
            coords = pool.submit(_coordinates, arr, h.scales, h.offsets)
            fields = _unpack_fields(arr, pf)
            raw_xyz, xyz = coords.result()
    return PointCloud(xyz, fields, _meta_for(h, pf, evlrs, raw_xyz), str(path))


def _meta_for(h: _Header, pf: laspy.PointFormat, evlrs: list[RawVlr], raw_xyz: np.ndarray | None) -> LasMeta:
    """What the writer needs to reproduce the file (header fields, VLRs, extra dims, CRS)."""
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
    return LasMeta(
        version=h.version_str, point_format=h.pf, scales=h.scales, offsets=h.offsets,
        raw_xyz=raw_xyz, vlrs=vlrs, evlrs=evlrs, global_encoding=h.global_encoding,
        file_source_id=h.file_source_id, uuid=h.uuid, system_identifier=h.system_identifier,
        generating_software=h.generating_software, creation_date=h.creation_date,
        extra_dims=extra_dims, extra_header_bytes=h.extra_header_bytes,
        extra_vlr_bytes=h.extra_vlr_bytes, compressed=h.compressed, crs_wkt=crs_wkt, epsg=epsg)


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
        compressed=h.compressed, copc=is_copc(h), warnings=problems)


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


def _new_meta(cloud: PointCloud) -> LasMeta:
    """Header values for a cloud that does not come from a LAS file (e.g. PLY)."""
    xyz = cloud.xyz
    finite = xyz[np.isfinite(xyz).all(axis=1)]
    offsets = np.floor(finite.min(axis=0)) if len(finite) else np.zeros(3)
    vlrs, encoding = [], 0
    crs = cloud.crs_wkt
    if crs:
        *record, is_wkt = crs_vlr_record(crs)
        vlr = RawVlr(*record)
        vlrs.append(vlr)
        encoding = 16 if is_wkt else 0
    return LasMeta(version="1.4", point_format=6, scales=np.full(3, 0.001), offsets=offsets,
                   raw_xyz=None, vlrs=vlrs, global_encoding=encoding,
                   creation_date=date.today(), crs_wkt=crs)


def _extra_dims_for(meta: LasMeta, fields: dict[str, np.ndarray], path: Path) -> list[ExtraDim]:
    """Extra-bytes dimensions to write: the original ones still present (their struct kept
    when the values still fit the stored type), then every new non-standard field."""
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
    return extra_dims


#: VLR/EVLR user ids that describe the source file's byte layout, not its points: COPC's info
#: VLR and hierarchy EVLR (``copc``) point at chunk offsets that no rewrite keeps, so a labelled
#: copy of a COPC file that carried them would claim to be COPC and fail validation.
LAYOUT_USER_IDS = ("copc",)


def _still_valid(vlrs: list[RawVlr]) -> list[RawVlr]:
    """``vlrs`` without the records of ``LAYOUT_USER_IDS`` (stale in any file we write)."""
    return [v for v in vlrs if v.user_id.rstrip("\0") not in LAYOUT_USER_IDS]


def _header_for(meta: LasMeta, version: str, pf_id: int, extra_dims: list[ExtraDim]) -> laspy.LasHeader:
    """The output header: version, point format, the input's VLRs (raw bytes, original order;
    the extra-bytes VLR rewritten for ``extra_dims``), scales/offsets and header fields."""
    header = laspy.LasHeader(version=version, point_format=pf_id)
    if extra_dims:
        header.add_extra_dims([laspy.ExtraBytesParams(d.name, d.dtype) for d in extra_dims])
        generated = header.vlrs.extract("ExtraBytesVlr")[0].record_data_bytes()
        eb_data = b"".join(
            d.struct if d.struct is not None else generated[i * _EB_STRUCT_SIZE:(i + 1) * _EB_STRUCT_SIZE]
            for i, d in enumerate(extra_dims))
    vlrs = []
    for v in _still_valid(meta.vlrs):
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
    header.uuid = UUID(bytes_le=meta.uuid)
    header.system_identifier = meta.system_identifier
    header.generating_software = meta.generating_software
    header.creation_date = meta.creation_date
    header.extra_header_bytes = meta.extra_header_bytes
    header.extra_vlr_bytes = meta.extra_vlr_bytes
    return header


@contextlib.contextmanager
def las_writer(path: str | os.PathLike, meta: LasMeta, fields: dict[str, np.ndarray],
               need14: bool) -> Iterator[Callable[[PointCloud, dict[str, np.ndarray]], None]]:
    """A LAS/LAZ file (``.laz``: LAZ) written chunk by chunk, atomically: ``with las_writer(...)
    as write: write(cloud, fields)`` for every chunk; nothing is left under ``path`` unless the
    block ends without an error. ``meta``: the header to reproduce; ``fields``: the names and
    dtypes every chunk has (their values choose the types of new extra-bytes dimensions);
    ``need14``: codes above 31 somewhere in the file (a legacy point format becomes LAS 1.4).

    Format choice (:func:`_choose_format`), extra dimensions (:func:`_extra_dims_for`),
    header (:func:`_header_for`), records packed a chunk at a time (``data.las_records``);
    ``write`` keeps a cloud's raw X/Y/Z (``meta.raw_xyz``) wherever ``xyz`` still equals them."""
    path = Path(path)
    standard = {k for k in fields if k in ALL_STANDARD}
    try:
        pf_id = _choose_format(meta.point_format, standard, need14)
    except DataError as e:
        raise DataError(path, str(e).split(": ", 1)[1]) from None
    version = meta.version if pf_id == meta.point_format else ("1.4" if pf_id >= 6 else max(meta.version, "1.2"))
    header = _header_for(meta, version, pf_id, _extra_dims_for(meta, fields, path))
    compress = path.suffix.lower() == ".laz"
    if not path.parent.is_dir():
        raise DataError(path, f"cannot write: folder {str(path.parent)!r} does not exist")
    caller_error: BaseException | None = None
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            with laspy.LasWriter(f, header, do_compress=compress, closefd=False) as writer:
                def write(cloud: PointCloud, chunk_fields: dict[str, np.ndarray]) -> None:
                    raw = cloud.meta.raw_xyz if isinstance(cloud.meta, LasMeta) else None
                    try:
                        for chunk in point_chunks(cloud, chunk_fields, header, raw, path):
                            writer.write_points(chunk)
                    except (DataError, OSError):     # OSError: atomic_path names a full disk
                        raise
                    except Exception as e:
                        raise DataError(path, f"cannot write {'LAZ' if compress else 'LAS'}: "
                                              f"{type(e).__name__}: {e}") from e
                try:
                    yield write
                except BaseException as e:
                    caller_error = e
                    raise
                evlrs = _still_valid(meta.evlrs)
                if evlrs and header.version.minor >= 4:
                    writer.write_evlrs(VLRList(
                        [laspy.VLR(v.user_id, v.record_id, v.description, v.data) for v in evlrs]))
    except BaseException as e:
        if caller_error is not None and not isinstance(caller_error, (DataError, OSError)):
            raise caller_error from None     # the caller's own failure, not a closing writer's
        if isinstance(e, DataError) or not isinstance(e, Exception):
            raise
        raise DataError(path, f"cannot write {'LAZ' if compress else 'LAS'}: {type(e).__name__}: {e}") from e


def write_las(cloud: PointCloud, path: str | os.PathLike,
              extra: dict[str, np.ndarray] | None = None, las14: bool = False) -> None:
    """Write ``cloud`` (+ ``extra`` dims) as LAS, or LAZ when the suffix is ``.laz``. Atomic
    (:func:`las_writer` with the whole cloud as one chunk). ``las14``: a legacy point format
    becomes its LAS 1.4 one (6-10) whatever the codes (COPC needs it)."""
    path = Path(path)
    if isinstance(cloud.meta, LasMeta) and cloud.meta.write_problem:
        raise DataError(path, f"cannot write a copy of {cloud.source}: it {cloud.meta.write_problem}")
    fields = cloud.fields_with(extra, path)
    meta = cloud.meta if isinstance(cloud.meta, LasMeta) else _new_meta(cloud)
    cls = fields.get("classification")
    need14 = las14 or (cls is not None and cls.size > 0 and int(np.max(cls)) > 31)
    with las_writer(path, meta, fields, need14) as write:
        write(cloud, fields)
