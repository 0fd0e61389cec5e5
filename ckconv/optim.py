"""Optimizer parameter groups from the tags set on parameters.

Tags (plain attributes on a Parameter):

* ``_weight_decay = v``  -> decay ``v`` (wins over ``_no_weight_decay``);
* ``_no_weight_decay = True`` -> decay 0;
* ``_lr_scale = s`` -> learning rate ``lr * s`` (default 1).
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Group ``model``'s trainable parameters by (weight decay, lr scale).

    Returns a list of ``{"params": [...], "weight_decay": wd, "lr": lr * lr_scale,
    "lr_scale": lr_scale}`` dicts (order of first appearance), ready for
    ``torch.optim.AdamW(param_groups(model, wd, lr))``. Parameters with
    ``requires_grad=False`` are left out. (The project's trainer groups whole networks with
    ``pipeline.training.param_groups``: these tags, and no decay on untagged 1-D parameters.)
    """
    groups: dict[tuple[float, float], dict] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "_weight_decay"):
            wd = float(p._weight_decay)
        elif getattr(p, "_no_weight_decay", False):
            wd = 0.0
        else:
            wd = float(weight_decay)
        scale = float(getattr(p, "_lr_scale", 1.0))
        group = groups.setdefault(
            (wd, scale), {"params": [], "weight_decay": wd, "lr": lr * scale, "lr_scale": scale}
        )
        group["params"].append(p)
    return list(groups.values())
