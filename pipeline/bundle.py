"""Model bundles: ``NAME.bundle/``, one self-contained, portable folder.

Layout::

    NAME.bundle/
      bundle.json      # format, project version, model type + resolved config, class map,
                       # training summary, library versions (no absolute paths)
      <weights>        # written by the model's ``save`` (e.g. random_forest.pkl, weights.pt)
      SHA256SUMS       # optional (shipped models): sha256 of the files, checked before loading

``bundle.json`` records ``input_pipeline``, the version of the input computation (features,
heights, grids) the weights were trained on; a bundle of another version is refused, since
its inputs would no longer mean what it learnt (bump :data:`INPUT_PIPELINE` with any change
that alters a model's inputs).

The folder is written under a temporary name and renamed into place, so a crash never
leaves a half bundle.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data.atomic import disk_error
from data.classmap import ClassMap
from data.errors import UserError

from . import __version__
from .overrides import apply_assignment
from .progress import log
from .registry import MODELS
from .schema import SpecError, parse_component, renamed_keys, to_plain

FORMAT = "lidarseg-model-bundle"
FORMAT_VERSION = 1
#: version of the input computation (geometry/, pipeline/models/*_inputs.py) bundles are made for
INPUT_PIPELINE = 1
CHECKSUMS = "SHA256SUMS"
CARD = "MODEL.md"      # a shipped model's card (pipeline.shipped): for people, not checksummed


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_text(folder: Path) -> str:
    """``<sha256>  <name>`` lines for every file of the bundle (not the card nor the list)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in (CHECKSUMS, CARD))
    return "".join(f"{file_sha256(folder / n)}  {n}\n" for n in names)


def write_checksums(folder: Path) -> Path:
    """``folder/SHA256SUMS``: the sha256 of every file of the bundle (not the card)."""
    folder = Path(folder)
    (folder / CHECKSUMS).write_text(_checksum_text(folder), encoding="utf-8")
    return folder / CHECKSUMS


def bundle_digest(folder: Path) -> str:
    """One sha256 for the whole bundle: of its checksum lines (what predict's sidecars record
    as the model, ``pipeline.batch``)."""
    return hashlib.sha256(_checksum_text(Path(folder)).encode()).hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check ``folder/SHA256SUMS`` when present: every listed file exists and has its recorded
    sha256, and ``bundle.json`` is listed; else a ``UserError`` naming the bundle and the file."""
    folder = Path(folder)
    sums = folder / CHECKSUMS
    if not sums.is_file():
        return
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{sums}: unreadable checksum list ({exc})") from None
    listed = {}
    for i, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise UserError(f"{sums}: line {i} is not '<sha256>  <file name>'")
        listed[name] = digest.lower()
    if "bundle.json" not in listed:
        raise UserError(f"{sums}: bundle.json is not listed")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: {name} is listed in {CHECKSUMS} but missing")
        if file_sha256(path) != digest:
            raise UserError(f"{folder}: {name} does not match its sha256 in {CHECKSUMS} (changed or corrupt); "
                            "restore the bundle from the repository")


def _versions() -> dict[str, str]:
    import numpy
    import sklearn

    out = {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def save_bundle(path: Path, model: Any, class_map: ClassMap, summary: dict[str, Any],
                attachments: dict[str, Path] | None = None) -> Path:
    """Write the bundle folder atomically: the model's files, ``bundle.json`` and
    ``attachments`` (name in the bundle -> file to copy; pictures for people, never read back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save(tmp)
        for name, src in (attachments or {}).items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "project_version": __version__,
            "input_pipeline": INPUT_PIPELINE,
            "model": to_plain(model.config), "class_map": class_map.to_config(), "summary": summary,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        converted = disk_error(exc, path)
        if converted is not None:
            raise converted from None
        raise
    return path


@dataclass
class Bundle:
    """A loaded bundle: the trained model and what ``bundle.json`` says of it.

    ``model``: the model component (``predict(cloud, device)``; ``config`` its resolved
    Config); ``model_type``: its registered name; ``summary``: the training summary
    (``train_density`` ``{median, min, max}`` points/m^2 of the training files among it);
    ``meta``: ``bundle.json`` as read.
    """

    path: Path
    model: Any
    class_map: ClassMap
    model_type: str
    project_version: str
    input_pipeline: int
    summary: dict[str, Any]
    meta: dict[str, Any]

    @property
    def train_density(self) -> dict[str, float] | None:
        return self.summary.get("train_density")

    @property
    def card(self) -> Path | None:
        """``MODEL.md`` of a shipped model, else None."""
        return self.path / CARD if (self.path / CARD).is_file() else None

    def digest(self) -> str:
        """:func:`bundle_digest`: what a batch's sidecars record as the model."""
        return bundle_digest(self.path)

    def describe(self) -> str:
        """``point model (kpconvx network), classes ground, vegetation, ...``"""
        network = getattr(getattr(self.model.config, "network", None), "component_type", None)
        what = f"{self.model_type} model" + (f" ({network} network)" if network else "")
        return f"{what}, classes {', '.join(self.class_map.names)}"


def load_bundle(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Bundle:
    """Read a bundle folder into a :class:`Bundle`. Clear errors for a missing or foreign bundle.

    ``overrides``: ``key=VALUE`` assignments (``run.py predict --set``) of the model's
    prediction-time options, the dotted keys its class lists in ``predict_options`` (e.g.
    ``votes`` for KPConvX); other keys would no longer match the trained weights and are errors.
    """
    path = Path(path)
    meta_path = path / "bundle.json"
    if not meta_path.is_file():
        raise UserError(f"{path}: not a model bundle (no bundle.json inside; train one with 'run.py run SPEC')")
    verify_checksums(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{meta_path}: broken bundle metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: broken bundle metadata: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not a {FORMAT} file")
    for key, kind, name in (("format_version", int, "an integer"), ("model", dict, "an object"),
                            ("class_map", dict, "an object")):
        if key not in meta:
            raise UserError(f"{meta_path}: broken bundle metadata: {key!r} is missing")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise UserError(f"{meta_path}: broken bundle metadata: {key!r} must be {name}")
    if meta["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path}: bundle format {meta['format_version']} is newer than this program "
                        f"(reads {FORMAT_VERSION}); update the project")
    # bundles written before the field existed were made for the first input pipeline
    made_for = meta.get("input_pipeline", 1)
    if made_for != INPUT_PIPELINE:
        raise UserError(f"{meta_path}: input_pipeline: the model was trained on input pipeline {made_for!r} "
                        f"(lidarseg {meta.get('project_version', '?')}); this program computes pipeline "
                        f"{INPUT_PIPELINE} (lidarseg {__version__}), so its features would not mean what the model "
                        "learnt; retrain it with this version (bundle.json's 'model' holds its config)")
    try:
        class_map = ClassMap.from_config(meta["class_map"]["classes"], meta["class_map"].get("ignore", ()))
        model_cfg = MODELS.current_form(meta["model"], str(meta_path), "model")
        entry = MODELS.get(model_cfg.get("type"), str(meta_path), "model.type")
    except (KeyError, AttributeError, TypeError, ValueError, UserError) as exc:
        raise UserError(f"{meta_path}: broken bundle metadata: {exc}") from None
    if overrides:
        allowed = tuple(getattr(entry.target, "predict_options", ()))
        model_cfg = copy.deepcopy(model_cfg)
        renamed = renamed_keys(entry.config)
        for assignment in overrides:
            key = assignment.split("=", 1)[0].strip()
            if key in renamed and "=" in assignment:
                log(f"--set {key}: now called {renamed[key]!r}; the earlier name still works")
                key, assignment = renamed[key], f"{renamed[key]}={assignment.split('=', 1)[1]}"
            if key not in allowed:
                raise UserError(f"{path}: --set {key}: not a prediction option of a {entry.name} model "
                                f"(these are: {', '.join(allowed) or 'none'})")
            apply_assignment(model_cfg, assignment, str(path))
    try:
        config = parse_component(MODELS, model_cfg, "model", str(meta_path))
    except SpecError as exc:
        if overrides:
            raise UserError(f"{path}: --set {' --set '.join(overrides)}: {exc}") from None
        raise UserError(f"{meta_path}: broken bundle metadata: {exc}") from None
    versions = meta.get("versions", {})
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise UserError(f"{meta_path}: broken bundle metadata: 'versions' must map names to version strings")
    here = _versions()
    changed = {k: (v, here[k]) for k, v in versions.items()
               if k in here and k != "python" and v.split("+")[0] != here[k].split("+")[0]}
    if changed:
        log(f"warning: {path.name} was written with " + ", ".join(f"{k} {a} (here {b})" for k, (a, b) in changed.items())
            + "; predictions may differ slightly")
    summary = meta.get("summary") if isinstance(meta.get("summary"), dict) else {}
    model = entry.target.load(config, class_map, path)
    return Bundle(path, model, class_map, entry.name, str(meta.get("project_version", "?")), made_for, summary, meta)
