"""Exact neighbour search: k-nearest neighbours and capped radius search.

Both functions accept NumPy arrays or torch tensors and return the same kind they were given.

- NumPy path: ``scipy.spatial.cKDTree`` (one tree for all batch elements, moved apart;
  queried with ``workers=-1``).
- Torch path: an exact uniform-grid ("voxel hash") search that runs on the tensor's device,
  fully vectorised (no Python loop over points) and chunked to bound memory. No ``[N, N]``
  matrix is ever formed, so it scales to millions of points on a GPU.

Torch grid search, in short (``N`` points, ``M`` queries, cell size ``h``):

1. Every point gets an integer cell ``c = floor((p - o) / h)`` and a linear key
   ``key = ((b * Dx + cx) * Dy + cy) * Dz + cz`` (``b`` = batch element). Points are sorted by
   key and the occupied cells (``unique`` keys, start offset, count) are tabulated:
   ``O(N log N)`` time, ``O(N)`` memory.
2. For each query the 27 keys of its own cell and its 26 neighbours (same batch element) are
   looked up with ``searchsorted`` (``O(27 M log N)``). The candidates (all points in those
   cells) are expanded as a ragged list, their exact squared distances computed as
   ``sum((q - p)^2)`` (no ``|q|^2 - 2 q.p + |p|^2`` cancellation), and the per-query
   ``k`` best are selected with two stable sorts of the ragged list.
   Time ``O(C log C)`` with ``C = sum`` of candidates (about ``27 * occupancy`` per query);
   memory ``O(C_chunk)``: queries are processed in chunks whose candidate total is at most
   :data:`MAX_CANDIDATES` (2**23 on GPU, a few hundred MB of temporaries;
   :data:`MAX_CANDIDATES_CPU` = 2**20 on CPU).
3. Radius search uses ``h = radius``: the 3x3x3 block around the query cell contains the whole
   ball, so one pass is exact. k-NN starts from ``h0 = sqrt(k A / (pi N))`` (the k-NN radius of
   a surface of area ``A`` = product of the two largest bounding-box extents: airborne LiDAR is
   2.5-D) and certifies each query: the result is exact when the k-th distance is no larger
   than the distance from the query to the border of its 3x3x3 block (any point outside the
   block is farther). Uncertified queries (sparse areas, fewer than ``k`` points found) are
   searched again with ``h`` doubled, until all are certified or ``h`` exceeds the extent of
   the data (then the block covers everything and the result is exact by construction).

On the CPU, torch tensors are searched with ``cKDTree`` too (converted in and out; about 5x
faster there than the grid search, which is written for accelerators), unless
:data:`TORCH_CPU_GRID` is set (the tests use it to check the grid search on CPU).

Padding convention: missing neighbours get index ``len(points)`` (the "shadow" point, so
``points_padded = cat([points, any_row])`` can be gathered directly) and distance ``inf``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

try:  # torch is optional for the NumPy path
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = ["knn", "radius_neighbors", "NeighborIndex"]

#: Largest number of (query, candidate) pairs held in memory at once by the torch search on
#: an accelerator (a few hundred MB of temporaries) ...
MAX_CANDIDATES = 1 << 23
#: ... and on CPU, where smaller, cache-friendlier chunks are faster.
MAX_CANDIDATES_CPU = 1 << 20


#: Run the torch grid search for CPU tensors too (default: cKDTree for them).
TORCH_CPU_GRID = False


def _budget(device: "torch.device") -> int:
    return MAX_CANDIDATES_CPU if device.type == "cpu" else MAX_CANDIDATES
#: Offsets of the 27 cells of a 3x3x3 block, [27, 3].
_OFFSETS = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)


def _is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _grid_path(points: Any) -> bool:
    """True: search with the torch grid; False: cKDTree (NumPy input, or CPU tensors)."""
    return _is_torch(points) and (points.device.type != "cpu" or TORCH_CPU_GRID)


def _as_np(x: Any, dtype: Any = None) -> Any:
    if x is None:
        return None
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check(points: Any, queries: Any) -> None:
    if points.ndim != 2 or points.shape[1] != 3 or queries.ndim != 2 or queries.shape[1] != 3:
        raise ValueError(f"points and queries must be [N, 3] / [M, 3], got "
                         f"{tuple(points.shape)} and {tuple(queries.shape)}")
    if _is_torch(points) != _is_torch(queries):
        raise TypeError("points and queries must both be numpy arrays or both torch tensors")


def _check_batch(points: Any, queries: Any, points_batch: Any, queries_batch: Any) -> None:
    if (points_batch is None) != (queries_batch is None):
        raise ValueError("give both points_batch and queries_batch, or neither")
    if points_batch is not None:
        if len(points_batch) != len(points) or len(queries_batch) != len(queries):
            raise ValueError("batch vectors must have one entry per point / query")


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def knn(points: Any, queries: Any, k: int, *, points_batch: Any = None,
        queries_batch: Any = None) -> tuple[Any, Any]:
    """Exact k nearest neighbours of each query among ``points``.

    Args:
        points: ``[N, 3]`` float array or tensor.
        queries: ``[M, 3]`` same kind (and, for torch, same device) as ``points``.
        k: number of neighbours (>= 1).
        points_batch / queries_batch: optional ``[N]`` / ``[M]`` integer batch ids; a query
            only sees points with the same batch id. Need not be sorted.

    Returns:
        ``(dist [M, k], idx [M, k])``: Euclidean distances ascending and int64 indices into
        ``points``. When fewer than ``k`` points are available, the missing entries have
        ``idx = N`` (shadow) and ``dist = inf``. NumPy dist is float64; torch dist has the
        dtype of ``points``.
    """
    _check(points, queries)
    _check_batch(points, queries, points_batch, queries_batch)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if _grid_path(points):
        d2, idx = _torch_search(points, queries, k, None, points_batch, queries_batch)
        return d2.sqrt(), idx
    return _kdtree_search(points, queries, k, None, points_batch, queries_batch)


def radius_neighbors(points: Any, queries: Any, radius: float, max_neighbors: int, *,
                     points_batch: Any = None, queries_batch: Any = None) -> Any:
    """The up-to-``max_neighbors`` nearest points within ``radius`` of each query.

    A point ``p`` is within the radius when ``|p - q| <= radius`` (up to rounding).

    Args:
        points: ``[N, 3]``; queries: ``[M, 3]`` (NumPy arrays or torch tensors).
        radius: search radius (> 0).
        max_neighbors: cap on neighbours per query (the nearest ones are kept).
        points_batch / queries_batch: optional batch ids, as in :func:`knn`.

    Returns:
        ``idx [M, max_neighbors]`` int64, sorted by increasing distance, padded with ``N``.
    """
    _check(points, queries)
    _check_batch(points, queries, points_batch, queries_batch)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    max_neighbors = int(max_neighbors)
    if max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {max_neighbors}")
    if _grid_path(points):
        return _torch_search(points, queries, max_neighbors, float(radius), points_batch,
                             queries_batch)[1]
    return _kdtree_search(points, queries, max_neighbors, float(radius), points_batch, queries_batch)[1]


# ----------------------------------------------------------------------------------------------
# NumPy / cKDTree
# ----------------------------------------------------------------------------------------------

class NeighborIndex:
    """One k-d tree over ``[N, D]`` NumPy points, built once and queried many times: the
    neighbour search of :func:`knn` / :func:`radius_neighbors` for callers that ask several
    questions of the same points (feature scales, training regions, nearest reached point).

    ``balanced=False`` builds with the sliding-midpoint rule (about 1.5x faster to build; the
    same exact answers). Padding: missing neighbours get index ``N`` and distance ``inf``.
    """

    def __init__(self, points: np.ndarray, *, balanced: bool = True):
        self.points = np.asarray(points, dtype=np.float64)
        self.n = len(self.points)
        self.tree = cKDTree(self.points, balanced_tree=balanced)

    def knn(self, queries: np.ndarray, k: int, radius: float | None = None, workers: int = -1,
            n_total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(dist [M, k], idx [M, k])`` ascending; with ``radius`` only points within it
        (``|p - q| <= radius``). ``n_total`` replaces ``N`` as the padding index."""
        kw = {} if radius is None else {"distance_upper_bound": float(np.nextafter(radius, np.inf))}
        dist, idx = self.tree.query(queries, k=k, workers=workers, **kw)
        dist = np.asarray(dist, dtype=np.float64).reshape(len(queries), k)
        idx = np.asarray(idx, dtype=np.int64).reshape(len(queries), k)
        if n_total is not None:
            idx[idx >= self.n] = n_total
        return dist, idx

    def ball(self, queries: np.ndarray, radius: float, workers: int = -1) -> list[list[int]]:
        """For each query, the sorted indices of all points within ``radius`` (inclusive)."""
        return self.tree.query_ball_point(queries, float(np.nextafter(radius, np.inf)), workers=workers,
                                          return_sorted=True)


def _tree_query(index: NeighborIndex, queries: np.ndarray, k: int, radius: float | None,
                n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Query one index; returns ``[M, k]`` dist/idx padded with ``n_total``, inf."""
    return index.knn(queries, k, radius, n_total=n_total)


def _kdtree_search(points: Any, queries: Any, k: int, radius: float | None, points_batch: Any,
                   queries_batch: Any) -> tuple[Any, Any]:
    """:func:`_np_search` on arrays or (CPU) tensors; results of the input's kind (torch distances
    in the points' dtype)."""
    dist, idx = _np_search(_as_np(points, np.float64), _as_np(queries, np.float64), k, radius,
                           _as_np(points_batch), _as_np(queries_batch))
    if _is_torch(points):
        return torch.from_numpy(dist).to(points.dtype), torch.from_numpy(idx)
    return dist, idx


def _np_search(points: np.ndarray, queries: np.ndarray, k: int, radius: float | None,
               points_batch: Any, queries_batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """cKDTree search. Batches share one tree: batch ``b`` is moved by ``b * D`` along x, with
    ``D`` three times the data's extent (plus ``2 radius``), so a query's in-batch neighbours
    all come before any other batch's points; those are then cut (padding)."""
    n, m = len(points), len(queries)
    if n == 0:
        return np.full((m, k), np.inf), np.full((m, k), n, dtype=np.int64)
    if points_batch is None:
        return _tree_query(NeighborIndex(points), queries, k, radius, n)
    pb, qb = np.asarray(points_batch, np.int64), np.asarray(queries_batch, np.int64)
    lo = np.minimum(points.min(0), queries.min(0)) if m else points.min(0)
    hi = np.maximum(points.max(0), queries.max(0)) if m else points.max(0)
    step = 3.0 * float((hi - lo).max()) + 2.0 * (radius or 0.0) + 1.0
    p, q = points - lo, queries - lo
    p[:, 0] += pb * step
    q[:, 0] += qb * step
    dist, idx = _tree_query(NeighborIndex(p), q, k, radius, n)
    cross = (idx < n) & (pb[np.minimum(idx, n - 1)] != qb[:, None])
    idx[cross], dist[cross] = n, np.inf
    return dist, idx


# ----------------------------------------------------------------------------------------------
# torch / uniform grid
# ----------------------------------------------------------------------------------------------

class _Grid:
    """Points sorted by cell key, with the table of occupied cells (see module docstring)."""

    def __init__(self, points: "torch.Tensor", pb: "torch.Tensor", origin: "torch.Tensor",
                 h: float, dims: "torch.Tensor"):
        self.origin, self.h, self.dims = origin, h, dims
        key = self.keys(points, pb)
        self.key_sorted, self.order = torch.sort(key)
        self.cells, self.counts = torch.unique_consecutive(self.key_sorted, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def cell_of(self, x: "torch.Tensor") -> "torch.Tensor":
        """Integer cell coordinates ``[.., 3]``, shifted by +1 so that neighbours are >= 0."""
        c = torch.floor((x - self.origin) / self.h).to(torch.int64) + 1
        return torch.minimum(torch.clamp(c, min=0), self.dims - 1)

    def linear(self, c: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        d = self.dims
        return ((b * d[0] + c[..., 0]) * d[1] + c[..., 1]) * d[2] + c[..., 2]

    def keys(self, x: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        return self.linear(self.cell_of(x), b)


def _torch_search(points: "torch.Tensor", queries: "torch.Tensor", k: int, radius: float | None,
                  points_batch: Any, queries_batch: Any) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Exact grid search; returns squared distances ``[M, k]`` and indices ``[M, k]``."""
    if not points.is_floating_point():
        points = points.double()
    queries = queries.to(device=points.device, dtype=points.dtype)
    dev = points.device
    n, m = points.shape[0], queries.shape[0]
    out_d2 = torch.full((m, k), math.inf, dtype=points.dtype, device=dev)
    out_idx = torch.full((m, k), n, dtype=torch.int64, device=dev)
    if n == 0 or m == 0:
        return out_d2, out_idx
    if points_batch is None:
        pb = torch.zeros(n, dtype=torch.int64, device=dev)
        qb = torch.zeros(m, dtype=torch.int64, device=dev)
    else:
        pb = torch.as_tensor(points_batch, device=dev).long()
        qb = torch.as_tensor(queries_batch, device=dev).long()
        bmin = torch.minimum(pb.min(), qb.min())
        pb, qb = pb - bmin, qb - bmin
    nb = int(torch.maximum(pb.max(), qb.max()).item()) + 1

    allx = torch.cat([points, queries])
    lo = allx.min(0).values
    hi = allx.max(0).values
    ext = (hi - lo).double().cpu()
    extent = float(ext.max())
    # origin half a cell below the minimum keeps every coordinate well inside the grid
    if radius is not None:
        h = radius
    else:
        e = torch.sort(ext, descending=True).values
        area = max(float(e[0] * e[1]), extent ** 2 * 1e-6, 1e-12)
        h = max(math.sqrt(k * area / (math.pi * n)), extent * 1e-5, 1e-9)
    h = max(h, extent / 2e5, 1e-12)  # keeps the linear key within int64
    todo = torch.arange(m, device=dev)
    while todo.numel():
        dims_f = np.floor(ext.numpy() / h) + 4  # cells 0 .. floor(ext/h) shifted by +1, + margin
        if float(np.prod(dims_f)) * nb > 2 ** 62:
            h *= 2.0
            continue
        dims = torch.as_tensor(dims_f.astype(np.int64), device=dev)
        grid = _Grid(points, pb, lo, h, dims)
        covers_all = h >= extent  # every query's 3x3x3 block then covers the whole data
        d2, idx, ok = _grid_query(grid, points, queries, qb, todo, k, radius, n)
        if radius is not None or covers_all:
            ok = torch.ones_like(ok)
        done = todo[ok]
        out_d2[done], out_idx[done] = d2[ok], idx[ok]
        todo = todo[~ok]
        h *= 2.0
    return out_d2, out_idx


def _grid_query(grid: _Grid, points: "torch.Tensor", queries: "torch.Tensor",
                qb: "torch.Tensor", todo: "torch.Tensor", k: int, radius: float | None,
                n: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Search the 3x3x3 block of each query in ``todo``; returns (d2, idx, certified)."""
    dev = points.device
    t = todo.numel()
    res_d2 = torch.full((t, k), math.inf, dtype=points.dtype, device=dev)
    res_idx = torch.full((t, k), n, dtype=torch.int64, device=dev)
    offsets = torch.as_tensor(_OFFSETS, device=dev)
    r2 = None if radius is None else radius * radius
    budget = _budget(dev)
    q_chunk = max(1, min(t, budget // 27))
    for s in range(0, t, q_chunk):
        qi = todo[s:s + q_chunk]
        qc = grid.cell_of(queries[qi])                                     # [c, 3]
        nkeys = grid.linear(torch.minimum(torch.clamp(qc[:, None] + offsets, min=0),
                                          grid.dims - 1), qb[qi, None])    # [c, 27]
        pos = torch.searchsorted(grid.cells, nkeys).clamp_(max=grid.cells.numel() - 1)
        hit = grid.cells[pos] == nkeys
        cnt = torch.where(hit, grid.counts[pos], 0)                        # [c, 27]
        start = grid.starts[pos]
        per_q = cnt.sum(1)
        # split the chunk so that each piece has at most `budget` candidates
        cum = torch.cumsum(per_q, 0)
        bounds = [0]
        total = int(cum[-1].item())
        if total > budget:
            cuts = torch.searchsorted(cum, torch.arange(budget, total, budget, device=dev),
                                      right=True)
            bounds += [int(c) for c in cuts.tolist()]
        bounds.append(qi.numel())
        bounds = sorted(set(bounds))
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            d2, idx = _select(points, queries[qi[a:b]], cnt[a:b].reshape(-1),
                              start[a:b].reshape(-1), grid.order, k, r2, n)
            res_d2[s + a:s + b], res_idx[s + a:s + b] = d2, idx
    if radius is not None:
        return res_d2, res_idx, torch.ones(t, dtype=torch.bool, device=dev)
    # certification: k-th distance <= distance from the query to the border of its block
    q = queries[todo]
    c = grid.cell_of(q).to(q.dtype)  # shifted by +1: block spans cells c-1 .. c+1
    lo = grid.origin + (c - 1) * grid.h - grid.h  # lower corner of cell (c-1) (unshifted)
    hi = lo + 3 * grid.h
    margin = torch.minimum(q - lo, hi - q).min(1).values.clamp(min=0)
    ok = res_d2[:, -1] <= margin * margin
    return res_d2, res_idx, ok


def _select(points: "torch.Tensor", q: "torch.Tensor", cnt: "torch.Tensor", start: "torch.Tensor",
            order: "torch.Tensor", k: int, r2: float | None,
            n: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Candidate expansion + per-query top-k for ``c`` queries.

    ``cnt``/``start`` are ``[c * 27]`` (length and start, in the sorted point order, of the
    cells of each query's block). Queries are sorted by their candidate count and processed
    in groups, each as a dense ``[rows, width]`` candidate matrix (``width`` = largest count
    of the group, so sorting keeps the padding small) reduced with ``topk``.
    """
    dev = points.device
    c = q.shape[0]
    out_d2 = torch.full((c, k), math.inf, dtype=points.dtype, device=dev)
    out_idx = torch.full((c, k), n, dtype=torch.int64, device=dev)
    cnt = cnt.view(c, 27)
    start = start.view(c, 27)
    per_q = cnt.sum(1)
    qorder = torch.argsort(per_q)
    sorted_cnt = per_q[qorder].cpu()
    # groups of consecutive (sorted) queries with rows * width <= budget
    budget = _budget(dev)
    bounds, a = [], 0
    while a < c:
        w = max(int(sorted_cnt[min(c - 1, a + 255)]), 1)
        rows = max(256, budget // w)
        b = min(c, a + rows)
        w = max(int(sorted_cnt[b - 1]), 1)
        rows = max(1, budget // w)
        b = min(b, a + rows)
        bounds.append((a, b, w))
        a = b
    for a, b, w in bounds:
        qs = qorder[a:b]
        cc, ss, pq = cnt[qs].reshape(-1), start[qs].reshape(-1), per_q[qs]
        total = int(pq.sum().item())
        if total == 0:
            continue
        rows = b - a
        seg = torch.repeat_interleave(torch.arange(cc.numel(), device=dev), cc)   # [T]
        seg_off = torch.cumsum(cc, 0) - cc
        ar = torch.arange(total, device=dev)
        pid = order[ss[seg] + (ar - seg_off[seg])]                               # [T]
        qid = torch.div(seg, 27, rounding_mode="floor")
        qoff = torch.cumsum(pq, 0) - pq
        mat = torch.full((rows, w), n, dtype=torch.int64, device=dev)
        mat[qid, ar - qoff[qid]] = pid
        d2 = torch.full((rows, w), math.inf, dtype=points.dtype, device=dev)
        d2[qid, ar - qoff[qid]] = (q[qs][qid] - points[pid]).pow(2).sum(1)
        if r2 is not None:
            d2[d2 > r2] = math.inf
        kk = min(k, w)
        top_d2, top_pos = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
        top_idx = torch.gather(mat, 1, top_pos)
        top_idx[torch.isinf(top_d2)] = n
        out_d2[qs, :kk] = top_d2
        out_idx[qs, :kk] = top_idx
    return out_d2, out_idx
