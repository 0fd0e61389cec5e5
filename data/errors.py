"""User-facing errors.

Every error a user can cause (a bad file, a bad spec, a missing field) is raised as a
``UserError`` subclass whose message names the file and/or spec key and what was expected.
``run.py`` prints the message (no traceback) and exits non-zero.
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; its message is shown as-is, without a traceback."""


class DataError(UserError):
    """A point-cloud or raster file that cannot be read, written or used."""

    def __init__(self, path: object, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class EmptyWindowError(DataError):
    """A bounded read (``data.bounds``) found no point of the file inside the window."""
