"""torchrun on CPU (gloo): DDP training, sharded prediction and merged evaluation.

Each test starts ``torchrun --nproc_per_node 2`` (two processes on this machine)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import pytest

from conftest import REPO
from pipeline.spec import compose_spec_file

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIDARSEG_DIST_TIMEOUT": "300"}
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(free_port()),
                           *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_ranks_average_gradients_and_agree_on_weights(tmp_path):
    res = torchrun(REPO / "tests" / "ddp_trainer_check.py", tmp_path / "ddp")
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads((tmp_path / "ddp" / "weights.json").read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1]                 # every rank holds the same weights
    ref = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_trainer_check.py"), str(tmp_path / "one"),
                          "--reference", "2"], capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    one = json.loads((tmp_path / "one" / "weights.json").read_text())[0]
    # DDP over two ranks = one process minimising the mean of the two ranks' losses
    np.testing.assert_allclose(ranks[0], one, rtol=1e-5, atol=1e-6)
    rows = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(rows) == 6 and not (tmp_path / "one" / "x").exists()   # rank 0 alone writes the log


@pytest.fixture(scope="module")
def rf_bundle(tmp_path_factory, lidar_data):
    import yaml

    folder = tmp_path_factory.mktemp("ddp_rf")
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec["data_root"] = str(lidar_data)
    spec["output"] = "out"
    spec["steps"] = spec["steps"][:1]
    spec["steps"][0]["model"].update(n_estimators=8, max_samples=20000)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("run", path, "--quiet")
    assert res.returncode == 0, res.stderr
    return folder / "out" / "model.bundle"


def test_sharded_predict_and_merged_evaluate_equal_one_process(rf_bundle, lidar_data, tmp_path):
    tiles = sorted((lidar_data / "ign_lidarhd" / "test").glob("*.laz"))
    one = cli("predict", "--model", rf_bundle, "--input", *tiles, "--out", tmp_path / "one", "--quiet")
    assert one.returncode == 0, one.stderr
    two = torchrun("run.py", "predict", "--model", rf_bundle, "--input", *tiles, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "done: 4 labelled file(s)" in two.stdout and "(2 processes)" in two.stdout
    assert two.stdout.count("done:") == 1                               # rank 0 alone sums up
    assert sorted(p.name for p in (tmp_path / "two").glob("*.laz")) == [t.name for t in tiles]
    assert len(json.loads((tmp_path / "two" / "index.vpc").read_text())["features"]) == 4   # both ranks' files
    for t in tiles:
        a, b = laspy.read(tmp_path / "one" / t.name), laspy.read(tmp_path / "two" / t.name)
        np.testing.assert_array_equal(a.classification, b.classification)
        np.testing.assert_array_equal(a.X, b.X)
    for name, run in (("one", cli), ("two", torchrun)):
        args = ("evaluate", "--pred", tmp_path / name / "*.laz", "--out", tmp_path / f"eval_{name}",
                "--classes", REPO / "specs" / "train_demo.yaml", "--no-views")
        res = run(*args) if name == "one" else run("run.py", *args)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"eval_{n}" / "report.json").read_text()) for n in ("one", "two"))
    assert a == b                                                       # the merged report is the same


def test_a_failing_file_is_named_and_the_other_rank_finishes(rf_bundle, lidar_data, tmp_path):
    tiles = sorted((lidar_data / "ign_lidarhd" / "test").glob("*.laz"))
    broken = tmp_path / "in" / "zz_broken.laz"
    broken.parent.mkdir()
    broken.write_bytes(tiles[0].read_bytes()[:5000])
    res = torchrun("run.py", "predict", "--model", rf_bundle, "--input", *tiles[:3], broken,
                   "--out", tmp_path / "out")
    assert res.returncode != 0
    assert "zz_broken.laz" in res.stderr and "truncated or corrupt LAZ" in res.stderr
    assert "[rank0]: Traceback" not in res.stderr and "[rank1]: Traceback" not in res.stderr   # (torchrun's own stays)
    # rank 0 had tiles 0 and 2, rank 1 tile 1 and the broken file: three outputs exist
    assert sorted(p.name for p in (tmp_path / "out").glob("*.laz")) == sorted(t.name for t in tiles[:3])


from test_kpconvx_model import data_root, read_log, tiny_spec  # noqa: E402,F401  (data_root: a fixture)


def test_two_process_training_checkpoints_and_resume(tmp_path, data_root):  # noqa: F811
    """run.py under torchrun trains KPConvX with DDP for a few steps; rank 0 writes the log,
    checkpoint and bundle; --resume continues under the same world size, a plain run refuses."""
    spec = tiny_spec(tmp_path / "two", data_root, val=True)
    res = torchrun("run.py", "run", spec, "--limit-steps", "4", "--stop-after", "2", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    work = spec.parent / "out" / "model.work"
    assert [int(r["step"]) for r in read_log(work)] == [1, 2]
    res = torchrun("run.py", "run", spec, "--limit-steps", "4", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("resumed from") == 1                       # rank 0 alone speaks
    rows = read_log(work)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[-1]["val_miou"] != ""
    out = spec.parent / "out"
    assert (out / "model.bundle" / "bundle.json").is_file() and (out / "evaluation" / "report.json").is_file()
    assert json.loads((out / "model.bundle" / "bundle.json").read_text())["summary"]["steps"] == 4
    one = cli("run", spec, "--limit-steps", "4", "--resume")
    assert one.returncode == 2 and "written by 2 process(es), this run has 1" in one.stderr


def test_sync_batchnorm_is_refused_on_cpu_with_its_key(tmp_path, data_root):  # noqa: F811
    import yaml

    spec = tiny_spec(tmp_path / "sbn", data_root, val=False)
    data = yaml.safe_load(spec.read_text())
    data["steps"][0]["model"].setdefault("optim", {})["sync_batchnorm"] = True
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cli("validate", spec).returncode == 0
    res = torchrun("run.py", "run", spec, "--limit-steps", "2", "--quiet")
    assert res.returncode != 0
    assert "optim.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only" in res.stderr
    assert "[rank0]: Traceback" not in res.stderr
