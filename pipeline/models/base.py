"""What a model component provides to the train and predict steps.

A model is constructed from its ``Config`` and the run's class map, trained with ``fit``,
saved into a bundle folder with ``save`` and rebuilt there with ``load``; ``predict`` turns
one point cloud into a :class:`Prediction`: class probabilities ``[N, num_classes]`` per
point, plus the 2-D map a grid model predicted (:class:`GridProduct`), which the prediction
writer (``pipeline.labelling``) writes as GeoTIFFs and a PNG preview.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.classmap import ClassMap
from data.errors import UserError
from data.pointcloud import PointCloud
from pipeline.datasets import LabelledFile


def load_torch_file(folder: Path, name: str) -> Any:
    """``torch.load`` of a bundle file, tensors and plain containers only (never runs code);
    a missing, empty, truncated or foreign file is a ``UserError`` naming the bundle."""
    import torch

    path = Path(folder) / name
    if not path.is_file():
        raise UserError(f"{folder}: broken bundle: {name} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors, truncation, foreign formats
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{folder}: broken bundle: {name} is not a weights file of this project ({detail})") from None


def load_weights(net: Any, state: Any, folder: Path, name: str) -> None:
    """``net.load_state_dict(state)`` with a clear error for missing, extra or wrong-shaped weights."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{folder}: broken bundle: {name} does not hold a mapping of tensors")
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        parts = ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else []) \
            + ([f"wrong shape {wrong[0]}: {tuple(state[wrong[0]].shape)} for {tuple(own[wrong[0]].shape)}"]
               if wrong else [])
        raise UserError(f"{folder}: {name} does not fit the bundle's model config ({'; '.join(parts)})")
    net.load_state_dict(state)


@dataclass
class GridProduct:
    """A prediction as a north-up 2-D map (``geometry.grids.Grid2D`` cells)."""

    grid: Any                   # geometry.grids.Grid2D
    class_index: np.ndarray     # [rows, cols] int, predicted class per cell
    proba: np.ndarray           # [rows, cols, C] float32
    mask: np.ndarray            # [rows, cols] bool, cells holding points
    title: str                  # preview title
    preview: bool = True        # also a PNG preview


@dataclass
class Prediction:
    """What a model predicts for one cloud."""

    proba: np.ndarray                   # [N, C] float32, every point, input order
    grid: GridProduct | None = None     # grid models: the map to write beside the labelled cloud


@dataclass
class TrainContext:
    """What a training run may use beyond the data: device, budget, seed, scratch folder."""

    device: str = "cpu"
    limit_steps: int | None = None     # trial run of this many steps, schedule scaled (--limit-steps)
    stop_after: int | None = None      # stop after this many steps, schedule kept (--stop-after)
    seed: int = 0
    work_dir: Path | None = None       # checkpoints and logs
    resume: bool = False


class Model(Protocol):
    """What every model component provides (the ``type:`` of a train step's ``model``)."""

    config: Any
    class_map: ClassMap
    #: dotted Config keys that ``run.py predict --set KEY=VALUE`` may change on a trained bundle
    predict_options: tuple[str, ...]

    def fit(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> dict[str, Any]:
        """Train on ``train`` (each item's ``read()`` gives a cloud and its labels, ``IGNORE``
        where a point is not to be learnt), validate on ``val``; returns a summary (shown and
        stored in the bundle)."""

    #: peak process memory per point of a whole cloud predicted at once (``pipeline.windows``
    #: sizes its windows with it)
    bytes_per_point: float

    @property
    def context(self) -> float | None:
        """Metres around a point whose points its label depends on (a window's halo), or None
        when the model cannot predict a tile window by window."""

    def predict(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                targets: np.ndarray | None = None) -> Prediction:
        """Probabilities ``[N, num_classes]`` float32 for every point of ``cloud`` (input order),
        and a grid model's 2-D products. ``anchor`` ``[3]``: where the model's placement grids
        start (default: the cloud's minimum; a window of a tile passes the tile's). ``targets``
        ``[N]`` bool: the points whose probabilities are wanted (a window's core); the others
        are context only, their rows any distribution, and a model may skip their work. The
        targets' rows are the ones a call without ``targets`` gives."""

    def save(self, folder: Path) -> None:
        """Write weights into ``folder`` (relative file names only)."""

    @classmethod
    def load(cls, config: Any, class_map: ClassMap, folder: Path) -> "Model":
        """Rebuild a trained model from ``save``'s files."""
