"""Class maps: input codes (e.g. LAS classification) -> training classes.

A spec declares the map once::

    classes:
      ground: [2]
      vegetation: [3, 4, 5]
    ignore: [7, 65, 66]

Class ``i`` is the i-th entry in declaration order. Ignored codes map to ``IGNORE`` (-1) and
are left out of the loss and of every metric. A code that is neither mapped nor ignored is
an error (it usually means the class map does not fit the data).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError, UserError

IGNORE = -1
UNKNOWN = -2      # ClassMap.lookup: a code neither mapped nor ignored
_MAX_CODE = 65535  # codes are at most uint16 (LAS classification is uint8, extra dims may be wider)


@dataclass(frozen=True)
class ClassMap:
    names: tuple[str, ...]
    codes: tuple[tuple[int, ...], ...]   # codes[i] = input codes of class i; codes[i][0] is written back
    ignore: tuple[int, ...] = ()
    #: a map derived by :meth:`with_overrides` for one survey may leave a class without codes
    #: (it then labels no point of that survey); a spec's own map may not
    allow_empty: bool = field(default=False, compare=False, repr=False)
    #: ``(code, class indices)``: codes that mean "one of these classes" in one survey (e.g.
    #: AHN code 1: vegetation or any other object). They encode as ``IGNORE`` (never scored,
    #: dropped by the forest); :meth:`candidates` gives the torch models the sets
    ambiguous: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise UserError("class map: at least one class is needed")
        if len(set(self.names)) != len(self.names):
            raise UserError(f"class map: duplicate class names in {list(self.names)}")
        seen: dict[int, str] = {}
        for name, codes in zip(self.names, self.codes):
            if not codes and not self.allow_empty:
                raise UserError(f"class map: class {name!r} has no input codes")
            for code in codes:
                if not (0 <= int(code) <= _MAX_CODE):
                    raise UserError(f"class map: code {code} of class {name!r} is outside 0..{_MAX_CODE}")
                if code in seen:
                    raise UserError(f"class map: code {code} is in both {seen[code]!r} and {name!r}")
                seen[code] = name
        for code in self.ignore:
            if code in seen:
                raise UserError(f"class map: code {code} is both ignored and in class {seen[code]!r}")
        for code, members in self.ambiguous:
            if code in seen or code in self.ignore:
                raise UserError(f"class map: ambiguous code {code} is also mapped or ignored")
            if len(set(members)) < 2 or not all(0 <= m < len(self.names) for m in members):
                raise UserError(f"class map: ambiguous code {code} needs two or more classes of the map")

    # -- construction / serialisation -------------------------------------------------
    @classmethod
    def from_config(cls, classes: Mapping[str, Sequence[int] | int], ignore: Sequence[int] = ()) -> "ClassMap":
        names = tuple(str(n) for n in classes)
        codes = tuple(tuple(int(c) for c in (v if isinstance(v, (list, tuple)) else [v])) for v in classes.values())
        return cls(names, codes, tuple(int(c) for c in ignore))

    def to_config(self) -> dict[str, Any]:
        return {"classes": {n: list(c) for n, c in zip(self.names, self.codes)}, "ignore": list(self.ignore)}

    def _class_name(self, name: str, key: str) -> int:
        if name not in self.names:
            hint = difflib.get_close_matches(str(name), self.names, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (classes: {', '.join(self.names)})"
            raise UserError(f"{key}: not a class of the class map{extra}")
        return self.names.index(name)

    def with_overrides(self, classes: Mapping[str, Sequence[int]] | None = None,
                       ignore: Sequence[int] = (), ambiguous: Mapping[int, Sequence[str]] | None = None) -> "ClassMap":
        """This map with some codes moved, for the files of one survey.

        ``classes`` maps class names of this map to codes that mean that class in the survey
        (each code is taken out of the class or ignore list that held it); ``ignore`` lists
        codes to leave out there (e.g. code 1 where it means "not classified yet");
        ``ambiguous`` maps codes to the set of classes they may mean there (two or more; e.g.
        ``{1: [vegetation, other]}``). Class names, order and the codes written back are
        unchanged. Raises ``UserError`` for an unknown class name or a code given twice.
        """
        classes = dict(classes or {})
        ignore = [int(c) for c in ignore]
        sets = {int(c): tuple(sorted({self._class_name(n, f"ambiguous.{c}.{n}") for n in names}))
                for c, names in (ambiguous or {}).items()}
        for name in classes:
            self._class_name(name, f"classes.{name}")
        moved = {int(c): name for name, codes in classes.items() for c in codes}
        both = sorted(set(moved) & set(ignore))
        if both:
            raise UserError(f"code(s) {both} are both ignored and moved to a class")
        twice = sorted(set(sets) & (set(moved) | set(ignore)))
        if twice:
            raise UserError(f"code(s) {twice} are ambiguous and also moved or ignored")
        for c, members in sets.items():
            if len(members) < 2:
                raise UserError(f"ambiguous.{c}: give two or more classes (one class is 'classes: {{name: [{c}]}}')")
        taken = set(moved) | set(ignore) | set(sets)
        codes = tuple(tuple(c for c in own if c not in taken)
                      + tuple(sorted(c for c, n in moved.items() if n == name))
                      for name, own in zip(self.names, self.codes))
        kept_ignore = tuple(c for c in self.ignore if c not in taken) + tuple(sorted(set(ignore)))
        kept_sets = tuple((c, m) for c, m in self.ambiguous if c not in taken) + tuple(sorted(sets.items()))
        return ClassMap(self.names, codes, kept_ignore, allow_empty=True, ambiguous=kept_sets)

    @classmethod
    def identity(cls, codes: Sequence[int]) -> "ClassMap":
        """One class per code, named ``code_N`` (used when no class map is given)."""
        codes = sorted({int(c) for c in codes})
        return cls(tuple(f"code_{c}" for c in codes), tuple((c,) for c in codes))

    # -- mapping ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def output_codes(self) -> np.ndarray:
        """``[num_classes]`` the code written back for each class (its first code)."""
        return np.array([c[0] for c in self.codes], dtype=np.int64)

    def _lut(self) -> np.ndarray:
        lut = np.full(_MAX_CODE + 1, UNKNOWN, dtype=np.int64)
        for i, codes in enumerate(self.codes):
            lut[list(codes)] = i
        lut[list(self.ignore)] = IGNORE
        lut[[c for c, _ in self.ambiguous]] = IGNORE
        return lut

    def candidates(self, codes: np.ndarray) -> np.ndarray | None:
        """``[N, num_classes]`` bool: for points of an ambiguous code, the classes it may mean
        (all False elsewhere); None when this map has no ambiguous code. The partial-label
        loss ``-log sum_{c in set} p_c`` trains on these rows."""
        if not self.ambiguous:
            return None
        table = np.zeros((_MAX_CODE + 1, self.num_classes), bool)
        for code, members in self.ambiguous:
            table[code, list(members)] = True
        return table[np.asarray(codes, np.int64)]

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[N]`` in ``0..65535`` -> class indices ``[N]`` int64, ``IGNORE`` for ignored
        codes and ``UNKNOWN`` for codes neither mapped nor ignored (no error)."""
        return self._lut()[np.asarray(codes, np.int64)]

    def encode(self, codes: np.ndarray, source: object = "input") -> np.ndarray:
        """Input codes ``[N]`` -> class indices ``[N]`` int64 (``IGNORE`` for ignored codes).

        Raises DataError naming ``source`` when a code is neither mapped nor ignored.
        """
        codes = np.asarray(codes).astype(np.int64, copy=False)
        if codes.size and (codes.min() < 0 or codes.max() > _MAX_CODE):
            raise DataError(source, f"class codes outside 0..{_MAX_CODE}")
        labels = self.lookup(codes)
        unknown = labels == UNKNOWN
        if unknown.any():
            bad, counts = np.unique(codes[unknown], return_counts=True)
            listing = ", ".join(f"{c} ({n} points)" for c, n in zip(bad.tolist(), counts.tolist()))
            raise DataError(source, f"class code(s) {listing} are not in the class map "
                                    f"(classes: {self.to_config()['classes']}, ignore: {list(self.ignore)}); "
                                    "add them to a class or to 'ignore'")
        return labels

    def canonical(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[N]`` -> the first code of their class (``4`` -> ``3`` when vegetation is
        ``[3, 4, 5]``); ignored and unknown codes unchanged. Pictures colour by it, so a
        reference and a prediction of the same class look alike."""
        codes = np.asarray(codes).astype(np.int64)
        labels = self.lookup(codes)
        return np.where(labels >= 0, self.output_codes[np.maximum(labels, 0)], codes)

    def decode(self, labels: np.ndarray) -> np.ndarray:
        """Class indices ``[N]`` -> input codes ``[N]`` (the first code of each class)."""
        return self.output_codes[np.asarray(labels)]
