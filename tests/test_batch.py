"""Batch prediction over many tiles: killed runs resume, workers share the inputs by
--shard, and the outputs are indexed as one virtual point cloud (.vpc) for QGIS."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, REPO

from data.errors import UserError
from data.io import read_cloud, read_header_info
from pipeline.batch import parse_shard, take_shard

TILES = sorted((DATA / "ign_lidarhd" / "test").glob("*.laz"))


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_a_killed_batch_redoes_only_the_missing_tiles(tmp_path, rf_tiny_bundle, lidar_data):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "run.py"), "predict", "--model", str(rf_tiny_bundle), "--input", *map(str, TILES),
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecars = out / ".lidarseg"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (sidecars.is_dir() and any(sidecars.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name[:-5] for p in sidecars.iterdir())
    assert 1 <= len(finished) < len(TILES), finished
    before = {name: (out / name).stat().st_mtime_ns for name in finished}
    res = cli("predict", "--model", rf_tiny_bundle, "--input", *TILES, "--out", out)     # the same command again
    assert res.returncode == 0, res.stderr
    assert "taking over the stale lock" in res.stderr                  # the killed run's lock
    assert f"{len(TILES) - len(finished)} done, {len(finished)} skipped" in res.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == before      # not redone
    for tile in TILES:
        assert len(read_cloud(out / tile.name)) == read_header_info(tile).point_count
    assert not [p for p in out.iterdir() if ".tmp" in p.name]            # the killed run's temporaries
    # the same content elsewhere: still complete; changed content or another model: done again
    copy = tmp_path / "in" / TILES[0].name
    copy.parent.mkdir()
    copy.write_bytes(TILES[0].read_bytes())
    res = cli("predict", "--model", rf_tiny_bundle, "--input", copy, "--out", out)
    assert res.returncode == 0 and "skipped (complete from an earlier run)" in res.stderr, res.stderr
    cloud = read_cloud(TILES[0])
    from data.io import write_cloud

    write_cloud(cloud.subset(np.arange(0, len(cloud), 2)), copy)
    res = cli("predict", "--model", rf_tiny_bundle, "--input", copy, "--out", out)
    assert res.returncode == 0 and "done in" in res.stderr, res.stderr
    assert len(read_cloud(out / TILES[0].name)) == (len(cloud) + 1) // 2
    other = tmp_path / "other.bundle"
    other.mkdir()
    for f in rf_tiny_bundle.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "bundle.json").read_text())
    meta["summary"]["note"] = "another model"
    (other / "bundle.json").write_text(json.dumps(meta))
    res = cli("predict", "--model", other, "--input", copy, "--out", out)
    assert res.returncode == 0 and "done in" in res.stderr, res.stderr


def test_shards_split_the_inputs_without_coordination(tmp_path, rf_tiny_bundle, lidar_data):
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(REPO / "run.py"), "predict", "--model", str(rf_tiny_bundle),
                               "--input", *map(str, TILES), "--out", str(out), "--shard", f"{k}/2", "--quiet"],
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for k in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sorted(p.name for p in out.glob("*.laz")) == [t.name for t in TILES]
    assert sorted(p.name for p in (out / ".lidarseg").iterdir()) == sorted(f"{t.name}.json" for t in TILES)
    assert parse_shard("1/4") == (1, 4) and take_shard(list("abcdefg"), (1, 3)) == ["b", "e"]
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_outputs_are_indexed_as_a_virtual_point_cloud(tmp_path, rf_tiny_bundle, lidar_data):
    out = tmp_path / "out"
    res = cli("predict", "--model", rf_tiny_bundle, "--input", *TILES, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    vpc = json.loads((out / "index.vpc").read_text())
    assert vpc["type"] == "FeatureCollection" and len(vpc["features"]) == len(TILES)
    for item, tile in zip(vpc["features"], TILES):
        info = read_header_info(out / tile.name)
        props = item["properties"]
        assert (out / item["assets"]["data"]["href"]).resolve() == (out / tile.name).resolve()
        assert props["pc:count"] == info.point_count and props["proj:epsg"] == 2154
        np.testing.assert_allclose(props["proj:bbox"], [*info.mins, *info.maxs])
        west, south, _, east, north, _ = item["bbox"]
        assert 3 < west < east < 5 and 43 < south < north < 44        # Lambert-93 770 km E, 6277 km N in degrees
        assert "pointcloud" in item["stac_extensions"][0]
