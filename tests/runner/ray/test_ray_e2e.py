"""Drivers on a Ray cluster, for real: a local two-node cluster, two driver actors (one per node),
against the same run on two local driver processes. Same records, same files, same metrics; and a
killed actor, or a killed driver process behind a live actor, still leaves one record per dispatched
request and names the driver that died.

Every Ray process runs in its own network and PID namespace (`unshare`): 127.0.0.1 is then the only
address, so Ray's traffic stays on loopback, and the namespace's end takes every Ray process with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from veeksha.shared.paths import RunPaths

from tests.runner.helpers import VEEKSHA_RUN, all_text_under, no_plots_env, only_run_dir, read_jsonl
from tests.runner.ray.cluster_runs import API_KEY

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'veeksha[ray]')")

# One worker runs them all (with `pytest --dist loadgroup`): each worker given one of them would start
# a cluster of its own for the module's fixture.
pytestmark = pytest.mark.xdist_group("ray")

SCRIPT = Path(__file__).with_name("cluster_runs.py")
HEAD_PORT = "6390"  # outside Ray's worker port range (10002-19999)
FLAGS = [
    "--server.type",
    "simulated",
    "--server.decode_step_base",
    "0.001",
    "--runtime.num_drivers",
    "2",
    "--runtime.max_sessions",
    "30",
    "--traffic_scheduler.interval_generator.arrival_rate",
    "20",
    "--session_generator.output_spec.text.output_length_generator",
    "{type: fixed, value: 16}",
    "--trace_recorder.include_content",
    "true",
    "--seed",
    "5",
    # Scraped only when a probe at start answers in time: on a busy machine one run may have the
    # file and the other not. The files compared are the runs' own.
    "--server_metrics.enabled",
    "false",
]


def in_own_namespace(command: list[str]) -> list[str]:
    """`command` in a new network (loopback only) and PID namespace: Ray's traffic stays on loopback,
    and `ray stop --force` inside reaches only this cluster's processes."""
    wrapped = [
        "unshare",
        "--net",
        "--pid",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*wrapped, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        # Outside a namespace Ray would use this machine's network address, and stopping the test's
        # cluster would stop every Ray process on the machine: not a test to run on someone's box.
        pytest.fail(
            f"the Ray test needs network and PID namespaces (root, unshare, ip): {probe.stderr.strip()}"
        )
    return [*wrapped, *command]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("ray")
    command = [sys.executable, str(SCRIPT), str(work), HEAD_PORT, "--", *FLAGS]
    done = subprocess.run(
        in_own_namespace(command), env=no_plots_env(), capture_output=True, text=True, timeout=900
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(work.glob("*.log")))
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{logs}"
    out: dict[str, Any] = {
        name: (
            only_run_dir(work / name),
            int((work / f"{name}.rc").read_text()),
            (work / f"{name}.log").read_text(),
        )
        for name in ("local", "ray", "ray-killed", "driver-killed")
    }
    out["received"] = int((work / "driver-killed.received").read_text())
    out["temp-dirs"] = orjson.loads((work / "driver-killed.temp.json").read_bytes())
    out["leaks"] = orjson.loads((work / "leaks.json").read_bytes())
    out["too-many"] = (work / "too-many", int((work / "too-many.rc").read_text()), (work / "too-many.log"))
    return out


def sent(paths: RunPaths) -> set[tuple[Any, ...]]:
    """Each request: its session, node, driver, prompt and (a session's first) scheduled offset."""
    return {
        (
            t["session_id"],
            t["node_id"],
            t["driver_id"],
            round(t["scheduled_at"], 9) if not t["parent_nodes"] else None,
            orjson.dumps(t["content"]),
        )
        for t in read_jsonl(paths.dispatch_trace)
    }


def files(paths: RunPaths) -> set[str]:
    return {str(p.relative_to(paths.root)) for p in paths.root.rglob("*") if p.is_file()}


def test_a_ray_run_sends_what_a_local_run_sends(runs: dict[str, Any]) -> None:
    (local, local_rc, _), (remote, remote_rc, _) = runs["local"], runs["ray"]
    assert local_rc == remote_rc == 0
    assert sent(remote) == sent(local)
    assert len(sent(local)) == len(read_jsonl(local.request_records)) >= 30


def test_a_ray_run_has_the_same_records_files_and_metrics_as_a_local_run(runs: dict[str, Any]) -> None:
    local, remote = runs["local"][0], runs["ray"][0]
    local_records, remote_records = read_jsonl(local.request_records), read_jsonl(remote.request_records)
    assert [list(r) for r in remote_records] == [list(r) for r in local_records]
    assert sorted(r["request_id"] for r in remote_records) == sorted(r["request_id"] for r in local_records)
    assert all(r["status"] == "success" for r in remote_records)
    assert files(remote) == files(local)
    local_summary = orjson.loads(local.summary_stats.read_bytes())
    remote_summary = orjson.loads(remote.summary_stats.read_bytes())
    assert remote_summary.keys() == local_summary.keys()
    assert remote_summary["num_requests"] == local_summary["num_requests"]
    assert remote_summary["ttfc_p50"] > 0


def test_the_ray_drivers_ran_on_two_nodes(runs: dict[str, Any]) -> None:
    info = orjson.loads(runs["ray"][0].run_json.read_bytes())
    assert info["status"] == "completed"
    wheres = [d["where"] for d in info["driver"]["drivers"]]
    assert all(w.startswith("ray node ") for w in wheres) and len(set(wheres)) == 2
    assert all(d["cpu_seconds"] > 0 for d in info["driver"]["drivers"])
    assert all(
        d["cpu_steal_seconds"] is not None and d["cpu_steal_seconds"] >= 0 for d in info["driver"]["drivers"]
    )


def test_a_killed_ray_actor_leaves_a_record_for_every_dispatched_request(runs: dict[str, Any]) -> None:
    paths, rc, log = runs["ray-killed"]
    assert rc == 1, log
    records = read_jsonl(paths.request_records)
    dispatched = [t["request_id"] for t in read_jsonl(paths.dispatch_trace) if t["dispatched_at"] is not None]
    assert sorted(r["request_id"] for r in records) == sorted(dispatched)
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    (dead,) = {r["driver_id"] for r in lost}  # only the killed actor's requests were lost
    survivor = [r for r in records if r["driver_id"] != dead]
    assert survivor and all(r["error_type"] != "driver_lost" for r in survivor)
    info = orjson.loads(paths.run_json.read_bytes())
    assert info["status"] == "failed"
    assert f"driver {dead} on ray node" in info["error"] and "its Ray actor was lost" in info["error"]
    assert info["driver"]["num_driver_lost"] == len(lost) > 0
    states = {d["driver_id"]: d["status"] for d in info["driver"]["drivers"]}
    assert states[dead] == "failed" and states[1 - dead] == "interrupted"  # told to stop, it did


def test_a_driver_killed_behind_its_live_actor_leaves_a_record_for_each_request_it_sent(
    runs: dict[str, Any],
) -> None:
    """The driver's last dispatches (its tick, and its write buffer while its actor was frozen) were
    never shipped: its actor reads them from the driver's ring file on its node and sends them at
    the end of the stream. Without that, about a hundred requests the server had got no record."""
    paths, rc, log = runs["driver-killed"]
    assert rc == 1, log
    records = read_jsonl(paths.request_records)
    dispatched = [t["request_id"] for t in read_jsonl(paths.dispatch_trace) if t["dispatched_at"] is not None]
    assert len(records) >= runs["received"] > 30
    assert sorted(r["request_id"] for r in records) == sorted(dispatched)  # one each
    lost = [r for r in records if r["error_type"] == "driver_lost"]
    (dead,) = {r["driver_id"] for r in lost}
    info = orjson.loads(paths.run_json.read_bytes())
    assert f"driver {dead} on ray node" in info["error"] and "exit code -9" in info["error"]
    assert "killed by SIGKILL" in log  # the console names the signal, as for a local driver


def test_each_actor_keeps_its_drivers_ring_file_in_a_temp_dir_it_removes_when_stopped(
    runs: dict[str, Any],
) -> None:
    before, during, after = (set(runs["temp-dirs"][k]) for k in ("before", "during", "after"))
    made = during - before
    assert len(made) == 2 and all(name.startswith("veeksha-driver-") for name in made), during  # one each
    assert not made & after, after


def test_the_api_key_stays_out_of_the_clusters_job_table_and_files(runs: dict[str, Any]) -> None:
    # Ray records the command line as the job's entrypoint: it gets run.json's redacted one.
    leaks = runs["leaks"]
    (entrypoint,) = [e for e in leaks["entrypoints"] if "--client.api_key" in e]
    assert API_KEY not in entrypoint and "<redacted>" in entrypoint
    assert leaks["files_holding_the_key"] == []


def test_joining_the_cluster_keeps_the_runs_sigterm_handler(runs: dict[str, Any]) -> None:
    # ray.init installs its own (sys.exit): a SIGTERM while a server loads would then leave a sweep's
    # manifest saying running.
    assert runs["leaks"]["kept_sigterm"] is True
    assert API_KEY not in all_text_under(runs["ray"][0].root)


def test_more_drivers_than_the_cluster_has_cpus_is_a_one_line_config_error(runs: dict[str, Any]) -> None:
    out_dir, rc, log = runs["too-many"]
    assert rc == 2
    (line,) = log.read_text().splitlines()
    assert line == (
        "veeksha-run: config error at runtime.num_drivers: 3 drivers need 3 CPUs, and the Ray cluster "
        f"at '127.0.0.1:{HEAD_PORT}' has 2; use at most 2, auto, or add nodes"
    )
    assert not out_dir.exists()


NOT_RAY = "import socket, time; s = socket.create_server(('127.0.0.1', 6391)); time.sleep(60)"


def test_an_open_port_that_is_not_ray_is_a_one_line_config_error(tmp_path: Path) -> None:
    # Ray's C++ client prints its own connection warnings to the console: they are held back, so the
    # user sees the one line that says what is wrong and what to do.
    script = f'{sys.executable} -c "{NOT_RAY}" & sleep 1; exec "$@"'
    run = [VEEKSHA_RUN, "--server.type", "simulated", "--runtime.num_drivers", "2"]
    run += ["--runtime.ray_address", "127.0.0.1:6391", "--output_dir", "out"]
    done = subprocess.run(
        in_own_namespace(["sh", "-c", script, "sh", *run]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("veeksha-run: config error at runtime.ray_address: cannot join the Ray cluster")
    assert not (tmp_path / "out").exists()


def refused_in_own_namespace(tmp_path: Path, *args: str) -> str:
    """`veeksha-run ARGS` in its own namespace, with an open port that is not Ray at 127.0.0.1:6391:
    its one line on exit 2, and nothing made in `tmp_path` but the config."""
    script = f'{sys.executable} -c "{NOT_RAY}" & sleep 1; exec "$@"'
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        in_own_namespace(["sh", "-c", script, "sh", VEEKSHA_RUN, *args]),
        cwd=tmp_path,
        env=no_plots_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (line,) = done.stderr.splitlines()
    return line


def test_a_sweep_on_a_port_that_is_not_ray_is_refused_before_its_directory_is_made(tmp_path: Path) -> None:
    # Found only inside each run, it left a sweep directory whose every member failed (exit 1).
    (tmp_path / "c.veeksha.yml").write_text(
        "output_dir: out\nserver: {type: simulated}\nseed: !expand [1, 2]\n"
        "runtime: {num_drivers: 2, ray_address: '127.0.0.1:6391'}\n"
    )
    line = refused_in_own_namespace(tmp_path, "--config", "c.veeksha.yml")
    assert line.startswith("veeksha-run: config error at runtime.ray_address: cannot join the Ray cluster")


def test_a_capacity_search_on_a_port_that_is_not_ray_is_refused_before_its_directory_is_made(
    tmp_path: Path,
) -> None:
    # Found only inside its first attempt, it left a capsearch directory behind its exit 2.
    (tmp_path / "s.veeksha.yml").write_text(
        "output_dir: out\nstart_value: 4\nmax_value: 16\nmax_iterations: 2\n"
        "benchmark_config:\n"
        "  server: {type: simulated}\n"
        "  runtime: {num_drivers: 2, ray_address: '127.0.0.1:6391', benchmark_timeout: 1}\n"
        "  evaluators: [{type: performance, slos: [{name: p99 ttfc, metric: ttfc, percentile: 0.99,"
        " value: 5}]}]\n"
    )
    line = refused_in_own_namespace(tmp_path, "capacity-search", "--config", "s.veeksha.yml")
    assert line.startswith(
        "veeksha-run: config error at benchmark_config.runtime.ray_address: cannot join the Ray cluster"
    ), line
