#!/usr/bin/env bash
# bash run.sh [ARGS...]   set up .venv if missing, install advsal_jax, run the main job.
# bash run.sh test [PYTEST ARGS...]   install the dev extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if [ "${1:-}" = "test" ]; then
  shift
  .venv/bin/python -m pip install -q -e '.[dev]'
  exec .venv/bin/python -m pytest tests "$@"
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python experiments/evaluate_checkpoints.py "$@"
