"""Generic PyTorch training-loop utilities, shared by the torch model components.

- :class:`OptimConfig`: AdamW (weight decay on weights only), linear warm-up then cosine,
  step or constant schedule, gradient clipping, mixed precision on CUDA.
- :func:`seed_everything` and :func:`step_rng`: a run is a function of ``(seed, step)``;
  every step draws its randomness from generators seeded by ``(seed, step)``, so a resumed
  run continues exactly as the uninterrupted one would have (on the same device).
- :class:`Trainer`: the loop itself. The model component supplies ``train_step(step) ->
  (loss tensor, info dict)`` and optionally ``validate() -> {"miou": float, ...}``; the
  trainer does backward, clipping, AMP, the schedule, validation every ``val_every`` steps,
  the best checkpoint by validation mIoU, the last checkpoint (for ``--resume``), a CSV log
  (and TensorBoard events when ``torch.utils.tensorboard`` imports), progress bars.

Checkpoint files in ``work_dir``: ``last.pt`` (model, optimiser, scheduler, scaler, step,
best score, extra state), ``best.pt`` (model weights of the best validation), ``log.csv``.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from data.atomic import atomic_path
from data.errors import UserError
from pipeline.progress import log, progress
from pipeline import distributed
from pipeline.cpu_share import ThreadGovernor
from pipeline.curves import plot_curves
from pipeline.schema import option

__all__ = ["OptimConfig", "seed_everything", "step_rng", "param_groups", "build_optimizer", "class_weights", "lr_factor", "Trainer",
           "CsvLog", "atomic_torch_save", "amp_autocast"]


@dataclass
class OptimConfig:
    """Optimiser and schedule of a torch training run."""

    lr: float = 0.005
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.999)
    warmup_steps: int = 500
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    min_lr_ratio: float = 0.01        # cosine: final lr = lr * min_lr_ratio
    step_every: int = 5000            # step schedule: multiply the lr by step_gamma every N steps
    step_gamma: float = 0.3
    grad_clip: float | None = 10.0    # max global gradient norm (None: no clipping)
    amp: bool = True                  # mixed precision; only ever used on CUDA
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    #: under torchrun on CUDA: batch-norm statistics over every rank's batch (torch's
    #: SyncBatchNorm, GPU only); one process: no effect
    sync_batchnorm: bool = option(resume=False, default=False)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0 or self.step_every < 1:
            raise UserError("warmup_steps must be >= 0 and step_every >= 1")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.step_gamma <= 1:
            raise UserError("min_lr_ratio must be in [0, 1] and step_gamma in (0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"grad_clip must be > 0 or null, got {self.grad_clip}")


def _amp_dtype(cfg: OptimConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16


def _amp_enabled(cfg: OptimConfig, device: str | torch.device) -> bool:
    return bool(cfg.amp and torch.device(device).type == "cuda")


def amp_autocast(cfg: OptimConfig, device: str | torch.device) -> torch.autocast:
    """``torch.autocast`` as ``cfg`` asks: ``cfg.amp_dtype``, enabled only when ``cfg.amp`` and on CUDA."""
    return torch.autocast(torch.device(device).type, dtype=_amp_dtype(cfg), enabled=_amp_enabled(cfg, device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """NumPy generator for one step (independent of what earlier steps drew)."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of a whole network, by (weight decay, learning rate), in order of
    first appearance; frozen parameters left out. A parameter's decay is its ``_weight_decay``
    tag if set, else 0 when it is tagged ``_no_weight_decay``, 1-D or a bias (norm scales and
    shifts), else ``cfg.weight_decay``; its lr is ``cfg.lr * _lr_scale`` (tag, default 1). The
    layers set the tags (``ckconv``: SIREN, window and shortcut parameters; the same convention
    as ``ckconv.param_groups``, the CKConv contract's grouping without the 1-D rule)."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        untagged_decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") else float(cfg.weight_decay)
        decay = float(getattr(p, "_weight_decay", 0.0 if getattr(p, "_no_weight_decay", False) else untagged_decay))
        lr = cfg.lr * float(getattr(p, "_lr_scale", 1.0))
        groups.setdefault((decay, lr), {"params": [], "weight_decay": decay, "lr": lr})["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas))


def class_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Cross-entropy class weights ``w_c = (1 / freq_c) ** power``, normalised to mean 1 over the
    classes present in ``counts`` ``[C]``; absent classes get 1 (they have no targets)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.ones(len(counts))
    present = counts > 0
    w[present] = (counts.sum() / counts[present]) ** power
    w[present] /= w[present].mean()
    return w


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimisation step ``step`` (0-based) of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** ((step - cfg.warmup_steps) // cfg.step_every)
    span = max(total - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def planned_steps(total: int, ctx: Any) -> int:
    """Steps a training will run: ``total``, or the trial's ``ctx.limit_steps`` when smaller."""
    return total if ctx.limit_steps is None else min(total, int(ctx.limit_steps))


def partial_label_loss(loss_fn: Any, logits: torch.Tensor, y: torch.Tensor, candidates: np.ndarray | None,
                       weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy ``loss_fn`` on the labelled points (``y >= 0``) and, on points whose
    reference is ambiguous (rows of ``candidates`` ``[P, C]`` with a True), the partial-label
    loss ``-log sum_{c in S} p_c = logsumexp(z) - logsumexp(z_S)``; averaged together, each
    ambiguous point counting as one unit of weight (a labelled point counts ``w[y]``)."""
    labelled = y >= 0
    if candidates is None or not candidates.any():
        return loss_fn(logits, y)
    cand = torch.from_numpy(candidates).to(logits.device)
    rows = cand.any(1)
    z = logits[rows]
    pl = torch.logsumexp(z, 1) - torch.logsumexp(z.masked_fill(~cand[rows], float("-inf")), 1)
    if not bool(labelled.any()):
        return pl.mean()
    mass = weights[y[labelled]].sum() if weights is not None else labelled.sum().to(logits.dtype)
    return (loss_fn(logits, y) * mass + pl.sum()) / (mass + len(pl))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` under a temporary name, renamed into place. Serialised in memory first:
    torch's zip writer reports a full disk as an opaque RuntimeError, a plain write as ENOSPC
    (``data.atomic`` names the file)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


class CsvLog:
    """Append-only CSV of training metrics (rows after ``keep_until`` dropped on resume)."""

    FIELDS = ["step", "lr", "loss", "val_miou", "seconds"]

    def __init__(self, path: Path, extra_fields: list[str] = (), keep_until: int | None = None):
        self.path = Path(path)
        self.fields = self.FIELDS + [f for f in extra_fields if f not in self.FIELDS]
        rows: list[dict[str, str]] = []
        if keep_until is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= keep_until]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except Exception:  # noqa: BLE001 - optional; self.tb stays None
            pass

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v == v:
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """The optimisation loop with validation, checkpoints and resume.

    Args:
        model: the network (already on ``device``).
        cfg: optimiser/schedule options.
        total_steps: planned optimisation steps (the schedule spans them).
        device: torch device string.
        work_dir: folder of ``last.pt``, ``best.pt``, ``log.csv`` (None: no files).
        seed: run seed; step ``s`` runs after ``torch.manual_seed(hash(seed, s))``.
        limit_steps: a trial run of this many steps in all (``--limit-steps``): training stops
            there and the schedule (warm-up included, scaled by ``limit / total``) spans the
            limited run, so a short trial is a small real run, not the start of a long one.
        stop_after: stop after this many steps in all without changing the schedule
            (``--stop-after``: a time-boxed job that ``--resume`` continues exactly).
        val_every: validate every N steps (and after the last step) when ``validate`` is given.
        checkpoint_every: write ``last.pt`` every N steps (and after the last step).
        signature: a plain dict describing the run; a checkpoint with another one is refused.
    """

    def __init__(self, model: nn.Module, cfg: OptimConfig, total_steps: int, device: str,
                 work_dir: Path | None, seed: int = 0, limit_steps: int | None = None,
                 val_every: int = 500, checkpoint_every: int = 500,
                 signature: dict[str, Any] | None = None, stop_after: int | None = None):
        self.model, self.device = model, torch.device(device)
        self.rank, self.main = distributed.rank(), distributed.is_main()
        #: the module a training step calls: ``model`` itself, or its DistributedDataParallel
        #: wrapper under torchrun (gradients averaged over the ranks in backward)
        self.net: nn.Module = model
        if distributed.active() and cfg.sync_batchnorm:
            if self.device.type != "cuda":
                raise UserError("optim.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only; "
                                "leave it off for CPU training")
            model = self.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)   # children replaced in place
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        planned = int(total_steps)
        self.total_steps = planned if limit_steps is None else min(planned, int(limit_steps))
        if self.total_steps < planned:   # trial: the warm-up and step schedule shrink with the run
            f = self.total_steps / planned
            cfg = dataclasses.replace(cfg, warmup_steps=int(round(cfg.warmup_steps * f)),
                                      step_every=max(1, int(round(cfg.step_every * f))))
        self.cfg = cfg
        self.end_step = self.total_steps if stop_after is None else min(self.total_steps, int(stop_after))
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.seed, self.val_every, self.checkpoint_every = int(seed), int(val_every), int(checkpoint_every)
        self.signature = {**(signature or {}), "schedule_steps": self.total_steps}
        if distributed.world_size() > 1:   # a checkpoint resumes with the same number of processes
            self.signature["world_size"] = distributed.world_size()
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg))
        # loss scaling only for float16 autocast (bfloat16 has float32's range)
        self.scaler = torch.amp.GradScaler("cuda", enabled=_amp_enabled(cfg, self.device)
                                           and _amp_dtype(cfg) == torch.float16)
        self.step = 0
        self.best_score = -math.inf
        self.best_step: int | None = None
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.elapsed = 0.0          # training seconds before this run (continued on --resume)

    # -- checkpoints -------------------------------------------------------------------
    def _path(self, name: str) -> Path | None:
        return None if self.work_dir is None else self.work_dir / name

    def save_last(self) -> None:
        path = self._path("last.pt")
        if path is None or not self.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"step": self.step, "model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                           "scaler": self.scaler.state_dict(), "best_score": self.best_score,
                           "best_step": self.best_step, "history": self.history,
                           "elapsed": self.elapsed_now(), "signature": self.signature}, path)

    def resume(self) -> bool:
        """Load ``last.pt``; returns False (and starts from step 0) when there is none."""
        path = self._path("last.pt")
        if path is None or not path.is_file():
            log(f"--resume: no checkpoint in {self.work_dir}; starting from step 0")
            return False
        try:   # tensors and plain containers only: a checkpoint never runs code on load
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors, truncated files, foreign formats
            raise UserError(f"{path}: not a readable training checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); delete {self.work_dir} "
                            "or run without --resume") from None
        if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler"} <= set(state):
            raise UserError(f"{path}: not a training checkpoint of this project (keys missing)")
        theirs = state.get("signature") or {}
        if theirs.get("world_size", 1) != self.signature.get("world_size", 1):
            n = theirs.get("world_size", 1)
            raise UserError(f"{path}: this checkpoint was written by {n} process(es), this run has "
                            f"{distributed.world_size()}; resume with the same number "
                            f"({'torchrun --nproc_per_node ' + str(n) + ' run.py ...' if n > 1 else 'python run.py ...'})")
        if (theirs.get("schedule_steps") != self.total_steps
                and {k: v for k, v in theirs.items() if k != "schedule_steps"}
                == {k: v for k, v in self.signature.items() if k != "schedule_steps"}):
            raise UserError(f"{path}: this checkpoint's schedule spans {theirs.get('schedule_steps')} steps, this "
                            f"run's {self.total_steps} (--limit-steps sets the schedule of a trial; "
                            "--stop-after cuts a run short and keeps its schedule)")
        if theirs != self.signature:
            raise UserError(f"{path}: this checkpoint was written by a run with other settings "
                            f"({state.get('signature')} != {self.signature}); delete {self.work_dir} "
                            "or run without --resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.history = list(state.get("history", []))
        self.elapsed = float(state.get("elapsed", 0.0))
        log(f"resumed from {path} at step {self.step}")
        return True

    def elapsed_now(self) -> float:
        """Training seconds so far, earlier runs of a resumed training included."""
        return self.elapsed + (time.time() - self._t0 if getattr(self, "_t0", None) is not None else 0.0)

    def load_best(self) -> bool:
        """Put the best validated weights into the model, saying so (False when there are none)."""
        path = self._path("best.pt")
        if self.best_step is None or path is None or not path.is_file():
            return False
        self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        log(f"kept the weights of step {self.best_step} (best validation mIoU {self.best_score:.4f})")
        return True

    # -- the loop ----------------------------------------------------------------------
    def fit(self, train_step: Callable[[int], tuple[torch.Tensor, dict[str, Any]]],
            validate: Callable[[], dict[str, Any]] | None = None, resume: bool = False) -> dict[str, Any]:
        if resume:
            self.resume()
        csv_log = None
        if self.work_dir is not None and self.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            csv_log = CsvLog(self.work_dir / "log.csv", keep_until=self.step if resume else None)
        start = self.step
        self._t0 = time.time()
        governor = (ThreadGovernor() if self.device.type == "cpu" and os.environ.get("LIDARSEG_ADAPTIVE_THREADS", "1") != "0"
                    else None)
        bar = progress(range(start, self.end_step), "training", total=self.end_step - start, unit="step")
        try:
            for step in bar:
                if governor is not None:     # fewer torch threads while other processes hold cores
                    governor.update()
                self.model.train()
                torch.manual_seed((self.seed * 1_000_003 + step + 7_919 * self.rank) % 2**63)
                with amp_autocast(self.cfg, self.device):
                    loss, info = train_step(step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {step + 1}; "
                                             "lower optim.lr or check the input features")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.cfg.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step = step + 1
                value = float(loss.detach())
                self.losses.append(value)
                row: dict[str, Any] = {"step": self.step, "lr": lr, "loss": value, "val_miou": "",
                                       "seconds": round(self.elapsed_now(), 3), **info}
                last = self.step == self.end_step
                if validate is not None and self.main and (self.step % self.val_every == 0 or last):
                    self.model.eval()
                    with torch.no_grad():
                        res = validate()
                    row["val_miou"] = float(res["miou"])
                    self.history.append({"step": self.step, **{k: v for k, v in res.items()
                                                               if isinstance(v, (int, float))}})
                    if res["miou"] > self.best_score:
                        self.best_score, self.best_step = float(res["miou"]), self.step
                        path = self._path("best.pt")
                        if path is not None:
                            atomic_torch_save(self.model.state_dict(), path)
                    sets = "".join(f", {k[5:]} {v:.4f}" for k, v in res.items() if k.startswith("miou_"))
                    log(f"step {self.step}: loss {value:.4f}, val mIoU {res['miou']:.4f}{sets} "
                        f"(best {self.best_score:.4f} at step {self.best_step})")
                if csv_log is not None:
                    csv_log.write(row)
                if self.step % self.checkpoint_every == 0 or last:
                    self.save_last()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
        except KeyboardInterrupt:
            self.save_last()
            log(f"interrupted at step {self.step}; checkpoint {self._path('last.pt')} "
                "(continue with --resume)")
            raise
        finally:
            if csv_log is not None:
                csv_log.close()
        distributed.barrier()       # the other ranks wait for rank 0's last checkpoint
        if csv_log is not None:
            plot_curves(csv_log.path, self.work_dir / "curves.png", title=self.work_dir.name)
        return {"steps": self.step, "steps_this_run": self.step - start,
                "final_loss": self.losses[-1] if self.losses else None,
                "best_val_miou": None if self.best_step is None else self.best_score,
                "best_step": self.best_step, "val_history": self.history}
