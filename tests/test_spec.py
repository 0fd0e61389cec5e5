import json

import pytest
import yaml

from pipeline.schema import SpecError
from pipeline.spec import compose_spec_file, load_spec

from conftest import REPO

BASE = {
    "name": "t",
    "classes": {"ground": [2], "building": 6},
    "ignore": [7],
    "inputs": {"train": ["a/*.laz"]},
    "steps": [
        {"type": "train", "model": {"type": "random_forest", "n_estimators": 5}},
        {"type": "predict", "inputs": "train"},
        {"type": "evaluate"},
    ],
}


def write(tmp_path, data, suffix=".yaml"):
    path = tmp_path / f"spec{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(tmp_path, data, *overrides):
    with pytest.raises(SpecError) as exc:
        load_spec(write(tmp_path, data), list(overrides))
    return str(exc.value)


def test_valid_yaml_and_json_parse_the_same(tmp_path):
    a = load_spec(write(tmp_path, BASE))
    b = load_spec(write(tmp_path, BASE, ".json"))
    assert a.spec == b.spec
    assert a.spec.steps[0].model.n_estimators == 5
    assert a.class_map.names == ("ground", "building")


def test_unknown_key_has_did_you_mean(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["steps"][0]["model"]["n_estimator"] = 3
    msg = spec_error(tmp_path, data)
    assert "spec.yaml" in msg and "steps[0].model.n_estimator" in msg
    assert "did you mean 'n_estimators'" in msg


def test_unknown_top_level_key(tmp_path):
    msg = spec_error(tmp_path, {**BASE, "clases": {}})
    assert "clases" in msg and "did you mean 'classes'" in msg


def test_wrong_type_names_key_and_expectation(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["steps"][0]["model"]["n_estimators"] = "many"
    msg = spec_error(tmp_path, data)
    assert "steps[0].model.n_estimators" in msg and "expected an integer" in msg and "'many'" in msg


def test_missing_required_key(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "classes"}
    msg = spec_error(tmp_path, data)
    assert "classes" in msg and "required key is missing" in msg


def test_unknown_step_and_model_type(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["steps"][0]["type"] = "trian"
    assert "did you mean 'train'" in spec_error(tmp_path, data)
    data["steps"][0]["type"] = "train"
    data["steps"][0]["model"]["type"] = "random_forrest"
    assert "did you mean 'random_forest'" in spec_error(tmp_path, data)


def test_bad_class_map_in_spec(tmp_path):
    msg = spec_error(tmp_path, {**BASE, "ignore": [2]})
    assert "classes" in msg and "both ignored and in class" in msg


def test_set_overrides_by_path_and_step_name(tmp_path):
    path = write(tmp_path, BASE)
    loaded = load_spec(path, ["train.model.n_estimators=7", "steps.1.probabilities=true", "seed=3",
                              "inputs.train=[x.laz, y.laz]"])
    assert loaded.spec.steps[0].model.n_estimators == 7
    assert loaded.spec.steps[1].probabilities is True
    assert loaded.spec.seed == 3 and loaded.spec.inputs["train"] == ["x.laz", "y.laz"]
    msg = spec_error(tmp_path, BASE, "train.model.n_trees=3")
    assert "--set" not in msg and "n_trees" in msg  # reported as the spec key it lands on


def test_step_references_are_checked(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["steps"][1]["model"] = "other"
    assert "neither a train step" in spec_error(tmp_path, data)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "specs").glob("[!_]*.yaml")))
def test_every_shipped_spec_is_valid_and_finds_its_inputs(name, lidar_data):
    from pipeline.runner import RunContext

    loaded = load_spec(REPO / "specs" / name, [f"data_root={lidar_data}"])
    ctx = RunContext(loaded, loaded.output_dir())
    for group in loaded.spec.inputs:
        assert ctx.resolve_labelled(group, f"inputs.{group}"), (name, group)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "specs").glob("[!_]*.yaml")))
def test_no_shipped_spec_validates_on_the_files_it_scores(name, lidar_data):
    """Checkpoint and setting selection never sees the test tiles: validation is a split of
    the training files, plus held-out files that are neither trained on nor scored."""
    from pipeline.runner import RunContext

    loaded = load_spec(REPO / "specs" / name, [f"data_root={lidar_data}"])
    ctx = RunContext(loaded, loaded.output_dir())
    scored = {p for s in loaded.spec.steps_of("predict") for p in ctx.resolve_inputs(s.inputs, "predict")}
    for step in loaded.spec.steps_of("train"):
        assert step.val_split is not None, name
        trained = {f.path for f in ctx.resolve_labelled(step.inputs, "train")}
        assert not scored & trained, name
        if step.val_inputs:
            held = {f.path for f in ctx.resolve_labelled(step.val_inputs, "val")}
            assert held and not held & scored and not held & trained, name


def test_base_specs_merge_under_the_spec(tmp_path, lidar_data):
    """``base:`` composes: mappings merge key by key, steps by name or type, lists replace;
    chains work, cycles and missing bases are named; the resolved spec is the merged one."""
    from pipeline.spec import compose_spec_file

    (tmp_path / "a.yaml").write_text(yaml.safe_dump({
        "name": "a", "data_root": str(lidar_data), "classes": {"ground": [2], "other": [1, 3, 4, 5, 6]},
        "ignore": [7], "inputs": {"train": ["ign_lidarhd/train/mnx_bat.laz"], "test": ["x"]},
        "steps": [{"type": "train", "name": "model", "model": {"type": "random_forest", "n_estimators": 5,
                                                               "features": {"k": [10, 30]}}},
                  {"type": "predict", "inputs": "test"}]}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "base": "a.yaml", "name": "b", "inputs": {"test": ["ign_lidarhd/test/*.laz"]},
        "steps": [{"type": "train", "model": {"features": {"k": [12]}}}, {"type": "evaluate"}]}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": "b.yaml", "seed": 3}))
    data = compose_spec_file(tmp_path / "c.yaml")
    assert data["name"] == "b" and data["seed"] == 3 and "base" not in data
    assert data["inputs"] == {"train": ["ign_lidarhd/train/mnx_bat.laz"], "test": ["ign_lidarhd/test/*.laz"]}
    train = data["steps"][0]
    assert train["model"] == {"type": "random_forest", "n_estimators": 5, "features": {"k": [12]}}
    assert [s["type"] for s in data["steps"]] == ["train", "predict", "evaluate"]
    loaded = load_spec(tmp_path / "c.yaml")
    assert loaded.spec.steps[0].model.features.k == [12] and loaded.raw["seed"] == 3
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "c.yaml"}))
    with pytest.raises(SpecError, match=r"a.yaml: base: c.yaml is already in the chain of bases: c.yaml -> b.yaml"):
        load_spec(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"base": "nope.yaml"}))
    with pytest.raises(SpecError, match=r"d.yaml: base: nope.yaml not found"):
        load_spec(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"base": 3}))
    with pytest.raises(SpecError, match=r"e.yaml: base: expected the path of another spec file"):
        load_spec(tmp_path / "e.yaml")


def test_a_list_of_bases_merges_in_order(tmp_path, lidar_data):
    """``base: [a, b]``: ``b`` merged over ``a`` (its steps into a's by type), the spec over both."""
    from pipeline.spec import compose_spec_file

    (tmp_path / "a.yaml").write_text(yaml.safe_dump({
        "name": "a", "seed": 1, "data_root": str(lidar_data), "classes": {"ground": [2], "other": [1, 3, 4, 5, 6]},
        "inputs": {"train": ["ign_lidarhd/train/mnx_bat.laz"], "test": ["ign_lidarhd/test/*.laz"]},
        "steps": [{"type": "train", "name": "model", "inputs": "train",
                   "model": {"type": "random_forest", "n_estimators": 5}}]}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "seed": 2, "inputs": {"train": ["ign_lidarhd/train/mnx_pont.laz"], "held": ["ign_lidarhd/train/mnx_bat.laz"]},
        "steps": [{"type": "train", "val_inputs": "held"}]}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": ["a.yaml", "b.yaml"], "name": "c"}))
    data = compose_spec_file(tmp_path / "c.yaml")
    assert (data["name"], data["seed"]) == ("c", 2)
    assert data["inputs"] == {"train": ["ign_lidarhd/train/mnx_pont.laz"], "test": ["ign_lidarhd/test/*.laz"],
                              "held": ["ign_lidarhd/train/mnx_bat.laz"]}
    assert data["steps"] == [{"type": "train", "name": "model", "inputs": "train", "val_inputs": "held",
                              "model": {"type": "random_forest", "n_estimators": 5}}]
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"base": ["a.yaml", "d.yaml"]}))
    with pytest.raises(SpecError, match=r"d.yaml: base: d.yaml is already in the chain of bases"):
        load_spec(tmp_path / "d.yaml")


def test_specs_built_on_a_base_resolve_to_their_whole_values():
    """The specs written on a base resolve to every value of the base, with their own changes."""
    base = load_spec(REPO / "specs" / "ign_kpconvx_cpu.yaml")
    pt = load_spec(REPO / "specs" / "ign_point_transformer_cpu.yaml")
    lidarhd = load_spec(REPO / "specs" / "lidarhd_kpconvx_cpu.yaml")
    from pipeline.schema import to_plain

    a, b = to_plain(base.spec), to_plain(pt.spec)
    assert b["steps"][0]["model"]["network"]["type"] == "point_transformer"
    assert b["steps"][0]["model"]["network"]["first_cell"] == a["steps"][0]["model"]["network"]["first_cell"] == 0.5
    assert a["steps"][0]["model"]["sampling"] == b["steps"][0]["model"]["sampling"]
    assert a["steps"][1:] == b["steps"][1:] and a["classes"] == b["classes"] and a["inputs"] == b["inputs"]
    c = to_plain(lidarhd.spec)
    assert c["steps"][0]["val_inputs"] == "heldout" and c["steps"][0]["val_split"] == a["steps"][0]["val_split"]
    assert c["steps"][0]["model"] == a["steps"][0]["model"] and len(c["inputs"]["train"]) == 6


def test_earlier_point_model_types_read_as_the_point_component(tmp_path, capsys):
    """``type: kpconvx`` / ``point_transformer`` with ``preset`` and ``network`` on the model (the
    earlier form) resolve to ``type: point`` with that network, and a line says so."""
    from pipeline.schema import to_plain

    data = compose_spec_file(REPO / "specs" / "ign_kpconvx_cpu.yaml")
    new = data["steps"][0]["model"]
    network = {k: v for k, v in new["network"].items() if k not in ("type", "preset")}
    data["steps"][0]["model"] = {**{k: v for k, v in new.items() if k not in ("type", "network")},
                                 "type": "kpconvx", "preset": new["network"]["preset"], "network": network}
    data["data_root"] = str((REPO / "specs" / data["data_root"]).resolve())
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    old = to_plain(load_spec(tmp_path / "old.yaml").spec)
    assert "model type 'kpconvx' is an earlier name" in capsys.readouterr().err
    assert old["steps"] == to_plain(load_spec(REPO / "specs" / "ign_kpconvx_cpu.yaml").spec)["steps"]
