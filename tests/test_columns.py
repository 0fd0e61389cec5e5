"""geometry.columns: vertical-column and plan-view features against plain loops, and their
place in compute_features."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from data.pointcloud import PointCloud
from geometry.columns import CELL_COLUMN_FEATURES, cell_column_features, plan_knn_features
from geometry.features import compute_features, feature_names


def _cloud(n=800, seed=0):
    rng = np.random.default_rng(seed)
    xyz = np.c_[rng.uniform(0, 9.3, (n, 2)) + [770500.0, 6277500.0], 30 + rng.exponential(3.0, n)]
    hag = rng.uniform(-0.2, 12.0, n)
    nr = rng.integers(1, 4, n).astype(np.uint8)
    return xyz, hag, nr


@pytest.mark.parametrize("cell", [1.0, 2.5])
def test_cell_columns_match_loop(cell):
    xyz, hag, nr = _cloud()
    xyz[5, 2] = xyz[6, 2]                      # equal z in one column: rank counts strictly lower points
    xyz[6, :2] = xyz[5, :2]
    got = cell_column_features(xyz, hag, cell, nr)
    assert set(got) == set(CELL_COLUMN_FEATURES)
    cells = defaultdict(list)
    for i, (x, y, _) in enumerate(xyz):
        cells[(math.floor(x / cell), math.floor(y / cell))].append(i)
    for members in cells.values():
        for i in members:
            below = sum(xyz[j, 2] < xyz[i, 2] for j in members)
            ties = [j for j in members if xyz[j, 2] == xyz[i, 2]]
            # equal z: the sort puts them in some order, so the rank is within the tied range
            lo, hi = below / max(len(members) - 1, 1), (below + len(ties) - 1) / max(len(members) - 1, 1)
            assert lo - 1e-6 <= got["rank"][i] <= hi + 1e-6
            assert got["ground_gap"][i] == pytest.approx(min(hag[j] for j in members), abs=1e-5)
            assert got["multi_return"][i] == pytest.approx(np.mean([nr[j] > 1 for j in members]), abs=1e-6)
    assert "multi_return" not in cell_column_features(xyz, hag, cell, None)


def test_plan_knn_matches_loop_and_reads_a_wall_as_a_line():
    rng = np.random.default_rng(1)
    xyz, _, _ = _cloud(400, seed=2)
    got = plan_knn_features(xyz, 12)
    xy = xyz[:, :2]
    for i in rng.choice(len(xyz), 25, replace=False):
        d = np.linalg.norm(xy - xy[i], axis=1)
        nb = np.argsort(d, kind="stable")[:12]
        l2, l1 = np.linalg.eigvalsh(np.cov(xy[nb].T, bias=True))
        assert got["linearity"][i] == pytest.approx((l1 - l2) / l1, abs=1e-5)
        assert got["zstd"][i] == pytest.approx(xyz[nb, 2].std(), abs=1e-4)
        assert got["zrel"][i] == pytest.approx(xyz[i, 2] - xyz[nb, 2].mean(), abs=1e-4)
        assert got["radius"][i] == pytest.approx(d[nb[-1]], abs=1e-6)
    # a wall (points along a line in plan, spread in z) against a crown (a disc in plan)
    t = rng.uniform(0, 10, 500)
    wall = np.c_[t, 0.02 * rng.normal(size=500), rng.uniform(0, 10, 500)]
    crown = np.c_[rng.normal(size=(500, 2)), rng.uniform(5, 10, 500)]
    assert np.median(plan_knn_features(wall, 16)["linearity"]) > 0.9
    assert np.median(plan_knn_features(crown, 16)["linearity"]) < 0.7


def test_compute_features_adds_columns_in_name_order():
    xyz, _, nr = _cloud(600, seed=3)
    cloud = PointCloud(xyz, {"number_of_returns": nr, "return_number": np.ones(600, np.uint8)})
    names, x = compute_features(cloud, k=(8,), height_cells=(2.0,), intensity=False, ground_cell=1.0,
                                column_cells=(2.0,), plan_k=(10,))
    assert names == feature_names(k=(8,), height_cells=(2.0,), intensity=False, ground_cell=1.0,
                                  column_cells=(2.0,), plan_k=(10,), fields=cloud.fields.keys())
    ref = cell_column_features(xyz, x[:, names.index("hag_ground")], 2.0, nr)
    np.testing.assert_allclose(x[:, names.index("col2.0_ground_gap")], ref["ground_gap"], atol=1e-6)
    np.testing.assert_allclose(x[:, names.index("xy10_linearity")], plan_knn_features(xyz, 10)["linearity"],
                               atol=1e-5)
    # without number_of_returns the multi-return column is left out, by name and by value
    bare = PointCloud(xyz, {})
    names2, x2 = compute_features(bare, k=(8,), height_cells=(), ground_cell=None, column_cells=(2.0,))
    assert "col2.0_multi_return" not in names2 and x2.shape == (600, len(names2))
