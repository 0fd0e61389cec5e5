"""Geometric feature mining as a spec component: ``features:`` options and ``mine``.

The random forest trains on these features and the ``features`` step writes them as extra
dimensions; both take a :class:`FeatureConfig` (``geometry.features.compute_features``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.errors import UserError
from data.pointcloud import PointCloud

from .schema import option

#: most neighbours a feature scale may ask for: each costs N x k indices (1e9 would be 8 GB a
#: thousand points); real scales use 10-100
MAX_NEIGHBOURS = 1024


@dataclass
class FeatureConfig:
    """Options of ``geometry.features.compute_features``."""

    k: list[int] = option(min=3, max=MAX_NEIGHBOURS, default_factory=lambda: [10, 30])
    radii: list[float] = option(min=0, exclusive=True, default_factory=list)
    height_cells: list[float] = option(min=0, exclusive=True, default_factory=lambda: [2.0, 10.0, 30.0])
    intensity: bool = False       # raw intensity differs between sensors and surveys
    returns: bool = True
    normals: bool = False         # normal_x/y/z depend on orientation; verticality is kept
    ground: bool = True           # height above a morphological ground model ('hag_ground')
    ground_cell: float = option(min=0, exclusive=True, default=1.0)      # metres, its grid
    ground_window: float = option(min=0, exclusive=True, default=24.0)   # metres, the largest object it removes
    coarse_cells: list[float] = option(min=0, exclusive=True, default_factory=list)  # metres: context scales
    coarse_k: int = option(min=3, max=MAX_NEIGHBOURS, default=16)
    # vertical-column cells (metres) and plan-view (x, y) k-NN scales: off by default so that
    # bundles trained before them still load; the shipped specs set [1.0, 2.0] and [16, 48]
    column_cells: list[float] = option(min=0, exclusive=True, default_factory=list)
    plan_k: list[int] = option(min=3, max=MAX_NEIGHBOURS, default_factory=list)

    def __post_init__(self) -> None:   # sizes and ranges: option(min=...) above, checked by the schema
        if not (self.k or self.radii):
            raise UserError("give at least one k or radius")

    @property
    def context(self) -> float:
        """Metres of neighbourhood the features read beyond a point: the ground model's window,
        the height blocks (3 x 3 cells), the radii, coarse cells and column cells (k-NN
        neighbourhoods follow the density and are assumed within it)."""
        return max([self.ground_window if self.ground else 0.0] + [1.5 * c for c in self.height_cells]
                   + list(self.radii) + [2 * c for c in self.coarse_cells] + list(self.column_cells))


def mine(cloud: PointCloud, cfg: FeatureConfig, rows: np.ndarray | None = None,
         share: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[str], np.ndarray]:
    """``(names, [N or len(rows), F] float32)``: the features of every point, or of ``rows``
    only (the other points still neighbours); ``share``: neighbourhood features computed at
    representatives only (``geometry.features.compute_features``)."""
    from geometry.features import compute_features
    from geometry.heights import GridSizeError

    try:
        names, values = compute_features(cloud, k=tuple(cfg.k), radii=tuple(cfg.radii),
                                         height_cells=tuple(cfg.height_cells), intensity=cfg.intensity,
                                         returns=cfg.returns, ground_cell=cfg.ground_cell if cfg.ground else None,
                                         ground_window=cfg.ground_window, coarse_cells=tuple(cfg.coarse_cells),
                                         coarse_k=cfg.coarse_k, column_cells=tuple(cfg.column_cells),
                                         plan_k=tuple(cfg.plan_k), rows=rows, share=share)
    except GridSizeError as exc:
        raise UserError(f"{cloud.source or 'point cloud'}: features: {exc}") from None
    if cfg.normals:
        return names, values
    keep = [i for i, name in enumerate(names) if "_normal_" not in name]
    return [names[i] for i in keep], values[:, keep]


def mine_names(cfg: FeatureConfig, available: list[str]) -> list[str]:
    """The feature names :func:`mine` gives for ``cfg``, restricted to the point features among
    ``available`` (the LAS fields a file has decide those)."""
    from geometry.features import POINT_FEATURES, feature_names

    names = feature_names(k=tuple(cfg.k), radii=tuple(cfg.radii), height_cells=tuple(cfg.height_cells),
                          intensity=cfg.intensity, returns=cfg.returns,
                          ground_cell=cfg.ground_cell if cfg.ground else None, coarse_cells=tuple(cfg.coarse_cells),
                          coarse_k=cfg.coarse_k, column_cells=tuple(cfg.column_cells), plan_k=tuple(cfg.plan_k))
    field_dependent = set(POINT_FEATURES) | {n for n in names if n.endswith("_multi_return")}
    names = [n for n in names if n not in field_dependent or n in available]
    return names if cfg.normals else [n for n in names if "_normal_" not in n]

__all__ = ["FeatureConfig", "mine", "mine_names"]
