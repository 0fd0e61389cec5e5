"""geometry.grids: rasters and voxels against plain-loop references (alignment, stats, labels, mask)."""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from geometry.grids import Grid2D, cell_aggregate, ground_estimate, rasterize, voxelize


def _cloud(n=3000, seed=0, origin=(770503.3, 6277541.7)):
    rng = np.random.default_rng(seed)
    xy = np.asarray(origin) + rng.uniform(0, 13.7, (n, 2))
    z = 30 + 0.2 * xy[:, 0] % 1 + rng.exponential(2.0, n)
    xyz = np.c_[xy, z]
    fields = {"intensity": rng.integers(0, 4000, n).astype(np.uint16),
              "number_of_returns": rng.integers(1, 4, n).astype(np.uint8)}
    labels = rng.integers(-1, 4, n)          # -1 = ignored code
    return xyz, fields, labels


def _loop_cells(xyz, s):
    return [(math.floor(x / s), math.floor(y / s)) for x, y, _ in xyz]


def _loop_ground(xyz, s, window):
    cells = _loop_cells(xyz, s)
    zmin = {}
    for (i, j), z in zip(cells, xyz[:, 2]):
        zmin[(i, j)] = min(zmin.get((i, j), np.inf), z)
    half = max(1, int(round(window / s)) | 1) // 2
    out = []
    for (i, j) in cells:
        out.append(min(zmin.get((i + di, j + dj), np.inf)
                       for di in range(-half, half + 1) for dj in range(-half, half + 1)))
    return np.array(out)


def _loop_label(items, rule):
    """items: (z, label, input order) of one cell."""
    ok = [(z, lab, k) for z, lab, k in items if lab >= 0]
    if not ok:
        return -1
    if rule == "majority":
        c = Counter(lab for _, lab, _ in ok)
        best = max(c.values())
        return min(lab for lab, v in c.items() if v == best)
    return max(ok, key=lambda t: (t[0], t[2]))[1]


@pytest.mark.parametrize("cell", [1.0, 2.5])
@pytest.mark.parametrize("rule", ["majority", "top"])
def test_raster_matches_loop_reference(cell, rule):
    xyz, fields, labels = _cloud()
    r = rasterize(xyz, fields, cell, labels=labels, label_rule=rule, ground_window=5.0)
    g = r.grid
    # alignment: origin and top edge are whole multiples of the cell size
    a, _, c, _, e, f = g.transform
    assert a == cell and e == -cell
    assert c / cell == pytest.approx(round(c / cell)) and f / cell == pytest.approx(round(f / cell))
    assert c <= xyz[:, 0].min() < c + cell and f - cell <= xyz[:, 1].max() < f
    assert c + g.cols * cell > xyz[:, 0].max() and f - g.rows * cell <= xyz[:, 1].min()

    ground = _loop_ground(xyz, cell, 5.0)
    hag = xyz[:, 2] - ground
    np.testing.assert_allclose(r.hag, hag, rtol=0, atol=1e-4)
    per = defaultdict(list)
    for k, ((i, j), h) in enumerate(zip(_loop_cells(xyz, cell), hag)):
        row, col = g.row_top - j, i - g.col0
        assert r.point_cell[k] == row * g.cols + col
        per[(row, col)].append(k)
    names = r.feature_names
    assert names == ["hag_min", "hag_max", "hag_mean", "count", "intensity", "multi_return"]
    for row in range(g.rows):
        for col in range(g.cols):
            ks = per.get((row, col), [])
            feats = r.features[row, col]
            assert r.mask[row, col] == bool(ks)
            if not ks:
                assert feats[names.index("count")] == 0
                assert np.isnan(feats[[0, 1, 2, 4, 5]]).all()      # masked, not silently zero
                assert r.labels[row, col] == -1
                continue
            h = hag[ks]
            np.testing.assert_allclose(feats[:3], [h.min(), h.max(), h.mean()], atol=1e-4)
            assert feats[3] == len(ks)
            assert feats[4] == pytest.approx(fields["intensity"][ks].astype(float).mean(), rel=1e-6)
            assert feats[5] == pytest.approx((fields["number_of_returns"][ks] > 1).mean(), rel=1e-6)
            assert r.labels[row, col] == _loop_label([(xyz[k, 2], labels[k], k) for k in ks], rule)


def test_raster_ignored_only_cell_and_explicit_grid():
    xyz = np.array([[0.2, 0.2, 1.0], [0.7, 0.4, 5.0], [1.5, 0.5, 2.0], [1.6, 0.6, 9.0], [3.5, 1.5, 4.0]])
    labels = np.array([2, 1, -1, -1, 0])
    r = rasterize(xyz, None, 1.0, labels=labels, label_rule="top")
    assert r.grid.shape == (2, 4) and r.feature_names == ["hag_min", "hag_max", "hag_mean", "count"]
    assert r.labels.tolist() == [[-1, -1, -1, 0], [1, -1, -1, -1]]  # ignored-only cell (row 1, col 1) -> -1
    assert r.mask.tolist() == [[False, False, False, True], [True, True, False, False]]
    assert rasterize(xyz, None, 1.0, labels=labels).labels[1, 0] == 1   # majority tie 2 vs 1 -> lowest
    big = Grid2D(1.0, -2, 3, 6, 8)
    r2 = rasterize(xyz, None, grid=big)
    assert r2.features.shape == (6, 8, 4) and r2.mask.sum() == 3 and r2.mask[2 + 1, 2 + 1]
    with pytest.raises(ValueError):
        rasterize(xyz, None, grid=Grid2D(1.0, 1, 1, 2, 2))


def test_negative_coordinates_align_to_floor():
    xyz = np.array([[-0.5, -0.5, 0.0], [-2.1, 3.2, 1.0]])
    g = rasterize(xyz, None, 2.0).grid
    assert g.col0 == -2 and g.row_top == 1 and g.transform[2] == -4.0 and g.transform[5] == 4.0


@pytest.mark.parametrize("vertical", ["ground", "absolute"])
def test_voxels_match_loop_reference(vertical):
    xyz, fields, labels = _cloud(n=2000, seed=1)
    levels = 5 if vertical == "ground" else None
    v = voxelize(xyz, fields, 2.0, 1.5, levels, vertical=vertical, labels=labels, label_rule="majority",
                 ground_window=4.0)
    g = v.grid
    ground = _loop_ground(xyz, 2.0, 4.0)
    if vertical == "ground":
        lev = np.clip(np.floor((xyz[:, 2] - ground) / 1.5).astype(int), 0, 4)
        assert v.levels == 5 and v.level0 == 0
    else:
        k = np.floor(xyz[:, 2] / 1.5).astype(int)
        lev = k - k.min()
        assert v.level0 == k.min() and v.levels == lev.max() + 1
    per = defaultdict(list)
    for k, (i, j) in enumerate(_loop_cells(xyz, 2.0)):
        key = (g.row_top - j, i - g.col0, lev[k])
        assert v.point_voxel[k] == (key[0] * g.cols + key[1]) * v.levels + key[2]
        per[key].append(k)
    assert v.occupancy.sum() == len(per)
    assert v.feature_names == ["count", "hag_mean", "intensity", "multi_return"]
    hag = xyz[:, 2] - ground
    for idx in np.ndindex(*v.shape):
        ks = per.get(idx, [])
        f = v.features[idx]
        assert v.occupancy[idx] == bool(ks) and f[0] == len(ks)
        if not ks:
            assert np.isnan(f[1:]).all() and v.labels[idx] == -1
            continue
        assert f[1] == pytest.approx(hag[ks].mean(), abs=1e-4)
        assert f[2] == pytest.approx(fields["intensity"][ks].astype(float).mean(), rel=1e-6)
        assert v.labels[idx] == _loop_label([(xyz[k, 2], labels[k], k) for k in ks], "majority")


def test_cell_aggregate_top_tie_takes_later_point_and_ground_window():
    keys = np.array([0, 0, 0, 2])
    z = np.array([5.0, 5.0, 1.0, 3.0])
    out = cell_aggregate(keys, 3, z, {}, labels=np.array([1, 3, 0, -1]), label_rule="top")
    assert out["labels"].tolist() == [3, -1, -1] and out["count"].tolist() == [3, 0, 1]
    g = Grid2D(1.0, 0, 0, 1, 5)
    cells, z = np.array([0, 2, 4]), np.array([1.0, 5.0, 3.0])
    assert ground_estimate(g, cells, z, window=3.0).tolist() == [1.0, 5.0, 3.0]   # cell 2 sees cells 1..3
    assert ground_estimate(g, cells, z, window=5.0).tolist() == [1.0, 1.0, 3.0]   # cell 2 sees cells 0..4


def test_adjacent_tiles_mosaic_without_overlap(lidar_data):
    """Half-open cells, the grid's upper edge closed: the four adjacent 50 m test tiles give
    rasters that abut exactly (points on a tile's east/north edge stay in its last cell)."""
    from data.io import read_cloud

    grids = {}
    for name in ("77050_627755", "77055_627755", "77050_627760", "77055_627760"):
        cloud = read_cloud(lidar_data / f"ign_lidarhd/test/test_data_{name}_LA93_IGN69.laz")
        grids[name] = r = rasterize(cloud.xyz, cell_size=1.0)
        assert r.mask.reshape(-1)[r.point_cell].all() and r.point_cell.max() < r.grid.rows * r.grid.cols
    west, east = grids["77050_627760"].grid, grids["77055_627760"].grid
    assert west.col0 + west.cols == east.col0 and (west.rows, west.cols) == (50, 50) == (east.rows, east.cols)
    south, north = grids["77055_627755"].grid, grids["77055_627760"].grid
    assert south.row_top + 1 == north.row_top + 1 - north.rows                # rows abut in y too


def test_raster_height_bands_match_loop_reference():
    """encode_grid with bands: per (cell, band) majority labels, per-band counts and each
    point's index into [rows, cols, K] agree with a plain loop over the points."""
    from data.pointcloud import PointCloud
    from geometry.heights import height_above_ground
    from pipeline.models.grid_inputs import encode_grid, point_bands

    xyz, fields, labels = _cloud(2500, seed=3)
    cloud = PointCloud(xyz, fields)
    bands = [0.5, 3.0]
    g = encode_grid(cloud, labels, mode="raster", cell_size=2.0, voxel_height=1.0, levels=2, ground_window=10.0,
                    label_rule="majority", intensity=False, bands=bands)
    K = len(bands) + 1
    rows, cols = g.mask.shape
    assert g.bands == K and g.labels.shape == (rows, cols, K) and g.band_mask.shape == (rows, cols, K)
    hag = height_above_ground(xyz)
    band = [sum(b <= h for b in bands) for h in hag]
    np.testing.assert_array_equal(point_bands(hag, bands), band)
    r, c = g.raw.grid.cell_of(xyz)
    np.testing.assert_array_equal(g.point_index, (r * cols + c) * K + np.asarray(band))
    items = defaultdict(list)
    for k, (ri, ci, b) in enumerate(zip(r, c, band)):
        items[(ri, ci, b)].append((xyz[k, 2], labels[k], k))
    for (ri, ci, b), its in items.items():
        assert g.labels[ri, ci, b] == _loop_label(its, "majority")
        assert g.band_mask[ri, ci, b]
        np.testing.assert_allclose(g.x[ri, ci, 5 + b], np.log1p(len(its)) / 3, rtol=1e-6)
    cell_pts = defaultdict(list)
    for k, (ri, ci) in enumerate(zip(r, c)):
        cell_pts[(ri, ci)].append(hag[k])
    for (ri, ci), hs in cell_pts.items():     # the cell's highest point above the DTM, / 10
        np.testing.assert_allclose(g.x[ri, ci, 5 + K], max(hs) / 10, atol=1e-5)
    assert g.band_mask.sum() == len(items)
    assert (g.labels[~g.band_mask] == -1).all()


def test_unique_rows_match_the_row_wise_unique():
    """One int64 key per row gives np.unique(axis=0)'s rows, order and inverse: negative
    indices, 1 to 4 columns, an empty input, and spans whose keys would overflow int64."""
    from geometry.grids import unique_rows

    rng = np.random.default_rng(5)
    for d in (1, 2, 3, 4):
        rows = rng.integers(-7, 9, (3000, d))
        want, want_inv = np.unique(rows, axis=0, return_inverse=True)
        got, inv = unique_rows(rows)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(inv, want_inv.reshape(-1))
    wide = np.array([[0, 0, 0], [2 ** 40, 5, -3], [0, 0, 0], [-(2 ** 40), 2 ** 30, 1]])
    got, inv = unique_rows(wide)
    np.testing.assert_array_equal(got, np.unique(wide, axis=0))
    np.testing.assert_array_equal(got[inv], wide)
    got, inv = unique_rows(np.zeros((0, 3), np.int64))
    assert got.shape == (0, 3) and inv.shape == (0,)
