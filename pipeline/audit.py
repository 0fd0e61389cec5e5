"""Data audit (``run.py inspect``): what is in a set of point-cloud files, before training.

Per file: points, density, extent, CRS, point format, fields, class histogram by input code
and (with a class map) by class. Warnings a practitioner acts on:

- a code holding most of a file (``> 50%``);
- code 1 holding a large share (``> 20%``) of a file: in a finished IGN/ASPRS product code 1
  is "other" (vehicles, fences), in an unprocessed survey "not classified yet"; a survey
  whose code 1 is the latter wants ``ignore: [1]`` on its input entry;
- a class of the map that no file holds; codes the map neither maps nor ignores;
- densities that differ more than 5x (between the training and the prediction files of a
  spec when ``--classes`` names one, else between any two files);
- a file without a CRS.

Density is points per occupied 5 m x 5 m cell area (robust to non-rectangular crops).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.atomic import atomic_path, make_folder
from data.classmap import IGNORE, UNKNOWN, ClassMap
from data.io import read_cloud

DENSITY_CELL = 5.0      # metres
DOMINANT_SHARE = 0.5
CODE1_SHARE = 0.2
DENSITY_RATIO = 5.0


@dataclass
class FileAudit:
    path: Path
    points: int
    density: float                        # points / m^2 of occupied 5 m cells
    extent: list[float]                   # [xmin, ymin, zmin, xmax, ymax, zmax]
    crs: str | None                       # "EPSG:n", "WKT" or None
    point_format: int | None
    fields: list[str]
    codes: dict[int, int]                 # input code -> points
    classes: dict[str, int] = field(default_factory=dict)   # class -> points (with a class map)
    ignored: int = 0
    unknown: dict[int, int] = field(default_factory=dict)   # codes the map does not know
    role: str = ""                        # "train" / "predict" / "" (from a spec)
    ignored_codes: list[int] = field(default_factory=list)   # the file's class map's ignore list
    ambiguous: dict[str, int] = field(default_factory=dict)  # "code -> a|b" -> points (partial labels)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path.name, "path": str(self.path), "points": self.points,
                "density_per_m2": round(self.density, 3), "extent": self.extent, "crs": self.crs,
                "point_format": self.point_format, "fields": self.fields,
                "codes": {str(k): v for k, v in self.codes.items()}, "classes": self.classes,
                "ignored_points": self.ignored, "unknown_codes": {str(k): v for k, v in self.unknown.items()},
                "ambiguous": self.ambiguous, "role": self.role}


def bbox_density(xyz_or_info: Any) -> float:
    """Points per m^2 of the horizontal bounding box (from a cloud's ``xyz`` or a ``HeaderInfo``)."""
    if hasattr(xyz_or_info, "point_count"):
        n, lo, hi = xyz_or_info.point_count, xyz_or_info.mins, xyz_or_info.maxs
    else:
        xyz = np.asarray(xyz_or_info)
        n, lo, hi = len(xyz), xyz.min(0), xyz.max(0)
    area = max(float((hi[0] - lo[0]) * (hi[1] - lo[1])), 1.0)
    return n / area


def density_warning(name: str, density: float, train: dict[str, float] | None) -> str | None:
    """A warning when ``density`` is more than 5x away from the training files' median."""
    if not train or not train.get("median"):
        return None
    ratio = density / train["median"]
    if 1 / DENSITY_RATIO <= ratio <= DENSITY_RATIO:
        return None
    return (f"warning: {name}: {density:.2f} points/m2, {max(ratio, 1 / ratio):.0f}x "
            f"{'sparser' if ratio < 1 else 'denser'} than the training data (median {train['median']:.2f}, "
            f"{train['min']:.2f}..{train['max']:.2f} points/m2): its predictions may be poor")


def audit_file(path: Path, class_map: ClassMap | None = None, role: str = "") -> FileAudit:
    cloud = read_cloud(path)
    xyz = cloud.xyz
    n = len(cloud)
    cells = np.unique(np.floor(xyz[:, :2] / DENSITY_CELL).astype(np.int64), axis=0)
    density = n / max(len(cells) * DENSITY_CELL ** 2, 1e-9)
    epsg = getattr(cloud.meta, "epsg", None)
    crs = f"EPSG:{epsg}" if epsg else ("WKT" if cloud.crs_wkt else None)
    codes: dict[int, int] = {}
    if cloud.has("classification"):
        u, c = np.unique(np.asarray(cloud.fields["classification"]), return_counts=True)
        codes = {int(a): int(b) for a, b in zip(u, c)}
    audit = FileAudit(path, n, float(density), [float(v) for v in np.r_[xyz.min(0), xyz.max(0)]], crs,
                      getattr(cloud.meta, "point_format", None), list(cloud.fields), codes, role=role)
    if class_map is not None and codes:
        keys, points = np.array(list(codes)), np.array(list(codes.values()))
        labels = class_map.lookup(keys)
        sets = dict(class_map.ambiguous)
        audit.ambiguous = {f"{c} -> {'|'.join(class_map.names[m] for m in sets[c])}": codes[c]
                           for c in sorted(sets) if c in codes}
        audit.ignored = int(points[labels == IGNORE].sum()) - sum(audit.ambiguous.values())
        audit.unknown = {int(c): int(k) for c, k in zip(keys[labels == UNKNOWN], points[labels == UNKNOWN])}
        known = labels >= 0
        counts = np.bincount(labels[known], weights=points[known], minlength=class_map.num_classes)
        audit.classes = dict(zip(class_map.names, counts.astype(np.int64).tolist()))
        audit.ignored_codes = sorted(class_map.ignore)
    return audit


def warnings_for(audits: list[FileAudit], class_map: ClassMap | None) -> list[str]:
    out: list[str] = []
    for a in audits:
        total = max(sum(a.codes.values()), 1)
        for code, k in a.codes.items():
            share = k / total
            if code == 1 and share > CODE1_SHARE and 1 not in a.ignored_codes:
                out.append(f"{a.path.name}: code 1 is {share:.0%} of the file: if this survey is unprocessed, "
                           "code 1 means 'not classified yet' rather than 'other' (give its input entry ignore: [1])")
            elif share > DOMINANT_SHARE:
                out.append(f"{a.path.name}: code {code} is {share:.0%} of the file")
        if not a.codes:
            out.append(f"{a.path.name}: no 'classification' field (cannot train or score on it)")
        if a.unknown:
            out.append(f"{a.path.name}: code(s) {sorted(a.unknown)} are neither mapped nor ignored by the class map")
        if a.crs is None:
            out.append(f"{a.path.name}: no CRS in the header")
    if class_map is not None and audits:
        held = {name for a in audits for name, k in a.classes.items() if k}
        absent = [name for name in class_map.names if name not in held]
        if absent:
            out.append(f"class(es) {absent} of the class map are in none of these files")
    train = [a.density for a in audits if a.role == "train"]
    pred = [a.density for a in audits if a.role == "predict"]
    if train and pred:
        mt, mp = float(np.median(train)), float(np.median(pred))
        ratio = max(mt, mp) / max(min(mt, mp), 1e-9)
        if ratio > DENSITY_RATIO:
            out.append(f"median density of the training files ({mt:.1f} pts/m2) and of the files to "
                       f"predict ({mp:.1f} pts/m2) differ {ratio:.0f}x")
    elif len(audits) > 1:
        d = [a.density for a in audits]
        if max(d) > DENSITY_RATIO * max(min(d), 1e-9):
            lo, hi = audits[int(np.argmin(d))], audits[int(np.argmax(d))]
            out.append(f"densities differ {max(d) / max(min(d), 1e-9):.0f}x: {lo.path.name} {min(d):.1f} pts/m2, "
                       f"{hi.path.name} {max(d):.1f} pts/m2")
    return out


def report_markdown(audits: list[FileAudit], warnings: list[str], class_map: ClassMap | None) -> str:
    lines = ["# Data audit", "", f"{len(audits)} file(s), {sum(a.points for a in audits):,} points", "",
             "| file | role | points | pts/m2 | extent x/y (m) | z range (m) | CRS | format |",
             "|---|---|---|---|---|---|---|---|"]
    for a in audits:
        e = a.extent
        lines.append(f"| {a.path.name} | {a.role or '-'} | {a.points:,} | {a.density:.1f} | {e[3] - e[0]:.0f} x "
                     f"{e[4] - e[1]:.0f} | {e[2]:.1f} .. {e[5]:.1f} | {a.crs or 'none'} | {a.point_format} |")
    lines += ["", "## Class codes (points per input code)", ""]
    codes = sorted({c for a in audits for c in a.codes})
    lines += ["| file | " + " | ".join(str(c) for c in codes) + " |", "|---|" + "---|" * len(codes)]
    for a in audits:
        lines.append(f"| {a.path.name} | " + " | ".join(f"{a.codes.get(c, 0):,}" for c in codes) + " |")
    if class_map is not None:
        lines += ["", "## Classes (with each file's class map)", "",
                  "| file | " + " | ".join(class_map.names) + " | ambiguous | ignored | unknown |",
                  "|---|" + "---|" * (len(class_map.names) + 3)]
        for a in audits:
            amb = "; ".join(f"{k}: {v:,}" for k, v in a.ambiguous.items()) or "0"
            lines.append(f"| {a.path.name} | " + " | ".join(f"{a.classes.get(n, 0):,}" for n in class_map.names)
                         + f" | {amb} | {a.ignored:,} | {sum(a.unknown.values()):,} |")
    lines += ["", "## Fields", ""]
    for a in audits:
        lines.append(f"- {a.path.name}: {', '.join(a.fields)}")
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in warnings] or ["none"])
    return "\n".join(lines) + "\n"


def plot_shares(audits: list[FileAudit], class_map: ClassMap | None, path: Path) -> None:
    """Horizontal stacked bars: each file's share of each class (or code)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if class_map is not None:
        keys = list(class_map.names) + ["ignored"]
        rows = [[a.classes.get(k, 0) for k in class_map.names] + [a.ignored] for a in audits]
    else:
        codes = sorted({c for a in audits for c in a.codes})
        keys = [f"code {c}" for c in codes]
        rows = [[a.codes.get(c, 0) for c in codes] for a in audits]
    shares = np.asarray(rows, np.float64)
    shares /= np.maximum(shares.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(audits) + 1.8))
    cmap = plt.get_cmap("tab10")
    left = np.zeros(len(audits))
    for j, key in enumerate(keys):
        ax.barh(range(len(audits)), shares[:, j], left=left, color=cmap(j % 10), label=key)
        left += shares[:, j]
    ax.set_yticks(range(len(audits)), [a.path.name for a in audits], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the file's points")
    ax.legend(ncol=min(len(keys), 7), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_audit(audits: list[FileAudit], warnings: list[str], class_map: ClassMap | None, out_dir: Path) -> None:
    """``inspect.md``, ``inspect.json`` and ``class_shares.png`` in ``out_dir`` (each atomic)."""
    make_folder(out_dir, "--out")
    data = {"files": [a.to_json() for a in audits], "warnings": warnings,
            "class_map": class_map.to_config() if class_map is not None else None}
    with atomic_path(out_dir / "inspect.json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2), encoding="utf-8")
    with atomic_path(out_dir / "inspect.md") as tmp:
        Path(tmp).write_text(report_markdown(audits, warnings, class_map), encoding="utf-8")
    with atomic_path(out_dir / "class_shares.png") as tmp:
        plot_shares(audits, class_map, Path(tmp))


__all__ = ["FileAudit", "audit_file", "warnings_for", "report_markdown", "write_audit"]
