"""Inference tiling of grids: overlapping square tiles, padded windows, tent blending.

A ``[rows, cols, ...]`` grid is covered by ``crop`` x ``crop`` tiles on a lattice of absolute
cell indices (:func:`lattice_starts`: every ``stride = round(crop * (1 - overlap))`` cells from an
anchor cell, each tile that meets the grid, padded past its edges), so that two grids of
the same aligned cells (a whole tile and a window of it) place the same tiles wherever they
overlap; each tile's softmax is weighted by :func:`tent_weight` (``min(i + 1, crop - i)`` per
axis, outer product) and the weighted sum is divided by the summed weights. Training crops
use the same :func:`window` (padded past the edges). Point models cover clouds with
overlapping regions instead (``pipeline.regions.predict_coverage``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["lattice_starts", "tent_weight", "window"]


def lattice_starts(first: int, n: int, crop: int, overlap: float, anchor: int) -> list[int]:
    """Absolute starts ``t = anchor + k * stride`` (any integer ``k``) of the tiles
    ``[t, t + crop)`` that meet the cells ``[first, first + n)``, ``stride = round(crop * (1 - overlap))``
    (at least 1)."""
    stride = max(1, int(round(crop * (1 - overlap))))
    lo = -((anchor - (first - crop + 1)) // stride)           # ceil((first - crop + 1 - anchor) / stride)
    hi = (first + n - 1 - anchor) // stride
    return [anchor + k * stride for k in range(lo, hi + 1)]


def tent_weight(crop: int, extra_dims: int = 0) -> np.ndarray:
    """``[crop, crop, 1 x extra_dims]`` float32 blending weight, highest at the tile centre."""
    ramp = np.minimum(np.arange(crop) + 1, crop - np.arange(crop)).astype(np.float32)
    tent = np.outer(ramp, ramp) / ramp.max() ** 2
    return tent.reshape((crop, crop) + (1,) * extra_dims)


def window(a: np.ndarray, r: int, q: int, c: int, fill: Any) -> np.ndarray:
    """``a[r:r+c, q:q+c]`` as a ``[c, c, *a.shape[2:]]`` array, padded with ``fill`` past the
    edges (``r``, ``q`` may be negative: a tile hanging over the first row or column)."""
    out = np.full((c, c) + a.shape[2:], fill, a.dtype)
    r0, q0 = max(r, 0), max(q, 0)
    win = a[r0:max(r + c, 0), q0:max(q + c, 0)]
    out[r0 - r:r0 - r + win.shape[0], q0 - q:q0 - q + win.shape[1]] = win
    return out
