"""fftconv_nd against direct convolutions (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from ckconv import fftconv_nd, next_fast_size
from ckconv.fftconv import fft_shape

from tests.test_ckconv_helpers import circular_conv, direct_conv, rel_err

CASES = [  # spatial sizes: odd, even and mixed, 1-D to 3-D
    (7,), (8,), (1,),
    (5, 6), (8, 8), (9, 3),
    (3, 4, 5), (4, 4, 4),
]


def _to_last(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1)


@pytest.mark.parametrize("spatial", CASES)
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fftconv_matches_direct_conv_with_grads(spatial, per_batch, channels_last):
    torch.manual_seed(0)
    B, C = 3, 4
    K = tuple(2 * s - 1 for s in spatial)
    x = torch.randn(B, C, *spatial, dtype=torch.float64)
    k = torch.randn(B if per_batch else 1, C, *K, dtype=torch.float64)
    sc = torch.randn(C, dtype=torch.float64)
    g = torch.randn(B, C, *spatial, dtype=torch.float64)

    # reference in float64
    xr, kr, sr = (t.clone().requires_grad_() for t in (x, k, sc))
    yr = direct_conv(xr, kr, sr)
    (yr * g).sum().backward()

    # ours in float32
    xo, ko, so = (t.float().requires_grad_() for t in (x, k, sc))
    if channels_last:
        y = fftconv_nd(_to_last(xo), _to_last(ko), so, channels_last=True).movedim(-1, 1)
    else:
        y = fftconv_nd(xo, ko, so)
    assert y.shape == x.shape and y.dtype == torch.float32
    (y.double() * g).sum().backward()

    assert rel_err(y, yr) < 1e-4
    assert rel_err(xo.grad, xr.grad) < 1e-4
    assert rel_err(ko.grad, kr.grad) < 1e-4
    assert rel_err(so.grad, sr.grad) < 1e-4


@pytest.mark.parametrize("spatial,K", [((9,), (3,)), ((6, 7), (5, 1)), ((4, 5, 3), (3, 3, 5))])
def test_fftconv_short_kernels(spatial, K):
    """Kernels shorter than 2S-1 (still odd and centred) give the same "same" convolution."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    k = torch.randn(1, 3, *K, dtype=torch.float64)
    assert rel_err(fftconv_nd(x.float(), k.float()), direct_conv(x, k)) < 1e-4


def test_fftconv_no_wraparound():
    """A spike at the last cell must not leak onto the first one (zero padding, not periodic)."""
    S = 16
    x = torch.zeros(1, 1, S)
    x[..., -1] = 1.0
    k = torch.ones(1, 1, 2 * S - 1)
    k[..., : S - 1] = 0.0  # only offsets m >= 0: y[n] = sum_{m>=0} x[n-m]
    y = fftconv_nd(x, k)
    assert y[..., :-1].abs().max() < 1e-6 and abs(float(y[..., -1]) - 1.0) < 1e-6


@pytest.mark.parametrize("spatial", [(6,), (7,), (4, 5), (3, 4, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fftconv_circular(spatial, channels_last):
    torch.manual_seed(2)
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    k = torch.randn(2, 3, *spatial, dtype=torch.float64)
    ref = circular_conv(x, k)
    if channels_last:
        y = fftconv_nd(_to_last(x).float(), _to_last(k).float(), channels_last=True, circular=True)
        y = y.movedim(-1, 1)
    else:
        y = fftconv_nd(x.float(), k.float(), circular=True)
    assert rel_err(y, ref) < 1e-4


def test_fftconv_half_input_returns_input_dtype():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8, 8)
    k = torch.randn(1, 4, 15, 15)
    sc = torch.randn(4)  # fp32 shortcut against bf16 activations
    y = fftconv_nd(x.bfloat16(), k, sc)
    assert y.dtype == torch.bfloat16
    ref = direct_conv(x.bfloat16().double(), k.double(), sc.bfloat16().double())
    assert rel_err(y, ref) < 2e-2


def test_fft_sizes():
    assert [next_fast_size(n) for n in (1, 11, 13, 17, 97, 128, 2 * 129)] == [1, 12, 14, 18, 98, 128, 270]
    assert fft_shape((128, 100), (255, 199)) == (256, 200)
    assert fft_shape((129,), (257,)) == (next_fast_size(258),)
    assert fft_shape((5, 6), (5, 6), circular=True) == (5, 6)


def test_fftconv_bad_shapes():
    x = torch.randn(1, 2, 8)
    with pytest.raises(ValueError):
        fftconv_nd(x, torch.randn(1, 2, 4))  # even kernel
    with pytest.raises(ValueError):
        fftconv_nd(x, torch.randn(1, 3, 15))  # channel mismatch
    with pytest.raises(ValueError):
        fftconv_nd(x, torch.randn(1, 2, 9), circular=True)  # periodic needs K == S
