"""CKConvND: depthwise convolution with a continuous (network-generated) kernel."""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .fftconv import fft_shape, fftconv_freq, kernel_rfft
from .grid import FloatOrSeq, per_axis
from .siren import (
    BlockDiagonalLearnableOmegaSIRENKernelND,
    LearnableOmegaSIRENKernelND,
    SIRENKernelND,
)
from .window import ExponentialModulationND

KERNEL_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (SIRENKernelND, LearnableOmegaSIRENKernelND, BlockDiagonalLearnableOmegaSIRENKernelND)
}
MASK_TYPES: dict[str, type[nn.Module]] = {"ExponentialModulationND": ExponentialModulationND}
MODES = {("double", "zero"), ("single", "circular")}


def _build(cfg: dict, registry: dict[str, type[nn.Module]], what: str, defaults: dict) -> nn.Module:
    """Instantiate ``cfg['type']`` (a class or its name) with the remaining keys.

    ``defaults`` fill missing keys; a given value that disagrees with them is an error.
    """
    cfg = dict(cfg)
    if "type" not in cfg:
        raise ValueError(f"{what} needs a 'type' key")
    cls = cfg.pop("type")
    if isinstance(cls, str):
        if cls not in registry:
            raise ValueError(f"unknown {what} type {cls!r}; known: {sorted(registry)}")
        cls = registry[cls]
    for key, value in defaults.items():
        if cfg.setdefault(key, value) != value:
            raise ValueError(f"{what}[{key!r}] = {cfg[key]} but the layer needs {value}")
    return cls(**cfg)


class CKConvND(nn.Module):
    """Depthwise continuous-kernel convolution on 1-D, 2-D or 3-D grids.

    Forward (``fft_padding="zero"``, ``grid_type="double"``)::

        k, grid = kernel(S)                  # [1 or B, *(2S-1), C], offsets -(S-1)..S-1
        k = mask(grid, k)                    # optional window
        y[b, n, c] = sum_m k[m, c] x[b, n - m, c] + shortcut[c] * x[b, n, c]

    with x zero outside the input ("same"-size linear convolution), computed by FFT in
    float32 (:mod:`ckconv.fftconv`). The shortcut is folded into the kernel at offset 0
    (``(k + shortcut*delta) * x``), so it costs nothing extra and is part of the cached
    spectrum; it is cast to x's dtype first.

    Modes: ``fft_padding="circular", grid_type="single"`` is a periodic convolution with a
    kernel of the input's size (offsets ``-(S//2) .. S-1-S//2``); ``is_causal=True`` (1-D,
    zero padding) keeps only offsets ``m >= 0`` (the kernel network is only evaluated there).

    Kernel cache: with no FiLM, whenever no gradient is needed for the kernel (grad mode off,
    or ``eval()`` mode) the kernel spectrum is cached; it is recomputed when the input size,
    ``spacing`` or dtype change, or any parameter/buffer of ``kernel``, ``mask`` or
    ``shortcut`` is modified in place (version counter) or replaced (storage pointer), e.g. by
    an optimizer step or ``load_state_dict``. Writes through ``p.data`` are not seen: call
    :meth:`clear_cache` after them. In ``eval()`` mode the cached kernel is a constant:
    gradients still reach x, but not the kernel network.

    Args:
        data_dim: 1, 2 or 3.
        hidden_dim: channels C.
        kernel_cfg: ``{"type": <kernel class or name>, **kwargs}``; ``data_dim`` and
            ``out_dim`` default to the layer's.
        mask_cfg: ``{"type": "ExponentialModulationND", **kwargs}`` or None (no window);
            ``data_dim`` and ``num_channels`` default to the layer's.
        grid_type: ``"double"`` (with zero padding) or ``"single"`` (with circular).
        fft_padding: ``"zero"`` or ``"circular"``.
        is_causal: 1-D causal convolution (zero padding only).
    """

    def __init__(
        self,
        data_dim: int,
        hidden_dim: int,
        kernel_cfg: dict,
        mask_cfg: dict | None = None,
        grid_type: str = "double",
        fft_padding: str = "zero",
        is_causal: bool = False,
    ) -> None:
        super().__init__()
        if data_dim not in (1, 2, 3):
            raise ValueError(f"data_dim must be 1, 2 or 3, got {data_dim}")
        if (grid_type, fft_padding) not in MODES:
            raise ValueError(
                f"unsupported (grid_type, fft_padding) = ({grid_type!r}, {fft_padding!r}); "
                f"use one of {sorted(MODES)}"
            )
        if is_causal and (data_dim != 1 or fft_padding != "zero"):
            raise ValueError("is_causal needs data_dim=1 and fft_padding='zero'")
        self.data_dim = data_dim
        self.hidden_dim = hidden_dim
        self.grid_type = grid_type
        self.fft_padding = fft_padding
        self.is_causal = is_causal

        self.kernel = _build(
            kernel_cfg, KERNEL_TYPES, "kernel_cfg", {"data_dim": data_dim, "out_dim": hidden_dim}
        )
        if mask_cfg is None:
            self.mask: nn.Module = nn.Identity()
        else:
            self.mask = _build(
                mask_cfg, MASK_TYPES, "mask_cfg",
                {"data_dim": data_dim, "num_channels": hidden_dim},
            )
        bound = 1.0 / math.sqrt(hidden_dim)
        self.shortcut = nn.Parameter(torch.empty(hidden_dim).uniform_(-bound, bound))
        self.shortcut._no_weight_decay = True

        self.cache_enabled = True
        self._cache: tuple[tuple, tuple] | None = None

    # ----------------------------------------------------------------- kernel
    @property
    def circular(self) -> bool:
        return self.fft_padding == "circular"

    def masked_kernel(
        self,
        spatial: Sequence[int],
        conditioning: torch.Tensor | None = None,
        spacing: FloatOrSeq = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windowed kernel ``[1 or B, *K, C]`` (float32) and its grid ``[1, *K', D]``.

        ``K_i = 2*S_i - 1`` (double grid), ``S_i`` (single grid). Causal: the kernel network
        is evaluated on offsets ``0..S-1`` (that is the returned grid) and the kernel is
        zero-padded in front to the centred ``2S - 1`` points.
        """
        device_type = self.shortcut.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            k, grid = self.kernel(
                spatial, conditioning, spacing=spacing, grid_type=self.grid_type,
                causal=self.is_causal,
            )
            if not isinstance(self.mask, nn.Identity):
                k = self.mask(grid, k)
            if self.is_causal:
                k = F.pad(k, (0, 0, spatial[0] - 1, 0))
        return k, grid

    def _kernel_spectrum(
        self,
        spatial: tuple[int, ...],
        conditioning: torch.Tensor | None,
        spacing: FloatOrSeq,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
        """(rfftn of the kernel with the shortcut folded in ``[1|B, *F, C]``, FFT sizes, K)."""
        k, _ = self.masked_kernel(spatial, conditioning, spacing)
        kernel_spatial = tuple(k.shape[1:-1])
        centre = tuple(K // 2 if self.circular else (K - 1) // 2 for K in kernel_spatial)
        # (k + shortcut * delta_0) * x == k * x + shortcut * x; k is a fresh tensor.
        k[(slice(None), *centre, slice(None))] += self.shortcut.to(dtype).float()
        sizes = fft_shape(spatial, kernel_spatial, self.circular)
        k_f = kernel_rfft(k, sizes, channels_last=True, circular=self.circular)
        return k_f, sizes, kernel_spatial

    def _state_key(self) -> tuple:
        """Cheap fingerprint of every tensor the kernel depends on (version, storage)."""
        tensors = itertools.chain(
            self.kernel.parameters(), self.kernel.buffers(),
            self.mask.parameters(), self.mask.buffers(), (self.shortcut,),
        )
        return tuple((t._version, t.data_ptr()) for t in tensors)

    def _cached_spectrum(
        self, spatial: tuple[int, ...], spacing: FloatOrSeq, dtype: torch.dtype
    ) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
        constrain = getattr(self.kernel, "apply_constraints_", None)
        if constrain is not None:
            constrain()  # before fingerprinting, so a clamp does not look like an update
        spacing_key = tuple(float(h) for h in per_axis(spacing, self.data_dim, "spacing"))
        key = (spatial, spacing_key, dtype, self._state_key())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                value = self._kernel_spectrum(spatial, None, spacing, dtype)
            self._cache = (key, value)
        return self._cache[1]

    def clear_cache(self) -> None:
        """Drop the cached kernel spectrum."""
        self._cache = None

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        conditioning: torch.Tensor | None = None,
        channels_first: bool = False,
        spacing: FloatOrSeq = 1.0,
    ) -> torch.Tensor:
        """``x`` ``[B, *S, C]`` (or ``[B, C, *S]`` with ``channels_first``) -> same shape/dtype.

        ``conditioning`` ``[B, cond_dim]`` for FiLM kernels. ``spacing`` (float or one per
        axis): cell size relative to the one the layer was built for; the kernel network is
        evaluated at offsets ``j * spacing / (L_cache - 1)``.
        """
        if x.dim() != self.data_dim + 2:
            raise ValueError(
                f"expected a {self.data_dim + 2}-D input for data_dim={self.data_dim}, "
                f"got shape {tuple(x.shape)}"
            )
        channels = x.shape[1] if channels_first else x.shape[-1]
        if channels != self.hidden_dim:
            raise ValueError(f"expected {self.hidden_dim} channels, got {channels}")
        spatial = tuple(x.shape[2:] if channels_first else x.shape[1:-1])
        has_film = getattr(self.kernel, "film_generator", None) is not None
        use_cache = (
            self.cache_enabled
            and not has_film
            and (not self.training or not torch.is_grad_enabled())
        )
        if use_cache:
            k_f, sizes, kernel_spatial = self._cached_spectrum(spatial, spacing, x.dtype)
        else:
            k_f, sizes, kernel_spatial = self._kernel_spectrum(
                spatial, conditioning, spacing, x.dtype
            )
        if channels_first:
            k_f = k_f.movedim(-1, 1)
        return fftconv_freq(
            x, k_f, sizes, kernel_spatial, channels_last=not channels_first,
            circular=self.circular,
        )

    def extra_repr(self) -> str:
        return (
            f"data_dim={self.data_dim}, hidden_dim={self.hidden_dim}, "
            f"grid_type={self.grid_type!r}, fft_padding={self.fft_padding!r}, "
            f"is_causal={self.is_causal}"
        )
