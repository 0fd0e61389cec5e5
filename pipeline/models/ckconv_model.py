"""``type: ckconv_grid``: CKConvND segmentation of rasters (2-D) or voxel grids (3-D).

Each cloud becomes a grid (``data.grids``): ``mode: raster`` -> ``[rows, cols]`` cells of
``cell_size`` m; ``mode: voxel`` -> ``[rows, cols, levels]`` voxels of ``cell_size`` x
``cell_size`` x ``voxel_height`` m stacked from the local ground estimate up (points higher
than the top layer fall into it). The network (``ckconv_net.CKConvSegNet``) predicts class
probabilities per cell/voxel; training draws random ``crop`` x ``crop`` (x all levels)
windows with random rot90/flips, cross-entropy on labelled cells only (cell label:
``label_rule`` majority or top-most point; ignored codes and empty cells carry no loss),
AdamW (``ckconv.param_groups``), linear warm-up then cosine decay.

Inputs per cell (fixed scalings, no statistics to store): raster ``hag_min/10``,
``hag_max/10``, ``hag_mean/10``, ``log1p(count)/3``, ``multi_return``, optional intensity
(divided by the cloud's median cell intensity), and the occupancy mask; empty cells are 0
with mask 0. Voxel: occupancy, ``log1p(count)/3``, ``hag_mean/10``, ``multi_return``,
optional intensity, and the layer's height ``(level + 0.5) * voxel_height / 10``.

Prediction: the grid is cut into ``crop``-sized tiles (padded with empty cells at the
edges, overlapping by ``overlap``), softmax outputs are blended with a tent weight.

Per-point probabilities (``predict_proba``):

- voxel mode: a point takes its voxel's probabilities;
- raster mode (the 2-D height rule): a point takes its cell's probabilities whatever its
  height, so every point of a column gets the same class. With ``label_rule: majority``
  the raster learns the column's majority class, with ``top`` the top surface (ground
  under trees then reads as vegetation). Use ``mode: voxel`` to separate layers.

Grid outputs (``write_grid_outputs``, called by the predict writer): ``<stem>_class.tif``
(input codes, nodata 255/65535), ``<stem>_proba.tif`` when probabilities are asked
(float32 per class, nodata -1) and ``<stem>_class.png`` (preview with legend), in the
cloud's CRS, origin on multiples of ``cell_size``. Voxel mode maps the top-most occupied
voxel of each column.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError
from data.io import read_cloud
from data.pointcloud import PointCloud
from pipeline.progress import log, progress
from pipeline.registry import MODELS

from .base import TrainContext

KernelType = Literal["SIRENKernelND", "BlockDiagonalLearnableOmegaSIRENKernelND"]


@dataclass
class KernelConfig:
    type: KernelType = "SIRENKernelND"
    hidden: int = 32          # SIREN width (embedding and hidden layers)
    layers: int = 3           # SIREN num_layers (>= 2)
    omega_0: float = 10.0     # SIREN omega_0 (block-diagonal: omega_0_max)
    omega_blocks: int = 4     # block-diagonal kernel: num_blocks (divides hidden and the net width)

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.layers < 2 or self.omega_0 <= 0 or self.omega_blocks < 1:
            raise UserError("kernel: hidden >= 1, layers >= 2, omega_0 > 0, omega_blocks >= 1 expected")


@dataclass
class _Grid:
    """One cloud as network input: x [*S, F], mask [*S], labels [*S] or None, point index."""

    x: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    point_index: np.ndarray
    raw: Any                  # data.grids.Raster / Voxels


@MODELS.register("ckconv_grid")
class CKConvGridModel:
    @dataclass
    class Config:
        mode: Literal["raster", "voxel"] = "raster"
        cell_size: float = 1.0
        voxel_height: float = 1.0
        levels: int = 24                  # voxel layers above the local ground
        ground_window: float = 10.0       # m, local ground = min z in this window
        label_rule: Literal["majority", "top"] = "majority"
        intensity: bool = False           # raw intensity differs between sensors
        hidden: int = 32
        blocks: int = 4
        kernel: KernelConfig = field(default_factory=KernelConfig)
        window: bool = True               # exponential window on the kernels
        film: bool = False                # FiLM kernels conditioned on a register pooling of the tile
        cond_dim: int = 16
        registers: int = 4
        dropout: float = 0.1
        crop: int = 64                    # training crop / prediction tile, cells per side
        overlap: float = 0.25             # prediction tile overlap (fraction of crop)
        batch_size: int = 8
        steps: int = 2000
        lr: float = 2e-3
        weight_decay: float = 0.01
        warmup: int = 100
        class_weights: bool = True        # inverse-sqrt-frequency cross-entropy weights
        geotiff: bool = True              # write <stem>_class.tif (+ .png) next to predictions
        preview: bool = True

        def __post_init__(self) -> None:
            if self.cell_size <= 0 or self.voxel_height <= 0 or self.ground_window <= 0:
                raise UserError("cell_size, voxel_height and ground_window must be > 0")
            if self.levels < 2 or self.crop < 4 or self.hidden < 1 or self.blocks < 1 or self.batch_size < 1:
                raise UserError("levels >= 2, crop >= 4, hidden >= 1, blocks >= 1, batch_size >= 1 expected")
            if not 0 <= self.overlap < 1 or not 0 <= self.dropout < 1 or self.steps < 1:
                raise UserError("overlap and dropout in [0, 1), steps >= 1 expected")
            if self.kernel.type != "SIRENKernelND" and (self.hidden % self.kernel.omega_blocks
                                                       or self.kernel.hidden % self.kernel.omega_blocks):
                raise UserError(f"kernel.omega_blocks={self.kernel.omega_blocks} must divide hidden "
                                f"({self.hidden}) and kernel.hidden ({self.kernel.hidden})")

    def __init__(self, config: "CKConvGridModel.Config", class_map: ClassMap):
        self.config = config
        self.class_map = class_map
        self.net = None
        self.in_dim: int | None = None
        self._last: tuple | None = None   # (cloud id, grid2d, class idx [r,c], proba [r,c,C], mask [r,c])

    # -- grids --------------------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return 2 if self.config.mode == "raster" else 3

    def _grid(self, cloud: PointCloud, labels: np.ndarray | None) -> _Grid:
        from data.grids import rasterize, voxelize

        cfg = self.config
        fields = {k: v for k, v in cloud.fields.items() if k in ("intensity", "number_of_returns")}
        try:
            if cfg.mode == "raster":
                g = rasterize(cloud.xyz, fields, cfg.cell_size, labels=labels, label_rule=cfg.label_rule,
                              ground_window=cfg.ground_window)
                mask = g.mask
            else:
                g = voxelize(cloud.xyz, fields, cfg.cell_size, cfg.voxel_height, cfg.levels, vertical="ground",
                             labels=labels, label_rule=cfg.label_rule, ground_window=cfg.ground_window)
                mask = g.occupancy
        except ValueError as exc:
            raise DataError(cloud.source, f"cannot build the grid: {exc}") from None
        f = {n: np.nan_to_num(g.features[..., i], nan=0.0) for i, n in enumerate(g.feature_names)}
        if "multi_return" not in f:
            raise DataError(cloud.source, "has no 'number_of_returns' field (needed by ckconv_grid)")
        cols = []
        if cfg.mode == "raster":
            cols += [f["hag_min"] / 10, f["hag_max"] / 10, f["hag_mean"] / 10]
        else:
            level_h = (np.arange(cfg.levels, dtype=np.float32) + 0.5) * cfg.voxel_height / 10
            cols += [mask.astype(np.float32), f["hag_mean"] / 10, np.broadcast_to(level_h, mask.shape)]
        cols += [np.log1p(f["count"]) / 3, f["multi_return"]]
        if cfg.intensity:
            if "intensity" not in f:
                raise DataError(cloud.source, "has no 'intensity' field (intensity: true)")
            med = float(np.median(f["intensity"][mask])) if mask.any() else 1.0
            cols.append(f["intensity"] / max(med, 1e-6))
        cols.append(mask.astype(np.float32))
        x = np.stack(cols, -1).astype(np.float32)
        x[~mask] = 0.0
        index = g.point_cell if cfg.mode == "raster" else g.point_voxel
        return _Grid(x, mask, g.labels, index, g)

    def _build_net(self, in_dim: int):
        from .ckconv_net import CKConvSegNet

        cfg, k = self.config, self.config.kernel
        L = (cfg.crop, cfg.crop) if cfg.mode == "raster" else (cfg.crop, cfg.crop, cfg.levels)
        self.in_dim = in_dim
        self.net = CKConvSegNet(self.data_dim, in_dim, self.class_map.num_classes, hidden=cfg.hidden,
                                num_blocks=cfg.blocks, kernel_type=k.type, kernel_hidden=k.hidden,
                                kernel_layers=k.layers, omega_0=k.omega_0, omega_blocks=k.omega_blocks,
                                L_cache=L, window=cfg.window, film=cfg.film, cond_dim=cfg.cond_dim,
                                registers=cfg.registers, dropout=cfg.dropout)
        return self.net

    # -- training -----------------------------------------------------------------------
    def _crop(self, g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config.crop
        rows, cols = g.mask.shape[:2]
        r0 = int(rng.integers(0, rows - c + 1)) if rows > c else 0
        c0 = int(rng.integers(0, cols - c + 1)) if cols > c else 0
        x = np.zeros((c, c) + g.x.shape[2:], np.float32)
        m = np.zeros((c, c) + g.mask.shape[2:], bool)
        y = np.full((c, c) + g.mask.shape[2:], IGNORE, np.int64)
        h, w = min(c, rows), min(c, cols)
        x[:h, :w] = g.x[r0:r0 + h, c0:c0 + w]
        m[:h, :w] = g.mask[r0:r0 + h, c0:c0 + w]
        y[:h, :w] = g.labels[r0:r0 + h, c0:c0 + w]
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        out = []
        for a in (x, m, y):
            a = np.rot90(a, k, axes=(0, 1))
            out.append(np.ascontiguousarray(a[:, ::-1] if flip else a))
        return out[0], out[1], out[2]

    def fit(self, train: list[Path], val: list[Path], ctx: TrainContext) -> dict[str, Any]:
        import torch

        from ckconv import param_groups

        cfg = self.config
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        grids = []
        for path in progress(train, "grids (train)", unit="file"):
            cloud = read_cloud(path)
            labels = self.class_map.encode(_classification(cloud), path)
            grids.append(self._grid(cloud, labels))
        counts = np.zeros(self.class_map.num_classes, np.int64)
        for g in grids:
            lab = g.labels[g.labels >= 0]
            counts += np.bincount(lab, minlength=self.class_map.num_classes)
        if counts.sum() == 0:
            raise UserError("ckconv_grid: the training files hold no labelled cells")
        cells = np.array([max(1, int((g.labels >= 0).sum())) for g in grids], np.float64)
        file_p = cells / cells.sum()
        net = self._build_net(grids[0].x.shape[-1]).to(ctx.device)
        weight = None
        if cfg.class_weights:
            w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
            w = w / (w[counts > 0].mean())
            weight = torch.tensor(w, dtype=torch.float32, device=ctx.device)
        opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay, cfg.lr))
        steps = cfg.steps if ctx.limit_steps is None else max(1, min(cfg.steps, ctx.limit_steps))
        warm = min(cfg.warmup, max(1, steps // 10))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
        log(f"ckconv_grid ({cfg.mode}): {len(grids)} grids, {int(counts.sum()):,} labelled cells, "
            f"{sum(p.numel() for p in net.parameters()):,} parameters, {steps} steps on {ctx.device}")
        net.train()
        losses = []
        for step in progress(range(steps), "train", unit="step"):
            batch = [self._crop(grids[int(rng.choice(len(grids), p=file_p))], rng) for _ in range(cfg.batch_size)]
            x = torch.from_numpy(np.stack([b[0] for b in batch])).to(ctx.device)
            m = torch.from_numpy(np.stack([b[1] for b in batch])).to(ctx.device)
            y = torch.from_numpy(np.stack([b[2] for b in batch])).to(ctx.device)
            logits = net(x, m)
            if (y >= 0).any():
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                         weight=weight, ignore_index=IGNORE)
            else:
                loss = logits.sum() * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 100 == 0:
                log(f"step {step + 1}/{steps}: loss {np.mean(losses[-100:]):.4f}")
        net.eval()
        summary: dict[str, Any] = {"steps": steps, "final_loss": float(np.mean(losses[-20:])),
                                   "train_cell_counts": dict(zip(self.class_map.names, counts.tolist()))}
        if not np.isfinite(summary["final_loss"]):
            raise UserError("ckconv_grid: training diverged (non-finite loss); lower lr")
        if val:
            from pipeline.evaluation import confusion_matrix, metrics_from_confusion

            cm = np.zeros((self.class_map.num_classes,) * 2, dtype=np.int64)
            for path in progress(val, "validation", unit="file"):
                cloud = read_cloud(path)
                ref = self.class_map.encode(_classification(cloud), path)
                cm += confusion_matrix(ref, self.predict_proba(cloud, ctx.device).argmax(1), self.class_map.num_classes)
            summary["val_miou"] = metrics_from_confusion(cm, self.class_map.names)["miou"]
            log(f"validation mIoU {summary['val_miou']:.4f}")
        return summary

    # -- inference ----------------------------------------------------------------------
    def predict_cells(self, g: _Grid, device: str = "cpu") -> np.ndarray:
        """Blended softmax ``[*S, C]`` over overlapping ``crop`` tiles (padded at the edges)."""
        import torch

        cfg, c = self.config, self.config.crop
        rows, cols = g.mask.shape[:2]
        stride = max(1, int(round(c * (1 - cfg.overlap))))

        def starts(n: int) -> list[int]:
            if n <= c:
                return [0]
            s = list(range(0, n - c + 1, stride))
            return s if s[-1] == n - c else s + [n - c]

        ramp = np.minimum(np.arange(c) + 1, c - np.arange(c)).astype(np.float32)
        tent = np.outer(ramp, ramp) / ramp.max() ** 2
        tent = tent.reshape((c, c) + (1,) * (g.mask.ndim - 2))
        acc = np.zeros(g.mask.shape + (self.class_map.num_classes,), np.float32)
        wsum = np.zeros(g.mask.shape + (1,), np.float32)
        tiles = [(r, q) for r in starts(rows) for q in starts(cols)]
        net = self.net.to(device).eval()
        with torch.no_grad():
            for i in range(0, len(tiles), cfg.batch_size):
                part = tiles[i:i + cfg.batch_size]
                xb = np.zeros((len(part), c, c) + g.x.shape[2:], np.float32)
                mb = np.zeros((len(part), c, c) + g.mask.shape[2:], bool)
                for j, (r, q) in enumerate(part):
                    h, w = min(c, rows - r), min(c, cols - q)
                    xb[j, :h, :w] = g.x[r:r + h, q:q + w]
                    mb[j, :h, :w] = g.mask[r:r + h, q:q + w]
                p = net(torch.from_numpy(xb).to(device), torch.from_numpy(mb).to(device)).softmax(-1).cpu().numpy()
                for j, (r, q) in enumerate(part):
                    h, w = min(c, rows - r), min(c, cols - q)
                    acc[r:r + h, q:q + w] += p[j, :h, :w] * tent[:h, :w, ..., None]
                    wsum[r:r + h, q:q + w] += tent[:h, :w, ..., None]
        return acc / wsum

    def predict_proba(self, cloud: PointCloud, device: str = "cpu") -> np.ndarray:
        g = self._grid(cloud, None)
        if g.x.shape[-1] != self.in_dim:
            raise DataError(cloud.source, f"grid has {g.x.shape[-1]} input channels, the model {self.in_dim}")
        cells = self.predict_cells(g, device)
        ncls = self.class_map.num_classes
        proba = cells.reshape(-1, ncls)[g.point_index].astype(np.float32)
        # 2-D products for write_grid_outputs (voxel mode: top-most occupied voxel per column)
        if self.config.mode == "raster":
            mask2, p2 = g.mask, cells
        else:
            occ = g.mask
            mask2 = occ.any(-1)
            top = occ.shape[-1] - 1 - np.argmax(occ[..., ::-1], axis=-1)
            p2 = np.take_along_axis(cells, top[..., None, None], axis=2)[:, :, 0]
        self._last = (id(cloud), g.raw.grid, p2.argmax(-1), p2.astype(np.float32), mask2)
        return proba

    def write_grid_outputs(self, cloud: PointCloud, out_dir: Path, stem: str, probabilities: bool = False,
                           device: str = "cpu") -> list[Path]:
        """GeoTIFF class map (+ probabilities) and PNG preview of ``cloud``'s last prediction."""
        from data.geotiff import crs_of, write_class_map, write_preview, write_probability_map

        if not self.config.geotiff:
            return []
        if self._last is None or self._last[0] != id(cloud):
            self.predict_proba(cloud, device)
        _, grid, idx, p2, mask2 = self._last
        codes = self.class_map.output_codes[idx]
        crs = crs_of(cloud)
        if crs is None:
            log(f"{stem}: no CRS in the input; GeoTIFF written without one")
        out_dir = Path(out_dir)
        kw = dict(class_names=self.class_map.names, class_codes=self.class_map.output_codes.tolist())
        written = [write_class_map(out_dir / f"{stem}_class.tif", grid, codes, mask=mask2, crs=crs, **kw)]
        if probabilities:
            written.append(write_probability_map(out_dir / f"{stem}_proba.tif", grid, p2, mask2, crs=crs,
                                                 class_names=self.class_map.names))
        if self.config.preview:
            written.append(write_preview(out_dir / f"{stem}_class.png", grid, np.where(mask2, idx, -1), mask2,
                                         title=f"{stem} ({self.config.mode}, {self.config.cell_size:g} m)", **kw))
        return written

    # -- bundle -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        import torch

        torch.save({"in_dim": self.in_dim, "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()}},
                   folder / "ckconv_grid.pt")

    @classmethod
    def load(cls, config: "CKConvGridModel.Config", class_map: ClassMap, folder: Path) -> "CKConvGridModel":
        import torch

        model = cls(config, class_map)
        state = torch.load(folder / "ckconv_grid.pt", map_location="cpu", weights_only=True)
        model._build_net(int(state["in_dim"])).load_state_dict(state["state_dict"])
        model.net.eval()
        return model


def _classification(cloud: PointCloud) -> np.ndarray:
    if not cloud.has("classification"):
        raise DataError(cloud.source, "has no 'classification' field; training and evaluation need reference labels")
    return cloud.fields["classification"]


__all__ = ["CKConvGridModel", "KernelConfig"]
