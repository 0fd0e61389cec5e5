"""Baseline: a scikit-learn random forest on mined geometric features.

Features per point (``geometry.features.compute_features``): covariance shape features at
several k-NN (and optional radius) scales, height above local minima and above a
morphological ground model, intensity and return features.

Training draws a bounded sample of the labelled points, so training time does not grow with
the data: ``sampling: proportional`` (default) draws ``max_samples`` points uniformly, which
keeps the classes' training priors; ``sampling: balanced`` draws at most
``samples_per_class`` points of each class and, with ``prior_correction``, rescales the
predicted probabilities by ``prior_train / prior_sample`` (renormalised), which undoes the
flattened priors of the sample (and of ``balanced`` class weights) at prediction time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError
from data.pointcloud import PointCloud
from pipeline.datasets import LabelledFile
from pipeline.mining import FeatureConfig, mine, mine_names
from pipeline.priors import prior_log_ratio
from pipeline.progress import log, progress
from pipeline.registry import MODELS
from pipeline.schema import keys_where, option

from .base import Prediction, TrainContext


@MODELS.register("random_forest")
class RandomForestModel:
    @dataclass
    class Config:
        features: FeatureConfig = field(default_factory=FeatureConfig)
        n_estimators: int = option(min=1, default=100)
        max_depth: int | None = option(min=1, default=24)
        min_samples_leaf: int = option(min=1, default=2)
        max_features: float = 0.3
        sampling: Literal["proportional", "balanced"] = "proportional"
        max_samples: int = option(min=1, default=200_000)      # proportional: points drawn from all labelled points
        samples_per_class: int = option(min=1, default=30000)  # balanced: points drawn per class
        balanced: bool = False         # class_weight='balanced_subsample' on the sampled points
        prior_correction: bool = True  # undo the sample's (and class weights') priors at prediction
        n_jobs: int = option(predict=True, default=-1)   # worker processes (-1: all cores)
        # metres; > 0: prediction mines one point per cell of this 3-D grid (the one nearest the
        # cell's barycentre; neighbours are still all points) and every point of the cell takes
        # its probabilities (predict_share: labels) or its neighbourhood features (features:
        # the per-point ones stay its own, every point classified); 0: every point mined
        predict_cell: float = option(min=0, predict=True, default=0.0)
        predict_share: Literal["labels", "features"] = option(predict=True, default="labels")

        def __post_init__(self) -> None:
            if self.n_jobs == 0 or self.n_jobs < -1:
                raise UserError(f"n_jobs must be -1 (all cores) or >= 1, got {self.n_jobs}")
            if not 0 < self.max_features <= 1:
                raise UserError(f"max_features must be in (0, 1], got {self.max_features}")

    #: Config keys ``run.py predict --set`` may change on a trained bundle (``option(predict=True)``)
    predict_options = keys_where(Config, "predict")

    def __init__(self, config: "RandomForestModel.Config", class_map: ClassMap):
        self.config = config
        self.class_map = class_map
        self.feature_names: list[str] | None = None
        self.estimator: Any = None
        self.prior_ratio: np.ndarray | None = None   # [C] prior_train / prior_sample

    # -- training ---------------------------------------------------------------------
    def fit(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> dict[str, Any]:
        from sklearn.ensemble import RandomForestClassifier

        cfg = self.config
        C = self.class_map.num_classes
        rng = np.random.default_rng(ctx.seed)
        xs, ys = [], []
        for item in progress(train, "features (train)", unit="file"):
            cloud, labels = item.read()
            names, feats = mine(cloud, cfg.features)
            self._check_names(names, item.path)
            keep = labels != IGNORE
            xs.append(feats[keep])
            ys.append(labels[keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if not len(y):
            raise UserError("random_forest: the training files hold no labelled point (every code is ignored?)")
        if cfg.sampling == "balanced":
            idx = _balanced_sample(y, cfg.samples_per_class, rng)
        else:
            idx = np.sort(rng.permutation(len(y))[:cfg.max_samples])
        n_trees = cfg.n_estimators if ctx.limit_steps is None else max(1, min(cfg.n_estimators, ctx.limit_steps))
        log(f"random forest: {n_trees} trees on {len(idx):,} of {len(y):,} labelled points "
            f"({cfg.sampling} sample), {x.shape[1]} features")
        self.estimator = RandomForestClassifier(
            n_estimators=n_trees, max_depth=cfg.max_depth, min_samples_leaf=cfg.min_samples_leaf,
            max_features=cfg.max_features, n_jobs=cfg.n_jobs, random_state=ctx.seed,
            class_weight="balanced_subsample" if cfg.balanced else None)
        self.estimator.fit(x[idx], y[idx])
        present = np.bincount(y, minlength=C)
        seen = np.bincount(y[idx], minlength=C).astype(np.float64)
        if cfg.balanced:   # balanced_subsample weights each class to the same total, as a balanced sample
            seen = (seen > 0).astype(np.float64)
        self.prior_ratio = np.exp(prior_log_ratio(present, seen)) if cfg.prior_correction else None
        importances = sorted(zip(self.feature_names, self.estimator.feature_importances_.tolist()),
                             key=lambda t: -t[1])
        log("most important features: " + ", ".join(f"{n} {v:.3f}" for n, v in importances[:8]))
        summary: dict[str, Any] = {"train_points": int(len(y)), "sampled_points": int(len(idx)), "trees": n_trees,
                                   "features": self.feature_names,
                                   "feature_importances": {n: round(v, 5) for n, v in importances},
                                   "feature_stats": {n: [round(float(m), 5), round(float(sd), 5)] for n, m, sd
                                                     in zip(self.feature_names, x[idx].mean(0), x[idx].std(0))},
                                   "train_class_counts": dict(zip(self.class_map.names, present.tolist()))}
        if val:
            from pipeline.evaluation import (confusion_matrix, confusions_by_set, metrics_from_confusion,
                                             validation_scores)

            cms = confusions_by_set(val, C)
            for item in progress(val, "validation", unit="file"):
                cloud, ref = item.read()
                if (ref != IGNORE).any():
                    cms[item.val_group] += confusion_matrix(ref, self.predict_proba(cloud).argmax(1), C)
            m = metrics_from_confusion(sum(cms.values()), self.class_map.names)
            summary["val_miou"] = m["miou"]
            summary["val_iou"] = {n: round(v["iou"], 4) for n, v in m["per_class"].items() if v["support"]}
            summary["val_confusion"] = m["confusion_matrix"]
            if len(cms) > 1:
                scores = validation_scores(cms, self.class_map.names)
                summary["val_miou_sets"] = {g: scores[f"miou_{g}"] for g in cms}
            log(f"validation mIoU {m['miou']:.4f} (" + ", ".join(f"{n} {v:.3f}" for n, v in summary['val_iou'].items())
                + ")" + "".join(f"; {g} {v:.4f}" for g, v in summary.get("val_miou_sets", {}).items()))
        return summary

    def _check_names(self, names: list[str], path: object) -> None:
        if self.feature_names is None:
            self.feature_names = list(names)
        elif list(names) != self.feature_names:
            missing = sorted(set(self.feature_names) - set(names))
            raise DataError(path, f"cannot compute feature(s) {missing} the model uses "
                                  "(is a field such as intensity or return_number missing?)")

    # -- inference ----------------------------------------------------------------------
    #: peak process memory per point of a whole cloud predicted at once (pipeline.windows)
    bytes_per_point = 1000.0

    @property
    def context(self) -> float:
        """Metres around a point whose points its features read (``FeatureConfig.context``)."""
        return self.config.features.context

    def predict_proba(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                      targets: np.ndarray | None = None) -> np.ndarray:
        """``[N, C]``; with ``targets`` only their features are mined and classified (the
        others are neighbours only; their rows are uniform). With ``predict_cell`` > 0, one
        point per occupied cell of the rows asked for is mined
        (``geometry.sampling.grid_representatives``) and gives every point of its cell its
        probabilities (``predict_share: labels``) or its neighbourhood features (``features``,
        ``geometry.features.compute_features(share=...)``)."""
        cfg = self.config
        rows = np.arange(len(cloud)) if targets is None else np.flatnonzero(targets)
        inverse = None
        if cfg.predict_cell > 0 and len(rows):
            from geometry.sampling import grid_representatives

            pick, inverse = grid_representatives(cloud.xyz[rows], cfg.predict_cell)
        subset = None if targets is None else rows
        if inverse is None:
            names, feats = mine(cloud, cfg.features, subset)
        elif cfg.predict_share == "features":
            names, feats = mine(cloud, cfg.features, subset, share=(rows[pick], inverse))
            inverse = None                  # every row classified
        else:
            names, feats = mine(cloud, cfg.features, rows[pick])
        self._check_names(names, cloud.source)
        proba = np.zeros((len(feats), self.class_map.num_classes), dtype=np.float32)
        chunk = 200_000
        for start in range(0, len(feats), chunk):
            part = self.estimator.predict_proba(feats[start:start + chunk])
            proba[start:start + chunk][:, self.estimator.classes_] = part
        if self.prior_ratio is not None:
            proba *= self.prior_ratio
            proba /= np.maximum(proba.sum(1, keepdims=True), 1e-12)
        if inverse is not None:
            proba = proba[inverse]
        if targets is None:
            return proba
        full = np.full((len(cloud), self.class_map.num_classes), 1 / self.class_map.num_classes, np.float32)
        full[rows] = proba
        return full

    def predict(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                targets: np.ndarray | None = None) -> Prediction:
        return Prediction(self.predict_proba(cloud, device, targets=targets))

    # -- bundle -------------------------------------------------------------------------
    #: the only types a bundle's ``random_forest.skops`` may hold beyond skops' own trusted
    #: set (numpy arrays, scikit-learn estimators): loading refuses anything else, so no code
    #: stored in a bundle ever runs
    TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
    WEIGHTS, META = "random_forest.skops", "random_forest.json"

    def save(self, folder: Path) -> None:
        import skops.io as sio

        sio.dump(self.estimator, Path(folder) / self.WEIGHTS)
        meta = {"feature_names": self.feature_names,
                "prior_ratio": None if self.prior_ratio is None else self.prior_ratio.tolist()}
        (Path(folder) / self.META).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, config: "RandomForestModel.Config", class_map: ClassMap, folder: Path) -> "RandomForestModel":
        """Rebuild from ``random_forest.skops`` (types checked against :attr:`TRUSTED_TYPES`
        before anything is built) and ``random_forest.json``; a clear error naming the bundle
        for a missing, broken, foreign or mismatched file."""
        import skops.io as sio
        from sklearn.ensemble import RandomForestClassifier

        folder = Path(folder)
        model = cls(config, class_map)
        weights, meta_path = folder / cls.WEIGHTS, folder / cls.META
        if (folder / "random_forest.pkl").exists() and not weights.exists():
            raise UserError(f"{folder}: an old bundle with a pickled forest (random_forest.pkl); pickles can run "
                            "code and are not loaded: retrain it with this version")
        for path in (weights, meta_path):
            if not path.is_file():
                raise UserError(f"{folder}: broken random-forest bundle: {path.name} is missing")
        try:
            untrusted = sio.get_untrusted_types(file=weights)
        except Exception as exc:  # noqa: BLE001 - any failure to read the archive is a broken bundle
            raise UserError(f"{folder}: broken random-forest bundle: {weights.name} is not a skops file ({exc})") from None
        foreign = sorted(set(untrusted) - set(cls.TRUSTED_TYPES))
        if foreign:
            raise UserError(f"{folder}: {weights.name} holds type(s) {foreign} that a random-forest bundle never "
                            "holds; refusing to load it (a tampered bundle?)")
        try:
            estimator = sio.load(weights, trusted=list(untrusted))
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{folder}: broken random-forest bundle: {exc}") from None
        if not isinstance(estimator, RandomForestClassifier):
            raise UserError(f"{folder}: {weights.name} holds a {type(estimator).__name__}, not a random forest")
        names, ratio = (meta.get("feature_names"), meta.get("prior_ratio")) if isinstance(meta, dict) else (None, None)
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise UserError(f"{folder}: {meta_path.name}: 'feature_names' must be a list of strings")
        if getattr(estimator, "n_features_in_", None) != len(names):
            raise UserError(f"{folder}: the forest takes {getattr(estimator, 'n_features_in_', '?')} features, "
                            f"{meta_path.name} names {len(names)}")
        if mine_names(config.features, names) != names:
            raise UserError(f"{folder}: {meta_path.name}: its features do not match the bundle's feature config")
        classes = np.asarray(getattr(estimator, "classes_", []))
        if classes.size and (classes.min() < 0 or classes.max() >= class_map.num_classes):
            raise UserError(f"{folder}: the forest predicts class indices {classes.tolist()}, the class map has "
                            f"{class_map.num_classes} classes")
        if ratio is not None and (not isinstance(ratio, list) or len(ratio) != class_map.num_classes):
            raise UserError(f"{folder}: {meta_path.name}: 'prior_ratio' must hold one number per class")
        model.estimator, model.feature_names = estimator, names
        model.prior_ratio = None if ratio is None else np.asarray(ratio, np.float32)
        if hasattr(model.estimator, "n_jobs"):
            model.estimator.n_jobs = config.n_jobs
        return model


def _balanced_sample(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``per_class`` random points of each class (all of a smaller class)."""
    order = rng.permutation(len(y))
    ys = y[order]
    sort = np.argsort(ys, kind="stable")
    ys_sorted = ys[sort]
    starts = np.searchsorted(ys_sorted, ys_sorted, side="left")
    rank = np.arange(len(ys_sorted)) - starts          # rank of each point within its class
    return np.sort(order[sort[rank < per_class]])


__all__ = ["RandomForestModel"]
