"""What a model component provides to the train and predict steps.

A model is constructed from its ``Config`` and the run's class map, trained with ``fit``,
saved into a bundle folder with ``save`` and rebuilt there with ``load``; ``predict_proba``
turns one point cloud into class probabilities ``[N, num_classes]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.classmap import ClassMap
from data.pointcloud import PointCloud
from pipeline.datasets import LabelledFile


@dataclass
class TrainContext:
    """What a training run may use beyond the data: device, budget, seed, scratch folder."""

    device: str = "cpu"
    limit_steps: int | None = None     # cap on optimisation steps (--limit-steps)
    seed: int = 0
    work_dir: Path | None = None       # checkpoints and logs
    resume: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class PointModel(Protocol):
    config: Any
    class_map: ClassMap
    #: dotted Config keys that ``run.py predict --set KEY=VALUE`` may change on a trained bundle
    predict_options: tuple[str, ...]

    def fit(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> dict[str, Any]:
        """Train on ``train`` (each item's ``read()`` gives a cloud and its labels, ``IGNORE``
        where a point is not to be learnt), validate on ``val``; returns a summary (shown and
        stored in the bundle)."""

    def predict_proba(self, cloud: PointCloud, device: str = "cpu") -> np.ndarray:
        """``[N, num_classes]`` float32 probabilities for every point of ``cloud``, input order."""

    def save(self, folder: Path) -> None:
        """Write weights into ``folder`` (relative file names only)."""

    @classmethod
    def load(cls, config: Any, class_map: ClassMap, folder: Path) -> "PointModel":
        """Rebuild a trained model from ``save``'s files."""
