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

``base: other.yaml`` (relative to the spec's folder; a base may have a base of its own) starts
from that file (``base: [a.yaml, b.yaml]``: from ``a`` with ``b`` merged over it): the spec's keys are merged over it (mappings key by key; ``steps`` step by
step, a step matching the base's step of the same ``name``, or of the same ``type`` when it
gives no name, and new steps appended; other lists and values replaced), then the result is
validated; ``resolved_spec.yaml`` records the merged spec. Paths stay relative to the spec
being run, so bases live beside the specs that use them.

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
from .overrides import parse_assignment, set_path
from .registry import STEPS, type_name
from .schema import Component, SpecError, option, parse


@dataclass
class Spec:
    classes: dict[str, list[int] | int]
    steps: list[Component(STEPS)]
    inputs: dict[str, list[str | InputEntry] | str] = field(default_factory=dict)
    name: str = "run"
    ignore: list[int] = field(default_factory=list)
    output: str | None = None
    data_root: str = "."
    seed: int = option(min=0, default=0)

    def steps_of(self, kind: str, upto: int | None = None) -> list[Any]:
        """The steps of one type (``train``, ``predict``, ...), in order; ``upto``: among the
        first ``upto`` steps only."""
        return [s for s in self.steps[:upto] if type_name(s) == kind]

    def __post_init__(self) -> None:
        if not self.steps:
            raise UserError("'steps' is empty: nothing to run")
        if self.seed >= 2**32:
            raise UserError(f"seed must be < 2**32 (numpy and scikit-learn seeds), got {self.seed}")
        for name, items in self.inputs.items():
            if items == [] or items == "":
                raise UserError(f"inputs.{name}: empty; give at least one path or glob")
        for kind in ("train", "predict"):
            names = [s.name for s in self.steps_of(kind)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise UserError(f"steps: two {kind} steps are named {dup[0]!r}; give each its own 'name'")


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


def check_output_name(loaded: "LoadedSpec", key: str, value: str) -> None:
    """A step's output folder must be a relative path that stays inside the run's output folder
    (no absolute path, no ``..``): a spec never writes elsewhere (``--out`` on the command line
    chooses the run folder itself)."""
    p = Path(value)
    if not value or p.is_absolute() or ".." in p.parts or value.startswith("~"):
        raise SpecError(str(loaded.path), key, f"{value!r} must be a relative folder inside the run's output "
                                               "folder (no absolute path, no '..')")


MAX_DEPTH = 32


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key {dup[0]!r}")
    return dict(pairs)


def _depth(data: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(data, dict):
        return max([_depth(v, level + 1) for v in data.values()] or [level + 1])
    if isinstance(data, list):
        return max([_depth(v, level + 1) for v in data] or [level + 1])
    return level


MAX_VALUES = 1_000_000


def _expanded_size(data: Any, memo: dict[int, int] | None = None) -> int:
    """How many values ``data`` holds once every shared (YAML-aliased) container is counted
    each time it is referenced; computed once per distinct container, so a "billion laughs"
    document is sized without being walked."""
    memo = {} if memo is None else memo
    if not isinstance(data, (dict, list)):
        return 1
    key = id(data)
    if key not in memo:
        memo[key] = 0           # a self-referencing alias counts as one value
        children = data.values() if isinstance(data, dict) else data
        memo[key] = 1 + sum(_expanded_size(v, memo) for v in children)
    return memo[key]


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: spec file not found")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the spec ({exc.strerror or exc})") from None
    try:
        if kind == "JSON":
            data = json.loads(text, object_pairs_hook=_unique_json_keys)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not valid {kind}: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a spec") from None
    try:
        size = _expanded_size(data)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a spec") from None
    if size > MAX_VALUES:
        raise UserError(f"{path}: its YAML aliases expand to {size:,} values (more than {MAX_VALUES:,}); "
                        "a spec never does: refused")
    if _depth(data) > MAX_DEPTH:
        raise UserError(f"{path}: nested deeper than {MAX_DEPTH} levels; a spec never is")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a spec must be a mapping of keys (name, classes, inputs, steps, ...)")
    return data


MAX_BASES = 8


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def compose_spec_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec file's data with its ``base:`` chain merged under it (see the module doc).
    ``base`` names one file or a list of them, merged in order (each later one over the
    earlier), then the spec over them all.
    Paths in the result stay relative to the top spec's folder, so a base used from another
    folder should hold only paths that mean the same from there (keep bases beside their specs)."""
    path = Path(path).resolve()
    data = read_spec_file(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and bases and all(isinstance(b, str) and b for b in bases)):
        raise SpecError(str(path), "base", "expected the path of another spec file (relative to this one), "
                                           "or a list of them")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge_spec(merged, compose_spec_file(_base_path(path, base, _chain), _chain + (path,)),
                             str(path))
    return _merge_spec(merged, data, str(path))


def _base_path(path: Path, base: str, chain: tuple[Path, ...]) -> Path:
    """The base file ``base`` named in the spec at ``path``, checked: no cycle, no chain
    longer than ``MAX_BASES``, the file exists."""
    base_path = (path.parent / base).resolve()
    if base_path in chain + (path,):
        raise SpecError(str(path), "base", f"{base} is already in the chain of bases: "
                                           f"{' -> '.join(p.name for p in chain + (path, base_path))}")
    if len(chain) >= MAX_BASES:
        raise SpecError(str(path), "base", f"more than {MAX_BASES} bases in a chain")
    if not base_path.is_file():
        raise SpecError(str(path), "base", f"{base} not found (looked for {base_path})")
    return base_path


def _merge_spec(base: dict[str, Any], over: dict[str, Any], source: str) -> dict[str, Any]:
    """``over`` merged onto ``base``: keys by :func:`deep_merge`, ``steps`` by :func:`_merge_steps`."""
    over = dict(over)
    steps = over.pop("steps", None)
    merged = deep_merge(base, over)
    if steps is not None:
        merged["steps"] = _merge_steps(merged.get("steps"), steps, source)
    return merged


def _merge_steps(base: Any, steps: Any, source: str) -> Any:
    """A spec's ``steps`` over its base's: each step merged into the base step of the same
    ``name`` (or the one base step of the same ``type``), unmatched ones appended."""
    if not (isinstance(base, list) and isinstance(steps, list)):
        return copy.deepcopy(steps)
    out = copy.deepcopy(base)
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            out.append(copy.deepcopy(step))
            continue
        key = "name" if "name" in step else "type"
        matches = [j for j, b in enumerate(out) if isinstance(b, dict) and key in step and b.get(key) == step[key]]
        if len(matches) > 1:
            raise SpecError(source, f"steps[{i}]", f"matches {len(matches)} steps of the base by {key} "
                                                   f"{step[key]!r}; give it the 'name' of one")
        if matches:
            out[matches[0]] = deep_merge(out[matches[0]], step)
        else:
            out.append(copy.deepcopy(step))
    return out


def apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    """Apply one ``dotted.key=VALUE`` override in place; a first segment that is not a
    top-level key addresses the step with that ``name`` or ``type``."""
    dotted, parts, value = parse_assignment(assignment, source)
    node: Any = data
    if parts[0] not in data and parts[0] not in Spec.__dataclass_fields__:
        steps = data.get("steps") or []
        match = [s for s in steps if isinstance(s, dict) and parts[0] in (s.get("name"), s.get("type"))]
        if len(match) == 1:
            node, parts = match[0], parts[1:]
        elif len(match) > 1:
            raise SpecError(source, f"--set {dotted}", f"{len(match)} steps are called {parts[0]!r}; "
                                                       "use steps.INDEX.key")
    set_path(node, parts, value, source, dotted)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, override and validate a spec; raises SpecError naming file and key."""
    path = Path(path).resolve()
    data = compose_spec_file(path)
    for assignment in overrides:
        apply_override(data, assignment, str(path))
    spec = parse(Spec, data, "", str(path))
    loaded = LoadedSpec(spec, path, data)
    class_map = loaded.class_map  # validate the class map now
    for name, items in spec.inputs.items():
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            if isinstance(item, InputEntry):
                try:
                    item.class_map(class_map)
                except UserError as exc:
                    raise SpecError(str(path), f"inputs.{name}[{i}]", str(exc)) from None
    for i, step in enumerate(spec.steps):
        check = getattr(STEPS.for_config(step).target, "check", None)
        if check:
            check(step, loaded, f"steps[{i}]")
    return loaded
