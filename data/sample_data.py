"""Where the labelled sample LiDAR lives: ``$LIDARSEG_DATA``, else ``../shared/data/lidar``
beside the checkout (IGN LiDAR HD: ``ign_lidarhd/{train,test}``, ``ign_lidarhd_1km``).
Used by the tests and the benchmarks; the pipeline itself reads ``data_root`` from the spec."""
from __future__ import annotations

import os
from pathlib import Path

SAMPLE_DATA = Path(os.environ.get("LIDARSEG_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data" / "lidar")).resolve()
