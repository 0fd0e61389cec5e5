"""The in-memory point cloud: NumPy arrays plus a small attribute container.

A ``PointCloud`` is what every pipeline step passes around (never a laspy object):

- ``xyz``    ``[N, 3]`` float64 real-world coordinates (scale/offset applied).
- ``fields`` ``{name: [N] array}`` every other point dimension in its file dtype, in file
  order (LAS standard dimensions by laspy's lowercase names, e.g. ``intensity``,
  ``return_number``, ``classification``, ``red``; extra bytes and PLY properties by their own
  names).
- ``meta``   format-specific header data the writer needs to reproduce the file exactly
  (``LasMeta`` / ``PlyMeta`` from ``data.io``); opaque to the rest of the pipeline.
- ``source`` the path it was read from, for error messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataError


@dataclass
class PointCloud:
    xyz: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    meta: Any = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz)
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"xyz must be [N, 3], got {self.xyz.shape}")
        n = len(self.xyz)
        for name, values in self.fields.items():
            if len(values) != n:
                raise ValueError(f"field {name!r} has {len(values)} values for {n} points")

    def __len__(self) -> int:
        return len(self.xyz)

    def has(self, name: str) -> bool:
        return name in self.fields

    def require(self, names: tuple[str, ...] | list[str], needed_by: str) -> None:
        """A :class:`DataError` naming this cloud's file when it lacks any field of ``names``
        (``needed_by``: what needs them and how to do without, for the message)."""
        missing = [n for n in names if n not in self.fields]
        if missing:
            raise DataError(self.source, f"has no {', '.join(repr(m) for m in missing)} field, which {needed_by}")

    @property
    def crs_wkt(self) -> str | None:
        """The cloud's CRS as WKT, or None when the file has none."""
        return getattr(self.meta, "crs_wkt", None)

    def fields_with(self, extra: dict[str, np.ndarray] | None, path: object) -> dict[str, np.ndarray]:
        """``fields`` plus ``extra`` (same names replaced); a wrong length is a DataError on ``path``."""

        fields = dict(self.fields)
        for name, values in (extra or {}).items():
            values = np.asarray(values)
            if len(values) != len(self):
                raise DataError(path, f"extra field {name!r} has {len(values)} values for {len(self)} points")
            fields[name] = values
        return fields

    def subset(self, index: np.ndarray) -> "PointCloud":
        """Points selected by an index or boolean mask (meta is shared)."""
        return PointCloud(self.xyz[index], {k: v[index] for k, v in self.fields.items()},
                          self.meta, self.source)
