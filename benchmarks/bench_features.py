"""Benchmark: geometric feature step vs the bare scipy cKDTree k-NN baseline, on 1M real points.

Data: the four real IGN LiDAR HD 1 km tiles of ``../shared/data/lidar/ign_lidarhd_1km`` (or ``$LIDARSEG_DATA/ign_lidarhd_1km``)
(1,027,078 points in all) concatenated in file-name order and cut to the first 1,000,000
points (tiles are kilometres apart, so neighbourhoods never mix tiles).

(a) baseline: ``cKDTree(xyz)`` + ``query(xyz, k=16, workers=-1)``
(b) ours: ``compute_features(cloud, k=(16,), height_cells=(2.0, 10.0))`` -- KD-tree + k-NN +
    covariance features (12) + height features (2 cell sizes x 3) + point features (6)
Target: b / a <= 1.5 (issue 15; it was 2.0 before). Also: torch grid k-NN on CPU vs cKDTree on a smaller subset.

Run: ``.venv/bin/python benchmarks/bench_features.py [--n 1000000] [--repeats 1]``
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import laspy  # noqa: E402
import torch  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from geometry.features import compute_features  # noqa: E402
from geometry.neighbors import knn  # noqa: E402
from data.pointcloud import PointCloud  # noqa: E402
from data.sample_data import SAMPLE_DATA  # noqa: E402

DATA = str(SAMPLE_DATA / "ign_lidarhd_1km" / "*.laz")


def load(n: int) -> PointCloud:
    xyz, fields = [], {"intensity": [], "return_number": [], "number_of_returns": []}
    for path in sorted(glob.glob(DATA)):
        las = laspy.read(path)
        xyz.append(np.stack([las.x, las.y, las.z], 1))
        for name in fields:
            fields[name].append(np.asarray(las[name]))
    cloud = PointCloud(np.concatenate(xyz)[:n],
                       {k: np.concatenate(v)[:n] for k, v in fields.items()})
    return cloud


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--torch-n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--open3d", action="store_true",
                    help="only: open3d.ml.torch.ops.knn_search vs cKDTree on the same points")
    ap.add_argument("--quick", action="store_true", help="20,000 points, torch k-NN on 5,000 (CI)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.torch_n, args.repeats = 20_000, 5_000, 1
    cloud = load(args.n)
    if args.open3d:
        bench_open3d(cloud.xyz, args.k, args.repeats)
        return
    xyz = cloud.xyz
    print(f"data: {len(cloud):,} points from {DATA} (4 real 1 km tiles, concatenated); "
          f"k={args.k}; cores={os.cpu_count()}; torch threads={torch.get_num_threads()}")
    for rep in range(args.repeats):
        def baseline():
            tree = cKDTree(xyz)
            return tree.query(xyz, k=args.k, workers=-1)
        ta, _ = timed(baseline)
        tb, (names, x) = timed(lambda: compute_features(cloud, k=(args.k,),
                                                        height_cells=(2.0, 10.0)))
        assert np.isfinite(x).all()
        print(f"\n[run {rep + 1}]")
        print(f"{'step':58s} {'seconds':>8s}")
        print(f"{'(a) cKDTree build + query(k=%d, workers=-1)' % args.k:58s} {ta:8.2f}")
        print(f"{'(b) compute_features: tree+kNN+cov+height+point (%d feats)' % len(names):58s}"
              f" {tb:8.2f}")
        print(f"{'ratio b/a (target <= 1.5)':58s} {tb / ta:8.2f}")

    # breakdown of (b), each sub-step timed on its own
    from geometry.features import covariance_features, height_features, point_features
    local = xyz - xyz.mean(0)
    t_build, tree = timed(lambda: cKDTree(local, balanced_tree=False))
    t_query, (_, idx) = timed(lambda: tree.query(local, k=args.k, workers=-1))
    t_cov, _ = timed(lambda: covariance_features(local, idx, workers=-1))
    t_h, _ = timed(lambda: [height_features(xyz, c) for c in (2.0, 10.0)])
    t_p, _ = timed(lambda: point_features(cloud.fields))
    print("\nbreakdown of (b):")
    for label, v in (("KD-tree build (balanced_tree=False)", t_build),
                     (f"k-NN query k={args.k}", t_query),
                     ("covariance features (12), 2 threads, whole [N, k] table", t_cov),
                     ("height features, cells 2.0 and 10.0 (6)", t_h),
                     ("point features (6)", t_p)):
        print(f"  {label:56s} {v:8.2f}")

    # torch grid k-NN on CPU vs cKDTree, smaller subset (centred float32 for torch)
    sub = xyz[: args.torch_n] - xyz[: args.torch_n].mean(0)
    tc, (dc, ic) = timed(lambda: cKDTree(sub).query(sub, k=args.k, workers=-1))
    pt = torch.from_numpy(sub).float()
    tt, (dt, it) = timed(lambda: knn(pt, pt, args.k))
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)
    tt1, _ = timed(lambda: knn(pt, pt, args.k))
    torch.set_num_threads(nthreads)
    agree = np.abs(dt.double().numpy() - dc).max()
    print(f"\ntorch knn (CPU, float32) vs cKDTree on {len(sub):,} points, k={args.k}")
    print(f"{'cKDTree build + query (workers=-1)':58s} {tc:8.2f}")
    print(f"{'geometry.neighbors.knn, torch grid search, %d threads' % nthreads:58s} {tt:8.2f}")
    print(f"{'geometry.neighbors.knn, torch grid search, 1 thread':58s} {tt1:8.2f}")
    print(f"{'max |dist difference| (float32 rounding)':58s} {agree:8.1e}")


def bench_open3d(xyz: np.ndarray, k: int, repeats: int) -> None:
    """open3d's CPU k-NN (``open3d.ml.torch.ops.knn_search``, float32) against cKDTree build +
    query (float64, ``workers=-1``) on the same centred points; the best of ``repeats`` runs."""
    try:
        import open3d.ml.torch as ml3d
    except Exception as exc:  # noqa: BLE001 - missing package or its system libraries
        print(f"open3d.ml.torch not importable ({type(exc).__name__}: {exc}); pip install open3d and "
              "apt-get install libusb-1.0-0 to run this comparison")
        return
    local = xyz - xyz.mean(0)
    pts = torch.from_numpy(local.astype(np.float32))
    splits = torch.tensor([0, len(pts)], dtype=torch.int64)
    tc = to = float("inf")
    for _ in range(max(1, repeats)):
        t, (dc, ic) = timed(lambda: cKDTree(local).query(local, k=k, workers=-1))
        tc = min(tc, t)
        t, res = timed(lambda: ml3d.ops.knn_search(pts, pts, k, splits, splits, metric="L2",
                                                   return_distances=True))
        to = min(to, t)
    do = np.sqrt(res.neighbors_distance.numpy().reshape(len(pts), k).astype(np.float64))
    print(f"k-NN on {len(pts):,} points, k={k}, torch threads {torch.get_num_threads()}, best of {repeats}")
    print(f"{'(a) cKDTree build + query (float64, workers=-1)':58s} {tc:8.2f}")
    print(f"{'(b) open3d.ml.torch.ops.knn_search (float32)':58s} {to:8.2f}")
    print(f"{'ratio b/a':58s} {to / tc:8.2f}")
    print(f"{'max |distance difference| (float32 rounding)':58s} {np.abs(do - dc).max():8.1e}")


if __name__ == "__main__":
    main()
