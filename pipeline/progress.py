"""Progress bars and log lines on stderr; ``--quiet`` silences both."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

from . import distributed

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def log(message: str) -> None:
    """A line on stderr; under torchrun only rank 0's, but warnings from every rank (prefixed)."""
    if _quiet:
        return
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)
    elif message.startswith("warning"):
        print(f"[rank {distributed.rank()}] {message}", file=sys.stderr, flush=True)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=_quiet or not distributed.is_main(), file=sys.stderr,
                dynamic_ncols=True, leave=False)
