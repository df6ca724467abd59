#!/usr/bin/env bash
# bash run.sh [FLAGS...]              set up .venv if missing, install advsal_jax, run study 000
#                                     at its default preset (448 CIFAR-10 test images, minutes).
# bash run.sh full [FLAGS...]         study 000 at the paper's scale (10,000 images, under an hour).
# bash run.sh study NNN [FLAGS...]  any study by number; --preset=smoke|default|full among the
#                                     flags picks the preset (default: default).
# bash run.sh all [--preset=P]        every study, then results/index.md (one row per study).
# bash run.sh test [PYTEST ARGS...]   install the dev extras (and Debian's chromium for the page
#                                     test) and run the whole test suite on two worker processes
#                                     (-m "not slow" skips the subprocess kill/resume tests).
# FLAGS go to the study's binary (experiments/<name>.py --help lists them). A killed run
# continues where it stopped when the same command is run again.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv (first run only)..."
  python3 -m venv .venv
fi

# Installs the package (with extras $1) when the project's files changed since the last
# install; pip's output goes to .venv/install.log and is shown only if it fails.
install() {
  local stamp=".venv/.installed-$1-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
  [ -e "$stamp" ] && return 0
  echo "Installing advsal_jax${1:+[$1]} into .venv (log: .venv/install.log)..."
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".${1:+[$1]}"; } >.venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    exit 1
  fi
  rm -f .venv/.installed-"$1"-*
  touch "$stamp"
}

# The explorer page test drives a real Chromium: Debian's package, installed when missing
# (as root, or with password-less sudo). Where it could be installed the test requires it;
# elsewhere it is skipped with a warning.
browser() {
  command -v chromium >/dev/null && return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "chromium is not installed and cannot be installed here: the browser test skips." >&2
      return 0
    fi
  fi
  echo "Installing Debian's chromium for the browser test (log: .venv/apt.log)..."
  export ADVSAL_REQUIRE_BROWSER=1
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y \
         -qq --no-install-recommends chromium; } >.venv/apt.log 2>&1; then
    tail -n 20 .venv/apt.log >&2
  fi
}

studies() {  # studies NUMBERS [FLAGS...]; a --preset=P among the flags picks the preset
  local numbers=$1 preset=--preset=default rest=()
  shift
  for arg in "$@"; do
    case "$arg" in
      --preset=*) preset=$arg ;;
      *) rest+=("$arg") ;;
    esac
  done
  install ""
  exec .venv/bin/python experiments/run_studies.py --studies="$numbers" "$preset" -- \
    ${rest[@]+"${rest[@]}"}
}

case "${1:-}" in
  test)
    shift
    install dev
    browser
    # Two worker processes, each running whole test files (module fixtures are built once):
    # compilation is single-threaded, so two cores finish the suite far sooner.
    exec .venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
    ;;
  study)
    [ $# -ge 2 ] || { echo "usage: bash run.sh study NNN [--preset=P] [FLAGS...]" >&2; exit 2; }
    shift
    number=$1
    shift
    studies "$number" "$@"
    ;;
  all)
    shift
    studies all "$@"
    ;;
  full)
    shift
    studies 000 --preset=full "$@"
    ;;
  *)
    studies 000 "$@"
    ;;
esac
