"""Hand-crafted geometric per-point features (CPU, NumPy) for LiDAR classification.

Three families, all returned as float32 and never NaN/inf:

- **covariance features** of the local neighbourhood (k nearest neighbours or a ball): the
  eigenvalues ``l1 >= l2 >= l3 >= 0`` of the neighbourhood covariance and the normal;
- **height features** from a 2-D grid: height above the lowest point of the cell and of the
  3x3 block of cells around it, and the z range of the cell;
- **point features** from the LAS attributes (intensity, returns);
- **vertical-column features** (``geometry.columns``): per cell, the lowest height above the
  ground model, the point's rank in its column and the multi-return share; per point, plan-view
  k-NN linearity, z spread and relative height.

:func:`compute_features` assembles all of them for a :class:`~data.pointcloud.PointCloud`
(one KD-tree for all scales) and :func:`feature_names` lists the column names it produces.
"""
from __future__ import annotations

import contextvars
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping, Sequence

import numpy as np

from data.pointcloud import PointCloud

from .columns import CELL_COLUMN_FEATURES, PLAN_FEATURES, cell_column_features, plan_knn_scales
from .covariance import CHUNK, COVARIANCE_FEATURES, CovarianceFeatures, covariance_features, symmetric_eigen3
from .heights import GROUND_FEATURE, HEIGHT_FEATURES, ground_surface, height_above_ground, height_features
from .neighbors import NeighborIndex

__all__ = [
    "COVARIANCE_FEATURES", "HEIGHT_FEATURES", "POINT_FEATURES", "FEATURE_NAMES", "GROUND_FEATURE",
    "ground_surface", "height_above_ground",
    "feature_names", "covariance_features", "symmetric_eigen3", "height_features",
    "point_features", "compute_features", "CHUNK",
]

#: Query points per block of :func:`compute_features`' neighbour queries (tables of
#: ``QUERY_BLOCK x k`` indices, a few MB, instead of ``N x k``).
QUERY_BLOCK = 1 << 16

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


def _fmt(v: float) -> str:
    return f"{float(v):g}" if float(v) != int(v) else f"{float(v):.1f}"


def feature_names(*, k: Sequence[int] = (16,), radii: Sequence[float] = (),
                  height_cells: Sequence[float] = (2.0, 10.0), intensity: bool = True,
                  returns: bool = True, fields: Iterable[str] | None = None,
                  ground_cell: float | None = None, coarse_cells: Sequence[float] = (),
                  coarse_k: int = 16, column_cells: Sequence[float] = (),
                  plan_k: Sequence[int] = ()) -> list[str]:
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
    avail = None if fields is None else set(fields)
    has_returns = avail is None or "number_of_returns" in avail
    for c in column_cells:
        names += [f"col{_fmt(c)}_{f}" for f in CELL_COLUMN_FEATURES if f != "multi_return" or has_returns]
    for kk in plan_k:
        names += [f"xy{int(kk)}_{f}" for f in PLAN_FEATURES]
    wanted = (["intensity"] if intensity else []) + (list(_RETURN_FEATURES) if returns else [])
    names += [n for n in wanted if avail is None or all(f in avail for f in POINT_FEATURES[n])]
    return names


#: Names for the default options of :func:`compute_features`, all LAS fields present.
FEATURE_NAMES: tuple[str, ...] = tuple(feature_names())


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
    from geometry.sampling import grid_subsample

    if n == 0:
        return {}
    sub = grid_subsample(local, float(cell))
    pts, inv = np.asarray(sub["points"], np.float64), np.asarray(sub["inverse"])
    kk = min(int(k), len(pts))
    _, idx = NeighborIndex(pts, balanced=False).knn(pts, kk, workers=workers)
    res = covariance_features(pts, idx, min_neighbors)
    return {f"g{_fmt(cell)}_k{int(k)}_{f}": v[inv] for f, v in res.items()}


def compute_features(cloud: PointCloud, *, k: Sequence[int] = (16,), radii: Sequence[float] = (),
                     height_cells: Sequence[float] = (2.0, 10.0), intensity: bool = True,
                     returns: bool = True, workers: int = -1, radius_max_neighbors: int = 64,
                     min_neighbors: int = 3, ground_cell: float | None = None,
                     ground_window: float = 24.0, coarse_cells: Sequence[float] = (),
                     coarse_k: int = 16, column_cells: Sequence[float] = (),
                     plan_k: Sequence[int] = (), rows: np.ndarray | None = None,
                     share: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[str], np.ndarray]:
    """All features of a cloud as one ``[N, F]`` float32 matrix (``rows``: of these points only,
    ``[len(rows), F]``; every point is still a neighbour, in the grids and the ground model).
    ``share = (reps, inverse)``: the neighbourhood features (k-NN and radius covariance,
    plan-view k-NN) are computed at the points ``reps`` only and output row ``i`` takes those of
    ``reps[inverse[i]]`` (e.g. one point per small cell, ``geometry.sampling.grid_representatives``);
    the others (heights, columns, ground, coarse scales, LAS attributes) stay per point.

    ``workers`` is passed to the k-d tree queries. One ``NeighborIndex`` is built (on coordinates centred on their mean, for precision;
    ``balanced_tree=False``: sliding-midpoint build, ~1.5x faster) and reused:
    a single k-NN query with ``max(k)`` serves every k scale (the first ``k`` columns of the
    sorted result), and each radius scale is one capped ball query
    (``radius_max_neighbors`` nearest points within ``r``). Column order is
    :func:`feature_names` with the cloud's fields; point features whose LAS fields are missing
    are skipped. With ``ground_cell``, column :data:`GROUND_FEATURE` is the height above a
    morphological DTM (:func:`height_above_ground`). Each ``coarse_cells`` scale ``g`` adds the
    covariance features of the ``coarse_k`` nearest cell barycentres of a ``g`` m grid
    subsampling (``geometry.sampling.grid_subsample``), given to every point of the cell: context
    over several metres (a roof's plane, a crown) at the cost of one small k-NN query. Each
    ``column_cells`` size adds ``geometry.columns.cell_column_features`` (on the same DTM,
    ``ground_cell`` or 1 m cells) and each ``plan_k`` the plan-view k-NN features
    (``geometry.columns.plan_knn_scales``: one query of the largest k). Any non-finite value is replaced by 0 (none is
    expected).

    Returns:
        ``(names, X)`` with ``X [N, len(names)]`` float32, column-major (Fortran order: each
        feature's values contiguous, as a forest's split search reads them).
    """
    xyz = np.asarray(cloud.xyz, dtype=np.float64)
    n = len(xyz)
    subset = rows is not None
    rows = np.asarray(rows, np.int64) if subset else np.arange(n)
    out_rows = rows
    if share is not None:               # the neighbourhood features at the representatives
        rows, inverse = np.asarray(share[0], np.int64), np.asarray(share[1], np.int64)
        if len(inverse) != len(out_rows):
            raise ValueError(f"share: {len(inverse)} inverse entries for {len(out_rows)} rows")
    m = len(rows)
    names = feature_names(k=k, radii=radii, height_cells=height_cells, intensity=intensity,
                          returns=returns, fields=cloud.fields.keys(), ground_cell=ground_cell,
                          coarse_cells=coarse_cells, coarse_k=coarse_k, column_cells=column_cells, plan_k=plan_k)
    # the result, column-major [N, F] (each feature contiguous: 5x faster to fill than C
    # order); the covariance features are written into their rows directly
    xt = np.empty((len(names), m), np.float32)
    first: dict[str, int] = {}
    for j, nm in enumerate(names):
        first.setdefault(nm, j)                # a scale given twice (k: [16, 16]) repeats its columns
    row = {nm: xt[j] for nm, j in first.items()}
    cols: dict[str, np.ndarray] = {}      # [N] values of every point
    of_rows: dict[str, np.ndarray] = {}   # [m] values of the rows
    local = xyz - (xyz.mean(0) if n else 0.0)
    # Height features need no neighbours: they run in a second thread (NumPy releases the GIL
    # in sorts and reductions), started at once so that they use the core the serial tree
    # build leaves free.
    pool = ThreadPoolExecutor(max_workers=1)

    def heights_work():
        res = [height_features(xyz, c) for c in height_cells]
        if ground_cell is not None or column_cells:
            hag = height_above_ground(xyz, ground_cell or 1.0, ground_window)
            nr = cloud.fields.get("number_of_returns")
            for c in column_cells:
                res.append({f"col{_fmt(c)}_{f}": v for f, v in cell_column_features(xyz, hag, c, nr).items()})
            if ground_cell is not None:
                res.append({GROUND_FEATURE: hag})
        return res

    heights = pool.submit(contextvars.copy_context().run, heights_work)   # sees a tile_ground
    if (k or radii) and m:
        index = NeighborIndex(local, balanced=False)  # faster build (sliding midpoint), same queries
        shapes = CovarianceFeatures(local)
        ks = sorted({int(v) for v in k})
        kmax = min(ks[-1], n) if ks else 0
        cap = min(int(radius_max_neighbors), n)
        # queries a block at a time: neighbour tables of QUERY_BLOCK rows (cache-sized, reused
        # memory) instead of [N, k] ones, each block's features written into the result's rows
        for start in range(0, m, QUERY_BLOCK):
            stop = min(m, start + QUERY_BLOCK)
            q = local[rows[start:stop]]
            tables = []
            if ks:
                _, idx = index.knn(q, kmax, workers=workers)
                tables += [(f"k{kk}", idx[:, :kk]) for kk in ks]
            for r in radii:
                tables.append((f"r{_fmt(r)}", index.knn(q, cap, radius=r, workers=workers)[1]))
            for prefix, table in tables:
                into = {f: row[f"{prefix}_{f}"][start:stop] for f in COVARIANCE_FEATURES}
                shapes.compute(table, q, min_neighbors, workers=workers, out=into)
    for g in coarse_cells:
        cols.update(_coarse_features(local, g, coarse_k, min_neighbors, workers, n))
    if plan_k and m:
        plan_index = NeighborIndex(local[:, :2], balanced=False)
        for kk, res in plan_knn_scales(local, tuple(plan_k), workers, plan_index, rows).items():
            of_rows.update({f"xy{kk}_{f}": v for f, v in res.items()})
    try:
        height_results = heights.result()
    finally:
        pool.shutdown()
    for c, res in zip(height_cells, height_results):
        cols.update({f"{f}_c{_fmt(c)}": v for f, v in res.items()})
    for res in height_results[len(height_cells):]:      # column features, then hag_ground
        cols.update(res)
    wanted = [nm for nm in names if nm in POINT_FEATURES]
    cols.update(point_features(cloud.fields, wanted))
    if share is not None:               # every output row takes its representative's values
        xt = xt[:, inverse]
        of_rows = {nm: v[inverse] for nm, v in of_rows.items()}
        rows, subset = out_rows, True
    for j, nm in enumerate(names):
        if first[nm] != j:            # a repeated name: the values of its first column
            xt[j] = xt[first[nm]]
        elif nm in of_rows:           # (the covariance features are in their rows already)
            xt[j] = of_rows.pop(nm)
        elif nm in cols:
            xt[j] = cols.pop(nm)[rows] if subset else cols.pop(nm)
    # NaN and inf propagate into a float64 row sum: one pass without a [F, N] mask; the full
    # check and repair run only when a sum is not finite (none is expected)
    if not np.isfinite(np.add.reduce(xt, axis=1, dtype=np.float64)).all():
        np.nan_to_num(xt, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return names, xt.T
