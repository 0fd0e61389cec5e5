"""The validation sets of a spec's train step, read outside training (benchmarks, error reports).

The same data training validates on (``pipeline.steps.train``): the ``val_split`` blocks of
the step's training files (points outside the blocks carry ``IGNORE``) and its ``val_inputs``
files; never the test tiles. Each entry is tagged with its set, ``blocks`` or ``held_out``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.errors import UserError
from data.pointcloud import PointCloud

from .datasets import split_files
from .runner import RunContext
from .spec import load_spec


@dataclass
class ValidationFile:
    """One validation file: the cloud, ``labels [N]`` class indices (``IGNORE`` outside its
    blocks or on ignored codes) and its set (``blocks`` or ``held_out``)."""

    cloud: PointCloud
    labels: np.ndarray
    group: str


def validation_sets(spec: Path, step_name: str = "model") -> list[ValidationFile]:
    """The validation files of train step ``step_name`` of ``spec``, in training's order."""
    loaded = load_spec(spec)
    steps = [s for s in loaded.spec.steps_of("train") if s.name == step_name]
    if not steps or (steps[0].val_split is None and not steps[0].val_inputs):
        raise UserError(f"{spec}: no train step named {step_name!r} with a val_split or val_inputs")
    step = steps[0]
    ctx = RunContext(loaded, loaded.output_dir())
    val = split_files(ctx.resolve_labelled(step.inputs, "inputs"), step.val_split)[1] if step.val_split else []
    if step.val_inputs:
        val += ctx.resolve_labelled(step.val_inputs, "val_inputs")
    out = []
    for item in val:
        cloud, labels = item.read()
        out.append(ValidationFile(cloud, labels, item.val_group))
    return out


__all__ = ["ValidationFile", "validation_sets"]
