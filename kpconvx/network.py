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
:func:`hierarchy.build_hierarchy` (the stages and U-Net the point networks share live in the
neutral package ``hierarchy``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from torch import Tensor, nn

from hierarchy import Hierarchy, HierarchyUNet, StageGrid, build_hierarchy, unary  # noqa: F401  (build_hierarchy: public here too)

from .layer import KPConvXLayer


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


class KPConvXSegNet(HierarchyUNet):
    """KPConvX encoder-decoder for per-point segmentation.

    ``forward(points [N,3], features [N,C], batch [N] int64 | None, hierarchy=None, cond=None)
    -> logits [N, num_classes]``. The hierarchy is built inside unless given. With
    ``cond_channels = D > 0`` every encoder stage is FiLM-modulated by ``cond [B, D]``, one
    vector per set of the batch (:class:`hierarchy.StageFiLM`).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: Optional[KPConvXConfig] = None,
                 cond_channels: int = 0):
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
        self.condition_on(cond_channels, W)

    def encode(self, H: Hierarchy, s: int, x: Tensor) -> Tensor:
        return self.encoder[s](H.points[s], x, H.neighbors[s], batch=H.batch[s])
