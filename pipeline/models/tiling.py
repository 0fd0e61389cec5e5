"""Inference tiling of grids: overlapping square tiles, padded windows, tent blending.

A ``[rows, cols, ...]`` grid is covered by ``crop`` x ``crop`` tiles starting at
:func:`tile_starts` (stride ``round(crop * (1 - overlap))``, the last tile flush with the
edge); each tile's softmax is weighted by :func:`tent_weight` (``min(i + 1, crop - i)`` per
axis, outer product) and the weighted sum is divided by the summed weights. Training crops
use the same :func:`window` (padded past the edges). Point models cover clouds with
overlapping regions instead (``pipeline.regions.predict_coverage``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["tile_starts", "tent_weight", "window"]


def tile_starts(n: int, crop: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``crop`` cells covering ``n`` cells, overlapping by ``overlap``."""
    if n <= crop:
        return [0]
    stride = max(1, int(round(crop * (1 - overlap))))
    s = list(range(0, n - crop + 1, stride))
    return s if s[-1] == n - crop else s + [n - crop]


def tent_weight(crop: int, extra_dims: int = 0) -> np.ndarray:
    """``[crop, crop, 1 x extra_dims]`` float32 blending weight, highest at the tile centre."""
    ramp = np.minimum(np.arange(crop) + 1, crop - np.arange(crop)).astype(np.float32)
    tent = np.outer(ramp, ramp) / ramp.max() ** 2
    return tent.reshape((crop, crop) + (1,) * extra_dims)


def window(a: np.ndarray, r: int, q: int, c: int, fill: Any) -> np.ndarray:
    """``a[r:r+c, q:q+c]`` as a ``[c, c, *a.shape[2:]]`` array, padded with ``fill`` past the edges."""
    out = np.full((c, c) + a.shape[2:], fill, a.dtype)
    win = a[r:r + c, q:q + c]
    out[:win.shape[0], :win.shape[1]] = win
    return out
