#!/usr/bin/env bash
# Set up (if needed), lint, format check, type check, and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
# Four workers on any machine: most tests wait on real processes (servers, runs, the W&B SDK), so
# more workers than cores still shortens the suite. TEST_WORKERS=0 runs it in one process.
# loadgroup: tests marked xdist_group (the Ray ones) stay on one worker, so their shared two-node
# cluster is started once, not once per worker that happens to get one of them.
.venv/bin/python -m pytest -q -n "${TEST_WORKERS:-4}" --dist loadgroup "$@"
