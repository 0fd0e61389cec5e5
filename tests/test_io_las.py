"""LAS/LAZ round trips on real IGN LiDAR HD files and synthetic files (data.io / data.las)."""
from __future__ import annotations

import struct
from datetime import date
from pathlib import Path

import laspy
import numpy as np
import pytest

from conftest import DATA

from laspy.vlrs.vlrlist import VLRList

from data.errors import DataError
from data.io import LasMeta, read_cloud, read_header_info, write_cloud
from data.pointcloud import PointCloud

TEST_TILES = sorted((DATA / "ign_lidarhd/test").glob("*.laz"))
TRAIN = [DATA / "ign_lidarhd/train" / n for n in
         ("St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz",   # LAS 1.2, format 1, no CRS
          "mnx_crop_3.laz",                                        # format 6, 12 extra dims
          "mnx_corse.laz")]                                        # format 8, extra dims
REAL = TEST_TILES + TRAIN
needs_data = pytest.mark.usefixtures("lidar_data")  # fails (not skips) without the data

META_FIELDS = ("version", "point_format", "vlrs", "evlrs", "global_encoding", "file_source_id",
               "uuid", "system_identifier", "generating_software", "creation_date",
               "extra_dims", "extra_header_bytes", "extra_vlr_bytes", "crs_wkt", "epsg")


def assert_same_cloud(a: PointCloud, b: PointCloud, meta: bool = True) -> None:
    assert np.array_equal(a.xyz, b.xyz)
    assert list(a.fields) == list(b.fields)
    for k in a.fields:
        assert a.fields[k].dtype == b.fields[k].dtype, k
        assert np.array_equal(a.fields[k], b.fields[k]), k
    if meta:
        assert np.array_equal(a.meta.raw_xyz, b.meta.raw_xyz)
        assert a.meta.scales.tobytes() == b.meta.scales.tobytes()
        assert a.meta.offsets.tobytes() == b.meta.offsets.tobytes()   # keeps -0.0
        for name in META_FIELDS:
            assert getattr(a.meta, name) == getattr(b.meta, name), name


def assert_matches_laspy(cloud: PointCloud, path: Path) -> None:
    las = laspy.read(path)
    assert np.array_equal(cloud.meta.raw_xyz[:, 0], las.X)
    assert np.array_equal(cloud.meta.raw_xyz[:, 2], las.Z)
    assert np.allclose(cloud.xyz, np.stack([las.x, las.y, las.z], axis=1), rtol=0, atol=1e-9)
    names = [n for n in las.point_format.dimension_names if n not in ("X", "Y", "Z")]
    assert list(cloud.fields) == names
    for n in las.point_format.standard_dimension_names:
        if n not in ("X", "Y", "Z"):
            assert np.array_equal(cloud.fields[n], np.asarray(las[n])), n


@needs_data
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".laz", ".las"])
def test_real_round_trip(path: Path, suffix: str, tmp_path: Path) -> None:
    cloud = read_cloud(path)
    if suffix == ".laz":
        assert_matches_laspy(cloud, path)
    out = tmp_path / f"out{suffix.upper() if path.name.startswith('mnx') else suffix}"
    write_cloud(cloud, out)
    again = read_cloud(out)
    assert_same_cloud(cloud, again)
    assert again.meta.compressed == (suffix == ".laz")
    # header info is consistent with the points, without decoding
    info = read_header_info(out)
    assert info.point_count == len(cloud) and info.point_format == cloud.meta.point_format
    assert np.allclose(info.mins, cloud.xyz.min(axis=0)) and np.allclose(info.maxs, cloud.xyz.max(axis=0))
    assert info.dimensions == list(cloud.fields)


@needs_data
def test_crs_kept_on_test_tiles(tmp_path: Path) -> None:
    for path in TEST_TILES:
        cloud = read_cloud(path)
        assert cloud.meta.epsg == 2154 and "Lambert-93" in cloud.crs_wkt
        assert read_header_info(path).epsg == 2154
    write_cloud(cloud, tmp_path / "a.laz", extra={"pred": np.zeros(len(cloud), np.uint8)})
    assert read_cloud(tmp_path / "a.laz").meta.epsg == 2154
    st_barth = read_header_info(TRAIN[0])
    assert st_barth.crs_wkt is None and st_barth.epsg is None


@needs_data
def test_geokeys_crs() -> None:
    bat = DATA / "ign_lidarhd/train/mnx_bat.laz"
    from data.las import _crs_from_vlrs, read_las    # data.crs via the LAS VLRs
    info = read_header_info(bat)
    assert info.epsg == 2154
    geo = [v for v in read_las(TEST_TILES[0]).meta.vlrs]  # WKT only
    assert _crs_from_vlrs(geo)[1] == 2154
    keys = np.array([1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 2154], "<u2").tobytes()
    from data.las import RawVlr
    assert _crs_from_vlrs([RawVlr("LASF_Projection", 34735, "", keys)]) == ("EPSG:2154", 2154)


@needs_data
def test_extra_dims_added_and_replaced(tmp_path: Path) -> None:
    cloud = read_cloud(TRAIN[1])                 # format 6 with 12 extra dims
    n = len(cloud)
    pred = np.arange(n, dtype=np.uint8)
    prob = np.linspace(0, 1, n, dtype=np.float32)
    new_marker = np.ones(n, np.float64)
    out = tmp_path / "extra.laz"
    write_cloud(cloud, out, extra={"pred": pred, "prob": prob, "dtm_marker": new_marker})
    again = read_cloud(out)
    assert list(again.fields)[: len(cloud.fields)] == list(cloud.fields)
    assert np.array_equal(again.fields["pred"], pred) and again.fields["pred"].dtype == np.uint8
    assert np.array_equal(again.fields["prob"], prob) and again.fields["prob"].dtype == np.float32
    assert np.array_equal(again.fields["dtm_marker"], new_marker)
    for k in cloud.fields:
        if k != "dtm_marker":
            assert np.array_equal(again.fields[k], cloud.fields[k]), k
    # every original VLR kept (the extra-bytes VLR grows by two 192-byte records)
    assert [(v.user_id, v.record_id) for v in again.meta.vlrs] == \
        [(v.user_id, v.record_id) for v in cloud.meta.vlrs]
    eb_old = next(v for v in cloud.meta.vlrs if v.record_id == 4).data
    eb_new = next(v for v in again.meta.vlrs if v.record_id == 4).data
    assert eb_new[: len(eb_old)] == eb_old and len(eb_new) == len(eb_old) + 2 * 192
    assert np.array_equal(again.meta.raw_xyz, cloud.meta.raw_xyz)
    assert "pred" not in cloud.fields                # input cloud untouched


@needs_data
def test_format_upgrade_for_codes_above_31(tmp_path: Path) -> None:
    cloud = read_cloud(TRAIN[0])                 # LAS 1.2 format 1
    assert cloud.meta.point_format == 1 and cloud.meta.version == "1.2"
    cls = cloud.fields["classification"].copy()
    cls[::7] = 64
    cls[::11] = 65
    out = tmp_path / "up.laz"
    write_cloud(cloud, out, extra={"classification": cls})
    up = read_cloud(out)
    assert up.meta.point_format == 6 and up.meta.version == "1.4"
    assert np.array_equal(up.fields["classification"], cls)
    assert np.array_equal(up.meta.raw_xyz, cloud.meta.raw_xyz)
    for k, v in cloud.fields.items():
        if k == "scan_angle_rank":
            assert np.array_equal(np.round(up.fields["scan_angle"] * 0.006), v)
        elif k != "classification":
            assert np.array_equal(up.fields[k], v), k
    # codes <= 31 keep the legacy format
    write_cloud(cloud, tmp_path / "same.las")
    assert read_cloud(tmp_path / "same.las").meta.point_format == 1


@needs_data
def test_modified_xyz_is_requantized(tmp_path: Path) -> None:
    cloud = read_cloud(TEST_TILES[0])
    cloud.xyz = cloud.xyz.copy()
    cloud.xyz[:10, 2] += 1.0
    write_cloud(cloud, tmp_path / "m.las")
    again = read_cloud(tmp_path / "m.las")
    assert np.array_equal(again.meta.raw_xyz[10:], cloud.meta.raw_xyz[10:])
    assert np.array_equal(again.meta.raw_xyz[:10, 2], cloud.meta.raw_xyz[:10, 2] + 100)
    sub = cloud.subset(np.arange(0, len(cloud), 3))  # meta shared, different length
    write_cloud(sub, tmp_path / "s.laz")
    assert np.array_equal(read_cloud(tmp_path / "s.laz").xyz, sub.xyz)


# ---------------------------------------------------------------------------- synthetic
def make_las(path: Path, point_format: int, version: str, n: int = 500, extra: bool = True,
             evlr: bool = False) -> laspy.LasData:
    rng = np.random.default_rng(point_format)
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.array([0.001, 0.001, 0.01])
    header.offsets = np.array([700000.0, 6600000.0, -0.0])
    header.system_identifier = "synthetic"
    header.creation_date = date(2020, 2, 29)
    if extra:
        header.add_extra_dims([laspy.ExtraBytesParams("height", "f4", description="h"),
                               laspy.ExtraBytesParams("label", "u1"),
                               laspy.ExtraBytesParams("normal", "3f8"),
                               laspy.ExtraBytesParams("scaled", "i4", scales=[0.5], offsets=[1.0])])
    header.vlrs.append(laspy.VLR("my_app", 42, "custom", b"\x00\x01binary\xff"))
    las = laspy.LasData(header)
    las.x = 700000 + rng.uniform(0, 100, n)
    las.y = 6600000 + rng.uniform(0, 100, n)
    las.z = rng.uniform(-5, 50, n)
    las.intensity = rng.integers(0, 65535, n)
    las.return_number = rng.integers(1, 4, n)
    las.number_of_returns = np.maximum(las.return_number, rng.integers(1, 4, n))
    las.classification = rng.integers(0, 19, n)
    las.synthetic = rng.integers(0, 2, n)
    las.point_source_id = rng.integers(0, 500, n)
    if "gps_time" in las.point_format.dimension_names:
        las.gps_time = rng.uniform(0, 1e6, n)
    if "red" in las.point_format.dimension_names:
        las.red = rng.integers(0, 65535, n)
    if "nir" in las.point_format.dimension_names:
        las.nir = rng.integers(0, 65535, n)
    if extra:
        las.height = rng.uniform(0, 30, n).astype(np.float32)
        las.label = rng.integers(0, 255, n)
        las.normal = rng.normal(size=(n, 3))
    if evlr:
        las.evlrs = VLRList([laspy.VLR("my_app", 7, "evlr", b"E" * 100)])
    las.write(path)
    return las


@pytest.mark.parametrize("point_format,version", [(1, "1.2"), (3, "1.2"), (6, "1.4"),
                                                  (7, "1.4"), (8, "1.4")])
@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_synthetic_round_trip(point_format: int, version: str, suffix: str, tmp_path: Path) -> None:
    src = tmp_path / f"src{suffix}"
    make_las(src, point_format, version, evlr=version == "1.4")
    cloud = read_cloud(src)
    assert_matches_laspy(cloud, src)
    assert list(cloud.fields)[-4:] == ["height", "label", "normal", "scaled"]
    assert cloud.fields["normal"].shape == (len(cloud), 3)
    assert cloud.meta.creation_date == date(2020, 2, 29)
    if version == "1.4":
        assert [(v.user_id, v.record_id, v.data) for v in cloud.meta.evlrs] == [("my_app", 7, b"E" * 100)]
    for out_suffix in (".las", ".laz"):
        out = tmp_path / f"out{out_suffix}"
        write_cloud(cloud, out)
        assert_same_cloud(cloud, read_cloud(out))
        # a second generation is byte-identical to the first
        write_cloud(read_cloud(out), tmp_path / f"out2{out_suffix}")
        assert (tmp_path / f"out2{out_suffix}").read_bytes() == out.read_bytes()


def test_uppercase_suffix_and_new_cloud(tmp_path: Path) -> None:
    n = 100
    xyz = np.column_stack([np.linspace(0, 10, n), np.linspace(5, 6, n), np.zeros(n)]) + 1000
    cloud = PointCloud(xyz, {"classification": np.full(n, 66, np.uint8),
                             "intensity": np.arange(n, dtype=np.uint16),
                             "score": np.linspace(0, 1, n)})
    write_cloud(cloud, tmp_path / "NEW.LAZ")
    again = read_cloud(tmp_path / "NEW.LAZ")
    assert again.meta.compressed and again.meta.point_format == 6
    assert np.allclose(again.xyz, xyz, atol=5e-4)
    assert np.array_equal(again.fields["classification"], cloud.fields["classification"])
    assert np.array_equal(again.fields["score"], cloud.fields["score"])


def test_write_rejects_values_that_do_not_fit(tmp_path: Path) -> None:
    xyz = np.zeros((3, 3))
    with pytest.raises(DataError, match="intensity"):
        write_cloud(PointCloud(xyz, {"intensity": np.array([1, -2, 70000])}), tmp_path / "a.las")
    with pytest.raises(DataError, match="NaN"):
        write_cloud(PointCloud(np.full((3, 3), np.nan)), tmp_path / "b.las")
    assert not list(tmp_path.iterdir())


def test_copc_layout_records_are_not_copied(tmp_path: Path) -> None:
    """A labelled copy of a COPC file is a plain LAZ: COPC's info VLR and hierarchy EVLR point at
    the source's chunk offsets, so carrying them would make the copy claim to be COPC."""
    src = tmp_path / "src.laz"
    las = make_las(src, 6, "1.4", extra=False)
    las.header.vlrs.insert(0, laspy.VLR("copc", 1, "copc info", b"\x00" * 160))
    las.evlrs = VLRList([laspy.VLR("copc", 1000, "EPT hierarchy", b"\x01" * 32),
                         laspy.VLR("my_app", 7, "evlr", b"E" * 100)])
    las.write(src)
    cloud = read_cloud(src)
    assert ("copc", 1) in {(v.user_id, v.record_id) for v in cloud.meta.vlrs}  # kept on read
    out = tmp_path / "labelled.laz"
    write_cloud(cloud, out, extra={"pred": np.zeros(len(cloud), np.uint8)})
    with laspy.open(out) as f:
        ids = [(v.user_id, v.record_id) for v in f.header.vlrs]
        assert ("my_app", 42) in ids and not any(u == "copc" for u, _ in ids), ids
        assert [(v.user_id, v.record_id) for v in f.header.evlrs] == [("my_app", 7)]
        assert f.header.point_count == len(cloud)
