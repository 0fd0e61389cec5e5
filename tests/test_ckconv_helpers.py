"""Slow, obviously-correct reference convolutions for the ckconv tests (float64)."""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def direct_conv(x: torch.Tensor, k: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise zero-padded "same" convolution ``y[n] = sum_m k[m] x[n - m]`` (channels-first).

    x ``[B, C, *S]``, k ``[1 or B, C, *K]`` (K odd, centred). Uses conv{1,2,3}d (a
    cross-correlation) with the flipped kernel; batch is folded into the groups so every
    sample may have its own kernel.
    """
    B, C, *S = x.shape
    D = len(S)
    k = k.expand(B, *k.shape[1:])
    weight = k.flip(list(range(2, 2 + D))).reshape(B * C, 1, *k.shape[2:])
    pad = [(K - 1) // 2 for K in k.shape[2:]]
    y = _CONV[D](x.reshape(1, B * C, *S), weight, padding=pad, groups=B * C).reshape(B, C, *S)
    if shortcut is not None:
        y = y + shortcut.view(-1, *([1] * D)) * x
    return y


def circular_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Periodic depthwise convolution by explicit shifts (channels-first).

    k ``[1 or B, C, *S]`` holds offsets ``-(S//2) .. S-1-S//2`` per axis:
    ``y[n] = sum_m k[m] x[(n - m) mod S]``.
    """
    B, C, *S = x.shape
    D = len(S)
    y = torch.zeros_like(x)
    for idx in itertools.product(*[range(s) for s in S]):
        offsets = tuple(i - s // 2 for i, s in zip(idx, S))
        weight = k[(slice(None), slice(None), *idx)].reshape(k.shape[0], C, *([1] * D))
        y = y + weight * torch.roll(x, shifts=offsets, dims=tuple(range(2, 2 + D)))
    return y


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
