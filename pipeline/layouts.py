"""How predictions are stored in a labelled cloud: the output layouts, and the ASPRS vegetation split.

Two layouts (``predict --layout``, the predict step's ``layout``):

============  ============================  ===========================  =======================================
layout        predicted code                the input's classification    per point extras
============  ============================  ===========================  =======================================
``lidarseg``  ``classification``            ``classification_ref``       ``confidence``, ``entropy``,
                                                                          ``prob_<class>`` (with probabilities)
``myria3d``   ``PredictedClassification``   ``classification`` (as read)  ``entropy``, one float32 dimension per
                                                                          class named after it (always)
============  ============================  ===========================  =======================================

``confidence = max_c p_c``; ``entropy = -sum_c p_c ln p_c`` (float32). The evaluate step finds
the layout of each file from its dimensions (``PredictedClassification`` present -> myria3d).

Vegetation split (``vegetation_heights: [h_low, h_high]``): where one class holds the ASPRS
codes 3, 4 and 5, its points are written back as 3 (low, height above the ground model
``< h_low``), 4 (medium, ``< h_high``) or 5 (high) instead of the class's first code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.classmap import ClassMap
from data.errors import UserError

VEGETATION_CODES = (3, 4, 5)
#: file formats of a labelled cloud (``predict --format``, the predict step's ``format``): the
#: input's own, LAS, LAZ, or COPC (``<stem>.copc.laz``, ``data.copc``)
OUTPUT_FORMATS = ("same", "las", "laz", "copc")


@dataclass(frozen=True)
class Layout:
    prediction: str            # dimension holding the predicted code
    reference: str | None      # dimension the input's classification moves to (None: left in place)
    probability: str           # per-class dimension name, ``{}`` = class name
    confidence: bool           # write ``confidence``
    always_probabilities: bool


LAYOUTS: dict[str, Layout] = {
    "lidarseg": Layout("classification", "classification_ref", "prob_{}", True, False),
    "myria3d": Layout("PredictedClassification", None, "{}", False, True),
}


def layout_of_fields(fields) -> Layout:
    """The layout a labelled cloud was written in, from its dimension names."""
    return LAYOUTS["myria3d"] if "PredictedClassification" in fields else LAYOUTS["lidarseg"]


def prediction_and_reference(fields) -> tuple[str, str]:
    """(predicted-code dimension, reference-code dimension) of a labelled cloud's fields."""
    lay = layout_of_fields(fields)
    return lay.prediction, lay.reference or "classification"


def vegetation_heights_problem(heights, class_map: ClassMap) -> str | None:
    """What is wrong with ``heights`` as ``[h_low, h_high]`` for ``class_map``, or None."""
    try:
        low, high = (float(h) for h in heights)
    except (TypeError, ValueError):
        return f"expected two heights in metres [low, high], got {heights!r}"
    if not (np.isfinite([low, high]).all() and 0 < low < high):
        return f"expected 0 < low < high (metres), got {heights!r}"
    if not any(set(VEGETATION_CODES) <= set(codes) for codes in class_map.codes):
        return (f"the model's class map has no class holding the ASPRS vegetation codes 3, 4 "
                f"and 5 ({dict(zip(class_map.names, class_map.codes))})")
    return None


def check_vegetation_heights(heights, class_map: ClassMap, key: str) -> tuple[float, float] | None:
    """Validated ``[h_low, h_high]`` (0 < h_low < h_high, finite), or None; UserError naming ``key``."""
    if heights is None:
        return None
    problem = vegetation_heights_problem(heights, class_map)
    if problem:
        raise UserError(f"{key}: {problem}")
    low, high = (float(h) for h in heights)
    return low, high


def split_vegetation(codes: np.ndarray, labels: np.ndarray, class_map: ClassMap, hag: np.ndarray,
                     heights: tuple[float, float]) -> np.ndarray:
    """``codes [N]`` with the points of the vegetation class recoded 3 / 4 / 5 by ``hag [N]``."""
    out = codes.copy()
    veg = [i for i, c in enumerate(class_map.codes) if set(VEGETATION_CODES) <= set(c)]
    where = np.isin(labels, veg)
    out[where] = np.where(hag[where] < heights[0], 3, np.where(hag[where] < heights[1], 4, 5))
    return out
