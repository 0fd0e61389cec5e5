"""The validation sets of a spec's train step, read outside training (benchmarks, error reports).

The same data training validates on (``pipeline.steps.train``): the ``val_split`` blocks of
the step's training files (points outside the blocks carry ``IGNORE``) and its ``val_inputs``
files; never the test tiles. Each entry is tagged with its set, ``blocks`` or ``held_out``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import UserError
from data.pointcloud import PointCloud

from .datasets import LabelledFile, split_files
from .runner import RunContext
from .spec import load_spec


@dataclass
class ValidationFile:
    """One validation file: the cloud, ``labels [N]`` class indices (``IGNORE`` outside its
    blocks or on ignored codes) and its set (``blocks`` or ``held_out``)."""

    cloud: PointCloud
    labels: np.ndarray
    group: str


def train_and_validation(step: Any, ctx: RunContext, key: str
                         ) -> tuple[list[LabelledFile], list[LabelledFile], list[LabelledFile]]:
    """``(training parts, validation files, held-out files)`` of a train step's config ``step``:
    the ``val_split`` blocks of its ``inputs`` first, then its ``val_inputs`` files (the
    held-out ones, also returned apart); ``key`` names the step in error messages."""
    train = ctx.resolve_labelled(step.inputs, f"{key}.inputs")
    val: list[LabelledFile] = []
    if step.val_split is not None:
        train, val = split_files(train, step.val_split)
    held_out = ctx.resolve_labelled(step.val_inputs, f"{key}.val_inputs") if step.val_inputs else []
    return train, val + held_out, held_out


def validation_sets(spec: Path, step_name: str = "model") -> list[ValidationFile]:
    """The validation files of train step ``step_name`` of ``spec``, in training's order."""
    loaded = load_spec(spec)
    steps = [s for s in loaded.spec.steps_of("train") if s.name == step_name]
    if not steps or (steps[0].val_split is None and not steps[0].val_inputs):
        raise UserError(f"{spec}: no train step named {step_name!r} with a val_split or val_inputs")
    val = train_and_validation(steps[0], RunContext(loaded, loaded.output_dir()), step_name)[1]
    out = []
    for item in val:
        cloud, labels = item.read()
        out.append(ValidationFile(cloud, labels, item.val_group))
    return out


__all__ = ["ValidationFile", "train_and_validation", "validation_sets"]
