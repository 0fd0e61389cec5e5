"""Per-survey class-map overrides, validation splits, prior correction, data audit."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from data.classmap import IGNORE, ClassMap
from data.errors import UserError
from pipeline.datasets import LabelledFile, ValSplit, split_files
from pipeline.priors import prior_log_ratio
from pipeline.schema import SpecError
from pipeline.spec import load_spec

from conftest import REPO

ST_BARTH = "ign_lidarhd/train/St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz"
MAP = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5], "building": [6], "other": [1, 64]}, [7])


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


# -- class-map overrides -----------------------------------------------------------------------

def test_overrides_move_and_ignore_codes_for_one_survey():
    m = MAP.with_overrides(ignore=[1])
    np.testing.assert_array_equal(m.encode(np.array([1, 2, 64, 7])), [IGNORE, 0, 3, IGNORE])
    m = MAP.with_overrides(classes={"vegetation": [1]})
    np.testing.assert_array_equal(m.encode(np.array([1, 5, 64])), [1, 1, 3])
    assert m.names == MAP.names and list(MAP.output_codes) == [2, 3, 6, 1]     # written codes unchanged
    m = MAP.with_overrides(ignore=[2])               # a class may end up with no code in one survey
    assert m.codes[0] == () and m.encode(np.array([2]))[0] == IGNORE
    np.testing.assert_array_equal(MAP.encode(np.array([1])), [3])      # the spec's map is untouched


def test_bad_overrides_name_the_problem():
    with pytest.raises(UserError, match=r"classes.vegetaton: not a class.*did you mean 'vegetation'"):
        MAP.with_overrides(classes={"vegetaton": [1]})
    with pytest.raises(UserError, match=r"\[1\] are both ignored and moved"):
        MAP.with_overrides(classes={"ground": [1]}, ignore=[1])


def _spec(tmp_path, lidar_data, inputs, **train):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = {"name": "t", "data_root": str(lidar_data), "classes": MAP.to_config()["classes"],
            "ignore": [7, 65, 66, 9, 17, 67], "inputs": inputs,
            "steps": [{"type": "train", "model": {"type": "random_forest", "n_estimators": 2}, **train}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_spec_input_entries_give_files_their_own_map(tmp_path, lidar_data):
    from pipeline.runner import RunContext

    path = _spec(tmp_path, lidar_data, {"train": ["ign_lidarhd/train/mnx_bat.laz", {"files": ST_BARTH, "ignore": [1]}]})
    loaded = load_spec(path)
    files = RunContext(loaded, tmp_path).resolve_labelled("train", "steps[0].inputs")
    maps = {f.path.name: f.class_map for f in files}
    assert maps["mnx_bat.laz"] == loaded.class_map
    assert 1 in maps[ST_BARTH.split("/")[-1]].ignore
    cloud, labels = files[1].read()
    assert not (labels == 3).any() and (cloud.fields["classification"] == 1).sum() == (labels == IGNORE).sum() - 38


@pytest.mark.parametrize("entry, message", [
    ({"files": ST_BARTH, "ambiguous": {"x": ["ground", "other"]}}, r"inputs.train\[0\]: ambiguous.x: expected a class code"),
    ({"files": ST_BARTH, "ignore": [1], "colour": 1}, r"inputs.train\[0\].colour: unknown key"),
    ({"files": ST_BARTH, "classes": {"trees": [1]}}, r"inputs.train\[0\]: classes.trees: not a class"),
    ({"files": ST_BARTH, "classes": {"ground": [1]}, "ignore": [1]}, r"inputs.train\[0\]: .*both ignored and moved"),
    ({"files": ST_BARTH}, r"needs 'ignore', 'classes', 'ambiguous' or 'bounds'"),
])
def test_bad_input_entries_are_spec_errors(tmp_path, lidar_data, entry, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_spec(tmp_path, lidar_data, {"train": [entry]}))


def test_contradictory_entries_for_one_file(tmp_path, lidar_data):
    from pipeline.runner import RunContext

    path = _spec(tmp_path, lidar_data, {"train": [{"files": ST_BARTH, "ignore": [1]},
                                                  {"files": "ign_lidarhd/train/St_*.laz", "ignore": [64]}]})
    with pytest.raises(UserError, match=r"inputs.train\[1\]: St_Barth.* also matched by inputs.train\[0\]"):
        RunContext(load_spec(path), tmp_path).resolve_labelled("train", "x")


# -- validation split --------------------------------------------------------------------------

def test_val_split_is_deterministic_blockwise_and_near_the_fraction():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 100, (20000, 2)), rng.uniform(0, 5, 20000)]
    split = ValSplit(fraction=0.2, block=10.0, seed=3)
    mask = split.val_mask(xyz, "a.laz")
    np.testing.assert_array_equal(mask, split.val_mask(xyz, "a.laz"))
    assert 0.2 <= mask.mean() < 0.25                        # blocks of ~1% each until >= 20%
    keys = np.floor(xyz[:, :2] / 10).astype(int)
    for key in np.unique(keys[mask], axis=0):               # whole blocks only
        assert mask[(keys == key).all(1)].all()
    assert not np.array_equal(mask, ValSplit(0.2, 10.0, seed=4).val_mask(xyz, "a.laz"))
    assert not np.array_equal(mask, split.val_mask(xyz, "b.laz"))      # per-file stream
    assert not ValSplit(0.5, 1000.0).val_mask(xyz, "a.laz").any()      # one block: kept for training


@pytest.mark.parametrize("kw", [{"fraction": 0.0}, {"fraction": 1.0}, {"block": 0.0}, {"block": float("nan")}])
def test_val_split_rejects_bad_values(kw):
    with pytest.raises(UserError):
        ValSplit(**kw)


def test_split_parts_partition_the_labelled_points(lidar_data):
    f = LabelledFile(lidar_data / "ign_lidarhd/train/mnx_bat.laz", MAP.with_overrides(ignore=[9, 17, 65, 66, 67]))
    (tr,), (va,) = split_files([f], ValSplit(0.25, 20.0))
    cloud, all_labels = f.read()
    _, y_train = tr.read()
    _, y_val = va.read()
    assert tr.label == "mnx_bat.laz [train blocks]"
    labelled = all_labels != IGNORE
    assert not ((y_train != IGNORE) & (y_val != IGNORE)).any()
    np.testing.assert_array_equal((y_train != IGNORE) | (y_val != IGNORE), labelled)
    assert 0.2 < (y_val != IGNORE).sum() / labelled.sum() < 0.5


def test_val_split_and_val_inputs_are_scored_apart_and_pooled(tmp_path, lidar_data):
    """Blocks of the training files and a held-out file validate one training together: the
    summary holds each set's mIoU and the pooled one (which is neither set's alone)."""
    path = _spec(tmp_path, lidar_data, {"train": ["ign_lidarhd/train/mnx_bat.laz"],
                                        "held": ["ign_lidarhd/train/mnx_pont.laz"]},
                 val_inputs="held", val_split={"fraction": 0.2})
    run = cli("run", path, "--out", tmp_path / "out", "--quiet")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "model.bundle" / "bundle.json").read_text())["summary"]
    sets = summary["val_miou_sets"]
    assert set(sets) == {"blocks", "held_out"}
    assert summary["val_files"] == ["mnx_bat.laz [val blocks]", "mnx_pont.laz"]
    assert sets["blocks"] != sets["held_out"] and 0 < summary["val_miou"] < 1
    cm = np.array(summary["val_confusion"])
    assert cm.shape == (4, 4) and cm.sum() > 0


def test_validation_scores_pool_the_sets():
    from pipeline.evaluation import metrics_from_confusion, validation_scores

    a = np.array([[8, 2], [0, 0]])
    b = np.array([[0, 0], [3, 7]])
    res = validation_scores({"blocks": a, "held_out": b}, ["x", "y"])
    assert res["miou"] == pytest.approx(metrics_from_confusion(a + b, ["x", "y"])["miou"])
    assert res["miou_blocks"] == pytest.approx(0.8)        # x: 8/10; y absent from a's reference: not averaged
    assert res["miou_held_out"] == pytest.approx(0.7)      # y: 7/10
    assert res["iou_x"] == pytest.approx(8 / 13) and res["iou_y"] == pytest.approx(7 / 12)
    assert "miou_blocks" not in validation_scores({"blocks": a}, ["x", "y"])


def test_train_step_checks_val_split(tmp_path, lidar_data):
    path = _spec(tmp_path, lidar_data, {"train": ["ign_lidarhd/train/mnx_bat.laz"]}, val_split={"fraction": 2})
    with pytest.raises(SpecError, match=r"steps\[0\].val_split: fraction must be in \(0, 1\)"):
        load_spec(path)


# -- priors ------------------------------------------------------------------------------------

def test_prior_log_ratio_is_bayes_rule():
    train, seen = np.array([900, 90, 10, 0]), np.array([100, 100, 100, 0])
    b = prior_log_ratio(train, seen)
    np.testing.assert_allclose(b[:3], np.log(np.array([0.9, 0.09, 0.01]) / (1 / 3)), rtol=1e-6)
    assert b[3] == 0                                            # absent class: no shift
    # a balanced posterior p_seen(c|x) = 1/3 each becomes the training prior
    p = np.full(3, 1 / 3) * np.exp(b[:3])
    np.testing.assert_allclose(p / p.sum(), [0.9, 0.09, 0.01], rtol=1e-6)


# -- ground model ------------------------------------------------------------------------------

def test_height_above_ground_ignores_a_building_on_a_slope():
    from geometry.features import height_above_ground

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, (40000, 2))
    ground_z = 100 + 0.1 * xy[:, 0]                            # a 10% slope
    roof = (np.abs(xy - 30) < 8).all(1)                       # a 16 m x 16 m flat roof 12 m up
    z = ground_z + np.where(roof, 12.0, 0.0) + rng.normal(0, 0.02, len(xy))
    h = height_above_ground(np.c_[xy, z], cell=1.0, max_window=24.0)
    assert np.abs(h[~roof]).max() < 0.5 and np.median(np.abs(h[~roof])) < 0.1
    assert np.abs(np.median(h[roof]) - 12.0) < 0.5


# -- audit -------------------------------------------------------------------------------------

def test_inspect_reports_codes_density_and_warnings(tmp_path, lidar_data):
    out = tmp_path / "audit"
    res = cli("inspect", lidar_data / "ign_lidarhd/train", lidar_data / "ign_lidarhd_1km", "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "inspect.json").read_text())
    st = next(f for f in data["files"] if f["file"].startswith("St_Barth"))
    assert st["codes"] == {"1": 114784, "2": 30825, "5": 49196, "6": 54277, "7": 38} and st["crs"] is None
    assert st["point_format"] == 1 and "gps_time" in st["fields"] and 20 < st["density_per_m2"] < 30
    warn = "\n".join(data["warnings"])
    assert "St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz: code 1 is 46%" in warn
    assert "St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz: no CRS" in warn
    assert "densities differ" in warn
    assert (out / "class_shares.png").stat().st_size > 10_000 and "# Data audit" in (out / "inspect.md").read_text()
    assert "| St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz |" in res.stdout


def test_inspect_with_a_spec_uses_its_overrides_and_roles(lidar_data):
    res = cli("inspect", lidar_data / "ign_lidarhd/train", lidar_data / "ign_lidarhd/test",
              "--classes", REPO / "specs/ign_rf.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "code 1 is 46%" not in res.stdout                   # the spec ignores code 1 there
    assert "| St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz | train |" in res.stdout
    assert "| test_data_77050_627755_LA93_IGN69.laz | predict |" in res.stdout


def test_inspect_bad_input(tmp_path):
    res = cli("inspect", tmp_path / "nothing*.laz")
    assert res.returncode == 2 and "matches no file" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "broken.laz"
    bad.write_bytes(b"LASF" + b"\0" * 50)
    res = cli("inspect", bad)
    assert res.returncode == 2 and "broken.laz" in res.stderr and "Traceback" not in res.stderr


def test_ambiguous_entries_in_specs_inspect_and_splits(tmp_path, lidar_data):
    """An input entry's ambiguous code: inspect shows it per file, its points are no label
    (never scored) but candidates, and under a split only the training part's candidates train."""
    path = _spec(tmp_path, lidar_data, {"train": [{"files": "ign_lidarhd/train/mnx_bat.laz",
                                                   "ambiguous": {1: ["vegetation", "other"]}}]},
                 val_split={"fraction": 0.3})
    res = cli("inspect", lidar_data / "ign_lidarhd/train/mnx_bat.laz", "--classes", path)
    assert res.returncode == 0, res.stderr
    from pipeline.runner import RunContext

    loaded = load_spec(path)
    (item,) = RunContext(loaded, tmp_path / "o").resolve_labelled("train", "t")
    cloud, labels = item.read()
    code1 = cloud.fields["classification"] == 1
    assert code1.any() and (labels[code1] == IGNORE).all()
    assert f"1 -> vegetation|other: {int(code1.sum()):,}" in res.stdout
    cand = item.candidates(cloud)
    np.testing.assert_array_equal(cand.any(1), code1)
    tr, va = split_files([item], loaded.spec.steps[0].val_split)
    in_train = tr[0].candidates(cloud).any(1)
    assert in_train.any() and (in_train | va[0].candidates(cloud).any(1)).sum() == code1.sum()
    assert not (in_train & va[0].candidates(cloud).any(1)).any()
    bad = _spec(tmp_path / "b", lidar_data, {"train": [{"files": "ign_lidarhd/train/mnx_bat.laz",
                                                        "ambiguous": {1: ["vegetaton", "other"]}}]})
    with pytest.raises(SpecError, match=r"inputs.train\[0\]: ambiguous.1.vegetaton: not a class"):
        load_spec(bad)
