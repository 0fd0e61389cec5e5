"""``type: train``: fit a model component and write ``OUT/NAME.bundle``.

Validation data is ``val_split`` (blocks carved out of the training files,
:class:`pipeline.datasets.ValSplit`), ``val_inputs`` (whole held-out files, e.g. a survey the
training never sees) or both: the sets are scored apart (``miou_blocks``, ``miou_held_out``)
and pooled (``miou``, which picks the checkpoint). A validation file that a predict step of
the same spec also labels is reported as a warning, since a model picked on it is then
scored on the data that chose it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np

from data.errors import UserError
from data.io import read_header_info
from pipeline.audit import bbox_density
from pipeline import distributed
from pipeline.bundle import save_bundle
from pipeline.datasets import ValSplit
from pipeline.models import base
from pipeline.progress import log
from pipeline.registry import MODELS, STEPS
from pipeline.schema import Component, SpecError
from pipeline.validation import train_and_validation


def _summary_line(summary: dict) -> str:
    """A short human summary of a training (the full summary is in the bundle's bundle.json)."""
    parts = []
    for key, fmt in (("steps", "{} steps"), ("trees", "{} trees"), ("best_val_miou", "best val mIoU {:.4f}"),
                     ("val_miou", "val mIoU {:.4f}"), ("best_step", "at step {}")):
        if summary.get(key) is not None:
            parts.append(fmt.format(summary[key]))
    return ", ".join(parts)


@STEPS.register("train")
class TrainStep:
    @dataclass
    class Config:
        model: Component(MODELS)
        inputs: str | list[str] = "train"           # dataset name(s) from 'inputs', or globs
        val_inputs: str | list[str] | None = None   # held-out files for validation mIoU
        val_split: ValSplit | None = None           # or: validation blocks carved out of 'inputs'
        name: str = "model"                         # bundle: OUT/NAME.bundle

    @staticmethod
    def check(cfg: "TrainStep.Config", loaded, key: str) -> None:
        if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
            raise SpecError(str(loaded.path), f"{key}.name", f"{cfg.name!r} is not a plain file name")

    @staticmethod
    def run(cfg: "TrainStep.Config", ctx, key: str) -> None:
        train, val, held_out = train_and_validation(cfg, ctx, key)
        if cfg.val_inputs:
            overlap = sorted({f.path.name for f in held_out if f.path in {t.path for t in train}})
            if overlap:
                log(f"warning: {key}.val_inputs: {', '.join(overlap)} also trained on: its figure is not a "
                    "held-out one")
            predicted = {p for s in ctx.loaded.spec.steps_of("predict") for p in ctx.resolve_inputs(s.inputs, key)}
            leaked = sorted({f.path.name for f in val if f.path in predicted})
            if leaked:
                log(f"warning: {key}: validation file(s) {', '.join(leaked)} are also labelled by a predict step; "
                    "the weights are then picked on the data that scores them (use val_split)")
        entry = MODELS.for_config(cfg.model)
        model = entry.target(cfg.model, ctx.class_map)
        work = ctx.out_dir / f"{cfg.name}.work"
        if (work / "last.pt").exists() and not ctx.resume:
            if not ctx.overwrite:
                raise UserError(f"{work}: holds the checkpoint of an earlier training; add --resume to continue "
                                "it or --overwrite to train again from step 0")
            if distributed.is_main():
                shutil.rmtree(work)
            distributed.barrier()
        tctx = base.TrainContext(device=ctx.device, limit_steps=ctx.limit_steps, seed=ctx.seed, work_dir=work,
                                 resume=ctx.resume, stop_after=ctx.stop_after)
        sets = ([f"{cfg.val_split.fraction:.0%} of their points in {cfg.val_split.block:g} m blocks"]
                if cfg.val_split is not None else []) + ([f"{len(held_out)} held-out file(s)"] if cfg.val_inputs else [])
        how = f", validating on {' and '.join(sets)}" if sets else ""
        log(f"training {entry.name} on {len(train)} file(s){how}")
        densities = [bbox_density(read_header_info(f.path)) for f in train]
        summary = model.fit(train, val, tctx)
        summary["train_density"] = {"median": float(np.median(densities)), "min": float(min(densities)),
                                    "max": float(max(densities))}
        summary["train_files"] = [f.label for f in train]
        summary["val_files"] = [f.label for f in val]
        path = ctx.out_dir / f"{cfg.name}.bundle"
        if distributed.is_main():   # under torchrun rank 0 writes the bundle; the others wait for it
            save_bundle(path, model, ctx.class_map, summary, attachments={"curves.png": work / "curves.png"})
        distributed.barrier()
        ctx.bundles[cfg.name] = path
        log(f"bundle -> {path}" + (f"  ({line})" if (line := _summary_line(summary)) else ""))
