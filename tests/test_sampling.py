"""geometry.sampling: grid_subsample and farthest_point_sample against loop references."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from geometry.sampling import farthest_point_sample, grid_representatives, grid_subsample


def grid_reference(points, cell, features, labels, batch):
    """Plain-Python reference: dict keyed by (batch, ix, iy, iz)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        key = (int(batch[i]),) + tuple(int(v) for v in np.floor(p / cell))
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    inv = np.empty(len(points), np.int64)
    pts, feats, labs = [], [], []
    for r, key in enumerate(keys):
        members = groups[key]
        inv[members] = r
        pts.append(points[members].mean(0))
        feats.append(features[members].mean(0))
        counts = Counter(int(labels[j]) for j in members)
        best = max(counts.values())
        labs.append(min(l for l, c in counts.items() if c == best))
    return dict(points=np.array(pts), features=np.array(feats), labels=np.array(labs),
                batch=np.array([k[0] for k in keys]), inverse=inv)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    n = 3000
    pts = rng.random((n, 3)) * [4, 4, 1] - [2, 2, 0]  # negative coordinates too
    feats = rng.normal(size=(n, 4))
    labels = rng.integers(-1, 4, n)  # includes an ignore label -1, many ties in small cells
    batch = rng.integers(0, 3, n)
    return pts, feats, labels, batch


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_grid_subsample_matches_loop(data, backend):
    pts, feats, labels, batch = data
    ref = grid_reference(pts, 0.5, feats, labels, batch)
    if backend == "torch":
        out = grid_subsample(torch.from_numpy(pts), 0.5, features=torch.from_numpy(feats),
                             labels=torch.from_numpy(labels), batch=torch.from_numpy(batch))
        out = {k: v.numpy() for k, v in out.items()}
    else:
        out = grid_subsample(pts, 0.5, features=feats, labels=labels, batch=batch)
    np.testing.assert_allclose(out["points"], ref["points"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["features"], ref["features"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out["labels"], ref["labels"])
    np.testing.assert_array_equal(out["batch"], ref["batch"])
    np.testing.assert_array_equal(out["inverse"], ref["inverse"])
    np.testing.assert_array_equal(out["counts"], np.bincount(ref["inverse"]))
    # batch separation: every output point's members share its batch id
    assert (out["batch"][out["inverse"]] == batch).all()


def test_grid_subsample_numpy_equals_torch(data):
    pts, feats, labels, batch = data
    a = grid_subsample(pts, 0.3, features=feats, labels=labels, batch=batch, num_classes=4)
    b = grid_subsample(torch.from_numpy(pts), 0.3, features=torch.from_numpy(feats),
                       labels=torch.from_numpy(labels), batch=torch.from_numpy(batch),
                       num_classes=4)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key].numpy(), rtol=1e-12, atol=1e-12)
    assert a["label_counts"].shape == (len(a["points"]), 4)
    assert a["label_counts"].sum() == (labels >= 0).sum()


def test_grid_subsample_alignment_and_no_batch():
    # cells aligned to multiples of cell_size: 0.9 and 1.1 fall in different cells of size 1
    pts = np.array([[0.9, 0, 0], [1.1, 0, 0], [0.1, 0, 0], [-0.1, 0, 0]])
    out = grid_subsample(pts, 1.0, labels=np.array([5, 2, 2, 7]))
    np.testing.assert_allclose(out["points"][:, 0], [-0.1, 0.5, 1.1])
    np.testing.assert_array_equal(out["inverse"], [1, 2, 1, 0])
    np.testing.assert_array_equal(out["labels"], [7, 2, 2])  # tie 5 vs 2 -> 2
    np.testing.assert_array_equal(out["batch"], [0, 0, 0])
    t = grid_subsample(torch.from_numpy(pts).float(), 1.0)
    assert t["points"].dtype == torch.float32 and t["points"].shape == (3, 3)
    with pytest.raises(ValueError):
        grid_subsample(pts, 0.0)


def fps_reference(p, n, start):
    idx = [start]
    mind = np.full(len(p), np.inf)
    for _ in range(n - 1):
        for j in range(len(p)):
            mind[j] = min(mind[j], float(((p[j] - p[idx[-1]]) ** 2).sum()))
        idx.append(int(np.argmax(mind)))
    return np.array(idx)


def test_grid_representatives_match_loop(data):
    """Each cell's representative is its point nearest the cell's barycentre (lowest index on a
    tie), cells in grid_subsample's order; inverse maps every point to its cell."""
    pts = data[0]
    pts[1] = pts[0]                              # an exact duplicate: the tie goes to index 0
    ref = grid_reference(pts, 0.5, data[1], data[2], np.zeros(len(pts), np.int64))
    rows, inverse = grid_representatives(pts, 0.5)
    np.testing.assert_array_equal(inverse, ref["inverse"])
    want = []
    for cell in range(len(ref["points"])):
        members = np.flatnonzero(ref["inverse"] == cell)
        d2 = ((pts[members] - ref["points"][cell]) ** 2).sum(1)
        want.append(members[np.flatnonzero(d2 == d2.min())[0]])
    np.testing.assert_array_equal(rows, want)
    assert 1 not in set(rows.tolist()) or 0 not in set(rows.tolist())
    np.testing.assert_array_equal(inverse[rows], np.arange(len(rows)))   # each represents its own cell


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fps_matches_loop(backend):
    rng = np.random.default_rng(3)
    p = rng.random((300, 3))
    ref = fps_reference(p, 40, 7)
    if backend == "torch":
        got = farthest_point_sample(torch.from_numpy(p), 40, start_index=7).numpy()
    else:
        got = farthest_point_sample(p, 40, start_index=7)
    np.testing.assert_array_equal(got, ref)
    assert len(set(got.tolist())) == 40


def test_fps_edge_cases():
    p = np.random.default_rng(0).random((5, 3))
    assert sorted(farthest_point_sample(p, 5).tolist()) == [0, 1, 2, 3, 4]
    assert farthest_point_sample(p, 0).shape == (0,)
    with pytest.raises(ValueError):
        farthest_point_sample(p, 6)
