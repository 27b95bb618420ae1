"""Reading a run directory: what it yields, and errors that name the broken file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from veeksha.shared.errors import ContractError
from veeksha.shared.paths import DISTRIBUTION_METRICS, UPLOAD_PENDING, RunPaths
from veeksha.uploader.reader import allowed_files, read_run_dir

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, online_env, upload
from tests.uploader.fake_wandb import FakeWandb


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
        ("metrics/timeseries.csv", "dispatched\n1\n", "timeseries.csv: no elapsed_s column"),
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
    ("relative", "content", "line"),
    [
        ("metrics/server_metrics.csv", "elapsed_s,a,b\n1.0,2,3\n2.000,abc,4\n3.0,5,6\n", 3),
        ("metrics/server_metrics.csv", "elapsed_s,a,b\n1.0,2,3\n2.0,3\n3.0,5,6\n", 3),
        ("metrics/timeseries.csv", "elapsed_s,a,b\n1.0,2,3\n2.0,x,4,9\n3.0,5,6\n", 3),
    ],
    ids=["server-metrics-text", "server-metrics-short", "timeseries-long"],
)
def test_a_complete_line_of_an_appended_csv_that_is_not_numbers_is_left_out_with_a_warning(
    tmp_path: Path, relative: str, content: str, line: int
) -> None:
    """Both files are appended while the run goes, and evaluation reads a stray cell as missing and
    trims a ragged row: the uploader leaves such a row out (saying so), never the whole run."""
    root = build_run(tmp_path)
    (root / relative).write_text(content)
    data = read_run_dir(root)
    rows = data.server_metrics if "server_metrics" in relative else data.timeseries
    assert rows == [{"elapsed_s": 1.0, "a": 2, "b": 3}, {"elapsed_s": 3.0, "a": 5, "b": 6}]
    (warning,) = data.warnings
    assert relative in warning and f"line {line} left out" in warning


def test_a_stray_cell_in_server_metrics_leaves_its_row_out_of_the_upload(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    root = build_run(tmp_path)
    path = RunPaths(root).server_metrics_csv
    path.write_text("elapsed_s,vllm:x\n1.000,7\n2.000,abc\n3.000,9\n")
    result = upload([str(root), "--mode", "online"], home, cwd=tmp_path, env=online_env(fake_wandb))
    assert lines_for(result.stdout, "uploaded"), result.stdout + result.stderr
    assert "server_metrics.csv line 3 left out" in result.stdout + result.stderr
    (run,) = fake_wandb.runs.values()
    logged = [r["server_elapsed_s"] for r in run.history if "server_elapsed_s" in r]
    assert logged == [1.0, 3.0]


SLO_FILE = "metrics/slo_results.json"
HEALTH_FILE = "metrics/health_checks.json"


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        (SLO_FILE, {"all_slos_met": True, "results": [1]}, "results[0] is a number, expected an object"),
        (SLO_FILE, {"all_slos_met": True, "results": "x"}, "results is a string, expected a list of objects"),
        (
            SLO_FILE,
            {"all_slos_met": "yes", "results": []},
            "all_slos_met is a string, expected true or false",
        ),
        (HEALTH_FILE, {"all_passed": True, "checks": ["x"]}, "checks[0] is a string, expected an object"),
        (
            HEALTH_FILE,
            {"all_passed": True, "checks": [{"name": "a", "result": {"state": "PASSED"}}]},
            "checks[0].result is an object, expected a string",
        ),
    ],
)
def test_a_verdict_file_of_the_wrong_shape_is_named_with_what_is_wrong(
    tmp_path: Path, relative: str, content: object, message: str
) -> None:
    root = build_run(tmp_path)
    (root / relative).write_bytes(orjson.dumps(content))
    with pytest.raises(ContractError) as raised:
        read_run_dir(root)
    assert f"{relative}: {message}" in str(raised.value)


def test_an_slo_field_of_another_type_than_in_the_other_results_is_refused(tmp_path: Path) -> None:
    """The SLO table's columns each hold one type (wandb.Table refuses a mixed column once the run
    exists); a null is any type's "no value" (no samples: observed_value null, outputs.md)."""
    root = build_run(tmp_path)
    path = RunPaths(root).slo_results
    slo = orjson.loads(path.read_bytes())
    slo["results"][0] |= {"observed_value": None, "met": False}
    path.write_bytes(orjson.dumps(slo))
    assert read_run_dir(root).slo == slo
    slo["results"][1]["threshold"] = "50ms"
    path.write_bytes(orjson.dumps(slo))
    with pytest.raises(ContractError, match=r"slo_results\.json: results\[1\]\.threshold is a string"):
        read_run_dir(root)


def test_every_field_of_an_slo_result_has_its_type_checked() -> None:
    from veeksha.shared.records import SLO_RESULT_FIELDS
    from veeksha.uploader.reader import SLO_RESULT_TYPES

    assert set(SLO_RESULT_TYPES) == set(SLO_RESULT_FIELDS)


def test_a_misshapen_verdict_file_fails_its_directory_before_any_w_and_b_run_exists(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    """Found while reading the directory: --dry-run says so too, and online no run is created only
    to be finished as failed, nor is the upload left pending."""
    root = build_run(tmp_path, RunSpec(seconds=2))
    RunPaths(root).slo_results.write_bytes(orjson.dumps({"all_slos_met": True, "results": [1]}))
    for dry_run in (["--dry-run"], []):
        args = [str(root), "--mode", "online", *dry_run]
        result = upload(args, home, cwd=tmp_path, env=online_env(fake_wandb))
        assert result.returncode == 1, result.stdout + result.stderr
        (failed,) = lines_for(result.stdout, "failed")
        assert "metrics/slo_results.json: results[0] is a number, expected an object" in failed
    assert fake_wandb.created == 0 and not fake_wandb.runs
    assert not (root / "wandb_run.json").exists() and not (root / UPLOAD_PENDING).exists()
