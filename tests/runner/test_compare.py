"""`veeksha-run compare`: two real runs side by side, offline, and what it refuses before writing."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest
from veeksha.runner.cli import main
from veeksha.shared.records import CONTRACT_VERSION

from tests.runner.helpers import only_run_dir, run_cli

FAST = ["--server.type", "simulated", "--runtime.max_sessions", "6", "--output_dir"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("compare")
    runs = []
    for name, rate in (("slow", "4"), ("fast", "12")):
        proc = run_cli([*FAST, name, "--traffic_scheduler.interval_generator.arrival_rate", rate], cwd=tmp)
        assert proc.returncode == 0, proc.stderr
        runs.append(only_run_dir(tmp / name).root)
    return runs[0], runs[1]


def test_two_runs_give_a_table_cdfs_and_time_series(two_runs, tmp_path: Path) -> None:
    a, b = two_runs
    proc = run_cli(["compare", str(a), str(b), "--output_dir", "cmp"], cwd=tmp_path, plots=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "cmp"
    with (out / "compare_summary.csv").open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    summaries = [orjson.loads((d / "metrics" / "summary_stats.json").read_bytes()) for d in (a, b)]
    ttfc = rows["ttfc_p99"]
    assert [float(ttfc[a.name]), float(ttfc[b.name])] == [s["ttfc_p99"] for s in summaries]
    change = float(ttfc[f"{b.name} vs {a.name} (%)"])
    assert change == pytest.approx((summaries[1]["ttfc_p99"] / summaries[0]["ttfc_p99"] - 1) * 100)
    assert rows["num_requests"][a.name] == "6"
    assert "ttfc_p99" in proc.stdout and "2 vs 1" in proc.stdout
    for png in ("cdf_ttfc.png", "cdf_tbc.png", "cdf_end_to_end_latency.png", "timeseries_compare.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png


def test_runs_of_another_contract_version_are_refused_before_anything_is_written(
    two_runs, tmp_path: Path
) -> None:
    a, b = two_runs
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_bytes((b / "run.json").read_bytes())
    _copy_dir(b / "metrics", old / "metrics")
    info = orjson.loads((old / "run.json").read_bytes())
    del info["contract_version"]  # as a run made before the version was written
    (old / "run.json").write_bytes(orjson.dumps(info))
    proc = run_cli(["compare", str(a), str(old), "--output_dir", "cmp"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "different output contracts" in proc.stderr and "(contract 1)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_one_run_or_a_directory_that_is_no_run_is_a_usage_error(two_runs, tmp_path: Path) -> None:
    a, _ = two_runs
    one = run_cli(["compare", str(a), "--output_dir", "cmp"], cwd=tmp_path)
    assert one.returncode == 2 and "at least two" in one.stderr
    other = run_cli(["compare", str(a), str(tmp_path), "--output_dir", "cmp"], cwd=tmp_path)
    assert other.returncode == 2 and "neither a finished run directory" in other.stderr
    assert not (tmp_path / "cmp").exists()


def test_runs_with_no_summary_values_are_a_usage_error(two_runs, tmp_path: Path) -> None:
    # Both runs' metrics files hold no value (`{}`): a traceback from the table, after the CSV and
    # plots had been written.
    empty = []
    for name in ("e1", "e2"):
        run = tmp_path / name
        (run / "metrics").mkdir(parents=True)
        (run / "run.json").write_bytes((two_runs[0] / "run.json").read_bytes())
        for f in ("summary_stats.json", "throughput_metrics.json"):
            (run / "metrics" / f).write_text("{}")
        empty.append(str(run))
    proc = run_cli(["compare", *empty, "--output_dir", "cmp"], cwd=tmp_path)
    assert proc.returncode == 2 and "no summary value to compare" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("manifest", ["[1]", '{"runs": 3}', '{"runs": [1]}'])
def test_a_sweep_manifest_of_the_wrong_shape_is_a_usage_error(tmp_path: Path, manifest: str) -> None:
    sweep = tmp_path / "sweep-x"
    sweep.mkdir()
    (sweep / "sweep_manifest.json").write_text(manifest)
    proc = run_cli(["compare", str(sweep), "--output_dir", "cmp"], cwd=tmp_path)
    assert proc.returncode == 2 and "sweep_manifest.json" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_sweep_with_no_finished_member_says_how_many_runs_it_found(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep-x"
    sweep.mkdir()
    (sweep / "sweep_manifest.json").write_text(
        '{"runs": [{"index": 0, "run_dir": null, "status": "failed"}]}'
    )
    proc = run_cli(["compare", str(sweep), "--output_dir", "cmp"], cwd=tmp_path)
    assert proc.returncode == 2 and "got 0" in proc.stderr and "got one" not in proc.stderr, proc.stderr


def _copy_dir(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())


def fake_run(root: Path, run_json: bytes, summary: bytes = b'{"num_requests": 3}') -> Path:
    """The least `compare` takes as a finished run directory, with these run.json and summary."""
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "summary_stats.json").write_bytes(summary)
    (root / "run.json").write_bytes(run_json)
    return root


GOOD_RUN_JSON = orjson.dumps({"contract_version": CONTRACT_VERSION})


def damage(bad: Path, file: str, text: bytes) -> None:
    """`bad` as a run (or, for the manifest, a sweep) directory whose `file` holds `text`."""
    if file == "sweep_manifest.json":
        bad.mkdir()
        (bad / file).write_bytes(text)
    elif file == "run.json":
        fake_run(bad, text)
    else:
        fake_run(bad, GOOD_RUN_JSON, summary=text)


@pytest.mark.parametrize(
    ("file", "text", "problem"),
    [
        ("run.json", b'{"contract_version": null}', "contract_version is null, not a whole number"),
        ("run.json", b'{"contract_version": "abc"}', 'contract_version is "abc", not a whole number'),
        ("run.json", b'{"contract_version": true}', "contract_version is true, not a whole number"),
        ("run.json", b'{"contract_version": ', "not valid JSON"),
        ("metrics/summary_stats.json", b'{"num_requests": ', "not valid JSON"),
        ("sweep_manifest.json", b'{"runs": [', "not valid JSON"),
    ],
    ids=[
        "null-version",
        "text-version",
        "boolean-version",
        "not-json",
        "summary-not-json",
        "manifest-not-json",
    ],
)
def test_a_damaged_input_file_is_a_usage_error_naming_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file: str,
    text: bytes,
    problem: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "good", GOOD_RUN_JSON)
    damage(tmp_path / "bad", file, text)
    with pytest.raises(SystemExit) as exited:
        main(["compare", "good", "bad", "--output_dir", "cmp"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2, line
    assert line.startswith(f"veeksha-run: {Path('bad') / file}: ") and problem in line, line
    assert not (tmp_path / "cmp").exists()
