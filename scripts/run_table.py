"""Validation and test figures of finished runs, one line each, then the mean and range.

    .venv/bin/python scripts/run_table.py runs/lidarhd_kpconvx_cpu runs/lidarhd_kpconvx_cpu_s1 ...

For each run folder (a spec's output: ``model.bundle/bundle.json`` and ``evaluation/report.json``):
the validation mIoU the checkpoint was picked by (pooled, and per set: ``blocks``,
``held_out``) and the test mIoU with per-class IoU; then mean and [min, max] over the runs
(issue 24: a setting counts as better only when its gain exceeds that range). Markdown.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _row(folder: Path) -> dict[str, float | str]:
    meta = json.loads((folder / "model.bundle" / "bundle.json").read_text())
    summary = meta["summary"]
    report = json.loads((folder / "evaluation" / "report.json").read_text())
    out: dict[str, float | str] = {"run": folder.name}
    if summary.get("val_history"):           # torch models: the picked step's validation
        best = max(summary["val_history"], key=lambda h: h["miou"])
        out.update({"val": best["miou"], "val_blocks": best.get("miou_blocks", best["miou"]),
                    "val_held_out": best.get("miou_held_out", float("nan")), "step": best["step"]})
    else:                                    # the forest: one validation at the end
        sets = summary.get("val_miou_sets", {})
        out.update({"val": summary.get("val_miou", float("nan")), "val_blocks": sets.get("blocks", float("nan")),
                    "val_held_out": sets.get("held_out", float("nan")), "step": ""})
    out["test"] = report["miou"]
    for name, row in report["per_class"].items():
        if row["support"]:
            out[f"test_{name}"] = row["iou"]
    return out


def main(folders: list[str]) -> int:
    rows = [_row(Path(f)) for f in folders]
    keys = ["val", "val_blocks", "val_held_out", "test"] + sorted(k for k in rows[0] if k.startswith("test_"))
    print("| run | step | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['run']} | {r['step']} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys) + " |")
    if len(rows) > 1:
        cells = []
        for k in keys:
            v = [float(r.get(k, float("nan"))) for r in rows]
            cells.append(f"{sum(v) / len(v):.4f} [{min(v):.4f}, {max(v):.4f}]")
        print(f"| mean [min, max] of {len(rows)} | | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
