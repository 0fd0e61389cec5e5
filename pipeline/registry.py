"""Registries of spec components (steps, models, point networks).

A component is a class with a ``Config`` dataclass. Registering it under a name makes the
name usable as ``type:`` in a spec; the schema then checks the other keys against
``Config``::

    MODELS = Registry("model", home="pipeline.components")

    @MODELS.register("random_forest")
    class RandomForestModel:
        @dataclass
        class Config: ...

A registry imports its ``home`` module (the one that imports every registering module) the
first time it is asked for a name, so no caller can look a type up before it is registered.
An earlier type name stays readable through :meth:`Registry.alias` (a function rewriting
such a mapping into the current form; a message says so).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any          # the registered class
    config: type         # its Config dataclass


class Registry:
    def __init__(self, kind: str, home: str):
        self.kind = kind
        self.home = home                 # the module whose import registers every entry
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, tuple[str, Callable[[dict], dict]]] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.home)

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(target: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            config = target.Config
            config.component_type = name  # lets schema.to_plain write the 'type' key back
            self._entries[name] = Entry(name, target, config)
            return target
        return deco

    def alias(self, old: str, new: str, translate: Callable[[dict], dict]) -> None:
        """Read ``{type: old, ...}`` (an earlier name) as ``translate(mapping)``, a ``type: new`` one;
        ``new`` says how to write it now."""
        self._aliases[old] = (new, translate)

    def current_form(self, data: Any, source: str, key: str) -> Any:
        """``data`` with an earlier type name rewritten into the current form (saying so), else as given."""
        self._load()
        if not isinstance(data, dict) or data.get("type") not in self._aliases:
            return data
        from .progress import log

        new, translate = self._aliases[data["type"]]
        log(f"{source}: {key}: {self.kind} type {data['type']!r} is an earlier name; it still works, "
            f"read as {new}")
        return translate({k: v for k, v in data.items()})

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: Any, source: str = "spec", key: str = "type") -> Entry:
        from .schema import SpecError

        self._load()
        if name not in self._entries:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(source, key, f"unknown {self.kind} type {name!r}{extra}; "
                                         f"known: {', '.join(self.names())}")
        return self._entries[name]

    def for_config(self, config: Any) -> Entry:
        return self.get(type_name(config))


def type_name(config: Any) -> str | None:
    """The registered name (the spec's ``type``) of a parsed component config, None for other objects."""
    return getattr(type(config), "component_type", None)


STEPS = Registry("step", home="pipeline.components")
MODELS = Registry("model", home="pipeline.components")
NETWORKS = Registry("network", home="pipeline.models.networks")
