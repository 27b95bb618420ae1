"""Starting and stopping servers: ready detection, clear failures, and no processes left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from veeksha.runner.server_launcher import ServerHandle, planned_api_host, start_server
from veeksha.shared.config import CommandServerConfig, SimulatedServerConfig
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import VeekshaError

SIM_MODULE = [sys.executable, "-m", "veeksha.runner.simserver.server"]


def is_gone(pid: int) -> bool:
    """True when the process no longer exists (a zombie awaiting a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulated_server_starts_answers_and_stops_without_leftovers() -> None:
    with start_server(SimulatedServerConfig()) as handle:
        assert handle.api_base.startswith("http://127.0.0.1:") and handle.api_base.endswith("/v1")
        models = httpx.get(handle.api_base + "/models", trust_env=False).json()
        assert [m["id"] for m in models["data"]] == ["veeksha-sim"]
        pids = [handle.pid, handle.watchdog.pid]  # type: ignore[union-attr]
        # Its temp log is already unlinked (no litter if we get killed) yet still readable.
        assert not handle.log_path.exists()
        assert "VEEKSHA_SIMULATED_SERVER_LISTENING" in handle.output_tail()
    assert all(is_gone(pid) for pid in pids)
    assert handle.process.returncode == 0  # SIGTERM is a clean shutdown, not a crash
    handle.stop()  # idempotent


def test_simulated_server_prints_the_listening_line_on_a_chosen_port() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*SIM_MODULE, "--config-json", f'{{"port": {port}}}'], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"VEEKSHA_SIMULATED_SERVER_LISTENING 127.0.0.1 {port}\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # a pipe left open is a ResourceWarning (an error in this suite)


def test_simulated_server_rejects_unknown_config_keys() -> None:
    done = subprocess.run([*SIM_MODULE, "--config-json", '{"max_batch": 3}'], capture_output=True, text=True)
    assert done.returncode == 2
    assert "max_batch_size" in done.stderr  # the "did you mean"


def test_command_server_is_ready_when_its_ready_url_answers(tmp_path: Path) -> None:
    port = free_port()
    cfg = CommandServerConfig(
        command=[*SIM_MODULE, "--port", str(port)],
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    with start_server(cfg, log_path=tmp_path / "server.log") as handle:
        assert handle.api_base == f"http://127.0.0.1:{port}/v1"  # derived from ready_url
        assert httpx.get(handle.api_base + "/models", trust_env=False).status_code == 200
    assert is_gone(handle.pid)
    assert "LISTENING" in (tmp_path / "server.log").read_text()  # a given log is kept


def test_command_that_exits_early_gives_a_clear_error_with_its_output(tmp_path: Path) -> None:
    script = "import os, sys; print('loading', os.environ['VEEKSHA_TEST_VAR']); sys.exit(3)"
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        env={"VEEKSHA_TEST_VAR": "model-x"},  # merged over the environment
    )
    log = tmp_path / "server.log"
    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, log_path=log)
    message = str(caught.value)
    assert "exited with status 3 before it was ready" in message
    assert "loading <redacted>" in message  # server.env values are secrets, wherever they show
    assert str(log) in message  # the full output is kept and named


def test_command_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        ready_timeout=1.0,
    )
    with pytest.raises(VeekshaError, match="did not manage to answer 2xx"):
        start_server(cfg, log_path=tmp_path / "server.log")
    assert is_gone(int(pid_file.read_text()))


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A server that starts a helper of its own, like vLLM's workers.
    port = free_port()
    child_pid = tmp_path / "child.pid"
    sim = " ".join(SIM_MODULE)
    cfg = CommandServerConfig(
        command=["sh", "-c", f"sleep 300 & echo $! > {child_pid}; exec {sim} --port {port}"],
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    with start_server(cfg):
        helper = int(child_pid.read_text())
        assert not is_gone(helper)
    assert wait_gone(helper, 2)


def test_server_dies_when_the_benchmark_process_dies(tmp_path: Path) -> None:
    # The parent is SIGKILLed: no stop(), no atexit. The watchdog must take the server down.
    script = textwrap.dedent(
        """
        import os, signal, sys
        from veeksha.runner.server_launcher import start_server
        from veeksha.shared.config import SimulatedServerConfig
        handle = start_server(SimulatedServerConfig())
        print(handle.pid, handle.watchdog.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == -signal.SIGKILL
    server_pid, watchdog_pid = map(int, done.stdout.split())
    assert wait_gone(server_pid, 5)
    assert wait_gone(watchdog_pid, 5)


def test_ctrl_c_while_waiting_for_readiness_stops_the_server(tmp_path: Path) -> None:
    # The benchmark process survives the KeyboardInterrupt, so this is the launcher's own cleanup,
    # not the watchdog's.
    pid_file = tmp_path / "pid"
    server = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    script = textwrap.dedent(
        f"""
        import sys
        from veeksha.runner.server_launcher import start_server
        from veeksha.shared.config import CommandServerConfig
        cfg = CommandServerConfig(command=[sys.executable, "-c", {server!r}],
                                  ready_url="http://127.0.0.1:{free_port()}/health")
        try:
            start_server(cfg)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.stdin.read()  # stay alive until the test is done looking
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        parent.send_signal(signal.SIGINT)
        assert parent.stdout is not None and parent.stdout.readline() == "interrupted\n"
        assert is_gone(int(pid_file.read_text()))
    finally:
        parent.kill()
        parent.wait()
        for pipe in (parent.stdin, parent.stdout):  # a pipe left open is a ResourceWarning
            pipe.close()


@pytest.mark.parametrize("interrupted_call", [2, 3])
def test_ctrl_c_between_spawning_the_server_and_waiting_for_it_stops_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted_call: int
) -> None:
    # The Ctrl-C is simulated by the launcher's own next Popen raising KeyboardInterrupt (call 2: the
    # watchdog starting; call 3: nothing of ours, so the readiness wait's first step): a real signal
    # lands in this window only now and then (a CI run found the server alive).
    import veeksha.runner.server_launcher as launcher

    pid_file = tmp_path / "pid"
    server = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    real_popen = subprocess.Popen
    calls = 0

    def popen(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == interrupted_call:
            deadline = time.monotonic() + 10
            while not pid_file.exists() or not pid_file.read_text():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            raise KeyboardInterrupt
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    monkeypatch.setattr(launcher.httpx.Client, "get", lambda *a, **k: popen())
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", server], ready_url=f"http://127.0.0.1:{free_port()}/health"
    )
    with pytest.raises(KeyboardInterrupt):
        start_server(cfg)
    assert wait_gone(int(pid_file.read_text()), timeout=0.5)


def test_unknown_server_type_is_an_error() -> None:
    class Odd:
        type = "teleport"

    with pytest.raises(VeekshaError, match="unknown server type"):
        start_server(Odd())


@pytest.mark.parametrize(
    ("tree", "host"),
    [
        ({"server": {"type": "simulated"}}, "127.0.0.1"),
        ({"server": {"type": "simulated", "host": "0.0.0.0"}}, "127.0.0.1"),  # reached over loopback
        ({"server": {"type": "simulated", "host": ""}}, "127.0.0.1"),  # every interface, IPv4 too
        ({"server": {"type": "simulated", "host": "::"}}, "::1"),  # every IPv6 interface only
        ({"server": {"type": "simulated", "host": "10.1.2.3"}}, "10.1.2.3"),
        (
            {"server": {"type": "command", "command": ["s"], "ready_url": "http://h1:8000/health"}},
            "h1",
        ),
        (  # the user's api_base beats a URL guessed from ready_url
            {
                "server": {"type": "command", "command": ["s"], "ready_url": "http://h1:8000/health"},
                "client": {"api_base": "http://h2:9000/v1"},
            },
            "h2",
        ),
        (  # the server section's own api_base beats both
            {
                "server": {
                    "type": "command",
                    "command": ["s"],
                    "ready_url": "http://h1:8000/health",
                    "api_base": "http://h3:8000/v1",
                },
                "client": {"api_base": "http://h2:9000/v1"},
            },
            "h3",
        ),
        ({"client": {"api_base": "http://[::1]:9000/v1"}}, "::1"),
        ({}, None),
    ],
)
def test_the_host_requests_will_go_to_is_known_before_the_server_starts(tree: dict, host: str | None) -> None:
    assert planned_api_host(build_benchmark_config(tree)) == host


@pytest.mark.parametrize("bind", ["0.0.0.0", "", "::"])
def test_the_planned_host_is_the_host_the_started_simulated_server_is_reached_at(bind: str) -> None:
    cfg = build_benchmark_config({"server": {"type": "simulated", "host": bind, "port": 0}})
    assert isinstance(cfg.server, SimulatedServerConfig)
    with start_server(cfg.server) as server:
        assert httpx.URL(server.api_base).host == planned_api_host(cfg)


@pytest.fixture()
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The launcher's temp logs (tempfile.mkstemp, in this process) go to a folder of this test's own:
    in the shared /tmp, other xdist workers' servers make and remove logs of theirs meanwhile, and a
    test's clean-up there removed another's kept log."""
    logs = tmp_path / "tmp"
    logs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(logs))
    return logs


def server_logs(folder: Path) -> set[Path]:
    return set(folder.glob("veeksha-server-*.log"))


def test_a_temp_log_is_gone_while_the_server_loads_and_comes_back_scrubbed_when_it_fails(
    tmp_path: Path, temp_dir: Path
) -> None:
    # A runner killed while a server loads (minutes for vLLM) left the raw log, with the server's
    # printed flags and environment, in /tmp. Now it is unlinked once the server has it open.
    started = tmp_path / "started"
    script = (
        "import os, sys, time; print('args', sys.argv[1:], 'key', os.environ['CLIENT_KEY'], flush=True); "
        f"open({str(started)!r}, 'w').close(); time.sleep(1.5); sys.exit(4)"
    )
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script, "--api-key=sk-eq-secret-1"],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        env={"CLIENT_KEY": "sk-client-secret-2"},
    )
    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, extra_secrets=["sk-client-secret-2"])
    message = str(caught.value)
    assert "exited with status 4" in message and "args" in message
    assert "sk-eq-secret-1" not in message and "sk-client-secret-2" not in message
    # The failed server's log is left for the user, named in the message, scrubbed.
    (kept,) = server_logs(temp_dir)
    assert str(kept) in message
    assert kept.stat().st_mode & 0o077 == 0  # and for the user alone, as mkstemp made it
    text = kept.read_text()
    assert "args" in text and "sk-eq-secret-1" not in text and "sk-client-secret-2" not in text


def test_the_temp_log_is_not_on_disk_while_the_server_starts(tmp_path: Path, temp_dir: Path) -> None:
    release = tmp_path / "release"
    script = (
        f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\nraise SystemExit(1)"
    )
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script, "--hf-token", "hf-secret-3"],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
    )
    seen: list[set[Path]] = []

    def look_then_release() -> None:
        time.sleep(0.5)
        seen.append(server_logs(temp_dir))
        release.touch()

    watcher = threading.Thread(target=look_then_release)
    watcher.start()
    with pytest.raises(VeekshaError):
        start_server(cfg)
    watcher.join()
    assert seen == [set()]  # nothing in the temp folder while it was loading
    assert len(server_logs(temp_dir)) == 1  # the failed server's log, kept for the user


def test_the_output_tail_never_starts_inside_a_cut_line(tmp_path: Path) -> None:
    # The tail reads the last 64 KiB: a secret straddling the window's start kept its second half.
    log = tmp_path / "server.log"
    log.write_text("x" * 10 + "sk-straddling-secret-4" + "y" * (64 * 1024 - 12) + "\nlast line\n")
    handle = ServerHandle(subprocess.Popen(["true"]), "", log, secrets=["sk-straddling-secret-4"])
    handle.process.wait()
    assert handle.output_tail(5) == "last line"


def test_the_output_tail_of_a_progress_bar_is_its_last_updates(tmp_path: Path) -> None:
    # Model loading draws a bar with \r only: the last 64 KiB had no \n, and the tail was empty.
    log = tmp_path / "server.log"
    log.write_text(
        "Loading weights\n" + "".join(f"\rshards: {i % 100:3d}% ..........{'=' * 20}" for i in range(3000))
    )
    handle = ServerHandle(subprocess.Popen(["true"]), "", log)
    handle.process.wait()
    assert handle.output_tail(2).splitlines()[-1].startswith("shards:  99%")
