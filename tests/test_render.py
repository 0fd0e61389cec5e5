"""data.render: the depth-buffered splat against a per-point loop, and the views the tools write."""
from __future__ import annotations

import json

import numpy as np

from data.render import BACKGROUND, render_views, splat


def test_top_view_shows_the_highest_point_of_each_pixel():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 10, (4000, 3))
    rgb = rng.integers(0, 200, (4000, 3)).astype(np.uint8)
    img = splat(xyz, rgb, elevation=90.0, max_pixels=40)
    # the same rule written as a loop: pixel of each point, keep the largest z
    p = xyz - xyz.mean(0)
    size = max(1.6 * np.sqrt(np.ptp(p[:, 0]) * np.ptp(p[:, 1]) / len(p)), max(np.ptp(p[:, 0]), np.ptp(p[:, 1])) / 40)
    best: dict[tuple[int, int], int] = {}
    for i, (x, y, z) in enumerate(p):
        r = min(int((p[:, 1].max() - y) / size), int(np.ptp(p[:, 1]) / size))
        c = min(int((x - p[:, 0].min()) / size), int(np.ptp(p[:, 0]) / size))
        if (r, c) not in best or z > p[best[(r, c)], 2]:
            best[(r, c)] = i
    ref = np.full_like(img, BACKGROUND)
    for (r, c), i in best.items():
        ref[r, c] = rgb[i]
    np.testing.assert_array_equal(img, ref)


def test_render_views_writes_a_png(tmp_path, lidar_data):
    from data.io import read_cloud

    cloud = read_cloud(lidar_data / "ign_lidarhd/test/test_data_77055_627760_LA93_IGN69.laz")
    ref = cloud.fields["classification"]
    pred = np.where(ref == 6, 5, ref)
    path = render_views(tmp_path / "v.png", cloud.xyz, pred, ref, title="t")
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 600 and img.shape[1] > 1200                      # 2 rows x 3 panels + legend
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)
    assert red.mean() > 0.01                                              # the building errors show


def test_evaluate_writes_views_per_file(tmp_path, lidar_data):
    from data.classmap import ClassMap
    from data.io import read_cloud, write_cloud
    from pipeline.evaluation import evaluate_files

    src = lidar_data / "ign_lidarhd/test/test_data_77055_627760_LA93_IGN69.laz"
    cloud = read_cloud(src)
    ref = cloud.fields["classification"].copy()
    cloud.fields["classification"] = np.where(ref == 4, 3, ref).astype(ref.dtype)   # same class, other code
    write_cloud(cloud, tmp_path / "pred.laz", extra={"classification_ref": ref})
    cmap = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5], "building": [6], "other": [1, 64]})
    report = evaluate_files([tmp_path / "pred.laz"], None, cmap, tmp_path / "eval")
    assert report["miou"] == 1.0
    assert (tmp_path / "eval" / "views" / "pred.png").stat().st_size > 10000
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["miou"] == 1.0
    evaluate_files([tmp_path / "pred.laz"], None, cmap, tmp_path / "quiet", views=False)
    assert not (tmp_path / "quiet" / "views").exists()
