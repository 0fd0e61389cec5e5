"""The point hierarchy the point networks share (``kpconvx``, ``pointtransformer``): stages of
grid-subsampled points with their neighbour indices.

Stage s (s = 0 .. S-1) holds the points of a grid of cell ``c_s = first_cell * 2**s``
(:func:`geometry.sampling.grid_subsample` of stage s-1); within it, radius neighbours of radius
``radius_factor * c_s`` capped at ``neighbor_limits[s]`` (nearest first); between stages, the
pooling neighbours (stage s+1 points in stage s) and the up-sampling neighbours (the 1 or 3
nearest stage s+1 points of each stage s point). Computed once per batch on the points' device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


class StageGrid:
    """Stage geometry shared by the hierarchy configs (``KPConvXConfig``, the Point
    Transformer's): fields ``widths``, ``blocks``, ``neighbor_limits`` (one per stage),
    ``first_cell``, ``radius_factor``, ``subsample_input`` and ``upsample``; stage s works on a grid of cell
    ``first_cell * 2**s`` with neighbours within ``radius_factor`` cells."""

    def check_stages(self) -> None:
        S = len(self.widths)
        if S < 1 or len(self.blocks) != S or len(self.neighbor_limits) != S:
            raise ValueError(f"widths {self.widths}, blocks {self.blocks} and neighbor_limits "
                             f"{self.neighbor_limits} must have the same non-zero length")
        if self.upsample not in ("nearest", "knn3"):
            raise ValueError(f"upsample must be 'nearest' or 'knn3', got {self.upsample!r}")
        if not self.first_cell > 0:
            raise ValueError(f"first_cell must be > 0, got {self.first_cell}")

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    def cell(self, s: int) -> float:
        """Grid cell size of stage s: ``first_cell * 2**s``."""
        return self.first_cell * 2.0 ** s

    def radius(self, s: int) -> float:
        """Kernel / neighbourhood radius of stage s."""
        return self.radius_factor * self.cell(s)


@dataclass
class Hierarchy:
    """Per-stage point sets and neighbour indices (all on the points' device).

    - ``points[s] [M_s, 3]``, ``batch[s] [M_s]`` int64
    - ``neighbors[s] [M_s, k_s]``: radius neighbours within stage s, shadow = M_s
    - ``pools[s] [M_{s+1}, k_s]`` (s < S-1): neighbours in stage s of stage-(s+1) points
    - ``upsamples[s] [M_s, u]`` (s < S-1), ``up_dists[s] [M_s, u]``: the u (1 or 3) nearest
      stage-(s+1) points of each stage-s point, shadow = M_{s+1}, distance inf
    - ``inverse [N]``: stage-0 row of every input point (None when stage 0 = input)
    - ``counts [M_0]``: input points per stage-0 cell (None when stage 0 = input)
    """

    points: list[Tensor] = field(default_factory=list)
    batch: list[Tensor] = field(default_factory=list)
    neighbors: list[Tensor] = field(default_factory=list)
    pools: list[Tensor] = field(default_factory=list)
    upsamples: list[Tensor] = field(default_factory=list)
    up_dists: list[Tensor] = field(default_factory=list)
    inverse: Optional[Tensor] = None
    counts: Optional[Tensor] = None


@torch.no_grad()
def build_hierarchy(points: Tensor, batch: Optional[Tensor], cfg: StageGrid) -> Hierarchy:
    """Grid-subsampled stages and their neighbour indices for a packed batch.

    ``points [N, 3]`` float, ``batch [N]`` int64 (None: one set). Stage s+1 is
    ``grid_subsample(stage s, cell(s+1))``; neighbours are radius neighbours with radius
    ``cfg.radius(s)`` capped at ``cfg.neighbor_limits[s]`` (nearest first).
    """
    from geometry.neighbors import knn, radius_neighbors  # project neighbour ops (lazy import:
    from geometry.sampling import grid_subsample         # the layer alone does not need them)

    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    if batch is None:
        batch = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    if batch.shape != points.shape[:1]:
        raise ValueError(f"batch must be [N]={points.shape[0]}, got {tuple(batch.shape)}")
    batch = batch.long()
    H = Hierarchy()
    if cfg.subsample_input:
        sub = grid_subsample(points, cfg.cell(0), batch=batch)
        p, b = sub["points"], sub["batch"]
        H.inverse, H.counts = sub["inverse"], sub["counts"]
    else:
        p, b = points, batch
    u = 1 if cfg.upsample == "nearest" else 3
    for s in range(cfg.num_stages):
        H.points.append(p)
        H.batch.append(b)
        r, lim = cfg.radius(s), cfg.neighbor_limits[s]
        H.neighbors.append(radius_neighbors(p, p, r, lim, points_batch=b, queries_batch=b))
        if s + 1 < cfg.num_stages:
            sub = grid_subsample(p, cfg.cell(s + 1), batch=b)
            pc, bc = sub["points"], sub["batch"]
            H.pools.append(radius_neighbors(p, pc, r, lim, points_batch=b, queries_batch=bc))
            dist, idx = knn(pc, p, u, points_batch=bc, queries_batch=b)
            H.upsamples.append(idx)
            H.up_dists.append(dist)
            p, b = pc, bc
    return H
