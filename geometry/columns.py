"""Vertical-column features: what lies above and below a point, seen from above (NumPy).

Airborne LiDAR separates roofs from canopies less by shape at one scale than by what the
beam saw in the column around a point: a laser reaches the ground through a tree crown
(points below, multiple returns) and never through a roof; a wall projects onto a line in
plan view, a crown onto a blob. Two families, both height-above-ground aware:

- **cell columns** (:func:`cell_column_features`, ``cell`` m square cells aligned to
  multiples of it), per point ``i`` in cell ``c``:
  ``ground_gap = min_{j in c} hag_j`` (0 where the ground is seen in the column, the roof
  height on a roof), ``rank = #{j in c : z_j < z_i} / (|c| - 1)`` (share of the column
  below the point; 0 for a single point), ``multi_return = mean_{j in c} [nr_j > 1]``;
- **plan-view neighbourhoods** (:func:`plan_knn_features`): the ``k`` nearest points in
  ``(x, y)`` only, with ``l1 >= l2`` the eigenvalues of their 2-D covariance:
  ``linearity = (l1 - l2) / l1`` (a wall is a line, a crown a disc), ``zstd`` the standard
  deviation of their ``z``, ``zrel = z_i - mean z`` (the point's place in that column),
  ``radius`` the plan distance to the k-th of them (local density: ``k / (pi radius^2)``).
"""
from __future__ import annotations

import numpy as np

from .covariance import CHUNK
from .grids import Groups
from .neighbors import NeighborIndex

__all__ = ["CELL_COLUMN_FEATURES", "PLAN_FEATURES", "cell_column_features", "plan_knn_features", "plan_knn_scales"]

#: Keys of :func:`cell_column_features` (named ``col{cell}_{key}``, e.g. ``'col2.0_rank'``).
CELL_COLUMN_FEATURES: tuple[str, ...] = ("ground_gap", "rank", "multi_return")
#: Keys of :func:`plan_knn_features` (named ``xy{k}_{key}``, e.g. ``'xy16_linearity'``).
PLAN_FEATURES: tuple[str, ...] = ("linearity", "zstd", "zrel", "radius")


def cell_column_features(xyz: np.ndarray, hag: np.ndarray, cell: float,
                         number_of_returns: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-point column statistics of ``cell`` m cells (module docstring).

    ``xyz [N, 3]``, ``hag [N]`` height above the ground model, ``number_of_returns [N]``
    (``multi_return`` is left out without it). A sort by z, then the cells' stable sort
    (``geometry.grids.Groups``): ``O(N log N)``.

    Returns ``{key: [N] float32}`` with the keys of :data:`CELL_COLUMN_FEATURES`.
    """
    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    if n == 0:
        return {k: np.zeros(0, np.float32) for k in CELL_COLUMN_FEATURES}
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    ij -= ij.min(0)
    key = ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1]
    by_z = np.argsort(xyz[:, 2], kind="stable")
    groups = Groups(key[by_z])                        # stable: by cell, then z
    inv = np.empty(n, np.int64)
    inv[by_z] = groups.inv
    count = np.diff(np.r_[groups.first, n])
    rank = np.empty(n, np.float64)                    # place in the sorted cell / (count - 1)
    rank[by_z[groups.order]] = np.arange(n) - groups.first[groups.inv[groups.order]]
    rank /= np.maximum(count[inv] - 1, 1)
    gap = groups.reduce(np.minimum, np.asarray(hag, np.float64)[by_z])
    out = {"ground_gap": gap[inv].astype(np.float32), "rank": rank.astype(np.float32)}
    if number_of_returns is not None:
        multi = np.bincount(inv, weights=np.asarray(number_of_returns) > 1, minlength=len(count)) / count
        out["multi_return"] = multi[inv].astype(np.float32)
    return out


def plan_knn_features(xyz: np.ndarray, k: int, workers: int = -1,
                      index: NeighborIndex | None = None, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Plan-view k-NN features (module docstring) of every point, or of ``rows`` only (their
    neighbours among all points): :func:`plan_knn_scales` at one ``k``.

    Returns ``{key: [N or len(rows)] float32}`` with the keys of :data:`PLAN_FEATURES`.
    """
    return plan_knn_scales(xyz, (k,), workers, index, rows)[int(k)]


def plan_knn_scales(xyz: np.ndarray, ks: "tuple[int, ...] | list[int]", workers: int = -1,
                    index: NeighborIndex | None = None,
                    rows: np.ndarray | None = None) -> dict[int, dict[str, np.ndarray]]:
    """Plan-view k-NN features at several ``k`` from one query of the largest (the ``k``
    nearest are the first ``k`` columns of the sorted ``max(ks)`` table).

    ``index``: a 2-D ``NeighborIndex`` over ``xyz[:, :2]`` (centred) if the caller has one.
    Processed in chunks of :data:`geometry.covariance.CHUNK` points (bounded memory).

    Returns ``{k: {key: [N or len(rows)] float32}}`` with the keys of :data:`PLAN_FEATURES`.
    """
    xyz = np.asarray(xyz, np.float64)
    n = len(xyz)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    m = len(rows)
    ks = sorted({int(k) for k in ks})
    if n == 0 or m == 0:
        return {k: {key: np.zeros(m, np.float32) for key in PLAN_FEATURES} for k in ks}
    xy = xyz[:, :2] - xyz[:, :2].mean(0)
    index = index or NeighborIndex(xy, balanced=False)
    out = {k: {key: np.empty(m, np.float32) for key in PLAN_FEATURES} for k in ks}
    kmax = min(ks[-1], n)
    for s in range(0, m, CHUNK):
        q = slice(s, min(m, s + CHUNK))
        dist, table = index.knn(xy[rows[q]], kmax, workers=workers)
        dist, table = dist.reshape(len(dist), -1), table.reshape(len(table), -1)
        for k in ks:
            kk = min(k, n)
            idx = table[:, :kk]
            res = out[k]
            res["radius"][q] = dist[:, kk - 1]
            nb = xy[idx]                                          # [m, k, 2]
            c = nb - nb.mean(1, keepdims=True)
            sxx, syy = (c[..., 0] ** 2).mean(1), (c[..., 1] ** 2).mean(1)
            sxy = (c[..., 0] * c[..., 1]).mean(1)
            half = (sxx + syy) / 2
            disc = np.sqrt(np.maximum(half ** 2 - (sxx * syy - sxy ** 2), 0.0))
            l1, l2 = half + disc, np.maximum(half - disc, 0.0)
            res["linearity"][q] = np.where(l1 > 0, (l1 - l2) / np.where(l1 > 0, l1, 1.0), 0.0)
            zn = xyz[idx, 2]
            res["zstd"][q] = zn.std(1)
            res["zrel"][q] = xyz[rows[q], 2] - zn.mean(1)
    return out
