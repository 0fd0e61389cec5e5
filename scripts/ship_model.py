"""Copy a trained bundle into ``models/NAME/`` as a shipped model and record its checksums.

    .venv/bin/python scripts/ship_model.py runs/lidarhd_kpconvx_cpu/model.bundle lidarhd-kpconvx \\
        [--reference 'DATA/ign_lidarhd/test/*.laz']

The bundle's files replace those of ``models/NAME/`` (its ``MODEL.md`` card is kept: update
its figures by hand from the run's evaluation report), then ``SHA256SUMS`` is written. The
bundle is loaded first, so a broken one is never shipped. ``--reference``: the shipped model's
predicted codes on those files go to ``tests/data/NAME_reference_labels.npz``, which the
compatibility test compares later versions' predictions with.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from data.io import read_cloud  # noqa: E402
from pipeline.bundle import CHECKSUMS, load_bundle, write_checksums  # noqa: E402
from pipeline.inputs import expand_patterns  # noqa: E402
from pipeline.shipped import CARD, models_dir  # noqa: E402


def reference_labels(folder: Path, patterns: list[str]) -> dict[str, np.ndarray]:
    """``{file stem: [N] uint8 predicted codes}`` of the bundle in ``folder`` on those files."""
    bundle = load_bundle(folder)
    model, class_map = bundle.model, bundle.class_map
    out = {}
    for path in expand_patterns(patterns, None, "--reference"):
        proba = model.predict(read_cloud(path)).proba
        out[path.stem] = np.asarray(class_map.output_codes)[proba.argmax(1)].astype(np.uint8)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("name")
    parser.add_argument("--reference", nargs="+", metavar="PATH_OR_GLOB")
    args = parser.parse_args(argv)
    load_bundle(args.bundle)
    dest = models_dir() / args.name
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_file() and old.name != CARD:
            old.unlink()
    for f in args.bundle.iterdir():
        if f.is_file() and f.name != CHECKSUMS:
            shutil.copyfile(f, dest / f.name)
    write_checksums(dest)
    load_bundle(dest)
    print(f"shipped {args.bundle} as {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.1f} MB)")
    if args.reference:
        target = REPO / "tests" / "data" / f"{args.name}_reference_labels.npz"
        target.parent.mkdir(exist_ok=True)
        np.savez_compressed(target, **reference_labels(dest, args.reference))
        print(f"reference labels -> {target} ({target.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
