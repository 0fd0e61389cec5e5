"""``--set dotted.key=VALUE``: parse an assignment and set it inside plain data (dicts/lists).

Generic: knows nothing of specs or bundles. ``pipeline.spec`` adds step addressing
(``train.model.x`` for the step named or typed ``train``); ``pipeline.bundle`` uses it for a
trained model's prediction options.
"""
from __future__ import annotations

from typing import Any

import yaml

from .schema import SpecError


def parse_assignment(assignment: str, source: str) -> tuple[str, list[str], Any]:
    """``"a.b.0=VALUE"`` -> ``("a.b.0", ["a", "b", "0"], value)``; VALUE is parsed as YAML."""
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
    return dotted, parts, value


def set_path(node: Any, parts: list[str], value: Any, source: str, dotted: str) -> None:
    """Set ``value`` at ``parts`` inside ``node`` (list items by index; missing mappings created)."""
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


def apply_assignment(data: dict[str, Any], assignment: str, source: str) -> None:
    """Apply one ``dotted.key=VALUE`` to ``data`` in place (no step addressing)."""
    dotted, parts, value = parse_assignment(assignment, source)
    set_path(data, parts, value, source, dotted)


__all__ = ["parse_assignment", "set_path", "apply_assignment"]
