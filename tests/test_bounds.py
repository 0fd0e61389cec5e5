"""Bounded reads: a COPC file decodes only the octree nodes a window meets; other files are
cropped; the window is half-open; a labelled window of a COPC file is a plain LAZ."""
from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pytest

from conftest import DATA
from copc_files import make_copc

import data.las as las_module
from data.bounds import Bounds
from data.errors import DataError, UserError
from data.io import read_cloud, read_header_info, write_cloud
from pipeline.spec import compose_spec_file

TILE = DATA / "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz"


def _key(cloud) -> np.ndarray:
    """Rows sortable independently of point order (COPC returns node order)."""
    order = np.lexsort((cloud.fields["gps_time"], cloud.xyz[:, 2], cloud.xyz[:, 1], cloud.xyz[:, 0]))
    return np.column_stack([cloud.xyz[order], cloud.fields["classification"][order],
                            cloud.fields["gps_time"][order]])


@pytest.fixture(scope="module")
def copc_tile(tmp_path_factory) -> Path:
    return make_copc(TILE, tmp_path_factory.mktemp("copc") / "tile.copc.laz")


@pytest.mark.usefixtures("lidar_data")
def test_copc_window_reads_only_the_nodes_it_meets(copc_tile: Path, monkeypatch) -> None:
    info = read_header_info(copc_tile)
    assert info.copc and not read_header_info(TILE).copc and info.epsg == 2154
    full = read_cloud(TILE)
    mid = (info.mins + info.maxs) / 2
    window = Bounds(info.mins[0], info.mins[1], mid[0] - 3.0, mid[1] - 3.0)   # inside one octant
    decoded = []
    real = las_module._decode_copc_window
    monkeypatch.setattr(las_module, "_decode_copc_window",
                        lambda path, b: decoded.append(len(arr := real(path, b))) or arr)
    monkeypatch.setattr(las_module, "_decode_in_process",
                        lambda *a: pytest.fail("a bounded COPC read decoded the whole file"))
    part = read_cloud(copc_tile, bounds=window)
    # the root (every 10th point) and one child of 8: far fewer records than the file holds
    assert decoded and decoded[0] < 0.45 * info.point_count
    inside = window.contains(full.xyz)
    assert len(part) == inside.sum() > 1000
    assert np.array_equal(_key(part), _key(full.subset(inside)))
    assert part.meta.epsg == 2154


@pytest.mark.usefixtures("lidar_data")
def test_window_is_half_open_and_plain_files_are_cropped(tmp_path: Path) -> None:
    full = read_cloud(TILE)
    x = np.sort(np.unique(full.xyz[:, 0]))
    cut = float(x[len(x) // 2])                                   # a coordinate some points have
    lo, hi = full.xyz.min(axis=0), full.xyz.max(axis=0)
    left = read_cloud(TILE, bounds=Bounds(lo[0], lo[1], cut, hi[1] + 1))
    right = read_cloud(TILE, bounds=Bounds(cut, lo[1], hi[0] + 1, hi[1] + 1))
    assert len(left) + len(right) == len(full)                    # no point twice, none lost
    assert left.xyz[:, 0].max() < cut <= right.xyz[:, 0].min()
    assert np.array_equal(left.xyz, full.xyz[full.xyz[:, 0] < cut])   # file order kept
    write_cloud(full, tmp_path / "t.ply")
    ply = read_cloud(tmp_path / "t.ply", bounds=Bounds(lo[0], lo[1], cut, hi[1] + 1))
    assert np.array_equal(ply.xyz, left.xyz)


@pytest.mark.usefixtures("lidar_data")
def test_labelled_copc_window_is_plain_laz(copc_tile: Path, tmp_path: Path) -> None:
    info = read_header_info(copc_tile)
    mid = (info.mins + info.maxs) / 2
    part = read_cloud(copc_tile, bounds=Bounds(mid[0], mid[1], info.maxs[0] + 1, info.maxs[1] + 1))
    out = tmp_path / "window.laz"
    write_cloud(part, out, extra={"pred": np.ones(len(part), np.uint8)})
    with laspy.open(out) as f:
        assert not any(v.user_id == "copc" for v in f.header.vlrs)
        assert f.header.point_count == len(part)
        assert np.all(f.header.mins[:2] >= mid[:2] - 0.01)
    assert not read_header_info(out).copc
    assert np.array_equal(read_cloud(out).fields["classification"], part.fields["classification"])


@pytest.mark.usefixtures("lidar_data")
def test_bounds_errors(copc_tile: Path) -> None:
    with pytest.raises(DataError, match=r"tile.copc.laz: no point inside the bounds 0,0,1,1 \(the file spans x"):
        read_cloud(copc_tile, bounds=Bounds(0, 0, 1, 1))
    with pytest.raises(DataError, match="test_data_77050_627760_LA93_IGN69.laz: no point inside"):
        read_cloud(TILE, bounds=Bounds(0, 0, 1, 1))
    with pytest.raises(UserError, match=r"--bounds: expected xmin,ymin,xmax,ymax \(four numbers\), got 3"):
        Bounds.of("1,2,3", "--bounds")
    with pytest.raises(UserError, match="--bounds: expected xmin,ymin,xmax,ymax"):
        Bounds.of("a,b,c,d", "--bounds")
    with pytest.raises(UserError, match="inputs.train.0.bounds: bounds .* need xmin < xmax"):
        Bounds.of([5, 0, 1, 1], "inputs.train.0.bounds")
    with pytest.raises(UserError, match="finite"):
        Bounds.of([0, 0, float("nan"), 1], "x")


# -- windows in prediction and training -----------------------------------------------------------

CORNER = Bounds(770530.0, 6277530.0, 770570.0, 6277570.0)     # 40 m around the corner of the 4 test tiles


@pytest.fixture(scope="module")
def copc_tiles(lidar_data, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("copc4")
    return [make_copc(p, folder / f"{p.stem}.copc.laz")
            for p in sorted((lidar_data / "ign_lidarhd/test").glob("*.laz"))]


def test_context_under_a_window(copc_tiles: list[Path], monkeypatch) -> None:
    """Own points: the window's; context: every tile's points (the file's own included) within
    the buffer of the window's part over the file; COPC tiles are read as windows."""
    from pipeline.buffers import NeighbourContext

    ctx = NeighbourContext(copc_tiles, 5.0, bounds=CORNER)
    wholes = [read_cloud(p) for p in copc_tiles]
    monkeypatch.setattr(las_module, "_decode_in_process",
                        lambda *a: pytest.fail("a COPC neighbour was decoded whole"))
    for i, path in enumerate(copc_tiles):
        own = read_cloud(path, bounds=CORNER)
        both = ctx.with_context(i, own)
        n = len(own)
        np.testing.assert_array_equal(both.xyz[:n], own.xyz)
        lo, hi = ctx.lo[i], ctx.hi[i]
        part = Bounds(max(CORNER.xmin, lo[0]), max(CORNER.ymin, lo[1]),
                      min(CORNER.xmax, np.nextafter(hi[0], np.inf)), min(CORNER.ymax, np.nextafter(hi[1], np.inf)))
        box = part.grown(5.0)
        want = sum(int((box.contains(w.xyz) & ~(CORNER.contains(w.xyz) if j == i else False)).sum())
                   for j, w in enumerate(wholes))
        assert len(both) - n == want > 0


def test_predict_and_train_on_windows(copc_tiles: list[Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec.update(output="out", data_root=str(tmp_path))
    window = [770500.0, 6277550.0, 770520.0, 6277580.0]            # a quarter of the tile
    spec["inputs"] = {"train": [{"files": str(copc_tiles[1]), "bounds": window}]}
    spec["steps"] = spec["steps"][:1]
    spec["steps"][0]["model"].update(n_estimators=8, max_samples=20000)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)

    res = cli("run", tmp_path / "spec.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    summary = yaml.safe_load((tmp_path / "out" / "model.bundle" / "bundle.json").read_text())["summary"]
    whole = read_cloud(copc_tiles[1])
    in_window = int(Bounds.of(window, "w").contains(whole.xyz).sum())
    assert 0 < in_window < len(whole)
    assert summary["train_points"] <= in_window < 0.5 * len(whole), summary   # only the window trained

    res = cli("predict", "--model", tmp_path / "out" / "model.bundle", "--input", *copc_tiles,
              "--bounds", str(CORNER), "--buffer", "5", "--out", tmp_path / "pred")
    assert res.returncode == 0, res.stderr
    assert "points of neighbouring files as context" in res.stderr
    for path in copc_tiles:
        out = read_cloud(tmp_path / "pred" / path.name)
        ref = read_cloud(path, bounds=CORNER)
        assert CORNER.contains(out.xyz).all() and len(out) == len(ref)
        np.testing.assert_array_equal(out.fields["classification_ref"], ref.fields["classification"])
        assert not read_header_info(tmp_path / "pred" / path.name).copc
    res = cli("evaluate", "--pred", tmp_path / "pred", "--out", tmp_path / "eval", "--no-views")
    assert res.returncode == 0 and "mIoU" in res.stdout, res.stderr
    res = cli("predict", "--model", tmp_path / "out" / "model.bundle", "--input", *copc_tiles,
              "--bounds", "0,0,1,1", "--out", tmp_path / "none")
    assert res.returncode == 2 and "--bounds 0,0,1,1: none of the 4 input(s) meets the window" in res.stderr
    assert not (tmp_path / "none").exists()


def test_windows_the_user_may_give(copc_tiles: list[Path], rf_tiny_bundle: Path, tmp_path: Path) -> None:
    """A window given with negative coordinates is a value, not an option; an input whose
    header box meets the window but holds no point in it is skipped like one that misses it;
    bounds are printed in full, never as 6.27754e+06."""
    import subprocess
    import sys

    from conftest import REPO

    def cli(*args):
        return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)

    src = TILE
    las = laspy.read(src)
    gap = Bounds(770520.0, 6277570.0, 770530.0, 6277580.0)          # 10 m inside the tile
    assert gap.contains(np.stack([las.x, las.y], 1)).any()
    holed = laspy.LasData(las.header)
    holed.points = las.points[~gap.contains(np.stack([las.x, las.y], 1))]
    holed.write(tmp_path / "holed.laz")
    res = cli("predict", "--model", rf_tiny_bundle, "--input", tmp_path / "holed.laz", src,
              "--bounds", str(gap), "--out", tmp_path / "pred", "--quiet")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "pred").iterdir() if not p.name.startswith(".")) == [src.name]
    res = cli("predict", "--model", rf_tiny_bundle, "--input", tmp_path / "holed.laz",
              "--bounds", str(gap), "--out", tmp_path / "none")
    assert res.returncode == 2 and "holds a point inside it" in res.stderr and "Traceback" not in res.stderr
    assert "770520,6277570,770530,6277580" in res.stderr and "e+06" not in res.stderr
    assert not (tmp_path / "none").exists()
    res = cli("predict", "--model", rf_tiny_bundle, "--input", copc_tiles[0], "--bounds", "-1e12,-1e12,1e12,1e12",
              "--out", tmp_path / "all", "--quiet")
    assert res.returncode == 0, res.stderr
    assert len(read_cloud(tmp_path / "all" / copc_tiles[0].name)) == read_header_info(copc_tiles[0]).point_count


def test_a_damaged_copc_hierarchy_is_named(copc_tile: Path, tmp_path: Path) -> None:
    """A COPC file whose hierarchy pages were wiped says so, instead of 'no point inside'."""
    with laspy.CopcReader.open(copc_tile) as reader:
        offset, size = reader.copc_info.hierarchy_root_offset, reader.copc_info.hierarchy_root_size
    damaged = tmp_path / "damaged.copc.laz"
    data = bytearray(copc_tile.read_bytes())
    data[offset:offset + size] = bytes(size)
    damaged.write_bytes(bytes(data))
    info = read_header_info(copc_tile)
    mid = (info.mins + info.maxs) / 2
    with pytest.raises(DataError, match=r"damaged.copc.laz: corrupt COPC file: its hierarchy"):
        read_cloud(damaged, bounds=Bounds(mid[0], mid[1], mid[0] + 5, mid[1] + 5))
