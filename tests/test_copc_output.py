"""COPC output (data/copc.py, ``predict --format copc``): every record kept byte for byte, the
header's scales/offsets/CRS/extra dimensions kept, a valid octree read back by laspy's
CopcReader and by copclib's reader, window queries that return exactly the points inside."""
from __future__ import annotations

import subprocess
import sys

import laspy
import numpy as np
import pytest

from conftest import REPO
from data import copc
from data.bounds import Bounds
from data.errors import DataError
from data.io import read_cloud, read_header_info

TILE_1KM = "ign_lidarhd_1km/test_semis_2023_0292_6833_LA93_IGN69.laz"   # 289k points, 1 km
TILE = "ign_lidarhd/test/test_data_77050_627755_LA93_IGN69.laz"


def _rows(arr: np.ndarray) -> np.ndarray:
    """Records as sorted opaque rows (a multiset, independent of point order)."""
    return np.sort(np.ascontiguousarray(arr).view(np.dtype((np.void, arr.dtype.itemsize))).ravel())


def _nodes(path):
    from laspy.copc import load_octree_for_query

    with laspy.CopcReader.open(path) as r:
        nodes = load_octree_for_query(r.source, r.copc_info, r.root_page)
        return r.copc_info, [(n.key.level, n.key.x, n.key.y, n.key.z, int(n.point_count)) for n in nodes
                             if n.point_count > 0]


@pytest.mark.parametrize("subtree", [None, 40_000], ids=["in-memory", "spilled"])
def test_copc_keeps_every_record_in_a_valid_octree(lidar_data, tmp_path, monkeypatch, subtree):
    src = lidar_data / TILE_1KM
    if subtree:                     # the bounded-memory build: subtrees of depth 2 spilled to disk
        monkeypatch.setattr(copc, "SUBTREE_POINTS", subtree)
        monkeypatch.setattr(copc, "READ_POINTS", 50_000)
    dst = copc.las_to_copc(src, tmp_path / "tile.copc.laz")
    assert not list(tmp_path.glob(".*")), "the spill folder is removed"
    las = laspy.read(src)
    with laspy.CopcReader.open(dst) as r:
        back = r.query()
        h = r.header
        np.testing.assert_array_equal(h.scales, las.header.scales)
        np.testing.assert_array_equal(h.offsets, las.header.offsets)
        np.testing.assert_array_equal(h.number_of_points_by_return, las.header.number_of_points_by_return)
        assert h.point_count == las.header.point_count and h.parse_crs() == las.header.parse_crs()
    assert np.array_equal(_rows(back.array), _rows(las.points.array))
    assert read_header_info(dst).copc
    info, nodes = _nodes(dst)
    assert sum(n[4] for n in nodes) == len(las)
    # every node's points inside its box; a node with children keeps one point per cell of its
    # grid (decoded by copclib, the reference reader, node by node)
    import copclib

    reader = copclib.FileReader(str(dst))
    assert reader.copc_config.las_header.point_count == len(las)
    lo = np.asarray(info.center) - info.halfsize
    parents = {(d - 1, x // 2, y // 2, z // 2) for d, x, y, z, _ in nodes if d > 0}
    for d, x, y, z, count in nodes:
        pts = reader.GetPoints(copclib.VoxelKey(d, x, y, z))
        p = np.stack([np.asarray(pts.x), np.asarray(pts.y), np.asarray(pts.z)], axis=1)
        side = 2 * info.halfsize / 2 ** d
        node_lo = lo + side * np.array([x, y, z])
        assert len(p) == count and np.all(p >= node_lo - 1e-6) and np.all(p <= node_lo + side + 1e-6)
        if (d, x, y, z) in parents:
            cells = np.floor((p - node_lo) / (side / copc.GRID)).astype(np.int64)
            assert len(np.unique(cells, axis=0)) == count
    assert len({n[0] for n in nodes}) >= 2                         # more than a root
    assert len(reader.GetAllNodes()) == len(nodes)


def test_copc_window_reads_only_the_points_inside(lidar_data, tmp_path):
    src = lidar_data / TILE_1KM
    dst = copc.las_to_copc(src, tmp_path / "tile.copc.laz")
    whole = read_cloud(src)
    lo = whole.xyz[:, :2].min(0)
    window = Bounds(lo[0] + 400, lo[1] + 300, lo[0] + 520, lo[1] + 390)
    part = read_cloud(dst, bounds=window)                         # decodes only the nodes it meets
    inside = window.contains(whole.xyz)
    assert 0 < len(part) == inside.sum()
    ref_xyz = whole.xyz[inside]
    a = np.lexsort((part.fields["gps_time"], part.xyz[:, 2], part.xyz[:, 1], part.xyz[:, 0]))
    b = np.lexsort((whole.fields["gps_time"][inside], ref_xyz[:, 2], ref_xyz[:, 1], ref_xyz[:, 0]))
    np.testing.assert_array_equal(part.xyz[a], ref_xyz[b])
    np.testing.assert_array_equal(part.fields["intensity"][a], whole.fields["intensity"][inside][b])


def test_copc_refuses_a_legacy_format(lidar_data, tmp_path):
    las = laspy.read(lidar_data / TILE)
    legacy = laspy.convert(las, point_format_id=3, file_version="1.2")
    legacy.write(tmp_path / "legacy.las")
    with pytest.raises(DataError, match=r"out.copc.laz: COPC holds point formats 6, 7 and 8; legacy.las has format 3"):
        copc.las_to_copc(tmp_path / "legacy.las", tmp_path / "out.copc.laz")
    assert not (tmp_path / "out.copc.laz").exists()


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def _by_position(cloud):
    order = np.lexsort((cloud.fields["gps_time"], cloud.meta.raw_xyz[:, 2], cloud.meta.raw_xyz[:, 1],
                        cloud.meta.raw_xyz[:, 0]))
    return cloud.meta.raw_xyz[order], {k: v[order] for k, v in cloud.fields.items()}


def test_predict_copc_equals_laz_output(rf_tiny_bundle, lidar_data, tmp_path):
    """``--format copc`` (whole and in windows) holds the labelled LAZ's points and fields;
    a legacy point format is upgraded; index.vpc lists the COPC files."""
    src = lidar_data / TILE
    legacy = tmp_path / "in" / "legacy.las"
    legacy.parent.mkdir()
    laspy.convert(laspy.read(src), point_format_id=1, file_version="1.2").write(legacy)
    inputs = [src, legacy]
    res = _cli("predict", "--model", rf_tiny_bundle, "--input", *inputs, "--out", tmp_path / "laz", "--format", "laz")
    assert res.returncode == 0, res.stderr
    for extra in ([], ["--window", "20"]):
        out = tmp_path / ("copc" + "".join(extra))
        res = _cli("predict", "--model", rf_tiny_bundle, "--input", *inputs, "--out", out, "--format", "copc", *extra)
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
            ["index.vpc", "legacy.copc.laz", f"{src.stem}.copc.laz"]
        assert "legacy.copc.laz" in (out / "index.vpc").read_text()
        for path in inputs:
            got = out / f"{path.stem}.copc.laz"
            info = read_header_info(got)
            assert info.copc and info.point_format in (6, 7, 8)
            assert {"confidence", "entropy", "classification_ref"} <= set(info.dimensions)
            laz_xyz, laz = _by_position(read_cloud(tmp_path / "laz" / f"{path.stem}.laz"))
            xyz, fields = _by_position(read_cloud(got))
            np.testing.assert_array_equal(xyz, laz_xyz)
            for name in ("classification", "classification_ref", "confidence", "entropy", "intensity"):
                np.testing.assert_array_equal(fields[name], laz[name], err_msg=name)


def test_predict_copc_bad_input(rf_tiny_bundle, lidar_data, tmp_path):
    ply = tmp_path / "cloud.ply"
    from data.io import write_cloud
    write_cloud(read_cloud(lidar_data / TILE), ply)
    res = _cli("predict", "--model", rf_tiny_bundle, "--input", ply, "--out", tmp_path / "o", "--format", "copc")
    assert res.returncode == 2
    assert "cloud.ply: cannot write PLY input as COPC; use format 'same'" in res.stderr
    assert not list((tmp_path / "o").glob("*.laz"))
