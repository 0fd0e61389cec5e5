"""SIREN kernel networks: offset coordinates -> kernel values.

Three classes, each a refinement of the previous one:

* :class:`SIRENKernelND` - ``h0 = sin(W0 x + b0)``, ``num_layers - 1`` hidden ``sin`` layers,
  linear output; the frequency factors live in the initialisation.
* :class:`LearnableOmegaSIRENKernelND` - the first layer has a learnable per-row frequency
  scale: ``h0_r = sin(2*pi*omega_0 * s_r * (W0_r . x + b0_r))``.
* :class:`BlockDiagonalLearnableOmegaSIRENKernelND` - rows are split into blocks with their
  own omega (linear / log schedule) and the deeper weights start (nearly) block-diagonal.

All run in float32 with autocast disabled (at ``omega_0 = 30`` a bf16 first layer moves the
kernel by ~16 %). Parameters are expected to be float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .film import KernelFiLMGenerator
from .grid import FloatOrSeq, IntOrSeq, make_grid, per_axis

SCHEDULES = ("linear", "log")


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class SIRENKernelND(nn.Module):
    """Continuous kernel ``k(x)``: an MLP with sine activations on offset coordinates.

    Pipeline (x = coordinates ``[1, *K, data_dim]``)::

        h0 = sin(pos_embed(x))                       # data_dim -> embedding_dim
        h_l = sin(hidden_linears[l](h_{l-1}))        # l = 1 .. num_layers - 1
        k = out_linear(h_{num_layers-1})             # mlp_hidden_dim -> out_dim

    Initialisation (d = a layer's in_features, biases 0): first layer
    ``U(+-2*pi*omega_0/d)``; hidden and output layers ``U(+-sqrt(6/d))``; then
    ``out_linear.weight *= sqrt(1/prod(L_cache))`` (Wang init: initial kernel energy
    independent of the grid size).

    FiLM: ``film_cfg`` is a dict of :class:`KernelFiLMGenerator` kwargs (``cond_dim``
    required). With conditioning ``[B, cond_dim]`` each modulated activation becomes
    ``gamma_l * h_l + beta_l`` (broadcast over space) and the kernel is ``[B, *K, out_dim]``.
    ``film_after_pos_embed=True`` also modulates ``h0`` (first pair) and needs
    ``embedding_dim == mlp_hidden_dim``.

    Args:
        out_dim: kernel channels C.
        data_dim: number of spatial axes D.
        mlp_hidden_dim: width of the hidden layers.
        num_layers: pos_embed + (num_layers - 1) hidden layers; must be >= 2.
        embedding_dim: width of the positional embedding.
        omega_0: first-layer frequency (in the init).
        L_cache: reference size per axis (int or D ints, each >= 2); offset j <-> j/(L-1).
        use_bias: biases in every linear layer.
        hidden_omega_0: hidden-layer frequency (cancels out of the bound, kept for the API).
        film_cfg: KernelFiLMGenerator kwargs or None.
        film_after_pos_embed: also modulate the positional embedding.
    """

    def __init__(
        self,
        out_dim: int,
        data_dim: int,
        mlp_hidden_dim: int,
        num_layers: int,
        embedding_dim: int,
        omega_0: float,
        L_cache: IntOrSeq,
        use_bias: bool,
        hidden_omega_0: float = 1.0,
        film_cfg: dict | None = None,
        film_after_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (embedding + hidden), got {num_layers}")
        if film_after_pos_embed and embedding_dim != mlp_hidden_dim:
            raise ValueError(
                "film_after_pos_embed=True needs embedding_dim == mlp_hidden_dim, got "
                f"{embedding_dim} != {mlp_hidden_dim}"
            )
        L_cache = tuple(int(v) for v in per_axis(L_cache, data_dim, "L_cache"))
        if min(L_cache) < 2:
            raise ValueError(f"every L_cache entry must be >= 2, got {L_cache}")
        self.out_dim = out_dim
        self.data_dim = data_dim
        self.mlp_hidden_dim = mlp_hidden_dim
        self.num_layers = num_layers
        self.embedding_dim = embedding_dim
        self.omega_0 = float(omega_0)
        self.hidden_omega_0 = float(hidden_omega_0)
        self.L_cache = L_cache
        self.use_bias = use_bias
        self.film_after_pos_embed = film_after_pos_embed

        self.pos_embed = nn.Linear(data_dim, embedding_dim, bias=use_bias)
        widths = [embedding_dim] + [mlp_hidden_dim] * (num_layers - 1)
        self.hidden_linears = nn.ModuleList(
            nn.Linear(w_in, w_out, bias=use_bias) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.out_linear = nn.Linear(mlp_hidden_dim, out_dim, bias=use_bias)
        self.film_generator = self._build_film(film_cfg)
        self._grid_cache: tuple[tuple, torch.Tensor] | None = None

        self.reset_parameters()
        for p in [*self.pos_embed.parameters(), *self.hidden_linears.parameters()]:
            p._no_weight_decay = True
        if self.out_linear.bias is not None:
            self.out_linear.bias._no_weight_decay = True

    # ----------------------------------------------------------------- construction
    @property
    def num_film_layers(self) -> int:
        """Number of modulated activations: hidden layers (+ h0 with film_after_pos_embed)."""
        return self.num_layers - 1 + int(self.film_after_pos_embed)

    def _build_film(self, film_cfg: dict | None) -> KernelFiLMGenerator | None:
        if film_cfg is None:
            return None
        cfg = dict(film_cfg)
        if "cond_dim" not in cfg:
            raise ValueError("film_cfg needs 'cond_dim'")
        for key, expected in (
            ("kernel_hidden_dim", self.mlp_hidden_dim),
            ("num_film_layers", self.num_film_layers),
        ):
            given = cfg.setdefault(key, expected)
            if given != expected:
                raise ValueError(
                    f"film_cfg[{key!r}] = {given} disagrees with the kernel network "
                    f"(expected {expected})"
                )
        return KernelFiLMGenerator(**cfg)

    def _init_first_layer(self) -> None:
        bound = 2 * math.pi * self.omega_0 / self.data_dim
        nn.init.uniform_(self.pos_embed.weight, -bound, bound)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SIREN init (see the class docstring), biases 0, Wang scaling of ``out_linear``."""
        self._init_first_layer()
        for lin in [*self.hidden_linears, self.out_linear]:
            fan_in = lin.in_features
            w = 2 * math.pi * self.hidden_omega_0
            bound = w * math.sqrt(6.0 / fan_in) / w  # = sqrt(6 / fan_in)
            nn.init.uniform_(lin.weight, -bound, bound)
        for lin in [self.pos_embed, *self.hidden_linears, self.out_linear]:
            if lin.bias is not None:
                lin.bias.zero_()
        self.out_linear.weight.mul_(math.sqrt(1.0 / _prod(self.L_cache)))

    # ----------------------------------------------------------------- forward
    def grid(
        self,
        seq_lens: Sequence[int],
        *,
        spacing: FloatOrSeq = 1.0,
        grid_type: str = "double",
        causal: bool = False,
    ) -> torch.Tensor:
        """Coordinate grid ``[1, *K, data_dim]`` (float32) for an input of ``seq_lens`` cells.

        Memoised (one entry): the grid depends only on the arguments and the device.
        """
        device = self.out_linear.weight.device
        spacing = tuple(float(h) for h in per_axis(spacing, self.data_dim, "spacing"))
        key = (tuple(seq_lens), spacing, grid_type, causal, device)
        if self._grid_cache is None or self._grid_cache[0] != key:
            grid = make_grid(
                seq_lens, self.L_cache, spacing=spacing, grid_type=grid_type, causal=causal,
                device=device,
            )
            self._grid_cache = (key, grid)
        return self._grid_cache[1]

    def _embed(self, grid: torch.Tensor) -> torch.Tensor:
        """Positional embedding ``h0 = sin(W0 x + b0)``: ``[1, *K, D] -> [1, *K, E]``."""
        return torch.sin(self.pos_embed(grid))

    def apply_constraints_(self) -> None:
        """Enforce parameter constraints in place (none here; see the learnable-omega class).

        Run before every kernel evaluation, and by :class:`ckconv.CKConvND` before it checks
        its kernel cache.
        """

    def forward(
        self,
        seq_lens: IntOrSeq,
        conditioning: torch.Tensor | None = None,
        *,
        spacing: FloatOrSeq = 1.0,
        grid_type: str = "double",
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate the kernel for an input with spatial size ``seq_lens`` (s_0, .., s_{D-1}).

        Returns ``(kernel, grid)``: kernel ``[1, *K, out_dim]`` (``[B, *K, out_dim]`` with
        conditioning ``[B, cond_dim]``; without conditioning a FiLM kernel behaves as the plain
        SIREN), float32, ``K_i = 2*s_i - 1`` for the default double
        grid; grid ``[1, *K, data_dim]``. ``spacing``/``grid_type``/``causal``: see
        :func:`ckconv.grid.make_grid`.
        """
        seq_lens = tuple(int(s) for s in per_axis(seq_lens, self.data_dim, "seq_lens"))
        if conditioning is not None and self.film_generator is None:
            raise ValueError("conditioning was given, but the kernel network has no film_cfg")
        self.apply_constraints_()
        device = self.out_linear.weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            grid = self.grid(seq_lens, spacing=spacing, grid_type=grid_type, causal=causal)
            assert grid.dtype == torch.float32, "kernel grids must be float32"
            films = None   # conditioning None: the plain SIREN, FiLM skipped (even with film_cfg)
            if conditioning is not None:
                films = self.film_generator(conditioning.float())
                films = iter(films)
            h = self._embed(grid)
            if films is not None and self.film_after_pos_embed:
                h = self._modulate(h, next(films))
            for lin in self.hidden_linears:
                h = torch.sin(lin(h))
                if films is not None:
                    h = self._modulate(h, next(films))
            kernel = self.out_linear(h)
        return kernel, grid

    def _modulate(self, h: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``gamma * h + beta``: h ``[1, *K, H]``, gamma/beta ``[B, H]`` -> ``[B, *K, H]``."""
        gamma, beta = film
        shape = (gamma.shape[0],) + (1,) * self.data_dim + (gamma.shape[1],)
        return torch.addcmul(beta.view(shape), gamma.view(shape), h)

    # ----------------------------------------------------------------- cost model
    def flop_count(self, grid_lens: IntOrSeq, inference: bool = False) -> int:
        """Flops of one kernel evaluation for an input of ``grid_lens`` cells per axis.

        ``G = prod(2L - 1)``; ``2*G*D*E + G*E`` (embedding + sin) ``+ 2*G*E*H + G*H``
        ``+ (num_layers-2)*(2*G*H^2 + G*H) + 2*G*H*out``; with FiLM add the generator's flops
        and ``2*G*H`` per modulated layer. ``inference=True`` without FiLM: 0 (cached).
        """
        if inference and self.film_generator is None:
            return 0
        lens = per_axis(grid_lens, self.data_dim, "grid_lens")
        G = _prod(2 * int(L) - 1 for L in lens)
        D, E, H, O = self.data_dim, self.embedding_dim, self.mlp_hidden_dim, self.out_dim
        flops = 2 * G * D * E + G * E
        flops += 2 * G * E * H + G * H
        flops += (self.num_layers - 2) * (2 * G * H * H + G * H)
        flops += 2 * G * H * O
        if self.film_generator is not None:
            flops += self.film_generator.flop_count() + self.num_film_layers * 2 * G * H
        return flops

    def extra_repr(self) -> str:
        return f"omega_0={self.omega_0}, L_cache={self.L_cache}"


class LearnableOmegaSIRENKernelND(SIRENKernelND):
    """SIREN kernel whose first layer has a learnable per-row frequency scale.

    ``h0_r = sin(2*pi*omega_0 * s_r * (W0_r . x + b0_r))`` with ``s = omega_0_scale``
    (Parameter ``[embedding_dim]``, init 1, tagged ``_no_weight_decay``). ``W0`` is drawn from
    ``U(-1/d, 1/d)``; the constant ``2*pi*omega_0`` is the non-persistent buffer
    ``omega_0_factor``. Before every forward pass ``s`` is clamped in place to
    ``[omega_0_scale_min, omega_0_scale_max]`` (skipped when ``s`` has not been written since
    the last clamp, so an unchanged scale does not look like a parameter update).

    Signature: :class:`SIRENKernelND`'s arguments (same order and defaults) followed by
    ``omega_0_scale_min=1e-2, omega_0_scale_max=2.0`` (0 < min <= max, else ValueError).
    """

    def __init__(
        self,
        out_dim: int,
        data_dim: int,
        mlp_hidden_dim: int,
        num_layers: int,
        embedding_dim: int,
        omega_0: float,
        L_cache: IntOrSeq,
        use_bias: bool,
        hidden_omega_0: float = 1.0,
        film_cfg: dict | None = None,
        film_after_pos_embed: bool = False,
        omega_0_scale_min: float = 1e-2,
        omega_0_scale_max: float = 2.0,
    ) -> None:
        if not (omega_0_scale_min > 0 and omega_0_scale_min <= omega_0_scale_max):
            raise ValueError(
                "need 0 < omega_0_scale_min <= omega_0_scale_max, got "
                f"{omega_0_scale_min}, {omega_0_scale_max}"
            )
        super().__init__(
            out_dim, data_dim, mlp_hidden_dim, num_layers, embedding_dim, omega_0, L_cache,
            use_bias, hidden_omega_0, film_cfg, film_after_pos_embed,
        )
        self.omega_0_scale_min = float(omega_0_scale_min)
        self.omega_0_scale_max = float(omega_0_scale_max)
        self.omega_0_scale = nn.Parameter(torch.ones(embedding_dim))
        self.omega_0_scale._no_weight_decay = True
        self.register_buffer(
            "omega_0_factor", torch.tensor(2 * math.pi * self.omega_0), persistent=False
        )
        self._clamped_state: tuple[int, int] | None = None

    def _init_first_layer(self) -> None:
        bound = 1.0 / self.data_dim
        nn.init.uniform_(self.pos_embed.weight, -bound, bound)

    @torch.no_grad()
    def clamp_omega_0_scale_(self) -> None:
        """Clamp ``omega_0_scale`` in place to ``[omega_0_scale_min, omega_0_scale_max]``.

        No-op when the scale was not modified since the last clamp (tracked by its version
        counter and storage pointer; no device synchronisation).
        """
        s = self.omega_0_scale
        state = (s._version, s.data_ptr())
        if state != self._clamped_state:
            s.clamp_(self.omega_0_scale_min, self.omega_0_scale_max)
            self._clamped_state = (s._version, s.data_ptr())

    def apply_constraints_(self) -> None:
        self.clamp_omega_0_scale_()

    @property
    def effective_omega_0(self) -> torch.Tensor:
        """Per-row first-layer omega ``omega_0 * s`` ``[embedding_dim]``."""
        return self.omega_0 * self.omega_0_scale.detach()

    def _embed(self, grid: torch.Tensor) -> torch.Tensor:
        """``h0 = sin(2*pi*omega_0 * s * (W0 x + b0))``: ``[1, *K, D] -> [1, *K, E]``."""
        return torch.sin(self.pos_embed(grid) * (self.omega_0_factor * self.omega_0_scale))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", omega_0_scale_min={self.omega_0_scale_min}, "
            f"omega_0_scale_max={self.omega_0_scale_max}"
        )


def block_omega_schedule(
    num_blocks: int,
    omega_0_min: float,
    omega_0_max: float,
    schedule: str = "linear",
    omega_0_per_block: Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-block omegas ``[num_blocks]`` (float32).

    ``linear``: ``linspace(min, max, n)``; ``log``: ``logspace(log10 min, log10 max, n)``;
    ``omega_0_per_block`` (length n, all > 0) overrides both.
    """
    if omega_0_per_block is not None:
        values = torch.as_tensor(list(omega_0_per_block), dtype=torch.float64)
        if values.shape != (num_blocks,):
            raise ValueError(
                f"omega_0_per_block must have num_blocks={num_blocks} entries, "
                f"got {len(values)}"
            )
        if (values <= 0).any():
            raise ValueError("omega_0_per_block entries must be > 0")
        return values.to(torch.float32)
    if not (0 < omega_0_min <= omega_0_max):
        raise ValueError(f"need 0 < omega_0_min <= omega_0_max, got {omega_0_min}, {omega_0_max}")
    if schedule == "linear":
        values = torch.linspace(omega_0_min, omega_0_max, num_blocks, dtype=torch.float64)
    elif schedule == "log":
        values = torch.logspace(
            math.log10(omega_0_min), math.log10(omega_0_max), num_blocks, dtype=torch.float64
        )
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return values.to(torch.float32)


def block_mask(out_features: int, in_features: int, num_blocks: int, off_block_scale: float) -> torch.Tensor:
    """``[out, in]`` mask: 1 where row block == column block, ``off_block_scale`` elsewhere."""
    rows = torch.arange(out_features) // (out_features // num_blocks)
    cols = torch.arange(in_features) // (in_features // num_blocks)
    same = rows[:, None] == cols[None, :]
    return torch.where(same, 1.0, float(off_block_scale))


class BlockDiagonalLearnableOmegaSIRENKernelND(LearnableOmegaSIRENKernelND):
    """Learnable-omega SIREN with ``num_blocks`` frequency bands and block-diagonal init.

    * Block omegas ``omega_k`` from :func:`block_omega_schedule` (buffer ``omega_0_per_block``,
      non-persistent, float32); ``omega_0 = omega_0_const = max(omega_k)``.
    * Embedding rows are split into ``num_blocks`` equal consecutive blocks; row r of block k
      starts with ``s_r = omega_k / omega_0_const``, i.e. effective omega ``omega_k``.
    * Every hidden-linear and ``out_linear`` weight is multiplied once at init by
      :func:`block_mask` (1 on diagonal blocks, ``off_block_scale`` elsewhere).
    * ``apply_lr_scale=True`` tags the first-layer weight and bias with
      ``_lr_scale = 1/(2*pi*omega_0_max)``.

    ``embedding_dim``, ``mlp_hidden_dim`` and ``out_dim`` must be divisible by ``num_blocks``.
    """

    def __init__(
        self,
        out_dim: int,
        data_dim: int,
        mlp_hidden_dim: int,
        num_layers: int,
        embedding_dim: int,
        L_cache: IntOrSeq,
        use_bias: bool,
        num_blocks: int = 8,
        omega_0_min: float = 1.0,
        omega_0_max: float = 12.0,
        schedule: str = "linear",
        off_block_scale: float = 0.1,
        omega_0_per_block: Sequence[float] | None = None,
        omega_0_scale_min: float = 1e-2,
        omega_0_scale_max: float = 2.0,
        hidden_omega_0: float = 1.0,
        apply_lr_scale: bool = False,
        film_cfg: dict | None = None,
        film_after_pos_embed: bool = False,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        for name, value in (
            ("embedding_dim", embedding_dim),
            ("mlp_hidden_dim", mlp_hidden_dim),
            ("out_dim", out_dim),
        ):
            if value % num_blocks:
                raise ValueError(f"{name}={value} is not divisible by num_blocks={num_blocks}")
        if off_block_scale < 0:
            raise ValueError(f"off_block_scale must be >= 0, got {off_block_scale}")
        omegas = block_omega_schedule(
            num_blocks, omega_0_min, omega_0_max, schedule, omega_0_per_block
        )
        omega_0_const = float(omegas.max())
        super().__init__(
            out_dim, data_dim, mlp_hidden_dim, num_layers, embedding_dim, omega_0_const,
            L_cache, use_bias, hidden_omega_0, film_cfg, film_after_pos_embed,
            omega_0_scale_min, omega_0_scale_max,
        )
        self.num_blocks = num_blocks
        self.omega_0_min = float(omega_0_min)
        self.omega_0_max = float(omega_0_max)
        self.schedule = schedule
        self.off_block_scale = float(off_block_scale)
        self.omega_0_const = omega_0_const
        self.register_buffer("omega_0_per_block", omegas, persistent=False)
        with torch.no_grad():
            rows_per_block = embedding_dim // num_blocks
            self.omega_0_scale.copy_(omegas.repeat_interleave(rows_per_block) / omega_0_const)
            for lin in [*self.hidden_linears, self.out_linear]:
                lin.weight.mul_(
                    block_mask(lin.out_features, lin.in_features, num_blocks, off_block_scale)
                )
        self._clamped_state = None
        if apply_lr_scale:
            for p in self.pos_embed.parameters():
                p._lr_scale = 1.0 / (2 * math.pi * self.omega_0_max)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", num_blocks={self.num_blocks}, schedule={self.schedule!r}, "
            f"off_block_scale={self.off_block_scale}"
        )
