"""``type: predict``: label clouds with a bundle (trained earlier in the spec, or a path)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data.bounds import Bounds, bounds_problem
from data.errors import UserError
from pipeline.bundle import load_bundle
from pipeline.labelling import Memory, OutputOptions, predict_with_bundle
from pipeline.layouts import OUTPUT_FORMATS, check_vegetation_heights, vegetation_heights_problem
from pipeline.registry import STEPS
from pipeline.schema import SpecError, option
from pipeline.shipped import resolve_model, shipped_models
from pipeline.spec import check_output_name
from pipeline.window_grid import memory_budget


@STEPS.register("predict")
class PredictStep:
    @dataclass
    class Config:
        inputs: str | list[str] = "test"
        model: str = "model"            # a train step of this spec, a shipped model's name or a bundle path
        name: str = "predict"
        output: str = "predictions"     # folder inside the run's output folder
        probabilities: bool = False     # also write prob_<class> extra dimensions
        format: Literal[OUTPUT_FORMATS] = "same"   # "copc": <stem>.copc.laz (data/copc.py)
        layout: Literal["lidarseg", "myria3d"] = "lidarseg"   # where predictions go (pipeline/layouts.py)
        vegetation_heights: list[float] | None = None   # [low, high] m: vegetation written as ASPRS 3/4/5
        preview: bool = False           # <stem>_view.png: top and oblique views (data/render.py)
        buffer: float = option(min=0, default=0.0)   # metres of neighbouring inputs' points as context
        bounds: list[float] | None = None   # [xmin, ymin, xmax, ymax]: predict only this window (data/bounds.py)
        max_memory: str | None = None   # e.g. "3G": larger LAS/LAZ files in windows (pipeline/windows.py)
        window: float | None = option(min=0, exclusive=True, default=None)   # metres: always in windows

        def output_options(self, class_map, key: str) -> OutputOptions:
            return OutputOptions(self.probabilities, self.layout,
                                 check_vegetation_heights(self.vegetation_heights, class_map, f"{key}.vegetation_heights"),
                                 self.preview)

    @staticmethod
    def check(cfg: "PredictStep.Config", loaded, key: str) -> None:
        check_output_name(loaded, f"{key}.output", cfg.output)
        problem = None if cfg.vegetation_heights is None else \
            vegetation_heights_problem(cfg.vegetation_heights, loaded.class_map)
        if problem:
            raise SpecError(str(loaded.path), f"{key}.vegetation_heights", problem)
        if cfg.max_memory is not None:
            try:
                memory_budget(cfg.max_memory)
            except UserError as exc:
                raise SpecError(str(loaded.path), f"{key}.max_memory", str(exc).split(": ", 1)[1]) from None
        problem = None if cfg.bounds is None else bounds_problem(cfg.bounds)
        if problem:
            raise SpecError(str(loaded.path), f"{key}.bounds", problem)
        for name in [cfg.inputs] if isinstance(cfg.inputs, str) else cfg.inputs:
            items = loaded.spec.inputs.get(name, [])
            for i, item in enumerate([items] if isinstance(items, str) else items):
                if getattr(item, "bounds", None) is not None:
                    raise SpecError(str(loaded.path), f"inputs.{name}[{i}].bounds",
                                    f"a window on predict inputs goes in the predict step ({key}.bounds), "
                                    "which applies it to every input")
        trained = [s.name for s in loaded.spec.steps_of("train")]
        if cfg.model not in trained and cfg.model not in shipped_models() and not cfg.model.endswith(".bundle"):
            raise SpecError(str(loaded.path), f"{key}.model",
                            f"{cfg.model!r} is neither a train step of this spec ({trained or 'none'}), "
                            f"a shipped model ({shipped_models() or 'none'}) nor a path to a .bundle")

    @staticmethod
    def run(cfg: "PredictStep.Config", ctx, key: str) -> None:
        if cfg.model in ctx.bundles:
            path = ctx.bundles[cfg.model]
        elif cfg.model in shipped_models() and not cfg.model.endswith(".bundle"):
            path = resolve_model(cfg.model)[0]
        else:
            path = ctx.loaded.folder / cfg.model      # an absolute path stays as it is
        bundle = load_bundle(path)
        inputs = ctx.resolve_inputs(cfg.inputs, f"{key}.inputs")
        ctx.predictions[cfg.name] = predict_with_bundle(
            bundle, inputs, ctx.out_dir / cfg.output, device=ctx.device,
            options=cfg.output_options(bundle.class_map, key), fmt=cfg.format, buffer=cfg.buffer,
            bounds=None if cfg.bounds is None else Bounds.of(cfg.bounds, f"{key}.bounds"),
            resumable=False,     # a spec's run is resumed by the runner (--resume), not by sidecars
            memory=Memory(memory_budget(cfg.max_memory), cfg.window))
