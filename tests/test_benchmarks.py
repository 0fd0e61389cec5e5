"""Every benchmark runs in its CI-sized ``--quick`` mode, so its code paths stay alive (the
figures themselves are measured by hand and kept in benchmarks/README.md, never asserted)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.spec import compose_spec_file

QUICK = ["bench_ckconv.py", "bench_contention.py", "bench_copc.py", "bench_copc_write.py", "bench_features.py", "bench_ground.py", "bench_io.py", "bench_render.py",
         "bench_kpconvx.py", "bench_ply.py"]


def bench(script: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def test_every_benchmark_is_covered():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")} - {"timing.py"}   # timing: a helper
    # these need a bundle: run below, and coverage_settings.py in tests/test_kpconvx_model.py
    assert scripts == set(QUICK) | {"bench_predict_memory.py", "edge_band.py", "coverage_settings.py",
                                    "window_agreement.py"}


@pytest.mark.usefixtures("lidar_data")
@pytest.mark.parametrize("script", QUICK)
def test_quick_mode_runs(script):
    res = bench(script, "--quick")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "|" in res.stdout or "ratio" in res.stdout, res.stdout[-2000:]


def test_bundle_benchmarks_run(tmp_path, lidar_data):
    import yaml

    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec.update(data_root=str(lidar_data), output="out")
    spec["steps"] = spec["steps"][:1]
    spec["steps"][0]["model"].update(n_estimators=4, max_samples=10000)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    res = subprocess.run([sys.executable, str(REPO / "run.py"), "run", str(tmp_path / "spec.yaml"), "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "out" / "model.bundle"
    res = bench("bench_predict_memory.py", "--bundle", bundle, "--quick", "--work", tmp_path / "big",
                "--max-memory", "100M")
    assert res.returncode == 0 and "largest / smallest" in res.stdout, res.stderr[-3000:]
    res = bench("window_agreement.py", "--bundle", bundle, "--quick", "--work", tmp_path / "agree")
    assert res.returncode == 0 and "all tiles: 100.0000%" in res.stdout, (res.stdout, res.stderr[-3000:])
    res = bench("edge_band.py", bundle)
    assert res.returncode == 0, res.stderr[-3000:]


def test_kpconvx_vs_direct_gathers_runs():
    """bench_kpconvx.py --vs-direct checks ours against the direct gathers, then times both
    in child processes at the four shapes."""
    res = bench("bench_kpconvx.py", "--vs-direct", "--quick")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [tuple(r.split("|")[1:3]) for r in rows] == [(" 16 ", " 64 "), (" 16 ", " 128 "), (" 32 ", " 64 "),
                                                       (" 32 ", " 128 ")]
