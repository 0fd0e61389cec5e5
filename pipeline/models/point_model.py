"""The point model component: ``model: {type: point, network: {type: kpconvx | point_transformer, ...}}``.

Training draws class-balanced spheres (or vertical cylinders) from the training tiles,
augments them (rotation about z, scaling, flips, jitter, feature dropout, thinning, vertical
stretch) and optimises the network chosen in ``network`` (:mod:`pipeline.models.networks`:
KPConvX, or Point Transformer blocks on the same hierarchy) in the shared skeleton
(:class:`pipeline.models.torch_model.TorchModel`: class weights, prior correction, AdamW with
warm-up and a cosine/step schedule, validation every ``val_every`` steps, best checkpoint kept,
``--resume`` from ``OUT/NAME.work/last.pt``).

Prediction covers every point with overlapping regions on a regular grid
(:mod:`pipeline.regions`), averages the softmax per original point over regions
and ``votes`` (rotated copies, shifted grids), and runs regions through the network in passes
of at most ``points_per_pass`` points (bounded memory).

Input channels per point (``channels``): ``pipeline.models.point_inputs``; the non-geometric
ones are standardised with the training points' mean and standard deviation (in the bundle).
Optionally (``condition``) each region's statistics (``pipeline.models.region_stats``: point
density, multiple-return share, intensity scale) FiLM-modulate the network's encoder stages.

The earlier model types ``kpconvx`` and ``point_transformer`` (``preset`` and ``network`` on the
model) are read as this component with that network (:func:`_from_earlier_form`).

Bundle files: ``weights.pt`` (the network's state_dict, CPU tensors; loads anywhere with
``map_location``) and ``<network type>_model.json`` (resolved network config, feature columns,
normalisation statistics, training class counts).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.classmap import IGNORE, ClassMap
from data.errors import UserError
from data.pointcloud import PointCloud
from pipeline.cpu_share import pass_workers
from pipeline.datasets import LabelledFile
from pipeline.priors import adjust_logits
from pipeline.progress import log, progress
from pipeline.registry import MODELS, NETWORKS
from pipeline.regions import (AugmentConfig, ClassBalancedCenters, Region, RegionSampler, SamplingConfig, augment,
                              predict_coverage, rotation_z, sampled_class_counts, stretch_heights)
from pipeline.schema import Component, keys_where, option
from pipeline.training import OptimConfig, amp_autocast, partial_label_loss

from .base import Prediction, TrainContext, load_torch_file, load_weights
from .point_inputs import FEATURES, GROUND_WINDOW, HEIGHT_COLUMNS, FeatureName, feature_columns, point_feature_matrix
from .region_stats import RegionStat, point_stat_columns, region_statistics
from .torch_model import TorchModel, TrainingData

@dataclass
class LossConfig:
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = "sqrt_inverse"   # from training counts
    label_smoothing: float = 0.0
    #: add log(p_train / p_seen) to the logits at inference (pipeline.priors), p_seen being the
    #: class shares of the points the network trained on (class-balanced centres) times the
    #: class weights: the posterior under the training data's own priors
    prior_correction: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def _default_network() -> Any:
    return NETWORKS.get("kpconvx").config()


@MODELS.register("point")
class PointNetworkModel(TorchModel):
    """A point network (``network.type``) on sampled regions of the point clouds."""

    #: peak process memory per point of a whole cloud predicted at once (pipeline.windows
    #: sizes windows with it; measured: benchmarks/README.md, "Whole tiles in bounded memory")
    bytes_per_point = 460.0

    @dataclass
    class Config:
        network: Component(NETWORKS) = field(default_factory=_default_network)
        #: the network's input channels per point (``pipeline.models.point_inputs``)
        channels: list[FeatureName] = option(was="features", default_factory=lambda: ["xyz", "intensity", "returns",
                                                                                   "height"])
        height_cell: float = option(min=0, exclusive=True, default=10.0)   # metres, for the 'height' channel
        #: per-region statistics that FiLM-modulate the encoder stages (``pipeline.models.region_stats``)
        condition: list[RegionStat] = field(default_factory=list)
        sampling: SamplingConfig = field(default_factory=SamplingConfig)
        augment: AugmentConfig = field(default_factory=AugmentConfig)
        loss: LossConfig = field(default_factory=LossConfig)
        optim: OptimConfig = field(default_factory=OptimConfig)
        batch_size: int = option(min=1, default=4)                  # regions per optimisation step
        steps: int = option(min=1, resume=False, default=20000)     # optimisation steps (unless epochs)
        epochs: int | None = option(min=1, resume=False, default=None)  # steps = epochs * steps_per_epoch
        steps_per_epoch: int = option(min=1, resume=False, default=500)
        val_every: int = option(min=1, resume=False, default=1000)  # validate every N steps (and at the end)
        checkpoint_every: int = option(min=1, resume=False, default=500)
        val_votes: int = option(min=1, resume=False, default=1)
        votes: int = option(min=1, predict=True, resume=False, default=3)  # test-time votes (rotations, shifts)
        points_per_pass: int = option(min=1, predict=True, resume=False, was="block_points", default=200_000)  # per forward pass

        def __post_init__(self) -> None:
            for key in ("channels", "condition"):
                values = getattr(self, key)
                if len(set(values)) != len(values):
                    raise UserError(f"{key}: duplicates in {values}")
            if self.augment.stretches and "ground" not in self.channels:
                raise UserError("augment.stretch_z needs the 'ground' channel (height above the ground model)")

        @property
        def total_steps(self) -> int:
            return self.epochs * self.steps_per_epoch if self.epochs is not None else self.steps

        @property
        def class_weight_power(self) -> float | None:
            return {"none": None, "inverse": 1.0, "sqrt_inverse": 0.5}[self.loss.class_weights]

        @property
        def prior_correction(self) -> bool:
            return self.loss.prior_correction

    #: Config keys ``run.py predict --set`` may change on a trained bundle (``option(predict=True)``)
    predict_options = keys_where(Config, "predict")

    def __init__(self, config: "PointNetworkModel.Config", class_map: ClassMap):
        super().__init__(config, class_map)
        self.network = NETWORKS.for_config(config.network)
        self.kind = f"{self.network.name} ({config.network.preset})"
        self.meta_file = f"{self.network.name}_model.json"
        self.net_cfg = config.network.resolve()
        self.geo_cols, self.pt_cols = feature_columns(list(config.channels))
        #: standardised columns that are heights (scaled by augment.stretch_z)
        self.height_cols = [i for i, c in enumerate(self.pt_cols) if c in HEIGHT_COLUMNS]
        self.mean = np.zeros(len(self.pt_cols), np.float32)
        self.std = np.ones(len(self.pt_cols), np.float32)
        self.class_counts: list[int] | None = None

    @property
    def in_channels(self) -> int:
        return len(self.geo_cols) + len(self.pt_cols)

    def build_net(self):
        return self.network.target.build(self.in_channels, self.class_map.num_classes, self.net_cfg,
                                         len(self.config.condition))

    # -- features -----------------------------------------------------------------------
    def _inputs(self, regions: list[Region], tiles_feats: list[np.ndarray], tiles_stats: list[np.ndarray],
                rng: np.random.Generator | None, angle: float = 0.0):
        """Packed ``(xyz [P,3], features [P,F], batch [P], cond [B,D] | None)`` for ``regions``
        (``tiles_stats``: each tile's :func:`point_stat_columns`; ``cond`` from the regions'
        points before augmentation, None without ``condition``)."""
        cfg = self.config
        xs, fs, bs = [], [], []
        cond = None
        if cfg.condition:
            cond = region_statistics(np.concatenate([r.xyz for r in regions]),
                                     np.concatenate([tiles_stats[r.tile][r.index] for r in regions]),
                                     np.repeat(np.arange(len(regions)), [len(r.index) for r in regions]),
                                     len(regions), list(cfg.condition))
        for b, r in enumerate(regions):
            raw, xyz = tiles_feats[r.tile][r.index], r.xyz
            if rng is not None and cfg.augment.stretches:
                factor = rng.uniform(*cfg.augment.stretch_z)
                hag = raw[:, self.pt_cols.index("hag_ground")]
                xyz, raw = stretch_heights(xyz, raw, hag, self.height_cols, factor)
            pf = (raw - self.mean) / self.std
            if rng is not None:
                xyz, pf = augment(xyz, pf, cfg.augment, rng)
            else:
                xyz = r.xyz @ rotation_z(angle).astype(np.float32).T
            geo = [np.ones((len(xyz), 1), np.float32)]
            if "xyz" in cfg.channels:
                geo.append(xyz / cfg.sampling.radius)
            xs.append(xyz.astype(np.float32))
            fs.append(np.concatenate(geo + [pf.astype(np.float32)], axis=1))
            bs.append(np.full(len(xyz), b, np.int64))
        return np.concatenate(xs), np.concatenate(fs), np.concatenate(bs), cond

    def _forward(self, xyz: np.ndarray, feats: np.ndarray, batch: np.ndarray, cond: np.ndarray | None,
                 device: str, net=None):
        """Logits of packed regions; ``net``: the module to call (the trainer's, under torchrun)."""
        import torch

        extra = {} if cond is None else {"cond": torch.from_numpy(cond).to(device)}
        return (net or self.net)(torch.from_numpy(xyz).to(device), torch.from_numpy(feats).to(device),
                                 torch.from_numpy(batch).to(device), **extra)

    # -- training -----------------------------------------------------------------------
    def _load_labelled(self, items: list[LabelledFile], what: str):
        """``(xyz, features, labels, candidates, stat columns)`` lists, one entry per file;
        ``candidates[i]``: ``[N, C]`` bool of the ambiguous codes' class sets, or None
        (``LabelledFile.candidates``); stat columns: :func:`point_stat_columns` of ``condition``."""
        xyzs, feats, labels, cands, stats = [], [], [], [], []
        for item in progress(items, f"reading ({what})", unit="file"):
            cloud, y = item.read()
            labels.append(y)
            cands.append(item.candidates(cloud))
            feats.append(point_feature_matrix(cloud, list(self.config.channels), self.config.height_cell))
            stats.append(point_stat_columns(cloud, list(self.config.condition)))
            xyzs.append(np.asarray(cloud.xyz, np.float64))
        return xyzs, feats, labels, cands, stats

    def load_training(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> TrainingData:
        cfg, C = self.config, self.class_map.num_classes
        xyzs, feats, labels, cands, stats = self._load_labelled(train, "train")
        allf = np.concatenate(feats) if feats else np.zeros((0, len(self.pt_cols)), np.float32)
        self.mean = allf.mean(0).astype(np.float32) if len(allf) else self.mean
        self.std = np.maximum(allf.std(0), 1e-6).astype(np.float32) if len(allf) else self.std
        del allf
        counts = np.bincount(np.concatenate([y[y != IGNORE] for y in labels]), minlength=C)
        self.class_counts = counts.tolist()
        self._train = (xyzs, feats, labels, cands, stats)
        self._centers = ClassBalancedCenters(labels, C, cfg.sampling.class_balanced)
        self._sampler = RegionSampler(xyzs, cfg.sampling)
        vxyz, vfeats, vlabels, _, vstats = self._load_labelled(val, "validation") if val else ([],) * 5
        vdata = list(zip(vxyz, vfeats, vlabels, vstats))
        self._ambiguous = sum(int(c.any(1).sum()) for c in cands if c is not None)
        if self._ambiguous:
            log(f"{self._ambiguous:,} training points of ambiguous codes (partial-label loss over their class sets)")
        seen = sampled_class_counts(self._centers, self._sampler, labels, C, ctx.seed) if self.config.prior_correction \
            else None
        summary = {"train_class_counts": dict(zip(self.class_map.names, self.class_counts)),
                   "normalisation": {"columns": self.pt_cols, "mean": self.mean.tolist(), "std": self.std.tolist()}}
        what = (f"{self.in_channels} input channels, {sum(map(len, labels)):,} training points, batches of "
                f"{cfg.batch_size} {cfg.sampling.shape}s of radius {cfg.sampling.radius} m")
        return TrainingData(counts, vdata, seen, summary, what)

    def train_step(self, step: int, rng: np.random.Generator, net: Any, ctx: TrainContext):
        import torch

        cfg, C = self.config, self.class_map.num_classes
        xyzs, feats, labels, cands, stats = self._train
        tiles, rows, _ = self._centers.draw(cfg.batch_size, rng)
        regions = [self._sampler.regions(int(t), xyzs[t][r][None])[0] for t, r in zip(tiles, rows)]
        if cfg.augment.thins:
            regions = [r.thinned(rng.uniform(*cfg.augment.thin), rng) for r in regions]
        xyz, f, b, cond = self._inputs(regions, feats, stats, rng)
        y = torch.from_numpy(np.concatenate([labels[r.tile][r.index] for r in regions])).to(ctx.device)
        logits = self._forward(xyz, f, b, cond, ctx.device, net).float()
        cand = None
        if self._ambiguous:
            cand = np.concatenate([cands[r.tile][r.index] if cands[r.tile] is not None
                                   else np.zeros((len(r.index), C), bool) for r in regions])
        loss_fn = torch.nn.CrossEntropyLoss(weight=self.loss_weights, ignore_index=IGNORE,
                                            label_smoothing=cfg.loss.label_smoothing)
        return partial_label_loss(loss_fn, logits, y, cand, self.loss_weights), {"points": int(len(xyz))}

    def val_labels(self, data: Any, device: str) -> tuple[np.ndarray, np.ndarray]:
        xyz, f, y, stats = data
        proba, _ = self._proba(xyz, f, stats, device, self.config.val_votes)
        return y, proba.argmax(1)

    # -- inference ----------------------------------------------------------------------
    def _proba(self, xyz: np.ndarray, feats: np.ndarray, stats: np.ndarray, device: str, votes: int,
               anchor: np.ndarray | None = None, targets: np.ndarray | None = None,
               sampler: RegionSampler | None = None) -> tuple[np.ndarray, int]:
        import torch

        cfg = self.config
        self.net.eval()

        def run_pass(regions: list[Region], angle: float) -> np.ndarray:
            x, f, b, cond = self._inputs(regions, [feats], [stats], None, angle=angle)
            with torch.no_grad(), amp_autocast(cfg.optim, device):
                logits = self._forward(x, f, b, cond, device)
            return torch.softmax(adjust_logits(logits.float(), self.logit_bias), dim=1).cpu().numpy()

        with pass_workers(device) as workers:
            return predict_coverage(xyz, self.class_map.num_classes, cfg.sampling, run_pass, votes=votes,
                                    points_per_pass=cfg.points_per_pass, workers=workers, anchor=anchor,
                                    targets=targets, sampler=sampler,
                                    progress=lambda it, desc, total: progress(it, desc, total=total, unit="chunk"))

    @property
    def context(self) -> float:
        """Metres around a point whose points its label depends on: the regions reaching it
        (2 radii) and the ground model and height blocks of its channels."""
        return 2 * self.config.sampling.radius + max(GROUND_WINDOW, 1.5 * self.config.height_cell)

    def predict_proba(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                      targets: np.ndarray | None = None) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        self.to_device(device)
        xyz = np.asarray(cloud.xyz, np.float64)
        # the regions' k-d tree is built in a second thread while the point features (ground
        # model, columns: NumPy on one core) are computed
        with ThreadPoolExecutor(max_workers=1) as pool:
            sampler = pool.submit(RegionSampler, [xyz], self.config.sampling)
            feats = point_feature_matrix(cloud, list(self.config.channels), self.config.height_cell)
            stats = point_stat_columns(cloud, list(self.config.condition))
            sampler = sampler.result()
        proba, missing = self._proba(xyz, feats, stats, device, self.config.votes, anchor, targets, sampler)
        if missing:
            log(f"{cloud.source}: {missing:,} of {len(cloud):,} points reached by no region "
                f"(max_points cap); they take the prediction of the nearest reached point")
        return proba.astype(np.float32)

    def predict(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                targets: np.ndarray | None = None) -> Prediction:
        return Prediction(self.predict_proba(cloud, device, anchor, targets))

    # -- bundle -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        import torch

        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, Path(folder) / "weights.pt")
        meta = {"network": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in dataclasses.asdict(self.net_cfg).items()},
                "in_channels": self.in_channels, "num_classes": self.class_map.num_classes,
                "geometric_columns": self.geo_cols, "feature_columns": self.pt_cols,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "class_counts": self.class_counts,
                "logit_bias": None if self.logit_bias is None else self.logit_bias.tolist()}
        (Path(folder) / self.meta_file).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, config: "PointNetworkModel.Config", class_map: ClassMap, folder: Path) -> "PointNetworkModel":
        model = cls(config, class_map)
        folder = Path(folder)
        name = model.meta_file
        try:
            meta = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{folder}: broken {model.network.name} bundle ({exc})") from None
        if not isinstance(meta, dict):
            raise UserError(f"{folder}: {name} must hold a JSON object")
        F, C = len(model.pt_cols), class_map.num_classes
        if meta.get("feature_columns") != model.pt_cols or meta.get("in_channels") != model.in_channels:
            raise UserError(f"{folder}: {name} does not match the bundle's model config")
        for key, size, optional in (("mean", F, False), ("std", F, False), ("logit_bias", C, True)):
            v = meta.get(key)
            if v is None and optional:
                continue
            if not (isinstance(v, list) and len(v) == size and all(isinstance(x, (int, float)) for x in v)):
                raise UserError(f"{folder}: {name}: {key!r} must be a list of {size} numbers")
            if not np.isfinite(v).all():
                raise UserError(f"{folder}: {name}: {key!r} holds NaN or infinite values: a broken bundle")
        if not (np.asarray(meta["std"], np.float64) > 0).all():
            raise UserError(f"{folder}: {name}: 'std' (the feature standardisation) must be > 0 for every "
                            "column: a broken bundle (training keeps it >= 1e-6)")
        if meta.get("num_classes", C) != C:
            raise UserError(f"{folder}: the weights are for {meta.get('num_classes')} classes, the class map has {C}")
        model.mean = np.asarray(meta["mean"], np.float32)
        model.std = np.asarray(meta["std"], np.float32)
        model.class_counts = meta.get("class_counts")
        bias = meta.get("logit_bias")
        model.logit_bias = None if bias is None else np.asarray(bias, np.float32)
        model.net = model.build_net()
        load_weights(model.net, load_torch_file(folder, "weights.pt"), folder, "weights.pt")
        model.net.eval()
        model._device = "cpu"
        return model


def _from_earlier_form(network_type: str):
    """``{type: kpconvx | point_transformer, preset, network: {...}, ...}`` (the earlier model
    types) -> ``{type: point, network: {type: ..., preset, ...}, ...}``."""
    def translate(data: dict) -> dict:
        out = {k: v for k, v in data.items() if k not in ("type", "preset", "network")}
        network = data.get("network")
        network = dict(network) if isinstance(network, dict) else {}
        if "preset" in data:
            network["preset"] = data["preset"]
        return {"type": "point", "network": {"type": network_type, **network}, **out}
    return translate


for _name in ("kpconvx", "point_transformer"):
    MODELS.alias(_name, f"'type: point' with 'network: {{type: {_name}, preset: ..., <network keys>}}'",
                 _from_earlier_form(_name))


__all__ = ["PointNetworkModel", "LossConfig", "FEATURES"]
