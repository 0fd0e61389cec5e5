"""Input sampling for point networks: spheres / vertical cylinders, augmentation, coverage.

Training draws *regions* (a ball of radius ``r``, or an infinitely tall vertical cylinder
of radius ``r``) around random centres; centres are points drawn class-balanced (a class
uniformly among the classes present, then a point of that class uniformly), so rare classes
are seen as often as common ones. A region keeps at most ``max_points`` points, the ones
nearest its centre (horizontal distance for cylinders).

Inference covers a cloud with overlapping regions whose centres are the centres of the
occupied cells of a regular grid (3-D for spheres, 2-D for cylinders) of spacing
``spacing <= 2r/sqrt(3)`` (spheres) or ``<= sqrt(2) r`` (cylinders): every point lies
within ``r`` of its own cell's centre, so every point is reached unless a region hits the
``max_points`` cap. Softmax outputs are summed per original point and divided by the
count; points no region reached take the probabilities of the nearest reached point (the
count is reported). Regions go through the network in passes of at most ``points_per_pass``
points, so memory is bounded by ``N x classes`` plus one pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

import numpy as np

from data.errors import UserError
from geometry.grids import unique_rows
from geometry.neighbors import NeighborIndex
from pipeline.schema import option

__all__ = ["SamplingConfig", "AugmentConfig", "Region", "RegionSampler", "ClassBalancedCenters",
           "augment", "stretch_heights", "rotation_z", "sampled_class_counts", "coverage_centers", "iter_passes", "predict_coverage"]


@dataclass
class SamplingConfig:
    shape: Literal["sphere", "cylinder"] = "sphere"
    radius: float = option(min=0, exclusive=True, default=10.0)      # metres
    max_points: int = option(min=1, default=40000)    # cap per region (nearest to the centre kept)
    class_balanced: bool = True       # centres: class uniformly, then a point of it
    #: inference grid spacing as a fraction of the radius
    test_spacing: float = option(min=0, exclusive=True, predict=True, resume=False, default=1.0)

    def __post_init__(self) -> None:
        limit = 2 / math.sqrt(3) if self.shape == "sphere" else math.sqrt(2)
        if not 0 < self.test_spacing <= limit:
            raise UserError(f"test_spacing must be in (0, {limit:.3f}] for {self.shape}s "
                            f"(larger spacings leave gaps), got {self.test_spacing}")


@dataclass
class AugmentConfig:
    rotate_z: bool = True                               # uniform angle about the vertical
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])   # isotropic range
    flip_x: float = 0.5                                 # probabilities of mirroring x / y
    flip_y: float = 0.0
    jitter: float = 0.01                                # Gaussian sigma in metres ...
    jitter_clip: float = 0.05                           # ... clipped at this
    feature_dropout: float = 0.1                        # probability of zeroing a region's
                                                        # non-geometric features
    stretch_z: list[float] = field(default_factory=lambda: [1.0, 1.0])   # factor range on heights
                                                        # above ground (needs the 'ground' feature)
    thin: list[float] = field(default_factory=lambda: [1.0, 1.0])   # share of a region's points kept,
                                                        # drawn per region (density robustness)

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise UserError(f"scale must be [low, high] with 0 < low <= high, got {self.scale}")
        for name in ("flip_x", "flip_y", "feature_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be a probability in [0, 1]")
        if self.jitter < 0 or self.jitter_clip < 0:
            raise UserError("jitter and jitter_clip must be >= 0")
        if len(self.stretch_z) != 2 or not 0 < self.stretch_z[0] <= self.stretch_z[1]:
            raise UserError(f"stretch_z must be [low, high] with 0 < low <= high, got {self.stretch_z}")
        if len(self.thin) != 2 or not 0 < self.thin[0] <= self.thin[1] <= 1:
            raise UserError(f"thin must be [low, high] with 0 < low <= high <= 1, got {self.thin}")

    @property
    def stretches(self) -> bool:
        return tuple(self.stretch_z) != (1.0, 1.0)

    @property
    def thins(self) -> bool:
        return tuple(self.thin) != (1.0, 1.0)


@dataclass
class Region:
    """One sampled region: ``index`` into its tile, coordinates relative to ``center``."""

    tile: int
    index: np.ndarray           # [n] int64 rows of the tile
    xyz: np.ndarray             # [n, 3] float32, relative to the centre
    center: np.ndarray          # [3] float64

    def thinned(self, keep: float, rng: np.random.Generator) -> "Region":
        """A random ``keep`` share of the points (at least one), in their order: a sparser
        survey of the same place (``augment.thin``)."""
        if keep >= 1.0 or len(self.index) < 2:
            return self
        rows = np.sort(rng.choice(len(self.index), max(1, int(round(keep * len(self.index)))), replace=False))
        return Region(self.tile, self.index[rows], self.xyz[rows], self.center)


class RegionSampler:
    """Regions of radius ``r`` in a set of tiles (one KD-tree per tile; sliding-midpoint built,
    the faster build: a region's members are the same sorted indices with any tree)."""

    def __init__(self, tiles_xyz: list[np.ndarray], cfg: SamplingConfig):
        self.cfg = cfg
        self.xyz = tiles_xyz
        dims = 3 if cfg.shape == "sphere" else 2
        self.trees = [NeighborIndex(x[:, :dims], balanced=False) for x in tiles_xyz]

    def regions(self, tile: int, centers: np.ndarray) -> list[Region]:
        """Regions around ``centers [m, 3]`` of one tile.

        A region holds the points within ``radius`` of its centre (ascending row order); one
        with more than ``max_points`` keeps the ``max_points`` nearest. Memory is that of the
        members (a ball query, not a ``[m, max_points]`` k-NN table).
        """
        dims = 3 if self.cfg.shape == "sphere" else 2
        centers = np.asarray(centers, np.float64).reshape(-1, 3)
        xyz = self.xyz[tile]
        members = self.trees[tile].ball(centers[:, :dims], self.cfg.radius)
        out = []
        for c, row in zip(centers, members):
            row = np.asarray(row, np.int64)
            if len(row) > self.cfg.max_points:
                d2 = ((xyz[row, :dims] - c[:dims]) ** 2).sum(1)
                row = np.sort(row[np.argpartition(d2, self.cfg.max_points - 1)[:self.cfg.max_points]])
            out.append(Region(tile, row, (xyz[row] - c).astype(np.float32), c.copy()))
        return out


class ClassBalancedCenters:
    """Draws training centres: ``(tile, point)`` pairs over all tiles' labelled points."""

    def __init__(self, tiles_labels: list[np.ndarray], num_classes: int, balanced: bool = True):
        tile_of = np.concatenate([np.full(len(y), t, np.int64) for t, y in enumerate(tiles_labels)])
        row_of = np.concatenate([np.arange(len(y), dtype=np.int64) for y in tiles_labels])
        labels = np.concatenate(tiles_labels).astype(np.int64)
        keep = (labels >= 0) & (labels < num_classes)
        self.tile_of, self.row_of, self.labels = tile_of[keep], row_of[keep], labels[keep]
        if not len(self.labels):
            raise UserError("training data has no labelled point (every code is ignored?)")
        self.balanced = balanced
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=num_classes)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        self.order, self.counts, self.starts = order, counts, starts
        self.present = np.flatnonzero(counts)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> ``(tile [n], row [n], class [n])``."""
        if self.balanced:
            cls = self.present[rng.integers(0, len(self.present), n)]
            pick = self.order[self.starts[cls] + (rng.random(n) * self.counts[cls]).astype(np.int64)]
        else:
            pick = rng.integers(0, len(self.labels), n)
        return self.tile_of[pick], self.row_of[pick], self.labels[pick]


def sampled_class_counts(centers: "ClassBalancedCenters", sampler: RegionSampler, tiles_labels: list[np.ndarray],
                         num_classes: int, seed: int, regions: int = 256) -> np.ndarray:
    """``[C]`` class counts of the labelled points in ``regions`` training regions drawn as
    training draws them (own random stream): the class shares the network trains on."""
    rng = np.random.default_rng([seed, 0x5EE1])
    tiles, rows, _ = centers.draw(regions, rng)
    counts = np.zeros(num_classes, np.float64)
    for t, r in zip(tiles, rows):
        region = sampler.regions(int(t), sampler.xyz[int(t)][r][None])[0]
        y = tiles_labels[region.tile][region.index]
        counts += np.bincount(y[(y >= 0) & (y < num_classes)], minlength=num_classes)
    return counts


def rotation_z(angle: float) -> np.ndarray:
    """``[3, 3]`` float64 rotation by ``angle`` radians about the vertical axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def stretch_heights(xyz: np.ndarray, features: np.ndarray, hag: np.ndarray, height_columns: list[int],
                    factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Stretch a region vertically above its ground: ``z' = z + (s - 1) max(hag, 0)`` and every
    height feature ``h' = s h`` (``features`` unstandardised, ``height_columns`` their columns).

    Teaches a point model that buildings and trees come in any height (the training surveys'
    buildings may all be lower than the ones it will label). Returns new arrays.
    """
    xyz = np.array(xyz, np.float32, copy=True)
    xyz[:, 2] += np.float32(factor - 1.0) * np.maximum(np.asarray(hag, np.float32), 0)
    feats = np.array(features, np.float32, copy=True)
    feats[:, height_columns] *= np.float32(factor)
    return xyz, feats


def augment(xyz: np.ndarray, features: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
            geometric_columns: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation about z, scaling, flips, jitter (coordinates) and feature dropout.

    ``xyz [n, 3]`` relative to the region centre; ``features [n, F]`` whose first
    ``geometric_columns`` columns are never dropped. Returns new arrays of the same shapes.
    """
    xyz = np.asarray(xyz, np.float32)
    m = np.eye(3, dtype=np.float64)
    if cfg.rotate_z:
        m = rotation_z(rng.uniform(0, 2 * np.pi)) @ m
    m = m * rng.uniform(cfg.scale[0], cfg.scale[1])
    if rng.random() < cfg.flip_x:
        m[:, 0] *= -1
    if rng.random() < cfg.flip_y:
        m[:, 1] *= -1
    out = (xyz @ m.T.astype(np.float32)).astype(np.float32)
    if cfg.jitter > 0:
        out += np.clip(rng.normal(0, cfg.jitter, out.shape), -cfg.jitter_clip, cfg.jitter_clip).astype(np.float32)
    feats = np.array(features, np.float32, copy=True)
    if cfg.feature_dropout > 0 and feats.shape[1] > geometric_columns and rng.random() < cfg.feature_dropout:
        feats[:, geometric_columns:] = 0.0
    return out, feats


def coverage_centers(xyz: np.ndarray, cfg: SamplingConfig, offset: float = 0.0,
                     anchor: np.ndarray | None = None) -> np.ndarray:
    """Centres of the occupied cells of the inference grid (``[m, 3]`` float64).

    Cylinders use a 2-D grid (centre z = the cell's mean z, irrelevant to membership).
    ``offset`` (a fraction of the spacing) shifts the grid, for test-time votes. The grid
    starts at ``anchor`` ``[3]`` (default: the points' minimum; a window of a tile passes the
    tile's, so that its regions are the whole tile's).
    """
    xyz = np.asarray(xyz, np.float64)
    h = cfg.test_spacing * cfg.radius
    dims = 3 if cfg.shape == "sphere" else 2
    origin = (xyz.min(0) if anchor is None else np.asarray(anchor, np.float64)) - offset * h
    cells = np.floor((xyz[:, :dims] - origin[:dims]) / h).astype(np.int64)
    uniq, inv = unique_rows(cells)
    centers = np.empty((len(uniq), 3), np.float64)
    centers[:, :dims] = origin[:dims] + (uniq + 0.5) * h
    if dims == 2:
        centers[:, 2] = np.bincount(inv, weights=xyz[:, 2]) / np.bincount(inv)
    return centers


def reaching(centers: np.ndarray, points: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """``[m]`` bool: the centres whose region can hold a point of ``points`` (within the region
    radius of their bounding box: in plan for cylinders, in 3-D for spheres)."""
    dims = 3 if cfg.shape == "sphere" else 2
    if len(points) == 0:
        return np.zeros(len(centers), bool)
    lo, hi = points[:, :dims].min(0) - cfg.radius, points[:, :dims].max(0) + cfg.radius
    return np.all((centers[:, :dims] >= lo) & (centers[:, :dims] <= hi), axis=1)


def iter_passes(regions: Iterable[Region], points_per_pass: int) -> Iterator[list[Region]]:
    """Consecutive groups of regions holding at most ``points_per_pass`` points (at least one)."""
    group: list[Region] = []
    total = 0
    for r in regions:
        if group and total + len(r.index) > points_per_pass:
            yield group
            group, total = [], 0
        group.append(r)
        total += len(r.index)
    if group:
        yield group


def vote_pose(vote: int, votes: int) -> tuple[float, float]:
    """Test-time vote ``vote`` of ``votes``: ``(grid offset, angle)``, the coverage grid shifted by
    ``0.5 * vote / votes`` of its spacing (none with one vote) and the regions rotated about z by
    ``2 pi * vote / votes`` radians."""
    return (0.5 * vote / votes if votes > 1 else 0.0), 2 * np.pi * vote / votes


def predict_coverage(xyz: np.ndarray, num_classes: int, cfg: SamplingConfig,
                     run_pass: Callable[[list[Region], float], np.ndarray], *, votes: int = 1,
                     points_per_pass: int = 200_000, progress: Callable = lambda it, **kw: it,
                     chunk: int = 64, workers: int = 1, anchor: np.ndarray | None = None,
                     targets: np.ndarray | None = None,
                     sampler: "RegionSampler | None" = None) -> tuple[np.ndarray, int]:
    """Average per-point probabilities over overlapping regions covering ``xyz``.

    ``run_pass(regions, angle) -> [sum of region sizes, num_classes]`` probabilities of the
    regions rotated by ``angle`` about z, rows in the order of the regions' points; each vote
    (:func:`vote_pose`) shifts the grid and turns the regions. Returns ``(proba [N, C] float32, unreached count)``.
    Regions are built ``chunk`` centres at a time as the passes consume them, so memory is
    ``N x (C + 1)`` accumulators, the KD-tree and about ``workers + 1`` passes of regions,
    whatever ``N``. With ``workers > 1``, that many passes run at once in threads (``run_pass``
    must be thread-safe) while this thread builds the next regions and adds up the results,
    in pass order (the sums are the same as with one worker). ``anchor``: where the coverage
    grid starts (:func:`coverage_centers`). ``targets`` ``[N]`` bool: only the regions that
    can reach one of these points run (centres within the region radius of the targets' box:
    every region holding a target is kept, so the targets' sums are unchanged); the other
    points' rows are uniform where no kept region reached them, and only targets count as
    unreached. ``sampler``: ``RegionSampler([xyz], cfg)`` if the caller built it already.
    """
    n = len(xyz)
    acc = np.zeros((n, num_classes), np.float32)
    cnt = np.zeros(n, np.int32)
    sampler = sampler or RegionSampler([xyz], cfg)
    aimed = None if targets is None else xyz[targets]

    def add(group: list[Region], proba: np.ndarray) -> None:
        idx = np.concatenate([r.index for r in group])
        # scatter-add in O(pass) (np.add.at is slow; bincount over N would be O(N) per pass)
        uniq, inv = np.unique(idx, return_inverse=True)
        part = np.stack([np.bincount(inv, weights=proba[:, c], minlength=len(uniq))
                         for c in range(num_classes)], axis=1)
        acc[uniq] += part.astype(np.float32)
        cnt[uniq] += np.bincount(inv, minlength=len(uniq)).astype(np.int32)

    def passes():
        for vote in range(votes):
            offset, angle = vote_pose(vote, votes)
            centers = coverage_centers(xyz, cfg, offset=offset, anchor=anchor)
            if aimed is not None:
                centers = centers[reaching(centers, aimed, cfg)]
            starts = range(0, len(centers), chunk)
            chunks = progress(starts, desc=f"regions (vote {vote + 1}/{votes})", total=len(starts))
            regions = (r for s in chunks for r in sampler.regions(0, centers[s:s + chunk]) if len(r.index))
            for group in iter_passes(regions, points_per_pass):
                yield group, angle

    if workers <= 1:
        for group, angle in passes():
            add(group, run_pass(group, angle))
    else:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for group, angle in passes():
                pending.append((group, pool.submit(run_pass, group, angle)))
                if len(pending) >= workers:
                    done, fut = pending.popleft()
                    add(done, fut.result())
            while pending:
                done, fut = pending.popleft()
                add(done, fut.result())
    reached = cnt > 0
    acc[reached] /= cnt[reached, None]
    if targets is not None:
        acc[~reached & ~targets] = 1.0 / num_classes
        reached |= ~targets
    missing = int((~reached).sum())
    if missing:
        if not reached.any():
            raise RuntimeError("no region reached any point")
        _, j = NeighborIndex(np.asarray(xyz, np.float64)[reached]).knn(np.asarray(xyz, np.float64)[~reached], 1)
        acc[~reached] = acc[np.flatnonzero(reached)[j[:, 0]]]
    return acc, missing
