"""``type: features``: mine geometric features and write them as extra dimensions.

Useful to inspect features in a viewer (CloudCompare, QGIS) or to feed other tools: each
input cloud is written to ``OUT/<output>/<stem>.<suffix>`` with every input dimension plus
one float32 extra dimension per feature, named ``feat_<feature>`` with dots as underscores
(``feat_k10_planarity``, ``feat_hag_c2_0``, ...): the prefix keeps mined features apart from
the standard LAS dimensions (a mined ``number_of_returns`` would otherwise replace the
input's own).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.io import read_cloud, write_cloud
from pipeline.mining import FeatureConfig, mine
from pipeline.labelling import output_path
from pipeline.progress import log, progress
from pipeline.registry import STEPS
from pipeline.spec import check_output_name


@STEPS.register("features")
class FeaturesStep:
    @dataclass
    class Config:
        inputs: str | list[str] = "train"
        features: FeatureConfig = field(default_factory=FeatureConfig)
        output: str = "features"     # folder inside the run's output folder

    @staticmethod
    def check(cfg: "FeaturesStep.Config", loaded, key: str) -> None:
        check_output_name(loaded, f"{key}.output", cfg.output)

    @staticmethod
    def run(cfg: "FeaturesStep.Config", ctx, key: str) -> None:
        inputs = ctx.resolve_inputs(cfg.inputs, f"{key}.inputs")
        out_dir = ctx.out_dir / cfg.output
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in progress(inputs, "features", unit="file"):
            cloud = read_cloud(path)
            names, values = mine(cloud, cfg.features)
            target = output_path(path, out_dir)
            extra = {dimension_name(n): values[:, i] for i, n in enumerate(names)}
            write_cloud(cloud, target, extra=extra)
            log(f"{path.name}: {len(extra)} features -> {target}")


def dimension_name(feature: str) -> str:
    """The extra-dimension name of a mined feature: ``feat_`` + its name, dots as underscores."""
    return "feat_" + feature.replace(".", "_")
