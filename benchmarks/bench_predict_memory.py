"""Peak memory and throughput of ``run.py predict`` on one large tile.

The tile: the four IGN test crops (a 2 x 2 block of 50 m crops, 100 m x 100 m, 262,813
points, ~26 points/m^2, every LAS field) repeated on a grid of 100 m steps until it holds at
least ``--points`` points, written once as LAZ into ``--work`` (same scale, offsets, CRS).

Baseline, measured in the same run: a child process that only reads the tile
(``data.io.read_cloud``), the memory any tool that holds the cloud pays. Ours: a child
process running ``run.py predict --model BUNDLE --input TILE --out WORK/pred --set votes=V``
(labelled LAZ written). Peak memory of each child is its peak resident set size (``ru_maxrss``
from ``os.wait4``).

Usage: python benchmarks/bench_predict_memory.py --bundle runs/ign_kpconvx_cpu/model.bundle
       [--points 20000000] [--votes 1] [--set sampling.test_spacing=1.25] [--device cpu] [--work /tmp/lidarseg_bench_big]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.io import read_cloud, read_header_info, write_cloud  # noqa: E402
from data.pointcloud import PointCloud  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402


def build_tile(path: Path, points: int) -> int:
    """Write the repeated test crops to ``path`` (skipped if it already holds enough points)."""
    if path.is_file() and read_header_info(path).point_count >= points:
        return read_header_info(path).point_count
    crops = [read_cloud(p) for p in sorted((DATA / "ign_lidarhd" / "test").glob("*.laz"))]
    names = [n for n in crops[0].fields if all(n in c.fields for c in crops)]
    block = PointCloud(np.concatenate([c.xyz for c in crops]),
                       {n: np.concatenate([c.fields[n] for c in crops]) for n in names})
    reps = math.ceil(points / len(block))
    side = math.ceil(math.sqrt(reps))
    step = np.ceil(np.ptp(block.xyz[:, :2], axis=0) / 10) * 10          # 100 m for the test crops
    shifts = np.array([(i % side, i // side, 0) for i in range(reps)], np.float64) * np.r_[step, 0]
    xyz = (block.xyz[None] + shifts[:, None]).reshape(-1, 3)
    fields = {n: np.tile(v, reps) for n, v in block.fields.items()}
    meta = dataclasses.replace(crops[0].meta, raw_xyz=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cloud(PointCloud(xyz, fields, meta), path)
    return len(xyz)


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; -> (wall seconds, peak RSS in GB). Raises on a non-zero exit."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit {proc.returncode}")
    return wall, usage.ru_maxrss / 1024 ** 2          # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--points", type=int, default=20_000_000)
    ap.add_argument("--votes", type=int, default=None, help="kpconvx test-time votes (a --set of the bundle)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another bundle setting for the prediction (e.g. sampling.test_spacing=1.25)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="/tmp/lidarseg_bench_big")
    ap.add_argument("--quick", action="store_true", help="a 200,000-point tile (CI)")
    args = ap.parse_args()
    if args.quick:
        args.points, args.work = 200_000, args.work + "_quick"
    work = Path(args.work)
    tile = work / "big_tile.laz"
    t = time.perf_counter()
    n = build_tile(tile, args.points)
    print(f"tile: {tile} ({n:,} points, {tile.stat().st_size / 1e6:.0f} MB LAZ; ready in "
          f"{time.perf_counter() - t:.1f} s)", flush=True)
    read_wall, read_rss = run_child([sys.executable, "-c",
                                     f"from data.io import read_cloud; read_cloud({str(tile)!r})"])
    settings = ([] if args.votes is None else [f"votes={args.votes}"]) + args.set
    pred_wall, pred_rss = run_child([sys.executable, str(REPO / "run.py"), "predict", "--model", args.bundle,
                                     "--input", str(tile), "--out", str(work / "pred"), "--device", args.device,
                                     *[a for kv in settings for a in ("--set", kv)], "--quiet"])
    print("\n| | wall | points/s | peak RSS |\n|---|---|---|---|")
    print(f"| baseline: read_cloud alone | {read_wall:.1f} s | {n / read_wall:.3g} | {read_rss:.2f} GB |")
    print(f"| run.py predict ({''.join(kv + ', ' for kv in settings)}{args.device}) | {pred_wall:.1f} s | {n / pred_wall:.3g} | "
          f"{pred_rss:.2f} GB |")
    print(f"\npredict / read_cloud: time {pred_wall / read_wall:.1f}x, peak memory {pred_rss / read_rss:.2f}x "
          f"(target: peak <= 8 GB for 20M points)")


if __name__ == "__main__":
    main()
