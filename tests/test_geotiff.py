"""data.geotiff: class / probability GeoTIFFs round trip through rasterio on a real IGN tile."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rio_cogeo.cogeo import cog_validate

from data.asprs import colour
from data.classmap import ClassMap
from data.geotiff import crs_of, write_class_map, write_preview, write_probability_map
from geometry.grids import Grid2D, rasterize
from data.io import read_cloud

TILE = "ign_lidarhd/test/test_data_77055_627760_LA93_IGN69.laz"
CMAP = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5], "building": [6], "water": [9],
                             "bridge": [17], "other": [1, 64, 67]}, [7, 65, 66])


@pytest.fixture(scope="module")
def tile(lidar_data):
    cloud = read_cloud(lidar_data / TILE)
    labels = CMAP.encode(cloud.fields["classification"])
    return cloud, rasterize(cloud.xyz, cloud.fields, 2.0, labels=labels, label_rule="majority")


def test_class_and_probability_maps_round_trip(tile, tmp_path):
    cloud, r = tile
    crs = crs_of(cloud)
    assert crs is not None and crs.to_epsg() == 2154
    codes = np.where(r.labels >= 0, CMAP.output_codes[np.maximum(r.labels, 0)], -1)
    path = write_class_map(tmp_path / "c.tif", r.grid, codes, mask=r.mask, crs=crs,
                           class_names=CMAP.names, class_codes=CMAP.output_codes.tolist())
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(CMAP.num_classes), r.grid.shape).astype(np.float32)
    ppath = write_probability_map(tmp_path / "p.tif", r.grid, proba, r.mask, crs=crs, class_names=CMAP.names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "p.tif"]       # no temporary files left

    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 2154
        assert src.count == 1 and src.dtypes == ("uint8",) and src.nodata == 255
        t = src.transform
        assert (t.a, t.e) == (2.0, -2.0) and t.c % 2.0 == 0 and t.f % 2.0 == 0
        assert (src.height, src.width) == r.grid.shape
        band = src.read(1)
        assert src.tags()["CLASS_6"] == "building"
        # QGIS opens it coloured: an ASPRS colour table (ground brown, building red-orange)
        palette = src.colormap(1)
        assert palette[2] == (*colour(2), 255) and palette[6] == (*colour(6), 255)
        assert palette[2][0] > palette[2][2] and palette[6][0] > 200
        # every point lies inside the cell the transform puts it in (points exactly on a
        # horizontal cell edge belong to the cell above it here: [y0, y0 + s); rasterio's
        # rowcol puts them in the row below, so they are left out of this comparison; so are
        # points on the grid's east edge, which belong to the last column, not to a new one)
        rows, cols = rasterio.transform.rowcol(t, cloud.xyz[:, 0], cloud.xyz[:, 1], op=np.floor)
        inner = (cloud.xyz[:, 1] % 2.0 != 0) & (cloud.xyz[:, 0] < (r.grid.col0 + r.grid.cols) * 2.0)
        assert inner.mean() > 0.9
        flat = np.asarray(rows) * r.grid.cols + np.asarray(cols)
        np.testing.assert_array_equal(flat[inner], r.point_cell[inner])
    expected = np.where(r.mask & (codes >= 0), codes, 255)
    np.testing.assert_array_equal(band, expected)
    assert set(np.unique(band)) <= {1, 2, 3, 6, 9, 17, 255} and (band == 2).any()
    assert r.grid.shape == (25, 25)               # a 50 m tile at 2 m: no extra edge row/column
    assert (band == 255).any() == (~r.mask).any()

    with rasterio.open(ppath) as src:
        assert src.count == CMAP.num_classes and set(src.dtypes) == {"float32"} and src.nodata == -1.0
        assert src.descriptions == CMAP.names and src.crs.to_epsg() == 2154
        assert src.transform == rasterio.transform.Affine(*r.grid.transform)
        bands = src.read()
    np.testing.assert_array_equal(bands[:, r.mask], proba[r.mask].T)
    assert (bands[:, ~r.mask] == -1).all()
    for written in (path, ppath):
        valid, errors, _ = cog_validate(str(written))
        assert valid, errors


def test_large_class_map_is_a_tiled_cog_with_overviews(tmp_path):
    g = Grid2D(1.0, 0, 0, 1000, 1000)
    codes = np.random.default_rng(0).choice([2, 3, 6], size=g.shape)
    path = write_class_map(tmp_path / "big.tif", g, codes, class_names=["ground", "vegetation", "building"],
                           class_codes=[2, 3, 6])
    assert cog_validate(str(path))[0]
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.block_shapes == [(512, 512)] and src.overviews(1)
        np.testing.assert_array_equal(src.read(1), codes)
        assert set(np.unique(src.read(1, out_shape=(250, 250)))) <= {2, 3, 6}   # nearest overviews


def test_wide_codes_use_uint16_and_no_crs(tmp_path):
    g = Grid2D(0.5, 10, 20, 2, 3)
    codes = np.array([[300, 2, -1], [2, 2, 300]])
    with rasterio.open(write_class_map(tmp_path / "w.tif", g, codes)) as src:
        assert src.dtypes == ("uint16",) and src.nodata == 65535 and src.crs is None
        assert src.read(1).tolist() == [[300, 2, 65535], [2, 2, 300]]
        assert (src.transform.c, src.transform.f) == (5.0, 10.5)
    with pytest.raises(ValueError):
        write_class_map(tmp_path / "bad.tif", g, np.zeros((3, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tif"]


def test_preview_png(tile, tmp_path):
    _, r = tile
    path = write_preview(tmp_path / "c.png", r.grid, r.labels, r.mask, CMAP.names, CMAP.output_codes.tolist())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_mostly_empty_raster_is_warned(tile, tmp_path, capsys):
    """0.3 pts/m2 at 1 m cells leaves most cells empty: the writer says so."""
    from pipeline.models.base import GridProduct
    from pipeline.labelling import write_grid_product

    cloud, r = tile
    sparse = r.mask.copy()
    sparse[:, 5:] = False
    idx = np.maximum(r.labels, 0)
    proba = np.full((*r.grid.shape, CMAP.num_classes), 1 / CMAP.num_classes, np.float32)
    for mask, warned in ((r.mask, False), (sparse, True)):
        out = tmp_path / str(warned)
        out.mkdir()
        write_grid_product(GridProduct(r.grid, idx, proba, mask, "test"), cloud, CMAP, out, "tile", False)
        err = capsys.readouterr().err
        assert ("80% of the 2 m raster's cells hold no point" in err) == warned, err
        assert sorted(p.name for p in out.iterdir()) == ["tile_class.png", "tile_class.tif"]


def test_class_maps_of_a_batch_join_in_one_vrt(tmp_path):
    """Two class maps on one aligned grid -> one .vrt whose cells are each source's, nodata
    where neither has data, with the colour table (QGIS opens it as one layer)."""
    from data.crs import rasterio_crs
    from data.geotiff import write_mosaic

    rng = np.random.default_rng(0)
    a, b = Grid2D(2.0, 100, 500, 20, 30), Grid2D(2.0, 130, 490, 15, 10)     # b: east of a, lower
    ca, cb = rng.choice([2, 5, 6], a.shape), rng.choice([2, 6, 9], b.shape)
    write_class_map(tmp_path / "a_class.tif", a, ca, crs=rasterio_crs(2154, None), class_codes=[2, 5, 6, 9])
    write_class_map(tmp_path / "b_class.tif", b, cb, crs=rasterio_crs(2154, None), class_codes=[2, 5, 6, 9])
    vrt = write_mosaic([tmp_path / "a_class.tif", tmp_path / "b_class.tif"], tmp_path / "index_class.vrt")
    with rasterio.open(vrt) as src:
        mosaic = src.read(1)
        assert src.crs.to_epsg() == 2154 and src.res == (2.0, 2.0)
        assert src.transform.c == 200.0 and src.transform.f == 1002.0      # the top of row 500
        assert src.colormap(1)[6] == rasterio.open(tmp_path / "a_class.tif").colormap(1)[6]
    assert mosaic.shape == (25, 40)                       # cell rows 500..476, columns 100..139
    np.testing.assert_array_equal(mosaic[:20, :30], ca)
    np.testing.assert_array_equal(mosaic[10:25, 30:40], cb)
    assert (mosaic[20:, :30] == 255).all() and (mosaic[:10, 30:] == 255).all()
