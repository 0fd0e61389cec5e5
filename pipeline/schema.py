"""Typed spec schema: turn parsed YAML/JSON into dataclass instances, with clear errors.

Every spec component is a dataclass; ``parse(cls, data, key, source)`` checks and converts
plain data against its type hints:

- unknown keys are errors with a "did you mean" hint, missing required keys are errors;
- ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``list[T]``, ``tuple[T, ...]``,
  ``dict[str, T]``, ``Optional``/``Union``, ``Literal`` and nested dataclasses;
- ``Component[registry]`` fields hold ``{type: NAME, ...}`` mappings whose other keys are
  checked against the config dataclass registered under NAME (see ``pipeline.registry``).

Errors are ``SpecError``: ``<file>: <dotted.key>: <what was expected>``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from data.errors import UserError

from .progress import log


#: the largest integer a spec may hold (a 64-bit signed value): sizes, seeds and counts
MAX_INT = 2**63 - 1


class SpecError(UserError):
    """A spec that does not match the schema; names the file and the dotted key."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class _ComponentMarker:
    """Metadata for ``Annotated[Any, _ComponentMarker(registry)]``."""

    def __init__(self, registry: Any):
        self.registry = registry


def Component(registry: Any) -> Any:  # noqa: N802 - reads like a type in annotations
    """Type of a field that selects a registered component by its ``type`` key."""
    return typing.Annotated[Any, _ComponentMarker(registry)]


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        marker = next((m for m in get_args(tp)[1:] if isinstance(m, _ComponentMarker)), None)
        return f"a {marker.registry.kind} mapping with a 'type'" if marker else _describe(get_args(tp)[0])
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _same_shape(tp: Any, data: Any) -> bool:
    """Whether ``tp`` is a container type of the same kind as ``data`` (list or mapping)."""
    origin = get_origin(tp)
    if isinstance(data, (list, tuple)):
        return origin in (list, tuple)
    if isinstance(data, dict):
        return origin is dict or dataclasses.is_dataclass(tp)
    return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else str(sub)


def parse(tp: Any, data: Any, key: str = "", source: str = "spec") -> Any:
    """Check ``data`` against type ``tp`` and convert it (dataclasses are instantiated)."""
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        marker = next((m for m in meta if isinstance(m, _ComponentMarker)), None)
        if marker is not None:
            return parse_component(marker.registry, data, key, source)
        return parse(base, data, key, source)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return parse(option, data, key, source)
            except SpecError as exc:
                errors.append((option, exc))
        # the option of the data's own shape (a list for a list, a mapping for a mapping) has
        # the message that names the inner key
        shaped = [exc for option, exc in errors if _same_shape(option, data)]
        if len(shaped) == 1:
            raise shaped[0]
        if len(errors) == 1:
            raise errors[0][1]
        raise SpecError(source, key, f"expected {_describe(tp)}, got {_short(data)}")
    if origin is Literal:
        if data not in get_args(tp):
            hint = difflib.get_close_matches(str(data), [str(a) for a in get_args(tp)], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(source, key, f"expected {_describe(tp)}, got {_short(data)}{extra}")
        return data
    if origin in (list, tuple):
        if not isinstance(data, (list, tuple)):
            raise SpecError(source, key, f"expected {_describe(tp)}, got {_short(data)}")
        item = get_args(tp)[0]
        out = [parse(item, v, _join(key, i), source) for i, v in enumerate(data)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(data, dict):
            raise SpecError(source, key, f"expected {_describe(tp)}, got {_short(data)}")
        _, value_tp = get_args(tp)
        return {str(k): parse(value_tp, v, _join(key, str(k)), source) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, data, key, source)
    if tp is bool:
        if not isinstance(data, bool):
            raise SpecError(source, key, f"expected true or false, got {_short(data)}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SpecError(source, key, f"expected an integer, got {_short(data)}")
        if abs(data) > MAX_INT:
            raise SpecError(source, key, f"integer out of range (|value| <= {MAX_INT})")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SpecError(source, key, f"expected a number, got {_short(data)}")
        if isinstance(data, int) and abs(data) > MAX_INT:
            raise SpecError(source, key, f"number out of range (|value| <= {MAX_INT})")
        if not math.isfinite(data):
            raise SpecError(source, key, f"expected a finite number, got {data}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise SpecError(source, key, f"expected a string, got {_short(data)}")
        if not data:
            raise SpecError(source, key, "expected a non-empty string")
        return data
    raise TypeError(f"schema: unsupported type {tp!r} at {key}")  # a bug in the schema, not user input


def _parse_dataclass(cls: type, data: Any, key: str, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, key, f"expected a mapping, got {_short(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls, include_extras=True)
    data = _current_names(fields, data, key, source)
    for name in data:
        if name not in fields:
            hint = difflib.get_close_matches(str(name), list(fields), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(fields)})"
            raise SpecError(source, _join(key, str(name)), f"unknown key{extra}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = parse(hints[name], data[name], _join(key, name), source)
            _check_range(f, values[name], _join(key, name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(source, _join(key, name), f"required key is missing (expected {_describe(hints[name])})")
    try:
        return cls(**values)
    except (UserError, ValueError) as exc:     # a config's own check (the operation layers raise ValueError)
        raise SpecError(source, key, str(exc)) from None


def _current_names(fields: dict[str, dataclasses.Field], data: dict, key: str, source: str) -> dict:
    """``data`` with keys of an earlier name (``option(was=...)``) under their current one, saying so."""
    renamed = {f.metadata["was"]: name for name, f in fields.items() if f.metadata.get("was")}
    if not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old in data:
            if new in data:
                raise SpecError(source, _join(key, old), f"the earlier name of {new!r}, which is given too; keep {new!r}")
            data[new] = data.pop(old)
            log(f"{source}: {_join(key, old)} is now called {new!r}; the earlier name still works")
    return data


def renamed_keys(cls: type) -> dict[str, str]:
    """``{earlier name: current name}`` of ``cls``'s top-level fields (``option(was=...)``)."""
    return {f.metadata["was"]: f.name for f in dataclasses.fields(cls) if f.metadata.get("was")}


def option(*, min: float | None = None, exclusive: bool = False, max: float | None = None, predict: bool = False,
           resume: bool = True, was: str | None = None, **kw: Any) -> Any:
    """A config dataclass field with the facts the rest of the project derives from it::

        radius: float = option(min=0, exclusive=True, default=10.0)
        votes: int = option(min=1, predict=True, resume=False, default=3)

    - ``min`` / ``exclusive``: numbers (the value, or each item of a list) must be ``>= min``
      (``> min``); ``max``: ``<= max``; the schema checks it and names the key;
    - ``predict``: a trained bundle's option that ``run.py predict --set`` may change
      (:func:`keys_where`, e.g. a model's ``predict_options``);
    - ``resume=False``: not part of what a checkpoint must match to be resumed (how long,
      how often, how predictions are made);
    - ``was``: the key's earlier name, still read (specs, bundles, ``--set``) with a line saying so.
    """
    return dataclasses.field(metadata={"min": min, "exclusive": exclusive, "max": max, "predict": predict,
                                       "resume": resume, "was": was}, **kw)


def keys_where(cls: type, flag: str, value: bool = True, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of ``cls``'s fields (nested config dataclasses included) whose
    :func:`option` ``flag`` is ``value``; fields without metadata count as the defaults."""
    defaults = {"predict": False, "resume": True}
    hints = get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += keys_where(tp, flag, value, f"{prefix}{f.name}.")
        elif f.metadata.get(flag, defaults[flag]) == value:
            out.append(prefix + f.name)
    return tuple(out)


def without_keys(plain: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A deep copy of ``plain`` (``to_plain`` output) without the dotted ``keys``."""
    out = copy.deepcopy(plain)
    for key in keys:
        node, *path, last = [out, *key.split(".")]
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _check_range(f: dataclasses.Field, value: Any, key: str, source: str) -> None:
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if (low is None and high is None) or value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    excl = f.metadata.get("exclusive", False)
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if low is not None and (v <= low if excl else v < low):
            raise SpecError(source, key, f"must be {'>' if excl else '>='} {low:g}, got {v}")
        if high is not None and v > high:
            raise SpecError(source, key, f"must be <= {high:g}, got {v}")


def parse_component(registry: Any, data: Any, key: str, source: str) -> Any:
    """``{type: NAME, **options}`` -> the config dataclass registered as NAME."""
    data = registry.current_form(data, source, key)
    if not isinstance(data, dict) or "type" not in data:
        raise SpecError(source, _join(key, "type") if isinstance(data, dict) else key,
                        f"expected a mapping with a 'type' key (one of: {', '.join(registry.names())})")
    name = data["type"]
    entry = registry.get(name, source=source, key=_join(key, "type"))
    options = {k: v for k, v in data.items() if k != "type"}
    return _parse_dataclass(entry.config, options, key, source)


def to_plain(obj: Any) -> Any:
    """Dataclass instances (with their registry ``type``) -> plain dicts/lists for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        name = getattr(type(obj), "component_type", None)     # registry.type_name (no import circle)
        if name:
            out["type"] = name
        for f in dataclasses.fields(obj):
            out[f.name] = to_plain(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj
