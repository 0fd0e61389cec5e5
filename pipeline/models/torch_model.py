"""The training skeleton every torch model component shares (``point``, whatever its network, and
``ckconv_grid``): a subclass supplies its data, its network and one optimisation step.

:meth:`TorchModel.fit` does, in this order::

    seed_everything(seed)
    data = load_training(train, val)            # subclass: reads files, counts classes [C]
    w_c  = (1 / freq_c) ** power                # class_weight_power (None: no weights)
    bias = log p_train - log(p_seen * w)        # prior correction, added to the logits at inference
    torch.manual_seed(seed); net = build_net()  # subclass
    Trainer(net, optim, total_steps, ...).fit(
        train_step(step, rng = step_rng(seed, step, rank)),          # subclass: (loss, info)
        validate = confusion matrices of val_labels(file) per validation set)
    keep the best validated weights; return the summary

(``pipeline.priors`` has the prior correction's derivation, ``pipeline.training`` the loop.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.classmap import ClassMap
from pipeline import distributed
from pipeline.datasets import LabelledFile
from pipeline.priors import prior_log_ratio
from pipeline.progress import log
from pipeline.schema import keys_where, to_plain, without_keys
from pipeline.training import Trainer, class_weights, planned_steps, seed_everything, step_rng

from .base import TrainContext


@dataclass
class TrainingData:
    """What :meth:`TorchModel.load_training` read.

    ``counts [C]``: labelled training units (points or cells) per class; ``seen [C]``: the
    shares the optimisation steps draw (class-balanced sampling), None for ``counts``;
    ``val``: one entry per validation file, passed back to ``val_labels``; ``summary``: the
    model's own entries of the training summary; ``what``: the log line's description of the run.
    """

    counts: np.ndarray
    val: list[Any] = field(default_factory=list)
    seen: np.ndarray | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    what: str = ""


class TorchModel:
    """Base of the torch model components; see the module docstring for the order of :meth:`fit`.

    A subclass sets ``kind`` and implements ``load_training``, ``build_net``, ``train_step``
    and ``val_labels``; its ``Config`` has ``optim``, ``val_every``, ``checkpoint_every`` and
    the properties ``total_steps``, ``class_weight_power`` and ``prior_correction``.
    """

    kind = "torch"

    def __init__(self, config: Any, class_map: ClassMap):
        self.config = config
        self.class_map = class_map
        self.net: Any = None
        self.logit_bias: np.ndarray | None = None     # [C] prior correction added to the logits
        self.loss_weights: Any = None                 # [C] float32 tensor on the device, or None
        self._device: str | None = None

    # -- what a subclass supplies -----------------------------------------------------------
    def load_training(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> TrainingData:
        raise NotImplementedError

    def build_net(self) -> Any:
        """The untrained network (called after ``torch.manual_seed(seed)``)."""
        raise NotImplementedError

    def train_step(self, step: int, rng: np.random.Generator, net: Any, ctx: TrainContext) -> tuple[Any, dict]:
        """``(loss tensor, info for log.csv)`` of one optimisation step; ``net``: the module to call
        (the trainer's DistributedDataParallel wrapper under torchrun); ``self.loss_weights``."""
        raise NotImplementedError

    def val_labels(self, data: Any, device: str) -> tuple[np.ndarray, np.ndarray]:
        """``(reference [N], predicted [N])`` class indices of one validation file."""
        raise NotImplementedError

    # -- the skeleton -------------------------------------------------------------------------
    def signature(self) -> dict[str, Any]:
        """What a checkpoint must have been trained with to be resumed (``Trainer.signature``):
        the config without its ``option(resume=False)`` keys, and the classes."""
        return {"config": without_keys(to_plain(self.config), keys_where(type(self.config), "resume", False)),
                "classes": list(self.class_map.names)}

    def fit(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> dict[str, Any]:
        import torch

        cfg, C = self.config, self.class_map.num_classes
        seed_everything(ctx.seed)
        data = self.load_training(train, val, ctx)
        counts = np.asarray(data.counts, np.int64)
        seen = counts.astype(np.float64) if data.seen is None else np.asarray(data.seen, np.float64)
        self.loss_weights = None
        if cfg.class_weight_power is not None:
            w = class_weights(counts, cfg.class_weight_power)
            self.loss_weights = torch.tensor(w, dtype=torch.float32, device=ctx.device)
            seen = seen * w
        self.logit_bias = None
        if cfg.prior_correction:
            self.logit_bias = prior_log_ratio(counts, seen)
            log("prior correction (logits += log p_train/p_seen): "
                + ", ".join(f"{n} {b:+.2f}" for n, b in zip(self.class_map.names, self.logit_bias)))

        torch.manual_seed(ctx.seed)
        self.net = self.build_net().to(ctx.device)
        self._device = ctx.device
        n_params = sum(p.numel() for p in self.net.parameters())
        log(f"{self.kind}: {n_params:,} parameters, {data.what}, {planned_steps(cfg.total_steps, ctx)} steps "
            f"on {ctx.device}")

        def train_step(step: int):
            return self.train_step(step, step_rng(ctx.seed, step, distributed.rank()), trainer.net, ctx)

        def validate() -> dict[str, Any]:
            from pipeline.evaluation import confusion_matrix, confusions_by_set, validation_scores

            cms = confusions_by_set(val, C)
            for item, item_data in zip(val, data.val):
                ref, pred = self.val_labels(item_data, ctx.device)
                cms[item.val_group] += confusion_matrix(ref, pred, C)
            return validation_scores(cms, self.class_map.names)

        trainer = Trainer(self.net, cfg.optim, cfg.total_steps, ctx.device, ctx.work_dir, seed=ctx.seed,
                          limit_steps=ctx.limit_steps, stop_after=ctx.stop_after, val_every=cfg.val_every,
                          checkpoint_every=cfg.checkpoint_every, signature=self.signature())
        result = trainer.fit(train_step, validate if val else None, resume=ctx.resume)
        trainer.load_best()
        self.net.eval()
        return {"steps": result["steps"], "total_steps": trainer.total_steps, "final_loss": result["final_loss"],
                "best_val_miou": result["best_val_miou"], "best_step": result["best_step"],
                "val_history": result["val_history"], "parameters": n_params, **data.summary}

    def to_device(self, device: str) -> None:
        """Move the network to ``device`` for prediction (once per device change)."""
        if self.net is None:
            raise RuntimeError("model is not trained")
        if self._device != device:
            self.net.to(device)
            self._device = device


__all__ = ["TorchModel", "TrainingData"]
