#!/usr/bin/env bash
# Quick start: set up the environment (if needed) and run the main demo spec on the sample data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python run.py run specs/demo.yaml "$@"
