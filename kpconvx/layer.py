"""KPConvX layer: kernel point convolution with attention-modulated depthwise weights.

For centre point i with neighbours j in N(i) (Thomas et al., CVPR 2024):

    d_ij = x_j - x_i                                   relative position        [R, k, 3]
    k_j  = argmin_q ||d_ij - q||                       nearest kernel point     [R, k]
    h_ij = max(0, 1 - ||d_ij - q_{k_j}|| / sigma)      influence                [R, k]
    A_i  = alpha(f_i) = sigmoid(act(BN(f_i Phi + phi)) Psi + psi)  -> [m_q, D/G]
    f~_i = sum_j h_ij * (A_i[k_j] ⋈ W[k_j]) ⊙ f_j                                [R, D]

``⋈`` is the grouped Hadamard product: attention value ``a`` (index c // G) multiplies
the G consecutive channels ``c = a*G .. a*G + G - 1``. One block is

    H = act(BN(act(BN(f~ W_expand)) W_contract)),     F_out = F + drop_path(H)

and a layer is ``blocks`` blocks in sequence sharing X, N and the kernel points Q.

Implementation notes
- Nearest kernel point assignment means each (i, j) pair touches one kernel point, so
  only ``[R, k, D]``-sized work is needed, never ``[R, k, m_q, D]`` nor ``[R, m_q, D]``.
  The aggregation is a custom autograd function that processes points in chunks and
  recomputes gathers in backward: it saves only its inputs (F, A, W, h, indices), so no
  ``[R, k, D]`` tensor is kept alive for autograd.
- Geometry (distances, nearest kernel point, influences) is computed in >= fp32 with
  autocast disabled; the aggregation runs in the autocast dtype when autocast is on.
- Shadow neighbours (index R) gather an appended zero feature row and get influence 0,
  so they contribute nothing and never enter any BatchNorm statistics.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from hierarchy.unet import BN_EPS, LEAKY_SLOPE  # the conventions every point network here shares

from .kernel_points import shell_kernel_points


# --------------------------------------------------------------------------- helpers
def _compute_dtype(ref: Tensor) -> torch.dtype:
    """Autocast dtype when autocast is active on ref's device, else ref's dtype."""
    dev = ref.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return ref.dtype


def _expand_groups(Ag: Tensor, G: int) -> Tensor:
    """[..., D/G] -> [..., D] by repeating every attention value G times (⋈ helper)."""
    return Ag.repeat_interleave(G, dim=-1)


class _KernelAggregate(torch.autograd.Function):
    """``out[i, c] = sum_j h[i, j] * A[i, kk[i, j], c // G] * W[kk[i, j], c] * Fp[n[i, j], c]``.

    Inputs: ``Fp [R+1, D]`` (features with a zero shadow row), ``A [R, m_q, D/G]``,
    ``W [m_q, D]``, ``h [R, k]``, ``n [R, k]`` (into Fp), ``kk [R, k]`` (into W/A rows),
    ``G`` (channels per attention value), ``chunk`` (points per chunk).
    Output ``[R, D]``. Memory: O(chunk * k * D) temporaries; nothing of that size saved.
    """

    @staticmethod
    def forward(ctx, Fp: Tensor, A: Tensor, W: Tensor, h: Tensor, n: Tensor, kk: Tensor,
                G: int, chunk: int) -> Tensor:  # type: ignore[override]
        R, k = n.shape
        m_q, D = W.shape
        Dg = D // G
        out = Fp.new_empty((R, D))
        A_flat = A.reshape(R * m_q, Dg)
        for s in range(0, R, chunk):
            e = min(R, s + chunk)
            c = e - s
            Fj, Ag, Wg = _KernelAggregate._gather(Fp, A_flat, W, n[s:e], kk[s:e], s, m_q)
            P = (Wg.view(c, k, Dg, G) * Ag.unsqueeze(-1)).view(c, k, D)  # (A ⋈ W) rows
            P.mul_(Fj)
            out[s:e] = torch.bmm(h[s:e].unsqueeze(1), P).squeeze(1)      # sum_j h_ij (.)
        ctx.save_for_backward(Fp, A, W, h, n, kk)
        ctx.G, ctx.chunk = G, chunk
        return out

    @staticmethod
    def _gather(Fp: Tensor, A_flat: Tensor, W: Tensor, n: Tensor, kk: Tensor, s: int,
                m_q: int) -> tuple[Tensor, Tensor, Tensor]:
        """Gather neighbour features [c,k,D], attention rows [c,k,D/G], weights [c,k,D]."""
        c, k = n.shape
        Fj = Fp.index_select(0, n.reshape(-1)).view(c, k, -1)
        rows = (torch.arange(s, s + c, device=n.device).unsqueeze(1) * m_q + kk).reshape(-1)
        Ag = A_flat.index_select(0, rows).view(c, k, -1)
        Wg = W.index_select(0, kk.reshape(-1)).view(c, k, -1)
        return Fj, Ag, Wg

    @staticmethod
    def backward(ctx, g_out: Tensor):  # type: ignore[override]
        Fp, A, W, h, n, kk = ctx.saved_tensors
        G, chunk = ctx.G, ctx.chunk
        R, k = n.shape
        m_q, D = W.shape
        Dg = D // G
        need_F, need_A, need_W, need_h = ctx.needs_input_grad[:4]
        g_out = g_out.to(Fp.dtype)
        # scatter accumulators in >= fp32 (many contributions per row under bf16/fp16)
        acc = torch.promote_types(Fp.dtype, torch.float32)
        dFp = torch.zeros(Fp.shape, dtype=acc, device=Fp.device) if need_F else None
        dA = torch.zeros((R * m_q, Dg), dtype=acc, device=A.device) if need_A else None
        dW = torch.zeros(W.shape, dtype=acc, device=W.device) if need_W else None
        dh = torch.empty_like(h) if need_h else None
        A_flat = A.reshape(R * m_q, Dg)
        for s in range(0, R, chunk):
            e = min(R, s + chunk)
            c = e - s
            Fj, Ag, Wg = _KernelAggregate._gather(Fp, A_flat, W, n[s:e], kk[s:e], s, m_q)
            g = g_out[s:e]
            hs = h[s:e]
            gh = hs.unsqueeze(-1) * g.unsqueeze(1)                         # [c,k,D] g_i h_ij
            if need_F or need_h:
                P = (Wg.view(c, k, Dg, G) * Ag.unsqueeze(-1)).view(c, k, D)
                if need_h:   # dh_ij = sum_c g_ic P_ijc Fj_ijc
                    dh[s:e] = torch.bmm(P * Fj, g.unsqueeze(-1)).squeeze(-1)
                if need_F:   # dF_j += g_i h_ij P_ij
                    dFp.index_add_(0, n[s:e].reshape(-1), (gh * P).view(c * k, D).to(acc))
            if need_A or need_W:
                T = gh.mul_(Fj)                                             # g h f_j
                if need_A:   # dA[i, k_j, a] += sum_{c in group a} T W
                    dAg = (T * Wg).view(c, k, Dg, G).sum(-1)
                    rows = (torch.arange(s, e, device=n.device).unsqueeze(1) * m_q
                            + kk[s:e]).reshape(-1)
                    dA.index_add_(0, rows, dAg.view(c * k, Dg).to(acc))
                if need_W:   # dW[q] += sum_{(i,j): k_j = q} T ⋈ A
                    dWg = (T.view(c, k, Dg, G) * Ag.unsqueeze(-1)).view(c * k, D)
                    onehot = torch.nn.functional.one_hot(kk[s:e].reshape(-1), m_q).to(dWg.dtype)
                    dW.add_(onehot.t() @ dWg)  # matmul, no atomics on m_q rows
        dFp = dFp.to(Fp.dtype) if dFp is not None else None
        dA = dA.view(R, m_q, Dg).to(A.dtype) if dA is not None else None
        dW = dW.to(W.dtype) if dW is not None else None
        return dFp, dA, dW, dh, None, None, None, None


def kernel_aggregate(Fp: Tensor, A: Tensor, W: Tensor, h: Tensor, n: Tensor, kk: Tensor,
                     G: int, chunk: int) -> Tensor:
    """Functional form of :class:`_KernelAggregate` (see its docstring), ``-> [R, D]``."""
    return _KernelAggregate.apply(Fp, A, W, h, n, kk, G, chunk)


@torch.no_grad()
def nearest_kernel_point(d: Tensor, Q: Tensor, chunk: int = 1 << 20) -> Tensor:
    """Index of the kernel point nearest to each relative position.

    ``d [..., 3]``, ``Q [m_q, 3]`` -> ``[...]`` int64, ``argmin_q ||d - q||^2`` computed as
    ``argmin_q (||q||^2 - 2 d.q)`` in fp32 (autocast off), ``chunk`` rows at a time.
    """
    flat = d.reshape(-1, d.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=d.device)
    Qf = Q.to(flat.dtype)
    q2 = (Qf * Qf).sum(-1)
    with torch.autocast(device_type=d.device.type, enabled=False):
        for s in range(0, flat.shape[0], chunk):
            e = min(flat.shape[0], s + chunk)
            out[s:e] = (q2 - 2.0 * flat[s:e] @ Qf.t()).argmin(dim=-1)
    return out.view(d.shape[:-1])


def drop_path(H: Tensor, p: float, training: bool, batch: Optional[Tensor] = None) -> Tensor:
    """Stochastic depth on a residual branch ``H [P, D]``.

    Eval or p == 0: ``H``. Train: each sample (``batch [P]`` segment ids, or the whole
    input when ``batch`` is None) keeps its branch with probability 1-p, rescaled by
    1/(1-p); p >= 1 drops the branch entirely (returns zeros).
    """
    if not training or p <= 0.0:
        return H
    if p >= 1.0:
        return torch.zeros_like(H)
    keep = 1.0 - p
    if batch is None:
        mask = (torch.rand((), device=H.device) < keep).to(H.dtype).view(1, 1)
    else:
        nseg = int(batch.max().item()) + 1 if batch.numel() else 1
        mask = (torch.rand(nseg, device=H.device) < keep).to(H.dtype)[batch].unsqueeze(1)
    return H * mask / keep


# --------------------------------------------------------------------------- modules
class KPConvXBlock(nn.Module):
    """One KPConvX block: operator + expanding MLP + contracting MLP + residual.

    Parameters: ``W [m_q, D]`` (depthwise kernel weights), ``Phi/phi`` (``Linear(D, D)``),
    ``bn_alpha`` (BN on D), ``Psi/psi`` (``Linear(D, m_q*D/G)``), ``expand``
    (``Linear(D, DH)``, BN, act), ``contract`` (``Linear(DH, D)``, BN, act). The MLP linear
    layers have no bias (the following BN's shift plays that role).
    """

    def __init__(self, in_dim: int, m_q: int, DH: int, groups: int, drop_path: float,
                 bn_momentum: float, activation: Callable[[Tensor], Tensor]):
        super().__init__()
        D = in_dim
        self.in_dim, self.m_q, self.groups, self.drop_path = D, m_q, groups, float(drop_path)
        mom = 1.0 - bn_momentum  # Keras m -> torch momentum
        self.W = nn.Parameter(torch.empty(m_q, D))
        nn.init.trunc_normal_(self.W, std=0.02 * (D ** 0.5) / (m_q ** 0.5), a=-0.1, b=0.1)
        self.Phi = nn.Linear(D, D)                      # f Phi + phi
        self.bn_alpha = nn.BatchNorm1d(D, eps=BN_EPS, momentum=mom)
        self.Psi = nn.Linear(D, m_q * (D // groups))    # (.) Psi + psi
        self.expand = nn.Linear(D, DH, bias=False)
        self.bn_expand = nn.BatchNorm1d(DH, eps=BN_EPS, momentum=mom)
        self.contract = nn.Linear(DH, D, bias=False)
        self.bn_contract = nn.BatchNorm1d(D, eps=BN_EPS, momentum=mom)
        self.act = activation

    def attention(self, F: Tensor) -> Tensor:
        """``A = sigmoid(act(BN(F Phi + phi)) Psi + psi)``: ``[P, D] -> [P, m_q, D/G]``."""
        a = self.Psi(self.act(self.bn_alpha(self.Phi(F))))
        return torch.sigmoid(a).view(F.shape[0], self.m_q, self.in_dim // self.groups)

    def forward(self, F: Tensor, h: Tensor, N: Tensor, kk: Tensor, chunk: int,
                batch: Optional[Tensor] = None) -> Tensor:
        """``F [P, D]``, ``h/N/kk [P, k]`` (packed, shadow index P) -> ``[P, D]``."""
        A = self.attention(F)
        cdt = _compute_dtype(F)
        Fp = torch.cat([F.to(cdt), F.new_zeros((1, F.shape[1]), dtype=cdt)], dim=0)
        conv = kernel_aggregate(Fp, A.to(cdt), self.W.to(cdt), h.to(cdt), N, kk,
                                self.groups, chunk)
        H = self.act(self.bn_expand(self.expand(conv)))
        H = self.act(self.bn_contract(self.contract(H)))
        return F + drop_path(H, self.drop_path, self.training, batch)


class KPConvXLayer(nn.Module):
    """``blocks`` KPConvX blocks sharing coordinates X, neighbours N and kernel points Q.

    Args:
        in_dim: D, feature dimension (input = output).
        blocks: number of blocks.
        drop_path: stochastic-depth probability of each block's residual branch (a float,
            or one float per block).
        sigma: influence distance in ``h = max(0, 1 - ||d - q|| / sigma)``.
        shell_radii, shell_points: kernel point shells (Fibonacci lattices).
        DH: hidden width of the expanding/contracting MLP.
        groups: G, channels per attention value (G must divide D).
        deformable: kernel points trainable (Parameter) instead of a buffer.
        bn_momentum: Keras convention ``running = m*running + (1-m)*batch``.
        activation: callable / nn.Module; default ``LeakyReLU(0.1)``.

    ``forward(X, F, N)``: ``X [B,R,3], F [B,R,D], N [B,R,k] -> [B,R,D]`` or packed
    ``X [R,3], F [R,D], N [R,k] -> [R,D]``; index R in N is a shadow (missing) neighbour.
    """

    def __init__(self, in_dim: int, blocks: int = 1,
                 drop_path: Union[float, Sequence[float]] = 0.0, sigma: float = 1.0,
                 shell_radii: Sequence[float] = (0.0, 0.5, 1.0),
                 shell_points: Sequence[int] = (1, 7, 13), DH: int = 384, groups: int = 8,
                 deformable: bool = False, bn_momentum: float = 0.9,
                 activation: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        if int(in_dim) < 1 or int(blocks) < 1 or int(DH) < 1 or int(groups) < 1:
            raise ValueError(f"in_dim, blocks, DH, groups must be >= 1 "
                             f"(got {in_dim}, {blocks}, {DH}, {groups})")
        if in_dim % groups != 0:
            raise ValueError(f"groups={groups} must divide the channel count in_dim={in_dim}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1] (Keras convention), got {bn_momentum}")
        rates = ([float(drop_path)] * blocks if np.isscalar(drop_path)
                 else [float(p) for p in drop_path])  # type: ignore[union-attr]
        if len(rates) != blocks or any(not 0.0 <= p <= 1.0 for p in rates):
            raise ValueError(f"drop_path must be a probability or {blocks} probabilities, "
                             f"got {drop_path}")
        self.in_dim, self.blocks, self.sigma = int(in_dim), int(blocks), float(sigma)
        self.shell_radii = tuple(float(r) for r in shell_radii)
        self.shell_points = tuple(int(n) for n in shell_points)
        self.DH, self.groups, self.deformable = int(DH), int(groups), bool(deformable)
        self.bn_momentum, self.drop_path = float(bn_momentum), rates
        Q = torch.tensor(shell_kernel_points(self.shell_radii, self.shell_points),
                         dtype=torch.float32)
        if deformable:
            self.kernel_points = nn.Parameter(Q)
        else:
            self.register_buffer("kernel_points", Q)
        self.m_q = Q.shape[0]
        if activation is None:
            activation = nn.LeakyReLU(LEAKY_SLOPE)
        elif isinstance(activation, type) and issubclass(activation, nn.Module):
            activation = activation()  # e.g. activation=nn.GELU
        if not callable(activation):
            raise ValueError(f"activation must be callable, got {activation!r}")
        self.activation = activation
        self.kp_blocks = nn.ModuleList(
            KPConvXBlock(self.in_dim, self.m_q, self.DH, self.groups, p, self.bn_momentum,
                         activation) for p in rates)
        #: max elements (points * k * D) of each [chunk, k, D] temporary of the aggregation;
        #: None: by device (CPU 2^20, 4 MB in fp32, cache-sized: 10-22% faster than 2^22 at
        #: R = 50k, k 16/32, D 64/128, benchmarks/README.md; CUDA 2^22, fewer launches)
        self.chunk_elements: Optional[int] = None
        #: check index range of N in forward (one device sync); the network disables it
        self.validate_indices = True

    # ------------------------------------------------------------------ input handling
    def _pack(self, X: Tensor, F: Tensor, N: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """Validate and flatten ``[B,R,.]`` to packed ``[B*R,.]`` (shadow R -> B*R)."""
        for name, t in (("X", X), ("F", F), ("N", N)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if F.dim() not in (2, 3) or X.dim() != F.dim() or N.dim() != F.dim():
            raise ValueError("expected X [B,R,3], F [B,R,D], N [B,R,k] or packed X [R,3], "
                             f"F [R,D], N [R,k]; got X {tuple(X.shape)}, F {tuple(F.shape)}, "
                             f"N {tuple(N.shape)}")
        if X.shape[-1] != 3:
            raise ValueError(f"X must have 3 coordinates in its last dim, got {tuple(X.shape)}")
        if F.shape[-1] != self.in_dim:
            raise ValueError(f"F has {F.shape[-1]} channels, layer expects in_dim={self.in_dim}")
        if X.shape[:-1] != F.shape[:-1] or N.shape[:-1] != F.shape[:-1]:
            raise ValueError(f"point dims disagree: X {tuple(X.shape)}, F {tuple(F.shape)}, "
                             f"N {tuple(N.shape)}")
        if N.dtype.is_floating_point or N.dtype.is_complex or N.dtype == torch.bool:
            raise ValueError(f"N must hold integer indices (int64), got {N.dtype}")
        if not F.dtype.is_floating_point or not X.dtype.is_floating_point:
            raise ValueError(f"X and F must be floating point, got {X.dtype}, {F.dtype}")
        if X.device != F.device or N.device != F.device:
            raise ValueError(f"X, F, N on different devices: {X.device}, {F.device}, {N.device}")
        R = F.shape[-2]
        N = N.long()
        if self.validate_indices and N.numel() and bool(((N < 0) | (N > R)).any()):
            raise ValueError(f"neighbour indices must lie in [0, R={R}] (R = shadow "
                             f"neighbour); got min {int(N.min())}, max {int(N.max())}")
        if F.dim() == 2:
            return X, F, N, 0
        B = F.shape[0]
        off = (torch.arange(B, device=N.device) * R).view(B, 1, 1)
        Np = torch.where(N == R, B * R, N + off)
        return X.reshape(B * R, 3), F.reshape(B * R, -1), Np.reshape(B * R, -1), B

    def geometry(self, X: Tensor, N: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest kernel point and influence for packed ``X [P,3]``, ``N [P,k]``.

        ``d_ij = x_j - x_i``, ``k_ij = argmin_q ||d_ij - q||``,
        ``h_ij = max(0, 1 - ||d_ij - q_{k_ij}|| / sigma)`` (0 for shadow j = P);
        computed in >= fp32 with autocast off. Returns ``(kk [P,k] int64, h [P,k])``.
        """
        P = X.shape[0]
        gdt = torch.promote_types(X.dtype, torch.float32)
        with torch.autocast(device_type=X.device.type, enabled=False):
            Xg = X.to(gdt)
            Q = self.kernel_points.to(gdt)
            Xp = torch.cat([Xg, Xg.new_zeros((1, 3))], dim=0)     # shadow row (masked below)
            valid = N < P
            d = Xp[N] - Xg.unsqueeze(1)                            # [P, k, 3]
            kk = nearest_kernel_point(d.detach(), Q.detach())
            dist = torch.linalg.vector_norm(d - Q[kk], dim=-1)     # [P, k]
            h = torch.clamp(1.0 - dist / self.sigma, min=0.0) * valid
        return kk, h

    def forward(self, X: Tensor, F: Tensor, N: Tensor, batch: Optional[Tensor] = None
                ) -> Tensor:
        """Apply the blocks. ``batch [R]`` (packed only, optional) gives segment ids so
        drop_path drops per point set; batched input always drops per batch element."""
        shape = F.shape
        Xp, Fp, Np, B = self._pack(X, F, N)
        if B:
            batch = torch.arange(B, device=F.device).repeat_interleave(shape[1])
        kk, h = self.geometry(Xp, Np)
        k = max(Np.shape[1], 1)
        elements = self.chunk_elements or (1 << 20 if Xp.device.type == "cpu" else 1 << 22)
        chunk = max(1, elements // (k * self.in_dim))
        out = Fp
        for blk in self.kp_blocks:
            out = blk(out, h, Np, kk, chunk, batch)
        return out.reshape(shape[:-1] + (out.shape[-1],))

    # ------------------------------------------------------------------ export
    def export_representation(self, dir_path: Union[str, os.PathLike],
                              out_prefix: Optional[str] = None) -> dict[str, str]:
        """Write kernel points Q ``[m_q, 3]`` and weights W ``[m_q, D]`` of every block as CSV.

        Files: ``{dir_path}/{prefix}block{b}_Q.csv`` and ``..._W.csv`` (comma separated, no
        header; read with ``np.loadtxt(path, delimiter=",", ndmin=2)``). ``prefix`` is
        ``out_prefix + "_"`` or ``"kpconvx_"``. Returns ``{"block{b}_Q": path, ...}``.
        """
        if dir_path is None:
            raise ValueError("export_representation needs a directory path")
        os.makedirs(dir_path, exist_ok=True)
        prefix = "kpconvx_" if out_prefix is None else f"{out_prefix}_"
        Q = self.kernel_points.detach().cpu().double().numpy()
        paths: dict[str, str] = {}
        for b, blk in enumerate(self.kp_blocks):
            for name, arr in (("Q", Q), ("W", blk.W.detach().cpu().double().numpy())):
                path = os.path.join(os.fspath(dir_path), f"{prefix}block{b}_{name}.csv")
                np.savetxt(path, arr, delimiter=",", fmt="%.17g")
                paths[f"block{b}_{name}"] = path
        return paths

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, blocks={self.blocks}, m_q={self.m_q}, "
                f"sigma={self.sigma}, DH={self.DH}, groups={self.groups}, "
                f"deformable={self.deformable}")
