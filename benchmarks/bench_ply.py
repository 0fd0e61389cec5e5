"""PLY read/write of data.ply beside plyfile (when installed), same run, 1M synthetic points.

    .venv/bin/python benchmarks/bench_ply.py [--n 1000000] [--repeat 5]

Fields: x/y/z float64, intensity uint16, classification uint8, gps_time float64; binary
little endian; best of ``--repeat``. plyfile's read is timed up to arrays in memory
(``PlyData.read`` + ``np.array`` of the vertex element, since it may memory-map). Since
data.ply is itself a wrapper around plyfile, the comparison is the wrapper's cost: checks,
one float64 ``xyz`` array and one array per field on read; on write, interleaving the
columns into a record array, type checks and the atomic rename. Baseline for the write:
plyfile writing the same columns (record array filled from them, then ``PlyData.write``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.ply import read_ply, write_ply  # noqa: E402
from data.pointcloud import PointCloud  # noqa: E402


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="10,000 points, one run (CI)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 10_000, 1
    rng = np.random.default_rng(0)
    n = args.n
    cloud = PointCloud(rng.normal(size=(n, 3)) * 100,
                       {"intensity": rng.integers(0, 65535, n).astype(np.uint16),
                        "classification": rng.integers(0, 10, n).astype(np.uint8), "gps_time": rng.normal(size=n)})
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a.ply"), os.path.join(tmp, "b.ply")
        w = best(lambda: write_ply(cloud, a), args.repeat)
        r = best(lambda: read_ply(a), args.repeat)
        print(f"{n:,} points, best of {args.repeat}")
        print(f"data.ply  write {w:.3f} s  read {r:.3f} s")
        try:
            import plyfile
        except ImportError:
            print("plyfile not installed (pip install plyfile): no comparison")
            return
        def plyfile_write() -> None:
            props = [("x", "f8"), ("y", "f8"), ("z", "f8")] + [(k, v.dtype.str) for k, v in cloud.fields.items()]
            arr = np.empty(n, props)
            for i, c in enumerate("xyz"):
                arr[c] = cloud.xyz[:, i]
            for k, v in cloud.fields.items():
                arr[k] = v
            plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], byte_order="<").write(b)

        pw = best(plyfile_write, args.repeat)
        pr = best(lambda: np.array(plyfile.PlyData.read(a)["vertex"].data), args.repeat)
        print(f"plyfile   write {pw:.3f} s  read {pr:.3f} s")
        print(f"ratio ours/plyfile  write {w / pw:.2f}  read {r / pr:.2f}")


if __name__ == "__main__":
    main()
