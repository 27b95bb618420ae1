"""Reading a run directory: what it yields, and errors that name the broken file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from veeksha.shared.errors import ContractError
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths
from veeksha.uploader.reader import allowed_files, read_run_dir

from tests.uploader.builders import RunSpec, build_run


def test_a_complete_directory(tmp_path: Path) -> None:
    data = read_run_dir(build_run(tmp_path, RunSpec(seconds=4)))
    assert data.status == "completed" and len(data.run_id) == 32
    assert len(data.timeseries) == 4 and data.timeseries[0]["elapsed_s"] == 0
    assert "ttfc_p50" not in data.timeseries[0]  # an empty cell is no value, not 0
    assert sorted(data.quantiles) == sorted(DISTRIBUTION_METRICS)
    assert all(len(q) == 101 for q in data.quantiles.values())
    assert len(data.images) == len(DISTRIBUTION_METRICS)
    assert data.slo and data.health and data.summary_stats["num_requests"] == 40


def test_allow_list_keeps_paths_and_never_takes_wandb(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    (root / "wandb" / "metrics").mkdir(parents=True)
    (root / "wandb" / "metrics" / "x.json").write_text("{}")
    (root / "notes.txt").write_text("not allow-listed")
    files = allowed_files(root)
    assert "config.yml" in files and "run.json" in files and "traces/dispatch_trace.jsonl" in files
    assert not [f for f in files if f.startswith("wandb/") or f == "notes.txt"]


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        ("metrics/summary_stats.json", "{oops", "metrics/summary_stats.json: not valid JSON"),
        (
            "metrics/throughput_metrics.json",
            "[1, 2]",
            "metrics/throughput_metrics.json: expected a JSON object",
        ),
        (
            "metrics/timeseries.csv",
            "elapsed_s,dispatched\n0,1\n1,many\n",
            "timeseries.csv line 3 column dispatched",
        ),
        ("metrics/ttfc.csv", "cdf,value\n0.0,abc\n", "metrics/ttfc.csv line 2 column value"),
        ("run.json", '{"run_id": "x", "status": "done"}', "run.json: status 'done' is not one of"),
        ("config.yml", "client: [unclosed", "config.yml line 1: invalid YAML"),
    ],
)
def test_corrupt_files_are_named(tmp_path: Path, relative: str, content: str, message: str) -> None:
    root = build_run(tmp_path)
    (root / relative).write_text(content)
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("(", r"\(")):
        read_run_dir(root)


def test_missing_files_are_named_unless_the_run_failed_early(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    RunPaths(root).summary_stats.unlink()
    with pytest.raises(ContractError, match=r"summary_stats\.json: file is missing"):
        read_run_dir(root)
    info = orjson.loads(RunPaths(root).run_json.read_bytes()) | {"status": "failed", "error": "no server"}
    RunPaths(root).run_json.write_bytes(orjson.dumps(info))
    assert read_run_dir(root).summary_stats == {}
    RunPaths(root).config_yml.unlink()
    with pytest.raises(ContractError, match=r"config\.yml: file is missing"):
        read_run_dir(root)


def test_running_directory_is_read_without_metrics(tmp_path: Path) -> None:
    data = read_run_dir(build_run(tmp_path, RunSpec(status="running")))
    assert data.status == "running" and data.files == [] and data.timeseries == []


@pytest.mark.parametrize("cut", ["2.0,3", "2.0,3,0."])  # a cell short, or a number cut short
def test_a_server_metrics_line_cut_off_by_a_crash_is_left_out_with_a_warning(
    tmp_path: Path, cut: str
) -> None:
    """The scraper appends a line a second; a run that crashed mid-write leaves a last line without its
    newline. It is dropped (as the live follower never streams a partial line), the rest uploads."""
    root = build_run(tmp_path)
    path = RunPaths(root).server_metrics_csv
    path.write_text(f"elapsed_s,vllm:num_requests_waiting,vllm:kv_cache_usage_perc\n1.0,2,0.5\n{cut}")
    data = read_run_dir(root)
    assert data.server_metrics == [
        {"elapsed_s": 1.0, "vllm:num_requests_waiting": 2, "vllm:kv_cache_usage_perc": 0.5}
    ]
    (warning,) = data.warnings
    assert "metrics/server_metrics.csv" in warning and "line 3" in warning and "cut off" in warning


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        (
            "metrics/server_metrics.csv",
            "elapsed_s,a,b\n1.0,2\n2.0,3,4\n",
            "server_metrics.csv line 2: 2 cells",
        ),
        ("metrics/timeseries.csv", "elapsed_s,dispatched\n0,1\n1", "timeseries.csv line 3: 1 cells"),
    ],
)
def test_complete_lines_and_the_time_series_stay_strict(
    tmp_path: Path, relative: str, content: str, message: str
) -> None:
    """Only the last, unfinished line of the optional scraped file is forgiven: a short complete line
    is a broken file, and timeseries.csv is written whole at the end of a run."""
    root = build_run(tmp_path)
    (root / relative).write_text(content)
    with pytest.raises(ContractError, match=message):
        read_run_dir(root)
