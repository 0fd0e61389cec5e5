"""Packaging: the wheel holds the design card's packages and the ``lidarseg`` command."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from conftest import REPO
from test_architecture import PACKAGES


def test_wheel_holds_every_package_and_the_console_script(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside pyproject.toml
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "runs"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("lidarseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in PACKAGES:
        sources = {p.relative_to(REPO).as_posix() for p in (REPO / pkg).rglob("*.py")
                   if "__pycache__" not in p.parts}
        assert sources <= set(names), f"{pkg}: missing from the wheel: {sorted(sources - set(names))[:5]}"
    assert not any(n.startswith(("tests/", "benchmarks/", "specs/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lidarseg = pipeline.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_dependencies_are_declared_once():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["dependencies"]}
    assert {"torch", "numpy", "laspy", "pyyaml", "scikit-learn", "rasterio"} <= names
    assert not (REPO / "requirements.txt").exists()
    assert 'install -q -e ".[test,tensorboard]"' in (REPO / "scripts" / "setup_env.sh").read_text()


def test_console_script_runs_like_run_py(tmp_path):
    """The set-up installs the package into the venv: ``lidarseg`` works from any folder."""
    exe = Path(sys.executable).with_name("lidarseg")
    assert exe.is_file(), f"{exe} missing: run bash scripts/setup_env.sh (pip install -e .)"
    ok = subprocess.run([str(exe), "validate", str(REPO / "specs" / "train_demo.yaml")], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "valid (3 steps" in ok.stdout
    bad = subprocess.run([str(exe), "validate", str(REPO / "specs" / "train_demo.yaml"), "--set", "seedd=1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "seedd" in bad.stderr and "Traceback" not in bad.stderr
    assert subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout.startswith("usage: lidarseg")
