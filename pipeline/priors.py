"""Class-prior correction for models trained on re-balanced data.

A classifier fitted on data whose class priors are ``p_seen`` (a class-balanced sample, or
a loss with class weights ``w``: ``p_seen(c) ∝ n_seen(c) w_c``) estimates
``p(c | x) ∝ p(x | c) p_seen(c)``. Bayes' rule gives the posterior under the training data's
priors ``p_train``::

    p_train(c | x) ∝ p_seen(c | x) * p_train(c) / p_seen(c)
    logits_train   = logits_seen + log(p_train(c) / p_seen(c))      (logit adjustment)

:func:`prior_log_ratio` is that ``[C]`` log ratio, 0 for a class absent from either side.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def prior_log_ratio(train_counts: np.ndarray, seen_counts: np.ndarray) -> np.ndarray:
    """``[C]`` float32 ``log(p_train(c) / p_seen(c))`` from counts (need not be integers)."""
    train = np.asarray(train_counts, np.float64)
    seen = np.asarray(seen_counts, np.float64)
    pt = train / max(train.sum(), 1e-12)
    ps = seen / max(seen.sum(), 1e-12)
    ok = (pt > 0) & (ps > 0)
    out = np.zeros(len(pt), np.float32)
    out[ok] = np.log(pt[ok] / ps[ok]).astype(np.float32)
    return out


def adjust_logits(logits: "torch.Tensor", bias: np.ndarray | None) -> "torch.Tensor":
    """``logits [..., C] + bias [C]`` on the logits' device (unchanged when ``bias`` is None)."""
    if bias is None:
        return logits
    import torch

    return logits + torch.from_numpy(np.asarray(bias, np.float32)).to(logits.device)


__all__ = ["prior_log_ratio", "adjust_logits"]
