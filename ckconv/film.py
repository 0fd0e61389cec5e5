"""FiLM generator: per-sample (gamma, beta) pairs that modulate a kernel network's layers."""

from __future__ import annotations

import torch
from torch import nn

INIT_TYPES = ("identity", "small_random")


class KernelFiLMGenerator(nn.Module):
    """Maps a conditioning vector to ``num_film_layers`` FiLM pairs.

    ``mlp = Linear(cond_dim, film_hidden_dim) -> GELU -> Linear(film_hidden_dim, F*2*H)`` with
    ``F = num_film_layers``, ``H = kernel_hidden_dim``. The flat output ``[B, F*2*H]`` is cut
    into F consecutive chunks (chunk 0 = shallowest modulated layer); the first half of a chunk
    is gamma, the second half beta. A modulated activation becomes ``gamma * h + beta``.

    Initialisation: last-layer weight 0 (``init_type='identity'``) or ``N(0, init_std)``
    (``'small_random'``); last-layer bias 1 on gamma slots, 0 on beta slots, so the identity
    init returns gamma = 1, beta = 0 exactly, whatever the conditioning.

    Weight-decay tags: biases ``_no_weight_decay``; weights ``_no_weight_decay`` when
    ``no_weight_decay is True``, ``_weight_decay = value`` when it is a float, untagged when
    False.
    """

    def __init__(
        self,
        cond_dim: int,
        kernel_hidden_dim: int,
        num_film_layers: int,
        film_hidden_dim: int = 64,
        no_weight_decay: bool | float = False,
        init_type: str = "identity",
        init_std: float = 1e-4,
    ) -> None:
        super().__init__()
        if num_film_layers < 1:
            raise ValueError(f"num_film_layers must be >= 1, got {num_film_layers}")
        if init_type not in INIT_TYPES:
            raise ValueError(f"init_type must be one of {INIT_TYPES}, got {init_type!r}")
        self.cond_dim = cond_dim
        self.kernel_hidden_dim = kernel_hidden_dim
        self.num_film_layers = num_film_layers
        self.film_hidden_dim = film_hidden_dim
        out = num_film_layers * 2 * kernel_hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, film_hidden_dim), nn.GELU(), nn.Linear(film_hidden_dim, out)
        )
        last = self.mlp[-1]
        with torch.no_grad():
            if init_type == "identity":
                last.weight.zero_()
            else:
                last.weight.normal_(0.0, init_std)
            ones = torch.ones(num_film_layers, 1, kernel_hidden_dim)
            last.bias.copy_(torch.cat([ones, torch.zeros_like(ones)], dim=1).flatten())
        for lin in (self.mlp[0], last):
            lin.bias._no_weight_decay = True
            if isinstance(no_weight_decay, bool):
                if no_weight_decay:
                    lin.weight._no_weight_decay = True
            else:
                lin.weight._weight_decay = float(no_weight_decay)

    def forward(self, conditioning: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``conditioning`` ``[B, cond_dim]`` -> list of F pairs ``(gamma, beta)``, each ``[B, H]``."""
        flat = self.mlp(conditioning)
        chunks = flat.view(flat.shape[0], self.num_film_layers, 2, self.kernel_hidden_dim)
        return [(chunks[:, i, 0], chunks[:, i, 1]) for i in range(self.num_film_layers)]

    def flop_count(self) -> int:
        """``2*cond*hid + hid + 2*hid*out`` with ``out = F*2*H`` (GELU counted as 1 flop)."""
        out = self.num_film_layers * 2 * self.kernel_hidden_dim
        return (
            2 * self.cond_dim * self.film_hidden_dim
            + self.film_hidden_dim
            + 2 * self.film_hidden_dim * out
        )
