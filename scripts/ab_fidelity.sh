#!/usr/bin/env bash
# Compare the fidelity of another commit with the working tree, in alternating runs.
#
#   bash scripts/ab_fidelity.sh <commit> [rounds=3] [rates...=800]
#
# This machine's speed drifts by a quarter or more within an hour, so one run of each side tells
# little. Each round runs scripts/bench_fidelity.py once on <commit> (its runner and shared packages,
# exported to a temporary directory and put first on PYTHONPATH; the spawned driver and the simulated
# server inherit it) and once on the working tree, and prints the rows that matter. The server's CPU
# for the same run is printed too: it moves with the machine's speed, not with the client's code.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=${1:?usage: bash scripts/ab_fidelity.sh <commit> [rounds] [rates...]}
rounds=${2:-3}
shift
if [ $# -gt 0 ]; then shift; fi
rates=("$@")
if [ ${#rates[@]} -eq 0 ]; then rates=(800); fi

snapshot=$(mktemp -d)
trap 'rm -rf "$snapshot"' EXIT
mkdir -p "$snapshot/veeksha"
git archive "$commit" runner shared | tar -x -C "$snapshot/veeksha"

rows='TTFC error p99|dispatch delay p99|driver CPU|recorder CPU|client CPU|server CPU'
for round in $(seq 1 "$rounds"); do
  for side in "$commit" working-tree; do
    echo "== round $round: $side (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    if [ "$side" = working-tree ]; then
      .venv/bin/python scripts/bench_fidelity.py --rates "${rates[@]}" 2>&1 | grep -E "$rows" || true
    else
      PYTHONPATH="$snapshot" .venv/bin/python scripts/bench_fidelity.py --rates "${rates[@]}" 2>&1 \
        | grep -E "$rows" || true
    fi
  done
done
