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


TIMESERIES_HEADER = b"elapsed_s,dispatched,completed,errored,in_flight,output_tokens,output_tokens_per_s,"
TIMESERIES_HEADER += b"request_throughput,ttfc_p50,ttfc_p99,tbc_p50,tbc_p99\n"


def fake_run(root: Path, run_json: bytes, summary: bytes = b'{"num_requests": 3}') -> Path:
    """The least `compare` takes as a finished run directory, with these run.json and summary (and a
    second of time series to draw)."""
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "summary_stats.json").write_bytes(summary)
    (root / "metrics" / "timeseries.csv").write_bytes(TIMESERIES_HEADER + b"0,1,1,0,0.5,9,9,1,0.01,0.02,,\n")
    (root / "run.json").write_bytes(run_json)
    return root


def run_json(**fields: object) -> bytes:
    """A finished run's run.json (its evaluation written), with `fields` changed."""
    finished = {"status": "completed", "finished_at": "2026-01-01T00:00:00.000Z"}
    return orjson.dumps({**finished, "contract_version": CONTRACT_VERSION, **fields})


GOOD_RUN_JSON = run_json()


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
        ("run.json", run_json(contract_version=None), "contract_version is null, not a whole number"),
        ("run.json", run_json(contract_version="abc"), 'contract_version is "abc", not a whole number'),
        ("run.json", run_json(contract_version=True), "contract_version is true, not a whole number"),
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


def compare_in(
    cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int | str | None, str, str]:
    """`veeksha-run compare ARGS` in this process, from `cwd`: (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exited:
        main(["compare", *args])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def refused_in_one_line(code: int | str | None, err: str) -> str:
    """The one line of a usage error (exit 2)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("file", "text", "problem"),
    [
        ("ttfc.csv", b"cdf,value\n0.00,0.01\n0.50,abc\n1.00,0.03\n", 'line 3, column value is "abc"'),
        ("ttfc.csv", b"cdf,value\n0.00,0.01\n0.50,0.02,7\n", "line 3 has 3 fields, its header 2"),
        ("ttfc.csv", b"cdf,value\n0.00,0.01\n0.50,0.02\xff\n", "not a readable CSV"),
        ("ttfc.csv", b"quantile,seconds\n0.00,0.01\n", "its header has no column cdf, value"),
        ("timeseries.csv", TIMESERIES_HEADER + b"0,1,1,0,0.5,9,9,1,x,,,\n", 'line 2, column ttfc_p50 is "x"'),
        (
            "timeseries.csv",
            b"elapsed_s,completed\n0,1\n",
            "its header has no column request_throughput, output_tokens_per_s",
        ),
    ],
    ids=["text-quantile", "extra-field", "not-utf8", "other-header", "text-timeseries", "missing-column"],
)
def test_a_damaged_metrics_csv_is_a_usage_error_naming_it_before_out_is_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file: str,
    text: bytes,
    problem: str,
) -> None:
    # A traceback (ValueError, ComputeError, InvalidOperationError) once compare_summary.csv had
    # been written: the CSVs were first read by the plots.
    fake_run(tmp_path / "good", GOOD_RUN_JSON)
    (fake_run(tmp_path / "bad", GOOD_RUN_JSON) / "metrics" / file).write_bytes(text)
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "good", "bad", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert line.startswith(f"veeksha-run: {Path('bad/metrics') / file}: ") and problem in line, line
    assert "veeksha-run evaluate bad" in line, line
    assert not (tmp_path / "cmp").exists()


UNFINISHED = {
    "evaluation-failed": run_json(finished_at=None, evaluation_error="disk full while plotting"),
    "running": run_json(status="running", finished_at=None),
    "no-finished-at": run_json(finished_at=None),
}


@pytest.mark.parametrize("info", UNFINISHED.values(), ids=UNFINISHED.keys())
def test_a_run_whose_evaluation_did_not_finish_is_refused_before_out_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], info: bytes
) -> None:
    # Its summary_stats.json is written first, so it was compared with the metrics of the evaluation
    # before (or none).
    fake_run(tmp_path / "good", GOOD_RUN_JSON)
    fake_run(tmp_path / "bad", info)
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "good", "bad", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert line.startswith("veeksha-run: bad ") and "`veeksha-run evaluate bad` first" in line, line
    assert not (tmp_path / "cmp").exists()


def test_a_sweep_member_whose_evaluation_did_not_finish_is_left_out_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep-x"
    for name in ("r0", "r1"):
        fake_run(sweep / name, GOOD_RUN_JSON)
    fake_run(sweep / "r2", UNFINISHED["evaluation-failed"])
    entries = [{"index": i, "run_dir": f"r{i}", "status": "completed"} for i in range(3)]
    (sweep / "sweep_manifest.json").write_bytes(orjson.dumps({"runs": entries}))
    code, out, err = compare_in(tmp_path, monkeypatch, capsys, "sweep-x", "--output_dir", "cmp")
    assert code == 0, err
    assert "left out: sweep-x run 2 (r2, completed): its evaluation did not finish" in out, out
    assert "disk full while plotting" in out, out
    with (tmp_path / "cmp" / "compare_summary.csv").open() as f:
        assert next(csv.reader(f)) == ["metric", "r0", "r1", "r1 vs r0 (%)"]


@pytest.mark.parametrize("where", ["number", "absolute", "parent", "nested-parent"])
def test_a_manifest_run_dir_that_names_no_directory_inside_the_sweep_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    # 5 was a TypeError traceback; a path out of the sweep compared a run that is no member of it.
    outside = fake_run(tmp_path / "outside", GOOD_RUN_JSON)
    sweep = tmp_path / "sweep-x"
    fake_run(sweep / "r0", GOOD_RUN_JSON)
    run_dir = {
        "number": 5,
        "absolute": str(outside),
        "parent": "../outside",
        "nested-parent": "r0/../../outside",
    }
    entries = [{"index": 0, "run_dir": "r0"}, {"index": 1, "run_dir": run_dir[where], "status": "completed"}]
    (sweep / "sweep_manifest.json").write_bytes(orjson.dumps({"runs": entries}))
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "sweep-x", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert line.startswith(f"veeksha-run: {Path('sweep-x/sweep_manifest.json')}: runs[1].run_dir is "), line
    assert not (tmp_path / "cmp").exists()


def test_a_run_given_as_dot_is_labelled_by_its_directory_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Path('.').name is "": the CSV's column and its "vs" heading had no run name.
    fake_run(tmp_path / "a", GOOD_RUN_JSON)
    fake_run(tmp_path / "b", GOOD_RUN_JSON, summary=b'{"num_requests": 6}')
    cmp = tmp_path / "cmp"
    code, out, err = compare_in(tmp_path / "a", monkeypatch, capsys, ".", "../b", "--output_dir", str(cmp))
    assert code == 0, err
    with (cmp / "compare_summary.csv").open() as f:
        assert list(csv.reader(f))[:2] == [
            ["metric", "a", "b", "b vs a (%)"],
            ["num_requests", "3", "6", "100.0"],
        ]
    assert "1 = a  2 = b" in out, out


def test_runs_without_a_time_series_are_compared_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (Warnings are errors in the tests.) matplotlib warned of a legend with no line in it.
    for name in ("a", "b"):
        (fake_run(tmp_path / name, GOOD_RUN_JSON) / "metrics" / "timeseries.csv").unlink()
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "a", "b", "--output_dir", "cmp")
    assert code == 0 and not err, err
    assert (tmp_path / "cmp" / "timeseries_compare.png").exists()


def test_a_run_whose_evaluation_failed_before_its_summary_is_told_to_evaluate_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was called no run directory ("neither a finished run directory ... nor a sweep directory").
    fake_run(tmp_path / "good", GOOD_RUN_JSON)
    bad = fake_run(tmp_path / "bad", UNFINISHED["evaluation-failed"])
    (bad / "metrics" / "summary_stats.json").unlink()
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "good", "bad", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert "its evaluation did not finish" in line and "`veeksha-run evaluate bad` first" in line, line
    assert not (tmp_path / "cmp").exists()


def test_an_output_dir_beside_the_current_run_given_with_dotdot_is_not_taken_for_inside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `a/../cmp` kept `a` among its parents: refused as "inside the run directory a".
    fake_run(tmp_path / "a", GOOD_RUN_JSON)
    fake_run(tmp_path / "b", GOOD_RUN_JSON)
    code, _, err = compare_in(tmp_path / "a", monkeypatch, capsys, ".", "../b", "--output_dir", "../cmp")
    assert code == 0, err
    assert (tmp_path / "cmp" / "compare_summary.csv").exists()


@pytest.mark.parametrize(
    ("file", "text", "problem"),
    [
        ("summary_stats.json", b'{"num_requests": 3, "ttfc_p50": "12"}', 'ttfc_p50 is "12", not a number'),
        ("summary_stats.json", b'{"num_requests": true}', "num_requests is true, not a number"),
        ("throughput_metrics.json", b'{"goodput": [1]}', "goodput is [1], not a number"),
    ],
    ids=["text-latency", "boolean-count", "list-throughput"],
)
def test_a_metric_that_is_no_number_is_a_usage_error_naming_it_before_out_is_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    file: str,
    text: bytes,
    problem: str,
) -> None:
    # A TypeError traceback from the console table (exit 1), once compare_summary.csv and the plots
    # had been written.
    fake_run(tmp_path / "good", GOOD_RUN_JSON)
    (fake_run(tmp_path / "bad", GOOD_RUN_JSON) / "metrics" / file).write_bytes(text)
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "good", "bad", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert line.startswith(f"veeksha-run: {Path('bad/metrics') / file}: ") and problem in line, line
    assert "veeksha-run evaluate bad" in line, line
    assert not (tmp_path / "cmp").exists()


def test_a_run_given_twice_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was compared with itself without a word (every change 0%)."""
    fake_run(tmp_path / "a", GOOD_RUN_JSON)
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "a", "./a/", "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert "a is given twice" in line and "give each run once" in line, line
    assert not (tmp_path / "cmp").exists()


def sweep_of(root: Path, *members: str, unfinished: str | None = None) -> Path:
    """A sweep directory whose manifest lists these finished members (and one that did not finish)."""
    names = [*members, *([unfinished] if unfinished else [])]
    runs = [{"index": i, "run_dir": name, "status": "completed"} for i, name in enumerate(names)]
    root.mkdir()
    (root / "sweep_manifest.json").write_bytes(orjson.dumps({"runs": runs}))
    for name in members:
        fake_run(root / name, GOOD_RUN_JSON)
    if unfinished:
        fake_run(root / unfinished, run_json(finished_at=None))
    return root


@pytest.mark.parametrize(
    ("args", "named"),
    [(["sweep", "sweep"], "sweep"), (["sweep", "sweep/r1"], str(Path("sweep/r1")))],
    ids=["sweep-twice", "member-and-its-sweep"],
)
def test_a_sweep_given_twice_or_with_its_own_member_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    named: str,
) -> None:
    """Each of its runs was compared with itself, and each member it left out was named twice."""
    sweep_of(tmp_path / "sweep", "r1", "r2", unfinished="r3")
    code, out, err = compare_in(tmp_path, monkeypatch, capsys, *args, "--output_dir", "cmp")
    line = refused_in_one_line(code, err)
    assert line.startswith(f"veeksha-run: {named} is given twice; give each run once"), line
    assert "left out" not in out
    assert not (tmp_path / "cmp").exists()


def test_an_output_dir_whose_parent_cannot_be_made_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new directory, whoever asks (root too): compare read every input, then failed
    to write (exit 1, "cannot write")."""
    fake_run(tmp_path / "a", GOOD_RUN_JSON)
    fake_run(tmp_path / "b", GOOD_RUN_JSON)
    code, _, err = compare_in(tmp_path, monkeypatch, capsys, "a", "b", "--output_dir", "/proc/veeksha/cmp")
    line = refused_in_one_line(code, err)
    assert "--output_dir /proc/veeksha/cmp cannot be made" in line, line
