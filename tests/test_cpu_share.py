"""pipeline.cpu_share: the thread count follows the cores other processes leave free."""
from __future__ import annotations

import pytest
import torch

import pipeline.cpu_share as cs


@pytest.fixture
def clock(monkeypatch):
    """A fake machine: 4 cores; tests set the jiffies, our CPU seconds and the time."""
    state = {"busy": 0, "total": 0, "own": 0.0, "now": 0.0}
    monkeypatch.setattr(cs, "_machine_times", lambda: (state["busy"], state["total"]))
    monkeypatch.setattr(cs, "_own_seconds", lambda: state["own"])
    monkeypatch.setattr(cs.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(cs.os, "cpu_count", lambda: 4)
    n = torch.get_num_threads()
    yield state
    torch.set_num_threads(n)


def advance(state, seconds, busy_cores, own_cores):
    """``seconds`` pass with ``busy_cores`` of 4 busy, ``own_cores`` of them ours (100 jiffies/s)."""
    state["now"] += seconds
    state["total"] += int(400 * seconds)
    state["busy"] += int(100 * busy_cores * seconds)
    state["own"] += own_cores * seconds


def test_free_cores_formula_and_thread_choice(clock):
    gov = cs.ThreadGovernor(max_threads=4, interval=10.0)
    advance(clock, 10, busy_cores=4, own_cores=2)          # others hold 2 of 4 cores
    assert gov.free_cores() == pytest.approx(2.0)
    advance(clock, 10, busy_cores=4, own_cores=3)          # others hold 1
    assert gov.update() == 3 and torch.get_num_threads() == 3
    advance(clock, 5, busy_cores=4, own_cores=1)           # before the interval: unchanged
    assert gov.update() == 3
    advance(clock, 10, busy_cores=4, own_cores=0.5)        # others hold 3.5 of 4: at least 1
    assert gov.update() == 1
    advance(clock, 10, busy_cores=1, own_cores=1)          # machine idle but us: all 4, capped at max
    assert gov.update() == 4
    gov2 = cs.ThreadGovernor(max_threads=2, interval=0.0)
    advance(clock, 1, busy_cores=0, own_cores=0)
    assert gov2.update() == 2                                 # never above max_threads


def test_pass_workers_one_block_per_thread_on_cpu(monkeypatch):
    import torch

    from pipeline.cpu_share import pass_workers

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("LIDARSEG_BLOCK_WORKERS", raising=False)
        with pass_workers("cpu") as workers:
            assert workers == 2 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pass_workers("cuda") as workers:
            assert workers == 1 and torch.get_num_threads() == 2
        monkeypatch.setenv("LIDARSEG_BLOCK_WORKERS", "1")
        with pass_workers("cpu") as workers:
            assert workers == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
