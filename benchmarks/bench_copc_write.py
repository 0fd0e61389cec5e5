"""Peak memory and speed of COPC writing (``data.copc.las_to_copc``) on large tiles.

The tiles are ``bench_predict_memory.py``'s (the four IGN test crops repeated on a 100 m grid,
written once into ``--work``). For each tile, in child processes:

- baseline: ``data.io.read_cloud(tile)`` alone (what holding the cloud costs);
- ours: ``las_to_copc(tile, WORK/copc/tile.copc.laz)``, then the file checked by reading it
  back: laspy's ``CopcReader`` header point count, and a 100 m x 100 m window query at its centre
  that must return exactly the tile's points inside it (the time of that query is printed too).

Peak memory is each child's peak RSS (``ru_maxrss``); flat memory means the same peak at every
tile size.

Usage: python benchmarks/bench_copc_write.py [--points 10000000 50000000] [--work /tmp/lidarseg_bench_big]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_predict_memory import print_table, run_child, tile_and_baseline, tile_arguments, tiles_of  # noqa: E402

CHECK = """
import sys, time, laspy, numpy as np
from data.las_stream import LasChunks
tile, out = sys.argv[1], sys.argv[2]
chunks = LasChunks(tile)
lo = (chunks.header.mins[:2] + chunks.header.maxs[:2]) / 2 - 50
inside = 0
for _, arr in chunks.records(2_000_000):
    xy = chunks.xyz(arr)[:, :2]
    inside += int(np.all((xy >= lo) & (xy <= lo + 100), axis=1).sum())
t = time.perf_counter()
with laspy.CopcReader.open(out) as r:
    assert r.header.point_count == chunks.point_count, (r.header.point_count, chunks.point_count)
    got = len(r.query(laspy.copc.Bounds(mins=lo, maxs=lo + 100)))
assert got == inside, (got, inside)
print(f"  check: {chunks.point_count:,} points in the header; a 100 m window query: {got:,} points "
      f"(= the tile's), {time.perf_counter() - t:.2f} s")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tile_arguments(ap)
    points, work = tiles_of(ap.parse_args())
    rows = []
    for target in points:
        tile, n, baseline = tile_and_baseline(work, target)
        rows.append(baseline)
        out = work / "copc" / f"{tile.stem}.copc.laz"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        wall, rss = run_child([sys.executable, "-c", "from data.copc import las_to_copc; "
                               f"las_to_copc({str(tile)!r}, {str(out)!r})"])
        rows.append((n, "las_to_copc", wall, rss))
        print(f"{n:,} points: las_to_copc {wall:.1f} s, peak {rss:.2f} GB, {out.stat().st_size / 1e6:.0f} MB",
              flush=True)
        run_child([sys.executable, "-c", CHECK, str(tile), str(out)])
    print_table(rows)
    peaks = [rss for _, label, _, rss in rows if label == "las_to_copc"]
    print(f"\nlas_to_copc: peak RSS {' -> '.join(f'{v:.2f}' for v in peaks)} GB over the tile sizes "
          f"(largest / smallest {max(peaks) / min(peaks):.2f}x)")


if __name__ == "__main__":
    main()
