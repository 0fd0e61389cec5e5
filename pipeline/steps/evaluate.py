"""``type: evaluate``: report on a predict step's outputs against reference labels."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.evaluation import evaluate_files, summary_line
from pipeline.progress import log
from pipeline.registry import STEPS
from pipeline.schema import SpecError
from pipeline.spec import check_output_name


@STEPS.register("evaluate")
class EvaluateStep:
    @dataclass
    class Config:
        predictions: str = "predict"               # name of a predict step of this spec
        reference: str | list[str] | None = None   # dataset/globs; default: classification_ref in predictions
        output: str = "evaluation"                 # folder inside the run's output folder
        views: bool = True                         # views/<stem>.png: prediction, reference, errors

    @staticmethod
    def check(cfg: "EvaluateStep.Config", loaded, key: str) -> None:
        check_output_name(loaded, f"{key}.output", cfg.output)
        names = [s.name for s in loaded.spec.steps_of("predict")]
        if cfg.predictions not in names:
            raise SpecError(str(loaded.path), f"{key}.predictions",
                            f"{cfg.predictions!r} is not a predict step of this spec ({names or 'none'})")
        here = next(i for i, s in enumerate(loaded.spec.steps) if s is cfg)
        before = [s.name for s in loaded.spec.steps_of("predict", upto=here)]
        if cfg.predictions not in before:
            raise SpecError(str(loaded.path), f"{key}.predictions",
                            f"predict step {cfg.predictions!r} comes after this evaluate step; move it before")

    @staticmethod
    def run(cfg: "EvaluateStep.Config", ctx, key: str) -> None:
        if cfg.predictions not in ctx.predictions:
            raise SpecError(str(ctx.loaded.path), f"{key}.predictions",
                            f"predict step {cfg.predictions!r} must run before this step")
        pairs = ctx.predictions[cfg.predictions]
        preds = [out for _, out in pairs]
        if cfg.reference:
            labelled = ctx.resolve_labelled(cfg.reference, f"{key}.reference")
            refs = [f.path for f in labelled]
            by_stem = {f.path.stem: f.class_map for f in labelled}
            maps = [by_stem.get(p.stem, ctx.class_map) for p in preds]
        else:
            refs = None
            step = next(s for s in ctx.loaded.spec.steps_of("predict") if s.name == cfg.predictions)
            by_input = {f.path: f.class_map for f in ctx.resolve_labelled(step.inputs, f"{key}.predictions")}
            maps = [by_input.get(src, ctx.class_map) for src, _ in pairs]
        report = evaluate_files(preds, refs, ctx.class_map, ctx.out_dir / cfg.output, ref_maps=maps, views=cfg.views)
        log(f"evaluation: {summary_line(report)} -> {ctx.out_dir / cfg.output}")
