"""Batch prediction bookkeeping: which outputs are complete, which share of the inputs is
this worker's, and how far a run has got.

- **Sidecars** (``OUT/.lidarseg/<output name>.json``, written atomically after the output
  itself): the input's identity (path, size, mtime, sha256), the model's digest and the
  prediction options, and the output's size. A re-run skips an output whose sidecar matches
  the input, the model and the options and whose file has the recorded size; anything else
  (no sidecar: the run was killed before it; another model; a changed input) is predicted
  again. An input whose size and mtime are unchanged is taken as unchanged (as make and
  rsync do); otherwise its sha256 decides.
- **Shards** (``--shard K/N``, K in ``0..N-1``): worker K takes every N-th input of the sorted
  list, starting at K, with no coordination: a Slurm or Kubernetes job array passes its index.
- **Progress**: one line per file (done / skipped / failed) with an ETA from the files done.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

from data.atomic import atomic_path
from data.errors import UserError

from .bundle import file_sha256

T = TypeVar("T")
SIDECARS = ".lidarseg"


def parse_shard(text: str | None, what: str = "--shard") -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; None for None."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UserError(f"{what} {text}: expected K/N, two integers (worker K of N, K from 0)") from None
    if not (n >= 1 and 0 <= k < n):
        raise UserError(f"{what} {text}: need N >= 1 and 0 <= K < N")
    return k, n


def take_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """This worker's share: ``items[K::N]`` of the items in the given (sorted) order."""
    return list(items) if shard is None else list(items)[shard[0]::shard[1]]


def _identity(path: Path, with_hash: bool) -> dict[str, Any]:
    st = os.stat(path)
    out: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        out["sha256"] = file_sha256(path)
    return out


def sidecar_path(output: Path) -> Path:
    """``OUT/.lidarseg/<output name>.json``; a name too long for the filesystem's 255 bytes is
    shortened and made unique by its hash."""
    name = f"{output.name}.json"
    if len(name.encode()) > 255:
        short = output.name.encode()[:200].decode("utf-8", errors="ignore")
        name = f"{short}.{hashlib.sha256(output.name.encode()).hexdigest()[:16]}.json"
    return output.parent / SIDECARS / name


@dataclass
class Ledger:
    """The sidecars of one output folder for one model and one set of options."""

    model: str                                  # bundle_digest
    options: dict[str, Any]                     # what else changes the labels
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.options = json.loads(json.dumps(self.options))     # as a sidecar reads it back (lists)

    def complete(self, source: Path, output: Path) -> bool:
        """True when ``output`` was made from this ``source`` with this model and options."""
        try:
            side = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
            if not (isinstance(side, dict) and side.get("model") == self.model and side.get("options") == self.options
                    and output.is_file() and output.stat().st_size == side.get("output_size")):
                return False
            recorded, now = side.get("input", {}), _identity(source, with_hash=False)
            if recorded.get("size") != now["size"]:
                return False
            return recorded.get("mtime_ns") == now["mtime_ns"] or recorded.get("sha256") == file_sha256(source)
        except (OSError, ValueError, AttributeError):
            return False

    def record(self, source: Path, output: Path) -> None:
        """Write ``output``'s sidecar (after the output itself is in place)."""
        side = {"input": {"path": str(source), **_identity(source, with_hash=True)}, "model": self.model,
                "options": self.options, "output": output.name, "output_size": output.stat().st_size}
        target = sidecar_path(output)
        target.parent.mkdir(exist_ok=True)
        with atomic_path(target) as tmp:
            Path(tmp).write_text(json.dumps(side, indent=1), encoding="utf-8")

    def line(self, name: str, what: str) -> str:
        """``[i/N] name: what`` with an ETA from the files predicted so far."""
        seen = self.done + self.skipped + len(self.failed)
        eta = ""
        if self.done and seen < self.total:
            per_file = (time.monotonic() - self.started) / self.done
            eta = f", ETA {per_file * (self.total - seen) / 60:.1f} min"
        return f"[{seen}/{self.total}] {name}: {what}{eta}"

    def summary(self) -> str:
        return (f"{self.done} done, {self.skipped} skipped (complete from an earlier run), "
                f"{len(self.failed)} failed")


__all__ = ["parse_shard", "take_shard", "Ledger", "sidecar_path", "SIDECARS"]
