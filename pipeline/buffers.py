"""Buffered prediction: points of neighbouring input files as context at tile edges.

Adjacent tiles cut receptive fields (neighbourhoods, spheres, rasters, the ground model) at
their borders. With ``buffer = B`` metres, the points of the other inputs that lie within
``B`` of a file's x/y bounds (header bounds) are appended to it for prediction and dropped
again afterwards: each output holds exactly its own points, in their order, labelled with
the context of their neighbours. A grid product is cropped back to the file's own grid.

Neighbours come from the same input list (the files predicted together); a neighbour that
lacks one of the file's dimensions, or has another CRS, is not used (a warning says so).
Decoded neighbours are cached (the last ``cache`` files), so a row of tiles is read about once;
COPC neighbours are read as windows over the buffer band instead (``data.bounds``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.bounds import Bounds
from data.errors import EmptyWindowError
from data.io import read_cloud, read_header_info
from data.pointcloud import PointCloud

from .models.base import GridProduct, Prediction
from .progress import log


class NeighbourContext:
    """Per file of ``inputs``: the cloud with its neighbours' points within ``buffer`` appended.

    ``bounds`` (a prediction window, ``data.bounds``): each file's own points are those inside
    it, and the context is every input's points (the file's own included) within ``buffer``
    of the window's part over the file. COPC inputs are read as windows (only the octree
    nodes of the buffer band are decoded); other inputs are read whole and cached.
    """

    def __init__(self, inputs: list[Path], buffer: float, bounds: Bounds | None = None, cache: int = 8):
        self.inputs = list(inputs)
        self.buffer = float(buffer)
        self.bounds = bounds
        infos = [read_header_info(p) for p in self.inputs]
        self.lo = np.array([i.mins[:2] for i in infos], np.float64)
        self.hi = np.array([i.maxs[:2] for i in infos], np.float64)
        self.crs = [i.epsg or i.crs_wkt for i in infos]
        self.copc = [i.copc for i in infos]
        self._cache: OrderedDict[Path, PointCloud] = OrderedDict()
        self._size = cache

    def _whole(self, path: Path) -> PointCloud:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        cloud = read_cloud(path)
        self._cache[path] = cloud
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return cloud

    def _points_in(self, j: int, box: Bounds) -> PointCloud | None:
        """Input ``j``'s points inside ``box`` (None when it holds none)."""
        if self.copc[j]:
            try:
                return read_cloud(self.inputs[j], bounds=box)
            except EmptyWindowError:
                return None
        cloud = self._whole(self.inputs[j])
        inside = box.contains(cloud.xyz)
        return cloud.subset(inside) if inside.any() else None

    def context_box(self, i: int) -> Bounds:
        """The window whose points are context for input ``i``: its own part, grown by ``buffer``."""
        own = Bounds(*self.lo[i], *np.nextafter(self.hi[i], np.inf))
        if self.bounds is not None:
            own = self.bounds.clipped(self.lo[i], self.hi[i]) or own
        return own.grown(self.buffer)

    def neighbours(self, i: int) -> list[int]:
        """Indices of the inputs whose bounds meet input ``i``'s context box (``i`` itself too
        under a window: its points around the window are context)."""
        box = self.context_box(i)
        near = [j for j in range(len(self.inputs)) if box.meets(self.lo[j], self.hi[j])]
        return [j for j in near if j != i or self.bounds is not None]

    def same_crs(self, i: int, j: int) -> bool:
        """Whether neighbour ``j`` may be context for input ``i`` (a line says why not)."""
        if self.crs[j] != self.crs[i]:
            log(f"warning: {self.inputs[i].name}: neighbour {self.inputs[j].name} has another CRS; "
                "not used as context")
            return False
        return True

    def with_context(self, i: int, cloud: PointCloud) -> PointCloud:
        """``cloud`` (input ``i``, inside the window if any) followed by the context points."""
        box = self.context_box(i)
        others = []
        for j in self.neighbours(i):
            if not self.same_crs(i, j):
                continue
            other = self._points_in(j, box)
            if other is not None and j == i:      # the file's own points outside the window
                outside = ~self.bounds.contains(other.xyz)
                other = other.subset(outside) if outside.any() else None
            if other is not None:
                others.append((self.inputs[j].name, other))
        return appended(cloud, others, self.inputs[i].name)


def appended(cloud: PointCloud, others: list[tuple[str, PointCloud]], name: str) -> PointCloud:
    """``cloud`` followed by the points of each ``(neighbour name, points)`` that has every field
    of ``cloud`` (cast to its dtypes; a neighbour lacking one is left out, with a warning)."""
    xyz, fields = [cloud.xyz], {k: [v] for k, v in cloud.fields.items()}
    for other_name, other in others:
        missing = [k for k in cloud.fields if k not in other.fields]
        if missing:
            log(f"warning: {name}: neighbour {other_name} lacks {', '.join(missing)}; not used as context")
            continue
        xyz.append(other.xyz)
        for k in fields:
            fields[k].append(other.fields[k].astype(cloud.fields[k].dtype, copy=False))
    if len(xyz) == 1:
        return cloud
    return PointCloud(np.concatenate(xyz), {k: np.concatenate(v) for k, v in fields.items()},
                      cloud.meta, cloud.source)


def own_part(result: Prediction, cloud: PointCloud) -> Prediction:
    """The prediction of a buffered cloud cut back to ``cloud``'s points (the first ``len(cloud)``)
    and, for a grid product, to the grid around them."""
    n = len(cloud)
    grid = result.grid
    if grid is not None:
        from geometry.grids import Grid2D

        own = Grid2D.around(cloud.xyz, grid.grid.cell_size)
        r0, c0 = grid.grid.row_top - own.row_top, own.col0 - grid.grid.col0
        rows, cols = slice(r0, r0 + own.rows), slice(c0, c0 + own.cols)
        grid = GridProduct(own, grid.class_index[rows, cols], grid.proba[rows, cols], grid.mask[rows, cols],
                           grid.title, grid.preview)
    return replace(result, proba=result.proba[:n], grid=grid)
