"""Region statistics that condition a point network: what differs between surveys.

A point model's ``condition`` lists them; every region of a batch gets one vector ``[D]``
(:func:`region_statistics`), which FiLM-modulates the network's encoder stages
(:class:`hierarchy.StageFiLM`), so the network can tell the surveys it reads apart:

- ``density``: ``log10`` of the region's points per m² of occupied ground,
  ``n / (DENSITY_CELL² * number of DENSITY_CELL cells holding a point)``: tile edges and the
  ``max_points`` cap do not dilute it; thinning augmentation lowers it as it lowers the points;
- ``multi_return``: share of the region's points whose pulse had more than one return;
- ``intensity``: mean of ``log1p(intensity) / log(65536)`` (the sensor's intensity scale).

The per-point values behind the means come from the cloud's fields
(:func:`point_stat_columns`), whatever the network's input channels.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from data.pointcloud import PointCloud
from geometry.features import point_features

__all__ = ["REGION_STATS", "RegionStat", "DENSITY_CELL", "point_stat_columns", "region_statistics"]

REGION_STATS = ("density", "multi_return", "intensity")
RegionStat = Literal[REGION_STATS]
#: Cell size (metres) of the occupied-ground area behind ``density``.
DENSITY_CELL = 2.0
#: Point fields each statistic needs.
_NEEDS = {"density": (), "multi_return": ("number_of_returns",), "intensity": ("intensity",)}


def point_stat_columns(cloud: PointCloud, stats: list[str]) -> np.ndarray:
    """``[N, K]`` float32 per-point values whose region means are the statistics in ``stats``
    other than ``density`` (in their order)."""
    cols = []
    for name in stats:
        cloud.require(_NEEDS[name], f"the region statistic {name!r} needs (drop it from 'condition')")
        if name == "multi_return":
            cols.append(np.asarray(cloud.fields["number_of_returns"]) > 1)
        elif name == "intensity":
            cols.append(point_features(cloud.fields, ["intensity"])["intensity"])   # the input channel's scaling
    if not cols:
        return np.zeros((len(cloud), 0), np.float32)
    return np.stack(cols, axis=1).astype(np.float32)


def region_statistics(xyz: np.ndarray, values: np.ndarray, batch: np.ndarray, regions: int,
                      stats: list[str]) -> np.ndarray:
    """``[B, D]`` float32 statistics of ``regions = B`` packed regions.

    ``xyz [P, 3]`` points, ``values [P, K]`` their :func:`point_stat_columns`, ``batch [P]``
    int64 region of each point (every region holds at least one point). Means are
    ``sum_{p in r} v_p / n_r``; density is ``log10(n_r / (DENSITY_CELL² * cells_r))``.
    """
    n = np.bincount(batch, minlength=regions).astype(np.float64)
    means = [np.bincount(batch, weights=values[:, k], minlength=regions) / np.maximum(n, 1)
             for k in range(values.shape[1])]
    out, k = [], 0
    for name in stats:
        if name == "density":
            cell = np.floor(np.asarray(xyz[:, :2], np.float64) / DENSITY_CELL).astype(np.int64)
            cell -= cell.min(0) if len(cell) else 0
            span = cell.max(0) + 1 if len(cell) else np.ones(2, np.int64)
            key = (batch.astype(np.int64) * span[0] + cell[:, 0]) * span[1] + cell[:, 1]
            cells = np.bincount(np.unique(key) // (span[0] * span[1]), minlength=regions)
            out.append(np.log10(np.maximum(n, 1) / (DENSITY_CELL ** 2 * np.maximum(cells, 1))))
        else:
            out.append(means[k])
            k += 1
    return np.stack(out, axis=1).astype(np.float32) if out else np.zeros((regions, 0), np.float32)
