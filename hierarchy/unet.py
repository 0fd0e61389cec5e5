"""The encoder-decoder (U-Net) the point networks share over a :class:`hierarchy.Hierarchy`:
point-wise units, max-pooling down, nearest / inverse-distance interpolation up, skip
concatenation. Shapes: ``M_s`` points of stage s, ``C`` channels.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .stages import Hierarchy, build_hierarchy

LEAKY_SLOPE = 0.1   # negative slope of the default LeakyReLU (KPConv/KPConvX convention)
BN_EPS = 1e-5       # BatchNorm epsilon (PyTorch default)


def unary(cin: int, cout: int, bn_momentum: float) -> nn.Sequential:
    """Point-wise ``act(BN(x W))``: ``[P, cin] -> [P, cout]``."""
    return nn.Sequential(nn.Linear(cin, cout, bias=False),
                         nn.BatchNorm1d(cout, eps=BN_EPS, momentum=1.0 - bn_momentum),
                         nn.LeakyReLU(LEAKY_SLOPE))


def max_pool(x: Tensor, idx: Tensor) -> Tensor:
    """``y_i = max_{j in idx_i} x_j`` for ``x [M, C]``, ``idx [Q, k]`` (shadow M) -> ``[Q, C]``;
    a row with only shadow neighbours gives 0."""
    low = torch.finfo(x.dtype).min
    xp = torch.cat([x, x.new_full((1, x.shape[1]), low)], dim=0)
    y = xp[idx].amax(dim=1)
    return torch.where(y == low, torch.zeros_like(y), y)


def interpolate(x: Tensor, idx: Tensor, dist: Tensor) -> Tensor:
    """Coarse ``x [M, C]`` to fine points: ``idx/dist [P, u]`` nearest coarse points.

    u = 1: ``y_i = x_{idx_i0}``; u > 1: inverse-distance weights
    ``w_ij = 1/(d_ij + 1e-8)`` normalised over the valid (non-shadow) j. -> ``[P, C]``.
    """
    xp = torch.cat([x, x.new_zeros((1, x.shape[1]))], dim=0)
    if idx.shape[1] == 1:
        return xp[idx[:, 0]]
    valid = idx < x.shape[0]
    w = torch.where(valid, 1.0 / (dist.float().clamp(min=0) + 1e-8), torch.zeros_like(dist.float()))
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return torch.einsum("pu,puc->pc", w.to(xp.dtype), xp[idx])


def check_features(points: Tensor, features: Tensor, in_channels: int) -> None:
    if features.dim() != 2 or features.shape[0] != points.shape[0] or features.shape[1] != in_channels:
        raise ValueError(f"features must be [N={points.shape[0]}, {in_channels}], got {tuple(features.shape)}")


def stage0_features(H: Hierarchy, features: Tensor) -> Tensor:
    """``features [N, C]`` averaged per stage-0 cell ``[M_0, C]`` (unchanged when stage 0 is the input)."""
    if H.inverse is None:
        return features
    f = torch.zeros((H.points[0].shape[0], features.shape[1]), dtype=features.dtype, device=features.device)
    return f.index_add_(0, H.inverse, features) / H.counts.clamp(min=1).unsqueeze(1).to(f.dtype)


def encoder_decoder(H: Hierarchy, x: Tensor, encode, down: nn.ModuleList, up: nn.ModuleList) -> Tensor:
    """The U-Net over the hierarchy's stages: ``x_s = encode(s, f_s)``,
    ``f_{s+1} = down_s(maxpool_{P_s}(x_s))``, then ``y_s = up_s([interp_{U_s}(y_{s+1}), x_s])``;
    ``x [M_0, w_0]`` -> ``[M_0, w_0]``."""
    skips = []
    S = len(H.points)
    for s in range(S):
        x = encode(s, x)
        if s + 1 < S:
            skips.append(x)
            x = down[s](max_pool(x, H.pools[s]))
    for s in range(S - 2, -1, -1):
        x = up[s](torch.cat([interpolate(x, H.upsamples[s], H.up_dists[s]), skips[s]], dim=1))
    return x


class StageFiLM(nn.Module):
    """Feature-wise linear modulation of each encoder stage by a per-set conditioning vector.

    ``cond [B, D]`` -> per stage s ``(gamma_s, beta_s)``, each ``[B, w_s]``::

        [gamma_0, beta_0, ..., gamma_{S-1}, beta_{S-1}] = Linear(GELU(Linear(cond)))
        x_s <- x_s * (1 + gamma_s[batch_s]) + beta_s[batch_s]        (x_s [M_s, w_s])

    The last layer starts at zero, so an untrained modulation is the identity.
    """

    def __init__(self, cond_channels: int, widths: tuple[int, ...], hidden: int = 32):
        super().__init__()
        if cond_channels < 1:
            raise ValueError(f"cond_channels must be >= 1, got {cond_channels}")
        self.cond_channels, self.widths = int(cond_channels), tuple(int(w) for w in widths)
        self.mlp = nn.Sequential(nn.Linear(self.cond_channels, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 * sum(self.widths)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``cond [B, D]`` -> ``[(gamma_s [B, w_s], beta_s [B, w_s]) for s in stages]``."""
        if cond.dim() != 2 or cond.shape[1] != self.cond_channels:
            raise ValueError(f"cond must be [B, {self.cond_channels}], got {tuple(cond.shape)}")
        out = self.mlp(cond).split([w for w in self.widths for _ in (0, 1)], dim=1)
        return [(out[2 * s], out[2 * s + 1]) for s in range(len(self.widths))]


def modulate(x: Tensor, gamma: Tensor, beta: Tensor, batch: Tensor) -> Tensor:
    """``x [M, C] * (1 + gamma[batch]) + beta[batch]`` with ``gamma, beta [B, C]``, ``batch [M]``."""
    return x * (1 + gamma[batch].to(x.dtype)) + beta[batch].to(x.dtype)


class HierarchyUNet(nn.Module):
    """Base of the point networks on a :class:`Hierarchy`: a subclass builds ``cfg`` (a
    ``StageGrid``), ``in_channels``, ``stem``, ``down``, ``up`` and ``head`` (and, through
    :meth:`condition_on`, an optional :class:`StageFiLM`) and implements :meth:`encode`; the
    forward pass is the same for all::

        H = build_hierarchy(points, batch, cfg)          (unless given)
        x = encoder_decoder(H, stem(stage0_features(H, features)), encode', down, up)
        logits = head(x)[H.inverse]                      [N, num_classes]

    with ``encode'(s, x) = modulate(encode(s, x), *film(cond)[s], H.batch[s])`` when the network
    is conditioned (``cond [B, D]``: one vector per set of the batch), else ``encode``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.film: StageFiLM | None = None

    def condition_on(self, cond_channels: int, widths: tuple[int, ...]) -> None:
        """Add a :class:`StageFiLM` of ``cond_channels`` inputs (none when 0)."""
        self.film = StageFiLM(cond_channels, widths) if cond_channels else None

    @property
    def cond_channels(self) -> int:
        return 0 if self.film is None else self.film.cond_channels

    def encode(self, H: Hierarchy, s: int, x: Tensor) -> Tensor:
        """Stage ``s``'s convolution: ``x [M_s, w_s]`` -> ``[M_s, w_s]``."""
        raise NotImplementedError

    def build_hierarchy(self, points: Tensor, batch: Tensor | None) -> Hierarchy:
        """:func:`hierarchy.build_hierarchy` with this network's config."""
        return build_hierarchy(points, batch, self.cfg)

    def forward(self, points: Tensor, features: Tensor, batch: Tensor | None = None,
                hierarchy: Hierarchy | None = None, cond: Tensor | None = None) -> Tensor:
        check_features(points, features, self.in_channels)
        if (cond is None) != (self.film is None):
            raise ValueError(f"this network takes {self.cond_channels} conditioning channels per set; "
                             f"got {'none' if cond is None else tuple(cond.shape)}")
        H = hierarchy if hierarchy is not None else build_hierarchy(points, batch, self.cfg)
        pairs = None if self.film is None else self.film(cond)

        def encode(s: int, h: Tensor) -> Tensor:
            h = self.encode(H, s, h)
            return h if pairs is None else modulate(h, *pairs[s], H.batch[s])
        x = encoder_decoder(H, self.stem(stage0_features(H, features)), encode, self.down, self.up)
        logits = self.head(x)
        return logits if H.inverse is None else logits[H.inverse]

