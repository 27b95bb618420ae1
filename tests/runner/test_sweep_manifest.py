"""A sweep's manifest says what the sweep was to run and what became of each combination, whatever
stopped it: Ctrl-C, SIGKILL, an OOM kill, a reboot.

Every combination has its entry from the start (`pending`), `running` once its run starts, then the
status of its run; those a sweep never reached end as `not_run`. A sweep whose process died is left
`running` until `veeksha-run evaluate` (on a member, or on the sweep directory) finds that process
gone and marks the sweep `crashed`, a final status the uploader accepts.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import veeksha.runner.sweep as sweep_module
from veeksha.runner.benchmark import RunResult
from veeksha.runner.sweep import exit_code, refresh_sweep_summary, run_sweep, save
from veeksha.shared.config_loader import load_benchmark_runs
from veeksha.shared.jsonio import write_json
from veeksha.shared.paths import (
    REQUEST_RECORDS,
    RUN_JSON,
    SWEEP_MANIFEST,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
)
from veeksha.shared.records import SWEEP_ENTRY_FIELDS, SWEEP_MANIFEST_FIELDS

from tests.runner.helpers import VEEKSHA_RUN, no_plots_env, run_cli
from tests.runner.test_crash_recovery import (
    driver_pids,
    evaluate_as_the_recorded_process,
    running,
    wait_until_ended,
)
from tests.uploader.conftest import lines_for, make_home, upload

RATE = "traffic_scheduler.interval_generator.arrival_rate"
TIMEOUT = "runtime.benchmark_timeout"

# Three combinations: the first ends after a second of traffic, the others would take a minute.
THREE_RUNS = """
output_dir: out
server: {type: simulated, decode_step_base: 0.002}
traffic_scheduler:
  type: rate
  interval_generator: {type: poisson, arrival_rate: 5}
runtime: {benchmark_timeout: !expand [1, 60, 61]}
"""


def manifest_of(sweep: Path) -> dict[str, Any]:
    return orjson.loads((sweep / SWEEP_MANIFEST).read_bytes())


def rows_of(sweep: Path) -> list[dict[str, Any]]:
    return orjson.loads((sweep / SWEEP_SUMMARY_JSON).read_bytes())["runs"]


def statuses(sweep: Path) -> list[str]:
    return [entry["status"] for entry in manifest_of(sweep)["runs"]]


def member_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / RUN_JSON).is_file())


def start_sweep(tmp: Path, config: str) -> subprocess.Popen[str]:
    (tmp / "c.veeksha.yml").write_text(textwrap.dedent(config))
    return subprocess.Popen(
        [VEEKSHA_RUN, "--config", "c.veeksha.yml"],
        cwd=tmp,
        env=no_plots_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_results_of_member(tmp: Path, index: int, within_s: float = 60) -> Path:
    """The sweep directory, once member `index` has recorded two results (it is mid-run)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for sweep in (tmp / "out").glob("sweep-*"):
            members = member_dirs(sweep)
            log = members[index] / "metrics" / REQUEST_RECORDS if len(members) > index else None
            if log is not None and log.exists() and log.read_bytes().count(b"\n") >= 2:
                return sweep
        time.sleep(0.1)
    raise AssertionError(f"member {index} recorded no two results within {within_s} s")


def wait_for_first_run_to_start(tmp: Path, within_s: float = 30) -> Path:
    """The sweep directory, once its manifest says its first run has started."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for manifest in (tmp / "out").glob(f"sweep-*/{SWEEP_MANIFEST}"):
            if statuses(manifest.parent)[0] == "running":
                return manifest.parent
        time.sleep(0.1)
    raise AssertionError(f"no sweep started its first run within {within_s} s")


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- every combination from the start


def test_a_sweep_lists_every_combination_before_its_first_run_starts(tmp_path: Path) -> None:
    """While the first run's server loads, the manifest already holds all three combinations with
    their parameters, and names the process running the sweep and its host."""
    command = f"[{sys.executable}, -c, 'import time; time.sleep(60)']"
    proc = start_sweep(
        tmp_path,
        f"""
        output_dir: out
        server:
          type: command
          command: {command}
          ready_url: http://127.0.0.1:9/health
          ready_timeout: 60
        runtime: {{max_sessions: !expand [1, 2, 3]}}
        """,
    )
    try:
        sweep = wait_for_first_run_to_start(tmp_path)
        manifest, rows = manifest_of(sweep), rows_of(sweep)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)

    assert set(manifest) == set(SWEEP_MANIFEST_FIELDS)
    assert (manifest["pid"], manifest["host"]) == (proc.pid, socket.gethostname())
    assert manifest["count"] == len(manifest["runs"]) == 3
    assert all(set(entry) == set(SWEEP_ENTRY_FIELDS) for entry in manifest["runs"])
    assert [(e["index"], e["params"], e["status"]) for e in manifest["runs"]] == [
        (0, {"runtime.max_sessions": 1}, "running"),
        (1, {"runtime.max_sessions": 2}, "pending"),
        (2, {"runtime.max_sessions": 3}, "pending"),
    ]
    assert [row["status"] for row in rows] == ["running", "pending", "pending"]


# ---------------------------------------------------------------- interrupted (Ctrl-C, SIGTERM)


def test_an_interrupted_sweep_keeps_the_combinations_it_never_ran_as_not_run(tmp_path: Path) -> None:
    """Ctrl-C during the second of three runs: the third combination is still in the manifest and
    in the table, with its parameters and `not_run`."""
    proc = start_sweep(tmp_path, THREE_RUNS)
    sweep = wait_for_results_of_member(tmp_path, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    manifest = manifest_of(sweep)
    assert manifest["status"] == "interrupted"
    assert manifest["count"] == len(manifest["runs"]) == 3
    assert [(e["status"], e["params"]) for e in manifest["runs"]] == [
        ("completed", {TIMEOUT: 1}),
        ("interrupted", {TIMEOUT: 60}),
        ("not_run", {TIMEOUT: 61}),
    ]
    assert manifest["runs"][2]["run_dir"] is None
    rows = rows_of(sweep)
    assert [(r["status"], r[TIMEOUT]) for r in rows] == [
        ("completed", 1),
        ("interrupted", 60),
        ("not_run", 61),
    ]
    assert (sweep / SWEEP_SUMMARY_CSV).read_text().splitlines()[3].split(",")[:3] == ["", "not_run", "61"]


def fake_member(root: Path, *, sweep: dict[str, Any], **_: Any) -> RunResult:
    """What run_benchmark leaves of a member that completed, without its server or traffic."""
    run_dir = root / f"run-{sweep['index']}"
    run_dir.mkdir()
    write_json(run_dir / RUN_JSON, {"status": "completed", "sweep": sweep})
    return RunResult(run_dir, "completed", None)


@pytest.mark.parametrize(
    ("interrupted_save", "expected"),
    [
        (1, [(None, "not_run"), (None, "not_run")]),  # the sweep's first manifest written
        (2, [(None, "interrupted"), (None, "not_run")]),  # member 0 marked running, before its run
        (3, [("run-0", "completed"), (None, "not_run")]),  # member 0 ended, before member 1
    ],
)
def test_a_ctrl_c_between_the_runs_of_a_sweep_ends_it_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_save: int, expected: list[Any]
) -> None:
    """A Ctrl-C landing in the sweep's own bookkeeping (saving its manifest, between two runs), not in
    a member's run: the manifest stayed `running`, its entries `pending`, and the sweep died with a
    traceback. It ends as a Ctrl-C during a run does: interrupted, 130, the rest `not_run`."""
    (tmp_path / "c.veeksha.yml").write_text(
        f"output_dir: {tmp_path / 'out'}\nruntime: {{max_sessions: !expand [1, 2]}}\n"
    )
    runs = load_benchmark_runs(tmp_path / "c.veeksha.yml")
    saves = 0

    def save_then_interrupt(root: Path, manifest: dict[str, Any]) -> None:
        nonlocal saves
        save(root, manifest)
        saves += 1
        if saves == interrupted_save:  # as if the signal came just after the write
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "save", save_then_interrupt)
    monkeypatch.setattr(sweep_module, "run_benchmark", lambda cfg, root, **kw: fake_member(root, **kw))
    try:
        results = run_sweep(runs)
    except KeyboardInterrupt:  # (caught: one escaping a test stops the whole pytest session)
        (sweep,) = (tmp_path / "out").iterdir()
        pytest.fail(f"the Ctrl-C escaped the sweep, its manifest left {manifest_of(sweep)}")

    assert exit_code(results, strict=False) == 130
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = manifest_of(sweep)
    assert manifest["status"] == "interrupted"
    assert [(e["run_dir"], e["status"]) for e in manifest["runs"]] == expected
    assert [(r["run_dir"], r["status"]) for r in rows_of(sweep)] == expected


def test_the_sweep_summary_is_written_before_the_manifest_it_is_derived_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees the manifest's new state (a follower, a user's script) finds the summary (JSON and
    CSV) already saying the same: at each write of the manifest, both are checked on disk."""
    seen: list[list[str]] = []

    def checking_write_json(path: Path, obj: Any) -> None:
        if path.name == SWEEP_MANIFEST:
            wanted = [entry["status"] for entry in obj["runs"]]
            assert [row["status"] for row in rows_of(path.parent)] == wanted
            table = (path.parent / SWEEP_SUMMARY_CSV).read_text().splitlines()[1:]
            assert [line.split(",")[1] for line in table] == wanted
            seen.append(wanted)
        write_json(path, obj)

    monkeypatch.setattr(sweep_module, "write_json", checking_write_json)
    root = tmp_path / "sweep"
    root.mkdir()
    manifest = {"sweep_id": "s1", "count": 2, "status": "running", "runs": entries(2, 0)}
    save(root, manifest)  # the first: no summary before it
    manifest["runs"][0]["status"] = "running"
    save(root, manifest)
    manifest["runs"][0].update(status="completed", run_dir="run-0")
    manifest["runs"][1]["status"] = "not_run"
    save(root, manifest)

    assert seen == [["pending", "pending"], ["running", "pending"], ["completed", "not_run"]]
    assert statuses(root) == ["completed", "not_run"]


# ---------------------------------------------------------------- killed (SIGKILL, OOM, reboot)


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of three whose `veeksha-run` was killed with SIGKILL during its second run; copy it
    before changing it."""
    tmp = tmp_path_factory.mktemp("killed-sweep")
    proc = start_sweep(tmp, THREE_RUNS)
    sweep = wait_for_results_of_member(tmp, 1)
    drivers = running(driver_pids(proc.pid))  # (once it is killed, they are no longer its children)
    assert drivers, "the second member has no driver process"
    proc.kill()
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()  # not read: the sweep was killed
    wait_until_ended(drivers)  # orphaned, the driver notices on its next tick and stops writing
    return sweep


@pytest.fixture
def sweep_copy(killed_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(killed_sweep, tmp_path / killed_sweep.name))


def test_a_killed_sweep_is_left_running_with_its_member_running_and_the_rest_pending(
    killed_sweep: Path,
) -> None:
    assert manifest_of(killed_sweep)["status"] == "running"
    assert statuses(killed_sweep) == ["completed", "running", "pending"]


def assert_finished_as_crashed(sweep: Path) -> None:
    """What `evaluate` leaves of the killed sweep: every combination's entry and row, the killed
    member's with its rebuilt numbers, and a summary the uploader takes."""
    manifest = manifest_of(sweep)
    assert manifest["status"] == "crashed"
    killed = member_dirs(sweep)[1]
    assert [(e["run_dir"], e["status"]) for e in manifest["runs"]] == [
        (member_dirs(sweep)[0].name, "completed"),
        (killed.name, "crashed"),
        (None, "not_run"),
    ]
    rows = rows_of(sweep)
    assert [(r["status"], r[TIMEOUT]) for r in rows] == [("completed", 1), ("crashed", 60), ("not_run", 61)]
    assert rows[1]["num_requests"] >= 1
    home = make_home(sweep.parent / "home")
    uploaded = upload([str(sweep), "--dry-run"], home, cwd=sweep.parent)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert any("(sweep summary)" in line for line in lines_for(uploaded.stdout, "would upload")), (
        uploaded.stdout
    )


def test_evaluating_the_killed_member_marks_its_sweep_crashed(sweep_copy: Path) -> None:
    killed = member_dirs(sweep_copy)[1]
    proc = run_cli(["evaluate", str(killed)], cwd=sweep_copy.parent)

    assert proc.returncode == 1, proc.stdout + proc.stderr  # a crashed run, as evaluate says of any
    assert f"sweep {sweep_copy} was left running by a process that died: marked crashed" in proc.stdout
    assert_finished_as_crashed(sweep_copy)


def test_evaluating_the_sweep_directory_finishes_its_killed_member_and_marks_it_crashed(
    sweep_copy: Path,
) -> None:
    proc = run_cli(["evaluate", str(sweep_copy)], cwd=sweep_copy.parent)

    assert proc.returncode == 1, proc.stdout + proc.stderr  # its killed member crashed
    killed = member_dirs(sweep_copy)[1]
    assert f"{killed} was left running by a process that died: marked crashed" in proc.stdout
    assert "1 combination(s) never ran" in proc.stdout
    assert_finished_as_crashed(sweep_copy)


# ---------------------------------------------------------------- whose process is gone, and where


def make_sweep(root: Path, manifest: dict[str, Any], members: list[dict[str, Any]]) -> list[Path]:
    """A sweep directory with `manifest` and one member directory (run.json only) per `members`."""
    root.mkdir(parents=True)
    write_json(root / SWEEP_MANIFEST, {"sweep_id": "s1", **manifest})
    dirs = []
    for i, info in enumerate(members):
        (root / f"run-{i}").mkdir()
        write_json(root / f"run-{i}" / RUN_JSON, info)
        dirs.append(root / f"run-{i}")
    return dirs


def member_info(index: int, status: str, **more: Any) -> dict[str, Any]:
    sweep = {"id": "s1", "index": index, "count": 3, "params": {RATE: float(index + 1)}}
    return {"status": status, "finished_at": "2026-01-01T00:00:00.000Z", "sweep": sweep, **more}


def entries(count: int, done: int) -> list[dict[str, Any]]:
    """What the runner lists: the first `done` combinations ran (run-<i>), the rest are pending."""
    return [
        {
            "index": i,
            "run_dir": f"run-{i}" if i < done else None,
            "params": {RATE: float(i + 1)},
            "status": "completed" if i < done else "pending",
        }
        for i in range(count)
    ]


def test_a_sweep_run_on_another_host_stays_running_until_told_that_host_is_gone(tmp_path: Path) -> None:
    """Its process cannot be looked at from here (a shared filesystem): `--other-host-gone` says it
    has ended, as for a run."""
    there = {"pid": 4242, "host": "elsewhere"}
    (member,) = make_sweep(
        tmp_path / "sweep",
        {"count": 2, "status": "running", **there, "runs": entries(2, 1)},
        [member_info(0, "completed", **there)],
    )

    note = refresh_sweep_summary(member)
    assert note is not None and "may still be running on host 'elsewhere'" in note
    assert "--other-host-gone" in note
    assert statuses(tmp_path / "sweep") == ["completed", "pending"]

    refresh_sweep_summary(member, other_host_gone=True)
    assert manifest_of(tmp_path / "sweep")["status"] == "crashed"
    assert statuses(tmp_path / "sweep") == ["completed", "not_run"]


@pytest.fixture
def live_sweep_process() -> Iterator[int]:
    """A live process that looks like `veeksha-run` (liveness checks the command line)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "veeksha-run"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_sweep_whose_process_lives_is_not_marked_crashed(tmp_path: Path, live_sweep_process: int) -> None:
    """Its member evaluated while the sweep goes on: the table is refreshed, the manifest (which the
    sweep's process rewrites) is left to it."""
    here = {"pid": live_sweep_process, "host": socket.gethostname()}
    (member,) = make_sweep(
        tmp_path / "sweep",
        {"count": 2, "status": "running", **here, "runs": entries(2, 1)},
        [member_info(0, "completed", **here)],
    )
    before = (tmp_path / "sweep" / SWEEP_MANIFEST).read_bytes()

    assert refresh_sweep_summary(member) is None
    assert (tmp_path / "sweep" / SWEEP_MANIFEST).read_bytes() == before
    assert [row["status"] for row in rows_of(tmp_path / "sweep")] == ["completed", "pending"]


def test_an_older_manifest_gets_the_killed_members_entry_from_its_run_json(tmp_path: Path) -> None:
    """Sweeps written before every combination was listed up front: entries only for the runs that
    had finished, no pid or host. The killed member's run.json names the sweep, its index, its
    parameters and the process that ran it (dead): the sweep is marked crashed and the member listed."""
    here = {"pid": dead_pid(), "host": socket.gethostname()}
    members = [member_info(0, "completed", **here), member_info(1, "crashed", **here)]
    make_sweep(tmp_path / "sweep", {"count": 3, "status": "running", "runs": entries(1, 1)}, members)

    note = refresh_sweep_summary(tmp_path / "sweep" / "run-1")

    assert note is not None and "marked crashed; 1 combination(s) never ran" in note
    manifest = manifest_of(tmp_path / "sweep")
    assert manifest["status"] == "crashed"
    assert [(e["index"], e["run_dir"], e["params"], e["status"]) for e in manifest["runs"]] == [
        (0, "run-0", {RATE: 1.0}, "completed"),
        (1, "run-1", {RATE: 2.0}, "crashed"),
    ]
    assert [row["status"] for row in rows_of(tmp_path / "sweep")] == ["completed", "crashed"]


def test_a_member_killed_before_it_had_a_directory_is_crashed_with_its_sweep(tmp_path: Path) -> None:
    """Killed while its server was starting: its entry says `running` and names no directory; no
    run.json will ever say otherwise, so the sweep's crash is its own."""
    here = {"pid": dead_pid(), "host": socket.gethostname()}
    runs = entries(3, 1)
    runs[1]["status"] = "running"
    (member,) = make_sweep(
        tmp_path / "sweep",
        {"count": 3, "status": "running", **here, "runs": runs},
        [member_info(0, "completed", **here)],
    )

    note = refresh_sweep_summary(member)

    assert note is not None and "marked crashed; 1 combination(s) never ran" in note
    assert statuses(tmp_path / "sweep") == ["completed", "crashed", "not_run"]


def test_an_older_sweep_that_names_no_process_says_so(tmp_path: Path) -> None:
    """Written before manifests named their process, killed before its first member had a directory:
    nothing says where it ran. The message says that, not "host None (process None)"."""
    make_sweep(tmp_path / "sweep", {"count": 2, "status": "running", "runs": entries(2, 0)}, [])

    result = run_cli(["evaluate", "sweep"], cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "may still be running: its process is not recorded" in line, line
    assert "once it has ended, rerun with --other-host-gone" in line
    assert "None" not in line
    assert manifest_of(tmp_path / "sweep")["status"] == "running"


@pytest.mark.parametrize(
    "manifest", [[], {"runs": "x"}, {"sweep_id": "s1", "runs": [1]}, {"runs": []}], ids=str
)
def test_evaluate_on_a_sweep_whose_manifest_is_not_one_says_so(tmp_path: Path, manifest: Any) -> None:
    """It exited 0 without a word (every step read no manifest and did nothing), or with a traceback
    (a manifest without its sweep_id)."""
    (tmp_path / "sweep").mkdir()
    write_json(tmp_path / "sweep" / SWEEP_MANIFEST, manifest)

    result = run_cli(["evaluate", "sweep"], cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"veeksha-run: {Path('sweep') / SWEEP_MANIFEST} is not a sweep manifest"), line
    assert "evaluate its run directories one by one" in line


def test_evaluating_the_killed_member_as_dot_marks_its_sweep_crashed(sweep_copy: Path) -> None:
    """`cd <member> && veeksha-run evaluate .`: the parent of `.` is `.`, so no sweep was found and
    the manifest stayed `running`."""
    killed = member_dirs(sweep_copy)[1]
    proc = run_cli(["evaluate", "."], cwd=killed)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"sweep {sweep_copy} was left running by a process that died: marked crashed" in proc.stdout
    assert_finished_as_crashed(sweep_copy)


def test_a_killed_sweep_whose_pid_is_now_evaluates_own_is_marked_crashed(sweep_copy: Path) -> None:
    """It was "sweep S is still running (process N)", exit 2, for ever: N was `evaluate` itself (a
    restarted container gives the same pid), and its command line names veeksha."""
    proc = evaluate_as_the_recorded_process(sweep_copy, sweep_copy / SWEEP_MANIFEST)

    assert proc.returncode == 1, proc.stdout + proc.stderr  # its killed member crashed
    assert "still running" not in proc.stderr
    assert f"sweep {sweep_copy} was left running by a process that died: marked crashed" in proc.stdout
    assert_finished_as_crashed(sweep_copy)
