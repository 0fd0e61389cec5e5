"""Input selection: dataset names and globs -> sorted lists of existing files."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from data.errors import UserError

CLOUD_SUFFIXES = (".las", ".laz", ".ply")


def expand_patterns(patterns: Iterable[str | Path], root: Path | None, what: str) -> list[Path]:
    """Expand paths/globs (relative ones against ``root``) into a sorted, de-duplicated list.

    A folder means every LAS/LAZ/PLY file in it. A pattern matching nothing is an error
    naming ``what`` (the spec key or command-line option) and the pattern.
    """
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if not p.is_absolute() and root is not None:
            p = root / p
        if p.is_dir():
            matches = sorted(q for q in p.iterdir() if q.suffix.lower() in CLOUD_SUFFIXES)
        elif glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        else:
            matches = [p] if p.exists() else []
        if not matches:
            raise UserError(f"{what}: {pattern!s} matches no file" + (f" (looked in {p.parent})" if root else ""))
        files.extend(matches)
    # absolute, but links kept: outputs and messages take the name the user gave; two names
    # of one file count once (the first given)
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), Path(os.path.abspath(f)))
    return list(unique.values())
