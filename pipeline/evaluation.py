"""Evaluation: confusion matrix, OA / mIoU / kappa / per-class scores, and the report files.

With ``C`` the confusion matrix (rows reference, columns prediction), ``n = sum(C)``:

- OA = trace(C) / n
- per class i: precision = C_ii / sum_r C_ri, recall = C_ii / sum_c C_ic,
  F1 = 2 P R / (P + R), IoU = C_ii / (sum_r C_ri + sum_c C_ic - C_ii), support = sum_c C_ic
- mIoU = mean IoU over classes with support > 0 (present in the reference)
- kappa = (p_o - p_e) / (1 - p_e), p_o = OA, p_e = sum_i (row_i * col_i) / n^2

Undefined ratios (0/0) are 0 in ``report.json``; ``report.md`` shows "n/a" for a class
with no reference point and leaves it out of the mean row. Points whose reference code is
ignored are not counted. ``report.json`` also has ``per_file`` (OA, mIoU, points per file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.atomic import atomic_path, make_folder
from data.classmap import IGNORE, ClassMap
from data.locks import folder_lock
from data.errors import DataError, UserError
from data.io import read_cloud
from data.render import render_classes

from . import distributed
from .layouts import prediction_and_reference
from .progress import progress


def confusion_matrix(ref: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = reference, columns = prediction; ``IGNORE`` refs skipped."""
    ref, pred = np.asarray(ref, np.int64), np.asarray(pred, np.int64)
    keep = ref != IGNORE
    flat = ref[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def metrics_from_confusion(cm: np.ndarray, names: Sequence[str], ignored_points: int = 0) -> dict[str, Any]:
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    ref_tot = cm.sum(1).astype(np.float64)    # support
    pred_tot = cm.sum(0).astype(np.float64)
    precision, recall = _ratio(tp, pred_tot), _ratio(tp, ref_tot)
    f1 = _ratio(2 * precision * recall, precision + recall)
    iou = _ratio(tp, ref_tot + pred_tot - tp)
    present = ref_tot > 0
    oa = float(tp.sum() / n) if n else 0.0
    pe = float((ref_tot * pred_tot).sum() / n / n) if n else 0.0
    kappa = (oa - pe) / (1 - pe) if pe < 1 else (1.0 if oa == 1 else 0.0)
    return {
        "overall_accuracy": oa,
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "kappa": float(kappa),
        "class_names": list(names),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "iou": float(iou[i]), "support": int(ref_tot[i])}
                      for i, name in enumerate(names)},
        "confusion_matrix": cm.tolist(),
        "num_points": n,
        "ignored_points": int(ignored_points),
    }


def confusions_by_set(items: Sequence[Any], num_classes: int) -> dict[str, np.ndarray]:
    """An empty ``[C, C]`` confusion matrix per validation set the items belong to
    (``LabelledFile.val_group``), in order of first appearance."""
    return {g: np.zeros((num_classes, num_classes), np.int64) for g in dict.fromkeys(v.val_group for v in items)}


def validation_scores(cms: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """Validation figures from one confusion matrix ``[C, C]`` per validation set (``blocks``:
    blocks of the training files, ``held_out``: whole held-out files): ``miou`` and
    ``overall_accuracy`` of the pooled sets (what picks the checkpoint), ``iou_<class>`` of the
    pooled sets, and ``miou_<set>`` of each set when there are several."""
    pooled = sum(cms.values())
    m = metrics_from_confusion(pooled, list(names))
    out: dict[str, Any] = {"miou": float(m["miou"]), "overall_accuracy": float(m["overall_accuracy"])}
    present = np.asarray(pooled).sum(1) > 0
    out.update({f"iou_{n}": float(m["per_class"][n]["iou"]) for i, n in enumerate(names) if present[i]})
    if len(cms) > 1:
        out.update({f"miou_{g}": float(metrics_from_confusion(cm, list(names))["miou"]) for g, cm in cms.items()})
    return out


def write_report(report: dict[str, Any], out_dir: Path, title: str = "Evaluation report") -> None:
    """``report.json``, ``report.md`` and ``confusion_matrix.png`` in ``out_dir`` (each atomic)."""
    make_folder(out_dir, "--out")
    with atomic_path(out_dir / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2), encoding="utf-8")
    with atomic_path(out_dir / "report.md") as tmp:
        Path(tmp).write_text(report_markdown(report, title), encoding="utf-8")
    with atomic_path(out_dir / "confusion_matrix.png") as tmp:
        plot_confusion(report, Path(tmp))


def report_markdown(report: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", ""]
    if report.get("files"):
        lines += [f"Files: {len(report['files'])}", ""]
    lines += ["| metric | value |", "|---|---|",
              f"| overall accuracy | {report['overall_accuracy']:.4f} |",
              f"| mIoU | {report['miou']:.4f} |",
              f"| kappa | {report['kappa']:.4f} |",
              f"| points | {report['num_points']:,} |",
              f"| ignored points | {report['ignored_points']:,} |", "",
              "## Per class", "",
              "| class | precision | recall | F1 | IoU | support |", "|---|---|---|---|---|---|"]
    present = [n for n in report["class_names"] if report["per_class"][n]["support"] > 0]
    for name in report["class_names"]:
        m = report["per_class"][name]
        if m["support"] > 0:
            lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                         f"{m['iou']:.4f} | {m['support']:,} |")
        else:   # no reference point: recall and IoU are undefined, and the class is in no mean
            lines.append(f"| {name} | n/a | n/a | n/a | n/a | 0 |")
    if present:
        mean = {k: float(np.mean([report["per_class"][n][k] for n in present]))
                for k in ("precision", "recall", "f1", "iou")}
        lines.append(f"| mean over the {len(present)} classes present | {mean['precision']:.4f} | "
                     f"{mean['recall']:.4f} | {mean['f1']:.4f} | {mean['iou']:.4f} | |")
    if report.get("per_file"):
        lines += ["", "## Per file", "", "| file | OA | mIoU | points |", "|---|---|---|---|"]
        for f in report["per_file"]:
            lines.append(f"| {f['file']} | {f['overall_accuracy']:.4f} | {f['miou']:.4f} | {f['num_points']:,} |")
    names = report["class_names"]
    lines += ["", "## Confusion matrix (rows: reference, columns: prediction)", "",
              "| reference \\ prediction | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:,}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    norm = _ratio(cm, cm.sum(1, keepdims=True).repeat(cm.shape[1], 1))
    size = 2.5 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j]):,}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"OA {report['overall_accuracy']:.3f}  mIoU {report['miou']:.3f}  kappa {report['kappa']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of reference row")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def pair_files(preds: list[Path], refs: list[Path] | None) -> list[tuple[Path, Path | None]]:
    """Match prediction files to reference files by file stem (``None``: use classification_ref)."""
    if refs is None:
        return [(p, None) for p in preds]
    by_stem: dict[str, Path] = {}
    for r in refs:
        if r.stem in by_stem:
            raise UserError(f"--ref: two reference files share the stem {r.stem!r}: {by_stem[r.stem]} and {r}")
        by_stem[r.stem] = r
    pairs = []
    for p in preds:
        if p.stem not in by_stem:
            raise UserError(f"{p}: no reference file with the same stem {p.stem!r} among the {len(refs)} --ref files")
        pairs.append((p, by_stem[p.stem]))
    return pairs


def evaluate_files(preds: list[Path], refs: list[Path] | None, class_map: ClassMap | None,
                   out_dir: Path, ref_maps: list[ClassMap] | None = None, views: bool = True) -> dict[str, Any]:
    """Metrics over all points of all (prediction, reference) pairs; writes the report files.

    ``refs=None`` takes the reference from each prediction's ``classification_ref``
    dimension. ``class_map=None`` makes one class per reference code found. ``ref_maps``
    (one per prediction) reads each reference with its survey's class map (a spec input
    entry's ``ignore``/``classes``); predictions are always read with ``class_map``.
    ``views``: also ``views/<stem>.png`` per file (top and oblique views of prediction,
    reference and the points where they differ; ``data.render``).
    """
    pairs = pair_files(preds, refs)
    codes_pred, codes_ref, sources, points, titles, wrong = [], [], [], [], [], []
    mine = distributed.shard(range(len(pairs)))     # torchrun: each rank scores its share
    for pred_path, ref_path in progress([pairs[i] for i in mine], "evaluate", unit="file"):
        pred = read_cloud(pred_path)
        predicted, own_ref = prediction_and_reference(pred.fields)   # lidarseg or myria3d layout
        if not pred.has(predicted):
            raise DataError(pred_path, f"has no {predicted!r} field to evaluate")
        if ref_path is None:
            if not pred.has(own_ref):
                raise DataError(pred_path, f"has no {own_ref!r} field; give reference files with --ref")
            ref_codes = pred.fields[own_ref]
        else:
            ref = read_cloud(ref_path)
            if len(ref) != len(pred):
                raise DataError(pred_path, f"has {len(pred):,} points but its reference {ref_path} has {len(ref):,}")
            if not ref.has("classification"):
                raise DataError(ref_path, "has no 'classification' field to use as reference")
            ref_codes = ref.fields["classification"]
        codes_pred.append(np.asarray(pred.fields[predicted]))
        codes_ref.append(np.asarray(ref_codes))
        points.append(pred.xyz if views else None)
        titles.append(f"{pred_path.name}: prediction ({predicted}) against "
                      f"{ref_path.name if ref_path else own_ref}")
        sources.append((pred_path, ref_path or pred_path))
    if class_map is None:   # one class per code of the references and the predictions (of every rank)
        found = np.unique(np.concatenate(codes_ref + codes_pred)).tolist() if codes_ref else []
        class_map = ClassMap.identity(sorted({c for part in distributed.all_gather(found) for c in part}))
    num = class_map.num_classes
    cm = np.zeros((num, num), dtype=np.int64)
    ignored = 0
    per_file = []
    for i, pc, rc, (pred_path, ref_path) in zip(mine, codes_pred, codes_ref, sources):
        ref_lab = (ref_maps[i] if ref_maps is not None else class_map).encode(rc, ref_path)
        pred_lab = class_map.encode(pc, pred_path)
        valid = ref_lab != IGNORE
        ignored += int((~valid).sum())
        if (pred_lab[valid] == IGNORE).any():
            raise DataError(pred_path, "predicts codes that the class map ignores")
        file_cm = confusion_matrix(ref_lab, pred_lab, num)
        wrong.append(valid & (pred_lab != ref_lab))
        cm += file_cm
        m = metrics_from_confusion(file_cm, class_map.names)
        per_file.append({"file": pred_path.name, "overall_accuracy": m["overall_accuracy"], "miou": m["miou"],
                         "num_points": m["num_points"]})
    files = [{"prediction": p.name, "reference": r.name} for p, r in sources]
    if distributed.active():   # the ranks' counts summed, their per-file rows in input order
        cm = distributed.all_reduce_sum(cm)
        ignored = int(distributed.all_reduce_sum(np.array([ignored], np.int64))[0])
        rows = sorted(row for part in distributed.all_gather(list(zip(mine, per_file, files))) for row in part)
        per_file, files = [r[1] for r in rows], [r[2] for r in rows]
    report = metrics_from_confusion(cm, class_map.names, ignored)
    report["per_file"] = per_file
    report["files"] = files
    report["class_map"] = class_map.to_config()
    make_folder(out_dir, "--out")   # once every file has been scored: a failed evaluation writes nothing
    with folder_lock(out_dir, "--out", hold=distributed.is_main()):
        if views:
            make_folder(out_dir / "views", "--out")
            for xyz, pc, rc, title, err, (pred_path, _) in zip(points, codes_pred, codes_ref, titles, wrong, sources):
                render_classes(out_dir / "views" / f"{pred_path.stem}.png", xyz, pc, rc, class_map, title, err)
        if distributed.is_main():
            write_report(report, out_dir)
        distributed.barrier()
    return report


def summary_line(report: dict[str, Any]) -> str:
    """``OA ... mIoU ... kappa ... (N points)``: the one line a run or the CLI prints."""
    return (f"OA {report['overall_accuracy']:.4f}  mIoU {report['miou']:.4f}  kappa {report['kappa']:.4f}  "
            f"({report['num_points']:,} points)")
