"""Exponential decay window (the "mask") multiplied onto a generated kernel."""

from __future__ import annotations

import torch
from torch import nn


class ExponentialModulationND(nn.Module):
    """Per-channel exponential window over the kernel's offsets.

    ``out[..., c] = x[..., c] * exp(-sum_d |grid[..., d]| * |weight[d, c]|)``

    ``weight`` ``[data_dim, num_channels]``: every row is
    ``linspace(slow_decay_pct, fast_decay_pct, num_channels) / data_dim`` (so channel 0 decays
    slowest). It is a parameter (saved in ``state_dict``) but is not trained
    (``requires_grad=False``) and is tagged ``_no_weight_decay``. The window is 1 at offset 0
    and in (0, 1] everywhere.

    Args:
        data_dim: number of spatial axes D.
        num_channels: number of kernel channels C.
        fast_decay_pct: decay rate of the last channel (summed over the D axes).
        slow_decay_pct: decay rate of the first channel (summed over the D axes).
    """

    def __init__(
        self,
        data_dim: int,
        num_channels: int,
        fast_decay_pct: float = 13.81,
        slow_decay_pct: float = 2.3,
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.num_channels = num_channels
        self.fast_decay_pct = fast_decay_pct
        self.slow_decay_pct = slow_decay_pct
        row = torch.linspace(slow_decay_pct, fast_decay_pct, num_channels) / data_dim
        self.weight = nn.Parameter(row.repeat(data_dim, 1), requires_grad=False)
        self.weight._no_weight_decay = True

    def window(self, grid: torch.Tensor) -> torch.Tensor:
        """Window values ``[1, *K, C]`` (float32) for a grid ``[1, *K, D]``; the grid must be
        float32 (lower precision merges neighbouring coordinates), asserted."""
        if grid.dtype != torch.float32:
            raise AssertionError(f"ExponentialModulationND: the grid must be float32, got {grid.dtype}")
        return torch.exp(-(grid.abs().float() @ self.weight.abs().float()))

    def forward(self, grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Multiply ``x`` ``[1 or B, *K, C]`` by the window on ``grid`` ``[1, *K, D]``.

        Returns a tensor with x's shape and dtype.
        """
        return (x.float() * self.window(grid)).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"data_dim={self.data_dim}, num_channels={self.num_channels}, "
            f"fast_decay_pct={self.fast_decay_pct}, slow_decay_pct={self.slow_decay_pct}"
        )
