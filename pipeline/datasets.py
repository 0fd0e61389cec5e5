"""Labelled training data: which files, with which class map, and which points of them.

A spec's input list may mix plain globs and entries with per-survey class-map changes::

    inputs:
      train:
        - ign_lidarhd/train/mnx_*.laz
        - {files: ign_lidarhd/train/St_Barth*.laz, ignore: [1]}   # code 1 = "not classified yet"
        - {files: other_survey/*.laz, classes: {vegetation: [1]}}  # code 1 is vegetation there
        - {files: big/*.copc.laz, bounds: [x0, y0, x1, y1]}        # only this window of them

A train step can carve its validation data out of the training files with ``val_split``:
square blocks of ``block`` metres (aligned to multiples of it) are drawn per file, in a
fixed random order (``seed`` and the file name), until they hold ``fraction`` of the file's
points. Training never sees the labels of those blocks; validation scores only their points.
The blocks' points stay in the training clouds as unlabelled context, so every model reads
whole files (features and receptive fields near a block edge are the same in both parts).

Models receive :class:`LabelledFile` items and call :meth:`LabelledFile.read`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data.bounds import Bounds, bounds_problem
from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError
from data.io import read_cloud
from data.pointcloud import PointCloud


@dataclass
class InputEntry:
    """One item of an input list that carries class-map changes for the files it matches."""

    files: str | list[str]                                   # path(s) or glob(s)
    ignore: list[int] = field(default_factory=list)          # codes left out in these files
    classes: dict[str, list[int]] = field(default_factory=dict)  # class -> codes that mean it here
    bounds: list[float] | None = None     # [xmin, ymin, xmax, ymax]: only this window (data/bounds.py)
    #: code -> the classes it may mean here (two or more), e.g. {1: [vegetation, other]}: the
    #: torch point models train on it with a partial-label loss; never scored; the forest drops it
    ambiguous: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.files:
            raise UserError("files: give at least one path or glob")
        if not (self.ignore or self.classes or self.ambiguous or self.bounds is not None):
            raise UserError("an entry with 'files' needs 'ignore', 'classes', 'ambiguous' or 'bounds' "
                            "(else write the glob alone)")
        for code in self.ambiguous:
            if not str(code).isdigit():
                raise UserError(f"ambiguous.{code}: expected a class code (an integer)")
        problem = None if self.bounds is None else bounds_problem(self.bounds)
        if problem:
            raise UserError(f"bounds: {problem}")

    @property
    def window(self) -> Bounds | None:
        return None if self.bounds is None else Bounds.of(self.bounds, "bounds")

    def class_map(self, base: ClassMap) -> ClassMap:
        """``base`` with this entry's changes (``classes``, ``ignore``, ``ambiguous``)."""
        return base.with_overrides(self.classes, self.ignore, {int(c): v for c, v in self.ambiguous.items()})

    @property
    def patterns(self) -> list[str]:
        return [self.files] if isinstance(self.files, str) else list(self.files)


@dataclass
class ValSplit:
    """Validation blocks carved out of the training files (deterministic)."""

    fraction: float = 0.2      # share of each file's points in validation blocks
    block: float = 25.0        # metres; square blocks aligned to multiples of it
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise UserError(f"fraction must be in (0, 1), got {self.fraction}")
        if not (self.block > 0 and np.isfinite(self.block)):
            raise UserError(f"block must be a positive number of metres, got {self.block}")

    def val_mask(self, xyz: np.ndarray, name: str) -> np.ndarray:
        """``[N]`` bool: the points in this file's validation blocks.

        Blocks are ``floor(xy / block)``; they are taken in a random order seeded by
        ``(seed, crc32(name))`` until they hold ``>= fraction`` of the points. A file with a
        single block keeps it for training (an all-validation file would train nothing).
        """
        n = len(xyz)
        if n == 0:
            return np.zeros(0, bool)
        keys = np.floor(np.asarray(xyz)[:, :2] / self.block).astype(np.int64)
        blocks, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        if len(blocks) < 2:
            return np.zeros(n, bool)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])
        order = rng.permutation(len(blocks))
        cum = np.cumsum(counts[order])
        take = int(np.searchsorted(cum, self.fraction * n)) + 1      # first prefix reaching the share
        take = min(take, len(blocks) - 1)
        chosen = np.zeros(len(blocks), bool)
        chosen[order[:take]] = True
        return chosen[inv.reshape(-1)]


Part = Literal["all", "train", "val"]


def reference_codes(cloud: PointCloud) -> np.ndarray:
    """The cloud's reference class codes (``classification``); a clear error when it has none."""
    if not cloud.has("classification"):
        raise DataError(cloud.source, "has no 'classification' field; training and validation need "
                                      "reference labels")
    return cloud.fields["classification"]


@dataclass(frozen=True)
class LabelledFile:
    """A training or validation file: its class map and, under a split, which part of it."""

    path: Path
    class_map: ClassMap
    split: ValSplit | None = None
    part: Part = "all"
    bounds: Bounds | None = None      # read only this x/y window of the file

    def with_part(self, split: ValSplit, part: Part) -> "LabelledFile":
        return LabelledFile(self.path, self.class_map, split, part, self.bounds)

    @property
    def label(self) -> str:
        """File name as shown in logs and bundle summaries (``name [val blocks]`` under a split)."""
        return self.path.name if self.part == "all" else f"{self.path.name} [{self.part} blocks]"

    @property
    def val_group(self) -> str:
        """Which validation set this file belongs to: ``blocks`` (of a training file under a
        split) or ``held_out`` (a whole file of ``val_inputs``)."""
        return "blocks" if self.part == "val" else "held_out"

    def labels(self, cloud: PointCloud) -> np.ndarray:
        """``[N]`` int64 class indices of ``cloud`` (read from this file), ``IGNORE`` where not used."""
        labels = self.class_map.encode(reference_codes(cloud), self.path)
        if self.split is not None and self.part != "all":
            in_val = self.split.val_mask(cloud.xyz, self.path.name)
            labels[in_val if self.part == "train" else ~in_val] = IGNORE
        return labels

    def read(self) -> tuple[PointCloud, np.ndarray]:
        """``(cloud, labels [N])``: the file (its window under ``bounds``) and :meth:`labels`."""
        cloud = read_cloud(self.path, bounds=self.bounds)
        return cloud, self.labels(cloud)

    def candidates(self, cloud: PointCloud) -> np.ndarray | None:
        """``[N, C]`` bool: the classes an ambiguous code's points may mean (``ClassMap.candidates``),
        all False outside this part of a split; None when the file has no ambiguous code."""
        cand = self.class_map.candidates(reference_codes(cloud))
        if cand is not None and self.split is not None and self.part != "all":
            in_val = self.split.val_mask(cloud.xyz, self.path.name)
            cand[in_val if self.part == "train" else ~in_val] = False
        return cand


def split_files(files: list[LabelledFile], split: ValSplit) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """-> (training parts, validation parts) of the same files under ``split``."""
    return [f.with_part(split, "train") for f in files], [f.with_part(split, "val") for f in files]


__all__ = ["InputEntry", "ValSplit", "LabelledFile", "split_files", "reference_codes"]
