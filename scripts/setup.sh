#!/usr/bin/env bash
# Creates .venv (if missing) and installs Veeksha with its test tools and the optional Ray extra
# (the Ray tests run a local two-node cluster). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,ray]'
