"""Where models confuse two classes on their spec's validation sets, file by file and by height.

    .venv/bin/python scripts/val_confusions.py specs/lidarhd_kpconvx_cpu.yaml models/lidarhd-kpconvx \
        runs/exp/model.bundle [--pair vegetation:building] [--set votes=1]

For each bundle, on the validation sets of the spec's train step (``pipeline.validation``: its
``val_split`` blocks and ``val_inputs`` files, never the test tiles; a bundle trained on other
inputs is still scored on these, so several bundles compare on the same points):

- per file: the points of class ``A`` and how many read as ``B``, the same for ``B`` read as
  ``A``, and ``A`` read as ``B`` by height above the ground model (``geometry.heights``);
- pooled: mIoU (all sets and each set), per-class IoU and the confusion matrix (rows reference,
  columns prediction; the same metrics as ``run.py evaluate``);
- ``--group NAME=GLOB`` (repeatable): the files whose name matches also pooled under ``NAME``
  (e.g. one survey's blocks: ``--group ign='mnx_*' --group ign='St_Barth*'``).

Then one summary line per bundle. Markdown on stdout.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.errors import UserError  # noqa: E402
from geometry.features import height_above_ground  # noqa: E402
from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.evaluation import confusion_matrix, metrics_from_confusion  # noqa: E402
from pipeline.progress import set_quiet  # noqa: E402
from pipeline.validation import validation_sets  # noqa: E402

#: height-above-ground bin edges (metres) of the A -> B counts
HEIGHT_BINS = (2.0, 4.0, 8.0, 12.0)


def _bin_labels() -> list[str]:
    edges = HEIGHT_BINS
    return ([f"< {edges[0]:g} m"] + [f"{a:g}-{b:g} m" for a, b in zip(edges[:-1], edges[1:])]
            + [f">= {edges[-1]:g} m"])


def score(bundle: Path, overrides: list[str], data, heights: list, pair: tuple[str, str], device: str,
          groups: dict[str, list[str]] | None = None) -> dict:
    """Confusions of one bundle on ``data`` (``pipeline.validation.ValidationFile`` list);
    ``heights[i]``: a callable giving file i's ``[N]`` heights above the ground model (computed
    once for all bundles); ``groups``: name -> file-name globs whose files are also pooled under
    that name (a group of no scored point maps to None)."""
    loaded = load_bundle(bundle, overrides)
    names = list(loaded.class_map.names)
    missing = [n for n in pair if n not in names]
    if missing:
        raise UserError(f"{bundle}: no class {', '.join(map(repr, missing))} (classes: {', '.join(names)})")
    a, b = (names.index(n) for n in pair)
    C = len(names)
    rows, by_set = [], {}
    by_group = {g: np.zeros((C, C), np.int64) for g in groups or {}}
    for v, height in zip(data, heights):
        pred = loaded.model.predict_proba(v.cloud, device).argmax(1)
        cm = confusion_matrix(v.labels, pred, C)
        by_set[v.group] = by_set.get(v.group, 0) + cm
        name = Path(str(v.cloud.source)).name
        for g, globs in (groups or {}).items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in globs):
                by_group[g] += cm
        wrong = (v.labels == a) & (pred == b)
        hist = np.zeros(len(HEIGHT_BINS) + 1, np.int64)
        if wrong.any():
            hag = height()[wrong]
            hist = np.bincount(np.searchsorted(HEIGHT_BINS, hag, side="right"), minlength=len(hist))
        rows.append((name, v.group, int(cm[a].sum()), int(cm[a, b]), int(cm[b].sum()),
                     int(cm[b, a]), hist))
    pooled = sum(by_set.values())
    m = metrics_from_confusion(pooled, names)
    return {"names": names, "rows": rows, "pooled": pooled, "metrics": m, "a": a, "b": b,
            "sets": {g: float(metrics_from_confusion(cm, names)["miou"]) for g, cm in by_set.items()},
            "groups": {g: metrics_from_confusion(cm, names) if cm.any() else None for g, cm in by_group.items()}}


def print_bundle(bundle: Path, r: dict, pair: tuple[str, str]) -> None:
    A, B = pair
    print(f"\n## {bundle}\n")
    print(f"| file | set | {A} | {A} read as {B} | {B} | {B} read as {A} | "
          + " | ".join(f"{A} -> {B} {lab}" for lab in _bin_labels()) + " |")
    print("|---" * (6 + len(HEIGHT_BINS) + 1) + "|")
    for name, group, na, ab, nb, ba, hist in r["rows"]:
        print(f"| {name} | {group} | {na:,} | {ab:,} | {nb:,} | {ba:,} | " + " | ".join(f"{x:,}" for x in hist) + " |")
    m, names = r["metrics"], r["names"]
    sets = ", ".join(f"{g} {v:.4f}" for g, v in r["sets"].items())
    print(f"\nPooled mIoU {m['miou']:.4f} ({sets}); IoU "
          + ", ".join(f"{n} {m['per_class'][n]['iou']:.3f}" for n in names if m["per_class"][n]["support"]))
    for g, gm in r["groups"].items():
        if gm is None:
            print(f"\nGroup {g}: no scored point (no validation file matches)")
            continue
        print(f"\nGroup {g}: mIoU {gm['miou']:.4f}; IoU "
              + ", ".join(f"{n} {gm['per_class'][n]['iou']:.3f}" for n in names if gm["per_class"][n]["support"]))
    print("\n| reference \\ prediction | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for i, n in enumerate(names):
        if r["pooled"][i].sum():
            print(f"| {n} | " + " | ".join(f"{x:,}" for x in r["pooled"][i]) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path, help="spec whose train step's validation sets score the bundles")
    ap.add_argument("bundles", type=Path, nargs="+", help="model bundles (or shipped model names)")
    ap.add_argument("--step", default="model", help="name of the train step (default: model)")
    ap.add_argument("--pair", default="vegetation:building", metavar="A:B",
                    help="the confusion to break down: reference A read as B (default vegetation:building)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="prediction option of every bundle (e.g. votes=1), repeatable")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=GLOB",
                    help="also pool the validation files whose name matches GLOB under NAME (repeatable; "
                         "e.g. --group ign='mnx_*' --group ign='St_Barth*')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = ap.parse_args(argv)
    set_quiet(not args.progress)
    pair = tuple(args.pair.split(":"))
    if len(pair) != 2 or not all(pair):
        print(f"error: --pair: expected A:B (two class names), got {args.pair!r}", file=sys.stderr)
        return 2
    groups: dict[str, list[str]] = {}
    for item in args.group:
        name, _, pattern = item.partition("=")
        if not name or not pattern:
            print(f"error: --group: expected NAME=GLOB, got {item!r}", file=sys.stderr)
            return 2
        groups.setdefault(name, []).append(pattern)
    try:
        data = validation_sets(args.spec, args.step)
        print(f"# {pair[0]} read as {pair[1]} on the validation sets of {args.spec} (step {args.step!r}): "
              f"{len(data)} files, {sum(int((v.labels >= 0).sum()) for v in data):,} points scored")
        heights = [functools.cache(lambda v=v: height_above_ground(v.cloud.xyz, source=v.cloud.source))
                   for v in data]
        results = []
        for bundle in args.bundles:
            r = score(bundle, args.overrides, data, heights, pair, args.device, groups)
            print_bundle(bundle, r, pair)
            results.append((bundle, r))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    heads = [f"val {g}" for g in results[0][1]["sets"]] + [f"group {g}" for g in groups]
    print(f"\n## Summary\n\n| bundle | val mIoU | {' | '.join(heads)} | "
          f"{pair[0]} read as {pair[1]} | {pair[1]} read as {pair[0]} |")
    print("|---" * (4 + len(heads)) + "|")
    for bundle, r in results:
        cm, a, b = r["pooled"], r["a"], r["b"]
        figures = [f"{v:.4f}" for v in r["sets"].values()] + [
            "-" if gm is None else f"{gm['miou']:.4f}" for gm in r["groups"].values()]
        print(f"| {bundle} | {r['metrics']['miou']:.4f} | " + " | ".join(figures)
              + f" | {int(cm[a, b]):,} | {int(cm[b, a]):,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
