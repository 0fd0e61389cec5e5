"""``type: evaluate``: report on a predict step's outputs against reference labels."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.evaluation import evaluate_files
from pipeline.registry import STEPS
from pipeline.schema import SpecError


@STEPS.register("evaluate")
class EvaluateStep:
    @dataclass
    class Config:
        predictions: str = "predict"               # name of a predict step of this spec
        reference: str | list[str] | None = None   # dataset/globs; default: classification_ref in predictions
        output: str = "evaluation"                 # folder inside the run's output folder

    @staticmethod
    def check(cfg: "EvaluateStep.Config", loaded, key: str) -> None:
        names = [s.name for s in loaded.spec.steps if type(s).component_type == "predict"]
        if cfg.predictions not in names:
            raise SpecError(str(loaded.path), f"{key}.predictions",
                            f"{cfg.predictions!r} is not a predict step of this spec ({names or 'none'})")

    @staticmethod
    def run(cfg: "EvaluateStep.Config", ctx, key: str) -> None:
        if cfg.predictions not in ctx.predictions:
            raise SpecError(str(ctx.loaded.path), f"{key}.predictions",
                            f"predict step {cfg.predictions!r} must run before this step")
        pairs = ctx.predictions[cfg.predictions]
        preds = [out for _, out in pairs]
        refs = ctx.resolve_inputs(cfg.reference, f"{key}.reference") if cfg.reference else None
        evaluate_files(preds, refs, ctx.class_map, ctx.out_dir / cfg.output)
