"""End to end on the real IGN sample data: spec run -> bundle -> predict -> evaluate, via the CLI."""
from __future__ import annotations

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

TEST_TILE = "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz"


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory, lidar_data):
    folder = tmp_path_factory.mktemp("spec")
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec["data_root"] = str(lidar_data)
    spec["output"] = "out"
    spec["inputs"] = {"train": ["ign_lidarhd/train/792000_6272000-50mx100m-left.laz",
                                "ign_lidarhd/train/mnx_corse.laz"],
                      "test": [TEST_TILE]}
    spec["steps"][0]["model"].update(n_estimators=8, max_samples=6000)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_out(small_spec):
    res = cli("run", small_spec, "--quiet")
    assert res.returncode == 0, res.stderr
    return small_spec.parent / "out"


def test_run_writes_bundle_predictions_and_report(run_out, lidar_data):
    assert (run_out / "resolved_spec.yaml").is_file()
    assert (run_out / "model.bundle" / "bundle.json").is_file()
    meta = json.loads((run_out / "model.bundle" / "bundle.json").read_text())
    assert str(REPO) not in json.dumps(meta) and "/tmp" not in json.dumps(meta)  # no absolute paths
    report = json.loads((run_out / "evaluation" / "report.json").read_text())
    assert 0 <= report["miou"] <= 1 and report["num_points"] > 50_000
    assert report["class_names"] == ["ground", "vegetation", "building", "water", "bridge", "other"]

    src = laspy.read(lidar_data / TEST_TILE)
    out = laspy.read(run_out / "predictions" / Path(TEST_TILE).name)
    assert len(out.points) == len(src.points)
    for dim in src.point_format.dimension_names:
        np.testing.assert_array_equal(out[dim] if dim != "classification" else out["classification_ref"], src[dim])
    assert out.header.scales.tolist() == src.header.scales.tolist()
    assert out.header.offsets.tolist() == src.header.offsets.tolist()
    assert set(np.unique(out.classification)) <= {2, 3, 6, 9, 17, 1}
    conf = np.asarray(out["confidence"])
    assert conf.dtype == np.float32 and (conf > 0).all() and (conf <= 1).all()
    ent = np.asarray(out["entropy"])
    assert ent.dtype == np.float32 and (ent >= 0).all() and (ent <= np.log(6) + 1e-5).all()
    src_vlrs = {(v.user_id, v.record_id): v.record_data_bytes() for v in src.header.vlrs}
    out_vlrs = {(v.user_id, v.record_id): v.record_data_bytes() for v in out.header.vlrs}
    assert src_vlrs and all(out_vlrs.get(k) == b for k, b in src_vlrs.items())  # CRS (WKT / GeoKeys) kept


def test_predict_and_evaluate_with_bundle_reproduce_the_run(run_out, lidar_data, tmp_path):
    res = cli("predict", "--model", run_out / "model.bundle", "--input", lidar_data / TEST_TILE,
              "--out", tmp_path / "pred", "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("evaluate", "--pred", tmp_path / "pred" / "*.laz", "--ref", lidar_data / TEST_TILE,
              "--out", tmp_path / "eval", "--classes", run_out / "resolved_spec.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    mine = json.loads((tmp_path / "eval" / "report.json").read_text())
    theirs = json.loads((run_out / "evaluation" / "report.json").read_text())
    for key in ("overall_accuracy", "miou", "kappa", "confusion_matrix", "num_points", "ignored_points"):
        assert mine[key] == theirs[key]


def test_validate_and_help():
    res = cli("validate", REPO / "specs" / "ign_rf.yaml")
    assert res.returncode == 0, res.stderr
    for sub in ([], ["run"], ["predict"], ["evaluate"], ["validate"]):
        res = cli(*sub, "--help")
        assert res.returncode == 0 and "usage" in res.stdout


def test_bad_spec_key_exit_code_and_message(tmp_path):
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec["steps"][0]["model"]["n_estimatorz"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("run", path, "--out", tmp_path / "o")
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "n_estimatorz" in res.stderr and "n_estimators" in res.stderr
    assert "Traceback" not in res.stderr


def test_predict_bad_inputs_fail_clearly_without_output(run_out, tmp_path):
    bad = tmp_path / "broken.laz"
    bad.write_bytes(b"LASF" + b"\0" * 50)
    nan = tmp_path / "nan.ply"
    nan.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n0 0 0\nnan 1 1\n")
    cases = {tmp_path / "missing.laz": "missing.laz", bad: "broken.laz", nan: "nan.ply"}
    for path, needle in cases.items():
        out = tmp_path / f"out_{path.stem}"
        res = cli("predict", "--model", run_out / "model.bundle", "--input", path, "--out", out)
        assert res.returncode == 2, (path, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert not out.exists() or not any(out.iterdir())


def test_unknown_class_code_in_training_data(tmp_path, lidar_data):
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec["data_root"] = str(lidar_data)
    spec["ignore"] = [7, 66]   # 65 occurs in mnx_corse and is now unknown
    spec["inputs"]["train"] = ["ign_lidarhd/train/mnx_corse.laz"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("run", path, "--out", tmp_path / "o", "--limit-steps", "2")
    assert res.returncode == 2
    assert "mnx_corse.laz" in res.stderr and "65" in res.stderr and "not in the class map" in res.stderr
    assert not (tmp_path / "o" / "model.bundle").exists()


def test_broken_bundle_metadata_and_predict_options(run_out, tmp_path):
    import json
    import shutil

    from data.errors import UserError
    from pipeline.bundle import load_bundle

    model = load_bundle(run_out / "model.bundle", ["n_jobs=1"]).model
    assert model.config.n_jobs == 1
    with pytest.raises(UserError, match="not a prediction option of a random_forest model"):
        load_bundle(run_out / "model.bundle", ["n_estimators=3"])
    for drop, words in [("model", "broken bundle metadata: 'model'"), ("class_map", "broken bundle metadata")]:
        broken = tmp_path / f"no_{drop}.bundle"
        shutil.copytree(run_out / "model.bundle", broken)
        meta = json.loads((broken / "bundle.json").read_text())
        del meta[drop]
        (broken / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(UserError, match=words):
            load_bundle(broken)


def test_log_lines_a_newcomer_reads(small_spec, tmp_path, lidar_data):
    """One short summary per bundle (no raw JSON), one evaluation line, densities warned about."""
    res = cli("run", small_spec, "--out", tmp_path / "run", "--limit-steps", "2")
    assert res.returncode == 0, res.stderr
    bundle_line = next(line for line in res.stderr.splitlines() if line.startswith("bundle -> "))
    assert "{" not in bundle_line and "2 trees" in bundle_line and "val mIoU" in bundle_line
    assert res.stderr.count("evaluation: OA") == 1
    meta = json.loads((tmp_path / "run" / "model.bundle" / "bundle.json").read_text())
    assert 2 < meta["summary"]["train_density"]["min"] < meta["summary"]["train_density"]["max"] < 20
    assert set(meta["summary"]["feature_stats"]) == set(meta["summary"]["features"])
    # the command-line evaluate prints its summary once (stdout), not a second time on stderr
    res = cli("evaluate", "--pred", tmp_path / "run" / "predictions", "--out", tmp_path / "ev",
              "--classes", small_spec)
    assert res.returncode == 0, res.stderr
    assert (res.stdout + res.stderr).count("mIoU") == 1
    # a 0.3 points/m2 tile against dense training crops: warned, still labelled
    tile = next((lidar_data / "ign_lidarhd_1km").glob("*.laz"))
    res = cli("predict", "--model", tmp_path / "run" / "model.bundle", "--input", tile, "--out", tmp_path / "p")
    assert res.returncode == 0, res.stderr
    assert f"warning: {tile.name}: 0." in res.stderr and "sparser than the training data" in res.stderr


def test_report_marks_absent_classes_and_scores_each_file(run_out):
    md = (run_out / "evaluation" / "report.md").read_text()
    assert "| water | n/a | n/a | n/a | n/a | 0 |" in md and "| bridge | n/a | n/a | n/a | n/a | 0 |" in md
    report = json.loads((run_out / "evaluation" / "report.json").read_text())
    present = [n for n, m in report["per_class"].items() if m["support"]]
    assert f"| mean over the {len(present)} classes present |" in md
    mean_iou = float(md.split(f"| mean over the {len(present)} classes present |")[1].split("|")[3])
    assert abs(mean_iou - report["miou"]) < 1e-4                   # the same mean as mIoU
    assert "## Per file" in md and f"| {Path(TEST_TILE).name} |" in md
    assert [f["file"] for f in report["per_file"]] == [Path(TEST_TILE).name]
    assert report["per_file"][0]["num_points"] == report["num_points"]


def test_features_step_prefixes_mined_dimensions(tmp_path, lidar_data):
    spec = {"name": "f", "data_root": str(lidar_data), "output": "out",
            "classes": {"ground": [2], "building": [6], "other": [1]},
            "inputs": {"train": ["ign_lidarhd/train/792000_6272000-50mx100m-left.laz"]},
            "steps": [{"type": "features", "features": {"k": [10]}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = cli("run", path)
    assert res.returncode == 0, res.stderr
    out = laspy.read(tmp_path / "out" / "features" / "792000_6272000-50mx100m-left.laz")
    src = laspy.read(lidar_data / "ign_lidarhd/train/792000_6272000-50mx100m-left.laz")
    mined = [d for d in out.point_format.extra_dimension_names if d.startswith("feat_")]
    assert "feat_number_of_returns" in mined and "feat_hag_c2_0" in mined and "feat_hag_ground" in mined
    np.testing.assert_array_equal(out.number_of_returns, src.number_of_returns)   # the LAS dimension untouched
    assert f": {len(mined)} features ->" in res.stderr


def test_myria3d_layout_and_vegetation_split(run_out, lidar_data, tmp_path):
    """--layout myria3d leaves classification as read and adds PredictedClassification, entropy
    and one float per class; evaluate reads either layout and gives the same report;
    --vegetation-heights writes vegetation as ASPRS 3/4/5 by height above the ground model."""
    from geometry.heights import height_above_ground

    tile = lidar_data / TEST_TILE
    for name, extra in (("plain", ["--preview"]), ("myria", ["--layout", "myria3d", "--preview"]),
                        ("split", ["--vegetation-heights", "0.5", "1.5"])):
        res = cli("predict", "--model", run_out / "model.bundle", "--input", tile, "--out", tmp_path / name,
                  "--quiet", *extra)
        assert res.returncode == 0, res.stderr
    for name in ("plain", "myria"):
        assert sorted(p.name for p in (tmp_path / name).iterdir() if not p.name.startswith(".")) == [tile.name, f"{tile.stem}_view.png"]
    assert sorted(p.name for p in (run_out / "evaluation" / "views").iterdir()) == [f"{tile.stem}.png"]
    plain = laspy.read(tmp_path / "plain" / tile.name)
    myria = laspy.read(tmp_path / "myria" / tile.name)
    src = laspy.read(tile)
    np.testing.assert_array_equal(myria.classification, src.classification)
    np.testing.assert_array_equal(myria["PredictedClassification"], plain.classification)
    np.testing.assert_array_equal(myria["entropy"], plain["entropy"])
    names = ["ground", "vegetation", "building", "water", "bridge", "other"]
    proba = np.stack([np.asarray(myria[n]) for n in names], 1)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert "classification_ref" not in myria.point_format.dimension_names
    for name in ("plain", "myria"):
        res = cli("evaluate", "--pred", tmp_path / name / "*.laz", "--out", tmp_path / f"eval_{name}",
                  "--classes", run_out / "resolved_spec.yaml", "--quiet")
        assert res.returncode == 0, res.stderr
    a, b = (json.loads((tmp_path / f"eval_{n}" / "report.json").read_text()) for n in ("plain", "myria"))
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["miou"] == b["miou"]

    split = laspy.read(tmp_path / "split" / tile.name)
    hag = height_above_ground(np.stack([src.x, src.y, src.z], 1))
    veg = np.asarray(plain.classification) == 3
    expected = np.asarray(plain.classification).copy()
    expected[veg] = np.where(hag[veg] < 0.5, 3, np.where(hag[veg] < 1.5, 4, 5))
    np.testing.assert_array_equal(split.classification, expected)   # (this tiny model: few vegetation points)

    bad = cli("predict", "--model", run_out / "model.bundle", "--input", tile, "--out", tmp_path / "bad",
              "--vegetation-heights", "2", "1")
    assert bad.returncode == 2 and "--vegetation-heights: expected 0 < low < high" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_vegetation_heights_need_the_asprs_codes(tmp_path, lidar_data):
    spec = compose_spec_file(REPO / "specs" / "train_demo.yaml")
    spec["data_root"] = str(lidar_data)
    spec["steps"][1]["vegetation_heights"] = [0.5, 1.5]
    spec["classes"]["vegetation"] = [3, 4]
    spec["classes"]["other"] = [1, 5, 64, 67]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = cli("validate", path)
    assert res.returncode == 2 and "steps[1].vegetation_heights" in res.stderr
    assert "no class holding the ASPRS vegetation codes 3, 4 and 5" in res.stderr, res.stderr


def test_buffered_predict_keeps_each_file_to_its_own_points(run_out, lidar_data, tmp_path):
    tiles = sorted((lidar_data / "ign_lidarhd" / "test").glob("*.laz"))
    res = cli("predict", "--model", run_out / "model.bundle", "--input", *tiles, "--out", tmp_path / "buf",
              "--buffer", "10")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("points of neighbouring files as context") == 4
    for tile in tiles:
        src, out = laspy.read(tile), laspy.read(tmp_path / "buf" / tile.name)
        assert len(out.points) == len(src.points)
        np.testing.assert_array_equal(out.X, src.X)
        np.testing.assert_array_equal(out.classification_ref, src.classification)
    bad = cli("predict", "--model", run_out / "model.bundle", "--input", *tiles, "--out", tmp_path / "bad",
              "--buffer", "nan")
    assert bad.returncode == 2 and "--buffer: expected a finite number of metres >= 0" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_run_table_lists_runs_with_mean_and_range(run_out):
    """scripts/run_table.py: one row per run (validation sets, test mIoU and per-class IoU),
    then mean [min, max]."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(REPO / "scripts" / "run_table.py"), str(run_out), str(run_out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | step | val | val_blocks | val_held_out | test | test_building")
    report = json.loads((run_out / "evaluation" / "report.json").read_text())
    assert f"{report['miou']:.4f}" in rows[2] and rows[-1].startswith("| mean [min, max] of 2")
    assert f"{report['miou']:.4f} [{report['miou']:.4f}, {report['miou']:.4f}]" in rows[-1]
