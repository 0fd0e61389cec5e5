"""KPConvX encoder-decoder segmentation network over a grid-subsampled point hierarchy.

Stage s (s = 0 .. S-1) works on points subsampled on a grid of cell size
``c_s = first_cell * 2**s``; its kernel radius is ``radius_factor * c_s`` (kernel shells at
``shell_radii * radius``) and its influence distance ``sigma = sigma_factor * c_s``.

    stem:     f0 = act(BN(features W0))                            [M_0, w_0]
    encoder:  x_s = KPConvXLayer_s(X_s, f_s, N_s)                  [M_s, w_s]
              f_{s+1} = act(BN(maxpool_{P_s}(x_s) W_s))            [M_{s+1}, w_{s+1}]
    decoder:  y_s = act(BN([interp_{U_s}(y_{s+1}), x_s] V_s))      [M_s, w_s]
    head:     logits = act(BN(y_0 H1)) H2                          [M_0, classes]
    output:   logits[inverse_0]                                    [N, classes]

Neighbour structures (N_s radius neighbours capped at ``neighbor_limits[s]`` and padded with
the shadow index, pooling neighbours P_s, up-sampling neighbours U_s) come from
:func:`build_hierarchy`, computed once per batch with the project's ``geometry.neighbors`` and
``geometry.sampling`` ops on the device of the points.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .layer import BN_EPS, LEAKY_SLOPE, KPConvXLayer


class StageGrid:
    """Stage geometry shared by the hierarchy configs (``KPConvXConfig``, the Point
    Transformer's): fields ``widths``, ``blocks``, ``neighbor_limits`` (one per stage),
    ``first_cell``, ``radius_factor`` and ``upsample``; stage s works on a grid of cell
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
class KPConvXConfig(StageGrid):
    """Network hyper-parameters (lengths of the per-stage tuples = number of stages S)."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    neighbor_limits: tuple[int, ...] = (16, 16, 16, 16)
    first_cell: float = 0.04          # grid cell size of stage 0 (doubles per stage)
    subsample_input: bool = True      # stage 0 = grid_subsample(input, first_cell); else raw
    radius_factor: float = 2.5        # kernel / neighbour radius = radius_factor * cell
    sigma_factor: float = 1.0         # influence distance sigma = sigma_factor * cell
    shell_radii: tuple[float, ...] = (0.0, 0.5, 1.0)   # fractions of the kernel radius
    shell_points: tuple[int, ...] = (1, 14, 28)
    dh_factor: int = 4                # DH = dh_factor * width
    groups: int = 8                   # channels per attention value
    drop_path: float = 0.0            # max stochastic depth, rising linearly over blocks
    bn_momentum: float = 0.98         # Keras convention (torch momentum = 1 - m)
    upsample: str = "nearest"         # "nearest" or "knn3" (inverse-distance 3-NN)
    deformable: bool = False

    def __post_init__(self) -> None:
        self.check_stages()
        for w in self.widths:
            if w % self.groups:
                raise ValueError(f"groups={self.groups} must divide every width, got {w}")

    @classmethod
    def small(cls, **overrides) -> "KPConvXConfig":
        """CPU / CI preset: 4 stages, widths 32-128, 1 block per stage, 16 neighbours."""
        base = cls(widths=(32, 64, 96, 128), blocks=(1, 1, 1, 1),
                   neighbor_limits=(16, 16, 16, 16), shell_points=(1, 7, 13),
                   dh_factor=2, groups=8, drop_path=0.0)
        return replace(base, **overrides)

    @classmethod
    def full(cls, **overrides) -> "KPConvXConfig":
        """GPU preset in the spirit of KPConvX-L on S3DIS: 5 stages, widths 64-256, blocks
        3,3,9,12,3, DH = 4x, groups 8, shells (0, 0.5, 1)*radius with (1, 14, 42) points."""
        base = cls(widths=(64, 96, 128, 192, 256), blocks=(3, 3, 9, 12, 3),
                   neighbor_limits=(16, 20, 20, 20, 20), first_cell=0.04, radius_factor=2.1,
                   sigma_factor=1.0, shell_points=(1, 14, 42), dh_factor=4, groups=8,
                   drop_path=0.3, upsample="knn3")
        return replace(base, **overrides)


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
def build_hierarchy(points: Tensor, batch: Optional[Tensor], cfg: KPConvXConfig) -> Hierarchy:
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


def unary(cin: int, cout: int, bn_momentum: float) -> nn.Sequential:
    """Point-wise ``act(BN(x W))``: ``[P, cin] -> [P, cout]``."""
    return nn.Sequential(nn.Linear(cin, cout, bias=False),
                         nn.BatchNorm1d(cout, eps=BN_EPS, momentum=1.0 - bn_momentum),
                         nn.LeakyReLU(LEAKY_SLOPE))


def max_pool(x: Tensor, idx: Tensor) -> Tensor:
    """``y_i = max_{j in idx_i} x_j`` for ``x [M, C]``, ``idx [Q, k]`` (shadow M) -> ``[Q, C]``;
    a row with only shadow neighbours gives 0."""
    low = torch.finfo(x.dtype).min
    xp = torch.cat([x, x.new_full((1, x.shape[1]), low)], dim=0)
    y = xp[idx].amax(dim=1)
    return torch.where(y == low, torch.zeros_like(y), y)


def interpolate(x: Tensor, idx: Tensor, dist: Tensor) -> Tensor:
    """Coarse ``x [M, C]`` to fine points: ``idx/dist [P, u]`` nearest coarse points.

    u = 1: ``y_i = x_{idx_i0}``; u > 1: inverse-distance weights
    ``w_ij = 1/(d_ij + 1e-8)`` normalised over the valid (non-shadow) j. -> ``[P, C]``.
    """
    xp = torch.cat([x, x.new_zeros((1, x.shape[1]))], dim=0)
    if idx.shape[1] == 1:
        return xp[idx[:, 0]]
    valid = idx < x.shape[0]
    w = torch.where(valid, 1.0 / (dist.float().clamp(min=0) + 1e-8), torch.zeros_like(dist.float()))
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return torch.einsum("pu,puc->pc", w.to(xp.dtype), xp[idx])


class KPConvXSegNet(nn.Module):
    """KPConvX encoder-decoder for per-point segmentation.

    ``forward(points [N,3], features [N,C], batch [N] int64 | None, hierarchy=None)
    -> logits [N, num_classes]``. The hierarchy is built inside unless given.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: Optional[KPConvXConfig] = None):
        super().__init__()
        cfg = cfg or KPConvXConfig.small()
        self.cfg, self.in_channels, self.num_classes = cfg, int(in_channels), int(num_classes)
        W, S = cfg.widths, cfg.num_stages
        self.stem = unary(self.in_channels, W[0], cfg.bn_momentum)
        total = sum(cfg.blocks)
        rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        start = 0
        for s in range(S):
            r = cfg.radius(s)
            self.encoder.append(KPConvXLayer(
                W[s], blocks=cfg.blocks[s], drop_path=rates[start:start + cfg.blocks[s]],
                sigma=cfg.sigma_factor * cfg.cell(s),
                shell_radii=tuple(f * r for f in cfg.shell_radii), shell_points=cfg.shell_points,
                DH=cfg.dh_factor * W[s], groups=cfg.groups, deformable=cfg.deformable,
                bn_momentum=cfg.bn_momentum))
            self.encoder[-1].validate_indices = False  # indices come from build_hierarchy
            start += cfg.blocks[s]
            if s + 1 < S:
                self.down.append(unary(W[s], W[s + 1], cfg.bn_momentum))
        self.up = nn.ModuleList(unary(W[s + 1] + W[s], W[s], cfg.bn_momentum)
                                for s in range(S - 1))
        self.head = nn.Sequential(unary(W[0], W[0], cfg.bn_momentum),
                                  nn.Linear(W[0], self.num_classes))

    def build_hierarchy(self, points: Tensor, batch: Optional[Tensor]) -> Hierarchy:
        """:func:`build_hierarchy` with this network's config."""
        return build_hierarchy(points, batch, self.cfg)

    def forward(self, points: Tensor, features: Tensor, batch: Optional[Tensor] = None,
                hierarchy: Optional[Hierarchy] = None) -> Tensor:
        check_features(points, features, self.in_channels)
        H = hierarchy if hierarchy is not None else build_hierarchy(points, batch, self.cfg)

        def encode(s: int, x: Tensor) -> Tensor:
            return self.encoder[s](H.points[s], x, H.neighbors[s], batch=H.batch[s])

        x = encoder_decoder(H, self.stem(stage0_features(H, features)), encode, self.down, self.up)
        logits = self.head(x)
        return logits if H.inverse is None else logits[H.inverse]


def check_features(points: Tensor, features: Tensor, in_channels: int) -> None:
    if features.dim() != 2 or features.shape[0] != points.shape[0] or features.shape[1] != in_channels:
        raise ValueError(f"features must be [N={points.shape[0]}, {in_channels}], got {tuple(features.shape)}")


def stage0_features(H: Hierarchy, features: Tensor) -> Tensor:
    """``features [N, C]`` averaged per stage-0 cell ``[M_0, C]`` (unchanged when stage 0 is the input)."""
    if H.inverse is None:
        return features
    f = torch.zeros((H.points[0].shape[0], features.shape[1]), dtype=features.dtype, device=features.device)
    return f.index_add_(0, H.inverse, features) / H.counts.clamp(min=1).unsqueeze(1).to(f.dtype)


def encoder_decoder(H: Hierarchy, x: Tensor, encode, down: nn.ModuleList, up: nn.ModuleList) -> Tensor:
    """The U-Net over the hierarchy's stages: ``x_s = encode(s, f_s)``,
    ``f_{s+1} = down_s(maxpool_{P_s}(x_s))``, then ``y_s = up_s([interp_{U_s}(y_{s+1}), x_s])``;
    ``x [M_0, w_0]`` -> ``[M_0, w_0]``."""
    skips = []
    S = len(H.points)
    for s in range(S):
        x = encode(s, x)
        if s + 1 < S:
            skips.append(x)
            x = down[s](max_pool(x, H.pools[s]))
    for s in range(S - 2, -1, -1):
        x = up[s](torch.cat([interpolate(x, H.upsamples[s], H.up_dists[s]), skips[s]], dim=1))
    return x
