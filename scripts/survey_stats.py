"""What differs between surveys: each file's region statistics, as ``condition`` computes them.

    .venv/bin/python scripts/survey_stats.py ../shared/data/lidar/ign_lidarhd/train/*.laz \
        ../shared/data/lidar/other_surveys/*/*.laz

Per file, the statistics of ``pipeline.models.region_stats`` over the whole file as one region
(point density per m² of occupied 2 m cells, multiple-return share, mean of
``log1p(intensity)/log(65536)``) and the median raw intensity. A point model with
``condition: [...]`` computes the same per sampled region. Markdown on stdout; a file that
cannot be read is reported and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.errors import UserError  # noqa: E402
from data.io import read_cloud  # noqa: E402
from pipeline.models.region_stats import REGION_STATS, point_stat_columns, region_statistics  # noqa: E402


def file_statistics(path: Path) -> dict[str, float]:
    """``{statistic: value}`` of one file taken as one region, plus ``points`` and ``intensity_median``."""
    cloud = read_cloud(path)
    stats = list(REGION_STATS)
    values = point_stat_columns(cloud, stats)
    row = region_statistics(np.asarray(cloud.xyz, np.float64), values, np.zeros(len(cloud), np.int64), 1, stats)[0]
    out = {"points": float(len(cloud)), **dict(zip(stats, map(float, row)))}
    out["density"] = 10 ** out["density"]           # points per m², for reading
    out["intensity_median"] = float(np.median(cloud.fields["intensity"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args(argv)
    print("| file | points | points per m² (occupied 2 m cells) | multiple-return share | "
          "mean log1p(intensity)/log(65536) | median intensity |")
    print("|---|---|---|---|---|---|")
    try:
        for path in args.files:
            s = file_statistics(path)
            print(f"| {path.name} | {int(s['points']):,} | {s['density']:.1f} | {s['multi_return']:.3f} | "
                  f"{s['intensity']:.3f} | {s['intensity_median']:.0f} |")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
