"""Baseline: a scikit-learn random forest on mined geometric features.

Features per point (``data.features.compute_features``): covariance shape features at
several k-NN scales, height above local minima, intensity and return features. Training
draws at most ``samples_per_class`` points of each class from all training files
(class-balanced), so training time does not grow with the data.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError
from data.io import read_cloud
from data.pointcloud import PointCloud
from pipeline.progress import log, progress
from pipeline.registry import MODELS

from .base import TrainContext, reference_codes


@dataclass
class FeatureConfig:
    """Options of ``data.features.compute_features``."""

    k: list[int] = field(default_factory=lambda: [10, 30])
    radii: list[float] = field(default_factory=list)
    height_cells: list[float] = field(default_factory=lambda: [2.0, 10.0, 30.0])
    intensity: bool = False       # raw intensity differs between sensors and surveys
    returns: bool = True
    normals: bool = False         # normal_x/y/z depend on orientation; verticality is kept

    def __post_init__(self) -> None:
        if any(k < 3 for k in self.k):
            raise UserError(f"features.k: every k must be >= 3, got {self.k}")
        if any(r <= 0 for r in self.radii) or any(c <= 0 for c in self.height_cells):
            raise UserError("features.radii / features.height_cells: sizes must be > 0")
        if not (self.k or self.radii):
            raise UserError("features: give at least one k or radius")


def mine(cloud: PointCloud, cfg: FeatureConfig) -> tuple[list[str], np.ndarray]:
    from data.features import compute_features

    names, values = compute_features(cloud, k=tuple(cfg.k), radii=tuple(cfg.radii),
                                     height_cells=tuple(cfg.height_cells), intensity=cfg.intensity,
                                     returns=cfg.returns)
    if cfg.normals:
        return names, values
    keep = [i for i, name in enumerate(names) if "_normal_" not in name]
    return [names[i] for i in keep], values[:, keep]


@MODELS.register("random_forest")
class RandomForestModel:
    #: Config keys ``run.py predict --set`` may change on a trained bundle.
    predict_options = ("n_jobs",)

    @dataclass
    class Config:
        features: FeatureConfig = field(default_factory=FeatureConfig)
        n_estimators: int = 100
        max_depth: int | None = 24
        min_samples_leaf: int = 2
        max_features: float = 0.3
        samples_per_class: int = 30000
        balanced: bool = True          # class_weight='balanced_subsample' on the sampled points
        n_jobs: int = -1

        def __post_init__(self) -> None:
            if self.n_estimators < 1 or self.samples_per_class < 1:
                raise UserError("n_estimators and samples_per_class must be >= 1")
            if not 0 < self.max_features <= 1:
                raise UserError(f"max_features must be in (0, 1], got {self.max_features}")

    def __init__(self, config: "RandomForestModel.Config", class_map: ClassMap):
        self.config = config
        self.class_map = class_map
        self.feature_names: list[str] | None = None
        self.estimator: Any = None

    # -- training ---------------------------------------------------------------------
    def fit(self, train: list[Path], val: list[Path], ctx: TrainContext) -> dict[str, Any]:
        from sklearn.ensemble import RandomForestClassifier

        cfg = self.config
        rng = np.random.default_rng(ctx.seed)
        xs, ys = [], []
        for path in progress(train, "features (train)", unit="file"):
            cloud = read_cloud(path)
            labels = self.class_map.encode(reference_codes(cloud), path)
            names, feats = mine(cloud, cfg.features)
            self._check_names(names, path)
            keep = labels != IGNORE
            xs.append(feats[keep])
            ys.append(labels[keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        idx = _balanced_sample(y, cfg.samples_per_class, rng)
        n_trees = cfg.n_estimators if ctx.limit_steps is None else max(1, min(cfg.n_estimators, ctx.limit_steps))
        log(f"random forest: {n_trees} trees on {len(idx):,} of {len(y):,} labelled points, "
            f"{x.shape[1]} features")
        self.estimator = RandomForestClassifier(
            n_estimators=n_trees, max_depth=cfg.max_depth, min_samples_leaf=cfg.min_samples_leaf,
            max_features=cfg.max_features, n_jobs=cfg.n_jobs, random_state=ctx.seed,
            class_weight="balanced_subsample" if cfg.balanced else None)
        self.estimator.fit(x[idx], y[idx])
        present = np.bincount(y, minlength=self.class_map.num_classes)
        summary: dict[str, Any] = {"train_points": int(len(y)), "sampled_points": int(len(idx)), "trees": n_trees,
                                   "features": self.feature_names,
                                   "train_class_counts": dict(zip(self.class_map.names, present.tolist()))}
        if val:
            from pipeline.evaluation import confusion_matrix, metrics_from_confusion

            cm = np.zeros((self.class_map.num_classes,) * 2, dtype=np.int64)
            for path in progress(val, "validation", unit="file"):
                cloud = read_cloud(path)
                ref = self.class_map.encode(reference_codes(cloud), path)
                cm += confusion_matrix(ref, self.predict_proba(cloud).argmax(1), self.class_map.num_classes)
            summary["val_miou"] = metrics_from_confusion(cm, self.class_map.names)["miou"]
            log(f"validation mIoU {summary['val_miou']:.4f}")
        return summary

    def _check_names(self, names: list[str], path: object) -> None:
        if self.feature_names is None:
            self.feature_names = list(names)
        elif list(names) != self.feature_names:
            missing = sorted(set(self.feature_names) - set(names))
            raise DataError(path, f"cannot compute feature(s) {missing} the model uses "
                                  "(is a field such as intensity or return_number missing?)")

    # -- inference ----------------------------------------------------------------------
    def predict_proba(self, cloud: PointCloud, device: str = "cpu") -> np.ndarray:
        names, feats = mine(cloud, self.config.features)
        self._check_names(names, cloud.source)
        proba = np.zeros((len(cloud), self.class_map.num_classes), dtype=np.float32)
        chunk = 200_000
        for start in range(0, len(cloud), chunk):
            part = self.estimator.predict_proba(feats[start:start + chunk])
            proba[start:start + chunk][:, self.estimator.classes_] = part
        return proba

    # -- bundle -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        with open(folder / "random_forest.pkl", "wb") as f:
            pickle.dump({"estimator": self.estimator, "feature_names": self.feature_names}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, config: "RandomForestModel.Config", class_map: ClassMap, folder: Path) -> "RandomForestModel":
        model = cls(config, class_map)
        with open(folder / "random_forest.pkl", "rb") as f:
            state = pickle.load(f)
        model.estimator, model.feature_names = state["estimator"], state["feature_names"]
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


__all__ = ["RandomForestModel", "FeatureConfig"]
