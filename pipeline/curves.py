"""The training-curve picture: loss, learning rate and validation mIoU against step.

Drawn from ``log.csv`` (columns ``step, lr, loss, val_miou``), so a resumed run shows its whole
history. Written as ``NAME.work/curves.png`` at the end of every torch training and copied
into the bundle.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``."""
    c = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def plot_curves(log_csv: Path, out_png: Path, title: str = "") -> Path | None:
    """Write ``out_png`` from ``log_csv``; None (nothing written) when the log has no step."""
    with open(log_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step, loss, lr, val = (_column(rows, k) for k in ("step", "loss", "lr", "val_miou"))
    fig, (ax_loss, ax_val) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
    ax_loss.plot(step, loss, color="0.75", lw=0.8, label="loss")
    window = max(1, len(loss) // 50)
    if window > 1:
        ax_loss.plot(step, smooth(loss, window), color="C0", lw=1.5, label=f"loss, mean of {window} steps")
    ax_loss.set_ylabel("training loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(step, lr, color="C1", lw=1.0, ls="--", label="learning rate")
    ax_lr.set_ylabel("learning rate", color="C1")
    lines = ax_loss.get_legend_handles_labels()
    more = ax_lr.get_legend_handles_labels()
    ax_loss.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    has_val = np.isfinite(val)
    if has_val.any():
        ax_val.plot(step[has_val], val[has_val], "o-", color="C2", label="validation mIoU")
        best = int(np.nanargmax(val))
        ax_val.annotate(f"best {val[best]:.3f} at step {int(step[best])}", (step[best], val[best]),
                        textcoords="offset points", xytext=(0, -14), fontsize=8,
                        ha="right" if step[best] > (step[0] + step[-1]) / 2 else "left")
        ax_val.set_ylim(0, 1)
        ax_val.legend(loc="lower right", fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_ylabel("validation mIoU")
    ax_val.set_xlabel("step")
    ax_val.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
