"""What a sweep refuses before its directory is made (exit 2, one line): an !expand on output_dir or
on where and whether it uploads, a combination listed twice, and an endpoint that cannot name the
model to load."""

from __future__ import annotations

import textwrap
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import orjson
import pytest

from tests.runner.helpers import run_cli, serving

SIMULATED = """\
server: {type: simulated}
runtime: {benchmark_timeout: 1}
"""


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "sweep.veeksha.yml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(config: Path, *flags: str) -> str:
    """The one line `veeksha-run` exits 2 with; no directory was made next to the config."""
    proc = run_cli(["--config", str(config), *flags], cwd=config.parent, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert sorted(p.name for p in config.parent.iterdir()) == [config.name]
    (line,) = proc.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("values", ["[a, a]", "[a]", "[a, b]"], ids=["same", "one", "distinct"])
def test_any_expand_on_output_dir_is_refused(tmp_path: Path, values: str) -> None:
    """README: output_dir under !expand is refused (a sweep writes every run under one directory);
    `[a, a]` passed, as only distinct values were counted."""
    line = refused(write_config(tmp_path, f"output_dir: !expand {values}\n{SIMULATED}"), "--dry-run")
    assert line.startswith("veeksha-run: config error at output_dir: !expand is not allowed here"), line


@pytest.mark.parametrize(
    ("swept", "key"),
    [
        ("wandb: {enabled: !expand [true, false], mode: offline}", "wandb.enabled"),
        ("wandb: {enabled: true, mode: !expand [offline, disabled]}", "wandb.mode"),
        ("wandb: {enabled: true, project: !expand [a, b]}", "wandb.project"),
        ("wandb: !expand [{enabled: true}, {enabled: false}]", "wandb"),
    ],
    ids=["enabled", "mode", "project", "section"],
)
def test_where_and_whether_a_sweep_uploads_is_not_swept(tmp_path: Path, swept: str, key: str) -> None:
    """A sweep uploads as one W&B group, its summary run under the first run's wandb section: with
    `enabled: !expand [true, false]` the summary upload also sent the run whose config said false, and
    with `[false, true]` the summary was never made."""
    line = refused(write_config(tmp_path, f"{SIMULATED}{swept}\n"), "--dry-run")
    assert line.startswith(f"veeksha-run: config error at {key}: !expand is not allowed here"), line


def test_a_sweep_may_vary_its_runs_w_and_b_names_and_tags(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"{SIMULATED}wandb: {{enabled: true, tags: !expand [[a], [b]]}}\n")
    proc = run_cli(["--config", str(config), "--dry-run"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "expands to 2 run(s)" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("swept", "runs"),
    [
        ("runtime: {benchmark_timeout: 1, max_requests: !expand [1, 2, 1]}", "runs 0 and 2"),
        # One value, two spellings: the float key reads both as 1.0.
        (
            "traffic_scheduler: {interval_generator: {type: fixed, arrival_rate: !expand [1, 1.0]}}",
            "runs 0 and 1",
        ),
    ],
    ids=["repeated", "same-number"],
)
def test_a_combination_listed_twice_is_refused(tmp_path: Path, swept: str, runs: str) -> None:
    """It would run the same config twice, under two indexes of the sweep."""
    config = write_config(tmp_path, f"server: {{type: simulated}}\n{swept}\n")
    line = refused(config, "--dry-run")
    assert line.startswith("veeksha-run: config error at !expand: "), line
    assert f"{runs} of the sweep are the same config" in line and "list each value once" in line, line


def test_a_sweep_of_distinct_values_is_accepted(tmp_path: Path) -> None:
    config = write_config(tmp_path, "server: {type: simulated}\nruntime: {max_requests: !expand [1, 2]}\n")
    proc = run_cli(["--config", str(config), "--dry-run"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "it expands to 2 run(s)" in proc.stdout


class TwoModels(BaseHTTPRequestHandler):
    """An endpoint already up that serves two models: a run must be told which."""

    def do_GET(self) -> None:
        body = orjson.dumps({"data": [{"id": "model-a"}, {"id": "model-b"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_sweep_on_an_endpoint_with_several_models_is_refused_before_its_directory(tmp_path: Path) -> None:
    """As a single run: which model to load is asked before anything is made. The sweep made its
    directory and manifest, then every member failed with the same config error (exit 1)."""
    with serving(TwoModels) as url:
        sweep = "runtime: {benchmark_timeout: 1, max_requests: !expand [1, 2]}"
        config = write_config(tmp_path, f"client: {{api_base: '{url}'}}\n{sweep}\n")
        line = refused(config)
    assert "config error at client.model: not set, and the server lists 2 models" in line, line
    assert line.endswith("pass --client.model NAME"), line
