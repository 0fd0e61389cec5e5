"""Torch threads that follow the cores other processes leave free (CPU training on a shared box).

With more torch threads than free cores, every parallel region waits for a thread the kernel
has descheduled, and GNU OpenMP's spinning waiters take CPU from the very process they wait
for: measured here, a KPConvX block's forward+backward went from 1.57 s (2 threads, idle) to
3.51 s beside one busy process, slower than one thread (2.7 s). ``ThreadGovernor`` measures,
over the last interval, the CPU time the rest of the machine used::

    others = (busy_all / elapsed_all) * cores - own_cpu / wall      (cores in use by others)
    threads = clamp(round(cores - others), 1, max_threads)

and calls ``torch.set_num_threads`` when that changes. Linux only (``/proc/stat``); elsewhere
it leaves the thread count alone.

:func:`pass_workers` is the prediction side: independent forward passes run one per torch
thread, each single-threaded.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator


def _machine_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Re-chooses the torch thread count at most every ``interval`` seconds (``update()``)."""

    def __init__(self, max_threads: int | None = None, interval: float = 10.0):
        import torch

        self.cores = os.cpu_count() or 1
        self.max_threads = max_threads or torch.get_num_threads()
        self.interval = float(interval)
        self._last = (time.monotonic(), _machine_times(), _own_seconds())

    def free_cores(self) -> float | None:
        """Cores the other processes left free since the last call (None: cannot tell)."""
        now, machine, own = time.monotonic(), _machine_times(), _own_seconds()
        then, machine0, own0 = self._last
        self._last = (now, machine, own)
        if machine is None or machine0 is None or machine[1] <= machine0[1] or now <= then:
            return None
        share = (machine[0] - machine0[0]) / (machine[1] - machine0[1])     # busy share of all cores
        others = share * self.cores - (own - own0) / (now - then)
        return self.cores - max(0.0, others)

    def update(self, force: bool = False) -> int:
        """The thread count to use now (set in torch when it changed)."""
        import torch

        if not force and time.monotonic() - self._last[0] < self.interval:
            return torch.get_num_threads()
        free = self.free_cores()
        if free is None:
            return torch.get_num_threads()
        threads = max(1, min(self.max_threads, int(round(free))))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


@contextmanager
def pass_workers(device: str) -> Iterator[int]:
    """How many independent forward passes (of prediction regions) to run at once on ``device``.

    On CPU with more than one torch thread: one pass per thread, with torch single-threaded
    inside the context (the gather-bound KPConvX layers and the NumPy region work scale better
    across passes than inside one: benchmarks/README.md, "Coverage settings");
    ``LIDARSEG_BLOCK_WORKERS=1`` or any other device: 1, threads unchanged.
    """
    import torch

    threads = torch.get_num_threads()
    workers = threads if device == "cpu" and threads > 1 and os.environ.get("LIDARSEG_BLOCK_WORKERS") != "1" else 1
    if workers > 1:
        torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(threads)
