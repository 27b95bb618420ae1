#!/usr/bin/env bash
# Type-checks the three packages with mypy: veeksha.shared strictly, the runner and the uploader as far
# as their third-party stubs allow (settings in pyproject.toml [tool.mypy]). The editable install maps
# veeksha.shared -> shared/ etc. through setuptools package-dir, which mypy cannot follow, so a
# temporary folder holds a `veeksha` package made of symlinks to the source folders.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/veeksha"
ln -s "$ROOT/shared" "$TMP/veeksha/shared"
ln -s "$ROOT/runner" "$TMP/veeksha/runner"
ln -s "$ROOT/uploader" "$TMP/veeksha/uploader"
ln -s "$ROOT/runner/seed_entry" "$TMP/veeksha/benchmark"
export MYPYPATH="$TMP"
MYPY=(.venv/bin/python -m mypy --explicit-package-bases --cache-dir "$TMP/.mypy_cache")
"${MYPY[@]}" --strict -p veeksha.shared
"${MYPY[@]}" -p veeksha.runner -p veeksha.uploader -p veeksha.benchmark
