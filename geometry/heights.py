"""Height features: above local minima on a 2-D grid, and above a morphological ground model.

- :func:`height_features`: height above the lowest point of the point's cell and of the 3x3
  block of cells around it, and the cell's z range;
- :func:`ground_surface` / :func:`height_above_ground`: a digital terrain model by a
  progressive morphological filter, and each point's height above it.
"""
from __future__ import annotations

import numpy as np

from data.errors import UserError

__all__ = ["HEIGHT_FEATURES", "GROUND_FEATURE", "MAX_GROUND_CELLS", "GridSizeError", "height_features",
           "ground_surface", "height_above_ground"]

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
    from scipy import ndimage
    from scipy.interpolate import LinearNDInterpolator

    xyz = np.asarray(xyz, dtype=np.float64)
    origin = np.floor(xyz[:, :2].min(0) / cell) * cell
    ij = np.floor((xyz[:, :2] - origin) / cell).astype(np.int64)
    shape = tuple(int(v) for v in ij.max(0) + 1)
    if shape[0] * shape[1] > MAX_GROUND_CELLS:
        raise GridSizeError(
            f"the ground model of points spanning {shape[0] * cell:,.0f} m x {shape[1] * cell:,.0f} m "
            f"needs {shape[0] * shape[1]:,} cells of {cell:g} m (at most {MAX_GROUND_CELLS:,}): give "
            f"tiles (one file per tile, or predict --bounds) or a larger ground_cell")
    flat = ij[:, 0] * shape[1] + ij[:, 1]
    zmin = np.full(shape[0] * shape[1], np.inf)
    np.minimum.at(zmin, flat, xyz[:, 2])
    zmin = zmin.reshape(shape)
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
    gi, gj = np.nonzero(ground)
    if len(gi) == 0:  # nothing survived (tiny or odd cloud): the lowest points are the ground
        gi, gj = np.nonzero(occupied)
    values = zmin[gi, gj]
    ci, cj = np.mgrid[0:shape[0], 0:shape[1]]
    if len(gi) >= 3 and np.ptp(gi) > 0 and np.ptp(gj) > 0:
        try:
            dtm = LinearNDInterpolator(np.c_[gi, gj].astype(np.float64), values)(ci, cj)
        except Exception:  # a degenerate (collinear) set of ground cells: nearest below
            dtm = np.full(shape, np.nan)
    else:
        dtm = np.full(shape, np.nan)
    hole = ~np.isfinite(dtm)
    if hole.any():
        mark = np.ones(shape, bool)
        mark[gi, gj] = False
        idx = ndimage.distance_transform_edt(mark, return_distances=False, return_indices=True)
        dtm[hole] = zmin[idx[0][hole], idx[1][hole]]
    return dtm, origin


def height_above_ground(xyz: np.ndarray, cell: float = 1.0, max_window: float = GROUND_WINDOW, *,
                        source: str | None = None) -> np.ndarray:
    """``[N]`` float32 ``z - DTM(x, y)``: :func:`ground_surface` read bilinearly at each point.
    ``source`` (the points' file) prefixes the message of a :class:`GridSizeError`."""
    from scipy import ndimage

    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return np.zeros(0, np.float32)
    try:
        dtm, origin = ground_surface(xyz, cell, max_window)
    except GridSizeError as exc:
        if source is None:
            raise
        raise GridSizeError(f"{source}: {exc}") from None
    coords = ((xyz[:, :2] - origin) / cell - 0.5).T                  # cell centres at integer coords
    ground = ndimage.map_coordinates(dtm, coords, order=1, mode="nearest")
    return (xyz[:, 2] - ground).astype(np.float32)
