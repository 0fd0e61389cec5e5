"""Input encoding of the point model: per-point input columns of a cloud.

Input channels per point (``channels`` of a ``point`` model):

- always a constant 1;
- ``xyz``: coordinates relative to the region centre, divided by the region radius;
- ``intensity``: ``log1p(intensity)/log(65536)``;
- ``returns``: ``return_number/number_of_returns`` and ``min(number_of_returns, 5)/5``;
- ``height``: height above the lowest point of the 3x3 block of ``height_cell`` cells;
- ``ground``: height above a morphological ground model (``geometry.heights.height_above_ground``,
  1 m cells, 24 m largest object), robust to buildings and bridges;
- ``columns``: what the 2 m column around the point holds (``geometry.columns``): the lowest
  height above the ground model in it (0 where the beam reached the ground there, the roof
  height on a roof), the point's rank in it (share of the column below it) and its share of
  multiple-return points;
- ``rgb`` / ``nir``: colour / near infrared divided by 65535 (every input file must have
  them: training and prediction fail clearly otherwise).

All but the constant and ``xyz`` are standardised with the mean and standard deviation of
the training points (the model stores them in its bundle).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from data.pointcloud import PointCloud
from geometry.heights import GROUND_WINDOW

__all__ = ["FEATURES", "HEIGHT_COLUMNS", "FeatureName", "feature_columns", "point_feature_matrix", "GROUND_WINDOW"]

FEATURES = ("xyz", "intensity", "returns", "height", "ground", "columns", "rgb", "nir")
FeatureName = Literal[FEATURES]
#: Cell size (metres) of the ``columns`` feature.
COLUMN_CELL = 2.0
#: Point fields each feature needs.
_NEEDS = {"xyz": (), "intensity": ("intensity",), "returns": ("return_number", "number_of_returns"),
          "height": (), "ground": (), "columns": ("number_of_returns",), "rgb": ("red", "green", "blue"),
          "nir": ("nir",)}
#: Standardised input columns each feature adds (xyz adds geometric columns instead).
_COLUMNS = {"xyz": (), "intensity": ("intensity",), "returns": ("return_ratio", "number_of_returns"),
            "height": ("height",), "ground": ("hag_ground",),
            "columns": ("col_ground_gap", "col_rank", "col_multi_return"), "rgb": ("red", "green", "blue"),
            "nir": ("nir",)}

#: Columns that are heights in metres (scaled together by ``augment.stretch_z``).
HEIGHT_COLUMNS = ("height", "hag_ground", "col_ground_gap")


def feature_columns(features: list[str]) -> tuple[list[str], list[str]]:
    """-> (geometric columns: constant + xyz, standardised point-feature columns)."""
    geo = ["one"] + (["x", "y", "z"] if "xyz" in features else [])
    return geo, [col for f in features for col in _COLUMNS[f]]


def point_feature_matrix(cloud: PointCloud, features: list[str], height_cell: float) -> np.ndarray:
    """``[N, F]`` float32 unstandardised point features (columns of :func:`feature_columns`)."""
    from geometry.columns import cell_column_features
    from geometry.features import height_above_ground, height_features, point_features

    cols: list[np.ndarray] = []
    hag = None
    for f in features:
        cloud.require(_NEEDS[f], f"the input channel {f!r} needs (drop it from 'channels')")
        if f == "intensity":
            cols.append(point_features(cloud.fields, ["intensity"])["intensity"])
        elif f == "returns":
            pf = point_features(cloud.fields, ["return_ratio", "number_of_returns"])
            cols += [pf["return_ratio"], pf["number_of_returns"]]
        elif f == "height":
            cols.append(height_features(cloud.xyz, height_cell)["hag3"])
        elif f in ("ground", "columns"):
            hag = height_above_ground(cloud.xyz, source=cloud.source) if hag is None else hag
            if f == "ground":
                cols.append(hag)
            else:
                res = cell_column_features(cloud.xyz, hag, COLUMN_CELL, cloud.fields["number_of_returns"])
                cols += [res["ground_gap"], res["rank"], res["multi_return"]]
        elif f in ("rgb", "nir"):
            for name in _NEEDS[f]:
                cols.append(np.asarray(cloud.fields[name], np.float32) / 65535.0)
    if not cols:
        return np.zeros((len(cloud), 0), np.float32)
    return np.nan_to_num(np.stack(cols, axis=1).astype(np.float32))
