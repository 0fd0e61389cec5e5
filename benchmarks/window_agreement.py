"""Window / whole-tile label agreement of ``run.py predict`` on the IGN 1 km tiles.

Each tile of ``shared/data/lidar/ign_lidarhd_1km/`` is labelled twice by the same bundle, in
child processes: whole (the baseline) and in ``--window`` m windows (each read with the model's
context around it, ``pipeline.windows``). Printed per tile and over all: the share of points
with the same predicted code, and both wall times; for a grid model that writes GeoTIFF maps,
also the share of the whole map's occupied cells with the same class in the windows' map.

Usage: python benchmarks/window_agreement.py --bundle models/lidarhd-kpconvx [--window 250]
       [--set votes=1 ...] [--work /tmp/lidarseg_window_agreement] [--quick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.io import read_cloud  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402


def predict(bundle: str, tile: Path, out: Path, extra: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "run.py"), "predict", "--model", bundle, "--input", str(tile),
                    "--out", str(out), "--quiet", *extra], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--window", type=float, default=250.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", default="/tmp/lidarseg_window_agreement")
    ap.add_argument("--quick", action="store_true", help="one test crop in 20 m windows (CI)")
    args = ap.parse_args()
    tiles = sorted((DATA / "ign_lidarhd_1km").glob("*.laz"))
    if args.quick:
        tiles, args.window = sorted((DATA / "ign_lidarhd" / "test").glob("*.laz"))[:1], 20.0
    sets = [a for kv in args.set for a in ("--set", kv)]
    work = Path(args.work)
    same = total = cells_same = cells = 0
    print(f"| tile | points | agreement | whole | windows of {args.window:g} m | map cells agreement |\n"
          "|---|---|---|---|---|---|")
    for tile in tiles:
        t_whole = predict(args.bundle, tile, work / "whole", sets)
        t_win = predict(args.bundle, tile, work / "windows", sets + ["--window", str(args.window)])
        a = read_cloud(work / "whole" / tile.name).fields["classification"]
        b = read_cloud(work / "windows" / tile.name).fields["classification"]
        same += int((a == b).sum())
        total += len(a)
        maps = map_agreement(work / "whole" / f"{tile.stem}_class.tif", work / "windows" / f"{tile.stem}_class.tif")
        if maps is not None:
            cells_same, cells = cells_same + maps[0], cells + maps[1]
        print(f"| {tile.stem} | {len(a):,} | {np.mean(a == b):.4%} | {t_whole:.1f} s | {t_win:.1f} s | "
              f"{'-' if maps is None else f'{maps[0] / max(maps[1], 1):.4%} of {maps[1]:,}'} |", flush=True)
    print(f"\nall tiles: {same / total:.4%} of {total:,} points labelled the same (target >= 99.5%)")
    if cells:
        print(f"maps: {cells_same / cells:.4%} of {cells:,} occupied cells of the whole tiles' maps the same")


def map_agreement(whole: Path, windows: Path) -> tuple[int, int] | None:
    """``(cells with the same class, occupied cells of the whole map)``, or None without maps;
    the two maps must lie on the same grid."""
    if not whole.is_file():
        return None
    import rasterio

    with rasterio.open(whole) as a, rasterio.open(windows) as b:
        if (a.transform, a.shape) != (b.transform, b.shape):
            raise SystemExit(f"{windows}: another grid than {whole}")
        x, y, nodata = a.read(1), b.read(1), a.nodata
    occupied = x != nodata
    return int((x[occupied] == y[occupied]).sum()), int(occupied.sum())


if __name__ == "__main__":
    main()
