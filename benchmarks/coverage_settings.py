"""Prediction settings of a trained model (speed against accuracy), chosen on its validation sets.

A point model (KPConvX, Point Transformer) predicts a cloud by overlapping regions whose
centres lie on a grid of ``test_spacing x radius`` (``pipeline.regions``), ``votes`` times
(rotated about z), averaging the softmax; the forest can classify one point per
``predict_cell`` grid cell and give its probabilities to the cell. Sparser settings are faster
and may cost accuracy; this script measures both on the **validation sets of the spec's train
step** (its ``val_split`` blocks and its ``val_inputs`` held-out files: never the test tiles),
for each setting:

- validation mIoU (pooled, and per set when there are two) and per-class IoU of the pooled
  sets (same confusion and metrics as ``run.py evaluate``);
- prediction throughput, points per second of ``model.predict_proba`` (features, regions,
  network, votes), summed over the validation files (the whole files are predicted).

Baseline: the bundle's own setting, measured in the same run (ratios are against it).

Usage:
  python benchmarks/coverage_settings.py specs/ign_kpconvx_cpu.yaml runs/ign_kpconvx_cpu/model.bundle
      [--spacings 0.75,1.0,1.25,1.4] [--votes 1,3] [--step model] [--quick]
  python benchmarks/coverage_settings.py specs/lidarhd_rf.yaml runs/lidarhd_rf_s0/model.bundle
      --try predict_cell=0.5 --try predict_cell=1.0
  (``--try``: one setting as comma-separated ``key=value`` overrides, repeatable; replaces the
  spacing x votes grid)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.evaluation import confusion_matrix, metrics_from_confusion  # noqa: E402
from pipeline.validation import validation_sets  # noqa: E402


def measure(bundle: Path, overrides: list[str], data, device: str) -> dict:
    loaded_bundle = load_bundle(bundle, overrides)
    model, class_map = loaded_bundle.model, loaded_bundle.class_map
    C = class_map.num_classes
    cms = {group: np.zeros((C, C), np.int64) for _, _, group in data}
    seconds, points = 0.0, 0
    for cloud, labels, group in data:
        t = time.perf_counter()
        proba = model.predict_proba(cloud, device)
        seconds += time.perf_counter() - t
        points += len(cloud)
        cms[group] += confusion_matrix(labels, proba.argmax(1), C)
    names = list(class_map.names)
    m = metrics_from_confusion(sum(cms.values()), names)
    sets = {g: float(metrics_from_confusion(cm, names)["miou"]) for g, cm in cms.items()} if len(cms) > 1 else {}
    return {"miou": float(m["miou"]), "sets": sets, "iou": m["per_class"], "seconds": seconds, "points": points,
            "names": names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--step", default="model", help="name of the train step whose validation sets to use")
    ap.add_argument("--spacings", default="0.75,1.0,1.25,1.4")
    ap.add_argument("--votes", default="1,3")
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="one setting to measure (repeatable; replaces the spacing x votes grid)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="first validation file, one setting besides the baseline")
    args = ap.parse_args()
    data = [(v.cloud, v.labels, v.group) for v in validation_sets(args.spec, args.step)]
    if args.quick:
        data = data[:1]
    if args.tries:
        settings = [t.split(",") for t in args.tries]
    else:
        settings = [[f"sampling.test_spacing={s:g}", f"votes={v}"] for v in args.votes.split(",")
                    for s in map(float, args.spacings.split(","))]
    if args.quick:
        settings = settings[-1:]
    print(f"{args.bundle}: validation sets of {args.spec} step {args.step!r}: "
          f"{sum(len(c) for c, _, _ in data):,} points in {len(data)} files "
          f"({', '.join(sorted({g for _, _, g in data}))}), "
          f"{sum(int((y >= 0).sum()) for _, y, _ in data):,} of them scored")
    rows = [("bundle's own", measure(args.bundle, [], data, args.device))]
    rows += [(" ".join(f"--set {o}" for o in overrides), measure(args.bundle, overrides, data, args.device))
             for overrides in settings]
    base = rows[0][1]
    names, groups = base["names"], list(base["sets"])
    print("\n| setting | val mIoU | " + "".join(f"val {g} | " for g in groups)
          + " | ".join(f"IoU {n}" for n in names) + " | points/s | speed vs bundle's |")
    print("|---" * (4 + len(groups) + len(names)) + "|")
    for label, r in rows:
        pps = r["points"] / r["seconds"]
        ious = " | ".join("-" if not r["iou"][n]["support"] else f"{r['iou'][n]['iou']:.3f}" for n in names)
        sets = "".join(f"{r['sets'][g]:.4f} | " for g in groups)
        print(f"| {label} | {r['miou']:.4f} | {sets}{ious} | {pps:,.0f} | {base['seconds'] / r['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
