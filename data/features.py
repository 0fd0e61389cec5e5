"""Hand-crafted geometric per-point features (CPU, NumPy) for LiDAR classification.

Three families, all returned as float32 and never NaN/inf:

- **covariance features** of the local neighbourhood (k nearest neighbours or a ball): the
  eigenvalues ``l1 >= l2 >= l3 >= 0`` of the neighbourhood covariance and the normal;
- **height features** from a 2-D grid: height above the lowest point of the cell and of the
  3x3 block of cells around it, and the z range of the cell;
- **point features** from the LAS attributes (intensity, returns).

:func:`compute_features` assembles all of them for a :class:`~data.pointcloud.PointCloud`
(one KD-tree for all scales) and :func:`feature_names` lists the column names it produces.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from data.pointcloud import PointCloud

__all__ = [
    "COVARIANCE_FEATURES", "HEIGHT_FEATURES", "POINT_FEATURES", "FEATURE_NAMES", "GROUND_FEATURE",
    "ground_surface", "height_above_ground",
    "feature_names", "covariance_features", "symmetric_eigen3", "height_features",
    "point_features", "compute_features",
]

#: Keys of :func:`covariance_features` (each prefixed by the scale, e.g. ``'k16_planarity'``).
COVARIANCE_FEATURES: tuple[str, ...] = (
    "linearity", "planarity", "scattering", "omnivariance", "anisotropy", "eigenentropy",
    "surface_variation", "verticality", "normal_x", "normal_y", "normal_z", "num_neighbors",
)
#: Keys of :func:`height_features` (each suffixed by the cell size, e.g. ``'hag_c2.0'``).
HEIGHT_FEATURES: tuple[str, ...] = ("hag", "hag3", "zrange")
#: Column of :func:`height_above_ground` (height above the morphological DTM).
GROUND_FEATURE = "hag_ground"
#: Names :func:`point_features` knows, with the LAS fields each needs.
POINT_FEATURES: dict[str, tuple[str, ...]] = {
    "intensity": ("intensity",),
    "return_ratio": ("return_number", "number_of_returns"),
    "number_of_returns": ("number_of_returns",),
    "is_single_return": ("number_of_returns",),
    "is_first_return": ("return_number",),
    "is_last_return": ("return_number", "number_of_returns"),
}
_RETURN_FEATURES = ("return_ratio", "number_of_returns", "is_single_return", "is_first_return",
                    "is_last_return")

#: Chunk of points processed at once by :func:`covariance_features` (bounds memory:
#: about ``chunk * k * 3 * 8 * 3`` bytes of temporaries per worker thread).
CHUNK = 1 << 15


def _fmt(v: float) -> str:
    return f"{float(v):g}" if float(v) != int(v) else f"{float(v):.1f}"


def feature_names(*, k: Sequence[int] = (16,), radii: Sequence[float] = (),
                  height_cells: Sequence[float] = (2.0, 10.0), intensity: bool = True,
                  returns: bool = True, fields: Iterable[str] | None = None,
                  ground_cell: float | None = None, coarse_cells: Sequence[float] = (),
                  coarse_k: int = 16) -> list[str]:
    """Column names :func:`compute_features` produces for these options, in order.

    ``fields`` is the set of available LAS fields; when given, point features whose fields are
    missing are left out (exactly as :func:`compute_features` does), otherwise all are listed.
    """
    names: list[str] = []
    for kk in k:
        names += [f"k{int(kk)}_{f}" for f in COVARIANCE_FEATURES]
    for r in radii:
        names += [f"r{_fmt(r)}_{f}" for f in COVARIANCE_FEATURES]
    for g in coarse_cells:
        names += [f"g{_fmt(g)}_k{int(coarse_k)}_{f}" for f in COVARIANCE_FEATURES]
    for c in height_cells:
        names += [f"{f}_c{_fmt(c)}" for f in HEIGHT_FEATURES]
    if ground_cell is not None:
        names.append(GROUND_FEATURE)
    wanted = (["intensity"] if intensity else []) + (list(_RETURN_FEATURES) if returns else [])
    avail = None if fields is None else set(fields)
    names += [n for n in wanted if avail is None or all(f in avail for f in POINT_FEATURES[n])]
    return names


#: Names for the default options of :func:`compute_features`, all LAS fields present.
FEATURE_NAMES: tuple[str, ...] = tuple(feature_names())


# ----------------------------------------------------------------------------------------------
# eigen decomposition of symmetric 3x3 matrices
# ----------------------------------------------------------------------------------------------

def symmetric_eigen3(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and the unit eigenvector of the smallest one, batched.

    Closed form (trigonometric solution of the characteristic cubic): with ``q = tr(A)/3``,
    ``p = sqrt(tr((A - qI)^2) / 6)``, ``B = (A - qI)/p``, ``r = det(B)/2``,
    ``phi = acos(clip(r, -1, 1))/3``:
    ``l1 = q + 2p cos(phi)``, ``l3 = q + 2p cos(phi + 2pi/3)``, ``l2 = 3q - l1 - l3``.
    The eigenvector of ``l3`` is the largest of the three cross products of the rows of
    ``A - l3 I``. Where that is ill-conditioned (``l2 - l3 < 1e-6 * l1``, i.e. the smallest
    eigenvalue is (nearly) repeated) the rows fall back to ``np.linalg.eigh``.

    Args:
        cov: ``[N, 3, 3]`` symmetric float64.

    Returns:
        ``(evals [N, 3]`` descending, clipped to ``>= 0``, ``normal [N, 3]`` unit, arbitrary
        sign``)``.
    """
    a00, a11, a22 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    a01, a02, a12 = cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 2]
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = np.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02)
           + a02 * (a01 * a12 - b11 * a02))
    r = np.clip(det / (2.0 * safe ** 3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * math.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    evals = np.stack([l1, l2, l3], 1)
    evals.sort(axis=1)
    evals = np.maximum(evals[:, ::-1], 0.0)

    # eigenvector of the smallest eigenvalue: cross products of rows of (A - l3 I)
    m = cov - evals[:, 2, None, None] * np.eye(3)
    r0, r1, r2 = m[:, 0], m[:, 1], m[:, 2]
    cands = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], 1)  # [N, 3, 3]
    norms = np.einsum("nij,nij->ni", cands, cands)
    best = norms.argmax(1)
    normal = cands[np.arange(len(cov)), best]
    nn = np.sqrt(norms[np.arange(len(cov)), best])
    bad = (evals[:, 1] - evals[:, 2] <= 1e-6 * evals[:, 0]) | ~(nn > 0)
    normal = normal / np.where(nn > 0, nn, 1.0)[:, None]
    if bad.any():
        _, vec = np.linalg.eigh(cov[bad])
        normal[bad] = vec[:, :, 0]
    return evals, normal


# ----------------------------------------------------------------------------------------------
# covariance features
# ----------------------------------------------------------------------------------------------

def neighborhood_covariance(comp_pad: np.ndarray, idx: np.ndarray, n: int,
                            centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cov [c, 3, 3], count [c])`` of neighbourhoods ``idx [c, k]`` (shadow index ``n``).

    ``comp_pad`` is ``[3, N + 1]`` (coordinates component-major, one padding column). With
    offsets ``d_j = p_j - centre`` (centring on the query point keeps precision for large
    coordinates and makes duplicates exactly zero) and ``m = 1/n sum_j d_j``:
    ``C_ab = 1/n sum_j d_ja d_jb - m_a m_b`` -- six ``einsum('ij,ij->i')`` row sums over
    ``[c, k]`` arrays, no ``[c, k, 3, 3]`` temporary.
    """
    c, k = idx.shape
    valid = idx < n
    has_shadow = not valid.all()
    d = []
    for j in range(3):
        dj = np.take(comp_pad[j], idx)
        dj -= centre[:, j, None]
        if has_shadow:
            dj *= valid
        d.append(dj)
    cnt = valid.sum(1) if has_shadow else np.full(c, k, dtype=np.int64)
    inv = 1.0 / np.maximum(cnt, 1)
    m = [np.einsum("ij->i", d[j]) * inv for j in range(3)]
    cov = np.empty((c, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            v = np.einsum("ij,ij->i", d[a], d[b]) * inv - m[a] * m[b]
            cov[:, a, b] = v
            cov[:, b, a] = v
    return cov, cnt


def _cov_chunk(comp_pad: np.ndarray, idx: np.ndarray, n: int, min_neighbors: int,
               centre: np.ndarray) -> dict[str, np.ndarray]:
    """Features for one chunk; ``idx [c, k]`` may contain the shadow ``n``."""
    cov, cnt = neighborhood_covariance(comp_pad, idx, n, centre)
    evals, normal = symmetric_eigen3(cov)
    l1, l2, l3 = evals[:, 0], evals[:, 1], evals[:, 2]
    s = l1 + l2 + l3
    # defined values: too few neighbours, or a degenerate (all points equal) neighbourhood
    ok = (cnt >= min_neighbors) & (l1 > 0) & (s > 1e-24)
    inv1 = np.where(ok, 1.0 / np.where(ok, l1, 1.0), 0.0)
    invs = np.where(ok, 1.0 / np.where(ok, s, 1.0), 0.0)
    e = evals * invs[:, None]                                    # normalised eigenvalues
    ent = -(e * np.log(np.where(e > 0, e, 1.0))).sum(1)
    normal = np.where(ok[:, None], normal, [0.0, 0.0, 1.0])
    normal *= np.where(normal[:, 2] < 0, -1.0, 1.0)[:, None]   # orient n_z >= 0
    out = {
        "linearity": (l1 - l2) * inv1,
        "planarity": (l2 - l3) * inv1,
        "scattering": l3 * inv1,
        "omnivariance": np.cbrt(e[:, 0] * e[:, 1] * e[:, 2]),
        "anisotropy": (l1 - l3) * inv1,
        "eigenentropy": ent,
        "surface_variation": l3 * invs,
        "verticality": np.where(ok, 1.0 - np.abs(normal[:, 2]), 0.0),
        "normal_x": normal[:, 0], "normal_y": normal[:, 1], "normal_z": normal[:, 2],
        "num_neighbors": cnt,
        "l1": l1, "l2": l2, "l3": l3,
    }
    return {key: np.asarray(v, dtype=np.float32) for key, v in out.items()}


def covariance_features(xyz: np.ndarray, neighbor_idx: np.ndarray, min_neighbors: int = 3, *,
                        workers: int = 1, chunk: int | None = None,
                        eigenvalues: bool = False) -> dict[str, np.ndarray]:
    """Eigenvalue features of each point's neighbourhood covariance.

    The covariance of point ``i`` is ``C_i = 1/n sum_j (p_j - mu)(p_j - mu)^T`` over its valid
    neighbours ``j`` (indices ``< N``; the point itself counts when it is in the list, as with
    a k-NN query on the points themselves) with ``mu`` their mean. With eigenvalues
    ``l1 >= l2 >= l3`` and ``e_i = l_i / (l1 + l2 + l3)``:

    - ``linearity = (l1 - l2)/l1``, ``planarity = (l2 - l3)/l1``, ``scattering = l3/l1``
      (sphericity), ``anisotropy = (l1 - l3)/l1``
    - ``omnivariance = (e1 e2 e3)^(1/3)``, ``eigenentropy = -sum e_i ln e_i``
    - ``surface_variation = l3 / (l1 + l2 + l3)`` (change of curvature)
    - ``normal_x/y/z``: unit eigenvector of ``l3`` oriented ``n_z >= 0``;
      ``verticality = 1 - |n_z|``
    - ``num_neighbors``: number of valid neighbours.

    Points with fewer than ``min_neighbors`` valid neighbours, or a zero covariance (all
    neighbours at the same place), get 0 for every shape feature and the normal ``(0, 0, 1)``.

    Computation: chunks of :data:`CHUNK` points gather ``[c, k]`` coordinate offsets per axis
    and form ``C`` from six row sums (:func:`neighborhood_covariance`, no ``[N, k, 3, 3]``
    temporary), then use the closed-form :func:`symmetric_eigen3`. Chunks may run in
    ``workers`` threads. Memory ``O(workers * chunk * k)``.

    Args:
        xyz: ``[N, 3]`` float64.
        neighbor_idx: ``[N, k]`` int indices into ``xyz``; ``N`` (shadow) marks no neighbour.
        min_neighbors: least number of valid neighbours for a defined shape.
        workers: threads (-1: all cores). Default 1: measured on 2 cores, threads did not
            speed this up (the gather/einsum steps mostly hold the GIL).
        chunk: points per chunk (default :data:`CHUNK`).
        eigenvalues: also return ``'l1'``, ``'l2'``, ``'l3'`` (raw eigenvalues, float32).

    Returns:
        ``{name: [N] float32}`` with the keys of :data:`COVARIANCE_FEATURES`.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    idx = np.asarray(neighbor_idx)
    n = len(xyz)
    if idx.ndim != 2 or len(idx) != n:
        raise ValueError(f"neighbor_idx must be [N={n}, k], got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() > n):
        raise ValueError("neighbor_idx has indices outside [0, N]")
    comp_pad = np.zeros((3, n + 1))
    comp_pad[:, :n] = xyz.T
    chunk = int(chunk or CHUNK)
    keys = list(COVARIANCE_FEATURES) + (["l1", "l2", "l3"] if eigenvalues else [])
    out = {key: np.zeros(n, np.float32) for key in keys}
    if n == 0:
        return out

    def run(s: int) -> None:
        sl = slice(s, min(n, s + chunk))
        res = _cov_chunk(comp_pad, idx[sl], n, min_neighbors, xyz[sl])
        for key in keys:
            out[key][sl] = res[key]

    starts = range(0, n, chunk)
    nw = (os.cpu_count() or 1) if workers in (-1, None) else max(1, int(workers))
    if nw > 1 and len(starts) > 1:
        with ThreadPoolExecutor(nw) as ex:
            list(ex.map(run, starts))
    else:
        for s in starts:
            run(s)
    return out


# ----------------------------------------------------------------------------------------------
# height features
# ----------------------------------------------------------------------------------------------

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
    ij = np.floor(xyz[:, :2] / cell_size).astype(np.int64)
    ij -= ij.min(0) - 1                        # >= 1 so that the -1 neighbour stays >= 0
    dy = int(ij[:, 1].max()) + 2
    key = ij[:, 0] * dy + ij[:, 1]
    order = np.argsort(key, kind="stable")
    ks = key[order]
    zs = xyz[order, 2]
    first = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    cells = ks[first]                                   # sorted unique cell keys
    zmin = np.minimum.reduceat(zs, first)
    zmax = np.maximum.reduceat(zs, first)
    inv = np.empty(n, np.int64)
    inv[order] = np.repeat(np.arange(len(cells)), np.diff(np.r_[first, n]))
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
    z = xyz[:, 2]
    return {"hag": (z - zmin[inv]).astype(np.float32),
            "hag3": (z - zmin3[inv]).astype(np.float32),
            "zrange": (zmax - zmin)[inv].astype(np.float32)}


def ground_surface(xyz: np.ndarray, cell: float = 1.0, max_window: float = 24.0, slope: float = 0.3,
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


def height_above_ground(xyz: np.ndarray, cell: float = 1.0, max_window: float = 24.0) -> np.ndarray:
    """``[N]`` float32 ``z - DTM(x, y)``: :func:`ground_surface` read bilinearly at each point."""
    from scipy import ndimage

    xyz = np.asarray(xyz, dtype=np.float64)
    if len(xyz) == 0:
        return np.zeros(0, np.float32)
    dtm, origin = ground_surface(xyz, cell, max_window)
    coords = ((xyz[:, :2] - origin) / cell - 0.5).T                  # cell centres at integer coords
    ground = ndimage.map_coordinates(dtm, coords, order=1, mode="nearest")
    return (xyz[:, 2] - ground).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# point (attribute) features
# ----------------------------------------------------------------------------------------------

def point_features(fields: Mapping[str, np.ndarray],
                   names: Iterable[str] = tuple(POINT_FEATURES)) -> dict[str, np.ndarray]:
    """Per-point attribute features; names whose fields are missing are skipped.

    - ``intensity``: ``log1p(I) / log(65536)`` in ``[0, 1]`` (LAS intensity is uint16);
    - ``return_ratio``: ``return_number / number_of_returns`` (in ``(0, 1]``);
    - ``number_of_returns``: ``min(number_of_returns, 5) / 5``;
    - ``is_single_return`` / ``is_first_return`` / ``is_last_return``: 0/1.

    ``number_of_returns`` and ``return_number`` of 0 (invalid in LAS) are read as 1.

    Returns ``{name: [N] float32}`` for the available names, in the order asked.
    """
    out: dict[str, np.ndarray] = {}
    rn = fields.get("return_number")
    nr = fields.get("number_of_returns")
    rn = None if rn is None else np.maximum(np.asarray(rn, dtype=np.float64), 1.0)
    nr = None if nr is None else np.maximum(np.asarray(nr, dtype=np.float64), 1.0)
    for name in names:
        if name not in POINT_FEATURES:
            raise KeyError(f"unknown point feature {name!r}; known: {sorted(POINT_FEATURES)}")
        if not all(f in fields for f in POINT_FEATURES[name]):
            continue
        if name == "intensity":
            v = np.log1p(np.asarray(fields["intensity"], dtype=np.float64).clip(0)) / math.log(65536)
        elif name == "return_ratio":
            v = np.minimum(rn / nr, 1.0)
        elif name == "number_of_returns":
            v = np.minimum(nr, 5.0) / 5.0
        elif name == "is_single_return":
            v = nr == 1
        elif name == "is_first_return":
            v = rn == 1
        else:  # is_last_return
            v = rn >= nr
        out[name] = np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return out


# ----------------------------------------------------------------------------------------------
# everything
# ----------------------------------------------------------------------------------------------

def _coarse_features(local: np.ndarray, cell: float, k: int, min_neighbors: int, workers: int,
                     n: int) -> dict[str, np.ndarray]:
    """Covariance features of a ``cell`` m grid subsampling, per original point (its cell's)."""
    from data.sampling import grid_subsample

    if n == 0:
        return {}
    sub = grid_subsample(local, float(cell))
    pts, inv = np.asarray(sub["points"], np.float64), np.asarray(sub["inverse"])
    kk = min(int(k), len(pts))
    _, idx = cKDTree(pts, balanced_tree=False).query(pts, k=kk, workers=workers)
    res = covariance_features(pts, np.asarray(idx, np.int64).reshape(len(pts), kk), min_neighbors)
    return {f"g{_fmt(cell)}_k{int(k)}_{f}": v[inv] for f, v in res.items()}


def compute_features(cloud: PointCloud, *, k: Sequence[int] = (16,), radii: Sequence[float] = (),
                     height_cells: Sequence[float] = (2.0, 10.0), intensity: bool = True,
                     returns: bool = True, workers: int = -1, radius_max_neighbors: int = 64,
                     min_neighbors: int = 3, ground_cell: float | None = None,
                     ground_window: float = 24.0, coarse_cells: Sequence[float] = (),
                     coarse_k: int = 16) -> tuple[list[str], np.ndarray]:
    """All features of a cloud as one ``[N, F]`` float32 matrix.

    ``workers`` is passed to the ``cKDTree`` queries. One ``cKDTree`` is built (on coordinates centred on their mean, for precision;
    ``balanced_tree=False``: sliding-midpoint build, ~1.5x faster) and reused:
    a single k-NN query with ``max(k)`` serves every k scale (the first ``k`` columns of the
    sorted result), and each radius scale is one capped ball query
    (``radius_max_neighbors`` nearest points within ``r``). Column order is
    :func:`feature_names` with the cloud's fields; point features whose LAS fields are missing
    are skipped. With ``ground_cell``, column :data:`GROUND_FEATURE` is the height above a
    morphological DTM (:func:`height_above_ground`). Each ``coarse_cells`` scale ``g`` adds the
    covariance features of the ``coarse_k`` nearest cell barycentres of a ``g`` m grid
    subsampling (``data.sampling.grid_subsample``), given to every point of the cell: context
    over several metres (a roof's plane, a crown) at the cost of one small k-NN query. Any
    non-finite value is replaced by 0 (none is expected).

    Returns:
        ``(names, X)`` with ``X [N, len(names)]`` float32.
    """
    xyz = np.asarray(cloud.xyz, dtype=np.float64)
    n = len(xyz)
    names = feature_names(k=k, radii=radii, height_cells=height_cells, intensity=intensity,
                          returns=returns, fields=cloud.fields.keys(), ground_cell=ground_cell,
                          coarse_cells=coarse_cells, coarse_k=coarse_k)
    cols: dict[str, np.ndarray] = {}
    local = xyz - (xyz.mean(0) if n else 0.0)
    # Height features need no neighbours: they run in a second thread (NumPy releases the GIL
    # in sorts and reductions) while the covariance features run here, after the threaded
    # k-NN query so as not to compete with it.
    pool = ThreadPoolExecutor(max_workers=1)
    heights = None

    def start_heights():
        def work():
            res = [height_features(xyz, c) for c in height_cells]
            if ground_cell is not None:
                res.append({GROUND_FEATURE: height_above_ground(xyz, ground_cell, ground_window)})
            return res
        return pool.submit(work)

    if (k or radii) and n:
        tree = cKDTree(local, balanced_tree=False)  # faster build (sliding midpoint), same queries
        ks = sorted({int(v) for v in k})
        if ks:
            kmax = min(ks[-1], n)
            _, idx = tree.query(local, k=kmax, workers=workers)
            idx = np.asarray(idx, dtype=np.int64).reshape(n, kmax)
            heights = start_heights()
            for kk in ks:
                res = covariance_features(local, idx[:, :kk], min_neighbors)
                cols.update({f"k{kk}_{f}": v for f, v in res.items()})
        for r in radii:
            m = min(int(radius_max_neighbors), n)
            _, idx = tree.query(local, k=m, distance_upper_bound=float(np.nextafter(r, np.inf)),
                                workers=workers)
            idx = np.asarray(idx, dtype=np.int64).reshape(n, m)
            res = covariance_features(local, idx, min_neighbors)
            cols.update({f"r{_fmt(r)}_{f}": v for f, v in res.items()})
    for g in coarse_cells:
        cols.update(_coarse_features(local, g, coarse_k, min_neighbors, workers, n))
    if not n:
        for kk in k:
            cols.update({f"k{int(kk)}_{f}": np.zeros(0, np.float32) for f in COVARIANCE_FEATURES})
        for r in radii:
            cols.update({f"r{_fmt(r)}_{f}": np.zeros(0, np.float32) for f in COVARIANCE_FEATURES})
        for g in coarse_cells:
            cols.update({f"g{_fmt(g)}_k{int(coarse_k)}_{f}": np.zeros(0, np.float32) for f in COVARIANCE_FEATURES})
    if heights is None:
        heights = start_heights()
    try:
        height_results = heights.result()
    finally:
        pool.shutdown()
    for c, res in zip(height_cells, height_results):
        cols.update({f"{f}_c{_fmt(c)}": v for f, v in res.items()})
    if ground_cell is not None:
        cols.update(height_results[-1])
    wanted = [nm for nm in names if nm in POINT_FEATURES]
    cols.update(point_features(cloud.fields, wanted))
    x = np.empty((n, len(names)), np.float32)
    for start in range(0, n if names else 0, 1 << 16):  # row blocks: cache-friendly, unlike whole-column writes
        x[start:start + (1 << 16)] = np.stack([cols[nm][start:start + (1 << 16)] for nm in names], axis=1)
    if not np.isfinite(x).all():  # one cheap pass; the repair is the rare path
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return names, x
