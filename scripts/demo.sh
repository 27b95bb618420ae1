#!/usr/bin/env bash
# The main job on a fresh machine: set up, benchmark the built-in simulated server with the
# quick-start config, then upload the run to W&B in offline mode (no account or network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/veeksha-run --config scripts/quickstart.veeksha.yml "$@"
