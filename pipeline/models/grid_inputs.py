"""Input encoding of the grid model: a cloud -> a raster or voxel grid of network inputs.

Inputs per cell (fixed scalings, no statistics to store): raster ``hag_min/10``,
``hag_max/10``, ``hag_mean/10``, ``log1p(count)/3``, ``multi_return``, optional intensity
(divided by the cloud's median cell intensity), and the occupancy mask; empty cells are 0
with mask 0. Voxel: occupancy, ``log1p(count)/3``, ``hag_mean/10``, ``multi_return``,
optional intensity, and the layer's height ``(level + 0.5) * voxel_height / 10``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data.errors import DataError
from data.pointcloud import PointCloud

__all__ = ["EncodedGrid", "encode_grid"]


@dataclass
class EncodedGrid:
    """One cloud as network input: x [*S, F], mask [*S], labels [*S] or None, point index [N]."""

    x: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    point_index: np.ndarray
    raw: Any                  # geometry.grids.Raster / Voxels


def encode_grid(cloud: PointCloud, labels: np.ndarray | None, *, mode: str, cell_size: float, voxel_height: float,
                levels: int, ground_window: float, label_rule: str, intensity: bool) -> EncodedGrid:
    """The grid of ``cloud`` (``mode`` raster or voxel) with its input channels, cell labels
    (``label_rule`` over ``labels``, when given) and each point's flat cell/voxel index."""
    from geometry.grids import rasterize, voxelize

    fields = {k: v for k, v in cloud.fields.items() if k in ("intensity", "number_of_returns")}
    try:
        if mode == "raster":
            g = rasterize(cloud.xyz, fields, cell_size, labels=labels, label_rule=label_rule,
                          ground_window=ground_window)
            mask = g.mask
        else:
            g = voxelize(cloud.xyz, fields, cell_size, voxel_height, levels, vertical="ground",
                         labels=labels, label_rule=label_rule, ground_window=ground_window)
            mask = g.occupancy
    except ValueError as exc:
        raise DataError(cloud.source, f"cannot build the grid: {exc}") from None
    f = {n: np.nan_to_num(g.features[..., i], nan=0.0) for i, n in enumerate(g.feature_names)}
    if "multi_return" not in f:
        raise DataError(cloud.source, "has no 'number_of_returns' field (needed by ckconv_grid)")
    cols = []
    if mode == "raster":
        cols += [f["hag_min"] / 10, f["hag_max"] / 10, f["hag_mean"] / 10]
    else:
        level_h = (np.arange(levels, dtype=np.float32) + 0.5) * voxel_height / 10
        cols += [mask.astype(np.float32), f["hag_mean"] / 10, np.broadcast_to(level_h, mask.shape)]
    cols += [np.log1p(f["count"]) / 3, f["multi_return"]]
    if intensity:
        if "intensity" not in f:
            raise DataError(cloud.source, "has no 'intensity' field (intensity: true)")
        med = float(np.median(f["intensity"][mask])) if mask.any() else 1.0
        cols.append(f["intensity"] / max(med, 1e-6))
    cols.append(mask.astype(np.float32))
    x = np.stack(cols, -1).astype(np.float32)
    x[~mask] = 0.0
    index = g.point_cell if mode == "raster" else g.point_voxel
    return EncodedGrid(x, mask, g.labels, index, g)
