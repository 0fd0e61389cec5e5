"""geometry.features: covariance / height / point features and compute_features on real data."""
from __future__ import annotations

import glob

import numpy as np
import pytest

from conftest import DATA
from scipy.spatial import cKDTree

from geometry.features import (COVARIANCE_FEATURES, FEATURE_NAMES, compute_features,
                           covariance_features, feature_names, height_features, point_features,
                           symmetric_eigen3)
from data.pointcloud import PointCloud

TEST_TILES = sorted(glob.glob(str(DATA / "ign_lidarhd/test/*.laz")))


def knn_idx(xyz, k):
    return cKDTree(xyz).query(xyz, k)[1]


def plane(n=2000, normal=(0, 0, 1), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    nrm = np.asarray(normal, float) / np.linalg.norm(normal)
    u = np.cross(nrm, [1, 0, 0] if abs(nrm[0]) < 0.9 else [0, 1, 0])
    u /= np.linalg.norm(u)
    v = np.cross(nrm, u)
    ab = rng.random((n, 2)) * 10
    return ab[:, :1] * u + ab[:, 1:] * v + noise * rng.normal(size=(n, 1)) * nrm + [1e5, 6e6, 50]


def test_plane_is_planar_with_vertical_normal():
    xyz = plane()
    f = covariance_features(xyz, knn_idx(xyz, 16))
    assert np.median(f["planarity"]) > 0.3 and f["scattering"].max() < 1e-6
    assert np.allclose(f["normal_z"], 1, atol=1e-6) and f["verticality"].max() < 1e-6
    assert f["surface_variation"].max() < 1e-6


def test_line_is_linear():
    rng = np.random.default_rng(0)
    t = rng.random(500) * 20
    xyz = np.stack([t, 0.5 * t, -0.2 * t], 1) + [3e5, 6.8e6, 10]
    f = covariance_features(xyz, knn_idx(xyz, 10))
    np.testing.assert_allclose(f["linearity"], 1, atol=1e-6)
    assert f["planarity"].max() < 1e-6
    # normal is perpendicular to the line
    d = np.array([1, 0.5, -0.2]) / np.linalg.norm([1, 0.5, -0.2])
    n = np.stack([f["normal_x"], f["normal_y"], f["normal_z"]], 1)
    assert np.abs(n @ d).max() < 1e-4 and np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)


def test_isotropic_blob_scatters():
    xyz = np.random.default_rng(0).normal(size=(3000, 3))
    f = covariance_features(xyz, knn_idx(xyz, 50))
    assert np.median(f["scattering"]) > 0.4 and np.median(f["linearity"]) < 0.4
    assert np.median(f["eigenentropy"]) > 1.0  # ln 3 ~ 1.0986 is the maximum
    assert f["eigenentropy"].max() <= np.log(3) + 1e-5


@pytest.mark.parametrize("normal", [(1, 2, 3), (0.3, -0.2, 1), (1, 1, 0)])
def test_tilted_plane_normals_and_wall_verticality(normal):
    xyz = plane(normal=normal, seed=1)
    f = covariance_features(xyz, knn_idx(xyz, 12))
    nrm = np.asarray(normal, float) / np.linalg.norm(normal)
    nrm = nrm if nrm[2] >= 0 else -nrm
    got = np.stack([f["normal_x"], f["normal_y"], f["normal_z"]], 1)
    if nrm[2] > 0:  # oriented upwards
        np.testing.assert_allclose(got, np.broadcast_to(nrm, got.shape), atol=1e-5)
    else:  # a wall: sign undefined (n_z = 0)
        np.testing.assert_allclose(np.abs(got @ nrm), 1, atol=1e-5)
    np.testing.assert_allclose(f["verticality"], 1 - abs(nrm[2]), atol=1e-5)


def test_eigen_and_features_match_eigh_loop():
    rng = np.random.default_rng(5)
    xyz = rng.normal(size=(400, 3)) * [3, 1, 0.2] + 1000.0
    idx = knn_idx(xyz, 9)
    idx[::7, 5:] = len(xyz)  # some shadow padding
    f = covariance_features(xyz, idx, eigenvalues=True)
    for i in range(len(xyz)):
        nb = xyz[idx[i][idx[i] < len(xyz)]]
        c = np.cov(nb.T, bias=True)
        w, v = np.linalg.eigh(c)
        l3, l2, l1 = w
        np.testing.assert_allclose([f["l1"][i], f["l2"][i], f["l3"][i]], [l1, l2, l3],
                                   rtol=1e-5, atol=1e-7 * l1)
        s = l1 + l2 + l3
        assert f["linearity"][i] == pytest.approx((l1 - l2) / l1, abs=1e-5)
        assert f["planarity"][i] == pytest.approx((l2 - l3) / l1, abs=1e-5)
        assert f["scattering"][i] == pytest.approx(l3 / l1, abs=1e-5)
        assert f["surface_variation"][i] == pytest.approx(l3 / s, abs=1e-5)
        e = w / s
        assert f["omnivariance"][i] == pytest.approx(np.cbrt(e.prod()), abs=1e-5)
        assert f["eigenentropy"][i] == pytest.approx(-(e * np.log(e)).sum(), abs=1e-4)
        n = v[:, 0] * np.sign(v[2, 0] or 1)
        got = [f["normal_x"][i], f["normal_y"][i], f["normal_z"][i]]
        np.testing.assert_allclose(got, n, atol=1e-4)
        assert f["num_neighbors"][i] == len(nb)


def test_symmetric_eigen3_degenerate_cases():
    covs = np.array([np.zeros((3, 3)), np.eye(3), np.diag([2.0, 1.0, 1.0]),
                     np.diag([1.0, 1.0, 0.0]), np.diag([3.0, 2.0, 1.0])])
    w, n = symmetric_eigen3(covs)
    np.testing.assert_allclose(w, np.sort(np.linalg.eigvalsh(covs), 1)[:, ::-1], atol=1e-12)
    assert np.allclose(np.linalg.norm(n, axis=1), 1)
    for c, l3, v in zip(covs, w[:, 2], n):
        np.testing.assert_allclose(c @ v, l3 * v, atol=1e-9)


def test_too_few_neighbours_and_duplicates_are_defined():
    rng = np.random.default_rng(0)
    xyz = np.concatenate([np.repeat([[5.0, 5.0, 5.0]], 10, 0), rng.random((10, 3))])
    n = len(xyz)
    idx = np.full((n, 6), n)
    idx[:10, :6] = np.arange(6)          # 6 identical points: degenerate covariance
    idx[10:, :2] = np.arange(10, 20)[:, None] + [0, 1] - [0, 10] * (np.arange(10, 20) == 19)[:, None]
    f = covariance_features(xyz, idx, min_neighbors=3)
    for key in COVARIANCE_FEATURES:
        assert np.isfinite(f[key]).all(), key
    for key in ("linearity", "planarity", "scattering", "omnivariance", "anisotropy",
                "eigenentropy", "surface_variation", "verticality", "normal_x", "normal_y"):
        assert (f[key] == 0).all(), key
    assert (f["normal_z"] == 1).all()
    np.testing.assert_array_equal(f["num_neighbors"], [6] * 10 + [2] * 10)
    # all-shadow rows and an empty cloud
    f = covariance_features(xyz, np.full((n, 4), n))
    assert (f["num_neighbors"] == 0).all() and (f["normal_z"] == 1).all()
    assert covariance_features(np.zeros((0, 3)), np.zeros((0, 4), int))["planarity"].shape == (0,)


def test_chunks_and_threads_do_not_change_results():
    xyz = plane(3000, normal=(1, 2, 3), noise=0.05)
    idx = knn_idx(xyz, 8)
    a = covariance_features(xyz, idx, workers=1)
    b = covariance_features(xyz, idx, workers=2, chunk=333)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_height_features():
    # ground at z = 0 everywhere, a 10 m "roof" filling the cell [2, 4) x [0, 2)
    rng = np.random.default_rng(0)
    g = np.c_[rng.random((4000, 2)) * 6, np.zeros(4000)]
    roof = np.c_[rng.random((200, 2)) * 2 + [2, 0], np.full(200, 10.0)]
    xyz = np.concatenate([g[(g[:, 0] < 2) | (g[:, 0] >= 4) | (g[:, 1] >= 2)], roof])
    xyz[:, 2] += 100.0
    h = height_features(xyz, 2.0)
    is_roof = xyz[:, 2] > 105
    np.testing.assert_allclose(h["hag"][is_roof], 0)          # roof fills its own cell
    np.testing.assert_allclose(h["hag3"][is_roof], 10)        # 3x3 block sees the ground
    np.testing.assert_allclose(h["hag3"][~is_roof], 0)
    np.testing.assert_allclose(h["zrange"], 0)
    # a point above ground in a ground cell
    xyz2 = np.concatenate([xyz, [[1.0, 1.0, 103.0]]])
    h2 = height_features(xyz2, 2.0)
    assert h2["hag"][-1] == pytest.approx(3) and h2["zrange"][-1] == pytest.approx(3)


@pytest.mark.parametrize("cell", [0.7, 2.0])
def test_height_features_match_brute_force(cell):
    rng = np.random.default_rng(2)
    xyz = rng.random((1500, 3)) * [20, 15, 5] - [7, 3, 0]
    xyz = xyz[(xyz[:, 0] < 4) | (xyz[:, 0] > 6)]  # an empty band of cells
    ij = np.floor(xyz[:, :2] / cell).astype(int)
    same = (ij[:, None] == ij[None]).all(-1)
    near = (np.abs(ij[:, None] - ij[None]) <= 1).all(-1)
    z = xyz[:, 2]
    zz = np.broadcast_to(z, same.shape)
    h = height_features(xyz, cell)
    np.testing.assert_allclose(h["hag"], z - np.where(same, zz, np.inf).min(1), atol=1e-6)
    np.testing.assert_allclose(h["hag3"], z - np.where(near, zz, np.inf).min(1), atol=1e-6)
    np.testing.assert_allclose(h["zrange"], np.where(same, zz, -np.inf).max(1)
                               - np.where(same, zz, np.inf).min(1), atol=1e-6)


def test_point_features_and_names():
    fields = {"intensity": np.array([0, 65535, 100], np.uint16),
              "return_number": np.array([1, 2, 0], np.uint8),
              "number_of_returns": np.array([1, 2, 0], np.uint8)}
    f = point_features(fields)
    np.testing.assert_allclose(f["intensity"], [0, 1, np.log1p(100) / np.log(65536)], rtol=1e-6)
    np.testing.assert_allclose(f["return_ratio"], [1, 1, 1])
    np.testing.assert_array_equal(f["is_single_return"], [1, 0, 1])
    np.testing.assert_array_equal(f["is_last_return"], [1, 1, 1])
    assert "intensity" not in point_features({"return_number": fields["return_number"]})
    names = feature_names(k=(8, 16), radii=(1.0,), height_cells=(2.0,), fields=["intensity"])
    assert names[:2] == ["k8_linearity", "k8_planarity"] and "r1.0_planarity" in names
    assert "hag_c2.0" in names and "intensity" in names and "return_ratio" not in names
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 12 + 6 + 6


@pytest.mark.usefixtures("lidar_data")
def test_compute_features_on_real_tile():
    import laspy
    las = laspy.read(TEST_TILES[0])
    fields = {name: np.asarray(las[name]) for name in
              ("intensity", "return_number", "number_of_returns", "classification")}
    cloud = PointCloud(np.stack([las.x, las.y, las.z], 1), fields)
    names, x = compute_features(cloud, k=(8, 16), radii=(1.0,), height_cells=(2.0, 10.0))
    assert names == feature_names(k=(8, 16), radii=(1.0,), height_cells=(2.0, 10.0),
                                  fields=fields)
    assert x.shape == (len(cloud), len(names)) and x.dtype == np.float32
    assert np.isfinite(x).all()
    col = dict(zip(names, x.T))
    cls = fields["classification"]
    # sanity on real data: ground is flatter and lower than vegetation
    if (cls == 2).sum() > 100 and np.isin(cls, [4, 5]).sum() > 100:
        assert col["k16_planarity"][cls == 2].mean() > col["k16_planarity"][np.isin(cls, [4, 5])].mean()
        assert col["hag3_c10.0"][cls == 2].mean() < col["hag3_c10.0"][np.isin(cls, [4, 5])].mean()
    # without intensity: the column disappears
    del cloud.fields["intensity"]
    names2, x2 = compute_features(cloud, k=(16,), height_cells=())
    assert "intensity" not in names2 and x2.shape[1] == len(names2) == 12 + 5


def test_ground_model_of_points_spread_too_far_is_a_user_error():
    from data.errors import UserError
    from data.pointcloud import PointCloud
    from geometry.heights import GridSizeError, height_above_ground
    from pipeline.mining import FeatureConfig, mine

    xyz = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 1.2], [90_000.0, 270_000.0, 3.0]] * 4)
    with pytest.raises(GridSizeError, match=r"90,001 m x 270,001 m needs 24,300,360,001 cells of 1 m"):
        height_above_ground(xyz)
    with pytest.raises(GridSizeError, match=r"^far.laz: the ground model"):
        height_above_ground(xyz, source="far.laz")        # how the deep models' inputs call it
    cloud = PointCloud(xyz, {}, source="far.laz")
    with pytest.raises(UserError, match=r"^far.laz: features: the ground model"):
        mine(cloud, FeatureConfig(k=[3], height_cells=[2.0]))


def test_a_scale_given_twice_repeats_its_columns():
    rng = np.random.default_rng(3)
    cloud = PointCloud(rng.random((800, 3)) * 10, {})
    names, x = compute_features(cloud, k=(16, 16), height_cells=(2.0, 2.0))
    ref_names, ref = compute_features(cloud, k=(16,), height_cells=(2.0,))
    for j, name in enumerate(names):
        np.testing.assert_array_equal(x[:, j], ref[:, ref_names.index(name)], err_msg=name)


def test_features_of_some_rows_are_those_rows_of_all():
    """``rows``: the features of those points only (a window's core), every point still a
    neighbour: equal to the full matrix's rows, every kind of feature included."""
    import laspy
    las = laspy.read(TEST_TILES[0])
    fields = {name: np.asarray(las[name]) for name in ("intensity", "return_number", "number_of_returns")}
    cloud = PointCloud(np.stack([las.x, las.y, las.z], 1), fields)
    kw = dict(k=(8, 16), radii=(1.0,), height_cells=(2.0,), ground_cell=1.0, coarse_cells=(2.0,),
              column_cells=(1.0,), plan_k=(12,))
    names, x = compute_features(cloud, **kw)
    xy = cloud.xyz[:, :2]
    rows = np.flatnonzero((xy[:, 0] < np.median(xy[:, 0])) & (xy[:, 1] > np.percentile(xy[:, 1], 30)))
    sub_names, sub = compute_features(cloud, rows=rows, **kw)
    assert sub_names == names and sub.shape == (len(rows), len(names))
    assert {"xy12_zrel", "r1.0_planarity", "col1.0_rank", "hag_ground", "intensity", "hag3_c2.0"} <= set(names)
    np.testing.assert_array_equal(sub, x[rows])
    # share: the neighbourhood features (k, radius, plan-view k-NN) of each row's representative,
    # the others (heights, columns, ground, coarse scales, attributes) the row's own
    reps = rows[::3]
    inverse = np.arange(len(rows)) // 3
    shared_names, shared = compute_features(cloud, rows=rows, share=(reps, inverse), **kw)
    assert shared_names == names
    neighbourhood = [j for j, nm in enumerate(names) if nm.startswith(("k8_", "k16_", "r1.0_", "xy12_"))]
    own = [j for j in range(len(names)) if j not in neighbourhood]
    assert len(neighbourhood) > 10 and len(own) > 5
    np.testing.assert_array_equal(shared[:, neighbourhood], x[reps[inverse]][:, neighbourhood])
    np.testing.assert_array_equal(shared[:, own], x[rows][:, own])


def test_tile_ground_from_chunks_is_the_whole_clouds_ground_model():
    """TileGround: cell minima gathered chunk by chunk (any order, a box wider than the points)
    give the DTM ground_surface builds from the whole cloud at once; inside tile_ground a
    window's heights above the ground are the whole cloud's at its points (its own DTM differs
    near its edges), in forest features computed in their heights thread too; a point outside
    the box leaves the model incomplete and every caller builds its own."""
    from geometry.heights import TileGround, ground_surface, height_above_ground, tile_ground

    import laspy
    las = laspy.read(TEST_TILES[0])
    xyz = np.stack([las.x, las.y, las.z], 1)
    rng = np.random.default_rng(0)
    ground = TileGround(xyz[:, :2].min(0) - [7.3, 2.1], xyz[:, :2].max(0) + 5.0)
    for part in np.array_split(rng.permutation(len(xyz)), 5):
        ground.add(xyz[part])
    whole = height_above_ground(xyz)
    dtm, origin = ground_surface(xyz)
    window = np.flatnonzero(((xyz[:, :2] - xyz[:, :2].min(0)) < 18.0).all(1))
    own = height_above_ground(xyz[window])
    assert (own != whole[window]).mean() > 0.01                # a window's own DTM differs
    with tile_ground(ground):
        np.testing.assert_array_equal(height_above_ground(xyz[window]), whole[window])
        cloud = PointCloud(xyz[window], {"number_of_returns": np.asarray(las.number_of_returns)[window]})
        names, x = compute_features(cloud, k=(8,), height_cells=(), ground_cell=1.0, column_cells=(2.0,))
        np.testing.assert_array_equal(x[:, names.index("hag_ground")], whole[window])
    np.testing.assert_array_equal(ground._surfaces[24.0], dtm)
    np.testing.assert_array_equal(ground.origin, origin)
    np.testing.assert_array_equal(height_above_ground(xyz[window]), own)    # outside: its own again
    short = TileGround(xyz[:, :2].min(0), xyz[:, :2].max(0) - 1.0)
    short.add(xyz)
    assert not short.complete
    with tile_ground(short):
        np.testing.assert_array_equal(height_above_ground(xyz[window]), own)


def test_ground_surface_interpolates_in_delaunay_triangles_of_all_ground_cells():
    """surface_from_minima triangulates only the ground cells beside (4-neighbours) a non-ground
    cell or the grid's edge. Every triangle it interpolates a cell in must be a Delaunay triangle of all the
    ground cells (no ground cell strictly inside its circumcircle), so the DTM is a linear
    Delaunay interpolation of every ground cell, as the direct construction (which differs only
    in how it splits cocircular cells, lattice ties either way)."""
    import laspy
    from scipy import ndimage
    from scipy.spatial import Delaunay

    from geometry.heights import cell_minima, ground_cells, surface_from_minima

    las = laspy.read(TEST_TILES[0])
    zmin, _ = cell_minima(np.stack([las.x, las.y, las.z], 1))
    rng = np.random.default_rng(1)
    synth = rng.normal(0, 0.05, (120, 90)) + np.linspace(0, 4, 90)
    for i, j in rng.integers(0, 100, (25, 2)):
        synth[i:i + rng.integers(3, 20), j:j + rng.integers(3, 20)] += 8.0      # buildings
    synth[rng.random(synth.shape) < 0.05] = np.inf                              # empty cells
    for z in (zmin, synth):
        dtm = surface_from_minima(z)
        ground = ground_cells(z)
        np.testing.assert_array_equal(dtm[ground], z[ground])       # each keeps its own lowest z
        gi, gj = np.nonzero(ground)
        edge = ground & ~ndimage.binary_erosion(ground, border_value=0)
        assert edge.sum() < ground.sum()
        bi, bj = np.nonzero(edge)
        tri = Delaunay(np.c_[bi, bj].astype(float))
        hi, hj = np.nonzero(~ground)
        simplex = tri.find_simplex(np.c_[hi, hj].astype(float))
        inside = simplex >= 0
        assert inside.mean() > 0.5
        whole = Delaunay(np.c_[gi, gj].astype(float))        # the same hull as all ground cells
        np.testing.assert_array_equal(inside, whole.find_simplex(np.c_[hi, hj].astype(float)) >= 0)
        pts = np.c_[bi, bj].astype(float)[tri.simplices[np.unique(simplex[inside])]]     # [T, 3, 2]
        a, b, c = pts[:, 0], pts[:, 1], pts[:, 2]
        d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
        sq = (pts ** 2).sum(2)
        ux = (sq[:, 0] * (b[:, 1] - c[:, 1]) + sq[:, 1] * (c[:, 1] - a[:, 1]) + sq[:, 2] * (a[:, 1] - b[:, 1])) / d
        uy = (sq[:, 0] * (c[:, 0] - b[:, 0]) + sq[:, 1] * (a[:, 0] - c[:, 0]) + sq[:, 2] * (b[:, 0] - a[:, 0])) / d
        r = np.hypot(a[:, 0] - ux, a[:, 1] - uy)
        tree = cKDTree(np.c_[gi, gj].astype(float))
        strictly_inside = [len(tree.query_ball_point([x, y], rr - 1e-6)) for x, y, rr in zip(ux, uy, r)]
        assert max(strictly_inside) == 0
        # and each such cell is the linear interpolation in its triangle
        t = tri.transform[simplex[inside]]
        bary = np.einsum("nij,nj->ni", t[:, :2], np.c_[hi, hj][inside] - t[:, 2])
        w = np.c_[bary, 1 - bary.sum(1)]
        ref = (w * z[bi, bj][tri.simplices[simplex[inside]]]).sum(1)
        np.testing.assert_allclose(dtm[hi[inside], hj[inside]], ref, atol=1e-9)
