"""Input encoding of the grid model: a cloud -> a raster or voxel grid of network inputs.

Inputs per cell (fixed scalings, no statistics to store): raster ``hag_min/10``,
``hag_max/10``, ``hag_mean/10``, ``log1p(count)/3``, ``multi_return``, optional intensity
(divided by the cloud's median cell intensity), and the occupancy mask; empty cells are 0
with mask 0. Voxel: occupancy, ``log1p(count)/3``, ``hag_mean/10``, ``multi_return``,
optional intensity, and the layer's height ``(level + 0.5) * voxel_height / 10``.

Height bands (raster mode, ``bands = [b_1 < ... < b_{K-1}]`` metres): each point also gets a
band ``k = #{b_i <= h}`` by its height ``h`` above the morphological ground model
(``geometry.heights.height_above_ground``, the DTM the random forest and KPConvX use), so a
cell carries ``K`` labels (``label_rule`` over the points of each band) and the network
predicts ``K`` class distributions per cell; a point reads its band's. Extra inputs with bands:
``log1p(count_k)/3`` per band and the cell's highest point above the DTM ``/10`` (the
``hag_*`` inputs stay above the local minimum: heights above the DTM there scored lower on
validation, benchmarks/README.md). Without bands (``K = 1``) every point of a column takes
its cell's class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from data.errors import DataError
from data.pointcloud import PointCloud

__all__ = ["EncodedGrid", "encode_grid"]


@dataclass
class EncodedGrid:
    """One cloud as network input.

    ``x [*S, F]``, ``mask [*S]``, ``labels [*S, K]`` (raster with ``K`` bands; ``[*S]`` when
    ``K = 1``) or None, ``point_index [N]``: each point's flat index into ``[*S, K]`` (so
    ``probs.reshape(-1, C)[point_index]`` gives its class distribution), ``band_mask [*S, K]``
    (bands holding points).
    """

    x: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    point_index: np.ndarray
    raw: Any                  # geometry.grids.Raster / Voxels
    bands: int = 1
    band_mask: np.ndarray | None = None


def point_bands(hag: np.ndarray, bands: Sequence[float]) -> np.ndarray:
    """``[N]`` int64 band of each height: ``#{b in bands : b <= hag}``."""
    return np.searchsorted(np.asarray(bands, np.float64), np.asarray(hag, np.float64), side="right")


def encode_grid(cloud: PointCloud, labels: np.ndarray | None, *, mode: str, cell_size: float, voxel_height: float,
                levels: int, ground_window: float, label_rule: str, intensity: bool,
                bands: Sequence[float] = ()) -> EncodedGrid:
    """The grid of ``cloud`` (``mode`` raster or voxel) with its input channels, cell labels
    (``label_rule`` over ``labels``, when given) and each point's flat cell/voxel(/band) index."""
    from geometry.grids import cell_aggregate, rasterize, voxelize

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
    index = g.point_cell if mode == "raster" else g.point_voxel
    K = len(bands) + 1 if mode == "raster" else 1
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
    cell_labels, band_mask = g.labels, None
    if K > 1:
        from geometry.heights import height_above_ground

        hag = height_above_ground(cloud.xyz, source=cloud.source)
        index = index * K + point_bands(hag, bands)
        agg = cell_aggregate(index, mask.size * K, cloud.xyz[:, 2], {}, labels, label_rule, minmax={"dtm": hag})
        count = agg["count"].reshape(mask.shape + (K,))
        band_mask = count > 0
        cols += [np.log1p(count[..., k]) / 3 for k in range(K)]
        top = np.nan_to_num(agg["max_dtm"].reshape(mask.shape + (K,)), nan=-np.inf).max(-1)
        cols.append(np.where(mask, top, 0.0) / 10)
        cell_labels = agg["labels"].reshape(mask.shape + (K,)) if labels is not None else None
    cols.append(mask.astype(np.float32))
    x = np.stack(cols, -1).astype(np.float32)
    x[~mask] = 0.0
    return EncodedGrid(x, mask, cell_labels, index, g, K, band_mask)
