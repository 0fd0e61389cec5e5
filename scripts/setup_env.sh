#!/usr/bin/env bash
# Create .venv (if missing) and install lidarseg with everything it needs (editable, so the
# checkout is what runs; gives .venv/bin/lidarseg). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup_env.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # CPU build of torch from the local wheel cache (never a CUDA build here).
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # The dependencies are declared once, in pyproject.toml.
  .venv/bin/python -m pip install -q -e ".[test,tensorboard]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
