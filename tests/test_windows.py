"""Whole tiles in windows (pipeline/windows.py): every point labelled once, every other field
kept, labels equal to whole-tile prediction where a window's halo covers the model's context."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import laspy
import numpy as np
import pytest

from conftest import REPO
from data.errors import UserError

TILE = "ign_lidarhd/test/test_data_77050_627755_LA93_IGN69.laz"


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def test_window_members_match_their_definition():
    from pipeline.window_grid import WindowGrid

    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [95, 61], (4000, 2))
    xy[:3] = [[95, 61], [0, 0], [95, 0]]                       # corners, the far edges included
    grid = WindowGrid.over(np.array([0.0, 0.0]), np.array([95.0, 61.0]), 20.0, 7.5)
    assert (grid.nx, grid.ny) == (5, 4)
    rows, wins = grid.members(xy)
    got = set(zip(rows.tolist(), wins.tolist()))
    assert len(got) == len(rows)                                # each pair once
    assert np.all(np.diff(wins * len(xy) + rows) > 0)           # by window, then row
    want = set()
    for r, (x, y) in enumerate(xy):
        for i in range(grid.nx):
            for j in range(grid.ny):
                lo_x, lo_y = i * 20.0 - 7.5, j * 20.0 - 7.5
                if lo_x <= x < lo_x + 35.0 and lo_y <= y < lo_y + 35.0:
                    want.add((r, i * grid.ny + j))
    halo_rows, halo_wins = grid.members(xy, own=False)          # a neighbouring file's points: halos only
    assert set(zip(halo_rows.tolist(), halo_wins.tolist())) == want and len(halo_rows) == len(want)
    core = grid.core(xy)
    want |= set(zip(range(len(xy)), core.tolist()))           # its own window, the far edge too
    assert got == want
    # the cores partition the points
    i, j = np.minimum((xy // 20.0).astype(int), [4, 3]).T
    np.testing.assert_array_equal(core, i * 4 + j)


def test_memory_budget_sizes():
    from pipeline.window_grid import BASE_MEMORY, memory_budget, window_size

    assert memory_budget("3G") == 3e9 and memory_budget("1500M") == 1.5e9 and memory_budget("2.5e9") == 2.5e9
    assert memory_budget(None) > 0
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(UserError, match="--max-memory"):
            memory_budget(bad)
    assert window_size(1000, 1e4, 20.0, 200.0, 3e9) is None                   # fits whole
    side = window_size(50_000_000, 4e6, 30.0, 200.0, 3e9)                      # 12.5 points/m^2
    fits = (3e9 - BASE_MEMORY) / 200.0 / 12.5
    assert side == pytest.approx(np.sqrt(fits) - 60.0)
    # halos cut by the file's edges: a file two windows wide takes the largest side whose edge
    # windows (side + halo, clipped to the file) fit; a file with interior windows keeps the side
    w, h = np.sqrt(fits) * 1.5, np.sqrt(fits) * 1.4
    edge = window_size(int(12.5 * w * h), w * h, 30.0, 200.0, 3e9, (w, h))
    assert edge > side and np.ceil(w / edge) == np.ceil(h / edge) == 2
    assert min(edge + 30, w) * min(edge + 30, h) <= fits < min(edge + 31, w) * min(edge + 31, h)
    assert window_size(50_000_000, 4e6, 30.0, 200.0, 3e9, (2000.0, 2000.0)) == pytest.approx(side)


@pytest.fixture(scope="module")
def rf(rf_tiny_bundle):
    from pipeline.bundle import load_bundle

    return load_bundle(rf_tiny_bundle)


def _predict(bundle, src, out, window, halo=None):
    from data.io import read_header_info
    from pipeline.labelling import OutputOptions, labelled_cloud
    from pipeline.windows import predict_windowed

    target = out / src.name
    out.mkdir(parents=True, exist_ok=True)
    n = predict_windowed(bundle.model, bundle.class_map, src, target, device="cpu", grid_size=window,
                         halo=bundle.model.context if halo is None else halo,
                         anchor=np.asarray(read_header_info(src).mins, np.float64),
                         label=lambda c, p: labelled_cloud(c, p, bundle.class_map, OutputOptions()))
    return target, n


def test_windows_with_the_whole_context_equal_whole_tile_prediction(rf, lidar_data, tmp_path):
    """Windows of 12 m whose halo covers the forest's context: the labelled file equals the
    whole-tile one in every dimension, header and VLRs."""
    from pipeline.labelling import predict_files

    src = lidar_data / TILE
    whole = predict_files(rf.model, rf.class_map, [src], tmp_path / "whole")[0][1]
    windowed, n = _predict(rf, src, tmp_path / "win", 12.0)
    assert n >= 12
    a, b = laspy.read(whole), laspy.read(windowed)
    assert a.header.point_format.id == b.header.point_format.id and len(a.points) == len(b.points)
    assert list(a.point_format.dimension_names) == list(b.point_format.dimension_names)
    for name in a.point_format.dimension_names:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    np.testing.assert_array_equal(a.header.scales, b.header.scales)
    np.testing.assert_array_equal(a.header.offsets, b.header.offsets)
    assert [(v.user_id, v.record_id) for v in a.header.vlrs] == [(v.user_id, v.record_id) for v in b.header.vlrs]
    assert not list((tmp_path / "win").glob(".lidarseg-windows-*"))      # temporary files removed


def test_windows_with_a_buffer_equal_whole_buffered_prediction(rf, lidar_data, tmp_path):
    """``--buffer`` in windows: the neighbouring crops' points within the buffer are context of
    the windows whose halo holds them (streamed, not read whole). Each crop labelled in 12 m
    windows matches its whole buffered prediction: the first's labels everywhere, the others'
    but at a handful of points (k-NN ties and grid origins of a window's cloud); without the context the
    first crop differs at ~40 points, so a lost neighbour would show."""
    from pipeline.labelling import Memory, predict_files

    crops = sorted((lidar_data / "ign_lidarhd" / "test").glob("*.laz"))
    whole = dict(predict_files(rf.model, rf.class_map, crops, tmp_path / "whole", buffer=8.0))
    windowed = dict(predict_files(rf.model, rf.class_map, crops, tmp_path / "win", buffer=8.0,
                                  memory=Memory(window=12.0)))
    alone = dict(predict_files(rf.model, rf.class_map, crops[:1], tmp_path / "alone"))
    codes = {name: {src: np.asarray(laspy.read(out[src]).classification) for src in out}
             for name, out in (("whole", whole), ("windowed", windowed), ("alone", alone))}
    first = crops[0]
    np.testing.assert_array_equal(codes["whole"][first], codes["windowed"][first])
    for src in crops:
        assert len(codes["windowed"][src]) == laspy.read(src).header.point_count
        assert (codes["whole"][src] != codes["windowed"][src]).sum() <= 8, src.name
    assert (codes["whole"][first] != codes["alone"][first]).sum() > 20


def test_windows_under_bounds_equal_whole_bounded_prediction(rf, lidar_data, tmp_path):
    """``--bounds`` in windows: only the points inside are predicted and written, in input
    order, as by a whole bounded prediction (without a buffer: no context outside; with one:
    the file's own points around the window too)."""
    from data.bounds import Bounds
    from pipeline.labelling import Memory, predict_files

    src = lidar_data / TILE
    box = Bounds(770505.0, 6277505.0, 770535.0, 6277540.0)
    for buffer in (0.0, 6.0):
        kw = dict(bounds=box, buffer=buffer)
        whole = predict_files(rf.model, rf.class_map, [src], tmp_path / f"whole{buffer}", **kw)[0][1]
        win = predict_files(rf.model, rf.class_map, [src], tmp_path / f"win{buffer}", memory=Memory(window=12.0),
                            **kw)[0][1]
        a, b = laspy.read(whole), laspy.read(win)
        inside = box.contains(np.stack([laspy.read(src).x, laspy.read(src).y], 1)).sum()
        assert len(a.points) == len(b.points) == inside < laspy.read(src).header.point_count
        for name in ("X", "Y", "gps_time", "classification", "classification_ref"):
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=f"{buffer} {name}")


def test_preview_of_a_windowed_file(rf, lidar_data, tmp_path, monkeypatch):
    """``--preview`` with windows: the view drawn from the labelled points gathered while the
    output is written; all of a small file's points: the whole path's picture, to the byte. A
    large file's view is drawn from every k-th point."""
    import pipeline.windows as windows
    from pipeline.labelling import Memory, OutputOptions, predict_files

    src, opts, view = lidar_data / TILE, OutputOptions(preview=True), f"{TILE.split('/')[-1][:-4]}_view.png"
    predict_files(rf.model, rf.class_map, [src], tmp_path / "whole", options=opts)
    predict_files(rf.model, rf.class_map, [src], tmp_path / "win", options=opts, memory=Memory(window=20.0))
    assert (tmp_path / "win" / view).read_bytes() == (tmp_path / "whole" / view).read_bytes()
    monkeypatch.setattr(windows, "VIEW_POINTS", 1000)
    seen = []
    real = windows._write_merged
    monkeypatch.setattr(windows, "_write_merged", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    predict_files(rf.model, rf.class_map, [src], tmp_path / "few", options=opts, memory=Memory(window=20.0))
    out = laspy.read(tmp_path / "few" / src.name)
    step = -(-len(out.points) // 1000)
    assert len(seen[-1]) <= 1000 and (tmp_path / "few" / view).is_file()
    np.testing.assert_array_equal(seen[-1].fields["classification"], np.asarray(out.classification)[::step])


def test_small_halo_labels_every_point_once_and_keeps_the_rest(rf, lidar_data, tmp_path):
    src = lidar_data / TILE
    windowed, n = _predict(rf, src, tmp_path / "win", 10.0, halo=3.0)
    inp, out = laspy.read(src), laspy.read(windowed)
    assert len(out.points) == len(inp.points) and n >= 20
    for name in inp.point_format.dimension_names:
        if name != "classification":
            np.testing.assert_array_equal(np.asarray(inp[name]), np.asarray(out[name]), err_msg=name)
    np.testing.assert_array_equal(np.asarray(out["classification_ref"]), np.asarray(inp.classification))
    assert np.isin(np.asarray(out.classification), rf.class_map.output_codes).all()
    assert np.isfinite(np.asarray(out["confidence"])).all()


def test_a_failing_window_leaves_nothing(rf, lidar_data, tmp_path, monkeypatch):
    from data.errors import DataError

    calls = {"n": 0}
    real = rf.model.predict

    def flaky(cloud, device="cpu", anchor=None, targets=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise DataError(cloud.source, "simulated failure in the third window")
        return real(cloud, device, anchor, targets)

    monkeypatch.setattr(rf.model, "predict", flaky)
    with pytest.raises(DataError, match="third window"):
        _predict(rf, lidar_data / TILE, tmp_path / "win", 10.0, halo=3.0)
    assert list((tmp_path / "win").iterdir()) == []


def test_cli_windows_and_budget(rf_tiny_bundle, lidar_data, tmp_path):
    """``--window`` / ``--max-memory`` reach the windowed path; a bad size is named (exit 2)."""
    res = cli("predict", "--model", rf_tiny_bundle, "--input", lidar_data / TILE, "--out", tmp_path / "a",
              "--window", "20")
    assert res.returncode == 0, res.stderr
    assert "windows of 20 m" in res.stderr
    res = cli("predict", "--model", rf_tiny_bundle, "--input", lidar_data / TILE, "--out", tmp_path / "b",
              "--max-memory", "1K")                      # nothing fits: the smallest windows
    assert res.returncode == 0 and "windows of" in res.stderr, res.stderr
    a, b = laspy.read(tmp_path / "a" / "test_data_77050_627755_LA93_IGN69.laz"), \
        laspy.read(tmp_path / "b" / "test_data_77050_627755_LA93_IGN69.laz")
    assert len(a.points) == len(b.points) == laspy.read(lidar_data / TILE).header.point_count
    res = cli("predict", "--model", rf_tiny_bundle, "--input", lidar_data / TILE, "--out", tmp_path / "c",
              "--max-memory", "lots")
    assert res.returncode == 2 and "--max-memory lots" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()


def test_forest_predict_cell_gives_each_cell_its_representatives_probabilities(rf, lidar_data):
    """``predict_cell``: every point takes the probabilities that the full prediction gives its
    cell's representative (features of a row equal that row's among all); with ``targets`` the
    representatives are drawn from the targets and the other rows stay uniform."""
    from data.io import read_cloud
    from geometry.sampling import grid_representatives

    cloud = read_cloud(lidar_data / TILE)
    model = rf.model
    full = model.predict_proba(cloud)
    model.config.predict_cell = 1.0
    try:
        cell = model.predict_proba(cloud)
        rows, inverse = grid_representatives(cloud.xyz, 1.0)
        assert len(rows) < len(cloud) / 2
        np.testing.assert_allclose(cell, full[rows][inverse], rtol=1e-5, atol=1e-6)
        targets = cloud.xyz[:, 0] < np.median(cloud.xyz[:, 0])
        part = model.predict_proba(cloud, targets=targets)
        t = np.flatnonzero(targets)
        rows_t, inverse_t = grid_representatives(cloud.xyz[t], 1.0)
        np.testing.assert_allclose(part[t], full[t[rows_t]][inverse_t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(part[~targets], 1 / rf.class_map.num_classes)
        # predict_share: features: each point classified on its cell's neighbourhood features and
        # its own per-point ones; cells of 0.1 mm (one point each, or exact duplicates, whose
        # neighbourhoods are the same) give the full prediction back
        model.config.predict_share = "features"
        shared = model.predict_proba(cloud)
        assert 0.5 < np.mean(shared.argmax(1) == full.argmax(1)) < 1
        model.config.predict_cell = 1e-4
        np.testing.assert_allclose(model.predict_proba(cloud), full, rtol=1e-5, atol=1e-6)
    finally:
        model.config.predict_cell, model.config.predict_share = 0.0, "labels"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_windows_return_freed_heap_pages_to_the_system():
    """After a window, the heap pages it freed go back (glibc keeps them otherwise)."""
    from pipeline.windows import return_freed_memory

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytearray(b"\x01") * (64 * 1024) for _ in range(4000)]   # 256 MB of heap blocks (below mmap's threshold)
    keep = blocks[-1]
    del blocks                                                # freed, the top one still held
    before = rss()
    return_freed_memory()
    assert before - rss() > 100e6
    assert len(keep) == 64 * 1024
