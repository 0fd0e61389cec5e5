"""CKConvND: references, layouts, modes, spacing, cache, precision, param groups."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ckconv import CKConvND, ExponentialModulationND, SIRENKernelND, param_groups

from tests.test_ckconv_helpers import circular_conv, direct_conv, rel_err

C = 6


def kernel_cfg(**overrides) -> dict:
    cfg = dict(
        type="SIRENKernelND", mlp_hidden_dim=16, num_layers=3, embedding_dim=16,
        omega_0=10.0, L_cache=8, use_bias=True,
    )
    cfg.update(overrides)
    return cfg


def layer(data_dim: int, mask: bool = True, **kwargs) -> CKConvND:
    torch.manual_seed(0)
    mask_cfg = {"type": "ExponentialModulationND"} if mask else None
    kcfg = kwargs.pop("kernel", kernel_cfg())
    return CKConvND(data_dim, C, kcfg, mask_cfg=mask_cfg, **kwargs)


def reference(conv: CKConvND, x_first: torch.Tensor, conditioning=None, spacing=1.0) -> torch.Tensor:
    """Direct "same" convolution (float64) with the layer's masked kernel + shortcut."""
    with torch.no_grad():
        k, _ = conv.masked_kernel(tuple(x_first.shape[2:]), conditioning, spacing)
    k = k.movedim(-1, 1).double()
    return direct_conv(x_first.double(), k, conv.shortcut.detach().double())


@pytest.mark.parametrize("spatial", [(9,), (10,), (5, 6), (7, 7), (3, 4, 5)])
def test_layer_matches_direct_conv_both_layouts(spatial):
    conv = layer(len(spatial))
    x_first = torch.randn(2, C, *spatial)
    ref = reference(conv, x_first)
    y_first = conv(x_first, channels_first=True)
    y_last = conv(x_first.movedim(1, -1).contiguous())
    assert y_first.shape == x_first.shape and y_last.shape == (2, *spatial, C)
    assert rel_err(y_first, ref) < 1e-4
    torch.testing.assert_close(y_last.movedim(-1, 1), y_first, rtol=1e-5, atol=1e-6)
    # the window really is applied
    k_masked, grid = conv.masked_kernel(spatial)
    k_raw, _ = conv.kernel(spatial)
    torch.testing.assert_close(k_masked, conv.mask(grid, k_raw))


def test_layer_attributes_and_config_errors():
    conv = layer(2)
    assert isinstance(conv.kernel, SIRENKernelND) and isinstance(conv.mask, ExponentialModulationND)
    assert conv.kernel.out_dim == C and conv.mask.num_channels == C
    assert conv.shortcut.shape == (C,) and conv.shortcut._no_weight_decay
    assert conv.shortcut.abs().max() <= 1 / C**0.5
    assert isinstance(layer(2, mask=False).mask, torch.nn.Identity)
    CKConvND(1, C, kernel_cfg(type=SIRENKernelND))  # a class works too
    with pytest.raises(ValueError):
        CKConvND(2, C, kernel_cfg(out_dim=C + 1))
    with pytest.raises(ValueError):
        CKConvND(2, C, kernel_cfg(type="NoSuchKernel"))
    with pytest.raises(ValueError):
        CKConvND(2, C, kernel_cfg(), fft_padding="circular")  # circular needs single grid
    with pytest.raises(ValueError):
        CKConvND(2, C, kernel_cfg(), is_causal=True)
    with pytest.raises(ValueError):
        CKConvND(4, C, kernel_cfg())
    with pytest.raises(ValueError):
        conv(torch.randn(1, 5, 5, C + 1))


@pytest.mark.parametrize("spatial", [(8,), (7,), (4, 5)])
def test_circular_single_grid(spatial):
    conv = layer(len(spatial), grid_type="single", fft_padding="circular")
    x = torch.randn(2, C, *spatial)
    with torch.no_grad():
        k, grid = conv.masked_kernel(spatial)
    assert k.shape == (1, *spatial, C)
    # offsets -(S//2) .. S-1-S//2 in cells of 1/(L-1)
    S0 = spatial[0]
    torch.testing.assert_close(grid[0, :, *([0] * (len(spatial) - 1)), 0], (torch.arange(S0) - S0 // 2) / 7.0)
    ref = circular_conv(x.double(), k.movedim(-1, 1).double())
    ref = ref + conv.shortcut.detach().double().view(-1, *[1] * len(spatial)) * x.double()
    assert rel_err(conv(x, channels_first=True), ref) < 1e-4


def test_causal_1d():
    S = 12
    conv = layer(1, is_causal=True)
    x = torch.randn(2, S, C)
    with torch.no_grad():
        k_pos, grid = conv.kernel(S, causal=True)  # offsets 0..S-1
        k_pos = conv.mask(grid, k_pos)
        k_full, _ = conv.masked_kernel((S,))
    assert torch.equal(k_full[:, : S - 1], torch.zeros(1, S - 1, C))
    assert torch.equal(k_full[:, S - 1 :], k_pos)
    # reference: y[n] = sum_{m>=0} k[m] x[n - m] (left padding only)
    weight = k_pos[0].T.flip(-1).unsqueeze(1).double()  # [C, 1, S]
    xf = x.movedim(-1, 1).double()
    ref = F.conv1d(F.pad(xf, (S - 1, 0)), weight, groups=C)
    ref = ref + conv.shortcut.detach().double().view(-1, 1) * xf
    y = conv(x)
    assert rel_err(y.movedim(-1, 1), ref) < 1e-4
    x2 = x.clone()
    x2[:, 7:] += 5.0  # the future does not leak into the past
    torch.testing.assert_close(conv(x2)[:, :7], y[:, :7])


def test_spacing_samples_same_continuous_kernel():
    L = 8
    conv = layer(2, mask=False, kernel=kernel_cfg(L_cache=L))
    net = conv.kernel
    spatial = (5, 4)
    with torch.no_grad():
        k_half, grid_half = conv.masked_kernel(spatial, spacing=0.5)
        # kernel network evaluated by hand at offsets j * 0.5 / (L - 1)
        a0 = torch.arange(-4, 5) * 0.5 / (L - 1)
        a1 = torch.arange(-3, 4) * 0.5 / (L - 1)
        coords = torch.stack(torch.meshgrid(a0, a1, indexing="ij"), -1)
        h = torch.sin(net.pos_embed(coords))
        for lin in net.hidden_linears:
            h = torch.sin(lin(h))
        expected = net.out_linear(h)
        torch.testing.assert_close(grid_half[0], coords)
        torch.testing.assert_close(k_half[0], expected, rtol=1e-5, atol=1e-6)
        # every second offset at spacing 0.5 is an offset of the spacing-1 kernel
        k_full, _ = conv.masked_kernel((3, 2))
        torch.testing.assert_close(k_half[:, 0:9:2, 1:6:2], k_full, rtol=1e-5, atol=1e-6)
    x = torch.randn(1, C, *spatial)
    assert rel_err(conv(x, channels_first=True, spacing=0.5), reference(conv, x, spacing=0.5)) < 1e-4
    assert rel_err(conv(x, channels_first=True, spacing=(0.5, 2.0)), reference(conv, x, spacing=(0.5, 2.0))) < 1e-4


def _count_kernel_calls(conv: CKConvND) -> list[int]:
    calls = [0]
    conv.kernel.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_inference_cache_and_invalidation():
    conv = layer(2)
    calls = _count_kernel_calls(conv)
    x = torch.randn(2, 6, 7, C)
    conv.eval()
    with torch.no_grad():
        y1 = conv(x)
        y2 = conv(x)
        assert calls[0] == 1 and torch.equal(y1, y2)
        conv(torch.randn(1, 5, 5, C))  # new size -> new kernel
        assert calls[0] == 2
        conv(x, spacing=0.5)
        assert calls[0] == 3
    # eval mode with grad enabled also uses the cache (kernel is a constant in eval mode)
    conv(x)
    conv(x)
    assert calls[0] == 4
    # training step changes the parameters -> cache invalidated
    conv.train()
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    conv(x).square().mean().backward()
    assert calls[0] == 5  # training forward never uses the cache
    opt.step()
    conv.eval()
    with torch.no_grad():
        y3 = conv(x)
        assert calls[0] == 6 and not torch.equal(y3, y1)
        conv.train()
        y4 = conv(x)  # train mode without grad: cache still valid
        assert calls[0] == 6 and torch.equal(y3, y4)
    conv.eval()
    # load_state_dict writes in place -> invalidated; result equals a fresh layer
    fresh = layer(2)
    conv.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        y5 = conv(x)
        assert calls[0] == 7
        torch.testing.assert_close(y5, fresh(x))


def test_cache_not_used_for_film_and_not_broken_by_omega_clamp():
    film = layer(1, kernel=kernel_cfg(film_cfg={"cond_dim": 3}))
    calls = _count_kernel_calls(film)
    film.eval()
    with torch.no_grad():
        film(torch.randn(2, 9, C), torch.randn(2, 3))
        film(torch.randn(2, 9, C), torch.randn(2, 3))
    assert calls[0] == 2

    cfg = kernel_cfg(type="LearnableOmegaSIRENKernelND")
    learn = layer(1, kernel=cfg)
    calls = _count_kernel_calls(learn)
    learn.eval()
    with torch.no_grad():
        learn(torch.randn(2, 9, C))
        learn(torch.randn(2, 9, C))
        assert calls[0] == 1
        learn.kernel.omega_0_scale.fill_(100.0)  # out of range: invalidates, then clamped
        learn(torch.randn(2, 9, C))
        assert calls[0] == 2 and float(learn.kernel.omega_0_scale.max()) == 2.0
        learn(torch.randn(2, 9, C))
        assert calls[0] == 2


def test_film_layer_per_sample_kernels():
    torch.manual_seed(0)
    cfg = kernel_cfg(film_cfg={"cond_dim": 3, "init_type": "small_random", "init_std": 0.3})
    conv = layer(2, kernel=cfg)
    x = torch.randn(2, C, 5, 6)
    cond = torch.randn(2, 3)
    y = conv(x, cond, channels_first=True)
    assert rel_err(y, reference(conv, x, cond)) < 1e-4
    y.sum().backward()
    assert conv.kernel.film_generator.mlp[0].weight.grad is not None


def test_bf16_autocast():
    conv = layer(2)
    x = torch.randn(2, 8, 8, C)
    ref = conv(x)
    k_ref, _ = conv.masked_kernel((8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k_auto, _ = conv.masked_kernel((8, 8))
        y = conv(x.bfloat16())
        y32 = conv(x)
    assert torch.equal(k_auto, k_ref) and k_auto.dtype == torch.float32
    assert y.dtype == torch.bfloat16 and y32.dtype == torch.float32
    assert rel_err(y, ref) < 3e-2
    y.float().sum().backward()  # gradients flow through the bf16 path
    assert conv.kernel.out_linear.weight.grad is not None


def test_param_groups_by_tags():
    cfg = dict(
        type="BlockDiagonalLearnableOmegaSIRENKernelND", mlp_hidden_dim=16, num_layers=3,
        embedding_dim=16, L_cache=8, use_bias=True, num_blocks=2, apply_lr_scale=True,
        film_cfg={"cond_dim": 3, "no_weight_decay": 0.05},
    )
    conv = CKConvND(1, C, cfg, mask_cfg={"type": "ExponentialModulationND"})
    conv.kernel.out_linear.weight._no_weight_decay = True
    conv.kernel.out_linear.weight._weight_decay = 0.2  # _weight_decay wins
    lr, wd = 1e-3, 0.1
    groups = param_groups(conv, wd, lr)
    by_param = {}
    for g in groups:
        for p in g["params"]:
            by_param[p] = (g["weight_decay"], g["lr"])
    names = {p: n for n, p in conv.named_parameters()}
    assert conv.mask.weight not in by_param  # requires_grad=False
    assert len(by_param) == sum(p.requires_grad for p in conv.parameters())
    scale = conv.kernel.pos_embed.weight._lr_scale
    expected = {
        "kernel.pos_embed.weight": (0.0, lr * scale),
        "kernel.pos_embed.bias": (0.0, lr * scale),
        "kernel.hidden_linears.0.weight": (0.0, lr),
        "kernel.out_linear.weight": (0.2, lr),
        "kernel.out_linear.bias": (0.0, lr),
        "kernel.omega_0_scale": (0.0, lr),
        "kernel.film_generator.mlp.0.weight": (0.05, lr),
        "kernel.film_generator.mlp.0.bias": (0.0, lr),
        "shortcut": (0.0, lr),
    }
    for p, got in by_param.items():
        if names[p] in expected:
            assert got == pytest.approx(expected[names[p]]), names[p]
    keys = [(g["weight_decay"], g["lr"]) for g in groups]
    assert len(keys) == len(set(keys)) == 4
    untagged = torch.nn.Linear(2, 2)
    assert param_groups(untagged, wd, lr) == [
        {"params": list(untagged.parameters()), "weight_decay": wd, "lr": lr, "lr_scale": 1.0}
    ]
    torch.optim.AdamW(groups).step()  # usable as is
