"""Tests for kpconvx.KPConvXLayer against a plain-loop reference and its stated properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kpconvx import KPConvXLayer, kernel_aggregate, shell_kernel_points
from kpconvx.layer import BN_EPS, LEAKY_SLOPE


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- reference
def _lin(x: np.ndarray, lin: torch.nn.Linear) -> np.ndarray:
    """Plain loop linear layer: y[p, o] = sum_i x[p, i] w[o, i] + b[o]."""
    w = lin.weight.detach().double().numpy()
    b = None if lin.bias is None else lin.bias.detach().double().numpy()
    y = np.zeros((x.shape[0], w.shape[0]))
    for p in range(x.shape[0]):
        for o in range(w.shape[0]):
            y[p, o] = sum(x[p, i] * w[o, i] for i in range(w.shape[1])) + (0.0 if b is None else b[o])
    return y


def _bn(x: np.ndarray, bn: torch.nn.BatchNorm1d, train: bool) -> np.ndarray:
    if train:  # batch statistics over all (real) points, biased variance
        mean, var = x.mean(0), x.var(0)
    else:
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    return (x - mean) / np.sqrt(var + BN_EPS) * bn.weight.detach().double().numpy() \
        + bn.bias.detach().double().numpy()


def _act(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, LEAKY_SLOPE * x)


def reference_layer(layer: KPConvXLayer, X: np.ndarray, F: np.ndarray, N: np.ndarray,
                    train: bool = False) -> np.ndarray:
    """Loop implementation of the layer on one packed set: X [R,3], F [R,D], N [R,k]."""
    Q = layer.kernel_points.detach().double().numpy()
    R, D = F.shape
    G = layer.groups
    F = F.astype(np.float64).copy()
    for blk in layer.kp_blocks:
        A = 1.0 / (1.0 + np.exp(-_lin(_act(_bn(_lin(F, blk.Phi), blk.bn_alpha, train)), blk.Psi)))
        A = A.reshape(R, layer.m_q, D // G)
        W = blk.W.detach().double().numpy()
        conv = np.zeros((R, D))
        for i in range(R):
            for j in range(N.shape[1]):
                n = int(N[i, j])
                if n == R:
                    continue  # shadow
                d = X[n] - X[i]
                dists = [math.sqrt(sum((d[a] - Q[q, a]) ** 2 for a in range(3)))
                         for q in range(Q.shape[0])]
                kq = int(np.argmin(dists))
                h = max(0.0, 1.0 - dists[kq] / layer.sigma)
                for c in range(D):
                    conv[i, c] += h * A[i, kq, c // G] * W[kq, c] * F[n, c]
        H = _act(_bn(_lin(conv, blk.expand), blk.bn_expand, train))
        H = _act(_bn(_lin(H, blk.contract), blk.bn_contract, train))
        F = F + H
    return F


def _randomise_bn(layer: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in layer.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def _inputs(R=14, D=8, k=6, B=None, seed=0, shadow_frac=0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lead = (R,) if B is None else (B, R)
    X = torch.rand(lead + (3,), generator=g, dtype=dtype) * 1.2
    F = torch.randn(lead + (D,), generator=g, dtype=dtype)
    N = torch.randint(0, R, lead + (k,), generator=g)
    N[..., 0] = torch.arange(R)  # self first, like radius neighbours
    shadow = torch.rand(lead + (k,), generator=g) < shadow_frac
    shadow[..., 0] = False
    N[shadow] = R
    return X, F, N


def _layer(D=8, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    kw.setdefault("DH", 12)
    kw.setdefault("groups", 2)
    layer = KPConvXLayer(D, **kw).to(dtype)
    _randomise_bn(layer, seed)
    for blk in layer.kp_blocks:  # make W O(1) so the operator matters in the comparison
        blk.W.data.normal_()
    return layer


# --------------------------------------------------------------------------- loop match
@pytest.mark.parametrize("groups,blocks,radii,points,sigma", [
    (1, 1, (0.0, 0.5, 1.0), (1, 7, 13), 0.6),
    (2, 2, (0.0, 0.5, 1.0), (1, 7, 13), 0.4),
    (4, 1, (0.0, 0.7), (1, 5), 1.0),
    (8, 3, (0.3, 0.8), (4, 9), 0.5),
])
@pytest.mark.parametrize("train", [False, True])
def test_matches_loop_reference_packed(groups, blocks, radii, points, sigma, train):
    layer = _layer(D=8, groups=groups, blocks=blocks, shell_radii=radii, shell_points=points,
                   sigma=sigma)
    layer.train(train)
    X, F, N = _inputs(R=13, D=8, k=7, seed=groups + blocks)
    with torch.no_grad():
        out = layer(X, F, N).numpy()
    ref = reference_layer(layer, X.numpy(), F.numpy(), N.numpy(), train=train)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_matches_loop_reference_batched(train):
    layer = _layer(D=8, groups=2, blocks=2, sigma=0.5)
    layer.train(train)
    X, F, N = _inputs(R=9, D=8, k=5, B=3, seed=3)
    with torch.no_grad():
        out = layer(X, F, N).numpy()
    assert out.shape == (3, 9, 8)
    if train:  # batch statistics span all B*R points: compare against the packed equivalent
        Xp = X.reshape(-1, 3).numpy()
        Fp = F.reshape(-1, 8).numpy()
        off = (np.arange(3) * 9)[:, None, None]
        Np = np.where(N.numpy() == 9, 27, N.numpy() + off).reshape(-1, 5)
        ref = reference_layer(layer, Xp, Fp, Np, train=True).reshape(3, 9, 8)
    else:
        ref = np.stack([reference_layer(layer, X[b].numpy(), F[b].numpy(), N[b].numpy())
                        for b in range(3)])
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_matches_loop_reference_float32():
    layer = _layer(D=16, groups=4, blocks=2, sigma=0.5, dtype=torch.float32)
    layer.eval()
    X, F, N = _inputs(R=12, D=16, k=6, seed=5, dtype=torch.float32)
    with torch.no_grad():
        out = layer(X, F, N).numpy()
    ref = reference_layer(layer, X.double().numpy(), F.double().numpy(), N.numpy())
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_small_chunks_match():
    layer = _layer(D=8, blocks=2, sigma=0.5)
    X, F, N = _inputs(R=30, D=8, k=6, seed=9)
    X.requires_grad_(True)
    F.requires_grad_(True)
    out1 = layer(X, F, N)
    g1 = torch.autograd.grad(out1.square().sum(), [X, F] + list(layer.parameters()))
    layer.chunk_elements = 8 * 6 * 7  # 7 points per chunk
    out2 = layer(X, F, N)
    g2 = torch.autograd.grad(out2.square().sum(), [X, F] + list(layer.parameters()))
    torch.testing.assert_close(out1, out2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("train", [False, True])
def test_translation_invariance(train):
    layer = _layer(D=8, blocks=2, sigma=0.5).train(train)
    X, F, N = _inputs(R=20, D=8, k=8, seed=1)
    with torch.no_grad():
        a = layer(X, F, N)
        b = layer(X + torch.tensor([3.0, -7.5, 11.25], dtype=X.dtype), F, N)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_permutation_equivariance():
    layer = _layer(D=8, blocks=2, sigma=0.5).train(True)  # batch stats are order-free too
    R = 20
    X, F, N = _inputs(R=R, D=8, k=8, seed=2)
    perm = torch.randperm(R, generator=torch.Generator().manual_seed(0))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(R)
    # new point p is old point perm[p]; old index i maps to inv[i]; shadow stays R
    inv_ext = torch.cat([inv, torch.tensor([R])])
    N2 = inv_ext[N[perm]]
    with torch.no_grad():
        a = layer(X, F, N)
        b = layer(X[perm], F[perm], N2)
    torch.testing.assert_close(b, a[perm], atol=1e-9, rtol=1e-9)
    # permuting the neighbour columns does not matter either
    cols = torch.randperm(N.shape[1])
    with torch.no_grad():
        c = layer(X, F, N[:, cols])
    torch.testing.assert_close(c, a, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_shadow_neighbours_have_no_effect(batched, train):
    layer = _layer(D=8, blocks=2, sigma=0.5).train(train)
    X, F, N = _inputs(R=15, D=8, k=5, B=2 if batched else None, seed=4)
    pad = torch.full(N.shape[:-1] + (4,), 15, dtype=torch.long)
    with torch.no_grad():
        a = layer(X, F, N)
        b = layer(X, F, torch.cat([N, pad], dim=-1))
        c = layer(X, F, torch.cat([pad[..., :2], N, pad[..., :2]], dim=-1))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-12)
    # all-shadow neighbourhoods: the operator output is 0 and the layer still runs
    with torch.no_grad():
        d = layer(X, F, torch.full_like(N, 15))
    assert torch.isfinite(d).all()


def test_batched_equals_packed_per_element_eval():
    layer = _layer(D=8, blocks=2, sigma=0.5).eval()
    X, F, N = _inputs(R=11, D=8, k=5, B=3, seed=6)
    with torch.no_grad():
        out = layer(X, F, N)
        for b in range(3):
            torch.testing.assert_close(out[b], layer(X[b], F[b], N[b]))


def test_kernel_points_shells_and_count():
    radii, pts = (0.0, 0.5, 1.0), (1, 14, 42)
    layer = KPConvXLayer(16, shell_radii=radii, shell_points=pts)
    Q = layer.kernel_points
    assert Q.shape == (sum(pts), 3)
    norms = Q.norm(dim=1)
    expected = torch.tensor(sum(([r] * n for r, n in zip(radii, pts)), []), dtype=Q.dtype)
    torch.testing.assert_close(norms, expected, atol=1e-6, rtol=1e-6)
    assert not isinstance(Q, torch.nn.Parameter)
    assert "kernel_points" in dict(layer.named_buffers())
    # default layout
    Qd = KPConvXLayer(8).kernel_points
    assert Qd.shape == (21, 3)
    # points on a shell are distinct and spread out (Fibonacci lattice)
    shell = Q[15:]
    dmin = torch.cdist(shell, shell).add(torch.eye(42) * 10).min()
    assert dmin > 0.2


def test_fibonacci_layout_deterministic():
    a = KPConvXLayer(8, shell_radii=(0.0, 1.0, 2.0), shell_points=(1, 10, 30)).kernel_points
    b = KPConvXLayer(8, shell_radii=(0.0, 1.0, 2.0), shell_points=(1, 10, 30)).kernel_points
    assert torch.equal(a, b)
    ref = shell_kernel_points((0.0, 1.0, 2.0), (1, 10, 30))
    np.testing.assert_allclose(a.numpy(), ref, atol=1e-7)
    # golden angle lattice: z coordinates are evenly spaced on each shell
    z = ref[1:11, 2]
    np.testing.assert_allclose(np.diff(z), -0.2, atol=1e-12)


def test_deformable_kernel_points_trainable():
    layer = _layer(D=8, deformable=True, sigma=0.6)
    assert isinstance(layer.kernel_points, torch.nn.Parameter)
    assert any(p is layer.kernel_points for p in layer.parameters())
    X, F, N = _inputs(R=20, D=8, k=8, seed=7)
    layer(X, F, N).square().sum().backward()
    assert layer.kernel_points.grad is not None
    assert layer.kernel_points.grad.abs().sum() > 0


# --------------------------------------------------------------------------- gradients
def test_gradcheck_layer_float64():
    layer = _layer(D=4, groups=2, blocks=2, DH=6, sigma=0.7, deformable=True).eval()
    X, F, N = _inputs(R=6, D=4, k=4, seed=8)
    X.requires_grad_(True)
    F.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda X, F: layer(X, F, N), (X, F), eps=1e-6, atol=1e-5)
    # parameters, through the custom aggregation (W, attention, Q) and BN in train mode
    layer.train()
    params = [layer.kernel_points, layer.kp_blocks[0].W, layer.kp_blocks[1].Psi.weight,
              layer.kp_blocks[0].Phi.weight]

    names = {id(p): n for n, p in layer.named_parameters()}

    def fp(*ps):  # functional_call: autograd through substituted parameter values
        return torch.func.functional_call(
            layer, {names[id(p)]: v for p, v in zip(params, ps)}, (X.detach(), F.detach(), N))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(fp, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_kernel_aggregate():
    g = torch.Generator().manual_seed(0)
    R, k, m_q, D, G = 5, 4, 3, 6, 2
    Fp = torch.randn(R + 1, D, generator=g, dtype=torch.float64)
    Fp[-1] = 0
    A = torch.rand(R, m_q, D // G, generator=g, dtype=torch.float64)
    W = torch.randn(m_q, D, generator=g, dtype=torch.float64)
    h = torch.rand(R, k, generator=g, dtype=torch.float64)
    n = torch.randint(0, R + 1, (R, k), generator=g)
    kk = torch.randint(0, m_q, (R, k), generator=g)
    args = tuple(t.requires_grad_(True) for t in (Fp, A, W, h))
    for chunk in (2, 100):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: kernel_aggregate(a, b, c, d, n, kk, G, chunk), args)


@pytest.mark.parametrize("train", [False, True])
def test_gradients_reach_every_parameter(train):
    layer = _layer(D=8, blocks=3, sigma=0.6, deformable=True).train(train)
    X, F, N = _inputs(R=25, D=8, k=8, seed=10)
    layer(X, F, N).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if not train:  # in train mode the bias phi before BN has an (analytically) zero grad
            assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- errors
def test_error_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups"):
        KPConvXLayer(10, groups=4)


def test_error_shapes_disagree():
    layer = KPConvXLayer(8, groups=2, DH=8)
    X, F, N = _inputs(R=10, D=8, k=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="channels"):
        layer(X, torch.randn(10, 6), N)
    with pytest.raises(ValueError):
        layer(X[:9], F, N)
    with pytest.raises(ValueError):
        layer(X, F, N[:9])
    with pytest.raises(ValueError):
        layer(X[None], F, N)
    with pytest.raises(ValueError, match="3 coordinates"):
        layer(X[:, :2], F, N)
    with pytest.raises(ValueError, match="integer"):
        layer(X, F, N.float())


def test_error_index_out_of_range():
    layer = KPConvXLayer(8, groups=2, DH=8)
    X, F, N = _inputs(R=10, D=8, k=4, dtype=torch.float32)
    bad = N.clone()
    bad[3, 1] = 11
    with pytest.raises(ValueError, match="neighbour indices"):
        layer(X, F, bad)
    bad[3, 1] = -1
    with pytest.raises(ValueError, match="neighbour indices"):
        layer(X, F, bad)
    ok = N.clone()
    ok[3, 1] = 10  # R itself is the shadow index: allowed
    layer(X, F, ok)


# --------------------------------------------------------------------------- export, drop path
def test_export_representation_round_trip(tmp_path):
    layer = _layer(D=8, blocks=2, dtype=torch.float32)
    paths = layer.export_representation(tmp_path, out_prefix="enc0")
    assert set(paths) == {"block0_Q", "block0_W", "block1_Q", "block1_W"}
    for b, blk in enumerate(layer.kp_blocks):
        Q = np.loadtxt(paths[f"block{b}_Q"], delimiter=",")
        W = np.loadtxt(paths[f"block{b}_W"], delimiter=",")
        np.testing.assert_array_equal(Q, layer.kernel_points.double().numpy())
        np.testing.assert_array_equal(W, blk.W.detach().double().numpy())
    assert all(p.startswith(str(tmp_path)) and "enc0_" in p for p in paths.values())
    layer.export_representation(tmp_path / "sub")  # default prefix, creates the folder
    assert (tmp_path / "sub" / "kpconvx_block0_W.csv").exists()


def test_drop_path_behaviour():
    X, F, N = _inputs(R=16, D=8, k=6, seed=11)
    ref = _layer(D=8, blocks=2, sigma=0.5, drop_path=0.0)
    dp = _layer(D=8, blocks=2, sigma=0.5, drop_path=0.5)
    dp.load_state_dict(ref.state_dict())
    ref.eval(), dp.eval()
    with torch.no_grad():
        torch.testing.assert_close(dp(X, F, N), ref(X, F, N))  # eval: no drop, no scaling
    one = _layer(D=8, blocks=2, sigma=0.5, drop_path=1.0).train()
    with torch.no_grad():
        torch.testing.assert_close(one(X, F, N), F)            # p = 1: branch always dropped
    # p = 0.5 in training: each output is either F (dropped) or F + 2 * branch
    torch.manual_seed(0)
    half = _layer(D=8, blocks=1, sigma=0.5, drop_path=0.5).train()
    full = _layer(D=8, blocks=1, sigma=0.5, drop_path=0.0).train()
    full.load_state_dict(half.state_dict())
    with torch.no_grad():
        branch = full(X, F, N) - F
        seen = set()
        for _ in range(20):
            out = half(X, F, N)
            if torch.allclose(out, F):
                seen.add("drop")
            else:
                torch.testing.assert_close(out - F, 2 * branch)
                seen.add("keep")
    assert seen == {"drop", "keep"}
    # per-block rates accepted
    KPConvXLayer(8, blocks=3, groups=2, drop_path=[0.0, 0.1, 0.2])
    with pytest.raises(ValueError):
        KPConvXLayer(8, blocks=3, groups=2, drop_path=[0.0, 0.1])


def test_bn_momentum_keras_convention():
    layer = _layer(D=8, bn_momentum=0.9, dtype=torch.float32).train()
    bn = layer.kp_blocks[0].bn_alpha
    bn.running_mean.zero_()
    X, F, N = _inputs(R=16, D=8, k=6, seed=12, dtype=torch.float32)
    z = layer.kp_blocks[0].Phi(F).detach()
    with torch.no_grad():
        layer(X, F, N)
    torch.testing.assert_close(bn.running_mean, 0.1 * z.mean(0))


def test_autocast_bf16_cpu_close_to_fp32():
    layer = _layer(D=16, groups=4, blocks=2, sigma=0.5, dtype=torch.float32).eval()
    X, F, N = _inputs(R=40, D=16, k=8, seed=13, dtype=torch.float32)
    with torch.no_grad():
        ref = layer(X, F, N)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(X, F, N)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.train()
        Xg = X.clone().requires_grad_(True)
        layer(Xg, F, N).float().sum().backward()
    assert Xg.grad is not None and torch.isfinite(Xg.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_fp32_and_autocast():
    layer = _layer(D=16, groups=4, blocks=2, sigma=0.5, dtype=torch.float32).train()
    X, F, N = _inputs(R=300, D=16, k=12, seed=14, dtype=torch.float32)
    ref = layer(X, F, N)
    ref_g = torch.autograd.grad(ref.square().sum(), list(layer.parameters()))
    lc = layer.cuda()
    out = lc(X.cuda(), F.cuda(), N.cuda())
    g = torch.autograd.grad(out.square().sum(), list(lc.parameters()))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3)
    for dt in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dt):
            o = lc(X.cuda(), F.cuda(), N.cuda())
        o.float().sum().backward()
        assert torch.isfinite(o).all()
        assert (o.float().cpu() - ref.detach()).abs().max() < 0.1 * ref.abs().max()


def test_custom_activation():
    X, F, N = _inputs(R=12, D=8, k=5, seed=15, dtype=torch.float32)
    for act in (torch.nn.GELU(), torch.nn.ReLU, torch.tanh):
        layer = KPConvXLayer(8, groups=2, DH=8, activation=act)
        assert layer(X, F, N).shape == F.shape
    with pytest.raises(ValueError, match="activation"):
        KPConvXLayer(8, groups=2, activation=3)
