"""Which seed each run of a sweep has (README, the sweep paragraph; sweep.own_sessions).

A sweep against an endpoint already up (no server section) gives run i seed + i, unless the sweep
varies `seed`: with one seed every run sent the very same prompts, and a server that caches prompts
(vLLM does by default) and outlives each run answered the later runs from its cache (a sweep over
arrival rates showed TTFC falling 20-fold from the first run to the second). A sweep with a server
section starts a fresh server for each run, so the seed is kept as given: the same seed gives the same
sessions, prompt lengths and arrival times, the same workload for every server variant it compares.

seed + i must be a seed a config takes (64 bits): a seed too large for the number of runs is refused
before anything starts (exit 2), as a capacity search refuses one too large for its max_iterations.

Real `veeksha-run`, against the simulated server (its own, or one started beside it); the seed each
run used is its config.yml's.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml

from tests.runner.helpers import run_cli
from tests.runner.simserver.test_standalone import simulate_server

SEED_MAX = 2**63 - 1
CONFIG = """
output_dir: out
seed: SEED
SERVER
runtime: {max_sessions: 3}
traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: !expand [20, 30, 40]}}
"""
OWN_SERVER = "server: {type: simulated}"


def write_config(tmp_path: Path, seed: str, server: str, rate: str = "!expand [20, 30, 40]") -> None:
    config = CONFIG.replace("SEED", seed).replace("SERVER", server).replace("!expand [20, 30, 40]", rate)
    (tmp_path / "s.veeksha.yml").write_text(config)


def member_seeds(tmp_path: Path) -> list[int]:
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = orjson.loads((sweep / "sweep_manifest.json").read_bytes())
    dirs = [sweep / entry["run_dir"] for entry in manifest["runs"]]
    return [yaml.safe_load((d / "config.yml").read_text())["seed"] for d in dirs]


def test_a_sweep_with_a_server_section_keeps_the_seed_in_every_run(tmp_path: Path) -> None:
    # The largest seed too: each run evaluates its config.yml as read back (2**63 was refused there).
    write_config(tmp_path, str(SEED_MAX), OWN_SERVER)
    proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert member_seeds(tmp_path) == [SEED_MAX] * 3


def test_a_sweep_against_an_endpoint_already_up_gives_each_run_its_own_seed(tmp_path: Path) -> None:
    with simulate_server() as url:
        write_config(tmp_path, "7", f"client: {{api_base: '{url}'}}")
        proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert member_seeds(tmp_path) == [7, 8, 9]


def test_a_seed_too_large_for_the_runs_against_an_endpoint_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    """Run 1 had seed 2**63, which its own evaluation (and `veeksha-run evaluate`) refused on reading
    its config.yml back. Refused with the config, also with --dry-run; nothing is made or sent (the
    endpoint is not there)."""
    write_config(tmp_path, str(SEED_MAX), "client: {api_base: 'http://127.0.0.1:9/v1', model: m}")
    for flags in (["--dry-run"], []):
        proc = run_cli(["--config", "s.veeksha.yml", *flags], cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert f"config error at seed: {SEED_MAX} is not allowed with 3 runs" in line, line
        assert f"use a seed <= {SEED_MAX - 2}" in line, line
        assert not (tmp_path / "out").exists()


def test_a_sweep_over_seeds_keeps_the_seeds_it_names(tmp_path: Path) -> None:
    with simulate_server() as url:
        write_config(tmp_path, "!expand [5, 50]", f"client: {{api_base: '{url}'}}", rate="20")
        proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert member_seeds(tmp_path) == [5, 50]
