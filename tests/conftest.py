"""Shared fixtures: paths of the real IGN LiDAR HD sample data (never copied into the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.components  # noqa: F401  (registers every step and model type, as run.py does)
from data.sample_data import SAMPLE_DATA as DATA

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
