"""Windowed reads: a COPC file read with bounds against the same tile read whole and cropped.

    .venv/bin/python benchmarks/bench_copc.py [--repeat 5] [--depth 4] [--quick]

The first 1 km tile of ``ign_lidarhd_1km`` is copied into a COPC file (``tests/copc_files.py``,
copclib: an octree of ``depth + 1`` levels). Square windows at the tile's centre are read
with ``data.io.read_cloud(path, bounds=...)`` from the plain LAZ (baseline: decode every
point, then crop) and from the COPC copy (laspy's ``CopcReader``: only the nodes that meet
the window), median of ``--repeat``; the two must return the same points. Prints
points/s and the time ratio COPC / plain. ``--quick``: a 50 m test tile, 1 repeat (CI).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from copc_files import make_copc  # noqa: E402
from data.bounds import Bounds  # noqa: E402
from data.io import read_cloud, read_header_info  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402
from timing import median_time  # noqa: E402



def rows_of(cloud) -> np.ndarray:
    xyz = cloud.xyz
    return xyz[np.lexsort((cloud.fields["gps_time"], xyz[:, 2], xyz[:, 1], xyz[:, 0]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        src, sizes, args.repeat, args.depth = DATA / "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz", [10.0], 1, 2
    else:
        src, sizes = sorted((DATA / "ign_lidarhd_1km").glob("*.laz"))[0], [100.0, 250.0, 500.0]
    info = read_header_info(src)
    centre = (info.mins[:2] + info.maxs[:2]) / 2
    with tempfile.TemporaryDirectory() as tmp:
        copc = make_copc(src, Path(tmp) / f"{src.stem}.copc.laz", depth=args.depth)
        print(f"{src.name}: {info.point_count:,} points, {info.maxs[0] - info.mins[0]:.0f} x "
              f"{info.maxs[1] - info.mins[1]:.0f} m; COPC copy with {args.depth + 1} levels; median of {args.repeat}")
        print("| window | points | plain LAZ read + crop | COPC window read | ratio COPC / plain |")
        print("|---|---|---|---|---|")
        for size in sizes:
            w = Bounds(centre[0] - size / 2, centre[1] - size / 2, centre[0] + size / 2, centre[1] + size / 2)
            tp = median_time(lambda: read_cloud(src, bounds=w), args.repeat)
            tc = median_time(lambda: read_cloud(copc, bounds=w), args.repeat)
            plain, part = read_cloud(src, bounds=w), read_cloud(copc, bounds=w)
            assert np.array_equal(rows_of(plain), rows_of(part)), "COPC and plain windows differ"
            print(f"| {size:g} m | {len(plain):,} | {tp:.3f} s ({len(plain) / tp / 1e6:.2f} Mpt/s) | "
                  f"{tc:.3f} s ({len(part) / tc / 1e6:.2f} Mpt/s) | {tc / tp:.2f} |")


if __name__ == "__main__":
    main()
