"""Tile edges with and without a prediction buffer: IoU of the points near a tile border.

    .venv/bin/python benchmarks/edge_band.py runs/ign_rf/model.bundle [--buffer 10] [--band 5]

Predicts the four adjacent IGN test tiles twice with the bundle (no buffer; ``--buffer``
metres of the neighbouring tiles' points as context), then scores, against each tile's own
classification, the points within ``--band`` metres of their tile's border (header bounds)
and the points inside it. Prints per-class IoU and mIoU over the classes present.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.io import read_cloud, read_header_info  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402
from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.evaluation import IGNORE, confusion_matrix, metrics_from_confusion  # noqa: E402
from pipeline.labelling import predict_files  # noqa: E402
from pipeline.progress import set_quiet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--buffer", type=float, default=10.0)
    parser.add_argument("--band", type=float, default=5.0)
    args = parser.parse_args()
    set_quiet(True)
    bundle = load_bundle(args.bundle)
    model, cmap = bundle.model, bundle.class_map
    tiles = sorted((DATA / "ign_lidarhd" / "test").glob("*.laz"))
    cms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for buffer in (0.0, args.buffer):
            out = Path(tmp) / f"b{buffer:g}"
            t = time.perf_counter()
            predict_files(model, cmap, tiles, out, buffer=buffer)
            seconds = time.perf_counter() - t
            cm = {"edge": 0, "inner": 0}
            for tile in tiles:
                info = read_header_info(tile)
                pred = read_cloud(out / tile.name)
                xy = pred.xyz[:, :2]
                gap = np.minimum(xy - info.mins[:2], info.maxs[:2] - xy).min(1)
                ref = cmap.encode(pred.fields["classification_ref"], tile)
                lab = cmap.encode(pred.fields["classification"], tile)
                for part, sel in (("edge", gap < args.band), ("inner", gap >= args.band)):
                    keep = sel & (ref != IGNORE)
                    cm[part] = cm[part] + confusion_matrix(ref[keep], lab[keep], cmap.num_classes)
            cms[buffer] = (cm, seconds)
    print(f"bundle {args.bundle}; band = points within {args.band:g} m of their tile's border")
    print("| buffer | part | points | " + " | ".join(f"IoU {n}" for n in cmap.names) + " | mIoU (present) | predict s |")
    print("|---" * (len(cmap.names) + 5) + "|")
    for buffer, (cm, seconds) in cms.items():
        for part in ("edge", "inner"):
            m = metrics_from_confusion(cm[part], cmap.names)
            ious = [f"{m['per_class'][n]['iou']:.3f}" if m["per_class"][n]["support"] else "-" for n in cmap.names]
            print(f"| {buffer:g} m | {part} | {m['num_points']:,} | " + " | ".join(ious)
                  + f" | {m['miou']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
