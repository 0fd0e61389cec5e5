"""``type: ckconv_grid``: CKConvND segmentation of rasters (2-D) or voxel grids (3-D).

Each cloud becomes a grid (``geometry.grids``): ``mode: raster`` -> ``[rows, cols]`` cells of
``cell_size`` m; ``mode: voxel`` -> ``[rows, cols, levels]`` voxels of ``cell_size`` x
``cell_size`` x ``voxel_height`` m stacked from the local ground estimate up (points higher
than the top layer fall into it). The network (``ckconv.network.CKConvSegNet``) predicts class
probabilities per cell/voxel; training draws random ``crop`` x ``crop`` (x all levels)
windows with random rot90/flips, cross-entropy on labelled cells only (cell label:
``label_rule`` majority or top-most point; ignored codes and empty cells carry no loss).

Optimisation runs on the shared loop (:class:`pipeline.training.Trainer`), options in the
``optim:`` block (:class:`GridOptimConfig`: the keys of ``pipeline.training.OptimConfig``,
defaults lr 0.002, weight decay 0.01, 100 warm-up steps, cosine, gradient clipping at 1):
AdamW with weight-decay groups from the ckconv parameter tags (SIREN, window and shortcut
parameters carry none; other 1-D parameters neither), linear warm-up then cosine decay,
mixed precision on CUDA (the kernel networks and the FFT convolution stay float32 inside
``ckconv``). Step ``s`` draws its crops from ``step_rng(seed, s)``, so a run resumed from
``OUT/NAME.work/last.pt`` (``run.py run SPEC --resume``) continues exactly as the
uninterrupted one. With ``val_inputs``, validation every ``val_every`` steps (and after the
last one) computes the **point** mIoU on those files, each point taking the class of its
cell/voxel as in prediction, i.e. the measure of the evaluate step; the weights of the best
validation are kept (``best.pt``), ``log.csv`` holds the losses and validation scores.

Inputs per cell: ``pipeline.models.grid_inputs`` (fixed scalings, no statistics to store).

Prediction: the grid is cut into ``crop``-sized tiles (padded with empty cells at the
edges, overlapping by ``overlap``), softmax outputs are blended with a tent weight
(``pipeline.models.tiling``).

Per-point probabilities (``predict_proba``):

- voxel mode: a point takes its voxel's probabilities;
- raster mode with ``bands`` (heights above the ground model, e.g. ``[0.5, 3.0]``): each
  cell carries one class per height band (``label_rule`` over that band's points) and the
  network predicts ``K = len(bands) + 1`` distributions per cell (``K * C`` output
  channels, softmax per band); a point takes its cell's distribution for its own band, so
  the ground under a tree or beside a wall keeps its own class (``grid_inputs``);
- raster mode without bands (the 2-D height rule): a point takes its cell's probabilities
  whatever its height, so every point of a column gets the same class. With
  ``label_rule: majority`` the raster learns the column's majority class, with ``top`` the
  top surface (ground under trees then reads as vegetation).

Grid outputs (a ``GridProduct`` in :meth:`CKConvGridModel.predict`'s result, written by
``pipeline.labelling``): ``<stem>_class.tif``
(input codes, nodata 255/65535), ``<stem>_proba.tif`` when probabilities are asked
(float32 per class, nodata -1) and ``<stem>_class.png`` (preview with legend), in the
cloud's CRS, origin on multiples of ``cell_size``. Voxel mode maps the top-most occupied
voxel of each column, raster mode with bands the highest occupied band of each cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ckconv.network import KernelConfig
from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError
from data.pointcloud import PointCloud
from pipeline.datasets import LabelledFile
from pipeline.priors import adjust_logits
from pipeline.progress import progress
from pipeline.registry import MODELS
from pipeline.schema import keys_where, option
from pipeline.training import OptimConfig, amp_autocast

from .base import GridProduct, Prediction, TrainContext, load_torch_file, load_weights
from .grid_inputs import EncodedGrid, encode_grid
from .tiling import lattice_starts, tent_weight, window
from .torch_model import TorchModel, TrainingData

@dataclass
class GridOptimConfig(OptimConfig):
    """``pipeline.training.OptimConfig`` with the grid model's defaults (same keys and checks)."""

    lr: float = 0.002
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float | None = 1.0


@MODELS.register("ckconv_grid")
class CKConvGridModel(TorchModel):
    @dataclass
    class Config:
        mode: Literal["raster", "voxel"] = "raster"
        cell_size: float = 1.0
        voxel_height: float = 1.0
        levels: int = 24                  # voxel layers above the local ground
        ground_window: float = 10.0       # m, local ground = min z in this window
        label_rule: Literal["majority", "top"] = "majority"
        bands: list[float] = option(min=0, default_factory=list)   # raster: metres above the DTM, e.g. [0.5, 3.0]
        intensity: bool = False           # raw intensity differs between sensors
        hidden: int = 32
        blocks: int = 4
        kernel: KernelConfig = field(default_factory=KernelConfig)
        window: bool = True               # exponential window on the kernels
        film: bool = False                # FiLM kernels conditioned on a register pooling of the tile
        cond_dim: int = 16
        registers: int = 4
        dropout: float = 0.1
        crop: int = option(predict=True, default=64)   # training crop / prediction tile, cells per side
        overlap: float = option(predict=True, resume=False, default=0.25)  # prediction tile overlap (of crop)
        batch_size: int = 8
        steps: int = option(min=1, resume=False, default=2000)     # optimisation steps (the schedule spans them)
        optim: GridOptimConfig = field(default_factory=GridOptimConfig)
        val_every: int = option(min=1, resume=False, default=500)  # validate every N steps (and at the end)
        checkpoint_every: int = option(min=1, resume=False, default=500)   # OUT/NAME.work/last.pt every N steps
        class_weights: bool = True        # inverse-sqrt-frequency cross-entropy weights
        prior_correction: bool = True     # logits += log(p_train / p_seen) at inference (pipeline.priors)
        geotiff: bool = option(predict=True, resume=False, default=True)   # <stem>_class.tif (+ .png) per cloud
        preview: bool = option(predict=True, resume=False, default=True)

        def __post_init__(self) -> None:
            if self.cell_size <= 0 or self.voxel_height <= 0 or self.ground_window <= 0:
                raise UserError("cell_size, voxel_height and ground_window must be > 0")
            if self.levels < 2 or self.crop < 4 or self.hidden < 1 or self.blocks < 1 or self.batch_size < 1:
                raise UserError("levels >= 2, crop >= 4, hidden >= 1, blocks >= 1, batch_size >= 1 expected")
            if list(self.bands) != sorted(set(self.bands)) or (self.bands and self.mode != "raster"):
                raise UserError(f"bands must be increasing heights above the ground model (raster mode only), "
                                f"got {list(self.bands)}")
            if not 0 <= self.overlap < 1 or not 0 <= self.dropout < 1:
                raise UserError("overlap and dropout in [0, 1) expected")
            if self.kernel.block_diagonal and self.hidden % self.kernel.omega_blocks:
                raise UserError(f"kernel.omega_blocks={self.kernel.omega_blocks} must divide hidden ({self.hidden})")

        @property
        def total_steps(self) -> int:
            return self.steps

        @property
        def class_weight_power(self) -> float | None:
            return 0.5 if self.class_weights else None

    #: Config keys ``run.py predict --set`` may change on a trained bundle (``option(predict=True)``)
    predict_options = keys_where(Config, "predict")

    kind = "ckconv_grid"

    def __init__(self, config: "CKConvGridModel.Config", class_map: ClassMap):
        super().__init__(config, class_map)
        self.in_dim: int | None = None

    # -- grids --------------------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return 2 if self.config.mode == "raster" else 3

    def _grid(self, cloud: PointCloud, labels: np.ndarray | None) -> EncodedGrid:
        cfg = self.config
        return encode_grid(cloud, labels, mode=cfg.mode, cell_size=cfg.cell_size, voxel_height=cfg.voxel_height,
                           levels=cfg.levels, ground_window=cfg.ground_window, label_rule=cfg.label_rule,
                           intensity=cfg.intensity, bands=cfg.bands)

    @property
    def bands(self) -> int:
        """K: class distributions the network predicts per cell (height bands, 1 without)."""
        return len(self.config.bands) + 1 if self.config.mode == "raster" else 1

    def _build_net(self, in_dim: int):
        from ckconv.network import CKConvSegNet

        cfg = self.config
        L = (cfg.crop, cfg.crop) if cfg.mode == "raster" else (cfg.crop, cfg.crop, cfg.levels)
        self.in_dim = in_dim
        self.net = CKConvSegNet(self.data_dim, in_dim, self.class_map.num_classes * self.bands, hidden=cfg.hidden,
                                num_blocks=cfg.blocks, kernel=cfg.kernel, L_cache=L, window=cfg.window, film=cfg.film, cond_dim=cfg.cond_dim,
                                registers=cfg.registers, dropout=cfg.dropout)
        return self.net

    # -- training -----------------------------------------------------------------------
    def _crop(self, g: EncodedGrid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config.crop
        rows, cols = g.mask.shape[:2]
        r0 = int(rng.integers(0, rows - c + 1)) if rows > c else 0
        c0 = int(rng.integers(0, cols - c + 1)) if cols > c else 0
        x, m = window(g.x, r0, c0, c, 0.0), window(g.mask, r0, c0, c, False)
        y = window(g.labels, r0, c0, c, IGNORE)
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        out = []
        for a in (x, m, y):
            a = np.rot90(a, k, axes=(0, 1))
            out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
        return out[0], out[1], out[2]

    def _labelled_grids(self, items: list[LabelledFile], what: str) -> list[tuple[EncodedGrid, np.ndarray]]:
        """``(grid with cell labels, reference class index per point)`` for every file."""
        out = []
        for item in progress(items, f"grids ({what})", unit="file"):
            cloud, labels = item.read()
            out.append((self._grid(cloud, labels), labels))
        return out

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "in_dim": self.in_dim}

    def load_training(self, train: list[LabelledFile], val: list[LabelledFile], ctx: TrainContext) -> TrainingData:
        cfg, C = self.config, self.class_map.num_classes
        grids = [g for g, _ in self._labelled_grids(train, "train")]
        counts = np.zeros(C, np.int64)
        for g in grids:
            counts += np.bincount(g.labels[g.labels >= 0], minlength=C)
        if counts.sum() == 0:
            raise UserError("ckconv_grid: the training files hold no labelled cells")
        cells = np.array([max(1, int((g.labels >= 0).sum())) for g in grids], np.float64)
        self._grids, self._file_p = grids, cells / cells.sum()
        self.in_dim = grids[0].x.shape[-1]
        vdata = self._labelled_grids(val, "validation") if val else []
        # crops are drawn by file size: the network sees the cells' own shares (seen = counts)
        return TrainingData(counts, vdata, None, {"train_cell_counts": dict(zip(self.class_map.names, counts.tolist()))},
                            f"{cfg.mode}, {len(grids)} grids, {int(counts.sum()):,} labelled cells, "
                            f"batches of {cfg.batch_size} crops")

    def build_net(self):
        return self._build_net(self.in_dim)

    def train_step(self, step: int, rng: np.random.Generator, net: Any, ctx: TrainContext):
        import torch

        cfg, C = self.config, self.class_map.num_classes
        grids = self._grids
        batch = [self._crop(grids[int(rng.choice(len(grids), p=self._file_p))], rng) for _ in range(cfg.batch_size)]
        x, m, y = (torch.from_numpy(np.stack([b[i] for b in batch])).to(ctx.device) for i in range(3))
        logits = net(x, m).float()
        if (y >= 0).any():
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, C), y.reshape(-1), weight=self.loss_weights,
                                                     ignore_index=IGNORE)
        else:
            loss = logits.sum() * 0.0
        return loss, {}

    def val_labels(self, data: Any, device: str) -> tuple[np.ndarray, np.ndarray]:
        """Point labels: a point takes its cell's (voxel's) class, as in prediction."""
        g, ref = data
        return ref, self.predict_cells(g, device).reshape(-1, self.class_map.num_classes).argmax(-1)[g.point_index]

    # -- inference ----------------------------------------------------------------------
    def predict_cells(self, g: EncodedGrid, device: str = "cpu", anchor: np.ndarray | None = None) -> np.ndarray:
        """Blended softmax ``[*S, K * C]`` (``K`` height bands, softmax per band) over overlapping
        ``crop`` tiles on the lattice of absolute cells that starts at ``anchor``'s cell (x, y in
        metres; default: the grid's south-west cell), padded at the edges
        (``pipeline.models.tiling``); ``optim.amp`` autocast on CUDA, as in training."""
        import torch

        cfg, c = self.config, self.config.crop
        grid = g.raw.grid
        rows, cols = g.mask.shape[:2]
        bottom = grid.row_top - rows + 1                          # floor(y / s) of the southern row
        ax, ay = ((grid.col0, bottom) if anchor is None
                  else (int(np.floor(anchor[0] / grid.cell_size)), int(np.floor(anchor[1] / grid.cell_size))))
        tent = tent_weight(c, g.mask.ndim - 2)
        C, K = self.class_map.num_classes, self.bands
        acc = np.zeros(g.mask.shape + (K * C,), np.float32)
        wsum = np.zeros(g.mask.shape + (1,), np.float32)
        # a tile over absolute rows [t, t + c) (northwards) starts at array row row_top - t - c + 1
        tiles = [(grid.row_top - t - c + 1, u - grid.col0)
                 for t in lattice_starts(bottom, rows, c, cfg.overlap, ay)
                 for u in lattice_starts(grid.col0, cols, c, cfg.overlap, ax)]
        net = self.net.to(device).eval()
        with torch.no_grad(), amp_autocast(cfg.optim, device):
            for i in range(0, len(tiles), cfg.batch_size):
                part = tiles[i:i + cfg.batch_size]
                xb = np.stack([window(g.x, r, q, c, 0.0) for r, q in part])
                mb = np.stack([window(g.mask, r, q, c, False) for r, q in part])
                logits = net(torch.from_numpy(xb).to(device), torch.from_numpy(mb).to(device)).float()
                logits = logits.unflatten(-1, (K, C))
                p = adjust_logits(logits, self.logit_bias).softmax(-1).flatten(-2).cpu().numpy()
                for j, (r, q) in enumerate(part):
                    r0, q0 = max(r, 0), max(q, 0)                  # the tile's part inside the grid
                    r1, q1 = min(r + c, rows), min(q + c, cols)
                    t = tent[r0 - r:r1 - r, q0 - q:q1 - q, ..., None]
                    acc[r0:r1, q0:q1] += p[j, r0 - r:r1 - r, q0 - q:q1 - q] * t
                    wsum[r0:r1, q0:q1] += t
        return acc / wsum

    #: peak process memory per point of a whole cloud predicted at once (pipeline.windows)
    bytes_per_point = 300.0

    @property
    def context(self) -> float:
        """Metres around a point its label (and its map cell) depends on: a whole tile's width
        (a cell near a tile's edge sees the far edge) plus the ground model's window
        (``pipeline.windows`` joins the windows' maps)."""
        return self.config.crop * self.config.cell_size + self.config.ground_window

    def predict(self, cloud: PointCloud, device: str = "cpu", anchor: np.ndarray | None = None,
                targets: np.ndarray | None = None) -> Prediction:
        """Per-point probabilities (each point takes its cell's / voxel's) and, with ``geotiff``,
        the 2-D map (voxel mode: the top-most occupied voxel of each column). Every point is
        predicted (``targets`` changes nothing: the grid is one pass)."""
        g = self._grid(cloud, None)
        if g.x.shape[-1] != self.in_dim:
            raise DataError(cloud.source, f"grid has {g.x.shape[-1]} input channels, the model {self.in_dim}")
        cells = self.predict_cells(g, device, anchor)
        proba = cells.reshape(-1, self.class_map.num_classes)[g.point_index].astype(np.float32)
        if not self.config.geotiff:
            return Prediction(proba)
        # the 2-D map: each column's highest occupied layer (voxel level, or height band)
        if self.config.mode == "raster":
            layers = cells.reshape(g.mask.shape + (self.bands, -1))
            occ = g.band_mask if g.band_mask is not None else g.mask[..., None]
        else:
            layers, occ = cells, g.mask
        mask2 = occ.any(-1)
        top = occ.shape[-1] - 1 - np.argmax(occ[..., ::-1], axis=-1)
        p2 = np.take_along_axis(layers, top[..., None, None], axis=2)[:, :, 0]
        product = GridProduct(g.raw.grid, p2.argmax(-1), p2.astype(np.float32), mask2,
                              f"{self.config.mode}, {self.config.cell_size:g} m", preview=self.config.preview)
        return Prediction(proba, product)

    def predict_proba(self, cloud: PointCloud, device: str = "cpu") -> np.ndarray:
        """``[N, C]`` float32: :meth:`predict`'s per-point probabilities."""
        return self.predict(cloud, device).proba

    # -- bundle -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        import torch

        bias = None if self.logit_bias is None else torch.from_numpy(np.asarray(self.logit_bias, np.float32))
        torch.save({"in_dim": self.in_dim, "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
                    "logit_bias": bias}, folder / "ckconv_grid.pt")

    @classmethod
    def load(cls, config: "CKConvGridModel.Config", class_map: ClassMap, folder: Path) -> "CKConvGridModel":
        import torch

        model = cls(config, class_map)
        state = load_torch_file(folder, "ckconv_grid.pt")
        if not isinstance(state, dict) or not isinstance(state.get("in_dim"), int) or "state_dict" not in state:
            raise UserError(f"{folder}: broken bundle: ckconv_grid.pt lacks 'in_dim' / 'state_dict'")
        load_weights(model._build_net(int(state["in_dim"])), state["state_dict"], folder, "ckconv_grid.pt")
        bias = state.get("logit_bias")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (class_map.num_classes,)):
            raise UserError(f"{folder}: broken bundle: ckconv_grid.pt 'logit_bias' must hold one value per class")
        model.logit_bias = None if bias is None else bias.numpy().astype(np.float32)
        model.net.eval()
        return model


__all__ = ["CKConvGridModel", "KernelConfig", "GridOptimConfig"]
