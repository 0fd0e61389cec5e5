"""Buffered prediction: neighbours' points as context, each output keeps exactly its own points."""
from __future__ import annotations

import numpy as np
import pytest

from data.io import read_cloud
from geometry.grids import Grid2D, rasterize
from pipeline.buffers import NeighbourContext, own_part
from pipeline.models.base import GridProduct, Prediction


@pytest.fixture(scope="module")
def tiles(lidar_data):
    return sorted((lidar_data / "ign_lidarhd" / "test").glob("*.laz"))


def test_context_appends_only_neighbour_points_within_the_buffer(tiles):
    ctx = NeighbourContext(tiles, 10.0)
    assert [len(ctx.neighbours(i)) for i in range(4)] == [3, 3, 3, 3]      # a 2 x 2 block of tiles
    assert NeighbourContext(tiles, 10.0).neighbours(0) == [1, 2, 3]
    cloud = read_cloud(tiles[0])
    both = ctx.with_context(0, cloud)
    n = len(cloud)
    np.testing.assert_array_equal(both.xyz[:n], cloud.xyz)
    for k, v in cloud.fields.items():
        np.testing.assert_array_equal(both.fields[k][:n], v)
        assert both.fields[k].dtype == v.dtype
    extra = both.xyz[n:, :2]
    lo, hi = ctx.lo[0], ctx.hi[0]
    assert len(extra) > 1000
    assert ((extra >= lo - 10) & (extra <= hi + 10)).all()
    # the same rule as a loop over the neighbours' points
    want = 0
    for j in (1, 2, 3):
        xy = read_cloud(tiles[j]).xyz[:, :2]
        want += int(sum(1 for x, y in xy if lo[0] - 10 <= x <= hi[0] + 10 and lo[1] - 10 <= y <= hi[1] + 10))
    assert len(extra) == want


def test_own_part_crops_points_and_grid(tiles):
    ctx = NeighbourContext(tiles, 10.0)
    cloud = read_cloud(tiles[1])
    both = ctx.with_context(1, cloud)
    r = rasterize(both.xyz, both.fields, 2.0)
    proba = np.random.default_rng(0).random((len(both), 3)).astype(np.float32)
    cls = np.arange(r.grid.rows * r.grid.cols).reshape(r.grid.shape)
    pred = Prediction(proba, GridProduct(r.grid, cls, np.zeros((*r.grid.shape, 3), np.float32), r.mask, "t"))
    own = own_part(pred, cloud)
    np.testing.assert_array_equal(own.proba, proba[:len(cloud)])
    assert own.grid.grid == Grid2D.around(cloud.xyz, 2.0)
    # every own point's cell in the cropped grid is the cell it had in the buffered grid (but
    # points exactly on the own grid's east/north edge, which a grid keeps in its last cell)
    g = own.grid.grid
    rows, cols = g.cell_of(cloud.xyz)
    brows, bcols = r.grid.cell_of(cloud.xyz)
    inner = (cloud.xyz[:, 0] != (g.col0 + g.cols) * 2.0) & (cloud.xyz[:, 1] != (g.row_top + 1) * 2.0)
    assert inner.mean() > 0.99
    np.testing.assert_array_equal(own.grid.class_index[rows, cols][inner], cls[brows, bcols][inner])
    assert own.grid.mask[rows, cols].all()
