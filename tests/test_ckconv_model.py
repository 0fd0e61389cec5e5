"""ckconv_grid: the IGN raster and voxel specs train a tiny CKConv net via the CLI, label the test
tiles, write GeoTIFF class maps, and evaluate on the points; plus unit checks of the network
and the tiled prediction."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import pytest
import rasterio
import torch
import yaml

from conftest import REPO
from geometry.heights import height_above_ground
from pipeline.models.grid_inputs import point_bands
from pipeline.spec import compose_spec_file

TEST_TILES = ["ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz",
              "ign_lidarhd/test/test_data_77055_627755_LA93_IGN69.laz"]
RASTER_BANDS = compose_spec_file(REPO / "specs" / "ign_ckconv_raster.yaml")["steps"][0]["model"]["bands"]
TINY = {"hidden": 8, "blocks": 1, "kernel": {"hidden": 8, "layers": 2}, "crop": 24, "batch_size": 2,
        "cond_dim": 4, "registers": 2}


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _spec(folder: Path, lidar_data: Path, which: str, **model) -> Path:
    spec = compose_spec_file(REPO / "specs" / f"ign_ckconv_{which}.yaml")
    spec.update(data_root=str(lidar_data), output="out")
    spec["inputs"] = {"train": ["ign_lidarhd/train/792000_6272000-50mx100m-left.laz",
                                "ign_lidarhd/train/mnx_corse.laz"], "test": TEST_TILES}
    m = spec["steps"][0]["model"]
    m.update({k: v for k, v in TINY.items() if k != "kernel"}, **model)
    m["kernel"].update(TINY["kernel"])
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def raster_run(tmp_path_factory, lidar_data):
    spec = _spec(tmp_path_factory.mktemp("raster"), lidar_data, "raster", cell_size=2.0)
    res = cli("run", spec, "--limit-steps", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    return spec.parent / "out"


def test_raster_spec_writes_laz_geotiff_and_report(raster_run, lidar_data, tmp_path):
    with rasterio.open(raster_run / "predictions" / "index_class.vrt") as vrt:   # the batch's maps as one layer
        assert sorted(Path(f).name for f in vrt.files[1:]) == sorted(f"{Path(t).stem}_class.tif" for t in TEST_TILES)
        assert vrt.crs.to_epsg() == 2154 and vrt.nodata == 255
    assert len(json.loads((raster_run / "predictions" / "index.vpc").read_text())["features"]) == len(TEST_TILES)
    meta = json.loads((raster_run / "model.bundle" / "bundle.json").read_text())
    assert meta["model"]["type"] == "ckconv_grid" and meta["summary"]["steps"] == 3
    assert (raster_run / "model.bundle" / "ckconv_grid.pt").is_file()
    assert (raster_run / "model.work" / "last.pt").is_file() and (raster_run / "model.work" / "log.csv").is_file()
    assert meta["model"]["optim"]["lr"] == 0.002 and meta["model"]["optim"]["grad_clip"] == 1.0
    report = json.loads((raster_run / "evaluation" / "report.json").read_text())
    assert 0 <= report["miou"] <= 1 and report["num_points"] > 50_000
    for tile in TEST_TILES:
        stem = Path(tile).stem
        src = laspy.read(lidar_data / tile)
        out = laspy.read(raster_run / "predictions" / f"{stem}.laz")
        assert len(out.points) == len(src.points)
        np.testing.assert_array_equal(out["classification_ref"], src.classification)
        assert set(np.unique(out.classification)) <= {1, 2, 3, 6, 9, 17}
        p = np.stack([np.asarray(out[f"prob_{n}"]) for n in report["class_names"]], 1)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
        assert (raster_run / "predictions" / f"{stem}_class.png").is_file()
        with rasterio.open(raster_run / "predictions" / f"{stem}_class.tif") as tif:
            assert tif.crs.to_epsg() == 2154 and tif.nodata == 255 and tif.dtypes == ("uint8",)
            t = tif.transform
            assert (t.a, t.e) == (2.0, -2.0) and t.c % 2 == 0 and t.f % 2 == 0
            band = tif.read(1)
            # raster mode with height bands: the map shows each cell's highest occupied band, so a
            # point in its cell's highest band has the map's class there (a point on the grid's
            # east or north edge belongs to the last column / first row: geometry.grids)
            x, y = np.asarray(src.x), np.asarray(src.y)
            rows = np.clip(np.floor(t.f / 2) - 1 - np.floor(y / 2), 0, band.shape[0] - 1).astype(int)
            cols = np.clip(np.floor(x / 2) - t.c / 2, 0, band.shape[1] - 1).astype(int)
            pb = point_bands(height_above_ground(np.c_[x, y, np.asarray(src.z)]), RASTER_BANDS)
            flat = rows * band.shape[1] + cols
            top = np.full(band.size, -1)
            np.maximum.at(top, flat, pb)
            on_top = pb == top[flat]
            assert on_top.mean() > 0.5
            np.testing.assert_array_equal(band[rows, cols][on_top], np.asarray(out.classification)[on_top])
            assert (band == 255).sum() < band.size
        with rasterio.open(raster_run / "predictions" / f"{stem}_proba.tif") as tif:
            assert tif.count == 6 and tif.nodata == -1.0 and tif.crs.to_epsg() == 2154

    # the bundle alone reproduces the run (CLI predict), then evaluate on the points
    res = cli("predict", "--model", raster_run / "model.bundle", "--input", lidar_data / TEST_TILES[0],
              "--out", tmp_path / "pred", "--quiet")
    assert res.returncode == 0, res.stderr
    again = laspy.read(tmp_path / "pred" / Path(TEST_TILES[0]).name)
    first = laspy.read(raster_run / "predictions" / Path(TEST_TILES[0]).name)
    np.testing.assert_array_equal(again.classification, first.classification)
    assert (tmp_path / "pred" / f"{Path(TEST_TILES[0]).stem}_class.tif").is_file()
    res = cli("evaluate", "--pred", tmp_path / "pred" / "*.laz", "--ref", lidar_data / TEST_TILES[0],
              "--out", tmp_path / "eval", "--classes", raster_run / "resolved_spec.yaml", "--quiet")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert rep["num_points"] > 10_000 and 0 <= rep["overall_accuracy"] <= 1


def test_raster_windows_join_the_map_of_the_whole_tile(raster_run, lidar_data, tmp_path):
    """A grid model predicted in windows (``--window``) writes the labelled points and one
    GeoTIFF map per file (and its probabilities), joined from the windows' core cells: the same
    grid as the whole-tile map, and its cells equal wherever the windows' halo covers the
    model's context (here the whole 50 m crop), as the points' labels are."""
    tile = lidar_data / TEST_TILES[0]
    outs = {}
    for name, extra in (("whole", []), ("win", ["--window", "20"])):
        res = cli("predict", "--model", raster_run / "model.bundle", "--input", tile, "--out", tmp_path / name,
                  "--probabilities", *extra)
        assert res.returncode == 0, res.stderr
        outs[name] = tmp_path / name
    assert "windows of 20 m" in res.stderr
    stem = tile.stem
    a, b = laspy.read(outs["whole"] / tile.name), laspy.read(outs["win"] / tile.name)
    np.testing.assert_array_equal(a.classification, b.classification)
    for suffix in ("_class.tif", "_proba.tif"):
        with rasterio.open(outs["whole"] / f"{stem}{suffix}") as ta, rasterio.open(outs["win"] / f"{stem}{suffix}") as tb:
            assert (ta.transform, ta.shape, ta.count, ta.dtypes, ta.crs) == (tb.transform, tb.shape, tb.count,
                                                                              tb.dtypes, tb.crs)
            np.testing.assert_allclose(ta.read(), tb.read(), atol=1e-5)
    assert (outs["win"] / f"{stem}_class.png").is_file()


def test_voxel_spec_runs_tiny(tmp_path, lidar_data):
    spec = _spec(tmp_path, lidar_data, "voxel", cell_size=2.0, voxel_height=2.0, levels=6)
    res = cli("run", spec, "--limit-steps", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert 0 <= report["miou"] <= 1
    for tile in TEST_TILES:
        stem = Path(tile).stem
        las = laspy.read(out / "predictions" / f"{stem}.laz")
        assert len(las.points) == len(laspy.read(lidar_data / tile).points)
        with rasterio.open(out / "predictions" / f"{stem}_class.tif") as tif:
            assert tif.crs.to_epsg() == 2154 and tif.transform.c % 2 == 0


def test_specs_validate():
    for which in ("raster", "voxel"):
        res = cli("validate", REPO / "specs" / f"ign_ckconv_{which}.yaml")
        assert res.returncode == 0, res.stderr + res.stdout
    res = cli("validate", REPO / "specs" / "ign_ckconv_raster.yaml", "--set", "train.model.kernel.typo=1")
    assert res.returncode == 2 and "kernel.typo" in res.stderr + res.stdout
    for bad in ("[3.0, 0.5]", "[0.5, 0.5]", "[-1.0]"):
        res = cli("validate", REPO / "specs" / "ign_ckconv_raster.yaml", "--set", f"train.model.bands={bad}")
        assert res.returncode == 2 and "bands" in res.stderr, (bad, res.stderr)
    res = cli("validate", REPO / "specs" / "ign_ckconv_voxel.yaml", "--set", "train.model.bands=[0.5]")
    assert res.returncode == 2 and "raster" in res.stderr


@pytest.mark.parametrize("data_dim,kernel,film", [(2, "BlockDiagonalLearnableOmegaSIRENKernelND", True),
                                                  (3, "SIRENKernelND", False)])
def test_network_shapes_and_gradients(data_dim, kernel, film):
    from ckconv.network import CKConvSegNet, KernelConfig

    torch.manual_seed(0)
    net = CKConvSegNet(data_dim, 5, 4, hidden=8, num_blocks=2, kernel=KernelConfig(kernel, hidden=8, omega_blocks=2),
                       L_cache=16, film=film, cond_dim=4, registers=2)
    shape = (2, 12, 10) + ((6,) if data_dim == 3 else ())
    x = torch.randn(*shape, 5)
    mask = torch.rand(shape) > 0.5
    mask[1] = False                                 # an empty tile must not give NaN (register pooling)
    y = net(x, mask)
    assert y.shape == shape + (4,) and torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if film:   # FiLM starts as the identity (last layer 0): the gradient reaches that layer first
        last = net.blocks[0].conv.kernel.film_generator.mlp[-1]
        assert last.weight.grad.abs().sum() > 0
        with torch.no_grad():
            last.weight.normal_(0, 0.1)
        net.zero_grad()
        net(x, mask).square().mean().backward()
        assert net.pool.queries.grad.abs().sum() > 0      # then the register pooling learns too


def test_tiled_prediction_blends_lattice_tiles():
    """predict_cells: the tent-weighted mean of the softmax of every tile on the lattice of
    absolute cells (stride crop * (1 - overlap), from the anchor's cell) that meets the grid,
    padded past the edges (a loop over the tiles as the reference); a window of the grid (same
    cells, same anchor) gives the same cells wherever every tile over them lies inside it."""
    from types import SimpleNamespace

    from data.classmap import ClassMap
    from geometry.grids import Grid2D
    from pipeline.models.ckconv_model import CKConvGridModel
    from pipeline.models.grid_inputs import EncodedGrid as _Grid
    from pipeline.models.tiling import tent_weight

    cmap = ClassMap.from_config({"a": [1], "b": [2], "c": [3]})
    c, stride = 8, 4
    model = CKConvGridModel(CKConvGridModel.Config(crop=c, hidden=8, blocks=1, overlap=0.5, batch_size=3), cmap)
    model._build_net(4)
    rng = np.random.default_rng(0)
    rows, cols = 21, 13
    mask = rng.random((rows, cols)) > 0.3
    x = rng.normal(size=(rows, cols, 4)).astype(np.float32)
    grid = Grid2D(2.0, 100, 70, rows, cols)                     # cells x 100..112, y 50..70 (north row 70)

    def encoded(r0, r1, q0, q1):
        sub = Grid2D(2.0, grid.col0 + q0, grid.row_top - r0, r1 - r0, q1 - q0)
        return _Grid(x[r0:r1, q0:q1], mask[r0:r1, q0:q1], None, np.zeros(0, np.int64), SimpleNamespace(grid=sub))

    anchor = np.array([2.0 * 97 + 0.3, 2.0 * 48 + 1.9])         # cell (97, 48): the lattice's origin
    p = model.predict_cells(encoded(0, rows, 0, cols), anchor=anchor)
    # reference: every lattice tile by hand
    acc, wsum = np.zeros((rows, cols, 3)), np.zeros((rows, cols, 1))
    tent = tent_weight(c)[..., None]
    bottom = grid.row_top - rows + 1
    for t in range(48 - 10 * stride, 48 + 10 * stride, stride):           # absolute rows [t, t + c)
        for u in range(97 - 10 * stride, 97 + 10 * stride, stride):       # absolute columns [u, u + c)
            if not (t < grid.row_top + 1 and t + c > bottom and u < grid.col0 + cols and u + c > grid.col0):
                continue
            xb, mb = np.zeros((1, c, c, 4), np.float32), np.zeros((1, c, c), bool)
            for i in range(c):
                for j in range(c):
                    r, q = grid.row_top - (t + c - 1 - i), u + j - grid.col0
                    if 0 <= r < rows and 0 <= q < cols:
                        xb[0, i, j], mb[0, i, j] = x[r, q], mask[r, q]
            with torch.no_grad():
                sm = model.net(torch.from_numpy(xb), torch.from_numpy(mb)).softmax(-1).numpy()[0]
            for i in range(c):
                for j in range(c):
                    r, q = grid.row_top - (t + c - 1 - i), u + j - grid.col0
                    if 0 <= r < rows and 0 <= q < cols:
                        acc[r, q] += sm[i, j] * tent[i, j]
                        wsum[r, q] += tent[i, j]
    np.testing.assert_allclose(p, acc / wsum, atol=1e-5)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    # a window (rows 3..19, columns 2..13): equal where every tile over a cell lies inside it
    w = model.predict_cells(encoded(3, 19, 2, 13), anchor=anchor)
    inner = (slice(3 + c - 1, 19 - c + 1), slice(2 + c - 1, cols))      # columns: the grid's own east edge
    np.testing.assert_allclose(w[inner[0].start - 3:inner[0].stop - 3, inner[1].start - 2:],
                               p[inner], atol=1e-5)


# -- training on the shared loop (pipeline.training.Trainer) ----------------------------------
GRID_TRAIN = ["ign_lidarhd/train/792000_6272000-50mx100m-left.laz", "ign_lidarhd/train/mnx_corse.laz"]
GRID_VAL = ["ign_lidarhd/train/mnx_corse.laz"]


def _fit(lidar_data, work, stop=None, resume=False, seed=0, steps=6, **cfg):
    from data.classmap import ClassMap
    from pipeline.models.base import TrainContext
    from ckconv.network import KernelConfig
    from pipeline.models.ckconv_model import CKConvGridModel

    spec = compose_spec_file(REPO / "specs" / "ign_ckconv_raster.yaml")
    cmap = ClassMap.from_config(spec["classes"], spec["ignore"])
    options = dict(cell_size=2.0, hidden=8, blocks=1, kernel=KernelConfig(hidden=8, layers=2), crop=12,
                   batch_size=2, steps=steps, val_every=2, checkpoint_every=100)
    config = CKConvGridModel.Config(**{**options, **cfg})
    model = CKConvGridModel(config, cmap)
    ctx = TrainContext(device="cpu", stop_after=stop, seed=seed, work_dir=work, resume=resume)
    from pipeline.datasets import LabelledFile

    summary = model.fit([LabelledFile(lidar_data / f, cmap) for f in GRID_TRAIN],
                        [LabelledFile(lidar_data / f, cmap) for f in GRID_VAL], ctx)
    return model, summary


def _log(work):
    import csv

    with open(work / "log.csv", newline="") as f:
        return [(int(r["step"]), r["loss"], r["val_miou"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, lidar_data):
    work = tmp_path_factory.mktemp("grid_full")
    model, summary = _fit(lidar_data, work)
    return work, model, summary


def test_trainer_validates_and_keeps_the_best_weights(full_run):
    work, model, summary = full_run
    assert summary["steps"] == summary["total_steps"] == 6
    steps = [h["step"] for h in summary["val_history"]]
    assert steps == [2, 4, 6]                                   # val_every 2 (point mIoU on val_inputs)
    best = max(summary["val_history"], key=lambda h: h["miou"])
    assert summary["best_val_miou"] == best["miou"] and summary["best_step"] == best["step"]
    assert all(0 <= h["miou"] <= 1 and 0 <= h["overall_accuracy"] <= 1 for h in summary["val_history"])
    rows = _log(work)
    assert [r[0] for r in rows] == list(range(1, 7))
    assert [bool(r[2]) for r in rows] == [False, True] * 3
    assert (work / "last.pt").is_file() and (work / "best.pt").is_file()
    kept = torch.load(work / "best.pt", weights_only=True)         # the model holds the best weights
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(v, kept[k], rtol=0, atol=0)
    last = torch.load(work / "last.pt", weights_only=True)
    assert last["step"] == 6 and last["best_step"] == summary["best_step"]


def test_same_seed_same_losses_other_seed_other_losses(full_run, lidar_data, tmp_path):
    work, _, _ = full_run
    _fit(lidar_data, tmp_path / "a", stop=3)
    assert [r[:2] for r in _log(tmp_path / "a")] == [r[:2] for r in _log(work)[:3]]
    _fit(lidar_data, tmp_path / "b", stop=3, seed=1)
    assert [r[1] for r in _log(tmp_path / "b")] != [r[1] for r in _log(work)[:3]]


def test_resume_continues_like_the_uninterrupted_run(full_run, lidar_data, tmp_path):
    work, _, _ = full_run
    _, first = _fit(lidar_data, tmp_path, stop=4)                # --stop-after 4
    assert first["steps"] == 4 and torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4
    _, summary = _fit(lidar_data, tmp_path, resume=True)         # --resume: steps 5 and 6 only
    assert summary["steps"] == 6 and [h["step"] for h in summary["val_history"]] == [2, 4, 6]
    assert [r[:2] for r in _log(tmp_path)] == [r[:2] for r in _log(work)]
    ref = torch.load(work / "last.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    # a checkpoint of other settings is refused
    from data.errors import UserError

    with pytest.raises(UserError, match="other settings"):
        _fit(lidar_data, tmp_path, resume=True, hidden=4)


def test_optim_block():
    from data.errors import UserError
    from pipeline.models.ckconv_model import CKConvGridModel, GridOptimConfig
    from pipeline.schema import SpecError, parse_component
    from pipeline.registry import MODELS

    c = parse_component(MODELS, {"type": "ckconv_grid", "optim": {"lr": 0.001}}, "model", "t")
    assert c.optim == GridOptimConfig(lr=0.001) and c.optim.grad_clip == 1.0 and c.optim.warmup_steps == 100
    with pytest.raises(SpecError, match="model.lr: unknown key"):   # lr lives in the optim block
        parse_component(MODELS, {"type": "ckconv_grid", "lr": 0.003}, "model", "t")
    with pytest.raises(UserError):
        CKConvGridModel.Config(optim=GridOptimConfig(lr=-1))


def test_reference_codes_names_the_file():
    from data.errors import DataError
    from data.pointcloud import PointCloud
    from pipeline.datasets import reference_codes

    cloud = PointCloud(np.zeros((3, 3)), {"classification": np.array([1, 2, 3], np.uint8)}, source="a.laz")
    np.testing.assert_array_equal(reference_codes(cloud), [1, 2, 3])
    with pytest.raises(DataError, match="classification"):
        reference_codes(PointCloud(np.zeros((3, 3)), source="b.laz"))
