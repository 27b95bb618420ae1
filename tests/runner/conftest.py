"""One real `veeksha-run` against the simulated server, shared by the modules that only read it.

A run costs ~8 s of wall time on 2 cores, so the contract tests (test_output_contract.py) and the
evaluation tests (evaluation/test_real_run.py) read the same directory instead of making their own.
Tests that change a run directory copy it first; runs that need their own config stay in their module.
"""

from __future__ import annotations

import pytest
from veeksha.shared.paths import RunPaths

from tests.runner.helpers import only_run_dir, run_cli

# Warmup sessions, 1–3 turns with a wait, three SLOs (two met, one impossible: nothing finishes within
# 1 µs), and 6 s of traffic so the time series has at least six rows.
SHARED_RUN_CONFIG = """
output_dir: out
server: {type: simulated}
traffic_scheduler:
  type: rate
  interval_generator: {type: poisson, arrival_rate: 10}
session_generator:
  type: synthetic
  session_graph:
    type: linear
    num_request_generator: {type: uniform, min: 1, max: 3}
    request_wait_generator: {type: fixed, value: 0.1}
  channels:
    - type: text
      body_length_generator: {type: uniform, min: 50, max: 300}
  output_spec: {text: {output_length_generator: {type: uniform, min: 8, max: 32}}}
evaluators:
  - type: performance
    slos:
      - {name: "P99 TTFC", metric: ttfc, percentile: 0.99, value: 5.0, type: constant}
      - {name: "P50 TBC", metric: tbc, percentile: 0.5, value: 1.0}
      - {name: "impossible E2E", metric: e2e, percentile: 0.9, value: 0.000001}
runtime: {benchmark_timeout: 6, warmup_sessions: 2}
"""


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A completed run directory with plots; read it, or copy it before changing anything."""
    tmp = tmp_path_factory.mktemp("shared-run")
    (tmp / "c.veeksha.yml").write_text(SHARED_RUN_CONFIG)
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp, timeout=120, plots=True)
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(tmp / "out")
