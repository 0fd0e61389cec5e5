"""Prediction coverage settings of a point model, chosen on its validation blocks.

A point model (KPConvX, Point Transformer) predicts a cloud by overlapping regions whose
centres lie on a grid of ``test_spacing x radius`` (``pipeline.regions``), ``votes`` times
(rotated about z), averaging the softmax. Fewer, sparser regions are faster and may cost
accuracy; this script measures both on the **validation blocks of the spec's train step**
(``val_split``: never the test tiles), for each setting:

- validation mIoU and per-class IoU (same confusion and metrics as ``run.py evaluate``);
- prediction throughput, points per second of ``model.predict_proba`` (features, regions,
  network, votes), summed over the validation files.

Baseline: the bundle's own setting, measured in the same run (ratios are against it).

Usage:
  python benchmarks/coverage_settings.py specs/ign_kpconvx_cpu.yaml runs/ign_kpconvx_cpu/model.bundle
      [--spacings 0.75,1.0,1.25,1.4] [--votes 1,3] [--step model] [--quick]
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
from pipeline.datasets import split_files  # noqa: E402
from pipeline.evaluation import confusion_matrix, metrics_from_confusion  # noqa: E402
from pipeline.runner import RunContext  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402


def validation_data(spec: Path, step_name: str) -> list[tuple[object, np.ndarray, str]]:
    """``[(cloud, labels, name)]`` of the validation blocks of train step ``step_name``; the
    points outside the blocks are ignored (label ``IGNORE``) as in training's validation."""
    loaded = load_spec(spec)
    steps = [s for s in loaded.spec.steps_of("train") if s.name == step_name]
    if not steps or steps[0].val_split is None:
        raise SystemExit(f"{spec}: no train step named {step_name!r} with a val_split")
    ctx = RunContext(loaded, loaded.output_dir())
    train = ctx.resolve_labelled(steps[0].inputs, "inputs")
    _, val = split_files(train, steps[0].val_split)
    out = []
    for item in val:
        cloud, labels = item.read()
        out.append((cloud, labels, item.path.name))
    return out


def measure(bundle: Path, overrides: list[str], data, device: str) -> dict:
    loaded_bundle = load_bundle(bundle, overrides)
    model, class_map = loaded_bundle.model, loaded_bundle.class_map
    C = class_map.num_classes
    cm = np.zeros((C, C), np.int64)
    seconds, points = 0.0, 0
    for cloud, labels, _ in data:
        t = time.perf_counter()
        proba = model.predict_proba(cloud, device)
        seconds += time.perf_counter() - t
        points += len(cloud)
        cm += confusion_matrix(labels, proba.argmax(1), C)
    m = metrics_from_confusion(cm, list(class_map.names))
    return {"miou": float(m["miou"]), "iou": m["per_class"], "seconds": seconds, "points": points,
            "names": list(class_map.names), "setting": (model.config.sampling.test_spacing, model.config.votes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--step", default="model", help="name of the train step whose val_split to use")
    ap.add_argument("--spacings", default="0.75,1.0,1.25,1.4")
    ap.add_argument("--votes", default="1,3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="first validation file, one setting besides the baseline")
    args = ap.parse_args()
    data = validation_data(args.spec, args.step)
    if args.quick:
        data = data[:1]
    spacings = [float(v) for v in args.spacings.split(",")]
    votes = [int(v) for v in args.votes.split(",")]
    settings = [(s, v) for v in votes for s in spacings]
    if args.quick:
        settings = settings[-1:]
    print(f"{args.bundle}: validation blocks of {args.spec} step {args.step!r}: "
          f"{sum(len(c) for c, _, _ in data):,} points in {len(data)} files, "
          f"{sum(int((y >= 0).sum()) for _, y, _ in data):,} of them in the blocks (scored)")
    base = measure(args.bundle, [], data, args.device)
    rows = [("bundle's own", base)]
    for s, v in settings:
        if (s, v) == base["setting"]:
            continue
        rows.append((f"--set sampling.test_spacing={s:g} --set votes={v}",
                     measure(args.bundle, [f"sampling.test_spacing={s}", f"votes={v}"], data, args.device)))
    names = base["names"]
    print(f"\n| setting | test_spacing | votes | val mIoU | " + " | ".join(f"IoU {n}" for n in names)
          + " | points/s | speed vs bundle's |")
    print("|---" * (6 + len(names)) + "|")
    for label, r in rows:
        pps = r["points"] / r["seconds"]
        ious = " | ".join("-" if not r["iou"][n]["support"] else f"{r['iou'][n]['iou']:.3f}" for n in names)
        print(f"| {label} | {r['setting'][0]:g} | {r['setting'][1]} | {r['miou']:.4f} | {ious} | "
              f"{pps:,.0f} | {base['seconds'] / r['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
