"""Deterministic kernel point layouts for KPConvX.

Kernel points ``Q`` ``[m_q, 3]`` sit on concentric spheres ("shells"). Shell ``s`` has
radius ``shell_radii[s]`` and ``shell_points[s]`` points; a shell of radius 0 is a single
point at the centre. Points on a shell follow a Fibonacci (golden-angle) lattice:

    z_i = 1 - (2 i + 1) / n,   rho_i = sqrt(1 - z_i^2),   theta_i = i * pi * (3 - sqrt(5))
    q_i = r * (rho_i cos theta_i, rho_i sin theta_i, z_i),   i = 0 .. n-1

so the layout is deterministic and nearly uniform, and every point has norm exactly r.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def fibonacci_sphere(n: int, radius: float = 1.0) -> np.ndarray:
    """``n`` points on the sphere of the given radius, golden-angle lattice -> ``[n, 3]`` float64."""
    if n < 1:
        raise ValueError(f"a shell needs at least one point, got {n}")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    theta = i * GOLDEN_ANGLE
    pts = np.stack([rho * np.cos(theta), rho * np.sin(theta), z], axis=1)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)  # exact unit norm despite rounding
    return pts * float(radius)


def shell_kernel_points(
    shell_radii: Sequence[float] = (0.0, 0.5, 1.0),
    shell_points: Sequence[int] = (1, 7, 13),
) -> np.ndarray:
    """Kernel points on concentric Fibonacci shells -> ``[sum(shell_points), 3]`` float64.

    Raises ``ValueError`` if the two sequences differ in length, a radius is negative, a
    count is < 1, or a radius-0 shell asks for more than one point.
    """
    radii = [float(r) for r in shell_radii]
    counts = [int(n) for n in shell_points]
    if len(radii) != len(counts) or not radii:
        raise ValueError(
            f"shell_radii {tuple(radii)} and shell_points {tuple(counts)} must be non-empty "
            "and have the same length")
    out = []
    for r, n in zip(radii, counts):
        if r < 0:
            raise ValueError(f"shell radius must be >= 0, got {r}")
        if n < 1:
            raise ValueError(f"each shell needs >= 1 point, got {n}")
        if r == 0.0:
            if n != 1:
                raise ValueError(f"a radius-0 shell holds exactly one point (the centre), got {n}")
            out.append(np.zeros((1, 3)))
        else:
            out.append(fibonacci_sphere(n, r))
    return np.concatenate(out, axis=0)
