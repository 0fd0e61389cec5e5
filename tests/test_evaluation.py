import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix as sk_confusion, precision_recall_fscore_support

from pipeline.evaluation import confusion_matrix, metrics_from_confusion, write_report


def test_metrics_match_sklearn_and_formulas():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, 5000)
    pred = np.where(rng.random(5000) < 0.7, ref, rng.integers(0, 5, 5000))
    pred[ref == 4] = 0          # class 4 never predicted: precision 0/0 -> 0
    ref[:50] = -1               # ignored points
    cm = confusion_matrix(ref, pred, 5)
    keep = ref != -1
    np.testing.assert_array_equal(cm, sk_confusion(ref[keep], pred[keep], labels=range(5)))
    m = metrics_from_confusion(cm, list("abcde"), ignored_points=50)
    p, r, f, s = precision_recall_fscore_support(ref[keep], pred[keep], labels=range(5), zero_division=0)
    for i, name in enumerate("abcde"):
        assert m["per_class"][name]["precision"] == pytest.approx(p[i])
        assert m["per_class"][name]["recall"] == pytest.approx(r[i])
        assert m["per_class"][name]["f1"] == pytest.approx(f[i])
        assert m["per_class"][name]["support"] == s[i]
        tp = cm[i, i]
        assert m["per_class"][name]["iou"] == pytest.approx(tp / (cm[i].sum() + cm[:, i].sum() - tp))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(ref[keep], pred[keep]))
    assert m["overall_accuracy"] == pytest.approx((ref[keep] == pred[keep]).mean())
    assert m["num_points"] == keep.sum() and m["ignored_points"] == 50


def test_miou_averages_only_classes_present_in_reference():
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["miou"] == pytest.approx((8 / 11 + 9 / 12) / 2)


def test_report_files(tmp_path):
    m = metrics_from_confusion(np.array([[5, 1], [2, 7]]), ["ground", "building"])
    write_report(m, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    for key in ("overall_accuracy", "miou", "kappa", "class_names", "per_class", "confusion_matrix",
                "num_points", "ignored_points"):
        assert key in data
    assert data["confusion_matrix"] == [[5, 1], [2, 7]]
    assert "| building |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "report.json", "report.md"]
