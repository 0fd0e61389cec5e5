"""Oblique 3-D view of a labelled tile: our depth-buffered splat beside open3d's renderer.

    .venv/bin/python benchmarks/bench_render.py [--repeat 5] [--quick]
    /tmp/o3d/bin/python benchmarks/bench_render.py     # an environment with open3d (+ Debian libusb-1.0-0)

Same points and ASPRS colours (``data.asprs``): ``data.render.splat`` (azimuth 30, elevation
35, shaded by height; median of ``--repeat``) against open3d's legacy
``Visualizer(visible=False)`` (offscreen EGL through Mesa where there is no display): window
and geometry set-up, then render + ``capture_screen_image`` of a 900 x 700 view (median of
``--repeat`` captures). open3d is optional: where it cannot be imported a line says so.
Writes ``/tmp/bench_render_{ours,open3d}.png`` to look at. ``--quick``: one run (CI).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.asprs import colour  # noqa: E402
from data.io import read_cloud  # noqa: E402
from data.render import splat  # noqa: E402
from data.sample_data import SAMPLE_DATA as DATA  # noqa: E402
from timing import median_time  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeat = 1
    tile = DATA / "ign_lidarhd/test/test_data_77050_627755_LA93_IGN69.laz"
    cloud = read_cloud(tile)
    codes = cloud.fields["classification"]
    rgb = np.array([colour(int(c)) for c in range(256)], np.uint8)[codes]
    ours = median_time(lambda: splat(cloud.xyz, rgb, azimuth=30, elevation=35, shade=True), args.repeat)
    img = splat(cloud.xyz, rgb, azimuth=30, elevation=35, shade=True)
    import matplotlib.pyplot as plt

    plt.imsave("/tmp/bench_render_ours.png", img)
    print(f"{tile.name}: {len(cloud):,} points; median of {args.repeat}")
    print("| renderer | set-up | render + image | total |\n|---|---|---|---|")
    print(f"| data.render.splat (ours) | - | {ours:.3f} s ({img.shape[1]} x {img.shape[0]} px) | {ours:.3f} s |")
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:
        print(f"| open3d | not importable here ({type(exc).__name__}: {exc}) | | |")
        return
    t = time.perf_counter()
    xyz = cloud.xyz - cloud.xyz.mean(0)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pc.colors = o3d.utility.Vector3dVector(rgb / 255.0)
    vis = o3d.visualization.Visualizer()
    vis.create_window(visible=False, width=900, height=700)
    vis.add_geometry(pc)
    vis.get_render_option().point_size = 2.0
    vis.get_view_control().rotate(0, -300)
    vis.poll_events()
    vis.update_renderer()
    setup = time.perf_counter() - t
    capture = median_time(lambda: vis.capture_screen_image("/tmp/bench_render_open3d.png", do_render=True),
                          args.repeat)
    vis.destroy_window()
    print(f"| open3d {o3d.__version__} Visualizer (offscreen) | {setup:.3f} s | {capture:.3f} s (900 x 700 px) | "
          f"{setup + capture:.3f} s |")
    print(f"\nratio open3d / ours (one view, set-up included): {(setup + capture) / ours:.0f}x")


if __name__ == "__main__":
    main()
