"""geometry.neighbors: knn / radius_neighbors (NumPy + torch) against brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import geometry.neighbors as nbmod
from geometry.neighbors import knn, radius_neighbors


def brute_knn(p, q, k, pb=None, qb=None):
    """Reference: full distance matrix, masked across batches, stable argsort."""
    d = np.linalg.norm(q[:, None] - p[None], axis=-1)
    if pb is not None:
        d[qb[:, None] != pb[None]] = np.inf
    o = np.argsort(d, axis=1, kind="stable")[:, :k]
    dd = np.take_along_axis(d, o, 1)
    o = np.where(np.isinf(dd), len(p), o)
    if o.shape[1] < k:
        pad = k - o.shape[1]
        o = np.concatenate([o, np.full((len(q), pad), len(p))], 1)
        dd = np.concatenate([dd, np.full((len(q), pad), np.inf)], 1)
    return dd, o


def brute_radius(p, q, r, kmax, pb=None, qb=None):
    dd, o = brute_knn(p, q, kmax, pb, qb)
    return np.where(dd <= r, o, len(p))


def as_t(x):
    return None if x is None else torch.from_numpy(np.asarray(x))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def grid_search_on_cpu(monkeypatch):
    """The torch tests below check the grid search (the GPU algorithm), here on CPU tensors."""
    monkeypatch.setattr(nbmod, "TORCH_CPU_GRID", True)


@pytest.mark.parametrize("batched", [False, True])
def test_cpu_tensors_use_the_kdtree_with_the_grid_results(rng, monkeypatch, batched):
    p = rng.uniform(0, 10, (3000, 3)).astype(np.float32)
    q = rng.uniform(0, 10, (500, 3)).astype(np.float32)
    pb, qb = (rng.integers(0, 3, 3000), rng.integers(0, 3, 500)) if batched else (None, None)
    grid_d, grid_i = knn(as_t(p), as_t(q), 8, points_batch=as_t(pb), queries_batch=as_t(qb))
    grid_r = radius_neighbors(as_t(p), as_t(q), 0.8, 12, points_batch=as_t(pb), queries_batch=as_t(qb))
    monkeypatch.setattr(nbmod, "TORCH_CPU_GRID", False)
    calls = []
    monkeypatch.setattr(nbmod, "_torch_search", lambda *a: calls.append(a))
    d, i = knn(as_t(p), as_t(q), 8, points_batch=as_t(pb), queries_batch=as_t(qb))
    r = radius_neighbors(as_t(p), as_t(q), 0.8, 12, points_batch=as_t(pb), queries_batch=as_t(qb))
    assert not calls                                              # cKDTree, not the grid
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and r.dtype == torch.int64
    torch.testing.assert_close(d, grid_d, rtol=1e-5, atol=1e-5)
    assert torch.equal(i, grid_i) and torch.equal(r, grid_r)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("n,m,k", [(500, 300, 16), (40, 60, 50), (1, 5, 3), (2000, 200, 1)])
def test_knn_matches_brute_force(rng, backend, n, m, k):
    p = rng.random((n, 3)) * [10, 10, 2]
    q = rng.random((m, 3)) * [12, 12, 3] - 1  # some queries outside the data
    dref, iref = brute_knn(p, q, k)
    if backend == "torch":
        d, i = knn(as_t(p), as_t(q), k)
        assert isinstance(d, torch.Tensor) and i.dtype == torch.int64
        d, i = d.numpy(), i.numpy()
    else:
        d, i = knn(p, q, k)
    assert d.shape == (m, k) and i.shape == (m, k)
    np.testing.assert_array_equal(i, iref)
    np.testing.assert_allclose(d, dref, rtol=1e-10)
    if k > n:  # padding with the shadow index and inf
        assert (i[:, n:] == n).all() and np.isinf(d[:, n:]).all()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_knn_batched_never_crosses(rng, backend):
    # three batch elements that overlap in space, unsorted batch ids, one with only 3 points
    n, m, k = 600, 300, 8
    p = rng.random((n, 3))
    q = rng.random((m, 3))
    pb = rng.integers(0, 3, n)
    pb[pb == 2] = 0
    pb[rng.choice(n, 3, replace=False)] = 2
    qb = rng.integers(0, 3, m)
    dref, iref = brute_knn(p, q, k, pb, qb)
    if backend == "torch":
        d, i = knn(as_t(p), as_t(q), k, points_batch=as_t(pb), queries_batch=as_t(qb))
        d, i = d.numpy(), i.numpy()
    else:
        d, i = knn(p, q, k, points_batch=pb, queries_batch=qb)
    np.testing.assert_array_equal(i, iref)
    np.testing.assert_allclose(d, dref, rtol=1e-10)
    valid = i < n
    assert (pb[np.where(valid, i, 0)][valid] == np.broadcast_to(qb[:, None], i.shape)[valid]).all()
    assert ((i == n).sum(1)[qb == 2] == k - 3).all()


def test_knn_torch_sparse_and_clustered(rng):
    """Very uneven density (forces several grid refinement rounds) and duplicate points."""
    dense = rng.normal(size=(1500, 3)) * 0.01
    far = rng.random((30, 3)) * 1000
    dup = np.repeat(rng.random((1, 3)), 20, 0)
    p = np.concatenate([dense, far, dup])
    q = np.concatenate([far[:10] + 1, dense[:50], rng.random((20, 3)) * 1000])
    dref, _ = brute_knn(p, q, 12)
    d, i = knn(as_t(p), as_t(q), 12)
    np.testing.assert_allclose(d.numpy(), dref, rtol=1e-10)
    # returned indices really are at the returned distances
    np.testing.assert_allclose(np.linalg.norm(p[i.numpy()] - q[:, None], axis=-1), dref, rtol=1e-10)


def test_knn_torch_chunking(rng, monkeypatch):
    """Tiny candidate budget: results must not change when work is split into many chunks."""
    p = rng.random((800, 3))
    q = rng.random((400, 3))
    d0, i0 = knn(as_t(p), as_t(q), 10)
    monkeypatch.setattr(nbmod, "MAX_CANDIDATES", 300)
    monkeypatch.setattr(nbmod, "MAX_CANDIDATES_CPU", 300)
    d1, i1 = knn(as_t(p), as_t(q), 10)
    assert torch.equal(i0, i1) and torch.equal(d0, d1)
    np.testing.assert_array_equal(i1.numpy(), brute_knn(p, q, 10)[1])


def test_knn_float32_torch(rng):
    p = rng.random((1000, 3)).astype(np.float32) * 50
    d, i = knn(as_t(p), as_t(p), 6)
    assert d.dtype == torch.float32
    dref, _ = brute_knn(p.astype(np.float64), p.astype(np.float64), 6)
    np.testing.assert_allclose(d.numpy(), dref, rtol=1e-4, atol=1e-5)
    assert (i[:, 0].numpy() == np.arange(1000)).mean() > 0.99  # self is the nearest


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("batched", [False, True])
def test_radius_matches_brute_force(rng, backend, batched):
    n, m, r, kmax = 1500, 400, 0.12, 10
    p = rng.random((n, 3))
    q = rng.random((m, 3)) * 1.1 - 0.05
    pb = rng.integers(0, 2, n) if batched else None
    qb = rng.integers(0, 2, m) if batched else None
    ref = brute_radius(p, q, r, kmax, pb, qb)
    if backend == "torch":
        idx = radius_neighbors(as_t(p), as_t(q), r, kmax, points_batch=as_t(pb),
                               queries_batch=as_t(qb)).numpy()
    else:
        idx = radius_neighbors(p, q, r, kmax, points_batch=pb, queries_batch=qb)
    assert idx.shape == (m, kmax) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref)
    # capped: some queries have more than kmax points in the ball, some fewer
    full = (np.linalg.norm(q[:, None] - p[None], axis=-1) <= r).sum(1)
    if not batched:
        assert (full > kmax).any() and (full < kmax).any()
    # sorted by distance, shadow only at the end
    pp = np.concatenate([p, np.full((1, 3), 1e6)])
    d = np.linalg.norm(pp[idx] - q[:, None], axis=-1)
    assert (np.diff(d, axis=1) >= 0).all()
    assert ((d <= r) | (idx == n)).all()


def test_empty_and_errors(rng):
    p = rng.random((10, 3))
    d, i = knn(p[:0], p, 3)
    assert (i == 0).all() and np.isinf(d).all()
    d, i = knn(as_t(p[:0]), as_t(p), 3)
    assert (i == 0).all() and torch.isinf(d).all()
    with pytest.raises(ValueError):
        knn(p, p, 0)
    with pytest.raises(ValueError):
        radius_neighbors(p, p, -1.0, 4)
    with pytest.raises(TypeError):
        knn(p, as_t(p), 2)
    with pytest.raises(ValueError):
        knn(p, p, 2, points_batch=np.zeros(10, int))
