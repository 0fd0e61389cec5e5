"""Point subsampling: grid (voxel) barycentre subsampling and farthest point sampling.

Both functions accept NumPy arrays or torch tensors and return the same kind (torch outputs on
the input's device). Everything is vectorised over points.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .grids import unique_rows

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = ["grid_subsample", "grid_representatives", "farthest_point_sample"]


def _is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


# ----------------------------------------------------------------------------------------------
# grid subsampling
# ----------------------------------------------------------------------------------------------

def grid_subsample(points: Any, cell_size: float, *, features: Any = None, labels: Any = None,
                   batch: Any = None, num_classes: int | None = None) -> dict[str, Any]:
    """Keep one point per occupied grid cell: the barycentre of the cell's points.

    Cells are aligned to multiples of ``cell_size``: point ``p`` lies in cell
    ``floor(p / cell_size)`` (per axis), separately for every batch element.

    Args:
        points: ``[N, 3]`` float array/tensor.
        cell_size: cell edge length (> 0).
        features: optional ``[N, C]`` (or ``[N]``) float values, averaged per cell.
        labels: optional ``[N]`` integer labels; the output label is the most frequent label of
            the cell, ties broken towards the smallest label.
        batch: optional ``[N]`` integer batch ids; cells never mix batch elements.
        num_classes: when given, also return ``'label_counts'`` ``[M, num_classes]`` (int64
            histogram of the labels in ``[0, num_classes)`` of each cell; other labels are
            not counted there but still take part in the majority vote).

    Returns:
        dict with ``'points'`` ``[M, 3]`` (barycentres, dtype of ``points``), ``'inverse'``
        ``[N]`` int64 (output row of each input point), ``'counts'`` ``[M]`` int64,
        ``'batch'`` ``[M]`` int64 (zeros without ``batch``), and ``'features'`` ``[M, C]``,
        ``'labels'`` ``[M]``, ``'label_counts'`` when requested. Output rows are sorted by
        batch id, then by cell ``(ix, iy, iz)`` lexicographically (deterministic).
    """
    if not cell_size > 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    for name, v in (("features", features), ("labels", labels), ("batch", batch)):
        if v is not None and len(v) != len(points):
            raise ValueError(f"{name} has {len(v)} rows for {len(points)} points")
    if _is_torch(points):
        return _grid_torch(points, float(cell_size), features, labels, batch, num_classes)
    return _grid_numpy(np.asarray(points), float(cell_size), features, labels, batch, num_classes)


def _grid_numpy(points: np.ndarray, cell_size: float, features: Any, labels: Any, batch: Any,
                num_classes: int | None) -> dict[str, np.ndarray]:
    n = len(points)
    b = np.zeros(n, np.int64) if batch is None else np.asarray(batch).astype(np.int64)
    cells = np.floor(points / cell_size).astype(np.int64)
    if n == 0:
        inv = np.zeros(0, np.int64)
        ub = np.zeros(0, np.int64)
    else:
        urows, inv = unique_rows(np.concatenate([b[:, None], cells], 1))   # (batch, ix, iy, iz) order
        ub = urows[:, 0]
    m = len(ub)
    counts = np.bincount(inv, minlength=m).astype(np.int64)
    pts = np.stack([np.bincount(inv, weights=points[:, j].astype(np.float64), minlength=m)
                    for j in range(3)], 1) / np.maximum(counts, 1)[:, None]
    out: dict[str, np.ndarray] = {"points": pts.astype(points.dtype, copy=False), "inverse": inv,
                                  "counts": counts, "batch": ub.astype(np.int64)}
    if features is not None:
        f = np.asarray(features)
        f2 = f.reshape(n, -1).astype(np.float64)
        # one bincount per feature column (loop over columns, vectorised over points)
        mean = np.stack([np.bincount(inv, weights=f2[:, j], minlength=m)
                         for j in range(f2.shape[1])], 1).reshape(m, -1)
        mean /= np.maximum(counts, 1)[:, None]
        dtype = f.dtype if np.issubdtype(f.dtype, np.floating) else np.float64
        out["features"] = mean.reshape((m,) + f.shape[1:]).astype(dtype, copy=False)
    if labels is not None:
        lab = np.asarray(labels).astype(np.int64)
        out["labels"] = _majority_numpy(inv, lab, m).astype(np.asarray(labels).dtype, copy=False)
        if num_classes is not None:
            ok = (lab >= 0) & (lab < num_classes)
            out["label_counts"] = np.bincount(inv[ok] * num_classes + lab[ok],
                                              minlength=m * num_classes).reshape(m, num_classes)
    return out


def grid_representatives(points: np.ndarray, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """One input point per occupied grid cell (cells as :func:`grid_subsample`'s, aligned to
    multiples of ``cell_size``): the point nearest its cell's barycentre, ties to the lowest index.

    Args:
        points: ``[N, 3]`` NumPy array.
        cell_size: cell edge length (> 0).

    Returns:
        ``(rows [M] int64, inverse [N] int64)``: ``points[rows[j]]`` represents cell ``j``
        (cells in :func:`grid_subsample`'s order) and ``rows[inverse[i]]`` is point ``i``'s
        representative, so ``values[inverse]`` gives every point its cell's value.
    """
    points = np.asarray(points)
    grid = grid_subsample(points, cell_size)
    inverse = grid["inverse"]
    m = len(grid["points"])
    d2 = ((points - grid["points"][inverse]) ** 2).sum(1)
    nearest = np.full(m, np.inf)                     # per cell: min d2, then the lowest row at it
    np.minimum.at(nearest, inverse, d2)
    tied = np.flatnonzero(d2 == nearest[inverse])
    rows = np.full(m, len(points), np.int64)
    np.minimum.at(rows, inverse[tied], tied)
    return rows, inverse


def _majority_numpy(inv: np.ndarray, lab: np.ndarray, m: int) -> np.ndarray:
    """Most frequent label per group (ties -> smallest label); ``O(N log N)``, any label range."""
    if m == 0:
        return np.zeros(0, np.int64)
    lmin = lab.min()
    c = int(lab.max() - lmin) + 1
    pair, pcount = np.unique(inv * c + (lab - lmin), return_counts=True)  # sorted by (group, label)
    g, l = pair // c, pair % c
    # within each group: highest count first, then smallest label (stable on sorted labels)
    o = np.lexsort((l, -pcount, g))
    first = np.ones(len(o), bool)
    first[1:] = g[o][1:] != g[o][:-1]
    res = np.empty(m, np.int64)
    res[g[o][first]] = l[o][first] + lmin
    return res


def _grid_torch(points: "torch.Tensor", cell_size: float, features: Any, labels: Any, batch: Any,
                num_classes: int | None) -> dict[str, "torch.Tensor"]:
    dev = points.device
    n = points.shape[0]
    b = (torch.zeros(n, dtype=torch.int64, device=dev) if batch is None
         else torch.as_tensor(batch, device=dev).long())
    cells = torch.floor(points / cell_size).long()
    if n == 0:
        inv = torch.zeros(0, dtype=torch.int64, device=dev)
        ub = torch.zeros(0, dtype=torch.int64, device=dev)
    else:
        cols = torch.cat([b[:, None], cells], 1)
        cmin = cols.min(0).values
        cols = cols - cmin
        dims = cols.max(0).values + 1
        dims_c = dims.cpu().double()
        if float(torch.prod(dims_c)) < 2 ** 62:
            key = ((cols[:, 0] * dims[1] + cols[:, 1]) * dims[2] + cols[:, 2]) * dims[3] + cols[:, 3]
            uk, inv = torch.unique(key, sorted=True, return_inverse=True)
            ub = torch.div(uk, dims[1] * dims[2] * dims[3], rounding_mode="floor") + cmin[0]
        else:
            urows, inv = torch.unique(cols, dim=0, sorted=True, return_inverse=True)
            ub = urows[:, 0] + cmin[0]
    m = ub.shape[0]
    counts = torch.bincount(inv, minlength=m)
    acc_dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    pts = torch.zeros((m, 3), dtype=acc_dtype, device=dev).index_add_(0, inv, points.to(acc_dtype))
    pts = pts / counts.clamp(min=1)[:, None].to(acc_dtype)
    out = {"points": pts.to(points.dtype), "inverse": inv, "counts": counts, "batch": ub}
    if features is not None:
        f = torch.as_tensor(features, device=dev)
        fdt = f.dtype if f.is_floating_point() else torch.float32
        f2 = f.reshape(n, -1).to(fdt)
        mean = torch.zeros((m, f2.shape[1]), dtype=fdt, device=dev).index_add_(0, inv, f2)
        mean = mean / counts.clamp(min=1)[:, None].to(fdt)
        out["features"] = mean.reshape((m,) + tuple(f.shape[1:]))
    if labels is not None:
        lab_in = torch.as_tensor(labels, device=dev)
        lab = lab_in.long()
        out["labels"] = _majority_torch(inv, lab, m).to(lab_in.dtype)
        if num_classes is not None:
            ok = (lab >= 0) & (lab < num_classes)
            out["label_counts"] = torch.bincount(inv[ok] * num_classes + lab[ok],
                                                 minlength=m * num_classes).view(m, num_classes)
    return out


def _majority_torch(inv: "torch.Tensor", lab: "torch.Tensor", m: int) -> "torch.Tensor":
    """Torch twin of :func:`_majority_numpy` via ``scatter_reduce(amax)`` on a packed score."""
    if m == 0:
        return torch.zeros(0, dtype=torch.int64, device=lab.device)
    lmin = lab.min()
    c = int((lab.max() - lmin).item()) + 1
    pair, pcount = torch.unique(inv * c + (lab - lmin), return_counts=True)
    g, l = torch.div(pair, c, rounding_mode="floor"), pair % c
    score = pcount * c + (c - 1 - l)  # larger count wins, then smaller label
    best = torch.full((m,), -1, dtype=torch.int64, device=lab.device)
    best = best.scatter_reduce(0, g, score, reduce="amax")
    return (c - 1 - best % c) + lmin


# ----------------------------------------------------------------------------------------------
# farthest point sampling
# ----------------------------------------------------------------------------------------------

def farthest_point_sample(points: Any, n_samples: int, *, start_index: int = 0) -> Any:
    """Exact farthest point sampling.

    ``idx[0] = start_index``; then ``idx[i] = argmax_j min_{l<i} |p_j - p_{idx[l]}|^2`` (first
    index on ties). ``O(n_samples * N)`` time, ``O(N)`` memory; the loop runs over samples,
    each step vectorised over points (on the tensor's device, without host syncs).

    Args:
        points: ``[N, D]`` array/tensor (usually D = 3).
        n_samples: number of samples, ``0 <= n_samples <= N``.
        start_index: index of the first sample.

    Returns:
        ``idx [n_samples]`` int64 (numpy array or tensor on the input's device).
    """
    n = points.shape[0]
    n_samples = int(n_samples)
    if not 0 <= n_samples <= n:
        raise ValueError(f"n_samples must be in [0, {n}], got {n_samples}")
    if n_samples and not 0 <= start_index < n:
        raise ValueError(f"start_index must be in [0, {n}), got {start_index}")
    if _is_torch(points):
        dev = points.device
        p = points if points.is_floating_point() else points.double()
        idx = torch.empty(n_samples, dtype=torch.int64, device=dev)
        if n_samples == 0:
            return idx
        mind = torch.full((n,), float("inf"), dtype=p.dtype, device=dev)
        cur = torch.tensor(start_index, dtype=torch.int64, device=dev)
        for i in range(n_samples):
            idx[i] = cur
            d = (p - p[cur]).pow(2).sum(1)
            torch.minimum(mind, d, out=mind)
            cur = torch.argmax(mind)
        return idx
    p = np.asarray(points)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    idx = np.empty(n_samples, np.int64)
    if n_samples == 0:
        return idx
    mind = np.full(n, np.inf, dtype=p.dtype)
    cur = int(start_index)
    for i in range(n_samples):
        idx[i] = cur
        d = ((p - p[cur]) ** 2).sum(1)
        np.minimum(mind, d, out=mind)
        cur = int(np.argmax(mind))
    return idx
