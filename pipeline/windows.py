"""Whole tiles in bounded memory: one LAS/LAZ file predicted in square windows.

The file's x/y box is cut into windows of ``size`` metres; each is predicted with a ``halo``
of the points around it (the model's context: a point's label depends on points that far
away), and only its own (core) points are kept. Three streaming passes, each holding one
chunk or one window, never the tile:

1. spill: the file is read :data:`CHUNK` records at a time; each record is appended (raw
   bytes, with its index in the file) to the temporary file of every window whose core plus
   halo holds it; with ``--buffer``, the neighbouring inputs' points within the buffer go to
   the windows whose halo holds them too (``w<id>.c<j>``, each neighbour's own records); the
   lowest ``z`` of every 1 m cell is kept on the way (``geometry.heights.TileGround``), so that
   the ground model is built once for the file and each window reads the one a whole-file
   prediction builds, instead of one of its own (not for a box over :data:`TILE_GROUND_CELLS`);
2. predict: each window's records become a cloud, the model predicts its core points with the
   halo as context only (``targets``: KPConvX runs the regions that reach the core, the forest
   mines and classifies the core's points), the cloud is labelled
   (``pipeline.labelling.labelled_cloud``), and its core points' new fields go, with their
   indices, to per-chunk result files (chunk ``k`` holds the points ``k*CHUNK ..``); a grid
   model's map keeps the cells holding core points (:class:`MapPieces`, joined and written
   once at the end);
3. write: the file is read again chunk by chunk, each chunk's results scattered back by
   index, and the labelled chunk appended to the output (``data.las.las_writer``), so the
   output keeps every input point in input order, every field, header, VLRs and CRS.

Peak memory: one window with its halo (``size + 2 halo`` metres square, less where the file's
edge cuts it) plus one chunk, whatever the tile's size (a grid model's map adds a few tens of
bytes per occupied cell). ``pipeline.window_grid.window_size`` picks ``size`` from a memory budget
(``--max-memory``).
Each window runs in a call of its own (its arrays are released when it returns) and the heap
pages they held go back to the system (:func:`return_freed_memory`) before the next window is
read, so windows do not stack.
Temporary files live in ``OUT/.lidarseg-windows-<stem>/`` (removed at the end, and at the
start of the next run if a killed one left them).
"""
from __future__ import annotations

import ctypes
import functools
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from data.classmap import ClassMap
from data.bounds import Bounds
from data.errors import DataError, EmptyWindowError, UserError
from data.io import cloud_format
from data.las import las_writer
from data.las_stream import LasChunks
from data.pointcloud import PointCloud
from geometry.heights import GROUND_WINDOW, TileGround, tile_ground

from .buffers import NeighbourContext, appended, own_part
from .models.base import GridProduct
from .progress import log, progress
from .window_grid import WindowGrid

#: records per streaming chunk (passes 1 and 3) and per result file
CHUNK = 1 << 20
#: points of a windowed file kept for its rendered view (every k-th point of the file)
VIEW_POINTS = 2_000_000
#: most 1 m cells of a file's shared ground model (``TileGround``: 8 bytes a cell while the
#: file streams, ~130 while its DTM is built): a 1.5 km x 1.5 km box
TILE_GROUND_CELLS = 2_250_000


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give the heap pages freed by the last window back to the system (``malloc_trim(0)``):
    glibc keeps freed blocks below its dynamic mmap threshold (up to 32 MB) in its arenas, so
    without it the resident set between windows grows with the windows run, and each window's
    peak stands on it (benchmarks/README.md, "Whole tiles in bounded memory")."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _by_window(rows: np.ndarray, wins: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(window, its rows)`` of ``(rows, windows)`` pairs ordered by window
    (:meth:`WindowGrid.members`)."""
    cuts = np.flatnonzero(np.diff(wins)) + 1
    for part_rows, w in zip(np.split(rows, cuts), wins[np.r_[0, cuts]] if len(wins) else []):
        yield int(w), part_rows


def _spill(chunks: LasChunks, grid: WindowGrid, tmp: Path, bounds: Bounds | None = None,
           ground: TileGround | None = None) -> tuple[np.dtype, list[int], set[str]]:
    """Pass 1: each record (inside ``bounds``, if given) into the file of every window holding
    it (``w<id>.rec`` + ``.idx``), and its ``z`` into ``ground``'s cell minima. Returns the
    records' dtype, the windows that hold points and the cloud's field names."""
    dtype, seen, names = None, set(), set()
    for start, arr in progress(chunks.records(CHUNK), "windows: spill", total=-(-chunks.point_count // CHUNK),
                               unit="chunk"):
        if dtype is None:
            dtype, names = arr.dtype, set(chunks.cloud(arr[:1]).fields)
        xyz = chunks.xyz(arr)
        xy = xyz[:, :2]
        inside = np.arange(len(arr)) if bounds is None else np.flatnonzero(bounds.contains(xy))
        if ground is not None:
            ground.add(xyz[inside])
        rows, wins = grid.members(xy[inside])
        for w, part_rows in _by_window(inside[rows], wins):
            _append(tmp / f"w{w}.rec", arr[part_rows].tobytes())
            _append(tmp / f"w{w}.idx", (part_rows + start).astype(np.int64).tobytes())
            seen.add(w)
    return dtype, sorted(seen), names


def _spill_context(context: "tuple[NeighbourContext, int]", grid: WindowGrid, tmp: Path,
                   names: set[str], ground: TileGround | None = None) -> list[tuple[int, LasChunks, np.dtype]]:
    """Pass 1 for ``--buffer``: the neighbouring inputs' points within the buffer of the file
    (``NeighbourContext.context_box``), streamed a chunk at a time, into the window files
    whose halo holds them (``w<id>.c<j>``, neighbour ``j``'s own records), and into ``ground``
    (all of them: a whole-file prediction's ground model sees them all). Returns the
    neighbours used, with their record dtypes; one lacking a field of ``names`` (the file's) is
    not used (a line says so), as in a whole-file prediction."""
    ctx, i = context
    band = ctx.context_box(i)
    used, count = [], 0
    for j in ctx.neighbours(i):
        if not ctx.same_crs(i, j):
            continue
        if cloud_format(ctx.inputs[j]) == ".ply":
            log(f"warning: {ctx.inputs[i].name}: neighbour {ctx.inputs[j].name} is PLY; a file predicted in "
                "windows takes LAS/LAZ neighbours only as context")
            continue
        other = LasChunks(ctx.inputs[j])
        if other.problems:
            log(f"warning: {ctx.inputs[i].name}: neighbour {ctx.inputs[j].name} is a corrupt LAZ "
                f"({'; '.join(other.problems)}); not used as context")
            continue
        dtype = None
        for _, arr in other.records(CHUNK):
            xyz = other.xyz(arr)
            if j == i:                          # under --bounds: its own points around the window
                outside = ~ctx.bounds.contains(xyz)
                arr, xyz = arr[outside], xyz[outside]
            xy = xyz[:, :2]
            if dtype is None:
                dtype, missing = arr.dtype, sorted(names - set(other.cloud(arr[:1]).fields))
                if missing:
                    log(f"warning: {ctx.inputs[i].name}: neighbour {ctx.inputs[j].name} lacks "
                        f"{', '.join(missing)}; not used as context")
                    break
            inside = np.flatnonzero(band.contains(xy))
            count += len(inside)
            if ground is not None:
                ground.add(xyz[inside])
            rows, wins = grid.members(xy[inside], own=False)
            for w, part_rows in _by_window(inside[rows], wins):
                _append(tmp / f"w{w}.c{j}", arr[part_rows].tobytes())
        else:
            used.append((j, other, dtype))
    if count:
        log(f"{ctx.inputs[i].name}: {count:,} points of neighbouring files as context")
    return used


def _tile_ground(lo: np.ndarray, hi: np.ndarray, band: Bounds | None) -> TileGround | None:
    """The cell minima of the file's box ``lo..hi`` (grown to ``band``, the ``--buffer`` context's
    box), from which every window reads the ground model a whole-file prediction builds
    (``geometry.heights.TileGround``); None for a box of more than :data:`TILE_GROUND_CELLS`
    cells, whose windows then build their own."""
    if band is not None:
        lo = np.minimum(lo, [band.xmin, band.ymin])
        hi = np.maximum(hi, [band.xmax, band.ymax])
    cells = np.prod(np.floor(np.asarray(hi, np.float64) - np.asarray(lo, np.float64)) + 2)
    if not np.isfinite(cells) or cells > TILE_GROUND_CELLS:     # a header box of NaN: no shared model
        return None
    return TileGround(lo, hi, 1.0)


def _new_fields(cloud: PointCloud, labelled: PointCloud, extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fields ``labelled_cloud`` set or replaced, and its extras."""
    out = {k: v for k, v in labelled.fields.items() if v is not cloud.fields.get(k)}
    out.update(extras)
    return out


def predict_windowed(model: Any, class_map: ClassMap, path: Path, target: Path, *, device: str,
                     grid_size: float, halo: float, anchor: np.ndarray, label: Any, las14: bool = False,
                     context: "tuple[NeighbourContext, int] | None" = None,
                     view: Callable[[PointCloud], Any] | None = None, bounds: Bounds | None = None,
                     maps: Callable[[GridProduct, PointCloud], Any] | None = None) -> int:
    """Label ``path`` into ``target`` window by window (module docstring); ``label(cloud, proba)``
    -> ``(labelled cloud, extras)`` (``pipeline.labelling.labelled_cloud`` with the options);
    ``anchor``: the tile's minimum, where every window's model grids start. Returns the number
    of windows. ``las14``: a LAS 1.4 point format whatever the codes (``data.io.write_cloud``).
    ``context`` ``(NeighbourContext, index of path)``: ``--buffer``, the neighbouring inputs'
    points within the buffer are context for the windows whose halo holds them. ``view``:
    called after writing with every k-th labelled point (at most :data:`VIEW_POINTS`, all
    fields), for a rendered view of the file in bounded memory. ``bounds`` (``--bounds``): only
    the points inside are predicted and written (the file is streamed; with ``context``, its
    own points around the window are context, as in a whole-file prediction). ``maps``: for a
    model that also predicts a map (a grid model's ``GridProduct``), called after writing with
    the file's map joined from the windows' (:class:`MapPieces`) and an empty cloud carrying
    the file's CRS; without it such a model is refused."""
    chunks = LasChunks(path)
    if chunks.problems:
        raise DataError(path, f"corrupt LAZ ({'; '.join(chunks.problems)}); windowed prediction reads files "
                              "chunk by chunk and refuses it")
    if chunks.meta.write_problem:
        raise DataError(path, f"cannot write a copy of it: it {chunks.meta.write_problem}")
    h = chunks.header
    lo, hi = np.asarray(h.mins[:2], np.float64), np.asarray(h.maxs[:2], np.float64)
    if bounds is not None:
        part = bounds.clipped(lo, hi)
        if part is None:
            raise EmptyWindowError(path, f"no point inside the bounds {bounds}")
        lo, hi = np.array([part.xmin, part.ymin]), np.array([part.xmax, part.ymax])
    grid = WindowGrid.over(lo, hi, grid_size, halo)
    tmp = target.parent / f".lidarseg-windows-{path.stem}"
    shutil.rmtree(tmp, ignore_errors=True)             # a killed run's
    tmp.mkdir(parents=True)
    ground = _tile_ground(lo, hi, context[0].context_box(context[1]) if context is not None else None)
    try:
        dtype, windows, names = _spill(chunks, grid, tmp, bounds, ground)
        neighbours = _spill_context(context, grid, tmp, names, ground) if context is not None else []
        log(f"{path.name}: {chunks.point_count:,} points in {len(windows)} windows of {grid.size:.0f} m "
            f"(+{grid.halo:.0f} m halo)")
        if ground is not None and ground.usable:
            ground.surface(GROUND_WINDOW)     # built now, before a window's arrays stand beside it
        pieces = MapPieces() if maps is not None else None
        with tile_ground(ground):
            out_dtype = _predict_windows(model, class_map, chunks, grid, tmp, dtype, windows, device, label,
                                         anchor, neighbours, pieces)
        sample = _write_merged(chunks, target, tmp, out_dtype, class_map, las14, view is not None, bounds)
        if view is not None:
            view(sample)
        if pieces is not None and pieces.first is not None:
            maps(pieces.joined(), chunks.cloud(np.empty(0, dtype)))
    except OSError as exc:
        from data.atomic import disk_error

        raise (disk_error(exc, tmp) or exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(windows)


def _predict_windows(model: Any, class_map: ClassMap, chunks: LasChunks, grid: WindowGrid, tmp: Path,
                     dtype: np.dtype, windows: list[int], device: str, label: Any, anchor: np.ndarray,
                     neighbours: list[tuple[int, LasChunks, np.dtype]], pieces: "MapPieces | None") -> np.dtype:
    """Pass 2: each window predicted (:func:`_predict_window`), its core points' new fields
    appended to ``r<chunk>.res``; a map's cells that hold core points kept in ``pieces``. A
    window's arrays live in its call's frame: they are released when it returns, and the heap
    pages they held returned (:func:`return_freed_memory`), before the next window is read."""
    out_dtype = None
    for w in progress(windows, "windows: predict", unit="window"):
        out_dtype = _predict_window(model, class_map, chunks, grid, tmp, dtype, w, device, label, anchor,
                                    neighbours, pieces, out_dtype)
        return_freed_memory()
    if out_dtype is None:
        raise EmptyWindowError(chunks.path, "no window holds a point")
    return out_dtype


def _predict_window(model: Any, class_map: ClassMap, chunks: LasChunks, grid: WindowGrid, tmp: Path,
                    dtype: np.dtype, w: int, device: str, label: Any, anchor: np.ndarray,
                    neighbours: list[tuple[int, LasChunks, np.dtype]], pieces: "MapPieces | None",
                    out_dtype: np.dtype | None) -> np.dtype | None:
    """Window ``w``: its records (and neighbours' context points) read and removed, its core
    points predicted with the rest as context, their new fields appended by chunk to
    ``r<chunk>.res`` (records ``out_dtype``: ``index`` then the fields; set by the first
    window that has core points). Returns ``out_dtype``."""
    records = np.fromfile(tmp / f"w{w}.rec", dtype=dtype)
    index = np.fromfile(tmp / f"w{w}.idx", dtype=np.int64)
    (tmp / f"w{w}.rec").unlink()
    (tmp / f"w{w}.idx").unlink()
    cloud = chunks.cloud(records)
    core = grid.core(cloud.xyz[:, :2]) == w
    if not core.any():
        return out_dtype
    others = []
    for j, other, other_dtype in neighbours:
        part = tmp / f"w{w}.c{j}"
        if part.is_file():
            others.append((other.path.name, other.cloud(np.fromfile(part, dtype=other_dtype))))
            part.unlink()
    buffered = appended(cloud, others, chunks.path.name)
    targets = np.zeros(len(buffered), bool)
    targets[:len(cloud)] = core
    result = own_part(model.predict(buffered, device, anchor=anchor, targets=targets), cloud)  # halo: context
    if result.grid is not None:
        if pieces is None:
            raise UserError(f"{chunks.path}: this model also writes a map, which this windowed prediction "
                            "cannot take (set geotiff: false, or give more --max-memory)")
        pieces.add(result.grid, cloud.xyz[core])
    labelled, extras = label(cloud, result.proba)
    fields = _new_fields(cloud, labelled, extras)
    if out_dtype is None:
        top = max(max(class_map.output_codes), 5)      # codes a layout may write (5: vegetation split)
        out_dtype = np.dtype([("index", "<i8")] + [
            (k, np.promote_types(v.dtype, np.min_scalar_type(top)) if v.dtype.kind in "iu" else v.dtype,
             v.shape[1:]) for k, v in fields.items()])
    rows = np.flatnonzero(core)
    res = np.empty(len(rows), out_dtype)
    res["index"] = index[rows]
    for k in out_dtype.names[1:]:
        res[k] = fields[k][rows]
    res = res[np.argsort(res["index"], kind="stable")]
    cuts = np.flatnonzero(np.diff(res["index"] // CHUNK)) + 1
    for piece in np.split(res, cuts):
        _append(tmp / f"r{int(piece['index'][0]) // CHUNK}.res", piece.tobytes())
    return out_dtype


class MapPieces:
    """A file's map (a grid model's ``GridProduct``) joined from its windows' maps: each window
    gives the cells that hold its core points (their class, probabilities), so every occupied
    cell comes from a window whose halo holds the cell's points and its context. Cells are
    aligned to multiples of the cell size (``geometry.grids.Grid2D``), so they join exactly;
    the joined grid is the one around all the points, as a whole-file map's. Memory: a few
    tens of bytes per occupied cell, not per point."""

    def __init__(self) -> None:
        self.first: GridProduct | None = None
        self._cells: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []   # ix, iy, class, proba

    def add(self, product: GridProduct, core_xy: np.ndarray) -> None:
        """Keep the cells of ``product`` that hold one of the points ``core_xy`` ``[n, 2+]``."""
        if self.first is None:
            self.first = product
        g = product.grid
        r, c = g.cell_of(core_xy)
        flat = np.unique(r.astype(np.int64) * g.cols + c)
        r, c = flat // g.cols, flat % g.cols
        self._cells.append(((g.col0 + c).astype(np.int64), (g.row_top - r).astype(np.int64),
                            product.class_index[r, c], product.proba[r, c]))

    def joined(self) -> GridProduct:
        """The file's map: every kept cell at its place, the others outside the mask."""
        from geometry.grids import Grid2D

        first = self.first
        ix, iy, cls, proba = (np.concatenate(v) for v in zip(*self._cells))
        self._cells = []
        grid = Grid2D(first.grid.cell_size, int(ix.min()), int(iy.max()), int(iy.max() - iy.min() + 1),
                      int(ix.max() - ix.min() + 1))
        r, c = grid.row_top - iy, ix - grid.col0
        class_index = np.full(grid.shape, -1, first.class_index.dtype)
        full = np.zeros(grid.shape + first.proba.shape[2:], first.proba.dtype)
        mask = np.zeros(grid.shape, bool)
        class_index[r, c], full[r, c], mask[r, c] = cls, proba, True
        return GridProduct(grid, class_index, full, mask, first.title, first.preview)


def _write_merged(chunks: LasChunks, target: Path, tmp: Path, out_dtype: np.dtype, class_map: ClassMap,
                  las14: bool, sample: bool = False, bounds: Bounds | None = None) -> PointCloud | None:
    """Pass 3: the file again, chunk by chunk (its points inside ``bounds``, if given), with the
    predicted fields scattered back by index. With ``sample``, returns every k-th labelled
    point (at most :data:`VIEW_POINTS`)."""
    names = out_dtype.names[1:]
    step = max(1, math.ceil(chunks.point_count / VIEW_POINTS))
    kept: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []

    def merged(start: int, arr: np.ndarray) -> tuple[PointCloud, dict[str, np.ndarray]]:
        stop = start + len(arr)
        parts = [np.fromfile(tmp / f"r{k}.res", dtype=out_dtype)
                 for k in range(start // CHUNK, (stop - 1) // CHUNK + 1) if (tmp / f"r{k}.res").is_file()]
        res = np.concatenate(parts) if parts else np.empty(0, out_dtype)
        res = res[(res["index"] >= start) & (res["index"] < stop)]
        keep = np.arange(len(arr)) if bounds is None else np.flatnonzero(bounds.contains(chunks.xyz(arr)))
        arr = arr[keep]
        cloud = chunks.cloud(arr)
        n = len(arr)
        pos = np.searchsorted(keep, res["index"] - start)      # row of each result among the kept
        if len(res) != n or (n and np.any(keep[np.minimum(pos, n - 1)] != res["index"] - start)) \
                or np.bincount(pos, minlength=n).max(initial=1) != 1:
            raise DataError(chunks.path, f"windowed prediction: {n - len(np.unique(pos)):,} points of "
                                         f"{start:,}..{stop:,} got no label (a bug: please report it)")
        fields = dict(cloud.fields)
        for k in names:
            col = np.empty((n,) + out_dtype[k].shape, out_dtype[k].base)
            col[pos] = res[k]
            fields[k] = col
        if sample:
            rows = np.arange((-start) % step, n, step)
            kept.append((cloud.xyz[rows], {k: v[rows] for k, v in fields.items()}))
        return cloud, fields

    need14 = las14 or ("classification" in names and max(max(class_map.output_codes), 5) > 31)
    it = iter(progress(chunks.records(CHUNK), "windows: write", total=-(-chunks.point_count // CHUNK),
                       unit="chunk"))
    first = merged(*next(it))
    while not len(first[0]):                       # under --bounds: the first chunk with a point inside
        first = merged(*next(it))
    with las_writer(target, chunks.meta, first[1], need14) as write:
        write(*first)
        for start, arr in it:
            cloud, fields = merged(start, arr)
            if len(cloud):
                write(cloud, fields)
    if not sample:
        return None
    return PointCloud(np.concatenate([x for x, _ in kept]),
                      {k: np.concatenate([f[k] for _, f in kept]) for k in kept[0][1]}, source=str(chunks.path))


__all__ = ["predict_windowed", "return_freed_memory", "CHUNK"]
