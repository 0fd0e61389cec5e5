"""Kernel networks: window, SIREN, FiLM, learnable omega, block-diagonal variant."""

from __future__ import annotations

import math

import pytest
import torch

from ckconv import (
    BlockDiagonalLearnableOmegaSIRENKernelND,
    ExponentialModulationND,
    KernelFiLMGenerator,
    LearnableOmegaSIRENKernelND,
    SIRENKernelND,
)
from ckconv.siren import block_mask


def siren(**overrides) -> SIRENKernelND:
    kwargs = dict(
        out_dim=8, data_dim=2, mlp_hidden_dim=16, num_layers=3, embedding_dim=16,
        omega_0=10.0, L_cache=8, use_bias=True,
    )
    kwargs.update(overrides)
    return SIRENKernelND(**kwargs)


def block(**overrides) -> BlockDiagonalLearnableOmegaSIRENKernelND:
    kwargs = dict(
        out_dim=8, data_dim=2, mlp_hidden_dim=16, num_layers=3, embedding_dim=16,
        L_cache=8, use_bias=True, num_blocks=4,
    )
    kwargs.update(overrides)
    return BlockDiagonalLearnableOmegaSIRENKernelND(**kwargs)


# --------------------------------------------------------------------------- window
def test_window_matches_product_formula():
    torch.manual_seed(0)
    win = ExponentialModulationND(3, 5)
    expected_row = torch.linspace(2.3, 13.81, 5) / 3
    assert torch.equal(win.weight, expected_row.repeat(3, 1))
    assert not win.weight.requires_grad and win.weight._no_weight_decay
    assert "weight" in win.state_dict()
    grid = torch.randn(1, 4, 5, 6, 3)
    x = torch.randn(2, 4, 5, 6, 5)
    expected = x.clone()
    for d in range(3):  # product over axes of exp(-|x_d| |w_dc|)
        expected = expected * torch.exp(-grid[..., d : d + 1].abs() * win.weight[d].abs())
    out = win(grid, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # 1 at the centre, in (0, 1] everywhere
    w = win.window(grid)
    assert (w > 0).all() and (w <= 1).all()
    assert torch.equal(win.window(torch.zeros(1, 1, 3)), torch.ones(1, 1, 5))
    assert "fast_decay_pct=13.81" in repr(win) and "slow_decay_pct=2.3" in repr(win)
    assert win(grid, x.bfloat16()).dtype == torch.bfloat16
    # the grid itself must be float32 (the contract asserts it; the features may be any dtype)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(AssertionError, match="grid must be float32"):
            win(grid.to(dtype), x)


# --------------------------------------------------------------------------- grid
def test_grid_spacing_and_growth():
    net = siren(data_dim=1, L_cache=5)
    k, grid = net(5)
    assert k.shape == (1, 9, 8) and grid.shape == (1, 9, 1) and grid.dtype == torch.float32
    torch.testing.assert_close(grid[0, :, 0], torch.linspace(-1, 1, 9), rtol=0, atol=1e-7)
    _, grid = net(7)  # larger than the cache: same spacing, beyond [-1, 1]
    torch.testing.assert_close(grid[0, :, 0], torch.arange(-6, 7) / 4.0)
    net2 = siren(data_dim=2, L_cache=(5, 3))
    k, grid = net2((4, 2))
    assert k.shape == (1, 7, 3, 8) and grid.shape == (1, 7, 3, 2)
    torch.testing.assert_close(grid[0, :, 1, 0], torch.arange(-3, 4) / 4.0)
    torch.testing.assert_close(grid[0, 2, :, 1], torch.arange(-1, 2) / 2.0)


# --------------------------------------------------------------------------- SIREN init
def test_siren_init_bounds_and_tags():
    torch.manual_seed(0)
    D, E, H, O, L = 2, 256, 256, 128, 16
    omega_0 = 30.0
    net = siren(data_dim=D, embedding_dim=E, mlp_hidden_dim=H, out_dim=O, L_cache=L, omega_0=omega_0)
    first = net.pos_embed.weight
    bound = 2 * math.pi * omega_0 / D
    assert first.abs().max() <= bound and first.abs().max() > 0.95 * bound
    for lin in net.hidden_linears:
        b = math.sqrt(6 / lin.in_features)
        assert lin.weight.abs().max() <= b and lin.weight.abs().max() > 0.95 * b
        # uniform(-b, b) has std b / sqrt(3)
        assert abs(float(lin.weight.detach().std()) / (b / math.sqrt(3)) - 1) < 0.05
    b_out = math.sqrt(6 / H) * math.sqrt(1 / L**D)
    w = net.out_linear.weight
    assert w.abs().max() <= b_out * (1 + 1e-6) and w.abs().max() > 0.95 * b_out
    assert abs(float(w.detach().std()) / (b_out / math.sqrt(3)) - 1) < 0.05
    for lin in [net.pos_embed, *net.hidden_linears, net.out_linear]:
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    tagged = {n for n, p in net.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert tagged == {n for n, _ in net.named_parameters()} - {"out_linear.weight"}


def test_wang_init_energy_independent_of_grid_size():
    """sum(k^2) over the grid at init does not depend on L_cache (it would scale ~L without)."""

    def energy(L: int) -> float:
        values = []
        for seed in range(4):
            torch.manual_seed(seed)
            net = siren(data_dim=1, out_dim=64, mlp_hidden_dim=64, embedding_dim=64, L_cache=L)
            with torch.no_grad():
                k, _ = net(L)
            values.append(float((k**2).sum(dim=1).mean()))
        return sum(values) / len(values)

    ratio = energy(64) / energy(8)
    assert 0.7 < ratio < 1.4, ratio


# --------------------------------------------------------------------------- flops
def test_flop_count_by_hand():
    net = siren(data_dim=2, embedding_dim=12, mlp_hidden_dim=16, num_layers=4, out_dim=8)
    G = 9 * 13  # grid_lens (5, 7) -> (2*5-1) * (2*7-1)
    embed = 2 * G * 2 * 12 + G * 12
    first_hidden = 2 * G * 12 * 16 + G * 16
    more_hidden = 2 * (2 * G * 16 * 16 + G * 16)
    out = 2 * G * 16 * 8
    assert net.flop_count((5, 7)) == embed + first_hidden + more_hidden + out == 207324
    assert net.flop_count((5, 7), inference=True) == 0

    film_net = siren(
        data_dim=2, embedding_dim=16, mlp_hidden_dim=16, num_layers=3, out_dim=8,
        film_cfg={"cond_dim": 5, "film_hidden_dim": 7}, film_after_pos_embed=True,
    )
    G = 7 * 7
    base = (2 * G * 2 * 16 + G * 16) + (2 * G * 16 * 16 + G * 16) + (2 * G * 16 * 16 + G * 16) + 2 * G * 16 * 8
    gen = 2 * 5 * 7 + 7 + 2 * 7 * (3 * 2 * 16)
    assert film_net.film_generator.flop_count() == gen
    expected = base + gen + 3 * 2 * G * 16
    assert film_net.flop_count(4) == expected
    assert film_net.flop_count(4, inference=True) == expected


# --------------------------------------------------------------------------- FiLM
def test_film_generator_layout_and_init():
    gen = KernelFiLMGenerator(cond_dim=3, kernel_hidden_dim=4, num_film_layers=2)
    c = torch.randn(5, 3)
    pairs = gen(c)
    assert len(pairs) == 2
    for gamma, beta in pairs:
        assert gamma.shape == beta.shape == (5, 4)
        assert torch.equal(gamma, torch.ones(5, 4)) and torch.equal(beta, torch.zeros(5, 4))
    with torch.no_grad():  # chunk order: [g0, b0, g1, b1]
        gen.mlp[-1].bias.copy_(torch.arange(16.0))
    (g0, b0), (g1, b1) = gen(c)
    assert torch.equal(g0[0], torch.arange(0.0, 4)) and torch.equal(b0[0], torch.arange(4.0, 8))
    assert torch.equal(g1[0], torch.arange(8.0, 12)) and torch.equal(b1[0], torch.arange(12.0, 16))

    torch.manual_seed(0)
    rnd = KernelFiLMGenerator(3, 64, 4, film_hidden_dim=64, init_type="small_random", init_std=1e-2)
    assert abs(float(rnd.mlp[-1].weight.detach().std()) / 1e-2 - 1) < 0.05


def test_film_weight_decay_tags():
    def tags(gen):
        return {
            n: (getattr(p, "_no_weight_decay", None), getattr(p, "_weight_decay", None))
            for n, p in gen.named_parameters()
        }

    t = tags(KernelFiLMGenerator(3, 4, 1))
    assert t["mlp.0.bias"] == (True, None) and t["mlp.2.bias"] == (True, None)
    assert t["mlp.0.weight"] == (None, None)
    t = tags(KernelFiLMGenerator(3, 4, 1, no_weight_decay=True))
    assert t["mlp.2.weight"] == (True, None)
    t = tags(KernelFiLMGenerator(3, 4, 1, no_weight_decay=0.05))
    assert t["mlp.2.weight"] == (None, 0.05)


@pytest.mark.parametrize("after_pos_embed", [False, True])
def test_film_identity_init_leaves_kernel_unchanged(after_pos_embed):
    torch.manual_seed(0)
    film_net = siren(film_cfg={"cond_dim": 6}, film_after_pos_embed=after_pos_embed)
    plain = siren()
    plain.load_state_dict(film_net.state_dict(), strict=False)
    k_plain, _ = plain((4, 5))
    k_film, grid = film_net((4, 5), torch.randn(3, 6) * 10)
    assert k_film.shape == (3, 7, 9, 8) and grid.shape == (1, 7, 9, 2)
    assert torch.equal(k_film, k_plain.expand_as(k_film))


def test_film_makes_kernel_batch_dependent():
    torch.manual_seed(0)
    net = siren(film_cfg={"cond_dim": 6, "init_type": "small_random", "init_std": 0.3})
    k, _ = net((3, 4), torch.randn(2, 6))
    assert k.shape == (2, 5, 7, 8)
    assert not torch.allclose(k[0], k[1])
    # without conditioning a FiLM kernel is the plain SIREN (reference/ckconv.md), FiLM skipped
    plain = siren()
    plain.load_state_dict(net.state_dict(), strict=False)
    k_none, grid = net((3, 4))
    assert k_none.shape == (1, 5, 7, 8) and grid.shape == (1, 5, 7, 2)
    assert torch.equal(k_none, plain((3, 4))[0])
    with pytest.raises(ValueError, match="no film_cfg"):
        plain((3, 4), torch.randn(2, 6))      # conditioning for a kernel without FiLM


def test_kernel_errors():
    with pytest.raises(ValueError, match="film_after_pos_embed"):
        siren(embedding_dim=8, mlp_hidden_dim=16, film_cfg={"cond_dim": 2}, film_after_pos_embed=True)
    with pytest.raises(ValueError, match="num_film_layers"):
        KernelFiLMGenerator(cond_dim=2, kernel_hidden_dim=4, num_film_layers=0)
    with pytest.raises(ValueError, match="num_film_layers"):
        siren(num_layers=3, film_cfg={"cond_dim": 2, "num_film_layers": 3})
    with pytest.raises(ValueError, match="kernel_hidden_dim"):
        siren(film_cfg={"cond_dim": 2, "kernel_hidden_dim": 5})
    with pytest.raises(ValueError, match="cond_dim"):
        siren(film_cfg={"num_film_layers": 2})
    with pytest.raises(ValueError):
        siren(num_layers=1)
    with pytest.raises(ValueError):
        siren(L_cache=1)
    # num_film_layers matches num_layers - 1 + film_after_pos_embed: accepted
    siren(num_layers=3, film_cfg={"cond_dim": 2, "num_film_layers": 3}, film_after_pos_embed=True)


# --------------------------------------------------------------------------- learnable omega
def learnable(**overrides) -> LearnableOmegaSIRENKernelND:
    kwargs = dict(
        out_dim=4, data_dim=2, mlp_hidden_dim=16, num_layers=3, embedding_dim=16,
        omega_0=10.0, L_cache=8, use_bias=True,
    )
    kwargs.update(overrides)
    return LearnableOmegaSIRENKernelND(**kwargs)


def test_learnable_omega_formula():
    torch.manual_seed(0)
    net = learnable()
    assert net.pos_embed.weight.abs().max() <= 1 / 2
    assert "omega_0_factor" not in net.state_dict() and "omega_0_scale" in net.state_dict()
    with torch.no_grad():
        net.omega_0_scale.uniform_(0.5, 1.5)
        net.pos_embed.bias.normal_()
    grid = torch.randn(1, 3, 4, 2)
    W, b, s = net.pos_embed.weight, net.pos_embed.bias, net.omega_0_scale
    expected = torch.sin(2 * math.pi * 10.0 * s * (grid @ W.T + b))
    torch.testing.assert_close(net._embed(grid), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.effective_omega_0, 10.0 * s.detach())


def test_learnable_omega_clamp_after_optimizer_step():
    torch.manual_seed(0)
    net = learnable(omega_0_scale_min=0.5, omega_0_scale_max=1.5)
    opt = torch.optim.SGD([net.omega_0_scale], lr=10.0)
    half = net.embedding_dim // 2
    loss = -net.omega_0_scale[:half].sum() + net.omega_0_scale[half:].sum()
    loss.backward()
    opt.step()  # pushes the first half to 11, the second half to -9
    assert net.omega_0_scale.max() > 1.5 and net.omega_0_scale.min() < 0.5
    net((3, 3))
    s = net.omega_0_scale.detach()
    assert float(s.max()) == 1.5 and float(s.min()) == 0.5
    version = net.omega_0_scale._version
    net((3, 3))  # unchanged since the last clamp: no in-place write
    assert net.omega_0_scale._version == version


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_learnable_omega_bad_scale_bounds(lo, hi):
    with pytest.raises(ValueError, match="omega_0_scale_min"):
        learnable(omega_0_scale_min=lo, omega_0_scale_max=hi)
    with pytest.raises(ValueError, match="omega_0_scale_min"):
        block(omega_0_scale_min=lo, omega_0_scale_max=hi)


# --------------------------------------------------------------------------- block diagonal
@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"schedule": "linear", "omega_0_min": 1.0, "omega_0_max": 10.0}, [1.0, 4.0, 7.0, 10.0]),
        ({"schedule": "log", "omega_0_min": 1.0, "omega_0_max": 1000.0}, [1.0, 10.0, 100.0, 1000.0]),
        ({"schedule": "log", "omega_0_per_block": [3.0, 1.0, 9.0, 2.0]}, [3.0, 1.0, 9.0, 2.0]),
    ],
)
def test_block_omega_schedule_per_row(kwargs, expected):
    net = block(**kwargs, omega_0_scale_min=1e-3)
    expected = torch.tensor(expected)
    torch.testing.assert_close(net.omega_0_per_block, expected)
    assert net.omega_0_per_block.dtype == torch.float32
    assert "omega_0_per_block" not in net.state_dict()
    assert net.omega_0 == net.omega_0_const == float(expected.max())
    per_row = expected.repeat_interleave(16 // 4)  # embedding rows in 4 consecutive blocks
    torch.testing.assert_close(net.effective_omega_0, per_row)
    torch.testing.assert_close(net.omega_0_scale.detach(), per_row / expected.max())


@pytest.mark.parametrize("off", [0.0, 0.1, 1.0])
def test_block_masks(off):
    torch.manual_seed(0)
    net = block(off_block_scale=off, num_blocks=4)
    torch.manual_seed(0)  # same random stream, no masks
    dense = learnable(out_dim=8, omega_0=net.omega_0_const)
    for lin_b, lin_d in zip([*net.hidden_linears, net.out_linear], [*dense.hidden_linears, dense.out_linear]):
        out_f, in_f = lin_b.weight.shape
        rows = torch.arange(out_f) // (out_f // 4)
        cols = torch.arange(in_f) // (in_f // 4)
        mask = torch.where(rows[:, None] == cols[None, :], 1.0, off)
        assert torch.equal(mask, block_mask(out_f, in_f, 4, off))
        torch.testing.assert_close(lin_b.weight, lin_d.weight * mask, rtol=0, atol=0)
    if off == 0.0:  # strictly block-diagonal: block k of the output only sees block k of h
        w = net.out_linear.weight
        assert w[:2, 4:].abs().max() == 0 and w[:2, :4].abs().max() > 0


def test_block_errors_and_lr_scale():
    for name in ("embedding_dim", "mlp_hidden_dim", "out_dim"):
        with pytest.raises(ValueError, match=name):
            block(**{name: 18}, num_blocks=4)
    with pytest.raises(ValueError, match="omega_0_per_block"):
        block(omega_0_per_block=[1.0, 2.0])
    with pytest.raises(ValueError, match="schedule"):
        block(schedule="cubic")
    net = block(apply_lr_scale=True, omega_0_max=12.0)
    for p in net.pos_embed.parameters():
        assert p._lr_scale == pytest.approx(1 / (2 * math.pi * 12.0))
    assert not hasattr(block().pos_embed.weight, "_lr_scale")
    k, grid = net((5, 6))
    assert k.shape == (1, 9, 11, 8)
