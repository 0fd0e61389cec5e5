"""Read/write throughput of data.io vs plain laspy on the same files, same run.

    .venv/bin/python benchmarks/bench_io.py [--repeat 5]

For each file: median over ``--repeat`` runs of (a) ``laspy.read`` vs ``read_cloud`` and
(b) ``LasData.write`` vs ``write_cloud`` to LAZ and to LAS (in a temp folder). Prints
points/s and the overhead ratio (ours / laspy time; target < 1.20 for LAZ).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import laspy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.io import read_cloud, write_cloud  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402
from timing import median_time  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the 4 small test tiles, one run (CI)")
    args = parser.parse_args()
    files = sorted((DATA / "ign_lidarhd_1km").glob("*.laz")) + sorted((DATA / "ign_lidarhd/train").glob("*.laz"))
    if args.quick:
        files, args.repeat = sorted((DATA / "ign_lidarhd/test").glob("*.laz")), 1
    rows, totals = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            las = laspy.read(path)
            cloud = read_cloud(path)
            n = len(cloud)
            plain = Path(tmp) / "plain.las"
            las.write(plain)
            ops = {
                "read LAZ": (lambda: laspy.read(path), lambda: read_cloud(path)),
                "read LAS": (lambda: laspy.read(plain), lambda: read_cloud(plain)),
                "write LAZ": (lambda: las.write(Path(tmp) / "a.laz"), lambda: write_cloud(cloud, Path(tmp) / "b.laz")),
                "write LAS": (lambda: las.write(Path(tmp) / "a.las"), lambda: write_cloud(cloud, Path(tmp) / "b.las")),
            }
            for op, (base, ours) in ops.items():
                t_base, t_ours = median_time(base, args.repeat), median_time(ours, args.repeat)
                rows.append((path.name[:40], op, n, n / t_base, n / t_ours, t_ours / t_base))
                tb, to, tn = totals.get(op, (0.0, 0.0, 0))
                totals[op] = (tb + t_base, to + t_ours, tn + n)
    print(f"{'file':40s} {'op':9s} {'points':>8s} {'laspy Mpt/s':>11s} {'ours Mpt/s':>10s} {'ratio':>6s}")
    for name, op, n, pb, po, r in rows:
        print(f"{name:40s} {op:9s} {n:8d} {pb / 1e6:11.2f} {po / 1e6:10.2f} {r:6.2f}")
    print("\nTOTAL (all files, sum of medians)")
    for op, (tb, to, tn) in totals.items():
        print(f"{op:9s} {tn:9d} pts  laspy {tn / tb / 1e6:6.2f} Mpt/s  ours {tn / to / 1e6:6.2f} Mpt/s  "
              f"ratio {to / tb:.2f}")


if __name__ == "__main__":
    main()
