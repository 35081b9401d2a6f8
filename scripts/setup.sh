#!/usr/bin/env bash
# Set up .venv with the exact versions in requirements.lock and this package (editable).
# Idempotent and quick when nothing changed: re-runs only when the lock or pyproject changes.
#   bash scripts/setup.sh            # then: .venv/bin/python -m nlp_adagrad.train
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))'; then
  echo "setup: need Python 3.10 to 3.13 (Hydra 1.3), found $("$PYTHON" --version 2>&1); set PYTHON=python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.nlp_adagrad-installed
# the kernels' sources and their flags (kernels.py) too: a change to either is a new build
want=$(cat requirements.lock pyproject.toml nlp_adagrad/csrc/* nlp_adagrad/kernels.py nlp_adagrad/rate_stats.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch==2.13.0 in the lock resolves to the CPU wheel; an unpinned torch pulls a CUDA build.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  # the C++ kernels (skip-gram, fused Adagrad), compiled for this machine (~30 s); without
  # gcc the trainer uses torch ops instead, so a failed build is a warning, not a failure
  .venv/bin/python -m nlp_adagrad.kernels || echo "setup: training will use torch ops" >&2
  # the telemetry's medians, fits and histogram counts (g++, no torch; ~1 s): without it
  # NumPy computes them, slower
  .venv/bin/python -m nlp_adagrad.rate_stats || echo "setup: telemetry will summarize with NumPy" >&2
  echo "$want" > "$stamp"
fi
