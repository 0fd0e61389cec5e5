"""Atomic file writes: write to a temporary name in the target folder, then rename.

Any writer (LAS/LAZ, PLY, GeoTIFF, JSON, PNG...) can use it::

    with atomic_path("out/tile.laz") as tmp:
        write_something(tmp)          # tmp keeps the final suffix (".laz")

On success the temporary file replaces ``final_path`` in one ``os.replace`` (atomic on
POSIX and Windows when both names are on the same filesystem, which is why the temporary
file lives in the same folder). On any exception the temporary file is removed and the
exception propagates, so readers never see a half-written ``final_path`` and an existing
``final_path`` is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; move it into place on success.

    The temporary name is ``.<name>.<random>.tmp<suffix>`` (hidden, same suffix so
    suffix-driven writers pick the right format). The parent folder must exist. The file
    gets the usual ``0o666 & ~umask`` permissions (``mkstemp`` would create it ``0o600``).
    """
    final = Path(final_path)
    folder = final.parent if str(final.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}",
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_folder_target(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output folder that cannot be one (an existing file)."""
    from .errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a folder")
    return path


def make_folder(path: str | os.PathLike, what: str) -> Path:
    """``mkdir -p`` with a clear ``UserError`` naming ``what`` (an option or spec key) when the
    folder cannot be made: an existing file in the way, no permission, a read-only disk."""
    from .errors import UserError

    path = check_folder_target(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: the folder is not writable")
    return path
