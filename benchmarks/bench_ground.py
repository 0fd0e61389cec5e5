"""Benchmark: the ground model (``geometry.heights.surface_from_minima``) against its direct
construction, on the cell minima of real files.

(a) baseline, direct: every ground cell triangulated (``LinearNDInterpolator`` over all of them,
    evaluated at every cell) -- the construction before the edge-cell one;
(b) ours: only the ground cells beside a non-ground cell or the grid's edge triangulated, the
    other cells interpolated in it, ground cells keeping their own lowest z.

Each (file, method) runs in a child process of its own: wall time of the surface and the
child's peak RSS rise over its state before the call. Also prints the largest DTM difference
and the share of cells that differ by more than 1 mm (lattice ties: cocircular ground cells
split into other triangles; ``tests/test_features.py`` checks every triangle used).

Data: the 4 IGN test tiles, Zurich, AHN Delft, the four 1 km tiles (0.2-0.3 points/m^2), and
with ``--tile PATH`` a large LAS/LAZ tile read in chunks (e.g. the 10M-point tile of
``bench_predict_memory.py``).

Run: ``.venv/bin/python benchmarks/bench_ground.py [--tile /tmp/lidarseg_bench_big/tile_10000000.laz] [--quick]``
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data.sample_data import SAMPLE_DATA  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from geometry.heights import GROUND_WINDOW, TileGround, ground_cells, surface_from_minima
path, method, out = {path!r}, {method!r}, {out!r}
if path.endswith('.npy'):
    zmin = np.load(path)
else:
    from data.las_stream import LasChunks
    chunks = LasChunks(path)
    g = TileGround(np.asarray(chunks.header.mins[:2]), np.asarray(chunks.header.maxs[:2]))
    for _, arr in chunks.records(1 << 20):
        g.add(chunks.xyz(arr))
    g._occupied()
    zmin = g.zmin
    del g, chunks


def direct(zmin, cell=1.0, max_window=GROUND_WINDOW):
    # the same ground cells, then every one of them triangulated
    from scipy import ndimage
    from scipy.interpolate import LinearNDInterpolator
    shape = zmin.shape
    ground = ground_cells(zmin, cell, max_window)
    gi, gj = np.nonzero(ground)
    ci, cj = np.mgrid[0:shape[0], 0:shape[1]]
    dtm = LinearNDInterpolator(np.c_[gi, gj].astype(np.float64), zmin[gi, gj])(ci, cj)
    hole = ~np.isfinite(dtm)
    if hole.any():
        mark = np.ones(shape, bool)
        mark[gi, gj] = False
        idx = ndimage.distance_transform_edt(mark, return_distances=False, return_indices=True)
        dtm[hole] = zmin[idx[0][hole], idx[1][hole]]
    return dtm


fn = direct if method == 'direct' else surface_from_minima
warm = np.full((20, 20), 1.0)
warm[5:9, 5:9] = 9.0
fn(warm)                                   # imports and first-call set-up out of the timing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
dtm = fn(zmin)
seconds = time.perf_counter() - t
np.save(out, dtm)
print(json.dumps({{"seconds": seconds, "rise_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                   "cells": int(zmin.size), "ground_cells": int((dtm == zmin).sum())}}))
"""


def minima_file(path: str, tmp: str) -> str:
    """The cell minima of a small file, saved once (``.npy``): both methods read the same grid."""
    import laspy

    from geometry.heights import cell_minima

    las = laspy.read(path)
    zmin, _ = cell_minima(np.stack([las.x, las.y, las.z], 1))
    out = os.path.join(tmp, os.path.basename(path) + ".npy")
    np.save(out, zmin)
    return out


def run(path: str, method: str, tmp: str) -> tuple[dict, np.ndarray]:
    out = os.path.join(tmp, f"{method}.npy")
    res = subprocess.run([sys.executable, "-c", CHILD.format(repo=REPO, path=path, method=method, out=out)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", action="append", default=[], help="a large LAS/LAZ tile (read in chunks)")
    ap.add_argument("--quick", action="store_true", help="one test tile only (CI)")
    args = ap.parse_args()
    import tempfile

    files = (sorted(glob.glob(str(SAMPLE_DATA / "ign_lidarhd/test/*.laz")))
             + [str(SAMPLE_DATA / "other_surveys/zurich/zurich.laz"), str(SAMPLE_DATA / "other_surveys/ahn/ahn3_cropped_1.laz")]
             + sorted(glob.glob(str(SAMPLE_DATA / "ign_lidarhd_1km/*.laz"))))
    files = files[:1] if args.quick else files
    print("| grid (file) | cells | ground cells | direct | ours | ratio | peak rise direct / ours | max DTM difference | cells > 1 mm |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = {"direct": 0.0, "ours": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files + args.tile:
            src = path if path in args.tile else minima_file(path, tmp)
            a, da = run(src, "direct", tmp)
            b, db = run(src, "ours", tmp)
            total["direct"] += a["seconds"]
            total["ours"] += b["seconds"]
            diff = np.abs(da - db)
            print(f"| {os.path.basename(path)[:44]} | {a['cells']:,} | {b['ground_cells']:,} | {a['seconds']:.2f} s | "
                  f"{b['seconds']:.2f} s | {a['seconds'] / b['seconds']:.1f}x | {a['rise_mb']:.0f} / {b['rise_mb']:.0f} MB | "
                  f"{diff.max():.3f} m | {np.mean(diff > 1e-3):.2%} |", flush=True)
    print(f"\nall grids: direct {total['direct']:.2f} s, ours {total['ours']:.2f} s "
          f"({total['direct'] / total['ours']:.1f}x)")


if __name__ == "__main__":
    main()
