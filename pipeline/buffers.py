"""Buffered prediction: points of neighbouring input files as context at tile edges.

Adjacent tiles cut receptive fields (neighbourhoods, spheres, rasters, the ground model) at
their borders. With ``buffer = B`` metres, the points of the other inputs that lie within
``B`` of a file's x/y bounds (header bounds) are appended to it for prediction and dropped
again afterwards: each output holds exactly its own points, in their order, labelled with
the context of their neighbours. A grid product is cropped back to the file's own grid.

Neighbours come from the same input list (the files predicted together); a neighbour that
lacks one of the file's dimensions, or has another CRS, is not used (a warning says so).
Decoded neighbours are cached (the last ``cache`` files), so a row of tiles is read about once.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.io import read_cloud, read_header_info
from data.pointcloud import PointCloud

from .models.base import GridProduct, Prediction
from .progress import log


class NeighbourContext:
    """Per file of ``inputs``: the cloud with its neighbours' points within ``buffer`` appended."""

    def __init__(self, inputs: list[Path], buffer: float, cache: int = 8):
        self.inputs = list(inputs)
        self.buffer = float(buffer)
        infos = [read_header_info(p) for p in self.inputs]
        self.lo = np.array([i.mins[:2] for i in infos], np.float64)
        self.hi = np.array([i.maxs[:2] for i in infos], np.float64)
        self.crs = [i.epsg or i.crs_wkt for i in infos]
        self._cache: OrderedDict[Path, PointCloud] = OrderedDict()
        self._size = cache

    def _read(self, path: Path) -> PointCloud:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        cloud = read_cloud(path)
        self._cache[path] = cloud
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return cloud

    def neighbours(self, i: int) -> list[int]:
        """Indices of the inputs whose bounds come within ``buffer`` of input ``i``'s."""
        lo, hi = self.lo[i] - self.buffer, self.hi[i] + self.buffer
        near = np.all((self.lo <= hi) & (self.hi >= lo), axis=1)
        near[i] = False
        return np.flatnonzero(near).tolist()

    def with_context(self, i: int, cloud: PointCloud) -> PointCloud:
        """``cloud`` (input ``i``) followed by its neighbours' points within the buffer."""
        lo, hi = self.lo[i] - self.buffer, self.hi[i] + self.buffer
        xyz, fields = [cloud.xyz], {k: [v] for k, v in cloud.fields.items()}
        for j in self.neighbours(i):
            other = self._read(self.inputs[j])
            missing = [k for k in cloud.fields if k not in other.fields]
            if missing or self.crs[j] != self.crs[i]:
                why = f"lacks {', '.join(missing)}" if missing else "has another CRS"
                log(f"warning: {self.inputs[i].name}: neighbour {self.inputs[j].name} {why}; not used as context")
                continue
            inside = np.all((other.xyz[:, :2] >= lo) & (other.xyz[:, :2] <= hi), axis=1)
            if not inside.any():
                continue
            xyz.append(other.xyz[inside])
            for k in fields:
                fields[k].append(other.fields[k][inside].astype(cloud.fields[k].dtype, copy=False))
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
