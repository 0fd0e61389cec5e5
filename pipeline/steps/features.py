"""``type: features``: mine geometric features and write them as extra dimensions.

Useful to inspect features in a viewer (CloudCompare, QGIS) or to feed other tools: each
input cloud is written to ``OUT/<output>/<stem>.<suffix>`` with every input dimension plus
one float32 extra dimension per feature (``k10_planarity``, ``hag_c2.0``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.io import read_cloud, write_cloud
from pipeline.models.random_forest import FeatureConfig, mine
from pipeline.predict import output_path
from pipeline.progress import log, progress
from pipeline.registry import STEPS


@STEPS.register("features")
class FeaturesStep:
    @dataclass
    class Config:
        inputs: str | list[str] = "train"
        features: FeatureConfig = field(default_factory=FeatureConfig)
        output: str = "features"     # folder inside the run's output folder

    @staticmethod
    def run(cfg: "FeaturesStep.Config", ctx, key: str) -> None:
        inputs = ctx.resolve_inputs(cfg.inputs, f"{key}.inputs")
        out_dir = ctx.out_dir / cfg.output
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in progress(inputs, "features", unit="file"):
            cloud = read_cloud(path)
            names, values = mine(cloud, cfg.features)
            target = output_path(path, out_dir)
            write_cloud(cloud, target, extra={n.replace(".", "_"): values[:, i] for i, n in enumerate(names)})
            log(f"{path.name}: {len(names)} features -> {target}")
