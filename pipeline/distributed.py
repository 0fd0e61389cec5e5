"""torchrun support: the process group, who does what, and how work is shared.

``torchrun --nproc_per_node N run.py run SPEC`` (or ``... predict ...``) starts N processes that
find each other through the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). A plain ``python run.py`` is world size 1 and
none of this does anything.

- backend: ``nccl`` when the device is CUDA (one GPU per local rank: ``cuda:LOCAL_RANK``),
  ``gloo`` on CPU; collective timeout ``LIDARSEG_DIST_TIMEOUT`` seconds (default 1800).
- training: every rank trains (DistributedDataParallel averages the gradients); rank 0 alone
  validates, writes ``log.csv``/TensorBoard/checkpoints/bundle; the others wait at barriers.
- prediction: the sorted input list is sharded ``inputs[rank::world]``; each file is written by
  exactly one rank; evaluation sums the ranks' confusion matrices (all_reduce).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a process group of more than one process."""
    if world_size() == 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def setup(device: str) -> str:
    """Join the process group torchrun describes (no-op for one process); this rank's device."""
    if world_size() == 1:
        return device
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=timedelta(seconds=float(os.environ.get("LIDARSEG_DIST_TIMEOUT", 1800))))
    return device


def teardown(clean: bool = True) -> None:
    """Leave the process group; ``clean``: wait for every rank first (a rank that stops on an
    error does not: the others may be inside another collective, and torchrun stops them)."""
    if active():
        import torch.distributed as dist

        if clean:
            try:
                dist.barrier()
            except RuntimeError:   # a peer already left after an error of its own
                pass
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over the ranks (the array itself for one process)."""
    if not active():
        return values
    import torch
    import torch.distributed as dist

    t = torch.from_numpy(np.array(values, copy=True))
    dist.all_reduce(t)
    return t.numpy()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (plain data), in rank order; ``[obj]`` for one process."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world]`` (all of them for one process)."""
    return list(items)[rank()::world_size()] if active() else list(items)
