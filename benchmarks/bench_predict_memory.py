"""Peak memory and throughput of ``run.py predict`` on large tiles, window by window.

The tiles: the four IGN test crops (a 2 x 2 block of 50 m crops, 100 m x 100 m, 262,813
points, ~26 points/m^2, every LAS field) repeated on a grid of 100 m steps until each holds at
least the asked number of points, written once as LAZ into ``--work`` (same scale, offsets, CRS).

Baseline, measured in the same run for every tile: a child process that only reads it
(``data.io.read_cloud``), the memory any tool that holds the cloud pays. Ours: a child process
running ``run.py predict --model BUNDLE --input TILE --out WORK/pred --max-memory SIZE`` per
bundle (labelled LAZ written, or ``--format copc``; ``--set KEY=VALUE`` options go to the bundles
that have them).
Peak memory of each child is its peak resident set size (``ru_maxrss`` from ``os.wait4``);
flat memory means the same peak at every tile size. ``--floor``: per bundle, the same command
with the model's prediction replaced by constant probabilities (:data:`FLOOR_CHILD`: the same
windows, passes, labelling and writing, no features or network): what the model's own work
leaves of the wall time, the most any faster model could gain.

Usage: python benchmarks/bench_predict_memory.py --bundle models/lidarhd-kpconvx --bundle runs/lidarhd_rf_s0/model.bundle
       [--points 10000000 50000000] [--max-memory 3G] [--set votes=1 --set sampling.test_spacing=1.4]
       [--device cpu] [--format copc] [--work /tmp/lidarseg_bench_big] [--floor]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
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


#: ``python -c`` program: ``run.py predict ARGS`` whose bundles' models predict constant
#: probabilities instantly (``load_bundle`` patched before the CLI imports it)
FLOOR_CHILD = """
import sys
import numpy as np
import pipeline.bundle as B
from pipeline.models.base import Prediction
_load = B.load_bundle
def load(*a, **k):
    b = _load(*a, **k)
    c = b.class_map.num_classes
    b.model.predict = lambda cloud, *a, **k: Prediction(np.full((len(cloud), c), 1 / c, np.float32))
    return b
B.load_bundle = load
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


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


def tile_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that choose the tiles: ``--points``, ``--work``, ``--quick``."""
    ap.add_argument("--points", type=int, nargs="+", default=[10_000_000, 50_000_000])
    ap.add_argument("--work", default="/tmp/lidarseg_bench_big")
    ap.add_argument("--quick", action="store_true", help="200,000 and 400,000-point tiles (CI)")


def tiles_of(args: argparse.Namespace) -> tuple[list[int], Path]:
    """``(point counts, work folder)`` of :func:`tile_arguments`' options (``--quick``: CI sizes)."""
    if args.quick:
        return [200_000, 400_000], Path(args.work + "_quick")
    return args.points, Path(args.work)


def tile_and_baseline(work: Path, target: int) -> tuple[Path, int, tuple]:
    """The tile of at least ``target`` points in ``work`` (built if needed), its point count and
    the baseline row ``(points, label, wall, peak RSS)``: a child that only reads it."""
    tile = work / f"tile_{target}.laz"
    t = time.perf_counter()
    n = build_tile(tile, target)
    print(f"tile: {tile} ({n:,} points, {tile.stat().st_size / 1e6:.0f} MB LAZ; ready in "
          f"{time.perf_counter() - t:.1f} s)", flush=True)
    wall, rss = run_child([sys.executable, "-c", f"from data.io import read_cloud; read_cloud({str(tile)!r})"])
    return tile, n, (n, "baseline: read_cloud alone", wall, rss)


def print_table(rows: list[tuple]) -> None:
    """``(points, label, wall, peak RSS)`` rows as a Markdown table."""
    print("\n| points | | wall | points/s | peak RSS |\n|---|---|---|---|---|")
    for n, label, wall, rss in rows:
        print(f"| {n:,} | {label} | {wall:.1f} s | {n / wall:.3g} | {rss:.2f} GB |")


def bundle_settings(bundle: str, settings: list[str]) -> tuple[str, list[str]]:
    """(the bundle's model type, the ``--set`` options it has among ``settings``)."""
    from pipeline.bundle import load_bundle

    loaded = load_bundle(bundle)
    allowed = set(loaded.model.predict_options)
    name = loaded.model_type + (f" ({loaded.model.config.network.component_type})"
                                if hasattr(loaded.model.config, "network") else "")
    return name, [kv for kv in settings if kv.split("=", 1)[0] in allowed]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", required=True, help="a bundle or shipped model (repeatable)")
    tile_arguments(ap)
    ap.add_argument("--max-memory", default="3G")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a prediction option, given to the bundles that have it (e.g. votes=1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--format", default="same", help="the output format (predict --format; e.g. copc)")
    ap.add_argument("--floor", action="store_true",
                    help="also run each command with constant probabilities instead of the model (FLOOR_CHILD)")
    args = ap.parse_args()
    points, work = tiles_of(args)
    from pipeline.shipped import resolve_model

    bundles = [(str(resolve_model(b)[0]), *bundle_settings(str(resolve_model(b)[0]), args.set)) for b in args.bundle]
    rows, peaks = [], {}
    for target in points:
        tile, n, baseline = tile_and_baseline(work, target)
        rows.append(baseline)
        for path, name, settings in bundles:
            label = (f"run.py predict {name} --max-memory {args.max_memory}" + "".join(f" --set {kv}" for kv in settings)
                     + (f" --format {args.format}" if args.format != "same" else ""))
            predict = ["predict", "--model", path, "--input", str(tile), "--out", str(work / "pred"), "--device",
                       args.device, "--max-memory", args.max_memory, "--format", args.format,
                       *[a for kv in settings for a in ("--set", kv)], "--quiet"]
            runs = [(label, [sys.executable, str(REPO / "run.py"), *predict])]
            if args.floor:
                runs.append((f"floor: {label}, constant probabilities", [sys.executable, "-c", FLOOR_CHILD, *predict]))
            for what, cmd in runs:
                shutil.rmtree(work / "pred", ignore_errors=True)      # no output of an earlier run to skip
                wall, rss = run_child(cmd)
                rows.append((n, what, wall, rss))
                peaks.setdefault(what, []).append(rss)
                print(f"{n:,} points, {what}: {wall:.1f} s, peak {rss:.2f} GB", flush=True)
    print_table(rows)
    print()
    for label, values in peaks.items():
        print(f"{label}: peak RSS {' -> '.join(f'{v:.2f}' for v in values)} GB over the tile sizes "
              f"(largest / smallest {max(values) / min(values):.2f}x; target: <= 3 GB, within 10%)")


if __name__ == "__main__":
    main()
