"""A real COPC file for the tests, written with copclib (a test dependency; laspy only reads COPC).

``make_copc(src, dst, depth=1)`` copies every point of a LAS/LAZ of point format 6-8 into an
octree of ``depth + 1`` levels: each point gets a level (level ``L`` with probability
proportional to ``4**L``, a deterministic draw, so that nodes of every level hold similar
counts on airborne data) and goes to the node of that level that contains it. With depth 1:
about a fifth of the points in the root, the others in the 8 children by octant; a window
query decodes the root and only the nodes it meets.
"""
from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np

from data.io import read_header_info


def make_copc(src: Path, dst: Path, depth: int = 1) -> Path:
    import copclib

    las = laspy.read(src)
    pf = las.header.point_format.id
    assert pf in (6, 7, 8), f"COPC needs point format 6-8, {src} has {pf}"
    wkt = read_header_info(src).crs_wkt or ""
    config = copclib.CopcConfigWriter(pf, copclib.Vector3(*las.header.scales),
                                      copclib.Vector3(*las.header.offsets), wkt)
    writer = copclib.FileWriter(str(dst), config)
    mins, maxs = las.header.mins, las.header.maxs
    center = (mins + maxs) / 2
    info = writer.copc_config.copc_info
    info.center_x, info.center_y, info.center_z = (float(c) for c in center)
    info.halfsize = float((maxs - mins).max() / 2) + 1.0
    info.spacing = info.halfsize / 4
    writer.copc_config.las_header.min = copclib.Vector3(*mins)
    writer.copc_config.las_header.max = copclib.Vector3(*maxs)
    records = las.points.array
    xyz = np.stack([las.x, las.y, las.z], axis=1)
    weights = 4.0 ** np.arange(depth + 1)
    level = np.random.default_rng(0).choice(depth + 1, size=len(records), p=weights / weights.sum())
    cube_min = center - info.halfsize
    for d in range(depth + 1):
        at = level == d
        cells = np.clip(np.floor((xyz[at] - cube_min) / (2 * info.halfsize / 2 ** d)).astype(np.int64),
                        0, 2 ** d - 1)
        keys, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
        rows = np.flatnonzero(at)[np.argsort(inverse.reshape(-1), kind="stable")]
        for (x, y, z), members in zip(keys, np.split(rows, np.cumsum(counts)[:-1])):
            raw = memoryview(records[members].tobytes()).cast("b")
            writer.AddNode(copclib.VoxelKey(d, int(x), int(y), int(z)), copclib.VectorChar(raw))
    writer.Close()
    return dst
