"""PLY reader/writer: ascii and binary round trips, types, comments, CRS, extra properties."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

from data.io import PlyMeta, read_cloud, read_header_info, write_cloud
from data.errors import DataError
from data.ply import write_ply
from data.pointcloud import PointCloud

LAZ = DATA / "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz"
FORMATS = ["ascii", "binary_little_endian", "binary_big_endian"]


def make_ply(path: Path, fmt: str, xyz_type: str = "float", n: int = 50) -> dict[str, np.ndarray]:
    """A PLY with every scalar type, x/y/z not first, a face element and comments."""
    rng = np.random.default_rng(0)
    props = [("intensity", "ushort", "u2"), ("x", xyz_type, "f4" if xyz_type == "float" else "f8"),
             ("y", xyz_type, "f4" if xyz_type == "float" else "f8"),
             ("z", xyz_type, "f4" if xyz_type == "float" else "f8"),
             ("c", "char", "i1"), ("uc", "uchar", "u1"), ("s", "short", "i2"), ("i", "int", "i4"),
             ("ui", "uint", "u4"), ("f", "float32", "f4"), ("d", "double", "f8")]
    cols = {}
    for name, _, code in props:
        dt = np.dtype(code)
        cols[name] = (rng.normal(size=n) * 1000).astype(dt) if dt.kind == "f" else \
            rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, n, dtype=dt, endpoint=True)
    header = ["ply", f"format {fmt} 1.0", "comment made by test", "comment crs EPSG:2154",
              "obj_info scanner 1", f"element vertex {n}"] + \
        [f"property {t} {name}" for name, t, _ in props] + \
        ["element face 1", "property list uchar int vertex_indices", "end_header"]
    order = {"binary_big_endian": ">", "binary_little_endian": "<"}.get(fmt)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        if order is None:
            table = np.empty(n, [(name, code) for name, _, code in props])
            for name, _, _ in props:
                table[name] = cols[name]
            np.savetxt(f, table, fmt=["%.9g" if c == "f4" else "%.17g" if c == "f8" else "%d"
                                      for _, _, c in props])
            f.write(b"3 0 1 2\n")
        else:
            table = np.empty(n, [(name, order + code) for name, _, code in props])
            for name, _, _ in props:
                table[name] = cols[name]
            f.write(table.tobytes() + b"\x03" + np.array([0, 1, 2], order + "i4").tobytes())
    return cols


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("xyz_type", ["float", "double"])
def test_ply_round_trip(fmt: str, xyz_type: str, tmp_path: Path) -> None:
    cols = make_ply(tmp_path / "in.ply", fmt, xyz_type)
    cloud = read_cloud(tmp_path / "in.ply")
    assert cloud.xyz.dtype == np.float64
    assert np.array_equal(cloud.xyz[:, 0], cols["x"].astype(np.float64))
    assert list(cloud.fields) == ["intensity", "c", "uc", "s", "i", "ui", "f", "d"]
    for k, v in cloud.fields.items():
        assert v.dtype == cols[k].dtype and np.array_equal(v, cols[k]), k
    meta: PlyMeta = cloud.meta
    assert meta.format == fmt and meta.comments == ["made by test", "crs EPSG:2154"]
    assert meta.obj_info == ["scanner 1"] and cloud.crs_wkt == "EPSG:2154" and meta.epsg == 2154
    for out_fmt in FORMATS:
        out = tmp_path / f"out_{out_fmt}.PLY"
        write_ply(cloud, out, format=out_fmt)
        again = read_cloud(out)
        assert np.array_equal(again.xyz, cloud.xyz)
        assert list(again.fields) == list(cloud.fields)
        for k in cloud.fields:
            assert again.fields[k].dtype == cloud.fields[k].dtype
            assert np.array_equal(again.fields[k], cloud.fields[k]), k
        assert again.meta.properties == meta.properties and again.meta.comments == meta.comments
    # default: same format as read; a 2nd generation is byte-identical
    write_cloud(cloud, tmp_path / "a.ply")
    write_cloud(read_cloud(tmp_path / "a.ply"), tmp_path / "b.ply")
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()
    assert read_cloud(tmp_path / "a.ply").meta.format == fmt


def test_ply_extra_properties(tmp_path: Path) -> None:
    make_ply(tmp_path / "in.ply", "binary_little_endian")
    cloud = read_cloud(tmp_path / "in.ply")
    n = len(cloud)
    extra = {"pred": np.arange(n, dtype=np.uint8), "prob": np.linspace(0, 1, n, dtype=np.float32),
             "flag": np.ones(n, bool), "uc": np.zeros(n, np.uint8)}
    write_cloud(cloud, tmp_path / "out.ply", extra=extra)
    again = read_cloud(tmp_path / "out.ply")
    assert list(again.fields) == list(cloud.fields) + ["pred", "prob", "flag"]
    assert again.fields["flag"].dtype == np.uint8 and again.fields["prob"].dtype == np.float32
    assert np.array_equal(again.fields["uc"], extra["uc"])
    assert np.array_equal(again.fields["pred"], extra["pred"])


@pytest.mark.usefixtures("lidar_data")
def test_las_to_ply_and_back(tmp_path: Path) -> None:
    cloud = read_cloud(LAZ)
    write_cloud(cloud, tmp_path / "tile.ply")
    ply = read_cloud(tmp_path / "tile.ply")
    assert np.array_equal(ply.xyz, cloud.xyz)
    for k in cloud.fields:
        assert np.array_equal(ply.fields[k], cloud.fields[k]), k
    assert ply.meta.epsg == 2154 and "Lambert-93" in ply.crs_wkt
    info = read_header_info(tmp_path / "tile.ply")
    assert info.point_count == len(cloud) and info.epsg == 2154
    write_cloud(ply, tmp_path / "back.laz")
    back = read_cloud(tmp_path / "back.laz")
    assert back.meta.epsg == 2154 and back.meta.point_format == 8
    assert np.allclose(back.xyz, cloud.xyz, atol=1e-6)
    assert np.array_equal(back.fields["classification"], cloud.fields["classification"])


def test_new_cloud_to_ply(tmp_path: Path) -> None:
    cloud = PointCloud(np.arange(12, dtype=np.float64).reshape(4, 3),
                       {"label": np.array([1, 2, 3, 64], np.int64)})
    write_cloud(cloud, tmp_path / "n.ply")
    again = read_cloud(tmp_path / "n.ply")
    assert again.meta.format == "binary_little_endian"
    assert np.array_equal(again.xyz, cloud.xyz) and np.array_equal(again.fields["label"], [1, 2, 3, 64])


def test_ply_elements_around_vertex(tmp_path: Path) -> None:
    """Elements with list properties before 'vertex' are read past (plyfile parses them);
    list properties on 'vertex' itself and duplicate names are clear errors."""
    head = "ply\nformat ascii 1.0\nelement camera 1\nproperty list uchar float view\n"
    (tmp_path / "cam.ply").write_text(head + "element vertex 2\nproperty double x\nproperty double y\n"
                                      "property double z\nproperty ushort intensity\nend_header\n"
                                      "3 0.5 1.5 2.5\n1 2 3 7\n4 5 6 65535\n")
    cloud = read_cloud(tmp_path / "cam.ply")
    assert np.array_equal(cloud.xyz, [[1, 2, 3], [4, 5, 6]])
    assert cloud.fields["intensity"].dtype == np.uint16 and cloud.fields["intensity"][1] == 65535
    (tmp_path / "lst.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty double x\n"
                                      "property double y\nproperty double z\n"
                                      "property list uchar int n\nend_header\n1 2 3 1 9\n")
    with pytest.raises(DataError, match="lst.ply: PLY vertex element has list properties"):
        read_cloud(tmp_path / "lst.ply")
    (tmp_path / "dup.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty double x\n"
                                      "property double x\nproperty double z\nend_header\n1 2 3\n")
    with pytest.raises(DataError, match="dup.ply: corrupt PLY file: two properties with same name"):
        read_cloud(tmp_path / "dup.ply")
    (tmp_path / "typ.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty half x\nend_header\n1\n")
    with pytest.raises(DataError, match="typ.ply: bad PLY header: line 4: field type 'half'"):
        read_cloud(tmp_path / "typ.ply")
