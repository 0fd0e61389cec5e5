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


def _env_int(name: str, default: int) -> int:
    """An integer launch variable; a value that is not one is a ``UserError`` naming it."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        from data.errors import UserError

        raise UserError(f"environment variable {name}={value!r}: expected an integer (torchrun sets it; "
                        "unset it for a single process)") from None


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def check_launch() -> None:
    """Refuse, before any work, launch variables that cannot describe a process group: non-
    integers, a rank outside ``0..WORLD_SIZE-1`` (e.g. ``WORLD_SIZE=1 RANK=1``, which would
    train and never write the bundle), and several processes without ``MASTER_ADDR``/``MASTER_PORT``."""
    from data.errors import UserError

    world, me, local = world_size(), rank(), local_rank()
    if world < 1:
        raise UserError(f"environment variable WORLD_SIZE={world}: must be >= 1")
    if not 0 <= me < world:
        raise UserError(f"environment variables RANK={me}, WORLD_SIZE={world}: the rank must be in 0..{world - 1} "
                        "(launch with torchrun, or unset both for a single process)")
    if local < 0:
        raise UserError(f"environment variable LOCAL_RANK={local}: must be >= 0")
    if world > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: the ranks cannot find "
                            "each other (launch with torchrun, which sets them)")
        _env_int("MASTER_PORT", 0)


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _wait_for_master(timeout: float) -> None:
    """Wait (up to ``timeout`` s) until ``MASTER_ADDR:MASTER_PORT`` accepts a connection, so an
    unreachable master is one clear error instead of torch's C++ store traces."""
    import socket
    import time

    from data.errors import UserError

    addr, port = os.environ.get("MASTER_ADDR", ""), _env_int("MASTER_PORT", 0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, max(timeout, 0.1))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise UserError(f"rank {rank()} of {world_size()}: nothing answers at MASTER_ADDR:MASTER_PORT = "
                                f"{addr}:{port} after {timeout:g} s ({exc.strerror or exc}); is rank 0 running and "
                                "the address reachable? (LIDARSEG_DIST_TIMEOUT sets the wait)") from None
            time.sleep(0.5)


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
        timeout = float(os.environ.get("LIDARSEG_DIST_TIMEOUT", 1800))
        if rank() != 0:
            _wait_for_master(timeout)
        try:
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                    timeout=timedelta(seconds=timeout))
        except (RuntimeError, TimeoutError, ValueError, OSError) as exc:   # DistError subclasses RuntimeError
            from data.errors import UserError

            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"rank {rank()} of {world_size()} could not join the process group at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({detail[:300]}); "
                            "is rank 0 running and the address reachable?") from None
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
