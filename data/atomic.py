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
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator


NAME_MAX = 255   # bytes in one file name (ext4, XFS, APFS, NTFS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: errors of the disk rather than of the program: a full disk or quota, a file too large for
#: the filesystem, a read-only filesystem
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for the filesystem", errno.EROFS: "read-only filesystem"}


def disk_error(exc: BaseException, path: str | os.PathLike):
    """A ``DataError`` naming ``path`` for an ``OSError`` of the disk (:data:`DISK_ERRNOS`),
    else None (the exception is a bug or another problem and keeps its own form)."""
    from .errors import DataError

    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return DataError(path, f"cannot write: {DISK_ERRNOS[exc.errno]} (nothing was left under this name)")
    return None


def _temporary_affixes(final: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of :func:`atomic_path`'s temporary names for ``final``: the name
    is shortened in the prefix so that prefix, mkstemp's 8 random characters and suffix stay
    within the filesystems' 255-byte limit."""
    suffix = f".tmp{final.suffix}"
    budget = NAME_MAX - len(suffix.encode()) - 8 - 2
    return "." + final.name.encode()[:budget].decode("utf-8", errors="ignore") + ".", suffix


def remove_stale_temporaries(final_path: str | os.PathLike) -> None:
    """Delete the temporaries a killed writer of ``final_path`` left beside it (a process
    killed inside :func:`atomic_path` cannot remove its own)."""
    import glob

    final = Path(final_path)
    prefix, suffix = _temporary_affixes(final)
    for stale in final.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; move it into place on success.

    The temporary name is ``.<name>.<random>.tmp<suffix>`` (hidden, same suffix so
    suffix-driven writers pick the right format; ``<name>`` shortened to keep it within 255
    bytes). The parent folder must exist. The file
    gets the usual ``0o666 & ~umask`` permissions (``mkstemp`` would create it ``0o600``).
    """
    final = Path(final_path)
    folder = final.parent if str(final.parent) else Path(".")
    prefix, suffix = _temporary_affixes(final)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as exc:
        raise (disk_error(exc, final) or exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        converted = disk_error(exc, final)
        if converted is not None:
            raise converted from None
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
