"""Square windows over a tile and their size: which windows hold a point, how large a window
the memory budget allows (``pipeline.windows`` predicts a file window by window).

A window of side ``size`` is predicted with a ``halo`` of points around it (the model's
context); :func:`window_size` picks ``size`` so that the largest window with its halo fits a
budget (``--max-memory``, :func:`memory_budget`) at the file's mean density, at a model's
``bytes_per_point``, above :data:`BASE_MEMORY`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from data.errors import UserError

#: bytes of process memory besides the window (interpreter, torch, the model)
BASE_MEMORY = 700e6


@dataclass(frozen=True)
class WindowGrid:
    """Square windows of ``size`` m from ``(x0, y0)``, ``nx`` x ``ny`` of them; each read with
    ``halo`` m around it. Window ``w = i * ny + j`` covers ``[x0 + i size, x0 + (i+1) size)`` x
    ``[y0 + j size, ..)``; the last row and column also take the points on the far edge."""

    x0: float
    y0: float
    size: float
    halo: float
    nx: int
    ny: int

    @classmethod
    def over(cls, mins: np.ndarray, maxs: np.ndarray, size: float, halo: float) -> "WindowGrid":
        nx = max(1, math.ceil((maxs[0] - mins[0]) / size))
        ny = max(1, math.ceil((maxs[1] - mins[1]) / size))
        return cls(float(mins[0]), float(mins[1]), float(size), float(halo), nx, ny)

    def _cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.floor((xy[:, 0] - self.x0) / self.size).astype(np.int64),
                np.floor((xy[:, 1] - self.y0) / self.size).astype(np.int64))

    def core(self, xy: np.ndarray) -> np.ndarray:
        """``[n]`` the window whose core holds each point (points outside the box: the nearest)."""
        i, j = self._cells(xy)
        return np.clip(i, 0, self.nx - 1) * self.ny + np.clip(j, 0, self.ny - 1)

    def members(self, xy: np.ndarray, own: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, windows)``: every (point, window) pair whose core plus halo holds the point
        (with ``own``, always its own core window, even for a point outside the header's box;
        without, only halos: a neighbouring file's points), each pair once, ordered by window,
        then row. The windows a point's halo reaches are its cell's ``(i + di, j + dj)``, distinct
        for distinct offsets, so only its own core window can repeat; it is skipped in the
        offsets, and one sort of ``window * n + row`` orders the pairs (no hash of them). Each
        axis is tested once per offset (``[n]`` masks), and an offset other than ``(0, 0)``
        looks only at the points its masks keep (the halo's bands: a few of them)."""
        n = len(xy)
        i, j = self._cells(xy)
        reach = max(1, math.ceil(self.halo / self.size))
        core = self.core(xy)

        def along(cell: np.ndarray, v: np.ndarray, v0: float, count: int) -> dict[int, np.ndarray]:
            """Offset ``d`` -> ``[n]`` bool: window ``cell + d`` exists and its span holds ``v``."""
            out = {}
            for d in range(-reach, reach + 1):
                w = cell + d
                lo = v0 + w * self.size - self.halo
                out[d] = (w >= 0) & (w < count) & (v >= lo) & (v < lo + self.size + 2 * self.halo)
            return out

        ok_x, ok_y = along(i, xy[:, 0], self.x0, self.nx), along(j, xy[:, 1], self.y0, self.ny)
        band_x = {d: np.flatnonzero(m) for d, m in ok_x.items() if d}
        band_y = {d: np.flatnonzero(m) for d, m in ok_y.items() if d}
        keys = [core * n + np.arange(n)] if own else []
        for di in range(-reach, reach + 1):
            for dj in range(-reach, reach + 1):
                if di:
                    r = band_x[di]
                    r = r[ok_y[dj][r]]
                elif dj:
                    r = band_y[dj]
                    r = r[ok_x[0][r]]
                else:
                    r = np.flatnonzero(ok_x[0] & ok_y[0])
                win = (i[r] + di) * self.ny + (j[r] + dj)
                if own:
                    keep = win != core[r]
                    r, win = r[keep], win[keep]
                keys.append(win * n + r)
        key = np.sort(np.concatenate(keys))
        return key % max(n, 1), key // max(n, 1)


def window_size(points: int, area: float, halo: float, bytes_per_point: float, budget: float,
                extent: tuple[float, float] | None = None) -> float | None:
    """The window side (m) whose points with their halo fit ``budget`` bytes at the file's mean
    density, or None when the whole file fits (``points * bytes_per_point + BASE_MEMORY``).

    A window holds ``(side + 2 halo)^2`` m^2 inside a file; with ``extent`` (the file's
    ``(width, height)`` in m) its halo is cut by the file's edges, so the side is the largest
    whose largest window, clipped to the file (:func:`_largest_window`), fits: a small file
    several windows wide takes windows as large as the budget allows, not interior-sized ones
    (peak memory set by the budget, whatever the file's size)."""
    if points * bytes_per_point + BASE_MEMORY <= budget:
        return None
    density = points / max(area, 1.0)
    fits = max(budget - BASE_MEMORY, 0.0) / (bytes_per_point * density)     # m^2 of window + halo
    side = max(math.sqrt(fits) - 2 * halo, halo, 10.0)
    if extent is None:
        return side
    width, height = (max(float(v), 1.0) for v in extent)
    for bigger in np.arange(math.floor(max(width, height)), side, -1.0):   # 1 m steps, largest first
        x, y = _largest_window(width, bigger, halo), _largest_window(height, bigger, halo)
        if x * y <= fits:
            return max(float(bigger), side)
    return side


def _largest_window(length: float, side: float, halo: float) -> float:
    """The longest extent (m) along an axis of ``length`` m that a window of ``side`` m with its
    ``halo`` covers inside it: the whole axis for one window, ``side + halo`` for two (each
    touches an edge), ``side + 2 halo`` with an interior window; never more than ``length``."""
    n = max(1, math.ceil(length / side))
    return min(length, side + (0 if n == 1 else halo if n == 2 else 2 * halo))


def memory_budget(text: str | None) -> float:
    """``--max-memory`` (``3G``, ``1500M``, ``2.5e9``) in bytes; None: half of this machine's memory."""
    if text is None:
        try:
            return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 4e9
    units = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    s = str(text).strip().upper().removesuffix("B")
    try:
        value = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
    except ValueError:
        raise UserError(f"--max-memory {text}: expected a size such as 3G, 1500M or 2.5e9 (bytes)") from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--max-memory {text}: expected a positive size")
    return value


__all__ = ["BASE_MEMORY", "WindowGrid", "window_size", "memory_budget"]
