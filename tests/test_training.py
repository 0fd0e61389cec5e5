"""pipeline.training: schedule, AdamW groups, deterministic steps, checkpoints, resume, CSV log."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from data.errors import UserError
from pipeline.training import OptimConfig, Trainer, build_optimizer, lr_factor, step_rng


def make_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                              torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    w = torch.randn(4, 3)

    def train_step(step):
        rng = step_rng(7, step)
        x = torch.from_numpy(rng.normal(size=(32, 4)).astype(np.float32))
        y = (x @ w).argmax(1)
        return torch.nn.functional.cross_entropy(net(x), y), {}

    def validate():
        rng = np.random.default_rng(123)
        x = torch.from_numpy(rng.normal(size=(256, 4)).astype(np.float32))
        acc = float((net(x).argmax(1) == (x @ w).argmax(1)).float().mean())
        return {"miou": acc}
    return net, train_step, validate


def run(work, limit, resume=False, seed=3, cfg=None, stop=None):
    net, train_step, validate = make_problem()
    trainer = Trainer(net, cfg or OptimConfig(lr=0.01, warmup_steps=2), total_steps=10, device="cpu",
                      work_dir=work, seed=seed, limit_steps=limit, val_every=3, checkpoint_every=100,
                      signature={"what": "toy"}, stop_after=stop)
    return trainer, trainer.fit(train_step, validate, resume=resume)


def losses(work):
    with open(work / "log.csv", newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_schedule_warmup_cosine_step():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    f = [lr_factor(s, 20, cfg) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] >= 0.1 and f[-1] < 0.2
    step = OptimConfig(warmup_steps=0, schedule="step", step_every=5, step_gamma=0.5)
    assert [lr_factor(s, 20, step) for s in (0, 4, 5, 12)] == [1, 1, 0.5, 0.25]
    assert lr_factor(7, 20, OptimConfig(warmup_steps=0, schedule="constant")) == 1


def test_adamw_no_decay_on_bias_and_norm():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(net, OptimConfig(weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    decays = {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}
    assert decays == {0.05: 1, 0.0: 3}


def test_config_errors():
    with pytest.raises(UserError):
        OptimConfig(lr=0)
    with pytest.raises(UserError):
        OptimConfig(grad_clip=-1)


def test_same_seed_same_losses(tmp_path):
    run(tmp_path / "a", 6)
    run(tmp_path / "b", 6)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    run(tmp_path / "c", 6, seed=4)
    assert losses(tmp_path / "c") != losses(tmp_path / "a")


def test_resume_continues_and_matches_uninterrupted_run(tmp_path):
    ref, _ = run(tmp_path / "ref", 8)
    run(tmp_path / "part", 8, stop=5)                          # --stop-after 5: a time-boxed job
    trainer, summary = run(tmp_path / "part", 8, resume=True)
    assert summary["steps"] == 8 and summary["steps_this_run"] == 3
    assert losses(tmp_path / "part") == losses(tmp_path / "ref")
    with open(tmp_path / "part" / "log.csv", newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    assert seconds == sorted(seconds) and seconds[5] >= seconds[4]     # time continues after --resume
    assert trainer.best_score == ref.best_score and trainer.best_step == ref.best_step
    for a, b in zip(trainer.model.state_dict().values(), ref.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_limit_steps_is_a_small_real_run(tmp_path):
    """--limit-steps scales warm-up and schedule: a 20-step trial of a 3000-step spec leaves
    the warm-up at once and decays to the floor, instead of being 20 warm-up steps."""
    net, train_step, _ = make_problem()
    cfg = OptimConfig(lr=0.01, warmup_steps=200, min_lr_ratio=0.01)
    trainer = Trainer(net, cfg, total_steps=3000, device="cpu", work_dir=tmp_path, limit_steps=20)
    assert trainer.total_steps == 20 and trainer.cfg.warmup_steps == 1
    trainer.fit(train_step)
    with open(tmp_path / "log.csv", newline="") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(0.01) and lrs[-1] < 0.001
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # the set-up installs tensorboard: the same curve is in the TensorBoard events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(lrs, rel=1e-5)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a trial's checkpoint is not resumed as the full run (its schedule was another)
    net, train_step, _ = make_problem()
    full = Trainer(net, cfg, total_steps=3000, device="cpu", work_dir=tmp_path)
    with pytest.raises(UserError, match="schedule spans 20 steps, this run's 3000.*--stop-after"):
        full.fit(train_step, resume=True)


def test_keyboard_interrupt_saves_checkpoint(tmp_path):
    net, train_step, validate = make_problem()

    def interrupted(step):
        if step == 4:
            raise KeyboardInterrupt
        return train_step(step)

    trainer = Trainer(net, OptimConfig(), 10, "cpu", tmp_path, checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(interrupted)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4


def test_best_checkpoint_and_signature(tmp_path):
    trainer, summary = run(tmp_path, 9)
    assert [h["step"] for h in summary["val_history"]] == [3, 6, 9]
    assert summary["best_val_miou"] == max(h["miou"] for h in summary["val_history"])
    assert (tmp_path / "best.pt").is_file() and trainer.load_best()
    net, train_step, _ = make_problem()
    other = Trainer(net, OptimConfig(), 10, "cpu", tmp_path, signature={"what": "else"})
    with pytest.raises(UserError, match="other settings"):
        other.fit(train_step, resume=True)


def test_resume_without_checkpoint_starts_at_zero(tmp_path):
    _, summary = run(tmp_path, 2, resume=True)
    assert summary["steps"] == 2


def test_build_optimizer_honours_ckconv_tags():
    import torch
    from torch import nn

    from pipeline.training import OptimConfig, build_optimizer

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[0].weight._lr_scale = 0.5
    model[2].weight._no_weight_decay = True
    model[2].bias._weight_decay = 0.3
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.05))
    by_param = {id(p): (g["weight_decay"], g["lr"]) for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model[0].weight)] == (0.05, 0.05)
    assert by_param[id(model[0].bias)] == (0.0, 0.1)
    assert by_param[id(model[1].weight)] == (0.0, 0.1)      # 1-D norm parameter
    assert by_param[id(model[2].weight)] == (0.0, 0.1)
    assert by_param[id(model[2].bias)] == (0.3, 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert isinstance(opt, torch.optim.AdamW)


def test_class_weights_formula():
    import numpy as np

    from pipeline.training import class_weights

    counts = np.array([100, 0, 25, 4])
    w = class_weights(counts, 0.5)
    ref = np.array([1 / 10, 1.0, 1 / 5, 1 / 2])        # 1/sqrt(count), up to a common factor
    ref[[0, 2, 3]] /= ref[[0, 2, 3]].mean()
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert w[1] == 1.0
    np.testing.assert_allclose(class_weights(counts, 1.0)[[0, 2, 3]].mean(), 1.0)


def test_curve_smoothing_matches_a_loop():
    from pipeline.curves import smooth

    x = np.random.default_rng(0).normal(size=57)
    for w in (1, 5, 60):
        ref = [x[max(0, i - w + 1):i + 1].mean() for i in range(len(x))]
        np.testing.assert_allclose(smooth(x, w), ref, rtol=1e-12)
