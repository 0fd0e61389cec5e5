"""Covariance (eigenvalue) features of point neighbourhoods, vectorised (NumPy).

``covariance_features(xyz, neighbor_idx)`` gives linearity, planarity, scattering,
omnivariance, anisotropy, eigenentropy, surface variation, verticality, the normal and the
neighbour count of each point's neighbourhood (a k-NN or capped-ball index table, padded
with ``N``), through a closed-form symmetric 3x3 eigen solver (:func:`symmetric_eigen3`).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["COVARIANCE_FEATURES", "CHUNK", "symmetric_eigen3", "neighborhood_covariance", "covariance_features"]

#: Keys of :func:`covariance_features` (each prefixed by the scale, e.g. ``'k16_planarity'``).
COVARIANCE_FEATURES: tuple[str, ...] = (
    "linearity", "planarity", "scattering", "omnivariance", "anisotropy", "eigenentropy",
    "surface_variation", "verticality", "normal_x", "normal_y", "normal_z", "num_neighbors",
)

#: Chunk of points processed at once by :func:`covariance_features` (bounds memory:
#: about ``chunk * k * 3 * 8 * 3`` bytes of temporaries per worker thread).
CHUNK = 1 << 15


# ----------------------------------------------------------------------------------------------
# eigen decomposition of symmetric 3x3 matrices
# ----------------------------------------------------------------------------------------------

def symmetric_eigen3(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and the unit eigenvector of the smallest one, batched.

    Closed form (trigonometric solution of the characteristic cubic): with ``q = tr(A)/3``,
    ``p = sqrt(tr((A - qI)^2) / 6)``, ``B = (A - qI)/p``, ``r = det(B)/2``,
    ``phi = acos(clip(r, -1, 1))/3``:
    ``l1 = q + 2p cos(phi)``, ``l3 = q + 2p cos(phi + 2pi/3)``, ``l2 = 3q - l1 - l3``.
    The eigenvector of ``l3`` is the largest of the three cross products of the rows of
    ``A - l3 I``. Where that is ill-conditioned (``l2 - l3 < 1e-6 * l1``, i.e. the smallest
    eigenvalue is (nearly) repeated) the rows fall back to ``np.linalg.eigh``.

    Args:
        cov: ``[N, 3, 3]`` symmetric float64.

    Returns:
        ``(evals [N, 3]`` descending, clipped to ``>= 0``, ``normal [N, 3]`` unit, arbitrary
        sign``)``.
    """
    a00, a11, a22 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    a01, a02, a12 = cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 2]
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = np.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02)
           + a02 * (a01 * a12 - b11 * a02))
    r = np.clip(det / (2.0 * safe ** 3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * math.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    evals = np.stack([l1, l2, l3], 1)
    evals.sort(axis=1)
    evals = np.maximum(evals[:, ::-1], 0.0)

    # eigenvector of the smallest eigenvalue: cross products of rows of (A - l3 I)
    m = cov - evals[:, 2, None, None] * np.eye(3)
    r0, r1, r2 = m[:, 0], m[:, 1], m[:, 2]
    cands = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], 1)  # [N, 3, 3]
    norms = np.einsum("nij,nij->ni", cands, cands)
    best = norms.argmax(1)
    normal = cands[np.arange(len(cov)), best]
    nn = np.sqrt(norms[np.arange(len(cov)), best])
    bad = (evals[:, 1] - evals[:, 2] <= 1e-6 * evals[:, 0]) | ~(nn > 0)
    normal = normal / np.where(nn > 0, nn, 1.0)[:, None]
    if bad.any():
        _, vec = np.linalg.eigh(cov[bad])
        normal[bad] = vec[:, :, 0]
    return evals, normal


# ----------------------------------------------------------------------------------------------
# covariance features
# ----------------------------------------------------------------------------------------------

def neighborhood_covariance(comp_pad: np.ndarray, idx: np.ndarray, n: int,
                            centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cov [c, 3, 3], count [c])`` of neighbourhoods ``idx [c, k]`` (shadow index ``n``).

    ``comp_pad`` is ``[3, N + 1]`` (coordinates component-major, one padding column). With
    offsets ``d_j = p_j - centre`` (centring on the query point keeps precision for large
    coordinates and makes duplicates exactly zero) and ``m = 1/n sum_j d_j``:
    ``C_ab = 1/n sum_j d_ja d_jb - m_a m_b`` -- six ``einsum('ij,ij->i')`` row sums over
    ``[c, k]`` arrays, no ``[c, k, 3, 3]`` temporary.
    """
    c, k = idx.shape
    valid = idx < n
    has_shadow = not valid.all()
    d = []
    for j in range(3):
        dj = np.take(comp_pad[j], idx)
        dj -= centre[:, j, None]
        if has_shadow:
            dj *= valid
        d.append(dj)
    cnt = valid.sum(1) if has_shadow else np.full(c, k, dtype=np.int64)
    inv = 1.0 / np.maximum(cnt, 1)
    m = [np.einsum("ij->i", d[j]) * inv for j in range(3)]
    cov = np.empty((c, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            v = np.einsum("ij,ij->i", d[a], d[b]) * inv - m[a] * m[b]
            cov[:, a, b] = v
            cov[:, b, a] = v
    return cov, cnt


def _cov_chunk(comp_pad: np.ndarray, idx: np.ndarray, n: int, min_neighbors: int,
               centre: np.ndarray) -> dict[str, np.ndarray]:
    """Features for one chunk; ``idx [c, k]`` may contain the shadow ``n``."""
    cov, cnt = neighborhood_covariance(comp_pad, idx, n, centre)
    evals, normal = symmetric_eigen3(cov)
    l1, l2, l3 = evals[:, 0], evals[:, 1], evals[:, 2]
    s = l1 + l2 + l3
    # defined values: too few neighbours, or a degenerate (all points equal) neighbourhood
    ok = (cnt >= min_neighbors) & (l1 > 0) & (s > 1e-24)
    inv1 = np.where(ok, 1.0 / np.where(ok, l1, 1.0), 0.0)
    invs = np.where(ok, 1.0 / np.where(ok, s, 1.0), 0.0)
    e = evals * invs[:, None]                                    # normalised eigenvalues
    ent = -(e * np.log(np.where(e > 0, e, 1.0))).sum(1)
    normal = np.where(ok[:, None], normal, [0.0, 0.0, 1.0])
    normal *= np.where(normal[:, 2] < 0, -1.0, 1.0)[:, None]   # orient n_z >= 0
    out = {
        "linearity": (l1 - l2) * inv1,
        "planarity": (l2 - l3) * inv1,
        "scattering": l3 * inv1,
        "omnivariance": np.cbrt(e[:, 0] * e[:, 1] * e[:, 2]),
        "anisotropy": (l1 - l3) * inv1,
        "eigenentropy": ent,
        "surface_variation": l3 * invs,
        "verticality": np.where(ok, 1.0 - np.abs(normal[:, 2]), 0.0),
        "normal_x": normal[:, 0], "normal_y": normal[:, 1], "normal_z": normal[:, 2],
        "num_neighbors": cnt,
        "l1": l1, "l2": l2, "l3": l3,
    }
    return {key: np.asarray(v, dtype=np.float32) for key, v in out.items()}


def covariance_features(xyz: np.ndarray, neighbor_idx: np.ndarray, min_neighbors: int = 3, *,
                        workers: int = 1, chunk: int | None = None,
                        eigenvalues: bool = False) -> dict[str, np.ndarray]:
    """Eigenvalue features of each point's neighbourhood covariance.

    The covariance of point ``i`` is ``C_i = 1/n sum_j (p_j - mu)(p_j - mu)^T`` over its valid
    neighbours ``j`` (indices ``< N``; the point itself counts when it is in the list, as with
    a k-NN query on the points themselves) with ``mu`` their mean. With eigenvalues
    ``l1 >= l2 >= l3`` and ``e_i = l_i / (l1 + l2 + l3)``:

    - ``linearity = (l1 - l2)/l1``, ``planarity = (l2 - l3)/l1``, ``scattering = l3/l1``
      (sphericity), ``anisotropy = (l1 - l3)/l1``
    - ``omnivariance = (e1 e2 e3)^(1/3)``, ``eigenentropy = -sum e_i ln e_i``
    - ``surface_variation = l3 / (l1 + l2 + l3)`` (change of curvature)
    - ``normal_x/y/z``: unit eigenvector of ``l3`` oriented ``n_z >= 0``;
      ``verticality = 1 - |n_z|``
    - ``num_neighbors``: number of valid neighbours.

    Points with fewer than ``min_neighbors`` valid neighbours, or a zero covariance (all
    neighbours at the same place), get 0 for every shape feature and the normal ``(0, 0, 1)``.

    Computation: chunks of :data:`CHUNK` points gather ``[c, k]`` coordinate offsets per axis
    and form ``C`` from six row sums (:func:`neighborhood_covariance`, no ``[N, k, 3, 3]``
    temporary), then use the closed-form :func:`symmetric_eigen3`. Chunks may run in
    ``workers`` threads. Memory ``O(workers * chunk * k)``.

    Args:
        xyz: ``[N, 3]`` float64.
        neighbor_idx: ``[N, k]`` int indices into ``xyz``; ``N`` (shadow) marks no neighbour.
        min_neighbors: least number of valid neighbours for a defined shape.
        workers: threads (-1: all cores). Default 1: measured on 2 cores, threads did not
            speed this up (the gather/einsum steps mostly hold the GIL).
        chunk: points per chunk (default :data:`CHUNK`).
        eigenvalues: also return ``'l1'``, ``'l2'``, ``'l3'`` (raw eigenvalues, float32).

    Returns:
        ``{name: [N] float32}`` with the keys of :data:`COVARIANCE_FEATURES`.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    idx = np.asarray(neighbor_idx)
    n = len(xyz)
    if idx.ndim != 2 or len(idx) != n:
        raise ValueError(f"neighbor_idx must be [N={n}, k], got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() > n):
        raise ValueError("neighbor_idx has indices outside [0, N]")
    comp_pad = np.zeros((3, n + 1))
    comp_pad[:, :n] = xyz.T
    chunk = int(chunk or CHUNK)
    keys = list(COVARIANCE_FEATURES) + (["l1", "l2", "l3"] if eigenvalues else [])
    out = {key: np.zeros(n, np.float32) for key in keys}
    if n == 0:
        return out

    def run(s: int) -> None:
        sl = slice(s, min(n, s + chunk))
        res = _cov_chunk(comp_pad, idx[sl], n, min_neighbors, xyz[sl])
        for key in keys:
            out[key][sl] = res[key]

    starts = range(0, n, chunk)
    nw = (os.cpu_count() or 1) if workers in (-1, None) else max(1, int(workers))
    if nw > 1 and len(starts) > 1:
        with ThreadPoolExecutor(nw) as ex:
            list(ex.map(run, starts))
    else:
        for s in starts:
            run(s)
    return out
