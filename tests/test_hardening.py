"""Bad input as a careless user or an attacker gives it: exit 2, the file/key named, nothing
left behind, and no code from a bundle or checkpoint ever runs."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO

TRAIN = "ign_lidarhd/train/792000_6272000-50mx100m-left.laz"
TILE = "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def visible(folder: Path) -> list[str]:
    """The names in ``folder`` a user sees (not the hidden sidecars and locks)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def refused(res, *words):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


class Marker:
    """Unpickling this creates a file: proof that code stored in a file ran."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def spec_dict(lidar_data):
    return {"name": "h", "data_root": str(lidar_data), "output": "out",
            "classes": {"ground": [2], "vegetation": [3, 4, 5], "building": [6], "other": [1, 64, 67]},
            "ignore": [7, 9, 17, 65, 66],
            "inputs": {"train": [TRAIN], "test": [TILE]},
            "steps": [{"type": "train", "model": {"type": "random_forest", "n_estimators": 2, "max_samples": 3000}},
                      {"type": "predict", "inputs": "test"}, {"type": "evaluate"}]}


def write_spec(folder: Path, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rf_bundle(tmp_path_factory, spec_dict):
    folder = tmp_path_factory.mktemp("rf")
    res = cli("run", write_spec(folder, spec_dict), "--quiet")
    assert res.returncode == 0, res.stderr
    return folder / "out" / "model.bundle"


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- no code runs from a bundle or a checkpoint ---------------------------------------------

def test_bundle_holds_no_pickle(rf_bundle):
    assert {p.name for p in rf_bundle.iterdir()} == {"bundle.json", "random_forest.skops", "random_forest.json"}


def test_a_pickled_forest_is_never_loaded(rf_bundle, tmp_path, lidar_data):
    bad = copy_bundle(rf_bundle, tmp_path / "pickle.bundle")
    (bad / "random_forest.skops").unlink()
    Marker.path = str(tmp_path / "ran")
    (bad / "random_forest.pkl").write_bytes(pickle.dumps(Marker()))
    res = cli("predict", "--model", bad, "--input", lidar_data / TILE, "--out", tmp_path / "p")
    refused(res, "pickle.bundle", "pickled forest", "not loaded")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "p").exists()


def test_a_skops_file_with_foreign_types_is_refused(rf_bundle, tmp_path, lidar_data):
    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    bad = copy_bundle(rf_bundle, tmp_path / "tampered.bundle")
    sio.dump(make_pipeline(FunctionTransformer(os.system)), bad / "random_forest.skops")
    res = cli("predict", "--model", bad, "--input", lidar_data / TILE, "--out", tmp_path / "p")
    refused(res, "tampered.bundle", "refusing to load")
    res = cli("evaluate", "--pred", lidar_data / TILE, "--ref", lidar_data / TILE, "--out", tmp_path / "e",
              "--classes", bad)
    refused(res, "tampered.bundle")


def test_a_malicious_checkpoint_is_never_unpickled(tmp_path):
    from data.errors import UserError
    from pipeline.training import OptimConfig, Trainer

    Marker.path = str(tmp_path / "ran")
    torch.save({"step": 1, "model": Marker(), "optimizer": {}, "scheduler": {}}, tmp_path / "last.pt")
    net = torch.nn.Linear(2, 2)
    trainer = Trainer(net, OptimConfig(), 4, "cpu", tmp_path)
    with pytest.raises(UserError, match="last.pt: not a readable training checkpoint"):
        trainer.fit(lambda step: (net(torch.ones(1, 2)).sum(), {}), resume=True)
    assert not (tmp_path / "ran").exists()


# -- broken bundles ----------------------------------------------------------------------------

@pytest.mark.parametrize("damage, words", [
    (lambda b: (b / "bundle.json").write_text("[1, 2]"), "expected a JSON object"),
    (lambda b: (b / "bundle.json").write_bytes(b"\xff\xfe{"), "broken bundle metadata"),
    (lambda b: _edit_meta(b, format_version="2"), "'format_version' must be an integer"),
    (lambda b: _edit_meta(b, model={"type": "kpconvx"}), "kpconvx_model.json"),
    (lambda b: _edit_meta(b, versions={"numpy": 1}), "'versions'"),
    (lambda b: _edit_meta(b, class_map={"classes": {"ground": [2]}, "ignore": []}), "class map has 1 classes"),
    (lambda b: (b / "random_forest.skops").unlink(), "random_forest.skops is missing"),
    (lambda b: (b / "random_forest.skops").write_bytes(b""), "not a skops file"),
    (lambda b: (b / "random_forest.skops").write_bytes((b / "random_forest.skops").read_bytes()[:200]),
     "not a skops file"),
    (lambda b: (b / "random_forest.json").write_text('{"feature_names": 3}'), "'feature_names' must be a list"),
    (lambda b: (b / "random_forest.json").write_text('{"feature_names": ["a"]}'), "names 1"),
    (lambda b: _edit_meta(b, class_map={"classes": {"ground": [2], "vegetation": [2, 3], "building": [6],
                                                    "other": [1]}, "ignore": []}),
     "bundle.json: broken bundle metadata: class map: code 2 is in both 'ground' and 'vegetation'"),
    (lambda b: _edit_meta(b, input_pipeline=0), "input_pipeline: the model was trained on input pipeline 0"),
    (lambda b: (b / "SHA256SUMS").write_text("0" * 64 + "  bundle.json\n"), "bundle.json does not match its sha256"),
    (lambda b: (b / "SHA256SUMS").write_text("nonsense\n"), "SHA256SUMS: line 1 is not"),
])
def test_broken_bundles_are_named(rf_bundle, tmp_path, lidar_data, damage, words):
    bad = copy_bundle(rf_bundle, tmp_path / "broken.bundle")
    damage(bad)
    res = cli("predict", "--model", bad, "--input", lidar_data / TILE, "--out", tmp_path / "p")
    refused(res, "broken.bundle", words)
    assert not (tmp_path / "p").exists()


def _edit_meta(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta.update(changes)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_torch_bundles_check_their_weights(tmp_path):
    from data.classmap import ClassMap
    from data.errors import UserError
    from pipeline.bundle import load_bundle, save_bundle
    from pipeline.models.ckconv_model import CKConvGridModel
    from pipeline.models.networks import KPConvXNetwork
    from pipeline.models.point_model import PointNetworkModel

    cmap = ClassMap.from_config({"a": [1], "b": [2]})
    cfg = PointNetworkModel.Config(network=KPConvXNetwork.Config(widths=[8, 16], blocks=[1, 1], neighbor_limits=[8, 8]))
    model = PointNetworkModel(cfg, cmap)
    model.net = model.build_net()
    path = save_bundle(tmp_path / "k.bundle", model, cmap, {})
    assert isinstance(load_bundle(path).model, PointNetworkModel)
    meta = json.loads((path / "kpconvx_model.json").read_text())
    for std, words in (([0.0] * len(meta["std"]), "'std' .* must be > 0"), ([float("nan")] * len(meta["std"]), "'std' holds NaN")):
        broken = copy_bundle(path, tmp_path / f"std{len(words)}.bundle")
        (broken / "kpconvx_model.json").write_text(json.dumps({**meta, "std": std}))
        with pytest.raises(UserError, match=f"std{len(words)}.bundle: kpconvx_model.json: {words}"):
            load_bundle(broken)
    wide = PointNetworkModel(PointNetworkModel.Config(network=KPConvXNetwork.Config(widths=[8, 32], blocks=[1, 1],
                                                                                 neighbor_limits=[8, 8])), cmap)
    torch.save(wide.build_net().state_dict(), path / "weights.pt")
    with pytest.raises(UserError, match=r"k.bundle: weights.pt does not fit .*wrong shape"):
        load_bundle(path)
    Marker.path = str(tmp_path / "ran")
    torch.save({"x": Marker()}, path / "weights.pt")
    with pytest.raises(UserError, match="weights.pt is not a weights file"):
        load_bundle(path)
    assert not (tmp_path / "ran").exists()
    grid = CKConvGridModel(CKConvGridModel.Config(hidden=4, blocks=1, crop=8), cmap)
    grid._build_net(6)
    gpath = save_bundle(tmp_path / "g.bundle", grid, cmap, {})
    shutil.copy(path / "kpconvx_model.json", gpath / "ckconv_grid.pt")      # a file of another model
    with pytest.raises(UserError, match="g.bundle: broken bundle: ckconv_grid.pt is not a weights file"):
        load_bundle(gpath)


# -- spec mistakes -------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, words", [
    (lambda s: s["steps"][0]["model"].update(n_estimators=0), "steps[0].model.n_estimators: must be >= 1"),
    (lambda s: s["steps"][0]["model"].update(max_depth=-3), "steps[0].model.max_depth: must be >= 1"),
    (lambda s: s["steps"][0]["model"].update(n_jobs=0), "n_jobs must be -1"),
    (lambda s: s["steps"][0]["model"].update(max_features=float("nan")), "max_features: expected a finite number"),
    (lambda s: s["steps"][0]["model"].update(features={"radii": [float("inf")]}), "radii[0]: expected a finite"),
    (lambda s: s["steps"][0]["model"].update(features={"height_cells": [0.0]}), "height_cells: must be > 0"),
    (lambda s: s["steps"][0]["model"].update(max_samples=10 ** 2000), "max_samples: integer out of range"),
    (lambda s: s["steps"][0]["model"].update(features={"k": [10, 10 ** 9]}), "features.k: must be <= 1024, got"),
    (lambda s: s["steps"][0]["model"].update(features={"plan_k": [10 ** 9]}), "features.plan_k: must be <= 1024"),
    (lambda s: s.update(classes={"ground": [2], "vegetation": [2, 3]}), "code 2"),
    (lambda s: s.update(seed=2 ** 40), "seed must be < 2**32"),
    (lambda s: s.update(seed=-1), "seed: must be >= 0"),
    (lambda s: s["steps"].append({"type": "predict", "inputs": "test"}), "two predict steps are named 'predict'"),
    (lambda s: s["steps"].insert(0, s["steps"].pop()), "comes after this evaluate step"),
    (lambda s: s["inputs"].update(test=[]), "inputs.test: empty"),
    (lambda s: s.update(name=""), "name: expected a non-empty string"),
    (lambda s: s["steps"][1].update(output="../../elsewhere"), "steps[1].output: '../../elsewhere' must be a relative"),
    (lambda s: s["steps"][2].update(output="/tmp/x"), "steps[2].output"),
    (lambda s: s["inputs"].update(test=["nothing/*.laz"]), "inputs.test[0]: nothing/*.laz matches no file"),
])
def test_spec_mistakes_are_named(tmp_path, spec_dict, edit, words):
    data = json.loads(json.dumps(spec_dict))
    edit(data)
    path = write_spec(tmp_path, data)
    for command in ("validate", "run"):
        res = cli(command, path)
        refused(res, "spec.yaml", words)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "elsewhere").exists()


@pytest.mark.parametrize("text, words", [
    (b"name: a\nname: b\n", "duplicate key 'name'"),
    (b"name: \xff\xfe\n", "not UTF-8"),
    (b"a: " + b"[" * 3000 + b"]" * 3000, "nested"),
    # billion laughs: nine levels of nine aliases (387M strings) is refused at once, not expanded
    (b"a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + b"".join(
        b"a%d: &a%d [%s]\n" % (i, i, b", ".join([b"*a%d" % (i - 1)] * 9)) for i in range(1, 9)),
     "YAML aliases expand to"),
])
def test_unreadable_specs(tmp_path, text, words):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text)
    refused(cli("validate", path), "spec.yaml", words)


def test_class_map_files_are_named(tmp_path, lidar_data):
    bad = tmp_path / "overlap.yaml"
    bad.write_text("classes: {ground: [2], vegetation: [2, 3]}\n")
    refused(cli("inspect", lidar_data / TILE, "--classes", bad), "overlap.yaml: classes: class map: code 2 is in both")
    refused(cli("evaluate", "--pred", lidar_data / TILE, "--out", tmp_path / "e", "--classes", bad),
            "overlap.yaml: classes")


def test_command_line_values(tmp_path, spec_dict, rf_bundle, lidar_data):
    path = write_spec(tmp_path, spec_dict)
    refused(cli("run", path, "--device", "gpu0"), "--device gpu0: expected cpu, cuda, cuda:N or auto")
    refused(cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", tmp_path / "p",
                "--device", "tpu"), "--device tpu")
    refused(cli("run", path, "--limit-steps", "0"), "--limit-steps 0: must be >= 1")
    assert not (tmp_path / "out").exists() and not (tmp_path / "p").exists()


# -- output paths ---------------------------------------------------------------------------------

def test_output_folders(tmp_path, rf_bundle, lidar_data):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", afile),
            "afile: exists and is not a folder")
    refused(cli("evaluate", "--pred", lidar_data / TILE, "--out", afile), "afile: exists and is not a folder")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(lidar_data / TILE, inputs)
    before = (inputs / Path(TILE).name).read_bytes()
    refused(cli("predict", "--model", rf_bundle, "--input", inputs, "--out", inputs), "would overwrite the input")
    assert (inputs / Path(TILE).name).read_bytes() == before


def test_a_failing_file_is_skipped_and_listed_at_the_end(tmp_path, rf_bundle, lidar_data):
    """One bad tile of a batch is reported and skipped; the others are labelled; the run
    exits 2 at the end listing it; the same command again retries only it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(lidar_data / TILE, inputs / "a.laz")
    (inputs / "b.laz").write_bytes(b"LASF" + b"\0" * 300)
    shutil.copy(lidar_data / TILE, inputs / "c.laz")
    res = cli("predict", "--model", rf_bundle, "--input", inputs, "--out", tmp_path / "p")
    refused(res, "1 of 3 file(s) failed and were skipped", "b.laz", "2 complete in", "[2/3] b.laz: failed")
    assert visible(tmp_path / "p") == ["a.laz", "c.laz", "index.vpc"]
    shutil.copy(lidar_data / TILE, inputs / "b.laz")              # fixed
    res = cli("predict", "--model", rf_bundle, "--input", inputs, "--out", tmp_path / "p")
    assert res.returncode == 0, res.stderr
    assert "1 done, 2 skipped" in res.stderr
    (inputs / "d.laz").write_bytes(b"LASF" + b"\0" * 300)
    res = cli("predict", "--model", rf_bundle, "--input", inputs / "d.laz", "--out", tmp_path / "q")
    refused(res, "d.laz")
    assert not (tmp_path / "q").exists()            # no empty folder left behind


# -- inputs ---------------------------------------------------------------------------------------

def test_fifo_input_does_not_hang(tmp_path, rf_bundle):
    fifo = tmp_path / "pipe.laz"
    os.mkfifo(fifo)
    res = cli("predict", "--model", rf_bundle, "--input", fifo, "--out", tmp_path / "p", timeout=60)
    refused(res, "pipe.laz: is not a regular file")
    refused(cli("inspect", fifo, timeout=60), "pipe.laz")


@pytest.mark.parametrize("length", [200, 251])     # 251 + ".laz": the longest name a filesystem takes
def test_very_long_file_names_work(tmp_path, rf_bundle, lidar_data, length):
    long = tmp_path / ("t" * length + ".laz")
    shutil.copy(lidar_data / TILE, long)
    res = cli("predict", "--model", rf_bundle, "--input", long, "--out", tmp_path / "p", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p" / long.name).is_file()


def test_evaluate_without_classes_on_own_output(tmp_path, rf_bundle, lidar_data):
    res = cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", tmp_path / "p", "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("evaluate", "--pred", tmp_path / "p", "--out", tmp_path / "e", "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["num_points"] == 56035 and all(n.startswith("code_") for n in report["class_names"])


def test_links_keep_the_name_the_user_gave(tmp_path, rf_bundle, lidar_data):
    """A linked input's output takes the link's name; a link to a suffix-less object (git-annex,
    DVC) is read by its content; a link to a device is named by the link, not its target."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(lidar_data / TILE, store / "0a1b2c3d")                 # content-addressed, no suffix
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tile_a.laz").symlink_to(store / "0a1b2c3d")
    (tmp_path / "in" / "tile_b").symlink_to(store / "0a1b2c3d")          # no suffix on the link either
    res = cli("predict", "--model", rf_bundle, "--input", tmp_path / "in" / "tile_a.laz", "--out",
              tmp_path / "p", "--quiet")
    assert res.returncode == 0, res.stderr
    assert visible(tmp_path / "p") == ["tile_a.laz"]
    res = cli("predict", "--model", rf_bundle, "--input", tmp_path / "in" / "tile_b", "--out",
              tmp_path / "q", "--quiet")
    assert res.returncode == 0, res.stderr
    assert visible(tmp_path / "q") == ["tile_b.laz"]
    (tmp_path / "notes").write_text("not a cloud")
    refused(cli("predict", "--model", rf_bundle, "--input", tmp_path / "notes", "--out", tmp_path / "r"),
            "notes: has no suffix and is neither LAS/LAZ nor PLY")
    (tmp_path / "zero.laz").symlink_to("/dev/zero")
    res = cli("predict", "--model", rf_bundle, "--input", tmp_path / "zero.laz", "--out", tmp_path / "z", timeout=60)
    refused(res, "zero.laz: is not a regular file")
    assert "/dev/zero" not in res.stderr


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': expected an integer"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1, WORLD_SIZE=1: the rank must be in 0..0"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9",
      "LIDARSEG_DIST_TIMEOUT": "2"}, "nothing answers at MASTER_ADDR:MASTER_PORT = 127.0.0.1:9 after 2 s"),
])
def test_launch_mistakes_are_named(tmp_path, rf_bundle, lidar_data, env, words):
    """torchrun's variables set by hand, wrongly: one clear line before any work, no traceback
    (not torch's C++ store traces either) and nothing written."""
    res = subprocess.run([sys.executable, str(REPO / "run.py"), "predict", "--model", str(rf_bundle), "--input",
                          str(lidar_data / TILE), "--out", str(tmp_path / "p")], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    refused(res, words)
    assert "frame #" not in res.stderr and not (tmp_path / "p").exists()


def test_internal_waveform_files_are_refused_for_copies(tmp_path, rf_bundle, lidar_data):
    """Point format 10 with its waveform packets inside the file: readable (training may use
    it), but a labelled copy would leave the waveform pointers dangling, so predict refuses it
    before predicting and the writer never writes one."""
    import laspy

    from data.errors import DataError
    from data.io import read_cloud, write_cloud

    src = laspy.read(lidar_data / TILE)
    header = laspy.LasHeader(point_format=10, version="1.4")
    header.scales, header.offsets = src.header.scales, src.header.offsets
    header.global_encoding.waveform_data_packets_internal = True
    las = laspy.LasData(header)
    n = 3000
    las.x, las.y, las.z, las.classification = src.x[:n], src.y[:n], src.z[:n], src.classification[:n]
    las.wavepacket_index = np.ones(n, np.uint8)
    las.wavepacket_offset = np.arange(n, dtype=np.uint64) * 64
    las.wavepacket_size = np.full(n, 64, np.uint32)
    las.write(tmp_path / "wave.las")
    cloud = read_cloud(tmp_path / "wave.las")
    assert len(cloud) == n and int(cloud.fields["wavepacket_offset"][5]) == 320
    with pytest.raises(DataError, match="cannot write a copy of .*wave.las: it holds its waveform packets inside"):
        write_cloud(cloud, tmp_path / "copy.las")
    assert not (tmp_path / "copy.las").exists()
    refused(cli("predict", "--model", rf_bundle, "--input", tmp_path / "wave.las", "--out", tmp_path / "p"),
            "wave.las: holds its waveform packets inside the file (point format 10")
    assert not (tmp_path / "p").exists()


def mount_tmpfs(folder: Path, size: str) -> Path:
    """A tmpfs of ``size`` at ``folder`` (CI runs as root; elsewhere the test is skipped)."""
    folder.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
    return folder


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MB tmpfs filled to within 16 KB."""
    mnt = mount_tmpfs(tmp_path / "disk", "4m")
    try:
        with open(mnt / ".ballast", "wb") as f:
            f.write(b"\0" * (4 * 2**20 - 16 * 2**10))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _final_named(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_a_full_disk_is_named_and_leaves_no_partial_file(full_disk, tmp_path, rf_bundle, lidar_data):
    from data.errors import DataError
    from data.geotiff import write_class_map
    from geometry.grids import Grid2D
    from pipeline.training import atomic_torch_save

    out = full_disk / "out"
    out.mkdir()
    refused(cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", out / "p"),
            "test_data_77050_627760_LA93_IGN69.laz: cannot write")
    pred = tmp_path / "pred"
    assert cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", pred, "--quiet").returncode == 0
    refused(cli("evaluate", "--pred", pred, "--out", out / "e"), "no space left on the device")
    from pipeline.bundle import load_bundle, save_bundle

    bundle = load_bundle(rf_bundle)
    with pytest.raises(DataError, match=r"model.bundle: cannot write: no space left on the device"):
        save_bundle(out / "model.bundle", bundle.model, bundle.class_map, bundle.summary)
    with pytest.raises(DataError, match=r"last.pt: cannot write: no space left on the device"):
        atomic_torch_save({"w": torch.zeros(2**20)}, out / "last.pt")
    grid = Grid2D(1.0, 0, 100, 600, 600)
    with pytest.raises(DataError, match=r"map.tif: cannot write: no space left"):
        write_class_map(out / "map.tif", grid, np.random.default_rng(0).integers(1, 7, grid.shape))
    assert _final_named(out) == [], _final_named(out)


def test_one_writer_per_output_folder(tmp_path, rf_bundle, lidar_data):
    """A second process writing into a folder another live process holds is refused, naming the
    owner; a lock left by a killed process on this host is taken over; no lock stays behind."""
    import socket

    out = tmp_path / "p"
    out.mkdir()
    lock = out / ".lidarseg.lock"
    live = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "then",
                                    "command": "lidarseg predict ..."}))
        refused(cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", out),
                f"another lidarseg process is writing into this folder (pid {live.pid} on {socket.gethostname()}")
        refused(cli("evaluate", "--pred", lidar_data / TILE, "--ref", lidar_data / TILE, "--out", out),
                "another lidarseg process")
        assert sorted(p.name for p in out.iterdir()) == [".lidarseg.lock"]
    finally:
        live.kill()
        live.wait()
    res = cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", out)    # its owner is gone
    assert res.returncode == 0, res.stderr
    assert "taking over the stale lock" in res.stderr
    assert visible(out) == [Path(TILE).name]
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "then"}))   # cannot be checked
    refused(cli("predict", "--model", rf_bundle, "--input", lidar_data / TILE, "--out", out),
            "pid 1 on another-host", f"delete {lock}")


def test_inputs_on_a_read_only_filesystem(tmp_path, rf_bundle, lidar_data, spec_dict):
    """Nothing is ever written beside an input: training, prediction, evaluation and inspect
    all work on a read-only filesystem (CI runs as root; elsewhere the test is skipped)."""
    ro = mount_tmpfs(tmp_path / "ro", "16m")
    try:
        for rel in (TRAIN, TILE):
            (ro / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lidar_data / rel, ro / rel)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        spec = json.loads(json.dumps(spec_dict))
        spec.update(data_root=str(ro), output=str(tmp_path / "run"))
        res = cli("run", write_spec(tmp_path / "spec", spec), "--quiet")
        assert res.returncode == 0, res.stderr
        res = cli("predict", "--model", rf_bundle, "--input", ro / TILE, "--out", tmp_path / "p", "--quiet",
                  "--buffer", "5")
        assert res.returncode == 0, res.stderr
        assert cli("inspect", ro / TILE, "--out", tmp_path / "i").returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
