"""Labelling files with a model: read each cloud, predict it, write it labelled.

:func:`predict_with_bundle` (what ``run.py predict`` and a spec's predict step both call)
labels files with a loaded :class:`~pipeline.bundle.Bundle`; :func:`predict_files` with any
model component.

For every input cloud, one output file with the same stem holding all input points in input
order, all input dimensions, header, VLRs and CRS, plus the predicted codes and per-point
extras in one of the layouts of ``pipeline.layouts`` (default ``lidarseg``:
``classification`` = predicted code (first code of the class), ``classification_ref`` = the
input's, ``confidence``, ``entropy``, optionally ``prob_<class>``; ``myria3d``: a new
``PredictedClassification``, ``entropy`` and one dimension per class), optionally with
vegetation written back as ASPRS 3/4/5 by height above the ground model. Format ``copc``
writes ``<stem>.copc.laz`` instead (``data.copc``): the same points, dimensions, VLRs and CRS
in a LAS 1.4 point format, in octree order.

A model's :class:`~pipeline.models.base.Prediction` may carry a 2-D
:class:`~pipeline.models.base.GridProduct` (grid models, e.g. ``ckconv_grid``); it is written
next to the labelled cloud: ``<stem>_class.tif`` (input codes), ``<stem>_proba.tif`` when
probabilities are asked, ``<stem>_class.png`` (preview), in the cloud's CRS.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data.atomic import make_folder, remove_stale_temporaries
from data.locks import LOCK_NAME, folder_lock
from data.classmap import ClassMap
from data.errors import DataError, EmptyWindowError, UserError
from data.bounds import Bounds
from data.copc import copc_format_problem, copc_output
from data.io import HeaderInfo, cloud_format, read_cloud, read_header_info, write_cloud
from data.pointcloud import PointCloud
from data.render import render_classes
from geometry.heights import height_above_ground

from . import distributed
from .audit import bbox_density, density_warning
from .batch import Ledger, take_shard
from .buffers import NeighbourContext, own_part
from .layouts import LAYOUTS, prediction_and_reference, split_vegetation
from .models.base import GridProduct, Model
from .progress import log, progress
from .window_grid import memory_budget, window_size
from .windows import predict_windowed

if TYPE_CHECKING:
    from .bundle import Bundle


@dataclass(frozen=True)
class Memory:
    """How large a file may be predicted at once: ``budget`` bytes of process memory (a larger
    file is predicted in windows sized for it, ``pipeline.windows``); ``window``: a fixed window
    side in metres instead."""

    budget: float = field(default_factory=lambda: memory_budget(None))
    window: float | None = None


def label_outputs(proba: np.ndarray, class_map: ClassMap) -> dict[str, np.ndarray]:
    """``[N, C]`` probabilities -> codes ``[N]``, confidence ``[N]``, entropy ``[N]``."""
    proba = np.asarray(proba, dtype=np.float32)
    p = np.clip(proba, 0.0, 1.0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return {"codes": class_map.decode(proba.argmax(1)), "confidence": p.max(1).astype(np.float32),
            "entropy": (-(p * logp).sum(1)).astype(np.float32)}


@dataclass(frozen=True)
class OutputOptions:
    """What a labelled cloud holds besides the predicted code (``pipeline.layouts``)."""

    probabilities: bool = False                       # per-class probability dimensions
    layout: str = "lidarseg"                          # a key of ``LAYOUTS``
    vegetation_heights: tuple[float, float] | None = None   # ASPRS 3/4/5 split, metres above ground
    preview: bool = False                             # <stem>_view.png (data.render)


def labelled_cloud(cloud: PointCloud, proba: np.ndarray, class_map: ClassMap,
                   options: OutputOptions = OutputOptions()) -> tuple[PointCloud, dict[str, np.ndarray]]:
    """The cloud with the predicted codes stored as ``options.layout`` says, and the extra
    dimensions to write (``pipeline.layouts``)."""
    if proba.shape != (len(cloud), class_map.num_classes) or not np.isfinite(proba).all():
        raise DataError(cloud.source, f"model returned probabilities of shape {proba.shape} "
                                      f"(expected {(len(cloud), class_map.num_classes)}, finite)")
    lay = LAYOUTS[options.layout]
    out = label_outputs(proba, class_map)
    codes = out["codes"]
    if options.vegetation_heights is not None:
        codes = split_vegetation(codes, proba.argmax(1), class_map, height_above_ground(cloud.xyz, source=cloud.source),
                                 options.vegetation_heights)
    fields = dict(cloud.fields)
    extras: dict[str, np.ndarray] = {"confidence": out["confidence"]} if lay.confidence else {}
    extras["entropy"] = out["entropy"]
    narrow = np.uint8 if codes.max(initial=0) <= 255 else np.uint16
    if lay.reference is None:                          # a new dimension; classification untouched
        extras[lay.prediction] = codes.astype(narrow)
    else:
        dtype = narrow
        if "classification" in fields:
            ref = fields["classification"]
            extras[lay.reference] = ref.copy()
            dtype = ref.dtype if np.issubdtype(ref.dtype, np.integer) else np.uint16
        fields["classification"] = codes.astype(dtype)
    if options.probabilities or lay.always_probabilities:
        for i, name in enumerate(class_map.names):
            dim = lay.probability.format(name)
            if dim in fields or dim in extras:
                raise DataError(cloud.source, f"class {name!r}: its probability dimension {dim!r} would replace "
                                              f"the input's {dim!r} (rename the class or use layout 'lidarseg')")
            extras[dim] = proba[:, i].astype(np.float32)
    return PointCloud(cloud.xyz, fields, cloud.meta, cloud.source), extras


def write_view(labelled: PointCloud, extras: dict[str, np.ndarray], class_map: ClassMap, path: Path,
               stem: str) -> Path:
    """Top and oblique views of a labelled cloud; beside the input's classification, with the
    points whose class differs, when the input had one."""
    fields = {**labelled.fields, **extras}
    predicted, reference = prediction_and_reference(fields)
    ref = fields.get(reference)
    title = f"{stem}: prediction against the input's classification" if ref is not None else stem
    return render_classes(path, labelled.xyz, fields[predicted], ref, class_map, title)


def output_path(path: Path, out_dir: Path, fmt: str = "same") -> Path:
    """Where ``path`` labelled goes: ``out_dir/<stem><suffix>``; the suffix is the input's for
    ``same``, ``.copc.laz`` for ``copc`` (a ``.copc`` ending of the stem is not repeated)."""
    if fmt == "copc":
        stem = path.stem[:-5] if path.stem.lower().endswith(".copc") else path.stem
        return out_dir / f"{stem}.copc.laz"
    suffix = cloud_format(path) if fmt == "same" else f".{fmt}"
    return out_dir / f"{path.stem}{suffix}"


def write_grid_product(product: GridProduct, cloud: PointCloud, class_map: ClassMap, out_dir: Path, stem: str,
                       probabilities: bool) -> list[Path]:
    """GeoTIFF class map (+ probabilities) and PNG preview of a grid prediction."""
    from data.geotiff import crs_of, write_class_map, write_preview, write_probability_map

    crs = crs_of(cloud)
    if crs is None:
        log(f"{stem}: no CRS in the input; GeoTIFF written without one")
    empty = 1.0 - float(np.mean(product.mask))
    if empty > 0.5:
        log(f"warning: {stem}: {empty:.0%} of the {product.grid.cell_size:g} m raster's cells hold no point "
            f"(sparse input for this cell size: predict with a larger grid cell or a denser scan)")
    codes = class_map.output_codes[product.class_index]
    kw = dict(class_names=class_map.names, class_codes=class_map.output_codes.tolist())
    written = [write_class_map(out_dir / f"{stem}_class.tif", product.grid, codes, mask=product.mask, crs=crs, **kw)]
    if probabilities:
        written.append(write_probability_map(out_dir / f"{stem}_proba.tif", product.grid, product.proba,
                                             product.mask, crs=crs, class_names=class_map.names))
    if product.preview:
        written.append(write_preview(out_dir / f"{stem}_class.png", product.grid,
                                     np.where(product.mask, product.class_index, -1), product.mask,
                                     title=f"{stem} ({product.title})", **kw))
    return written


def _window(model: Model, info: HeaderInfo | None, bounds: Bounds | None, memory: Memory,
            clipped: bool = True) -> float | None:
    """The window side in m to predict a LAS/LAZ file of header ``info`` with
    (``pipeline.windows``), or None: whole (a PLY file, ``info`` None, or a model without a context).
    ``clipped``: the windows' halos end at the file's box (no neighbouring files as context), so
    edge windows may be larger (``window_size(extent=...)``)."""
    halo = getattr(model, "context", None)
    if halo is None or info is None:
        return None
    if memory.window is not None:
        return memory.window
    lo, hi = np.asarray(info.mins[:2], float), np.asarray(info.maxs[:2], float)
    area = float(np.prod(np.maximum(hi - lo, 1.0)))
    points = info.point_count
    if bounds is not None:              # the part inside the window, at the file's mean density
        part = bounds.clipped(lo, hi)
        if part is not None:
            points = int(points * min(1.0, (part.xmax - part.xmin) * (part.ymax - part.ymin) / area))
            area = max((part.xmax - part.xmin) * (part.ymax - part.ymin), 1.0)
            lo, hi = np.array([part.xmin, part.ymin]), np.array([part.xmax, part.ymax])
    extent = (float(hi[0] - lo[0]), float(hi[1] - lo[1])) if clipped else None
    return window_size(points, area, halo, model.bytes_per_point, memory.budget, extent)


def _predict_one(model: Model, class_map: ClassMap, path: Path, out_dir: Path, device: str,
                 options: OutputOptions, fmt: str, train_density: dict[str, float] | None,
                 context: tuple[NeighbourContext, int] | None = None,
                 bounds: Bounds | None = None, memory: "Memory" = None) -> tuple[Path, Path]:
    if fmt != "same" and path.suffix.lower() == ".ply":
        raise DataError(path, f"cannot write PLY input as {fmt.upper()}; use format 'same'")
    copc = fmt == "copc"
    info = None if cloud_format(path) == ".ply" else read_header_info(path)
    problem = copc_format_problem(info.point_format) if copc else None
    if problem:
        raise DataError(path, f"{problem}; use --format laz")
    target = output_path(path, out_dir, fmt)
    size = _window(model, info, bounds, memory or Memory(), clipped=context is None)
    if size is not None:
        warning = density_warning(path.name, bbox_density(info), train_density)
        if warning:
            log(warning)

        def view(sample: PointCloud) -> None:
            written = write_view(sample, {}, class_map, out_dir / f"{path.stem}_view.png", path.stem)
            log(f"{path.name}: -> {written} ({len(sample):,} of its {info.point_count:,} points)")

        def maps(product: GridProduct, meta: PointCloud) -> None:
            for written in write_grid_product(product, meta, class_map, out_dir, path.stem, options.probabilities):
                log(f"{path.name}: -> {written}")

        with copc_output(target) if copc else nullcontext(target) as dest:
            predict_windowed(model, class_map, path, dest, device=device, grid_size=size, halo=model.context,
                             anchor=np.asarray(info.mins, np.float64), las14=copc, context=context,
                             view=view if options.preview else None,
                             bounds=bounds, maps=maps,
                             label=lambda cloud, proba: labelled_cloud(cloud, proba, class_map, options))
        log(f"{path.name}: {info.point_count:,} points -> {target}")
        return path, target
    cloud = read_cloud(path, bounds=bounds)
    problem = getattr(cloud.meta, "write_problem", None)
    if problem:                   # refused before the prediction, not after it
        raise DataError(path, problem)
    warning = density_warning(path.name, bbox_density(cloud.xyz), train_density)
    if warning:
        log(warning)
    if context is None:
        result = model.predict(cloud, device)
    else:
        buffered = context[0].with_context(context[1], cloud)
        if len(buffered) > len(cloud):
            log(f"{path.name}: {len(buffered) - len(cloud):,} points of neighbouring files as context")
        result = own_part(model.predict(buffered, device), cloud)
    labelled, extras = labelled_cloud(cloud, result.proba, class_map, options)
    with copc_output(target) if copc else nullcontext(target) as dest:
        write_cloud(labelled, dest, extra=extras, las14=copc)
    log(f"{path.name}: {len(cloud):,} points -> {target}")
    if options.preview:
        view = write_view(labelled, extras, class_map, out_dir / f"{path.stem}_view.png", path.stem)
        log(f"{path.name}: -> {view}")
    if result.grid is not None:
        for written in write_grid_product(result.grid, cloud, class_map, out_dir, path.stem, options.probabilities):
            log(f"{path.name}: -> {written}")
    return path, target


def predict_files(model: Model, class_map: ClassMap, inputs: list[Path], out_dir: Path, *, device: str = "cpu",
                  options: OutputOptions = OutputOptions(), fmt: str = "same",
                  train_density: dict[str, float] | None = None, buffer: float = 0.0,
                  bounds: Bounds | None = None, model_id: str | None = None,
                  shard: tuple[int, int] | None = None, memory: Memory | None = None) -> list[tuple[Path, Path]]:
    """Label every file of ``inputs`` into ``out_dir``; returns (input, output) pairs.

    Each output is written atomically. A file that fails is reported and skipped; the others
    are labelled, and the error at the end lists the failed ones (nothing of them is left).

    ``model_id`` (``pipeline.bundle.bundle_digest`` of the bundle): each output gets a sidecar
    (``OUT/.lidarseg/``), and an output whose sidecar matches its input, this model and these
    options is skipped, so a killed batch re-run redoes only what is missing. ``shard``
    ``(K, N)``: only ``sorted(inputs)[K::N]`` are labelled (a job array's worker K of N); the
    others are still context for a buffer. After the batch, ``OUT/index.vpc`` indexes every
    labelled LAS/LAZ in ``out_dir`` when it holds two or more (one QGIS layer), and
    ``OUT/index_class.vrt`` every class-map GeoTIFF of a grid model.

    ``train_density`` (the bundle summary's ``{median, min, max}`` points/m^2 of the training
    files) makes a file more than 5x sparser or denser than the training data a warning.

    ``buffer`` (metres, > 0): the other inputs' points within that distance of a file's bounds
    are context for its prediction and are not written (``pipeline.buffers``).

    ``bounds`` (``data.bounds``): only the points of each input inside that x/y window are
    predicted and written (COPC inputs decode only the octree nodes that meet it); inputs
    whose header bounds miss the window are skipped (a line says which), and with a buffer
    the points around the window are context.

    ``memory`` (:class:`Memory`): a LAS/LAZ file whose whole-file prediction would not fit the
    budget is predicted window by window (``pipeline.windows``), in memory that does not grow
    with the file.
    """
    everything = list(inputs)       # all of them are context for a buffer
    if shard is not None:
        inputs = take_shard(sorted(inputs), shard)
        log(f"--shard {shard[0]}/{shard[1]}: {len(inputs)} of the {len(everything)} input(s)")
        if not inputs:
            return []
    if bounds is not None:
        infos = [read_header_info(p) for p in inputs]
        kept = [p for p, i in zip(inputs, infos) if bounds.meets(i.mins, i.maxs)]
        if not kept:
            first = infos[0]
            raise UserError(f"--bounds {bounds}: none of the {len(inputs)} input(s) meets the window "
                            f"(first: {inputs[0].name} spans x {first.mins[0]:.2f}..{first.maxs[0]:.2f}, "
                            f"y {first.mins[1]:.2f}..{first.maxs[1]:.2f})")
        outside = [p for p in inputs if p not in kept]
        if outside:
            log(f"--bounds {bounds}: {len(outside)} input(s) outside the window skipped "
                f"({', '.join(p.name for p in outside[:5])}{', ...' if len(outside) > 5 else ''})")
        inputs = kept
    sources = {p.resolve() for p in inputs}
    clash = [p for p in inputs if output_path(p, out_dir, fmt).resolve() in sources]
    if clash:
        raise UserError(f"--out {out_dir}: would overwrite the input {clash[0]} (inputs are never overwritten; "
                        "choose another output folder)")
    stems = [p.stem for p in inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise DataError(inputs[stems.index(dup.pop())], "two inputs share this file stem; outputs would collide")
    created = not out_dir.exists()
    make_folder(out_dir, "--out")
    neighbours = NeighbourContext(everything, buffer, bounds) \
        if buffer > 0 and (len(everything) > 1 or bounds is not None) else None
    position = {path: i for i, path in enumerate(everything)}
    mine = distributed.shard(inputs)     # torchrun: inputs[rank::world]; else all of them
    ledger = Ledger(model_id or "", _options_signature(model, options, fmt, buffer, bounds), len(mine))
    done: list[tuple[Path, Path]] = []
    empty: list[Path] = []
    lock_name = LOCK_NAME if shard is None else f".lidarseg.shard-{shard[0]}-of-{shard[1]}.lock"
    try:
        with folder_lock(out_dir, "--out", log, hold=distributed.is_main() or shard is not None, name=lock_name):
            for path in progress(mine, "predict", unit="file"):
                target = output_path(path, out_dir, fmt)
                if model_id and ledger.complete(path, target):
                    ledger.skipped += 1
                    done.append((path, target))
                    log(ledger.line(path.name, "skipped (complete from an earlier run)"))
                    continue
                remove_stale_temporaries(target)          # a killed run's
                t0 = time.perf_counter()
                try:
                    done.append(_predict_one(model, class_map, path, out_dir, device, options, fmt, train_density,
                                             None if neighbours is None else (neighbours, position[path]), bounds,
                                             memory))
                except EmptyWindowError:     # its header box meets the window, none of its points does
                    empty.append(path)
                    log(f"--bounds {bounds}: {path.name} holds no point inside the window; skipped")
                    continue
                except UserError as exc:
                    ledger.failed.append((path, str(exc)))
                    log(ledger.line(path.name, f"failed: {str(exc).splitlines()[0]}"))
                    continue
                if model_id:
                    ledger.record(path, target)
                ledger.done += 1
                log(ledger.line(path.name, f"done in {time.perf_counter() - t0:.1f} s"))
    finally:
        if not done and not distributed.active() and created and not any(out_dir.iterdir()):
            out_dir.rmdir()          # a failed run leaves no empty folder it made
    error = _batch_error(ledger, done, out_dir)
    if not distributed.active():
        if done:
            _write_index(out_dir)
        if error is None and not done and empty:
            error = UserError(f"--bounds {bounds}: none of the {len(empty)} input(s) whose bounds meet the window "
                              f"holds a point inside it (first: {empty[0]})")
        if error is not None:
            raise error
        if model_id and len(mine) > 1:
            log(f"predict: {ledger.summary()}")
        return done
    # torchrun: every rank finishes its own files first; then each failure is reported by its
    # rank, rank 0 says how many ranks failed, and every rank gets the whole list of outputs
    shared = distributed.all_gather(([(str(a), str(b)) for a, b in done], None if error is None else str(error)))
    if distributed.is_main() and any(part for part, _ in shared):
        _write_index(out_dir)              # once every rank's files are in place
    if error is not None:
        raise error
    failed = [(r, msg) for r, (_, msg) in enumerate(shared) if msg]
    if failed and distributed.is_main():
        raise UserError(f"{len(failed)} of {len(shared)} ranks failed (rank {failed[0][0]}: "
                        f"{failed[0][1].splitlines()[0]}); their other files are listed in their messages")
    pairs = [(Path(a), Path(b)) for part, _ in shared for a, b in part]
    return sorted(pairs, key=lambda pair: position[pair[0]])


def predict_with_bundle(bundle: "Bundle", inputs: list[Path], out_dir: Path, *, device: str = "cpu",
                        options: OutputOptions = OutputOptions(), fmt: str = "same", buffer: float = 0.0,
                        bounds: Bounds | None = None, shard: tuple[int, int] | None = None,
                        resumable: bool = True, memory: Memory | None = None) -> list[tuple[Path, Path]]:
    """:func:`predict_files` with a bundle's model, class map and training density; ``resumable``:
    sidecars record the bundle's digest, so a re-run skips the outputs already complete."""
    return predict_files(bundle.model, bundle.class_map, inputs, out_dir, device=device, options=options, fmt=fmt,
                         train_density=bundle.train_density, buffer=buffer, bounds=bounds,
                         model_id=bundle.digest() if resumable else None, shard=shard, memory=memory)


def _options_signature(model: Model, options: OutputOptions, fmt: str, buffer: float,
                       bounds: Bounds | None) -> dict:
    """What besides the weights changes an output (a sidecar must match it to be skipped)."""
    from dataclasses import asdict

    from .schema import to_plain

    return {"model_config": to_plain(getattr(model, "config", None)), "output": asdict(options), "format": fmt,
            "buffer": buffer, "bounds": None if bounds is None else bounds.as_list()}


def _batch_error(ledger: Ledger, done: list, out_dir: Path) -> UserError | None:
    """One error listing every failed file (the others are complete), or None."""
    if not ledger.failed:
        return None
    if len(ledger.failed) == 1 and not done and ledger.total == 1:
        return UserError(ledger.failed[0][1])
    listing = "\n".join(f"  {p}: {msg.splitlines()[0]}" for p, msg in ledger.failed)
    return UserError(f"{len(ledger.failed)} of {ledger.total} file(s) failed and were skipped:\n{listing}\n"
                     f"({len(done)} complete in {out_dir}; run the same command again to retry only the failed ones)")


def _write_index(out_dir: Path) -> None:
    """``OUT/index.vpc`` over every LAS/LAZ in ``out_dir``, and ``OUT/index_class.vrt`` over
    every class-map GeoTIFF, when there are two or more (one opens as it is); a failure to
    index is a warning."""
    from data.geotiff import write_mosaic
    from data.vpc import write_vpc

    clouds = sorted(p for p in out_dir.iterdir() if p.suffix.lower() in (".las", ".laz") and p.is_file())
    maps = sorted(out_dir.glob("*_class.tif"))
    for files, target, write in ((clouds, out_dir / "index.vpc", write_vpc),
                                 (maps, out_dir / "index_class.vrt", write_mosaic)):
        if len(files) < 2:
            continue
        try:
            write(files, target)
        except (UserError, OSError) as exc:
            log(f"warning: {target} not written ({exc})")
