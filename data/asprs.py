"""ASPRS LAS 1.4 classification codes (with IGN LiDAR HD's additions): names and display colours.

One table for every picture and colour table the project writes (GeoTIFF palettes, previews,
rendered clouds), in the colours LiDAR tools use: ground brown, vegetation greens, building
red-orange, water blue. Codes without an entry get a colour from ``FALLBACK`` (cycled).
"""
from __future__ import annotations

import numpy as np

#: code -> (name, (r, g, b))
ASPRS: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("created, never classified", (160, 160, 160)),
    1: ("unclassified", (190, 190, 190)),
    2: ("ground", (166, 112, 60)),
    3: ("low vegetation", (170, 220, 100)),
    4: ("medium vegetation", (70, 170, 60)),
    5: ("high vegetation", (20, 110, 40)),
    6: ("building", (225, 75, 40)),
    7: ("low point (noise)", (255, 0, 255)),
    8: ("model key-point", (250, 250, 120)),
    9: ("water", (40, 110, 220)),
    10: ("rail", (120, 80, 120)),
    11: ("road surface", (90, 90, 90)),
    13: ("wire guard", (255, 220, 0)),
    14: ("wire conductor", (255, 180, 0)),
    15: ("transmission tower", (140, 60, 0)),
    17: ("bridge deck", (150, 60, 200)),
    18: ("high noise", (255, 120, 255)),
    64: ("permanent above-ground structure", (255, 160, 120)),
    65: ("artefact", (200, 200, 0)),
    66: ("synthetic point", (0, 200, 200)),
    67: ("miscellaneous", (120, 120, 170)),
}

#: colours for codes ASPRS does not name (matplotlib tab10, as 0-255 RGB)
FALLBACK: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def colour(code: int) -> tuple[int, int, int]:
    """RGB (0-255) of a classification code."""
    entry = ASPRS.get(int(code))
    return entry[1] if entry is not None else FALLBACK[int(code) % len(FALLBACK)]


def colour_table(codes) -> np.ndarray:
    """``[len(codes), 3]`` uint8 RGB rows, one per code."""
    return np.array([colour(c) for c in codes], dtype=np.uint8).reshape(-1, 3)
