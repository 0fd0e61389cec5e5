"""Spec files: load YAML/JSON, apply ``--set`` overrides, check against the schema.

Top-level keys (``Spec``)::

    name: ign_rf                 # run name (default 'run')
    output: ../runs/ign_rf       # output folder (relative to the spec file's folder)
    data_root: ../../shared/data/lidar   # input globs resolve against it (relative to the spec folder)
    seed: 0
    classes: {ground: [2], vegetation: [3, 4, 5]}   # class map: class -> input codes
    ignore: [7, 65, 66]          # codes left out of training and metrics
    inputs: {train: [train/*.laz], test: [test/*.laz]}   # named datasets (globs)
    # an input item may carry class-map changes for its files (pipeline.datasets):
    #   - {files: survey_b/*.laz, ignore: [1]}
    steps: [{type: train, ...}, {type: predict, ...}, {type: evaluate, ...}]

``--set a.b.c=VALUE`` sets a key by dotted path (VALUE parsed as YAML; list items by index).
A first segment that is not a top-level key addresses the step with that ``name`` or
``type`` (e.g. ``--set train.model.n_estimators=10``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.classmap import ClassMap
from data.errors import UserError

from .datasets import InputEntry
from .registry import STEPS
from .schema import Component, SpecError, parse


@dataclass
class Spec:
    classes: dict[str, list[int] | int]
    steps: list[Component(STEPS)]
    inputs: dict[str, list[str | InputEntry] | str] = field(default_factory=dict)
    name: str = "run"
    ignore: list[int] = field(default_factory=list)
    output: str | None = None
    data_root: str = "."
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.steps:
            raise UserError("'steps' is empty: nothing to run")


@dataclass
class LoadedSpec:
    spec: Spec
    path: Path                  # the spec file
    raw: dict[str, Any]         # the data after overrides (for resolved_spec.yaml)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def data_root(self) -> Path:
        return (self.folder / self.spec.data_root).resolve()

    @property
    def class_map(self) -> ClassMap:
        try:
            return ClassMap.from_config(self.spec.classes, self.spec.ignore)
        except SpecError:
            raise
        except UserError as exc:
            raise SpecError(str(self.path), "classes", str(exc)) from None

    def output_dir(self, override: str | None = None) -> Path:
        if override:
            return Path(override).resolve()
        if self.spec.output:
            return (self.folder / self.spec.output).resolve()
        return (Path.cwd() / "runs" / self.spec.name).resolve()


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: spec file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a spec must be a mapping of keys (name, classes, inputs, steps, ...)")
    return data


def apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    """Apply one ``dotted.key=VALUE`` override in place."""
    if "=" not in assignment:
        raise SpecError(source, f"--set {assignment}", "expected dotted.key=VALUE")
    dotted, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise SpecError(source, f"--set {assignment}", "empty key")
    node: Any = data
    if parts[0] not in data and parts[0] not in Spec.__dataclass_fields__:
        steps = data.get("steps") or []
        match = [s for s in steps if isinstance(s, dict) and parts[0] in (s.get("name"), s.get("type"))]
        if len(match) == 1:
            node, parts = match[0], parts[1:]
        elif len(match) > 1:
            raise SpecError(source, f"--set {dotted}", f"{len(match)} steps are called {parts[0]!r}; "
                                                       "use steps.INDEX.key")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                index = int(part)
                node[index]
            except (ValueError, IndexError):
                raise SpecError(source, f"--set {dotted}", f"{part!r} is not an index of a list of {len(node)}") from None
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise SpecError(source, f"--set {dotted}", f"cannot set {part!r} inside a {type(node).__name__}")


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, override and validate a spec; raises SpecError naming file and key."""
    from . import steps as _steps  # noqa: F401  (registers the step types)

    path = Path(path).resolve()
    data = copy.deepcopy(read_spec_file(path))
    for assignment in overrides:
        apply_override(data, assignment, str(path))
    spec = parse(Spec, data, "", str(path))
    loaded = LoadedSpec(spec, path, data)
    class_map = loaded.class_map  # validate the class map now
    for name, items in spec.inputs.items():
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            if isinstance(item, InputEntry):
                try:
                    class_map.with_overrides(item.classes, item.ignore)
                except UserError as exc:
                    raise SpecError(str(path), f"inputs.{name}[{i}]", str(exc)) from None
    for i, step in enumerate(spec.steps):
        check = getattr(STEPS.for_config(step).target, "check", None)
        if check:
            check(step, loaded, f"steps[{i}]")
    return loaded
