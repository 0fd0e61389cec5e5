"""Shared fixtures: paths of the real IGN LiDAR HD sample data (never copied into the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

from data.sample_data import SAMPLE_DATA as DATA
from pipeline.spec import compose_spec_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lidar_data() -> Path:
    if not (DATA / "ign_lidarhd").is_dir():
        pytest.fail(f"sample data not found at {DATA} (set LIDARSEG_DATA)")
    return DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription on busy CI boxes."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def rf_tiny_bundle(tmp_path_factory, lidar_data) -> Path:
    """A small forest bundle (specs/train_demo.yaml's model, 4 trees on one training crop)."""
    import subprocess
    import sys

    import yaml

    folder = tmp_path_factory.mktemp("rf_tiny")
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec.update(output="out", data_root=str(lidar_data))
    spec["inputs"] = {"train": ["ign_lidarhd/train/mnx_bat.laz"]}
    spec["steps"] = spec["steps"][:1]
    spec["steps"][0].pop("val_split", None)
    spec["steps"][0]["model"].update(n_estimators=4, max_samples=5000)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    res = subprocess.run([sys.executable, str(REPO / "run.py"), "run", str(folder / "spec.yaml"), "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return folder / "out" / "model.bundle"
