"""KPConvX as a model component: ``model: {type: kpconvx, ...}`` in a train step.

Training draws class-balanced spheres (or vertical cylinders) from the training tiles,
augments them (rotation about z, scaling, flips, jitter, feature dropout) and optimises
:class:`kpconvx.KPConvXSegNet` with AdamW, warm-up and a cosine/step schedule
(:mod:`pipeline.training`): validation mIoU on the ``val_inputs`` files every ``val_every``
steps, best checkpoint kept, ``--resume`` continues from ``OUT/NAME.work/last.pt``.

Prediction covers every point with overlapping regions on a regular grid
(:mod:`pipeline.regions`), averages the softmax per original point over regions
and ``votes`` (rotated copies, shifted grids), and processes regions in blocks of at most
``block_points`` points (bounded memory).

Input features per point (``features``): ``pipeline.models.point_inputs``; the non-geometric
ones are standardised with the training points' mean and standard deviation (in the bundle).

Bundle files: ``weights.pt`` (the network's state_dict, CPU tensors; loads anywhere with
``map_location``) and ``kpconvx_model.json`` (resolved network config, feature columns,
normalisation statistics, training class counts).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import numpy as np

from data.classmap import IGNORE, ClassMap
from data.errors import UserError
from data.pointcloud import PointCloud
from pipeline import distributed
from pipeline.cpu_share import block_workers
from pipeline.datasets import LabelledFile
from pipeline.priors import adjust_logits, prior_log_ratio
from pipeline.progress import log, progress
from pipeline.registry import MODELS
from pipeline.regions import (AugmentConfig, ClassBalancedCenters, Region, RegionSampler, SamplingConfig, augment,
                              predict_coverage, rotation_z, sampled_class_counts, stretch_heights)
from pipeline.schema import keys_where, option, to_plain, without_keys
from pipeline.training import (OptimConfig, Trainer, amp_autocast, class_weights, partial_label_loss, planned_steps,
                               step_rng)

from .base import Prediction, TrainContext, load_torch_file, load_weights
from .point_inputs import FEATURES, HEIGHT_COLUMNS, FeatureName, feature_columns, point_feature_matrix

def network_overrides(config_cls: type, name: str, defaults: dict[str, Any]) -> type:
    """A dataclass with every field of the network config ``config_cls``, each optional (null
    keeps the preset's value), derived from it so that the two never drift."""
    hints = get_type_hints(config_cls)
    fields = [(f.name, hints[f.name] | None, field(default=defaults.get(f.name)))
              for f in dataclasses.fields(config_cls)]
    cls = dataclasses.make_dataclass(name, fields)
    cls.__module__ = __name__
    cls.__doc__ = f"Values replacing the preset's (``{config_cls.__qualname__}``); null keeps the preset's."
    return cls


def _kpconvx_config() -> type:
    from kpconvx import KPConvXConfig

    return KPConvXConfig


#: ``first_cell`` defaults to 0.25 m (the KPConvX presets' 0.04 is indoor scale)
NetworkOverrides = network_overrides(_kpconvx_config(), "NetworkOverrides", {"first_cell": 0.25})


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


def resolve_network(preset: str, overrides: Any, config_cls: type | None = None):
    """The network config: ``config_cls.<preset>(**overrides that are not null)``."""
    config_cls = config_cls or _kpconvx_config()
    values = {k: (tuple(v) if isinstance(v, list) else v)
              for k, v in dataclasses.asdict(overrides).items() if v is not None}
    try:
        return getattr(config_cls, preset)(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"network: {exc}") from None


@MODELS.register("kpconvx")
class KPConvXModel:
    """KPConvX on sampled regions; also the base of the other point networks on the same
    regions, inputs, training loop and prediction coverage (``point_transformer``): a subclass
    sets ``kind``/``meta_file``, its ``Config.network_config`` and ``_build_net``."""

    kind = "kpconvx"
    meta_file = "kpconvx_model.json"

    @dataclass
    class Config:
        preset: Literal["small", "full"] = "small"
        network: NetworkOverrides = field(default_factory=NetworkOverrides)
        features: list[FeatureName] = field(default_factory=lambda: ["xyz", "intensity", "returns", "height"])
        height_cell: float = option(min=0, exclusive=True, default=10.0)   # metres, for the 'height' feature
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
        block_points: int = option(min=1, predict=True, resume=False, default=200_000)  # points per forward pass

        def __post_init__(self) -> None:
            if len(set(self.features)) != len(self.features):
                raise UserError(f"features: duplicates in {self.features}")
            if self.augment.stretches and "ground" not in self.features:
                raise UserError("augment.stretch_z needs the 'ground' feature (height above the ground model)")
            self.network_config()  # validates the overrides now

        def network_config(self):
            return resolve_network(self.preset, self.network)

        @property
        def total_steps(self) -> int:
            return self.epochs * self.steps_per_epoch if self.epochs is not None else self.steps

    #: Config keys ``run.py predict --set`` may change on a trained bundle (``option(predict=True)``)
    predict_options = keys_where(Config, "predict")

    def __init__(self, config: "KPConvXModel.Config", class_map: ClassMap):
        self.config = config
        self.class_map = class_map
        self.net_cfg = config.network_config()
        self.geo_cols, self.pt_cols = feature_columns(list(config.features))
        #: standardised columns that are heights (scaled by augment.stretch_z)
        self.height_cols = [i for i, c in enumerate(self.pt_cols) if c in HEIGHT_COLUMNS]
        self.mean = np.zeros(len(self.pt_cols), np.float32)
        self.std = np.ones(len(self.pt_cols), np.float32)
        self.class_counts: list[int] | None = None
        self.logit_bias: np.ndarray | None = None      # [C] prior correction added to the logits
        self.net: Any = None
        self._device: str | None = None

    @property
    def in_channels(self) -> int:
        return len(self.geo_cols) + len(self.pt_cols)

    def _build_net(self):
        from kpconvx import KPConvXSegNet

        return KPConvXSegNet(self.in_channels, self.class_map.num_classes, self.net_cfg)

    # -- features -----------------------------------------------------------------------
    def _inputs(self, regions: list[Region], tiles_feats: list[np.ndarray], rng: np.random.Generator | None,
                angle: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Packed ``(xyz [P,3], features [P,F], batch [P])`` float32/int64 for ``regions``."""
        cfg = self.config
        xs, fs, bs = [], [], []
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
            if "xyz" in cfg.features:
                geo.append(xyz / cfg.sampling.radius)
            xs.append(xyz.astype(np.float32))
            fs.append(np.concatenate(geo + [pf.astype(np.float32)], axis=1))
            bs.append(np.full(len(xyz), b, np.int64))
        return np.concatenate(xs), np.concatenate(fs), np.concatenate(bs)

    def _forward(self, xyz: np.ndarray, feats: np.ndarray, batch: np.ndarray, device: str, net=None):
        """Logits of packed regions; ``net``: the module to call (the trainer's, under torchrun)."""
        import torch

        return (net or self.net)(torch.from_numpy(xyz).to(device), torch.from_numpy(feats).to(device),
                                 torch.from_numpy(batch).to(device))

    # -- training -----------------------------------------------------------------------
    def _load_labelled(self, items: list[LabelledFile], what: str):
        """``(xyz, features, labels, candidates)`` lists, one entry per file; ``candidates[i]``:
        ``[N, C]`` bool of the ambiguous codes' class sets, or None (``LabelledFile.candidates``)."""
        xyzs, feats, labels, cands = [], [], [], []
        for item in progress(items, f"reading ({what})", unit="file"):
            cloud, y = item.read()
            labels.append(y)
            cands.append(item.candidates(cloud))
            feats.append(point_feature_matrix(cloud, list(self.config.features), self.config.height_cell))
            xyzs.append(np.asarray(cloud.xyz, np.float64))
        return xyzs, feats, labels, cands

    def _signature(self) -> dict[str, Any]:
        """What a checkpoint must have been trained with to be resumed (``Trainer.signature``):
        the config without its ``option(resume=False)`` keys."""
        return {"config": without_keys(to_plain(self.config), keys_where(type(self.config), "resume", False)),
                "classes": list(self.class_map.names)}

    def fit(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> dict[str, Any]:
        import torch

        from pipeline.training import seed_everything

        cfg = self.config
        C = self.class_map.num_classes
        seed_everything(ctx.seed)
        xyzs, feats, labels, cands = self._load_labelled(train, "train")
        allf = np.concatenate(feats) if feats else np.zeros((0, len(self.pt_cols)), np.float32)
        self.mean = allf.mean(0).astype(np.float32) if len(allf) else self.mean
        self.std = np.maximum(allf.std(0), 1e-6).astype(np.float32) if len(allf) else self.std
        del allf
        counts = np.bincount(np.concatenate([y[y != IGNORE] for y in labels]), minlength=C)
        self.class_counts = counts.tolist()
        weights = None
        if cfg.loss.class_weights != "none":
            w = class_weights(counts, 1.0 if cfg.loss.class_weights == "inverse" else 0.5)
            weights = torch.tensor(w, dtype=torch.float32, device=ctx.device)
        centers = ClassBalancedCenters(labels, C, cfg.sampling.class_balanced)
        sampler = RegionSampler(xyzs, cfg.sampling)
        vdata = self._load_labelled(val, "validation")[:3] if val else None
        n_amb = sum(int(c.any(1).sum()) for c in cands if c is not None)
        if n_amb:
            log(f"{n_amb:,} training points of ambiguous codes (partial-label loss over their class sets)")
        if cfg.loss.prior_correction:
            seen = sampled_class_counts(centers, sampler, labels, C, ctx.seed)
            if weights is not None:
                seen = seen * w
            self.logit_bias = prior_log_ratio(counts, seen)
            log("prior correction (logits += log p_train/p_seen): "
                + ", ".join(f"{n} {b:+.2f}" for n, b in zip(self.class_map.names, self.logit_bias)))

        torch.manual_seed(ctx.seed)
        self.net = self._build_net().to(ctx.device)
        self._device = ctx.device
        n_params = sum(p.numel() for p in self.net.parameters())
        log(f"{self.kind} ({cfg.preset}): {n_params:,} parameters, {self.in_channels} input channels, "
            f"{sum(map(len, labels)):,} training points, {planned_steps(cfg.total_steps, ctx)} steps x {cfg.batch_size} "
            f"{cfg.sampling.shape}s of radius {cfg.sampling.radius} m on {ctx.device}")
        loss_fn = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE,
                                            label_smoothing=cfg.loss.label_smoothing)

        def train_step(step: int):
            rng = step_rng(ctx.seed, step, distributed.rank())     # each rank its own regions
            tiles, rows, _ = centers.draw(cfg.batch_size, rng)
            regions = [sampler.regions(int(t), xyzs[t][r][None])[0] for t, r in zip(tiles, rows)]
            if cfg.augment.thins:
                regions = [r.thinned(rng.uniform(*cfg.augment.thin), rng) for r in regions]
            xyz, f, b = self._inputs(regions, feats, rng)
            y = torch.from_numpy(np.concatenate([labels[r.tile][r.index] for r in regions])).to(ctx.device)
            logits = self._forward(xyz, f, b, ctx.device, trainer.net).float()
            cand = None
            if n_amb:
                cand = np.concatenate([cands[r.tile][r.index] if cands[r.tile] is not None
                                       else np.zeros((len(r.index), C), bool) for r in regions])
            return partial_label_loss(loss_fn, logits, y, cand, weights), {"points": int(len(xyz))}

        validate = None
        if vdata is not None:
            def validate() -> dict[str, Any]:
                from pipeline.evaluation import confusion_matrix, confusions_by_set, validation_scores

                cms = confusions_by_set(val, C)
                for item, xyz, f, y in zip(val, *vdata):
                    proba, _ = self._proba(xyz, f, ctx.device, cfg.val_votes)
                    cms[item.val_group] += confusion_matrix(y, proba.argmax(1), C)
                return validation_scores(cms, self.class_map.names)

        trainer = Trainer(self.net, cfg.optim, cfg.total_steps, ctx.device, ctx.work_dir, seed=ctx.seed,
                          limit_steps=ctx.limit_steps, stop_after=ctx.stop_after, val_every=cfg.val_every,
                          checkpoint_every=cfg.checkpoint_every, signature=self._signature())
        result = trainer.fit(train_step, validate, resume=ctx.resume)
        trainer.load_best()
        self.net.eval()
        return {"steps": result["steps"], "total_steps": trainer.total_steps, "final_loss": result["final_loss"],
                "best_val_miou": result["best_val_miou"], "best_step": result["best_step"],
                "val_history": result["val_history"], "parameters": n_params,
                "train_class_counts": dict(zip(self.class_map.names, self.class_counts)),
                "normalisation": {"columns": self.pt_cols, "mean": self.mean.tolist(), "std": self.std.tolist()}}

    # -- inference ----------------------------------------------------------------------
    def _proba(self, xyz: np.ndarray, feats: np.ndarray, device: str, votes: int) -> tuple[np.ndarray, int]:
        import torch

        cfg = self.config
        self.net.eval()

        def run_block(regions: list[Region], vote: int) -> np.ndarray:
            x, f, b = self._inputs(regions, [feats], None, angle=2 * np.pi * vote / votes)
            with torch.no_grad(), amp_autocast(cfg.optim, device):
                logits = self._forward(x, f, b, device)
            return torch.softmax(adjust_logits(logits.float(), self.logit_bias), dim=1).cpu().numpy()

        with block_workers(device) as workers:
            return predict_coverage(xyz, self.class_map.num_classes, cfg.sampling, run_block, votes=votes,
                                    block_points=cfg.block_points, workers=workers,
                                    progress=lambda it, desc, total: progress(it, desc, total=total, unit="chunk"))

    def predict_proba(self, cloud: PointCloud, device: str = "cpu") -> np.ndarray:
        if self.net is None:
            raise RuntimeError("model is not trained")
        if self._device != device:
            self.net.to(device)
            self._device = device
        feats = point_feature_matrix(cloud, list(self.config.features), self.config.height_cell)
        proba, missing = self._proba(np.asarray(cloud.xyz, np.float64), feats, device, self.config.votes)
        if missing:
            log(f"{cloud.source}: {missing:,} of {len(cloud):,} points reached by no region "
                f"(max_points cap); they take the prediction of the nearest reached point")
        return proba.astype(np.float32)

    def predict(self, cloud: PointCloud, device: str = "cpu") -> Prediction:
        return Prediction(self.predict_proba(cloud, device))

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
    def load(cls, config: "KPConvXModel.Config", class_map: ClassMap, folder: Path) -> "KPConvXModel":
        model = cls(config, class_map)
        folder = Path(folder)
        name = cls.meta_file
        try:
            meta = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{folder}: broken {cls.kind} bundle ({exc})") from None
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
        model.net = model._build_net()
        load_weights(model.net, load_torch_file(folder, "weights.pt"), folder, "weights.pt")
        model.net.eval()
        model._device = "cpu"
        return model


__all__ = ["KPConvXModel", "NetworkOverrides", "LossConfig", "FEATURES"]
