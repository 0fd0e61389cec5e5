"""Bounding boxes in the x/y plane: a window of a point cloud to read, predict or train on.

A ``Bounds`` is ``[xmin, xmax) x [ymin, ymax)`` in the file's coordinates (half-open, so
adjacent windows on a grid never share a point). Reading a COPC file with bounds decodes only
the octree nodes that meet the box (``data.las``); any other file is read whole and cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Bounds:
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def __post_init__(self) -> None:
        problem = bounds_problem([self.xmin, self.ymin, self.xmax, self.ymax])
        if problem:
            raise UserError(problem)

    @classmethod
    def of(cls, value: "Bounds | Sequence[float] | str", what: str) -> "Bounds":
        """From ``[xmin, ymin, xmax, ymax]`` or ``"xmin,ymin,xmax,ymax"``; a UserError names ``what``."""
        if isinstance(value, Bounds):
            return value
        problem = bounds_problem(value)
        if problem:
            raise UserError(f"{what}: {problem}")
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
        return cls(*parts)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """``[N]`` bool: ``xmin <= x < xmax`` and ``ymin <= y < ymax`` for ``xy [N, >=2]``."""
        x, y = xy[:, 0], xy[:, 1]
        return (x >= self.xmin) & (x < self.xmax) & (y >= self.ymin) & (y < self.ymax)

    def meets(self, lo: Sequence[float], hi: Sequence[float]) -> bool:
        """Whether the closed box ``[lo, hi]`` (e.g. a file's header bounds) meets this window."""
        return bool(lo[0] < self.xmax and hi[0] >= self.xmin and lo[1] < self.ymax and hi[1] >= self.ymin)

    def grown(self, metres: float) -> "Bounds":
        return Bounds(self.xmin - metres, self.ymin - metres, self.xmax + metres, self.ymax + metres)

    def clipped(self, lo: Sequence[float], hi: Sequence[float]) -> "Bounds | None":
        """This window cut to the closed box ``[lo, hi]`` (``hi`` nudged so its points stay in);
        None when they do not meet."""
        if not self.meets(lo, hi):
            return None
        return Bounds(max(self.xmin, float(lo[0])), max(self.ymin, float(lo[1])),
                      min(self.xmax, math.nextafter(float(hi[0]), math.inf)),
                      min(self.ymax, math.nextafter(float(hi[1]), math.inf)))

    def as_list(self) -> list[float]:
        return [self.xmin, self.ymin, self.xmax, self.ymax]

    def __str__(self) -> str:
        return ",".join(repr(float(v)).removesuffix(".0") for v in self.as_list())   # in full, never 6.27754e+06


def bounds_problem(value: object) -> str | None:
    """What is wrong with ``value`` as ``[xmin, ymin, xmax, ymax]`` (or ``"xmin,ymin,xmax,ymax"``), or None."""
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return f"expected xmin,ymin,xmax,ymax (four numbers), got {value!r}"
    if len(parts) != 4:
        return f"expected xmin,ymin,xmax,ymax (four numbers), got {len(parts)}"
    if not all(math.isfinite(v) for v in parts):
        return f"bounds must be four finite numbers, got {parts}"
    if not (parts[0] < parts[2] and parts[1] < parts[3]):
        return f"bounds [xmin, ymin, xmax, ymax] need xmin < xmax and ymin < ymax, got {parts}"
    return None


__all__ = ["Bounds", "bounds_problem"]
