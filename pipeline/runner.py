"""Run a spec: each step in order, sharing one ``RunContext``.

Every run writes ``OUT/resolved_spec.yaml`` (the spec after ``--set`` overrides and
defaults, with the resolved input files) before the first step.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.atomic import atomic_path, make_folder
from data.classmap import ClassMap
from data.errors import UserError
from data.locks import folder_lock

from . import distributed
from .datasets import InputEntry, LabelledFile
from .inputs import expand_patterns
from .progress import log
from .registry import STEPS
from .schema import to_plain
from .spec import LoadedSpec, load_spec


@dataclass
class RunContext:
    loaded: LoadedSpec
    out_dir: Path
    device: str = "cpu"
    limit_steps: int | None = None
    resume: bool = False
    stop_after: int | None = None
    overwrite: bool = False           # train again over a checkpoint left in the output folder
    bundles: dict[str, Path] = field(default_factory=dict)            # train step name -> bundle
    predictions: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)  # predict name -> [(input, output)]

    @property
    def class_map(self) -> ClassMap:
        return self.loaded.class_map

    @property
    def seed(self) -> int:
        return self.loaded.spec.seed

    def resolve_labelled(self, value: str | list[str], key: str) -> list[LabelledFile]:
        """A dataset name from ``inputs`` or glob(s) -> files with their class maps.

        Relative globs resolve against ``data_root``. A file matched by an entry with
        ``ignore``/``classes`` gets the spec's class map with those changes (and an entry's
        ``bounds`` window); a file matched by two entries with different changes is an error
        naming both.
        """
        spec = self.loaded.spec
        source = str(self.loaded.path)
        names = [value] if isinstance(value, str) else list(value)
        items: list[tuple[str | InputEntry, str]] = []
        for name in names:
            if name in spec.inputs:
                ds = spec.inputs[name]
                ds = [ds] if isinstance(ds, str) else ds
                items.extend((item, f"inputs.{name}[{i}]") for i, item in enumerate(ds))
            else:
                items.append((name, key))
        chosen: dict[Path, tuple[ClassMap, str, InputEntry | None]] = {}
        for item, where in items:
            entry = item if isinstance(item, InputEntry) else None
            patterns = entry.patterns if entry else [item]
            cmap = entry.class_map(self.class_map) if entry else self.class_map
            for path in expand_patterns(patterns, self.loaded.data_root, f"{source}: {where}"):
                if path in chosen:
                    prev_map, prev_where, prev_entry = chosen[path]
                    if prev_entry is None and entry is not None:
                        chosen[path] = (cmap, where, entry)      # the entry with changes wins
                    elif entry is not None and (prev_map != cmap or prev_entry.window != entry.window):
                        raise UserError(f"{source}: {where}: {path.name} is also matched by {prev_where} "
                                        "with other class-map changes or another window; give each file one entry")
                    continue
                chosen[path] = (cmap, where, entry)
        return [LabelledFile(p, m, bounds=e.window if e else None) for p, (m, _, e) in chosen.items()]

    def resolve_inputs(self, value: str | list[str], key: str) -> list[Path]:
        """A dataset name from ``inputs`` or glob(s) -> files (relative globs against data_root)."""
        return [f.path for f in self.resolve_labelled(value, key)]


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", str(device)):
        raise UserError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_inputs(loaded: LoadedSpec) -> dict[str, list[Path]]:
    """Resolve every input a spec names (its datasets and each step's ``inputs``/``val_inputs``/
    ``reference``), so that ``validate`` fails where ``run`` would: a glob that matches nothing,
    a missing ``data_root``, contradictory input entries. Returns each dataset's files."""
    if not loaded.data_root.is_dir():
        raise UserError(f"{loaded.path}: data_root: {loaded.data_root} is not a folder")
    ctx = RunContext(loaded, loaded.output_dir())
    datasets = {name: ctx.resolve_inputs(name, f"inputs.{name}") for name in loaded.spec.inputs}
    for i, step in enumerate(loaded.spec.steps):
        for key in ("inputs", "val_inputs", "reference"):
            value = getattr(step, key, None)
            if value:
                ctx.resolve_labelled(value, f"steps[{i}].{key}")
    return datasets


def run_spec(path: str | Path, overrides: list[str] = (), out: str | None = None, device: str | None = None,
             limit_steps: int | None = None, resume: bool = False, stop_after: int | None = None,
             overwrite: bool = False) -> RunContext:
    for flag, value in (("--limit-steps", limit_steps), ("--stop-after", stop_after)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    device = distributed.setup(resolve_device(device))
    loaded = load_spec(path, overrides)
    datasets = check_inputs(loaded)
    out_dir = make_folder(loaded.output_dir(out), "--out" if out else f"{loaded.path}: output")
    ctx = RunContext(loaded, out_dir, device, limit_steps, resume, stop_after=stop_after, overwrite=overwrite)
    resolved = to_plain(loaded.spec)
    resolved["resolved"] = {"spec_file": str(loaded.path), "data_root": str(loaded.data_root),
                            "output": str(out_dir), "device": ctx.device, "limit_steps": limit_steps,
                            "inputs": {name: [str(p) for p in files] for name, files in datasets.items()}}
    # one run at a time per output folder (data/locks.py); torchrun's rank 0 holds it for all
    with folder_lock(out_dir, "--out" if out else f"{loaded.path}: output", log, hold=distributed.is_main()):
        if distributed.is_main():
            with atomic_path(out_dir / "resolved_spec.yaml") as tmp:
                Path(tmp).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        for i, step in enumerate(loaded.spec.steps):
            entry = STEPS.for_config(step)
            t0 = time.perf_counter()
            log(f"[{i + 1}/{len(loaded.spec.steps)}] {entry.name}")
            entry.target.run(step, ctx, f"steps[{i}]")
            log(f"[{i + 1}/{len(loaded.spec.steps)}] {entry.name} done in {time.perf_counter() - t0:.1f} s")
    return ctx
