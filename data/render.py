"""Pictures of labelled clouds: a top view and an oblique 3-D view in ASPRS colours, the
prediction beside its reference, and an error map (points where they differ, in red).

Rendering is a vectorised point splat with a depth buffer, no GUI or GPU needed:

- view transform: azimuth ``a`` about z, then elevation ``e`` (0 deg = side, 90 deg = top):
  ``u = x cos a - y sin a``, ``w = x sin a + y cos a``, ``v = w sin e + z cos e``,
  depth (towards the viewer) ``d = z sin e - w cos e``;
- pixel size: ``1.6 * sqrt(area / N)`` in the view plane (a point or two per pixel), capped so
  the image is at most ``max_pixels`` wide; each pixel shows its nearest point (largest ``d``);
- oblique shading: colour x (0.55 + 0.45 * normalised height), so height reads as brightness.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .asprs import ASPRS, colour_table
from .atomic import atomic_path
from .classmap import ClassMap

ERROR_RGB = np.array([220, 20, 20], np.uint8)
AGREE_RGB = np.array([200, 200, 200], np.uint8)
BACKGROUND = 255


def splat(xyz: np.ndarray, rgb: np.ndarray, azimuth: float = 0.0, elevation: float = 90.0,
          max_pixels: int = 900, shade: bool = False) -> np.ndarray:
    """``[N, 3]`` points, ``[N, 3]`` uint8 colours -> ``[H, W, 3]`` uint8 image (white background)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    p = xyz - xyz.mean(0)
    u = p[:, 0] * np.cos(a) - p[:, 1] * np.sin(a)
    w = p[:, 0] * np.sin(a) + p[:, 1] * np.cos(a)
    v = w * np.sin(e) + p[:, 2] * np.cos(e)
    depth = p[:, 2] * np.sin(e) - w * np.cos(e)
    span_u, span_v = max(np.ptp(u), 1e-6), max(np.ptp(v), 1e-6)
    size = max(1.6 * np.sqrt(span_u * span_v / max(len(p), 1)), max(span_u, span_v) / max_pixels)
    cols = np.minimum(((u - u.min()) / size).astype(np.int64), int(span_u / size))
    rows = np.minimum(((v.max() - v) / size).astype(np.int64), int(span_v / size))
    h, wd = int(span_v / size) + 1, int(span_u / size) + 1
    pix = rows * wd + cols
    order = np.lexsort((depth, pix))                     # by pixel, nearest point last
    last = np.r_[pix[order][1:] != pix[order][:-1], True]
    keep = order[last]
    colours = rgb[keep].astype(np.float32)
    if shade:
        z = p[keep, 2]
        colours *= (0.55 + 0.45 * (z - z.min()) / max(np.ptp(z), 1e-6))[:, None]
    img = np.full((h * wd, 3), BACKGROUND, np.uint8)
    img[pix[keep]] = np.clip(colours, 0, 255).astype(np.uint8)
    return img.reshape(h, wd, 3)


def render_views(path: str | os.PathLike, xyz: np.ndarray, codes: np.ndarray, reference: np.ndarray | None = None,
                 title: str = "", names: dict[int, str] | None = None, errors: np.ndarray | None = None) -> Path:
    """PNG: rows top / oblique; columns prediction, reference and errors (when ``reference`` given).

    ``codes``, ``reference``: ``[N]`` classification codes; ``errors``: ``[N]`` bool, the points
    to mark (default ``codes != reference``; a class map that merges codes passes its own);
    ``names``: code -> legend label (default: the ASPRS names).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    xyz = np.asarray(xyz, np.float64)
    codes = np.asarray(codes).astype(np.int64)
    panels = [("prediction", colour_table(np.unique(codes))[np.searchsorted(np.unique(codes), codes)])]
    shown = set(np.unique(codes).tolist())
    if reference is not None:
        reference = np.asarray(reference).astype(np.int64)
        u = np.unique(reference)
        panels.append(("reference", colour_table(u)[np.searchsorted(u, reference)]))
        wrong = codes != reference if errors is None else np.asarray(errors, bool)
        panels.append((f"errors ({wrong.mean():.1%} of points)", np.where(wrong[:, None], ERROR_RGB, AGREE_RGB)))
        shown |= set(u.tolist())
    views = [("top view", dict(azimuth=0.0, elevation=90.0)),
             ("oblique view", dict(azimuth=30.0, elevation=35.0, shade=True))]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels) + 1.8, 8.4), squeeze=False)
    for r, (view, kw) in enumerate(views):
        for c, (label, rgb) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(splat(xyz, rgb, **kw), interpolation="nearest")
            ax.set_title(f"{label}, {view}", fontsize=9)
            ax.set_axis_off()
    labels = names or {k: v[0] for k, v in ASPRS.items()}
    handles = [Patch(color=tuple(colour_table([k])[0] / 255), label=f"{k} {labels.get(k, '')}".strip())
               for k in sorted(shown)]
    if reference is not None:
        handles.append(Patch(color=tuple(ERROR_RGB / 255), label="prediction differs"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def render_classes(path: str | os.PathLike, xyz: np.ndarray, codes: np.ndarray, reference: np.ndarray | None,
                   class_map: ClassMap, title: str = "", errors: np.ndarray | None = None) -> Path:
    """:func:`render_views` through a class map: codes drawn as their class's first code
    (``ClassMap.canonical``, so a class looks alike in both panels), the class names in the
    legend, and ``errors`` (default: reference codes the map scores whose class differs)."""
    if reference is not None and errors is None:
        ref_lab = class_map.lookup(reference)
        errors = (ref_lab >= 0) & (class_map.lookup(codes) != ref_lab)
    names = {int(c): n for n, cs in zip(class_map.names, class_map.codes) for c in cs}
    return render_views(path, xyz, class_map.canonical(codes),
                        None if reference is None else class_map.canonical(reference),
                        title=title, names=names, errors=errors)
