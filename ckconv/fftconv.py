"""Depthwise N-D convolution by FFT (zero-padded "same" or periodic).

Convention (true convolution, depthwise, kernel centred at offset 0)::

    y[b, c, n] = sum_m k[b or 0, c, m] * x[b, c, n - m]      (+ shortcut[c] * x[b, c, n])

Zero padding: a kernel of ``K_i = 2*r_i + 1`` points holds offsets ``-r_i .. r_i`` and ``x`` is
zero outside the input. Both are zero-padded at the end of each axis to an FFT size
``N_i >= S_i + (K_i + 1)//2`` (``= 2*S_i`` for the full kernel ``K_i = 2*S_i - 1``), rounded up
to the next 2^a 3^b 5^c 7^d. The linear convolution then only wraps onto indices ``< r_i``
and the "same" window ``[r_i, r_i + S_i)`` is exact.

Periodic (``circular=True``): ``K_i = S_i`` with offsets ``-(S_i//2) .. S_i - 1 - S_i//2``,
FFT size ``S_i``, ``x[n - m]`` taken modulo ``S_i``.

Everything is computed in float32 (half inputs are upcast, autocast disabled) with
``rfftn`` (the last spatial axis is the half-spectrum axis); the output is cast back to x's
dtype. Both layouts are supported without permuting: channels-first ``[B, C, *S]`` and
channels-last ``[B, *S, C]`` (``channels_last=True``).
"""

from __future__ import annotations

from typing import Sequence

import torch

_FAST_PRIMES = (2, 3, 5, 7)


def next_fast_size(n: int) -> int:
    """Smallest ``m >= n`` of the form 2^a 3^b 5^c 7^d (sizes cuFFT and pocketfft do fast)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in _FAST_PRIMES:
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_shape(
    spatial: Sequence[int], kernel_spatial: Sequence[int], circular: bool = False
) -> tuple[int, ...]:
    """FFT size per axis: ``S_i`` (periodic) or ``next_fast_size(S_i + (K_i + 1)//2)``."""
    if circular:
        return tuple(int(s) for s in spatial)
    return tuple(next_fast_size(s + (k + 1) // 2) for s, k in zip(spatial, kernel_spatial))


def _spatial_dims(ndim: int, channels_last: bool) -> tuple[int, ...]:
    data_dim = ndim - 2
    return tuple(range(1, 1 + data_dim)) if channels_last else tuple(range(2, 2 + data_dim))


def _check_shapes(x: torch.Tensor, k: torch.Tensor, channels_last: bool, circular: bool) -> None:
    if x.dim() not in (3, 4, 5) or k.dim() != x.dim():
        raise ValueError(
            f"x and k must both be [B, C, *S] / [B, *S, C] with 1-3 spatial axes, got "
            f"{tuple(x.shape)} and {tuple(k.shape)}"
        )
    dims = _spatial_dims(x.dim(), channels_last)
    cdim = -1 if channels_last else 1
    if k.shape[0] not in (1, x.shape[0]) or k.shape[cdim] != x.shape[cdim]:
        raise ValueError(f"kernel {tuple(k.shape)} does not match input {tuple(x.shape)}")
    for d in dims:
        S, K = x.shape[d], k.shape[d]
        if circular and K != S:
            raise ValueError(f"periodic convolution needs K == S per axis, got {K} vs {S}")
        if not circular and K % 2 == 0:
            raise ValueError(f"zero-padded convolution needs odd kernel sizes, got {K}")


def kernel_rfft(
    k: torch.Tensor,
    fft_sizes: Sequence[int],
    *,
    channels_last: bool = False,
    circular: bool = False,
) -> torch.Tensor:
    """Half spectrum of the kernel, ready to multiply with ``rfftn(x, s=fft_sizes)``.

    Zero padding: the kernel (index 0 = most negative offset) is zero-padded at the end.
    Periodic: the kernel is rolled so that offset 0 sits at index 0.
    """
    dims = _spatial_dims(k.dim(), channels_last)
    with torch.autocast(device_type=k.device.type, enabled=False):
        k = k.float()
        if circular:
            shifts = tuple(-(k.shape[d] // 2) for d in dims)
            k = torch.roll(k, shifts=shifts, dims=dims)
        return torch.fft.rfftn(k, s=tuple(fft_sizes), dim=dims)


def fftconv_freq(
    x: torch.Tensor,
    k_f: torch.Tensor,
    fft_sizes: Sequence[int],
    kernel_spatial: Sequence[int],
    *,
    shortcut: torch.Tensor | None = None,
    channels_last: bool = False,
    circular: bool = False,
) -> torch.Tensor:
    """Convolve ``x`` with a kernel given by its spectrum ``k_f`` (see :func:`kernel_rfft`).

    ``x`` ``[B, C, *S]`` (or ``[B, *S, C]``), ``k_f`` the kernel's rfftn in the same layout,
    ``kernel_spatial`` the kernel's spatial size (to locate the "same" window). Returns
    ``y`` with x's shape and dtype (``+ shortcut[c] * x`` when given, shortcut ``[C]``).
    """
    dims = _spatial_dims(x.dim(), channels_last)
    spatial = [x.shape[d] for d in dims]
    with torch.autocast(device_type=x.device.type, enabled=False):
        if circular:
            x_f = torch.fft.rfftn(x.float(), s=tuple(fft_sizes), dim=dims)
            y = torch.fft.irfftn(x_f * k_f, s=tuple(fft_sizes), dim=dims)
        else:
            y = _pruned_conv(x.float(), k_f, dims, spatial, list(fft_sizes),
                             [(K - 1) // 2 for K in kernel_spatial])
        if shortcut is not None:
            s = shortcut.to(x.dtype).float()
            s = s if channels_last else s.view((-1,) + (1,) * len(dims))
            y = torch.addcmul(y, x.float(), s)
        return y.to(x.dtype)


def _pruned_conv(
    x: torch.Tensor, k_f: torch.Tensor, dims: tuple[int, ...], spatial: list[int],
    sizes: list[int], r: list[int],
) -> torch.Tensor:
    """``irfftn(rfftn(x, s) * k_f)`` cut to the "same" window ``[r_i, r_i + S_i)``, with the
    transforms pruned axis by axis (a pruned FFT): the forward transforms run last axis
    first, each over the rows that are not all padding yet (the other axes still hold only
    their ``S_i`` input rows); the inverse runs first axis first and keeps only the ``S_i``
    output rows of each axis before transforming the next one. Same result as the full
    ``rfftn``/``irfftn`` pair up to rounding; in 2-D it saves about a quarter of the FFT
    work each way, in 3-D more.
    """
    last = len(dims) - 1
    z = torch.fft.rfft(x, n=sizes[last], dim=dims[last])
    for i in range(last - 1, -1, -1):
        z = torch.fft.fft(z, n=sizes[i], dim=dims[i])
    z = z * k_f
    for i in range(last):
        z = torch.fft.ifft(z, dim=dims[i]).narrow(dims[i], r[i], spatial[i])
    return torch.fft.irfft(z, n=sizes[last], dim=dims[last]).narrow(dims[last], r[last], spatial[last])


def fftconv_nd(
    x: torch.Tensor,
    k: torch.Tensor,
    shortcut: torch.Tensor | None = None,
    *,
    channels_last: bool = False,
    circular: bool = False,
) -> torch.Tensor:
    """Depthwise FFT convolution, zero-padded "same" output (or periodic).

    Args:
        x: input ``[B, C, *S]`` (``[B, *S, C]`` with ``channels_last=True``), 1-3 spatial axes.
        k: kernel ``[1 or B, C, *K]`` (same layout as x), ``K_i`` odd and centred on offset 0,
            normally ``K_i = 2*S_i - 1``; with ``circular=True`` ``K_i = S_i``.
        shortcut: optional per-channel scale ``[C]``, adds ``shortcut[c] * x[b, c, n]``.
        channels_last: layout of x and k.
        circular: periodic instead of zero-padded convolution.

    Returns:
        ``y[b, c, n] = sum_m k[b, c, m] x[b, c, n - m] (+ shortcut[c] x[b, c, n])``, x's
        shape and dtype. FFT size per axis: ``next_fast_size(S_i + (K_i + 1)//2)``.
    """
    _check_shapes(x, k, channels_last, circular)
    dims = _spatial_dims(x.dim(), channels_last)
    kernel_spatial = [k.shape[d] for d in dims]
    sizes = fft_shape([x.shape[d] for d in dims], kernel_spatial, circular)
    k_f = kernel_rfft(k, sizes, channels_last=channels_last, circular=circular)
    return fftconv_freq(
        x, k_f, sizes, kernel_spatial, shortcut=shortcut, channels_last=channels_last,
        circular=circular,
    )
