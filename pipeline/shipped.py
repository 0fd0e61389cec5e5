"""Shipped models: trained bundles that come with the tool, in ``models/<name>/``.

Each is an ordinary bundle folder (``bundle.json``, the weights) plus ``MODEL.md`` (the model
card: classes, training data, figures, input requirements, failure modes) and ``SHA256SUMS``
(the bundle files' sha256, checked by :func:`pipeline.bundle.load_bundle` before anything is
read). ``run.py predict`` without ``--model`` uses :data:`DEFAULT_MODEL`; ``--model NAME``
takes a shipped name or a bundle path; ``run.py models`` lists them.

The folder is ``models/`` beside the packages (the checkout, or an editable install);
``LIDARSEG_MODELS`` names another one (a non-editable install, a shared model store).
"""
from __future__ import annotations

import os
from pathlib import Path

from data.errors import UserError

from .bundle import CARD, CHECKSUMS

#: the shipped model ``predict`` uses when no ``--model`` is given
DEFAULT_MODEL = "lidarhd-kpconvx"


def models_dir() -> Path:
    """The folder of shipped models (``$LIDARSEG_MODELS``, else ``models/`` beside the packages)."""
    env = os.environ.get("LIDARSEG_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def shipped_models() -> list[str]:
    """Names of the shipped bundles (sub-folders of :func:`models_dir` holding ``bundle.json``)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "bundle.json").is_file())


def card_summary(name: str) -> str:
    """The card's one-line summary: its first line that is neither a heading nor empty."""
    try:
        lines = (models_dir() / name / CARD).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return "(no model card)"
    return next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "(empty card)")


def _checked(name: str) -> Path:
    """A shipped model's folder; it must carry ``SHA256SUMS`` (``load_bundle`` checks the sums)."""
    folder = models_dir() / name
    if not (folder / CHECKSUMS).is_file():
        raise UserError(f"{folder}: {CHECKSUMS} is missing: a shipped model must carry its checksums")
    return folder


def resolve_model(arg: str | None) -> tuple[Path, str]:
    """``--model`` -> (bundle folder, how it was chosen). ``None`` is the default shipped model;
    an existing path is taken as it is; otherwise the name of a shipped model."""
    if arg is None:
        arg, how = DEFAULT_MODEL, "the default shipped model"
        if DEFAULT_MODEL not in shipped_models():
            raise UserError(f"--model: no model given and the default shipped model {DEFAULT_MODEL!r} is not in "
                            f"{models_dir()}; give --model BUNDLE")
        return _checked(arg), f"{how} {arg!r}"
    path = Path(arg)
    if path.exists():
        return path, f"the bundle {path}"
    if "/" not in arg and arg in shipped_models():
        return _checked(arg), f"the shipped model {arg!r}"
    names = shipped_models()
    raise UserError(f"--model {arg}: neither a bundle folder nor a shipped model "
                    f"(shipped: {', '.join(names) if names else 'none'}; run.py models lists them)")


__all__ = ["DEFAULT_MODEL", "models_dir", "shipped_models", "card_summary", "resolve_model"]
