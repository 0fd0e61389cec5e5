"""COPC writing: a LAS/LAZ file's points as a Cloud Optimized Point Cloud (``.copc.laz``), the
LAZ layout QGIS, PDAL and web viewers stream by window and by level of detail.

A COPC file (https://copc.io) is LAS 1.4 of point format 6, 7 or 8, LAZ-compressed with one
variable-size LASzip chunk per node of an octree over a cube holding every point; the
``copc`` info VLR (first VLR: cube centre and half size, spacing, where the hierarchy is)
and the hierarchy EVLR (``copc``/1000: per node its key ``(d, x, y, z)``, chunk offset,
chunk size and point count) let a reader decode only the nodes a query needs.

Octree (``_levels``): node ``(d, x, y, z)`` is the cube cut ``2**d`` times along each axis.
Each node keeps one point per cell of a ``GRID**3`` grid over it (the first point of the
file order that falls in the cell, among those its ancestors did not keep) and passes the
others to its children, so level ``d`` is a sample of spacing ``2 * halfsize / (GRID * 2**d)``
and the levels together hold every point exactly once. A node with no more than
``LEAF_POINTS`` points left keeps them all (a leaf); ``MAX_DEPTH`` ends the recursion.

Bounded memory: a file of more than ``SUBTREE_POINTS`` points is first spilled, record by
record bytes, to one temporary file per node of depth ``split`` (a fixed level with at most
``SUBTREE_POINTS`` points per node on flat airborne data), and each such subtree is built
alone: every grid cell of every level lies inside one subtree, so the samples are the ones
a whole-file build takes; the levels above ``split`` (samples only, never leaves) gather
the few points every subtree gives them and are written last.

Records are copied byte for byte (every dimension, extra bytes included), and the header
keeps the source's scales, offsets, VLRs (CRS, extra-bytes descriptions...), EVLRs and
header fields; points are in node order, not the source's.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import struct
from pathlib import Path
from typing import Iterator

import laspy
from laspy.vlrs.vlrlist import VLRList
import lazrs
import numpy as np

from .atomic import atomic_path, disk_error
from .errors import DataError
from .las import COPC_INFO_ID, _header_for, _still_valid
from .las_header import _LEGACY_TO_14
from .las_stream import LasChunks

#: cells per node side: a node keeps at most one point per cell of this grid
GRID = 128
#: a node with no more points than this left to place keeps them all (no children)
LEAF_POINTS = 100_000
#: deepest level (cells of a 1 km tile's cube at this depth: 2 mm)
MAX_DEPTH = 12
#: points of one subtree held in memory at once (a file with more is built subtree by subtree)
SUBTREE_POINTS = 4_000_000
#: records read from the source at a time
READ_POINTS = 1_000_000
COPC_POINT_FORMATS = (6, 7, 8)
HIERARCHY_ID = ("copc", 1000)
_ENTRY = struct.Struct("<iiiiQii")          # VoxelKey d, x, y, z; offset; byte size; point count
_INFO_SIZE = 160


def copc_format_problem(point_format: int) -> str | None:
    """Why a labelled copy of a file of ``point_format`` cannot be COPC (its LAS 1.4 format,
    a legacy one upgraded as ``data.las`` writes it, is not 6-8: waveform), or None."""
    if _LEGACY_TO_14.get(point_format, point_format) in COPC_POINT_FORMATS:
        return None
    return f"point format {point_format} (waveform) cannot be written as COPC, which holds formats 6-8"


def is_copc_name(path: str | os.PathLike) -> bool:
    """``True`` for a name ending in ``.copc.laz`` (any case)."""
    return Path(path).name.lower().endswith(".copc.laz")


class _Cube:
    """The octree's cube: ``center`` [3], ``halfsize``; integer keys of points at a level."""

    def __init__(self, mins: np.ndarray, maxs: np.ndarray, scales: np.ndarray):
        self.center = (np.asarray(mins, np.float64) + np.asarray(maxs, np.float64)) / 2
        # half a scale unit and a relative margin beyond the farthest point: every point inside
        self.halfsize = float(np.max(np.asarray(maxs) - np.asarray(mins))) / 2 * (1 + 1e-9) + float(np.max(scales))
        self.lo = self.center - self.halfsize

    def cells(self, xyz: np.ndarray, per_side: int) -> np.ndarray:
        """``[N, 3]`` int64 indices of ``xyz`` in a grid of ``per_side`` cells a side over the cube."""
        idx = np.floor((xyz - self.lo) * (per_side / (2 * self.halfsize))).astype(np.int64)
        return np.clip(idx, 0, per_side - 1)

    @property
    def spacing(self) -> float:
        return 2 * self.halfsize / GRID


def _combined(ijk: np.ndarray, bits: int) -> np.ndarray:
    """One int64 per row of ``[N, 3]`` indices below ``2**bits`` (``3 * bits <= 63``)."""
    return (ijk[:, 0] << (2 * bits)) | (ijk[:, 1] << bits) | ijk[:, 2]


def _levels(xyz: np.ndarray, cube: _Cube, split: int) -> np.ndarray:
    """``[N]`` int8 octree level of each point (module docstring); levels below ``split`` are
    samples only (the subtree does not hold all of their nodes' points)."""
    level = np.full(len(xyz), -1, np.int8)
    remaining = np.arange(len(xyz))
    for d in range(MAX_DEPTH + 1):
        pts = xyz[remaining]
        if d == MAX_DEPTH:
            keep = np.ones(len(remaining), bool)
        else:
            cell = _combined(cube.cells(pts, GRID << d), d + 7)
            keep = np.zeros(len(remaining), bool)
            keep[np.unique(cell, return_index=True)[1]] = True
            if d >= split:
                _, node_of, counts = np.unique(_combined(cube.cells(pts, 1 << d), max(d, 1)),
                                               return_inverse=True, return_counts=True)
                keep |= (counts <= LEAF_POINTS)[node_of.reshape(-1)]
        level[remaining[keep]] = d
        remaining = remaining[~keep]
        if len(remaining) == 0:
            break
    return level


def _nodes(xyz: np.ndarray, level: np.ndarray, cube: _Cube) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """``((d, x, y, z), rows)`` of every non-empty node, rows in their input order."""
    for d in np.unique(level).tolist():
        rows = np.flatnonzero(level == d)
        cells = cube.cells(xyz[rows], 1 << d)
        keys = _combined(cells, max(d, 1))
        order = np.argsort(keys, kind="stable")
        rows, keys, cells = rows[order], keys[order], cells[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(rows)]):
            ijk = cells[s]
            yield (int(d), int(ijk[0]), int(ijk[1]), int(ijk[2])), rows[s:e]


def _split_level(points: int) -> int:
    """Depth whose nodes hold at most ``SUBTREE_POINTS`` points of a flat (airborne) file."""
    split = 0
    while points / 4 ** split > SUBTREE_POINTS and split < 6:
        split += 1
    return split


class _Writer:
    """The COPC file being written: header and VLRs, then one LAZ chunk a node, then the
    hierarchy EVLR and the source's EVLRs; the header and info VLR are rewritten at the end."""

    def __init__(self, f, chunks: LasChunks, cube: _Cube):
        self.f, self.cube = f, cube
        meta, pf = chunks.meta, chunks.point_format
        self.header = _header_for(meta, "1.4", pf.id, meta.extra_dims)
        if self.header.point_format.size != pf.size:
            raise DataError(chunks.path, f"COPC: record size {pf.size} does not match point format "
                                         f"{pf.id}'s {self.header.point_format.size}")
        self.header.extra_header_bytes = b""       # the info VLR must start at byte 375
        self.header.extra_vlr_bytes = b""
        self.info = laspy.VLR(COPC_INFO_ID[0], COPC_INFO_ID[1], "COPC info", bytes(_INFO_SIZE))
        self.laz = lazrs.LazVlr.new_for_compression(pf.id, pf.num_extra_bytes, True)
        self.header.vlrs.insert(0, self.info)
        self.header.vlrs.append(laspy.VLR("laszip encoded", 22204, "lazrs variable chunks", self.laz.record_data()))
        self.header.are_points_compressed = True
        self.header.mins, self.header.maxs = chunks.header.mins, chunks.header.maxs
        self.header.point_count = chunks.point_count
        self.header.write_to(f)
        self.compressor = lazrs.LasZipCompressor(f, self.laz)
        self.compressor.reserve_offset_to_chunk_table()    # 8 bytes, before the first chunk
        self.entries: list[bytes] = []
        self.by_return = np.zeros(15, np.int64)
        self.gps = [np.inf, -np.inf]
        self.point_format = pf

    def node(self, key: tuple[int, int, int, int], records: np.ndarray) -> None:
        start = self.f.tell()
        self.compressor.compress_many(np.frombuffer(records.tobytes(), np.uint8))
        self.compressor.finish_current_chunk()
        self.entries.append(_ENTRY.pack(*key, start, self.f.tell() - start, len(records)))
        rec = laspy.PackedPointRecord(records, self.point_format)
        self.by_return += np.bincount(np.asarray(rec.return_number), minlength=16)[1:16]
        gps = np.asarray(rec.gps_time)
        self.gps = [min(self.gps[0], float(gps.min())), max(self.gps[1], float(gps.max()))]

    def close(self, evlrs: list) -> None:
        self.compressor.done()
        self.f.seek(0, os.SEEK_END)
        first_evlr = self.f.tell()
        hierarchy = b"".join(self.entries)
        vlrs = VLRList([laspy.VLR(*HIERARCHY_ID, "EPT hierarchy", hierarchy)]
                                          + [laspy.VLR(v.user_id, v.record_id, v.description, v.data)
                                             for v in evlrs])
        vlrs.write_to(self.f, as_extended=True)
        c = self.cube
        self.info.record_data = struct.pack("<5d2Q2d88x", *c.center, c.halfsize, c.spacing,
                                            first_evlr + 60, len(hierarchy), *self.gps)
        self.header.start_of_first_evlr = first_evlr
        self.header.number_of_evlrs = len(vlrs)
        self.header.number_of_points_by_return = self.by_return
        self.f.seek(0)
        self.header.write_to(self.f, ensure_same_size=True)


def las_to_copc(src: str | os.PathLike, dst: str | os.PathLike, work: Path | None = None) -> Path:
    """Write the points of the LAS/LAZ file ``src`` (point format 6-8) as the COPC file
    ``dst`` (atomic; module docstring). ``work``: folder for the subtree spill of a large file
    (default: beside ``dst``), removed afterwards."""
    src, dst = Path(src), Path(dst)
    chunks = LasChunks(src)
    pf = chunks.point_format.id
    if pf not in COPC_POINT_FORMATS:
        raise DataError(dst, f"COPC holds point formats 6, 7 and 8; {src.name} has format {pf}")
    cube = _Cube(chunks.header.mins, chunks.header.maxs, chunks.header.scales)
    split = _split_level(chunks.point_count)
    spill = (work or dst.parent) / f".lidarseg-copc-{dst.name}"
    try:
        with atomic_path(dst) as tmp, open(tmp, "wb") as f:
            writer = _Writer(f, chunks, cube)
            if split == 0:
                records = np.concatenate([arr for _, arr in chunks.records(READ_POINTS)])
                _write_subtree(writer, records, chunks.xyz(records), 0, {})
            else:
                _write_split(writer, chunks, split, spill)
            writer.close(_still_valid(chunks.meta.evlrs))
    except OSError as e:
        raise disk_error(e, dst) or DataError(dst, f"cannot write COPC: {e}") from None
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return dst


def _write_subtree(writer: _Writer, records: np.ndarray, xyz: np.ndarray, split: int,
                   upper: dict[tuple[int, int, int, int], list[np.ndarray]]) -> None:
    """Write the nodes at or below ``split`` of these points; gather the ones above in ``upper``."""
    level = _levels(xyz, writer.cube, split)
    for key, rows in _nodes(xyz, level, writer.cube):
        if key[0] < split:
            upper.setdefault(key, []).append(records[rows])
        else:
            writer.node(key, records[rows])


def _write_split(writer: _Writer, chunks: LasChunks, split: int, spill: Path) -> None:
    """Spill the records by their depth-``split`` node, build each subtree alone, write the
    upper levels last."""
    spill.mkdir(parents=True, exist_ok=True)
    dtype = None
    for _, arr in chunks.records(READ_POINTS):
        dtype = arr.dtype
        keys = _combined(writer.cube.cells(chunks.xyz(arr), 1 << split), split)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(keys)]):
            with open(spill / f"{int(keys[s])}.bin", "ab") as out:
                out.write(arr[order[s:e]].tobytes())
    upper: dict[tuple[int, int, int, int], list[np.ndarray]] = {}
    for part in sorted(spill.glob("*.bin"), key=lambda p: int(p.stem)):
        records = np.fromfile(part, dtype=dtype)
        part.unlink()
        _write_subtree(writer, records, chunks.xyz(records), split, upper)
    for key in sorted(upper):
        writer.node(key, np.concatenate(upper[key]))


@contextlib.contextmanager
def copc_output(target: Path) -> Iterator[Path]:
    """``with copc_output(target) as las: write(las)``: a temporary LAS file (in a hidden
    folder beside ``target``) that becomes the COPC file ``target`` when the block ends
    without an error; nothing is left otherwise."""
    work = target.parent / f".lidarseg-copc-{target.name}.d"
    work.mkdir(parents=True, exist_ok=True)
    try:
        las = work / (target.name[: -len(".copc.laz")] + ".las")
        yield las
        las_to_copc(las, target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["las_to_copc", "copc_output", "copc_format_problem", "is_copc_name", "GRID", "LEAF_POINTS"]
