"""Point Transformer encoder-decoder on a grid-subsampled hierarchy, with PyG's vector attention.

Same skeleton as ``kpconvx.KPConvXSegNet`` (package ``hierarchy``: stages on grids of cell ``c_s = first_cell * 2**s``,
radius neighbours of radius ``radius_factor * c_s`` capped at ``neighbor_limits[s]``, max-pool
down, nearest/3-NN up, skip concatenation), with each stage's convolution a residual Point
Transformer block. For point ``i`` with neighbours ``j in N(i)`` (itself included) and
positions ``p`` in units of the stage radius, torch-geometric's ``PointTransformerConv`` gives

    delta_ij = theta(p_i - p_j)                                   position encoding (linear)
    a_ij     = softmax_j( gamma(W1 x_i - W2 x_j + delta_ij) )     vector attention (per channel)
    y_i      = sum_j a_ij * (W3 x_j + delta_ij)

and the block is ``x + BN(L2(act(BN(conv(act(BN(L1 x)))))))`` followed by the activation.
``forward(points [N,3], features [N,C], batch [N] | None) -> logits [N, classes]``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from hierarchy import BN_EPS, LEAKY_SLOPE, Hierarchy, HierarchyUNet, StageGrid, unary


@dataclass
class PointTransformerConfig(StageGrid):
    """Network hyper-parameters (lengths of the per-stage tuples = number of stages S)."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    neighbor_limits: tuple[int, ...] = (16, 16, 16, 16)
    first_cell: float = 0.25          # metres: grid cell of stage 0 (doubles per stage)
    subsample_input: bool = True      # stage 0 = grid_subsample(input, first_cell); else raw
    radius_factor: float = 2.5        # neighbour radius = radius_factor * cell
    bn_momentum: float = 0.98         # Keras convention (torch momentum = 1 - m)
    upsample: str = "nearest"         # "nearest" or "knn3"

    def __post_init__(self) -> None:
        self.check_stages()
        if not self.radius_factor > 0:
            raise ValueError(f"radius_factor must be > 0, got {self.radius_factor}")

    @classmethod
    def small(cls, **overrides) -> "PointTransformerConfig":
        """CPU preset: 4 stages, widths 32-128, one block per stage, 16 neighbours."""
        return replace(cls(), **overrides)


def _bn(c: int, momentum: float) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=BN_EPS, momentum=1.0 - momentum)


def edge_index_of(neighbors: Tensor) -> Tensor:
    """``[2, E]`` PyG edges (row 0 source j, row 1 target i) of a padded neighbour table
    ``neighbors [M, k]`` (shadow index M = no neighbour)."""
    M, k = neighbors.shape
    valid = neighbors < M
    target = torch.arange(M, device=neighbors.device).unsqueeze(1).expand(M, k)
    return torch.stack([neighbors[valid], target[valid]])


class PointTransformerBlock(nn.Module):
    """Residual Point Transformer block of width ``w`` (see the module docstring)."""

    def __init__(self, w: int, momentum: float):
        super().__init__()
        from torch_geometric.nn import PointTransformerConv

        self.lin_in = unary(w, w, momentum)
        # theta and gamma are single linear maps (the paper's are two-layer MLPs): on the CPU the
        # edge-wise [E, w] x [w, w] products dominate the step, 1.36 s against 2.3 s with MLPs
        # for 4 x 8,000 points (benchmarks/README.md, "Point Transformer")
        self.conv = PointTransformerConv(w, w, pos_nn=nn.Linear(3, w), attn_nn=nn.Linear(w, w),
                                         add_self_loops=True)
        self.bn = _bn(w, momentum)
        self.lin_out = nn.Sequential(nn.Linear(w, w, bias=False), _bn(w, momentum))
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        y = self.act(self.bn(self.conv(self.lin_in(x), pos, edge_index)))
        return self.act(x + self.lin_out(y))


class PointTransformerSegNet(HierarchyUNet):
    """Point Transformer encoder-decoder for per-point segmentation (module docstring)."""

    def __init__(self, in_channels: int, num_classes: int, cfg: Optional[PointTransformerConfig] = None,
                 cond_channels: int = 0):
        super().__init__()
        cfg = cfg or PointTransformerConfig.small()
        self.cfg, self.in_channels, self.num_classes = cfg, int(in_channels), int(num_classes)
        W, S, m = cfg.widths, cfg.num_stages, cfg.bn_momentum
        self.stem = unary(self.in_channels, W[0], m)
        self.encoder = nn.ModuleList(nn.ModuleList(PointTransformerBlock(W[s], m) for _ in range(cfg.blocks[s]))
                                     for s in range(S))
        self.down = nn.ModuleList(unary(W[s], W[s + 1], m) for s in range(S - 1))
        self.up = nn.ModuleList(unary(W[s + 1] + W[s], W[s], m) for s in range(S - 1))
        self.head = nn.Sequential(unary(W[0], W[0], m), nn.Linear(W[0], self.num_classes))
        self.condition_on(cond_channels, W)

    def encode(self, H: Hierarchy, s: int, x: Tensor) -> Tensor:
        pos, edges = H.points[s] / self.cfg.radius(s), edge_index_of(H.neighbors[s])
        for block in self.encoder[s]:
            x = block(x, pos, edges)
        return x
