"""One writer per output folder: ``OUT/.lidarseg.lock`` while a run, predict or evaluate
writes into ``OUT``.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ filesystems)
and holds ``{"pid", "host", "started", "command"}``. A second writer is refused with a
message naming the owner. A lock whose owner was on this host and is no longer alive (a
killed run) is stale: it is taken over, with a line saying so. A lock of another host cannot
be checked and is refused; the message says which file to delete if that run is gone.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

LOCK_NAME = ".lidarseg.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's live process
        return True
    return True


def _owner(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "an unreadable lock"
    return (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}: "
            f"{owner.get('command', '?')}")


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, log: Callable[[str], None] = lambda m: None,
                hold: bool = True, name: str = LOCK_NAME) -> Iterator[Path | None]:
    """Hold ``folder/<name>`` (the folder must exist) for the ``with`` block; removed on exit,
    also on errors. ``what`` names the option or key the folder came from. ``hold=False``
    (the other ranks of a torchrun job, whose rank 0 holds it) takes nothing; ``name``: a
    lock of its own for writers of disjoint outputs (``predict --shard``)."""
    if not hold:
        yield None
        return
    lock = Path(folder) / name
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)[:500]}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            stale = owner is not None and owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) \
                and not _alive(owner["pid"])
            if not stale:
                raise UserError(f"{what} {folder}: another lidarseg process is writing into this folder "
                                f"({_describe(owner)}); wait for it or choose another folder (if that process "
                                f"is gone, delete {lock})") from None
            log(f"{what} {folder}: taking over the stale lock of {_describe(owner)} (no such process)")
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise UserError(f"{what} {folder}: cannot create the lock file {lock.name} "
                            f"({exc.strerror or exc})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{what} {folder}: could not take the lock {lock} (another process took it meanwhile)")
    try:
        yield lock
    finally:
        if (_owner(lock) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(OSError):
                lock.unlink()


__all__ = ["LOCK_NAME", "folder_lock"]
