"""kpconvx model component: the IGN spec (small preset, tiny overrides) trains a few steps on
crops of real files via the CLI, predicts and evaluates a test crop; resume continues from the
checkpoint step with the same losses as an uninterrupted run; coverage, sampler and
augmentation unit checks."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import pytest
import yaml

from conftest import REPO
from pipeline.spec import compose_spec_file

TRAIN_CUTS = [("ign_lidarhd/train/792000_6272000-50mx100m-left.laz", 20.0),
              ("ign_lidarhd/train/mnx_bat.laz", 15.0)]
TEST_CUT = ("ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz", 15.0)
TINY = {"network": {"preset": "small", "first_cell": 0.5, "widths": [16, 32], "blocks": [1, 1], "neighbor_limits": [10, 10]},
        "sampling": {"radius": 8.0, "max_points": 2000}, "batch_size": 2, "steps": 50, "val_every": 2,
        "votes": 1, "points_per_pass": 20000, "optim": {"warmup_steps": 2}}


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def cut(src: Path, dst: Path, size: float) -> int:
    """Write the lower-left ``size`` x ``size`` m of ``src`` to ``dst``; returns its point count."""
    from data.io import read_cloud, write_cloud

    c = read_cloud(src)
    lo = c.xyz[:, :2].min(0)
    keep = np.flatnonzero(np.all((c.xyz[:, :2] >= lo) & (c.xyz[:, :2] < lo + size), axis=1))
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_cloud(c.subset(keep), dst)
    return len(keep)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, lidar_data):
    root = tmp_path_factory.mktemp("kpx_data")
    for i, (src, size) in enumerate(TRAIN_CUTS):
        cut(lidar_data / src, root / "train" / f"crop{i}.laz", size)
    cut(lidar_data / TEST_CUT[0], root / "test" / "tile.laz", TEST_CUT[1])
    return root


def tiny_spec(folder: Path, data_root: Path, val: bool = True) -> Path:
    spec = compose_spec_file(REPO / "specs" / "ign_kpconvx.yaml")
    spec["data_root"] = str(data_root)
    spec["output"] = "out"
    spec["inputs"] = {"train": ["train/*.laz"], "test": ["test/*.laz"]}
    model = spec["steps"][0]["model"]
    for key, value in TINY.items():
        if isinstance(value, dict):
            model.setdefault(key, {}).update(value)
        else:
            model[key] = value
    if not val:
        spec["steps"][0].pop("val_split")
        spec["steps"] = spec["steps"][:1]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_log(work: Path) -> list[dict[str, str]]:
    with open(work / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, data_root):
    spec = tiny_spec(tmp_path_factory.mktemp("kpx_run"), data_root)
    res = cli("run", spec, "--limit-steps", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    return spec.parent / "out"


def test_spec_validates():
    res = cli("validate", REPO / "specs" / "ign_kpconvx.yaml")
    assert res.returncode == 0, res.stderr + res.stdout


def test_run_trains_predicts_and_evaluates(run_out, data_root):
    bundle = run_out / "model.bundle"
    assert {"bundle.json", "weights.pt", "kpconvx_model.json", "curves.png"} <= {p.name for p in bundle.iterdir()}
    assert (bundle / "curves.png").read_bytes() == (run_out / "model.work" / "curves.png").read_bytes()
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["type"] == "point" and meta["model"]["network"]["type"] == "kpconvx"
    assert meta["summary"]["steps"] == 3
    assert meta["summary"]["best_val_miou"] is not None
    norm = json.loads((bundle / "kpconvx_model.json").read_text())
    assert norm["feature_columns"] == ["return_ratio", "number_of_returns", "height", "hag_ground"]
    assert len(norm["logit_bias"]) == 6 and all(np.isfinite(norm["logit_bias"]))   # prior correction stored
    assert len(norm["mean"]) == len(norm["std"]) == 4 and all(s > 0 for s in norm["std"])
    rows = read_log(run_out / "model.work")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[1]["val_miou"] != "" and rows[0]["val_miou"] == ""           # val_every 2 + last step
    assert (run_out / "model.work" / "best.pt").is_file()
    report = json.loads((run_out / "evaluation" / "report.json").read_text())
    assert 0 <= report["miou"] <= 1
    out = laspy.read(run_out / "predictions" / "tile.laz")
    assert len(out.points) == len(laspy.read(data_root / "test" / "tile.laz").points)


def test_predict_and_evaluate_cli(run_out, data_root, tmp_path):
    tile = data_root / "test" / "tile.laz"
    res = cli("predict", "--model", run_out / "model.bundle", "--input", tile, "--out", tmp_path / "pred",
              "--quiet")
    assert res.returncode == 0, res.stderr
    src, out = laspy.read(tile), laspy.read(tmp_path / "pred" / "tile.laz")
    assert len(out.points) == len(src.points)                      # every input point labelled
    assert set(np.unique(out.classification)) <= {1, 2, 3, 6, 9, 17}
    conf = np.asarray(out["confidence"])
    assert np.isfinite(conf).all() and (conf > 0).all() and (conf <= 1 + 1e-6).all()
    np.testing.assert_array_equal(np.asarray(out["classification_ref"]), np.asarray(src.classification))
    res = cli("evaluate", "--pred", tmp_path / "pred" / "*.laz", "--ref", tile, "--out", tmp_path / "eval",
              "--classes", run_out / "resolved_spec.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_points"] + report["ignored_points"] == len(src.points)


def test_predict_options_override_the_bundle(run_out, data_root, tmp_path):
    from data.errors import UserError
    from pipeline.bundle import load_bundle

    model = load_bundle(run_out / "model.bundle", ["votes=2", "sampling.test_spacing=0.5"]).model
    assert model.config.votes == 2 and model.config.sampling.test_spacing == 0.5
    for assignment, words in [("network.preset=full", "not a prediction option"), ("votes=0", "votes"),
                              ("sampling.test_spacing=5", "test_spacing")]:
        with pytest.raises(UserError, match=words):
            load_bundle(run_out / "model.bundle", [assignment])
    res = cli("predict", "--model", run_out / "model.bundle", "--input", data_root / "test" / "tile.laz",
              "--out", tmp_path / "pred", "--set", "points_per_pass=2000", "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("predict", "--model", run_out / "model.bundle", "--input", data_root / "test" / "tile.laz",
              "--out", tmp_path / "bad", "--set", "network.widths=[8]")
    assert res.returncode == 2 and "network.widths" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()


def test_unlabelled_input_and_missing_feature(run_out, data_root):
    from data.errors import DataError
    from data.io import read_cloud
    from pipeline.bundle import load_bundle

    bundle = load_bundle(run_out / "model.bundle")
    model, class_map = bundle.model, bundle.class_map
    cloud = read_cloud(data_root / "test" / "tile.laz")
    cloud.fields.pop("classification")
    proba = model.predict_proba(cloud, "cpu")
    assert proba.shape == (len(cloud), class_map.num_classes) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-4)
    cloud.fields.pop("number_of_returns")
    with pytest.raises(DataError, match="number_of_returns"):
        model.predict_proba(cloud, "cpu")


def test_resume_continues_from_checkpoint_and_is_deterministic(tmp_path, data_root):
    full = tiny_spec(tmp_path / "full", data_root, val=False)
    part = tiny_spec(tmp_path / "part", data_root, val=False)
    assert cli("run", full, "--limit-steps", "4", "--quiet").returncode == 0
    res = cli("run", part, "--limit-steps", "4", "--stop-after", "2", "--quiet")   # time-boxed after 2 steps
    assert res.returncode == 0, res.stderr
    work = part.parent / "out" / "model.work"
    first = read_log(work)
    assert [int(r["step"]) for r in first] == [1, 2]
    res = cli("run", part, "--limit-steps", "4", "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stderr and "at step 2" in res.stderr
    resumed = read_log(work)
    assert [int(r["step"]) for r in resumed] == [1, 2, 3, 4]          # continued at 3, not 1
    reference = read_log(full.parent / "out" / "model.work")
    # fixed seed: the same losses as the uninterrupted run, step for step (to 1e-5: the two
    # processes' buffers can sit at different alignments, which changes float summation order)
    assert [float(r["loss"]) for r in resumed] == pytest.approx([float(r["loss"]) for r in reference], rel=1e-5)
    meta = json.loads((part.parent / "out" / "model.bundle" / "bundle.json").read_text())
    assert meta["summary"]["steps"] == 4


# -- unit checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_coverage_reaches_every_point(shape):
    from pipeline.regions import SamplingConfig, coverage_centers, predict_coverage

    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 60, (5000, 2)), rng.uniform(0, 25, 5000)]
    limit = 2 / np.sqrt(3) if shape == "sphere" else np.sqrt(2)
    cfg = SamplingConfig(shape=shape, radius=5.0, max_points=10**6, test_spacing=float(limit))
    seen = np.zeros(len(xyz), np.int64)

    def run_pass(regions, angle):
        for r in regions:
            d = r.xyz if shape == "sphere" else r.xyz[:, :2]
            assert (np.linalg.norm(d, axis=1) <= cfg.radius + 1e-4).all()
            seen[r.index] += 1
        n = sum(len(r.index) for r in regions)
        return np.tile(np.array([[0.25, 0.75]], np.float32), (n, 1))

    proba, missing = predict_coverage(xyz, 2, cfg, run_pass, votes=2, points_per_pass=3000)
    assert missing == 0 and (seen > 0).all()
    np.testing.assert_allclose(proba, np.tile([0.25, 0.75], (len(xyz), 1)), atol=1e-6)
    assert len(coverage_centers(xyz, cfg)) < len(xyz)


@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_coverage_centers_are_the_occupied_cells_in_row_order(shape):
    """One centre per occupied cell of the inference grid, cells in lexicographic order, a
    cylinder's z the mean z of its cell's points; points below the anchor (a neighbour's, with
    --buffer) have cells of negative index."""
    from pipeline.regions import SamplingConfig, coverage_centers

    rng = np.random.default_rng(4)
    xyz = np.c_[rng.uniform(-20, 90, (3000, 2)), rng.uniform(0, 25, 3000)]
    cfg = SamplingConfig(shape=shape, radius=5.0, test_spacing=1.0)
    anchor = np.zeros(3)
    got = coverage_centers(xyz, cfg, offset=0.25, anchor=anchor)
    dims, h = (3 if shape == "sphere" else 2), 5.0
    origin = anchor - 0.25 * h
    cells = {}
    for p in xyz:                                   # the reference: a dict of cells, a loop
        cells.setdefault(tuple(int(v) for v in np.floor((p[:dims] - origin[:dims]) / h)), []).append(p[2])
    keys = sorted(cells)
    assert min(k[0] for k in keys) < 0
    want = np.array([[origin[d] + (k[d] + 0.5) * h for d in range(dims)]
                     + ([np.mean(cells[k])] if dims == 2 else []) for k in keys])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_coverage_blocks_in_threads_add_up_as_in_one():
    """workers > 1 runs blocks at once and adds them up in block order: the same probabilities
    to the bit as one worker, however long each block takes."""
    import threading
    import time as _time

    from pipeline.regions import SamplingConfig, predict_coverage

    rng = np.random.default_rng(2)
    xyz = np.c_[rng.uniform(0, 80, (6000, 2)), rng.uniform(0, 20, 6000)]
    cfg = SamplingConfig(shape="cylinder", radius=6.0, max_points=10**6, test_spacing=1.0)
    threads = set()

    def run_pass(regions, angle):
        threads.add(threading.get_ident())
        idx = np.concatenate([r.index for r in regions])
        _time.sleep(0.002 * (len(regions) % 3))                  # blocks finish out of order
        p = np.stack([np.sin(idx * 0.37 + angle), np.cos(idx * 0.11 - angle), np.full(len(idx), 0.5)], 1)
        return np.abs(p).astype(np.float32)

    one, m1 = predict_coverage(xyz, 3, cfg, run_pass, votes=2, points_per_pass=900)
    threads.clear()
    two, m2 = predict_coverage(xyz, 3, cfg, run_pass, votes=2, points_per_pass=900, workers=3)
    assert len(threads) > 1 and m1 == m2 == 0
    np.testing.assert_array_equal(one, two)


def test_coverage_fills_unreached_points_from_nearest():
    from pipeline.regions import SamplingConfig, predict_coverage

    rng = np.random.default_rng(1)
    xyz = rng.uniform(0, 20, (3000, 3))
    cfg = SamplingConfig(radius=4.0, max_points=50)                   # cap leaves points unreached

    def run_pass(regions, angle):
        return np.concatenate([np.eye(3, dtype=np.float32)[(r.index % 3)] for r in regions])

    proba, missing = predict_coverage(xyz, 3, cfg, run_pass)
    assert missing > 0
    assert proba.shape == (3000, 3) and np.allclose(proba.sum(1), 1)


def test_class_balanced_centres_draw_rare_classes():
    from pipeline.regions import ClassBalancedCenters

    labels = [np.r_[np.zeros(99_000, np.int64), np.full(10, 3)], np.r_[np.full(990, 1), np.full(5, -1)]]
    centers = ClassBalancedCenters(labels, num_classes=5, balanced=True)
    tile, row, cls = centers.draw(30_000, np.random.default_rng(0))
    freq = np.bincount(cls, minlength=5) / len(cls)
    np.testing.assert_allclose(freq[[0, 1, 3]], 1 / 3, atol=0.02)      # rare class 3 as often as 0
    assert freq[2] == freq[4] == 0
    np.testing.assert_array_equal(np.array([labels[t][r] for t, r in zip(tile, row)]), cls)
    _, _, cls = ClassBalancedCenters(labels, 5, balanced=False).draw(30_000, np.random.default_rng(0))
    assert (cls == 3).mean() < 0.01


def test_augmentation_keeps_shapes_and_labels():
    from pipeline.regions import AugmentConfig, RegionSampler, SamplingConfig, augment

    rng = np.random.default_rng(0)
    xyz = rng.uniform(-10, 10, (2000, 3))
    labels = rng.integers(0, 4, 2000)
    region = RegionSampler([xyz], SamplingConfig(radius=6.0, max_points=500)).regions(0, np.zeros((1, 3)))[0]
    assert 0 < len(region.index) <= 500
    feats = rng.normal(size=(len(region.index), 3)).astype(np.float32)
    cfg = AugmentConfig(scale=[0.8, 1.2], jitter=0.0, feature_dropout=1.0)
    new_xyz, new_feats = augment(region.xyz, feats, cfg, rng)
    assert new_xyz.shape == region.xyz.shape and new_feats.shape == feats.shape
    assert new_xyz.dtype == np.float32 and (new_feats == 0).all()       # dropout p=1
    ratio = np.linalg.norm(new_xyz, axis=1) / np.maximum(np.linalg.norm(region.xyz, axis=1), 1e-9)
    assert np.ptp(ratio[np.linalg.norm(region.xyz, axis=1) > 1e-3]) < 1e-4   # rigid motion + one scale
    assert 0.8 - 1e-6 <= ratio.max() <= 1.2 + 1e-6
    np.testing.assert_array_equal(labels[region.index], labels[region.index])  # rows (labels) untouched
    np.testing.assert_array_equal(feats, feats)
    jit, _ = augment(region.xyz, feats, AugmentConfig(rotate_z=False, scale=[1, 1], flip_x=0, jitter=0.01,
                                                      jitter_clip=0.02), rng)
    assert np.abs(jit - region.xyz).max() <= 0.02 + 1e-6


def test_stretch_heights_lifts_points_by_their_height_above_ground():
    from pipeline.regions import AugmentConfig, stretch_heights

    rng = np.random.default_rng(1)
    xyz = rng.uniform(-5, 5, (300, 3)).astype(np.float32)
    hag = rng.uniform(-0.3, 12, 300).astype(np.float32)
    feats = np.c_[rng.normal(size=300), hag, 2 * hag].astype(np.float32)
    new_xyz, new_feats = stretch_heights(xyz, feats, hag, [1, 2], 2.5)
    np.testing.assert_allclose(new_xyz[:, :2], xyz[:, :2])
    np.testing.assert_allclose(new_xyz[:, 2], xyz[:, 2] + 1.5 * np.maximum(hag, 0), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(new_feats[:, 0], feats[:, 0])                    # not a height: untouched
    np.testing.assert_allclose(new_feats[:, 1:], 2.5 * feats[:, 1:], rtol=1e-6)
    assert not AugmentConfig().stretches and AugmentConfig(stretch_z=[1.0, 2.0]).stretches


def test_column_inputs_and_stretch_need_their_fields(tmp_path, data_root):
    from data.io import read_cloud
    from geometry.columns import cell_column_features
    from geometry.heights import height_above_ground
    from pipeline.models.point_inputs import COLUMN_CELL, feature_columns, point_feature_matrix

    cloud = read_cloud(data_root / "test" / "tile.laz")
    m = point_feature_matrix(cloud, ["ground", "columns"], 10.0)
    assert feature_columns(["ground", "columns"])[1] == ["hag_ground", "col_ground_gap", "col_rank",
                                                          "col_multi_return"]
    ref = cell_column_features(cloud.xyz, height_above_ground(cloud.xyz), COLUMN_CELL,
                               cloud.fields["number_of_returns"])
    np.testing.assert_allclose(m[:, 1:], np.c_[ref["ground_gap"], ref["rank"], ref["multi_return"]], atol=1e-6)
    spec = tiny_spec(tmp_path, data_root)
    res = cli("validate", spec, "--set", "train.model.augment.stretch_z=[1.0, 2.0]",
              "--set", "train.model.channels=[xyz, returns]")
    assert res.returncode == 2 and "stretch_z" in res.stderr and "ground" in res.stderr


def test_config_errors_name_the_key(tmp_path, data_root):
    spec = tiny_spec(tmp_path, data_root)
    res = cli("validate", spec)
    assert res.returncode == 0, res.stderr
    for setting, words in [("train.model.sampling.test_spacing=2.0", "test_spacing"),
                           ("train.model.network.widths=[12,24]", "groups"),
                           ("train.model.channels=[xyz,colour]", "channels"),
                           ("train.model.features=[xyz,colour]", "channels"),      # its earlier name
                           ("train.model.optim.lr=0", "lr")]:
        res = cli("validate", spec, "--set", setting)
        assert res.returncode == 2 and words in res.stderr, (setting, res.stderr)


@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_regions_are_the_ball_capped_at_the_nearest(shape):
    from pipeline.regions import RegionSampler, SamplingConfig

    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, 20, (4000, 3))
    centers = rng.uniform(0, 20, (6, 3))
    dims = 3 if shape == "sphere" else 2
    for cap in (10**6, 40):
        regions = RegionSampler([xyz], SamplingConfig(shape=shape, radius=4.0, max_points=cap)).regions(0, centers)
        for c, r in zip(centers, regions):
            d = np.linalg.norm(xyz[:, :dims] - c[:dims], axis=1)
            ball = np.flatnonzero(d <= 4.0)
            expect = ball if len(ball) <= cap else np.sort(ball[np.argsort(d[ball], kind="stable")[:cap]])
            np.testing.assert_array_equal(r.index, expect)
            np.testing.assert_allclose(r.xyz, xyz[expect] - c, atol=1e-5)


def test_coverage_memory_is_one_block_not_all_regions():
    """Regions are built as blocks consume them: peak memory far below all regions' members."""
    import tracemalloc

    from pipeline.regions import SamplingConfig, predict_coverage

    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 80, (30_000, 2)), rng.uniform(0, 10, 30_000)]
    cfg = SamplingConfig(radius=5.0, max_points=2000, test_spacing=0.3)     # ~100 regions per point
    total = 0

    def run_pass(regions, angle):
        nonlocal total
        m = sum(len(r.index) for r in regions)
        assert m <= 20_000 or len(regions) == 1
        total += m
        return np.full((m, 2), 0.5, np.float32)

    tracemalloc.start()
    try:
        proba, missing = predict_coverage(xyz, 2, cfg, run_pass, points_per_pass=20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert missing == 0 and np.allclose(proba, 0.5)
    all_regions = total * 20            # int64 row + float32 xyz per member
    assert total > 50 * len(xyz) and peak < 0.15 * all_regions, (peak, all_regions)


def test_rerun_over_a_checkpoint_needs_resume_or_overwrite(tmp_path, data_root):
    spec = tiny_spec(tmp_path / "again", data_root, val=False)
    assert cli("run", spec, "--limit-steps", "2", "--quiet").returncode == 0
    res = cli("run", spec, "--limit-steps", "2", "--quiet")
    assert res.returncode == 2 and "model.work: holds the checkpoint of an earlier training" in res.stderr
    assert "--resume" in res.stderr and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    res = cli("run", spec, "--limit-steps", "2", "--overwrite", "--quiet")
    assert res.returncode == 0, res.stderr
    assert [int(r["step"]) for r in read_log(spec.parent / "out" / "model.work")] == [1, 2]


def test_coverage_settings_benchmark_scores_validation_blocks(run_out):
    """benchmarks/coverage_settings.py: the bundle's own setting and one other, on the spec's
    validation blocks, as a table."""
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "coverage_settings.py"),
                          str(run_out.parent / "spec.yaml"), str(run_out / "model.bundle"), "--quick",
                          "--spacings", "1.1", "--votes", "1"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| setting | val mIoU | IoU ")
    assert rows[1].startswith("| bundle's own |") and rows[1].endswith("| 1.00x |")
    assert rows[2].startswith("| --set sampling.test_spacing=1.1 --set votes=1 | ")


def test_ambiguous_codes_train_with_the_partial_label_loss(tmp_path, data_root):
    """An input entry whose code 1 may be vegetation or other trains on those points (the log
    says how many) together with random thinning of the regions; the run completes."""
    spec_path = tiny_spec(tmp_path, data_root, val=False)
    spec = yaml.safe_load(spec_path.read_text())
    spec["inputs"]["train"] = [{"files": "train/*.laz", "ambiguous": {1: ["vegetation", "other"]}}]
    spec["steps"][0]["model"]["augment"]["thin"] = [0.5, 1.0]
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("run", spec_path, "--limit-steps", "3")
    assert res.returncode == 0, res.stderr
    assert "training points of ambiguous codes (partial-label loss" in res.stderr
    losses = [float(r["loss"]) for r in read_log(tmp_path / "out" / "model.work")]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_partial_label_loss_is_minus_log_of_the_set_probability():
    import torch

    from pipeline.training import partial_label_loss

    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, -1, -1, 3])
    cand = np.zeros((5, 4), bool)
    cand[2, [1, 2]] = True
    cand[3, [0, 1, 3]] = True
    w = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    ce = torch.nn.CrossEntropyLoss(weight=w, ignore_index=-1)
    p = torch.softmax(logits, 1)
    pl = [-torch.log(p[2, [1, 2]].sum()), -torch.log(p[3, [0, 1, 3]].sum())]
    ce_sum = sum(-w[c] * torch.log(p[i, c]) for i, c in ((0, 0), (1, 2), (4, 3)))
    expected = (ce_sum + sum(pl)) / (w[0] + w[2] + w[3] + 2)
    torch.testing.assert_close(partial_label_loss(ce, logits, y, cand, w), expected)
    torch.testing.assert_close(partial_label_loss(ce, logits, y, None, w), ce(logits, y))
    only = torch.full((5,), -1)
    torch.testing.assert_close(partial_label_loss(ce, logits, only, cand, w), sum(pl) / 2)
    # a set of every class carries no information: zero loss
    torch.testing.assert_close(partial_label_loss(ce, logits, only, np.ones((5, 4), bool), w),
                               torch.tensor(0.0, dtype=torch.float64))


def test_thinned_regions_keep_a_share_of_their_points():
    from pipeline.regions import AugmentConfig, Region

    rng = np.random.default_rng(0)
    r = Region(0, np.arange(100, 300), np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32), np.zeros(3))
    t = r.thinned(0.3, rng)
    assert len(t.index) == 60 and np.all(np.diff(t.index) > 0) and np.isin(t.index, r.index).all()
    np.testing.assert_array_equal(t.xyz, r.xyz[t.index - 100])
    assert r.thinned(1.0, rng) is r
    with pytest.raises(Exception, match="thin must be"):
        AugmentConfig(thin=[0.0, 1.0])


@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_coverage_of_targets_runs_fewer_regions_and_keeps_their_sums(shape):
    """``targets``: only regions that can reach a target run; the targets' probabilities are
    the sums of the same regions as without ``targets``."""
    from pipeline.regions import SamplingConfig, predict_coverage

    rng = np.random.default_rng(4)
    xyz = np.c_[rng.uniform(0, 80, (8000, 2)), rng.uniform(0, 20, 8000)]
    cfg = SamplingConfig(shape=shape, radius=5.0, max_points=300, test_spacing=1.0)
    targets = (xyz[:, 0] > 30) & (xyz[:, 0] < 50) & (xyz[:, 1] > 20) & (xyz[:, 1] < 45)
    ran = []

    def run_pass(regions, angle):
        ran.append(sum(len(r.index) for r in regions))
        idx = np.concatenate([r.index for r in regions])
        xy = np.concatenate([r.xyz[:, :2] for r in regions])           # depends on the region too
        p = np.stack([np.sin(idx * 0.37 + xy[:, 0]), np.cos(idx * 0.11 - xy[:, 1]), np.full(len(idx), 0.5)], 1)
        return np.abs(p).astype(np.float32)

    whole, _ = predict_coverage(xyz, 3, cfg, run_pass, votes=2, points_per_pass=2000)
    work_whole, ran[:] = sum(ran), []
    part, missing = predict_coverage(xyz, 3, cfg, run_pass, votes=2, points_per_pass=2000, targets=targets)
    assert sum(ran) < 0.6 * work_whole
    np.testing.assert_allclose(part[targets], whole[targets], rtol=1e-6)
    assert missing == 0 and np.allclose(part[~targets].sum(1) > 0, True)


def test_val_confusions_script_breaks_down_one_confusion_by_file_and_height(run_out):
    """scripts/val_confusions.py: per validation file, vegetation read as building and its
    height bins add up to the pooled confusion matrix, whose rows hold every labelled
    validation point; an unknown class is a clear error with exit status 2."""
    from pipeline.validation import validation_sets

    spec, bundle = run_out.parent / "spec.yaml", run_out / "model.bundle"
    script = REPO / "scripts" / "val_confusions.py"
    res = subprocess.run([sys.executable, str(script), str(spec), str(bundle), "--set", "votes=1",
                          "--group", "all=crop*", "--group", "none=nothing*"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = validation_sets(spec)
    lines = res.stdout.splitlines()
    files = [line.split(" | ") for line in lines if line.startswith("| crop")]
    assert len(files) == len(data)
    num = lambda s: int(s.strip(" |").replace(",", ""))  # noqa: E731
    veg, veg_bld = sum(num(f[2]) for f in files), sum(num(f[3]) for f in files)
    assert all(sum(num(x) for x in f[6:]) == num(f[3]) for f in files)   # height bins add up
    matrix = {line.split(" | ")[0][2:]: [num(x) for x in line.split(" | ")[1:]]
              for line in lines if line.startswith("| ") and line.split(" | ")[0][2:] in
              ("ground", "vegetation", "building", "water", "bridge", "other")}
    assert sum(map(sum, matrix.values())) == sum(int((v.labels >= 0).sum()) for v in data)
    assert sum(matrix["vegetation"]) == veg and matrix["vegetation"][2] == veg_bld
    summary = lines[-1].split(" | ")
    assert summary[0] == f"| {bundle}" and num(summary[-2]) == veg_bld
    pooled = next(line for line in lines if line.startswith("Pooled mIoU ")).split()[2]
    assert next(line for line in lines if line.startswith("Group all: ")) == f"Group all: mIoU {pooled}; " + \
        next(line for line in lines if line.startswith("Pooled mIoU ")).split("; ", 1)[1]   # every file: the pool
    assert "Group none: no scored point (no validation file matches)" in res.stdout

    bad = subprocess.run([sys.executable, str(script), str(spec), str(bundle), "--pair", "vegetation:roof"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no class 'roof'" in bad.stderr and "Traceback" not in bad.stderr


def test_region_statistics_match_a_loop_over_regions():
    """Density is points per m² of occupied 2 m cells (a region cut in half by a tile edge keeps
    its density; one thinned to a quarter drops by log10(4)); the means are the regions' means."""
    from pipeline.models.region_stats import DENSITY_CELL, region_statistics

    rng = np.random.default_rng(0)
    sizes = [3000, 1500, 1]
    xyz = np.concatenate([rng.uniform(-10, 10, (n, 3)) for n in sizes]).astype(np.float32)
    values = rng.uniform(0, 1, (len(xyz), 2)).astype(np.float32)
    batch = np.repeat(np.arange(3), sizes)
    got = region_statistics(xyz, values, batch, 3, ["intensity", "density", "multi_return"])
    for r in range(3):
        pts, v = xyz[batch == r], values[batch == r]
        cells = {(int(np.floor(x / DENSITY_CELL)), int(np.floor(y / DENSITY_CELL))) for x, y in pts[:, :2]}
        np.testing.assert_allclose(got[r], [v[:, 0].mean(), np.log10(len(pts) / (4.0 * len(cells))), v[:, 1].mean()],
                                   rtol=1e-5)
    full = xyz[batch == 0]
    half, quarter = full[full[:, 0] < 0], full[::4]
    d = region_statistics(np.concatenate([full, half, quarter]), np.zeros((len(full) + len(half) + len(quarter), 0)),
                          np.repeat(np.arange(3), [len(full), len(half), len(quarter)]), 3, ["density"])[:, 0]
    assert abs(d[1] - d[0]) < 0.02 and abs(d[0] - d[2] - np.log10(4)) < 0.05
    from data.errors import DataError
    from data.pointcloud import PointCloud
    from pipeline.models.region_stats import point_stat_columns

    cloud = PointCloud(xyz[:10].astype(np.float64), {"number_of_returns": np.array([1, 2] * 5, np.uint8)},
                       source="scan.laz")
    np.testing.assert_array_equal(point_stat_columns(cloud, ["density", "multi_return"])[:, 0], [0, 1] * 5)
    with pytest.raises(DataError, match="scan.laz.*'intensity'.*condition"):
        point_stat_columns(cloud, ["intensity"])


def test_conditioned_network_trains_predicts_and_reloads(tmp_path, data_root):
    """``condition: [density, multi_return, intensity]``: the network's encoder stages are
    FiLM-modulated by each region's statistics; a run trains, predicts, and its bundle reloads
    with the generator's weights (predictions through the CLI equal the run's); a repeated
    statistic is a spec error."""
    spec_path = tiny_spec(tmp_path, data_root)
    spec = yaml.safe_load(spec_path.read_text())
    spec["steps"][0]["model"]["condition"] = ["density", "multi_return", "intensity"]
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("run", spec_path, "--limit-steps", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    import torch

    state = torch.load(out / "model.bundle" / "weights.pt", weights_only=True)
    assert state["film.mlp.2.weight"].shape == (2 * sum(TINY["network"]["widths"]), 32)
    assert state["film.mlp.2.weight"].abs().sum() > 0      # trained away from the identity
    res = cli("predict", "--model", out / "model.bundle", "--input", data_root / "test" / "tile.laz",
              "--out", tmp_path / "again", "--quiet")
    assert res.returncode == 0, res.stderr
    a = laspy.read(out / "predictions" / "tile.laz").classification
    b = laspy.read(tmp_path / "again" / "tile.laz").classification
    assert (np.asarray(a) == np.asarray(b)).mean() > 0.999
    spec["steps"][0]["model"]["condition"] = ["density", "density"]
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("validate", spec_path)
    assert res.returncode == 2 and "condition: duplicates" in res.stderr


def test_survey_stats_script_reads_each_file_as_one_region(lidar_data):
    """scripts/survey_stats.py: density is points per m² of occupied 2 m cells, the shares and
    means are the file's; a broken file exits 2 with its name."""
    path = lidar_data / TRAIN_CUTS[0][0]
    las = laspy.read(path)
    x, y = np.asarray(las.x), np.asarray(las.y)
    cells = np.unique(np.floor(np.c_[x, y] / 2.0).astype(np.int64), axis=0)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "survey_stats.py"), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    row = [c.strip() for c in res.stdout.splitlines()[-1].strip("|").split("|")]
    assert row[0] == path.name and row[1] == f"{len(x):,}"
    assert float(row[2]) == pytest.approx(len(x) / (4.0 * len(cells)), abs=0.05)
    assert float(row[3]) == pytest.approx(np.mean(np.asarray(las.number_of_returns) > 1), abs=5e-4)
    bad = Path("/nonexistent/scan.laz")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "survey_stats.py"), str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "scan.laz" in res.stderr
