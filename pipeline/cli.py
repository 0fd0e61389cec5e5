"""Command line (``lidarseg`` or ``python run.py``): run specs, predict with a bundle, evaluate predictions, validate specs.

    python run.py run SPEC [--set dotted.key=VALUE ...] [--out DIR] [--device cpu|cuda] [--limit-steps N]
    python run.py predict [--model BUNDLE_OR_NAME] --input PATH_OR_GLOB [...] --out DIR [--device ...]
    python run.py models
    python run.py evaluate --pred PATH_OR_GLOB [...] --ref PATH_OR_GLOB [...] --out DIR [--classes SPEC]
    python run.py validate SPEC
    python run.py inspect PATH_OR_GLOB [...] [--classes SPEC] [--out DIR]

User errors (bad spec, unreadable file, missing field) print one paragraph naming the file
and key, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP threads sleep between parallel regions instead of spinning: beside another busy
# process, spinning waiters slowed a KPConvX layer 2.3x; asleep 1.5x (benchmarks/README.md).
# Read once when torch loads, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipeline import distributed
from pipeline.layouts import LAYOUTS, OUTPUT_FORMATS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "lidarseg", description="LiDAR segmentation pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a spec: train, predict, evaluate ...",
                       description="Run every step of a spec (YAML or JSON).")
    p.add_argument("spec", help="spec file (.yaml, .yml or .json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value by dotted path, VALUE parsed as YAML (repeatable)")
    p.add_argument("--out", help="output folder (default: the spec's 'output')")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--limit-steps", type=int, metavar="N",
                   help="a trial: every training step runs N optimisation steps, its schedule (warm-up "
                        "included) scaled to N")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop every training step after step N with a checkpoint (schedule unchanged; "
                        "continue with --resume)")
    p.add_argument("--resume", action="store_true", help="resume training from the last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train again from step 0 where the output folder holds an earlier training's checkpoint")
    _common(p)

    p = sub.add_parser("predict", help="label point clouds with a trained model bundle",
                       description="Write one labelled cloud per input into --out (same file stem).")
    p.add_argument("--model", help="model bundle (OUT/NAME.bundle written by a train step) or the name of a "
                                    "shipped model (run.py models lists them; default: the default shipped model)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB", help="input files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--probabilities", action="store_true", help="also write prob_<class> extra dimensions")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="same",
                   help="output format: same as the input, las, laz, or copc (<stem>.copc.laz: a Cloud Optimized "
                        "Point Cloud QGIS streams; points in octree order, not input order)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="lidarseg",
                   help="lidarseg: predicted code in classification, the input's in classification_ref; "
                        "myria3d: new PredictedClassification + entropy + one dimension per class, "
                        "classification untouched")
    p.add_argument("--buffer", type=float, default=0.0, metavar="METRES",
                   help="points of the other inputs within METRES of a file's bounds are context for its "
                        "prediction (seamless tile edges); each output keeps only its own points")
    p.add_argument("--bounds", metavar="XMIN,YMIN,XMAX,YMAX",
                   help="predict only the points in this x/y window (half-open); COPC inputs decode only "
                        "the octree nodes that meet it; inputs outside it are skipped")
    p.add_argument("--preview", action="store_true",
                   help="also <stem>_view.png: top and oblique views of the labelled cloud, beside the "
                        "input's classification and the points where they differ")
    p.add_argument("--vegetation-heights", nargs=2, type=float, metavar=("LOW", "HIGH"),
                   help="write vegetation as ASPRS 3/4/5 by height above the ground model (metres)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a prediction option of the model (e.g. votes=1 for kpconvx; repeatable)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget (e.g. 3G): a LAS/LAZ file too large for it is predicted in windows "
                        "sized for it, in memory that does not grow with the file (default: half of this "
                        "machine's memory)")
    p.add_argument("--window", type=float, metavar="METRES",
                   help="predict every LAS/LAZ file in square windows of this side (with the model's context "
                        "around each), whatever its size")
    p.add_argument("--shard", metavar="K/N",
                   help="label only worker K's share of the sorted inputs (every N-th from K, K = 0..N-1): "
                        "a job array's index, with no coordination between workers")
    _common(p)

    p = sub.add_parser("evaluate", help="compare predicted clouds with reference labels",
                       description="Writes report.json, report.md and confusion_matrix.png into --out.")
    p.add_argument("--pred", nargs="+", required=True, metavar="PATH_OR_GLOB", help="predicted clouds")
    p.add_argument("--ref", nargs="+", metavar="PATH_OR_GLOB",
                   help="reference clouds, matched by file stem (default: classification_ref of the predictions)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--classes", metavar="SPEC",
                   help="spec file or model bundle whose class map to use (default: one class per code)")
    p.add_argument("--no-views", action="store_true",
                   help="skip views/<stem>.png (top and oblique views of prediction, reference and errors)")
    _common(p)

    p = sub.add_parser("inspect", help="audit point-cloud files: fields, CRS, density, class histogram, warnings",
                       description="Per-file audit printed as Markdown; --out also writes inspect.md, "
                                   "inspect.json and class_shares.png.")
    p.add_argument("paths", nargs="+", metavar="PATH_OR_GLOB", help="files, folders or globs")
    p.add_argument("--classes", metavar="SPEC",
                   help="spec (its class map, per-input overrides and train/predict roles) or model bundle")
    p.add_argument("--out", help="folder for inspect.md, inspect.json and class_shares.png")
    _common(p)

    p = sub.add_parser("models", help="list the shipped models (predict uses the default one without --model)",
                       description="One line per shipped model in models/: name, classes, the card's summary.")
    _common(p)

    p = sub.add_parser("validate", help="check a spec without running it")
    p.add_argument("spec")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _common(p)
    return parser


def _non_negative(value: float, option: str) -> float:
    from data.errors import UserError

    if not (value >= 0 and value < float("inf")):
        raise UserError(f"{option}: expected a finite number of metres >= 0, got {value}")
    return value


def _window(value: float | None) -> float | None:
    from data.errors import UserError

    if value is not None and not (value > 0 and value < float("inf")):
        raise UserError(f"--window: expected a finite number of metres > 0, got {value}")
    return value


def _class_map_from(path: str):
    from data.classmap import ClassMap
    from data.errors import UserError
    from pipeline.bundle import load_bundle
    from pipeline.spec import compose_spec_file

    p = Path(path)
    if p.is_dir():
        return load_bundle(p).class_map
    data = compose_spec_file(p)
    if "classes" not in data or not isinstance(data["classes"], dict):
        raise UserError(f"{p}: --classes needs a file with a 'classes' mapping (class -> input codes)")
    try:
        return ClassMap.from_config(data["classes"], data.get("ignore") or [])
    except (TypeError, ValueError, UserError) as exc:
        raise UserError(f"{p}: classes: {exc}") from None


def _inspect(args) -> None:
    from pipeline.audit import audit_file, report_markdown, warnings_for, write_audit
    from pipeline.inputs import expand_patterns
    from pipeline.progress import progress

    files = expand_patterns(args.paths, None, "inspect")
    class_map, maps, roles = None, {}, {}
    if args.classes:
        from pipeline.spec import compose_spec_file

        p = Path(args.classes)
        if p.is_file() and "steps" in compose_spec_file(p):
            from pipeline.registry import type_name
            from pipeline.runner import RunContext
            from pipeline.spec import load_spec

            loaded = load_spec(p)
            ctx = RunContext(loaded, loaded.output_dir())
            class_map = loaded.class_map
            for i, step in enumerate(loaded.spec.steps):
                kind = type_name(step)
                if kind in ("train", "predict"):
                    for item in ctx.resolve_labelled(step.inputs, f"steps[{i}].inputs"):
                        roles.setdefault(item.path, "train" if kind == "train" else "predict")
                        if kind == "train":
                            maps[item.path] = item.class_map
        else:
            class_map = _class_map_from(args.classes)
    audits = [audit_file(f, maps.get(f, class_map), roles.get(f, ""))
              for f in progress(files, "inspect", unit="file")]
    warnings = warnings_for(audits, class_map)
    print(report_markdown(audits, warnings, class_map), end="")
    if args.out:
        write_audit(audits, warnings, class_map, Path(args.out))
        print(f"\naudit written to {Path(args.out).resolve()} (inspect.md, inspect.json, class_shares.png)")


def _models(args) -> None:
    from pipeline.shipped import DEFAULT_MODEL, card_summary, models_dir, shipped_models

    names = shipped_models()
    if not names:
        print(f"no shipped models in {models_dir()}")
    for name in names:
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{mark}: {card_summary(name)}")
    if names:
        print(f"\nfolder: {models_dir()}; card: <name>/MODEL.md; use: run.py predict [--model NAME] --input ... --out ...")


def _glue_negative_values(argv: list[str]) -> list[str]:
    """``--bounds -1e12,...`` -> ``--bounds=-1e12,...``: argparse would take a value starting
    with '-' for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--bounds":
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def _run(args) -> None:
    from pipeline.runner import run_spec

    ctx = run_spec(args.spec, args.overrides, args.out, args.device, args.limit_steps, args.resume,
                   args.stop_after, args.overwrite)
    if distributed.is_main():
        print(f"done: outputs in {ctx.out_dir}")


def _validate(args) -> None:
    from pipeline.runner import check_inputs
    from pipeline.spec import load_spec

    loaded = load_spec(args.spec, args.overrides)
    check_inputs(loaded)
    print(f"{loaded.path}: valid ({len(loaded.spec.steps)} steps, {loaded.class_map.num_classes} classes)")


def _predict(args) -> None:
    from data.bounds import Bounds
    from pipeline.batch import parse_shard
    from pipeline.bundle import load_bundle
    from pipeline.inputs import expand_patterns
    from pipeline.labelling import Memory, OutputOptions, predict_with_bundle
    from pipeline.window_grid import memory_budget
    from pipeline.layouts import check_vegetation_heights
    from pipeline.progress import log
    from pipeline.runner import resolve_device
    from pipeline.shipped import resolve_model

    path, how = resolve_model(args.model)
    shard = parse_shard(args.shard)
    device = distributed.setup(resolve_device(args.device))
    bundle = load_bundle(path, args.overrides)
    if distributed.is_main():
        log(f"model: {how} ({bundle.describe()})")
    inputs = expand_patterns(args.input, None, "--input")
    options = OutputOptions(args.probabilities, args.layout, check_vegetation_heights(
        args.vegetation_heights, bundle.class_map, "--vegetation-heights"), args.preview)
    pairs = predict_with_bundle(bundle, inputs, Path(args.out), device=device, options=options, fmt=args.format,
                                buffer=_non_negative(args.buffer, "--buffer"),
                                bounds=Bounds.of(args.bounds, "--bounds") if args.bounds else None, shard=shard,
                                memory=Memory(memory_budget(args.max_memory), _window(args.window)))
    if distributed.is_main():
        print(f"done: {len(pairs)} labelled file(s) in {Path(args.out).resolve()}"
              + (f" ({distributed.world_size()} processes)" if distributed.active() else ""))


def _evaluate(args) -> None:
    from pipeline.evaluation import evaluate_files, summary_line
    from pipeline.inputs import expand_patterns

    preds = expand_patterns(args.pred, None, "--pred")
    refs = expand_patterns(args.ref, None, "--ref") if args.ref else None
    class_map = _class_map_from(args.classes) if args.classes else None
    distributed.setup("cpu")
    report = evaluate_files(preds, refs, class_map, Path(args.out), views=not args.no_views)
    if distributed.is_main():
        print(f"{summary_line(report)} -> {Path(args.out).resolve()}")


#: one function per sub-command
COMMANDS = {"run": _run, "validate": _validate, "inspect": _inspect, "models": _models, "predict": _predict,
            "evaluate": _evaluate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_glue_negative_values(sys.argv[1:] if argv is None else list(argv)))
    from data.errors import UserError
    from pipeline.progress import set_quiet

    set_quiet(args.quiet)
    status = 2
    try:
        from data.atomic import check_folder_target

        distributed.check_launch()
        if getattr(args, "out", None):
            check_folder_target(args.out, "--out")
        COMMANDS[args.command](args)
        status = 0
    except UserError as exc:
        try:
            prefix = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
        except UserError:        # the launch variables themselves are the error
            prefix = ""
        print(f"{prefix}error: {exc}", file=sys.stderr)
    except OSError as exc:
        from data.atomic import disk_error

        converted = disk_error(exc, exc.filename or "an output")   # a full or read-only disk, anywhere
        if converted is None:
            raise
        print(f"error: {converted}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        distributed.teardown(clean=status == 0)
    return status

