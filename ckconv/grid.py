"""Coordinate grids on which a continuous kernel is sampled.

A kernel network built with ``L_cache = L`` (per axis) maps the offset of ``j`` cells to the
coordinate ``j / (L - 1)``: the reference grid of axis i is ``linspace(-1, 1, 2*L_i - 1)``.
A call for an input of ``s_i`` cells needs the offsets ``-(s_i - 1) .. +(s_i - 1)``
(``2*s_i - 1`` points, the "double" grid of a linear "same" convolution); when ``s_i > L_i``
the grid simply continues with the same spacing beyond [-1, 1].

Variants used by :class:`ckconv.CKConvND`:

* ``grid_type="double"``: offsets ``-(s-1) .. s-1`` (``2s - 1`` points);
* ``grid_type="single"``: ``s`` offsets ``-(s//2) .. s - 1 - s//2`` (periodic convolution);
* ``causal=True`` (1-D): offsets ``0 .. s-1`` only;
* ``spacing``: the coordinate of offset ``j`` is ``j * spacing / (L - 1)`` (spacing 0.5 samples
  the same continuous kernel twice as densely).
"""

from __future__ import annotations

from typing import Sequence

import torch

IntOrSeq = int | Sequence[int]
FloatOrSeq = float | Sequence[float]

GRID_TYPES = ("double", "single")


def per_axis(value, data_dim: int, name: str) -> tuple:
    """Return ``value`` as a tuple of length ``data_dim`` (a scalar is repeated)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * data_dim
    out = tuple(value)
    if len(out) != data_dim:
        raise ValueError(f"{name} must be a number or have {data_dim} entries, got {value!r}")
    return out


def axis_offsets(seq_len: int, grid_type: str = "double", causal: bool = False) -> tuple[int, int]:
    """First offset (in cells) and number of offsets of one grid axis.

    ``double``: ``(-(s-1), 2s-1)``; ``single``: ``(-(s//2), s)``; ``causal``: ``(0, s)``.
    """
    if seq_len < 1:
        raise ValueError(f"sequence length must be >= 1, got {seq_len}")
    if causal:
        return 0, seq_len
    if grid_type == "double":
        return -(seq_len - 1), 2 * seq_len - 1
    if grid_type == "single":
        return -(seq_len // 2), seq_len
    raise ValueError(f"grid_type must be one of {GRID_TYPES}, got {grid_type!r}")


def make_grid(
    seq_lens: Sequence[int],
    L_cache: Sequence[int],
    *,
    spacing: FloatOrSeq = 1.0,
    grid_type: str = "double",
    causal: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Coordinate grid ``[1, *K, data_dim]`` (float32), ``K_i`` = number of offsets of axis i.

    ``grid[0, i_0, .., i_{D-1}, d] = (start_d + i_d) * spacing_d / (L_d - 1)`` where
    ``start_d, K_d = axis_offsets(seq_lens[d], grid_type, causal)``. The product is formed in
    float64 and rounded once, so the coordinates for ``seq_len == L`` equal
    ``linspace(-1, 1, 2L - 1)`` to the last bit (up to one ulp).
    """
    data_dim = len(seq_lens)
    spacing = per_axis(spacing, data_dim, "spacing")
    if causal and data_dim != 1:
        raise ValueError("causal grids are 1-D only")
    axes = []
    for s, L, h in zip(seq_lens, L_cache, spacing):
        start, count = axis_offsets(int(s), grid_type, causal)
        offsets = torch.arange(start, start + count, dtype=torch.float64, device=device)
        axes.append((offsets * (float(h) / (L - 1))).to(torch.float32))
    mesh = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack(mesh, dim=-1).unsqueeze(0)
    assert grid.dtype == torch.float32, "kernel grids must be float32"
    return grid
