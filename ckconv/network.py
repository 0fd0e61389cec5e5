"""Residual CKConv segmentation network for 2-D rasters and 3-D voxel grids (channels-last).

::

    x [B, *S, F_in]  --stem Linear-->  h [B, *S, H]
    (optional) cond = RegisterPool(h, mask)        # [B, cond_dim], FiLM of every kernel
    repeat num_blocks:
        h = h + Dropout(Linear(GELU(CKConvND(LayerNorm(h), cond))))     # global spatial mixing
        h = h + Dropout(MLP(LayerNorm(h)))                                # pointwise MLP
    logits = Linear(LayerNorm(h))                   # [B, *S, num_classes]

``RegisterPool``: ``R`` learned register queries attend (softmax over the occupied cells
only) to the tile's own embedded features; the R pooled vectors are concatenated and
projected to ``cond_dim``. It conditions the kernel networks (FiLM) on the tile's content,
e.g. terrain relief or point density, at a cost independent of the tile size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .layer import KERNEL_TYPES, CKConvND

#: the kernel networks' names (``ckconv.layer.KERNEL_TYPES``, the one list)
KernelType = Literal[tuple(KERNEL_TYPES)]


@dataclass
class KernelConfig:
    """The kernel network of every CKConv layer of a :class:`CKConvSegNet` (the spec's
    ``kernel:`` block of ``ckconv_grid``, passed as it is down to the layers).

    ``hidden``: SIREN width (embedding and hidden layers); ``layers``: SIREN ``num_layers``;
    ``omega_0``: first-layer frequency (block-diagonal kernels: ``omega_0_max``, the top of the
    blocks' linear schedule); ``omega_blocks``: block-diagonal kernels' ``num_blocks`` (divides
    ``hidden`` and the network's width).
    """

    type: KernelType = "SIRENKernelND"
    hidden: int = 32
    layers: int = 3
    omega_0: float = 10.0
    omega_blocks: int = 4

    def __post_init__(self) -> None:
        if self.type not in KERNEL_TYPES:
            raise ValueError(f"kernel type must be one of {sorted(KERNEL_TYPES)}, got {self.type!r}")
        if self.hidden < 1 or self.layers < 2 or self.omega_0 <= 0 or self.omega_blocks < 1:
            raise ValueError("kernel: hidden >= 1, layers >= 2, omega_0 > 0, omega_blocks >= 1 expected")
        if self.block_diagonal and self.hidden % self.omega_blocks:
            raise ValueError(f"kernel.omega_blocks={self.omega_blocks} must divide kernel.hidden ({self.hidden})")

    @property
    def block_diagonal(self) -> bool:
        return self.type == "BlockDiagonalLearnableOmegaSIRENKernelND"

    def layer_cfg(self, L_cache: int | tuple, cond_dim: int | None = None) -> dict:
        """``CKConvND``'s ``kernel_cfg``: the kernel class's keyword arguments (``cond_dim``: FiLM)."""
        cfg: dict = {"type": self.type, "mlp_hidden_dim": self.hidden, "num_layers": self.layers,
                     "embedding_dim": self.hidden, "L_cache": L_cache, "use_bias": True}
        if self.block_diagonal:
            cfg.update(num_blocks=self.omega_blocks, omega_0_max=self.omega_0)
        else:
            cfg["omega_0"] = self.omega_0
        if cond_dim is not None:
            cfg["film_cfg"] = {"cond_dim": cond_dim}
        return cfg


class RegisterPool(nn.Module):
    def __init__(self, dim: int, cond_dim: int, registers: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(registers, dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.LayerNorm(registers * dim), nn.Linear(registers * dim, cond_dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, dim = h.shape[0], h.shape[-1]
        flat = h.reshape(b, -1, dim)                                   # [B, N, H]
        scores = torch.einsum("rh,bnh->brn", self.queries, self.key(flat)) / math.sqrt(dim)
        if mask is not None:
            m = mask.reshape(b, 1, -1)
            scores = scores.masked_fill(~m, float("-inf"))
            # a tile with no occupied cell: attend uniformly instead of NaN
            scores = torch.where(m.any(-1, keepdim=True), scores, torch.zeros_like(scores))
        pooled = torch.einsum("brn,bnh->brh", scores.softmax(-1), self.value(flat))
        return self.out(pooled.reshape(b, -1))


class CKBlock(nn.Module):
    def __init__(self, data_dim: int, hidden: int, kernel_cfg: dict, mask_cfg: dict | None, dropout: float,
                 mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.conv = CKConvND(data_dim, hidden, kernel_cfg, mask_cfg)
        self.mix = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(self.norm1(h), conditioning=cond)
        h = h + self.drop(self.mix(nn.functional.gelu(y)))
        return h + self.drop(self.mlp(self.norm2(h)))


class CKConvSegNet(nn.Module):
    """Per-cell class logits for a grid ``[B, *S, in_dim]`` (S: 2 or 3 axes)."""

    def __init__(self, data_dim: int, in_dim: int, num_classes: int, *, hidden: int = 32, num_blocks: int = 4,
                 kernel: KernelConfig | None = None, L_cache: int | tuple = 64, window: bool = True,
                 film: bool = False, cond_dim: int = 16, registers: int = 4, dropout: float = 0.1):
        super().__init__()
        kernel = kernel or KernelConfig()
        if kernel.block_diagonal and hidden % kernel.omega_blocks:
            raise ValueError(f"kernel.omega_blocks={kernel.omega_blocks} must divide hidden ({hidden})")
        self.data_dim = data_dim
        kernel_cfg = kernel.layer_cfg(L_cache, cond_dim if film else None)
        mask_cfg = {"type": "ExponentialModulationND"} if window else None
        self.stem = nn.Linear(in_dim, hidden)
        self.pool = RegisterPool(hidden, cond_dim, registers) if film else None
        self.blocks = nn.ModuleList(CKBlock(data_dim, hidden, kernel_cfg, mask_cfg, dropout)
                                    for _ in range(num_blocks))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(x)
        cond = self.pool(h, mask) if self.pool is not None else None
        for block in self.blocks:
            h = block(h, cond)
        return self.head(h)
