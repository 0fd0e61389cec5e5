"""``type: train``: fit a model component and write ``OUT/NAME.bundle``."""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.bundle import save_bundle
from pipeline.models import base
from pipeline.progress import log
from pipeline.registry import MODELS, STEPS
from pipeline.schema import Component, SpecError

from .. import models as _models  # noqa: F401  (registers model types)


@STEPS.register("train")
class TrainStep:
    @dataclass
    class Config:
        model: Component(MODELS)
        inputs: str | list[str] = "train"           # dataset name(s) from 'inputs', or globs
        val_inputs: str | list[str] | None = None   # held-out files for validation mIoU
        name: str = "model"                         # bundle: OUT/NAME.bundle

    @staticmethod
    def check(cfg: "TrainStep.Config", loaded, key: str) -> None:
        if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
            raise SpecError(str(loaded.path), f"{key}.name", f"{cfg.name!r} is not a plain file name")

    @staticmethod
    def run(cfg: "TrainStep.Config", ctx, key: str) -> None:
        train = ctx.resolve_inputs(cfg.inputs, f"{key}.inputs")
        val = ctx.resolve_inputs(cfg.val_inputs, f"{key}.val_inputs") if cfg.val_inputs else []
        entry = MODELS.for_config(cfg.model)
        model = entry.target(cfg.model, ctx.class_map)
        work = ctx.out_dir / f"{cfg.name}.work"
        tctx = base.TrainContext(device=ctx.device, limit_steps=ctx.limit_steps, seed=ctx.seed, work_dir=work,
                                 resume=ctx.resume)
        log(f"training {entry.name} on {len(train)} file(s)" + (f", validating on {len(val)}" if val else ""))
        summary = model.fit(train, val, tctx)
        summary["train_files"] = [p.name for p in train]
        summary["val_files"] = [p.name for p in val]
        path = save_bundle(ctx.out_dir / f"{cfg.name}.bundle", model, ctx.class_map, summary)
        ctx.bundles[cfg.name] = path
        log(f"bundle -> {path}  ({json.dumps({k: v for k, v in summary.items() if 'val' in k})})")
