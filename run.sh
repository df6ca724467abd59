#!/usr/bin/env bash
# bash run.sh [FLAGS...]        set up .venv if missing, install advsal_jax, run study 000 on the
#                               first 448 CIFAR-10 test images (about 3 minutes on 2 CPU cores).
# bash run.sh full [FLAGS...]   the same study on all 10,000 test images (the paper's experiment,
#                               under an hour).
# bash run.sh test [PYTEST ARGS...]   install the dev extras and run the whole test suite.
# FLAGS go to experiments/compare_saliency.py (--help lists them). A killed run continues
# where it stopped when the same command is run again.
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
num_examples=448
if [ "${1:-}" = "full" ]; then
  shift
  num_examples=10000
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python experiments/compare_saliency.py --num_examples="$num_examples" --resume "$@"
