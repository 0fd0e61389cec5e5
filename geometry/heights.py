"""Height features: above local minima on a 2-D grid, and above a morphological ground model.

- :func:`height_features`: height above the lowest point of the point's cell and of the 3x3
  block of cells around it, and the cell's z range;
- :func:`ground_surface` / :func:`height_above_ground`: a digital terrain model by a
  progressive morphological filter, and each point's height above it;
- :class:`TileGround` / :func:`tile_ground`: the same model built once for a whole tile from its
  cell minima gathered while the tile streams past, which :func:`height_above_ground` reads
  (inside ``with tile_ground(...)``) instead of building one per window of the tile.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np

from data.errors import UserError

__all__ = ["HEIGHT_FEATURES", "GROUND_FEATURE", "MAX_GROUND_CELLS", "GridSizeError", "height_features",
           "ground_surface", "cell_minima", "ground_cells", "surface_from_minima", "height_above_ground", "TileGround",
           "tile_ground"]

#: Most cells :func:`ground_surface` builds (10 km x 10 km at 1 m; its dense grids and the
#: distance transform take about 40 bytes a cell).
MAX_GROUND_CELLS = 100_000_000


class GridSizeError(UserError, ValueError):
    """A dense grid over the points' extent would be too large (points spread too far); a
    user error (``run.py`` exits 2 with the message)."""


#: Keys of :func:`height_features` (each suffixed by the cell size, e.g. ``'hag_c2.0'``).
HEIGHT_FEATURES: tuple[str, ...] = ("hag", "hag3", "zrange")
#: Column of :func:`height_above_ground` (height above the morphological DTM).
GROUND_FEATURE = "hag_ground"


# ----------------------------------------------------------------------------------------------
# height features
# ----------------------------------------------------------------------------------------------

#: metres: the largest object the default ground model removes (its widest opening window)
GROUND_WINDOW = 24.0


def height_features(xyz: np.ndarray, cell_size: float = 2.0) -> dict[str, np.ndarray]:
    """Height features on a 2-D grid of ``cell_size`` cells (aligned to multiples of it).

    - ``hag``: ``z - min z`` of the point's cell (height above the local minimum);
    - ``hag3``: ``z - min z`` over the 3x3 block of cells around the point's cell (a coarse
      ground estimate that also works on roofs filling a whole cell);
    - ``zrange``: ``max z - min z`` in the point's cell.

    Vectorised: one sort of the cell keys (``O(N log N)``), ``minimum/maximum.reduceat`` per
    cell, and 2 ``searchsorted`` lookups over the occupied cells (not the points).

    Returns ``{name: [N] float32}`` with keys :data:`HEIGHT_FEATURES`.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    n = len(xyz)
    if n == 0:
        return {key: np.zeros(0, np.float32) for key in HEIGHT_FEATURES}
    if not cell_size > 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    ix = np.floor(xyz[:, 0] / cell_size).astype(np.int64)
    iy = np.floor(xyz[:, 1] / cell_size).astype(np.int64)
    ix -= ix.min() - 1                         # >= 1 so that the -1 neighbour stays >= 0
    iy -= iy.min() - 1
    dy = int(iy.max()) + 2
    ix *= dy
    key = np.add(ix, iy, out=ix)
    order = np.argsort(key)                    # cell order; the order inside a cell is irrelevant
    ks = key[order]
    zs = xyz[order, 2]
    first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    cells = ks[first]                                   # sorted unique cell keys
    zmin = np.minimum.reduceat(zs, first)
    zmax = np.maximum.reduceat(zs, first)
    counts = np.diff(np.r_[first, n])
    # 3x3 block minimum. Keys are unique and sorted and y never reaches 0 or dy - 1, so the
    # cells of column x + ox at y-1, y, y+1 (target keys t-1, t, t+1 with t = key + ox*dy) can
    # only sit at positions p-1, p, p+1 around p = searchsorted(cells, t): 2 searchsorted
    # calls (ox = -1, +1; ox = 0 uses p = own position) instead of 9.
    nc = len(cells)
    zmin3 = zmin.copy()
    own = np.arange(nc)
    for ox in (-1, 0, 1):
        t = cells + ox * dy
        p = own if ox == 0 else np.searchsorted(cells, t)
        for dp in (-1, 0, 1):
            j = np.clip(p + dp, 0, nc - 1)
            hit = np.abs(cells[j] - t) <= 1
            np.minimum(zmin3, np.where(hit, zmin[j], np.inf), out=zmin3)
    # values in cell order (sequential repeats), then one scatter back per feature
    out = {}
    for name, v in (("hag", zs - np.repeat(zmin, counts)), ("hag3", zs - np.repeat(zmin3, counts)),
                    ("zrange", np.repeat(zmax - zmin, counts))):
        res = np.empty(n, np.float32)
        res[order] = v
        out[name] = res
    return out


def ground_surface(xyz: np.ndarray, cell: float = 1.0, max_window: float = GROUND_WINDOW, slope: float = 0.3,
                   dh0: float = 0.3, dh_max: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A digital terrain model by a progressive morphological filter (Zhang et al. 2003).

    1. ``S`` = lowest ``z`` per ``cell`` x ``cell`` grid cell (empty cells take the nearest
       occupied cell's value);
    2. for windows of ``w = 3, 5, 9, 17, ...`` cells up to ``max_window`` metres:
       ``O = opening_w(S)`` (grey erosion then dilation); a cell whose ``S - O`` exceeds
       ``dh = min(dh0 + slope * (w - w_prev) * cell, dh_max)`` is not ground (a roof, a canopy,
       a bridge deck smaller than the window); ``S = O``;
    3. the DTM is the linear interpolation (Delaunay, nearest outside the hull) of the lowest
       ``z`` of the occupied ground cells, at every cell centre.

    Returns ``(dtm [rows, cols] float64, origin [2])``: cell ``(i, j)`` spans
    ``origin + (i, j) * cell`` to ``+ cell`` in (x, y).
    """
    zmin, origin = cell_minima(xyz, cell)
    return surface_from_minima(zmin, cell, max_window, slope, dh0, dh_max), origin


def _grid_shape_check(shape: tuple[int, int], cell: float) -> None:
    if shape[0] * shape[1] > MAX_GROUND_CELLS:
        raise GridSizeError(
            f"the ground model of points spanning {shape[0] * cell:,.0f} m x {shape[1] * cell:,.0f} m "
            f"needs {shape[0] * shape[1]:,} cells of {cell:g} m (at most {MAX_GROUND_CELLS:,}): give "
            f"tiles (one file per tile, or predict --bounds) or a larger ground_cell")


def cell_minima(xyz: np.ndarray, cell: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(zmin [rows, cols] float64, origin [2])``: the lowest ``z`` of each ``cell`` x ``cell``
    cell (``inf`` where empty) of the grid around the points, aligned to multiples of ``cell``
    (``origin = floor(min xy / cell) * cell``; cell ``(i, j)`` spans ``origin + (i, j) * cell``)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    grid = TileGround(xyz[:, :2].min(0), xyz[:, :2].max(0), cell)     # its box: exactly the points'
    grid.add(xyz)
    return grid.zmin, grid.origin


def ground_cells(zmin: np.ndarray, cell: float = 1.0, max_window: float = GROUND_WINDOW, slope: float = 0.3,
                 dh0: float = 0.3, dh_max: float = 3.0) -> np.ndarray:
    """Steps 1-2 of :func:`ground_surface` on the cell minima ``zmin [rows, cols]`` (``inf`` where
    empty; :func:`cell_minima`): ``[rows, cols]`` bool, the ground cells (every occupied cell
    when the filter keeps none)."""
    from scipy import ndimage

    occupied = np.isfinite(zmin)
    near = ndimage.distance_transform_edt(~occupied, return_distances=False, return_indices=True)
    surf = zmin[tuple(near)]
    ground = occupied.copy()
    w_prev, w = 1, 3
    while (w - 2) * cell <= max_window or w == 3:
        opened = ndimage.grey_opening(surf, size=(w, w), mode="nearest")
        dh = min(dh0 + slope * (w - w_prev) * cell, dh_max)
        ground &= (surf - opened) <= dh
        surf = opened
        w_prev, w = w, 2 * w - 1
    return ground if ground.any() else occupied  # none survived (tiny or odd cloud): the lowest points


def surface_from_minima(zmin: np.ndarray, cell: float = 1.0, max_window: float = GROUND_WINDOW,
                        slope: float = 0.3, dh0: float = 0.3, dh_max: float = 3.0) -> np.ndarray:
    """Steps 1-3 of :func:`ground_surface` on the cell minima ``zmin [rows, cols]`` (``inf`` where
    empty; :func:`cell_minima`): the DTM ``[rows, cols]`` float64 on the same cells."""
    from scipy import ndimage
    from scipy.interpolate import LinearNDInterpolator

    is_ground = ground_cells(zmin, cell, max_window, slope, dh0, dh_max)
    dtm = np.where(is_ground, zmin, np.nan)
    hi, hj = np.nonzero(~is_ground)
    # Every Delaunay triangle of the ground cells that holds another cell has its vertices among
    # the ground cells with a non-ground cell or the grid's edge beside them (4-neighbours): such
    # a triangle has area >= 1 (Pick's theorem), so circumradius R >= 0.877 cells, and of a
    # vertex's 4 neighbours the one within 45 degrees of the centre's direction lies at 1 <
    # 2 R cos 45 from it, strictly inside the circumcircle, so it is no ground cell. Those cells
    # alone are triangulated: the same triangles from far fewer points (lattice ties aside).
    bi, bj = np.nonzero(is_ground & ~ndimage.binary_erosion(is_ground, border_value=0))
    if len(hi) and len(bi) >= 3 and np.ptp(bi) > 0 and np.ptp(bj) > 0:
        try:
            dtm[hi, hj] = LinearNDInterpolator(np.c_[bi, bj].astype(np.float64), zmin[bi, bj])(hi, hj)
        except Exception:  # a degenerate (collinear) set of ground cells: nearest below
            pass
    hole = np.isnan(dtm)
    if hole.any():
        idx = ndimage.distance_transform_edt(~is_ground, return_distances=False, return_indices=True)
        dtm[hole] = zmin[idx[0][hole], idx[1][hole]]
    return dtm


def height_above_ground(xyz: np.ndarray, cell: float = 1.0, max_window: float = GROUND_WINDOW, *,
                        source: str | None = None) -> np.ndarray:
    """``[N]`` float32 ``z - DTM(x, y)``: :func:`ground_surface` read bilinearly at each point
    (inside :func:`tile_ground`, the tile's DTM where it covers the points). ``source`` (the
    points' file) prefixes the message of a :class:`GridSizeError`."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return np.zeros(0, np.float32)
    shared = _TILE_GROUND.get()
    if shared is not None and (found := shared.heights(xyz, cell, max_window)) is not None:
        return found
    try:
        dtm, origin = ground_surface(xyz, cell, max_window)
    except GridSizeError as exc:
        if source is None:
            raise
        raise GridSizeError(f"{source}: {exc}") from None
    return _read_surface(dtm, origin, cell, xyz)


def _read_surface(dtm: np.ndarray, origin: np.ndarray, cell: float, xyz: np.ndarray) -> np.ndarray:
    """``[N]`` float32 ``z - DTM(x, y)``, the DTM read bilinearly (cell centres at integers)."""
    from scipy import ndimage

    coords = ((xyz[:, :2] - origin) / cell - 0.5).T
    ground = ndimage.map_coordinates(dtm, coords, order=1, mode="nearest")
    return (xyz[:, 2] - ground).astype(np.float32)


class TileGround:
    """The ground model of a tile streamed in chunks: the lowest ``z`` of every ``cell`` cell of
    the box ``lo..hi`` gathered chunk by chunk (:meth:`add`), the DTM built from them once per
    ``max_window`` on first use (:func:`surface_from_minima`). For the same points it is the DTM
    :func:`ground_surface` builds from the whole cloud at once (the box is cut to its occupied
    cells, aligned to multiples of ``cell`` as there). A point outside the box marks it
    incomplete: then it answers nothing and each caller builds its own model.
    Memory: 8 bytes a cell (a 1 km tile at 1 m: 8 MB), ~130 while a DTM is built."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, cell: float = 1.0) -> None:
        self.cell = float(cell)
        self.origin = np.floor(np.asarray(lo, np.float64)[:2] / cell) * cell
        self.shape = tuple(int(v) for v in np.floor((np.asarray(hi, np.float64)[:2] - self.origin) / cell) + 1)
        _grid_shape_check(self.shape, cell)
        self.zmin = np.full(self.shape, np.inf)
        self.complete = True
        self._surfaces: dict[float, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, xyz: np.ndarray) -> None:
        """Take the points ``xyz [n, 3]`` into the cell minima (before any DTM is built)."""
        if self._surfaces:
            raise RuntimeError("TileGround.add after its DTM was built: the DTM would miss these points")
        ij = np.floor((np.asarray(xyz[:, :2], np.float64) - self.origin) / self.cell).astype(np.int64)
        inside = (ij >= 0).all(1) & (ij[:, 0] < self.shape[0]) & (ij[:, 1] < self.shape[1])
        if not inside.all():
            self.complete = False
        np.minimum.at(self.zmin.reshape(-1), ij[inside, 0] * self.shape[1] + ij[inside, 1],
                      np.asarray(xyz[inside, 2], np.float64))

    @property
    def usable(self) -> bool:
        """Whether every point added fell in the box, and one did."""
        return self.complete and bool(np.isfinite(self.zmin).any())

    def _occupied(self) -> None:
        """Cut the box to its occupied rows and columns (the grid :func:`cell_minima` gives)."""
        rows = np.flatnonzero(np.isfinite(self.zmin).any(1))
        cols = np.flatnonzero(np.isfinite(self.zmin).any(0))
        if len(rows):
            self.zmin = self.zmin[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            self.origin = self.origin + np.array([rows[0], cols[0]]) * self.cell
            self.shape = self.zmin.shape

    def heights(self, xyz: np.ndarray, cell: float, max_window: float) -> np.ndarray | None:
        """``[N]`` float32 heights above the tile's DTM, or None where this model cannot answer
        (another cell size, an incomplete box, a point outside the occupied cells)."""
        if cell != self.cell or not self.usable:
            return None
        dtm = self.surface(max_window)
        ij = np.floor((xyz[:, :2] - self.origin) / cell)
        if (ij < 0).any() or (ij[:, 0] >= self.shape[0]).any() or (ij[:, 1] >= self.shape[1]).any():
            return None
        return _read_surface(dtm, self.origin, cell, xyz)

    def surface(self, max_window: float = GROUND_WINDOW) -> np.ndarray:
        """The DTM ``[rows, cols]`` of the occupied cells (:attr:`origin` at cell ``(0, 0)``) for
        ``max_window``, built on first use."""
        with self._lock:                  # callers in two threads build it once
            if max_window not in self._surfaces:
                if not self._surfaces:
                    self._occupied()
                self._surfaces[max_window] = surface_from_minima(self.zmin, self.cell, max_window)
            return self._surfaces[max_window]


_TILE_GROUND: ContextVar[TileGround | None] = ContextVar("tile_ground", default=None)


@contextmanager
def tile_ground(ground: TileGround | None) -> Iterator[None]:
    """Inside, :func:`height_above_ground` reads ``ground`` (when it can answer) instead of
    building a DTM of its points. A thread started inside sees it only if it runs in a copy of
    this context (``contextvars.copy_context().run``)."""
    token = _TILE_GROUND.set(ground)
    try:
        yield
    finally:
        _TILE_GROUND.reset(token)
