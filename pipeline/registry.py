"""Registries of spec components (steps, models).

A component is a class with a ``Config`` dataclass. Registering it under a name makes the
name usable as ``type:`` in a spec; the schema then checks the other keys against
``Config``::

    MODELS = Registry("model")

    @MODELS.register("random_forest")
    class RandomForestModel:
        @dataclass
        class Config: ...
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any          # the registered class
    config: type         # its Config dataclass


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(target: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            config = target.Config
            config.component_type = name  # lets schema.to_plain write the 'type' key back
            self._entries[name] = Entry(name, target, config)
            return target
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: Any, source: str = "spec", key: str = "type") -> Entry:
        from .schema import SpecError

        if name not in self._entries:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(source, key, f"unknown {self.kind} type {name!r}{extra}; "
                                         f"known: {', '.join(self.names())}")
        return self._entries[name]

    def for_config(self, config: Any) -> Entry:
        return self.get(type(config).component_type)


STEPS = Registry("step")
MODELS = Registry("model")
