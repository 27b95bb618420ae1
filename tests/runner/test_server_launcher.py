"""Starting and stopping servers: ready detection, clear failures, and no processes left behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from veeksha.runner.server_launcher import (
    ServerHandle,
    check_server_command,
    planned_api_host,
    readiness_headers,
    start_server,
)
from veeksha.shared.config import BenchmarkConfig, CommandServerConfig, SimulatedServerConfig
from veeksha.shared.config_loader import build_benchmark_config
from veeksha.shared.errors import ConfigError, VeekshaError
from veeksha.shared.starting import raise_terminated

from tests.runner.helpers import run_cli, serving

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


def spy_on_popen(
    monkeypatch: pytest.MonkeyPatch, after_first: Callable[[], None] | None = None
) -> list[subprocess.Popen[bytes]]:
    """The processes the launcher starts, in order (the server's first, then its watchdog's), filled
    in as they start; `after_first` runs once the server's Popen has returned."""
    import veeksha.runner.server_launcher as launcher

    spawned: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real_popen(*args, **kwargs)
        spawned.append(process)
        if len(spawned) == 1 and after_first is not None:
            after_first()
        return process

    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    return spawned


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


def test_command_that_never_gets_ready_times_out_and_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's pid from its Popen, not from a file it writes: on a loaded machine it was stopped
    # at the 1 s timeout before it had written one.
    spawned = spy_on_popen(monkeypatch)
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        ready_timeout=1.0,
    )
    with pytest.raises(VeekshaError, match="did not manage to answer 2xx"):
        start_server(cfg, log_path=tmp_path / "server.log")
    assert is_gone(spawned[0].pid)


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


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling(sig: int, handler: Any) -> Iterator[None]:
    previous = signal.signal(sig, handler)
    try:
        yield
    finally:
        signal.signal(sig, previous)


@pytest.mark.parametrize(
    ("sig", "handler"),
    [
        (signal.SIGINT, signal.default_int_handler),  # Ctrl-C
        (signal.SIGTERM, raise_terminated),  # the CLI's: a job scheduler's stop, as a Ctrl-C
        (signal.SIGHUP, _raise_keyboard_interrupt),  # a hangup (the CLI's raises once)
    ],
)
def test_a_signal_as_the_server_starts_stops_it_and_still_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int, handler: Any
) -> None:
    """A signal right after the server's Popen returned, before its handle and watchdog existed: the
    server, in a session of its own, never got the Ctrl-C and ran on for good (holding the GPU)."""
    spawned = spy_on_popen(monkeypatch, after_first=lambda: signal.raise_signal(sig))
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", "import time; time.sleep(60)"],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        ready_timeout=10,
    )
    try:
        with handling(sig, handler):
            with pytest.raises(KeyboardInterrupt):
                start_server(cfg, log_path=tmp_path / "server.log")
            assert signal.getsignal(sig) is handler  # put back as it was
        assert wait_gone(spawned[0].pid, 5)
    finally:  # the test failing: no server left behind
        for process in spawned:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_starting_a_server_leaves_the_signal_handlers_as_they_were(tmp_path: Path) -> None:
    """The handlers held while the server starts come back, and an ignored SIGHUP (nohup) stays
    ignored, the server's too (it inherits SIG_IGN across exec)."""
    with handling(signal.SIGTERM, raise_terminated), handling(signal.SIGHUP, signal.SIG_IGN):
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        with start_server(SimulatedServerConfig()) as handle:
            assert {s: signal.getsignal(s) for s in before} == before
            status = Path(f"/proc/{handle.pid}/status").read_text()
            ignored = int(re.search(r"^SigIgn:\s*(\w+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
            assert ignored & (1 << (signal.SIGHUP - 1))
        assert {s: signal.getsignal(s) for s in before} == before


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


# ---------------------------------------------------------------- a server of someone else's


class Answers200(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def marker_command(marker: Path) -> list[str]:
    """A server command that leaves `marker` behind when it starts, then waits."""
    return [sys.executable, "-c", f"import time; open({str(marker)!r}, 'w').close(); time.sleep(30)"]


def test_a_ready_url_that_answers_before_the_launch_is_refused(tmp_path: Path) -> None:
    """A forgotten vLLM or a container left from an earlier run answered the first readiness probe in
    50 ms, and the whole run measured it instead of the server the config describes."""
    with serving(Answers200) as api_base:
        ready_url = api_base.removesuffix("/v1") + "/"
        cfg = CommandServerConfig(command=marker_command(tmp_path / "started"), ready_url=ready_url)
        with pytest.raises(ConfigError) as caught:
            start_server(cfg, log_path=tmp_path / "server.log")
    message = str(caught.value)
    assert message.startswith(f"config error at server.ready_url: {ready_url} already answers (HTTP 200)")
    assert "stop what is there, or change the port" in message and "\n" not in message
    assert not (tmp_path / "started").exists() and not (tmp_path / "server.log").exists()


class Answers502(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("front", ["gateway-502", "silent-port"])
def test_what_answers_no_2xx_before_the_launch_is_not_refused(tmp_path: Path, front: str) -> None:
    """A local nginx or gateway in front of the server answers 502/503/404 (or nothing yet) until the
    backend exists; it was refused with no way out. Only a 2xx, which readiness would take for our
    server, is refused: anything else cannot pass for it."""
    with contextlib.ExitStack() as stack:
        if front == "gateway-502":
            ready_url = stack.enter_context(serving(Answers502)).removesuffix("/v1") + "/health"
        else:
            taken = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            ready_url = f"http://127.0.0.1:{taken.getsockname()[1]}/health"
        cfg = CommandServerConfig(
            command=marker_command(tmp_path / "started"), ready_url=ready_url, ready_timeout=1.0
        )
        with pytest.raises(VeekshaError, match="did not manage to answer 2xx") as caught:
            start_server(cfg, log_path=tmp_path / "server.log")
    assert not isinstance(caught.value, ConfigError)
    assert (tmp_path / "started").exists()  # launched


def test_the_run_is_refused_with_one_line_and_exit_2_before_the_server_starts(tmp_path: Path) -> None:
    with serving(Answers200) as api_base:
        (tmp_path / "c.veeksha.yml").write_text(
            f"output_dir: out\nserver: {{type: command, command: {marker_command(tmp_path / 'started')}, "
            f"ready_url: '{api_base.removesuffix('/v1')}/health'}}\nruntime: {{max_sessions: 1}}\n"
        )
        proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("veeksha-run: config error at server.ready_url:") and "already answers" in line
    assert not (tmp_path / "started").exists() and not (tmp_path / "out").exists()


# Binds the port, then forks a stray server that takes the first connection and answers it only once
# the process we launched has exited: ready_url answers while our server is gone.
EXITS_WHILE_ANOTHER_ANSWERS = """
import os, socket, sys, time
listening = socket.create_server(("127.0.0.1", int(sys.argv[1])))
accepted_r, accepted_w = os.pipe()
parent = os.getpid()
if os.fork() == 0:
    conn, _ = listening.accept()
    os.write(accepted_w, b"x")
    while os.getppid() == parent:
        time.sleep(0.01)
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
    time.sleep(30)
    os._exit(0)
os.read(accepted_r, 1)
sys.exit(0)
"""


def test_a_ready_url_that_answers_after_our_server_failed_is_no_readiness(tmp_path: Path) -> None:
    port = free_port()
    script = EXITS_WHILE_ANOTHER_ANSWERS.replace("sys.exit(0)", "sys.exit(3)")
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script, str(port)],
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, log_path=tmp_path / "server.log")
    assert f"exited with status 3, yet http://127.0.0.1:{port}/health answers" in str(caught.value)


@pytest.mark.parametrize("launcher_exits", ["before-ready", "after-ready"])
def test_a_launcher_that_exits_0_once_it_started_the_server_is_accepted(
    tmp_path: Path, launcher_exits: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`docker compose up -d --wait`, `systemctl start`, a script that backgrounds the server: the
    launcher exits 0 and the server answers. Refused since ready_url had to answer while our process
    lived; and a launcher that exited 0 just after readiness was "a server that exited mid-run"."""
    port, pid_file = free_port(), tmp_path / "pid"
    serve = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {tmp_path}"
    pause = "sleep 1; " if launcher_exits == "after-ready" else ""
    cfg = CommandServerConfig(
        command=["sh", "-c", f"{serve} >/dev/null 2>&1 & echo $! > {pid_file}; {pause}exit 0"],
        ready_url=f"http://127.0.0.1:{port}/",
        ready_timeout=30,
    )
    try:
        with start_server(cfg, log_path=tmp_path / "server.log") as handle:
            handle.process.wait(timeout=10)
            assert handle.exited_early(1.0) is None  # the mid-run watch: no dead server
            assert httpx.get(f"http://127.0.0.1:{port}/", trust_env=False).status_code == 200
        assert wait_gone(int(pid_file.read_text()), 10)  # stop() ended what the launcher left
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert capsys.readouterr() == ("", "")


def test_a_launcher_that_exits_0_while_nothing_answers_is_waited_on_until_the_timeout(tmp_path: Path) -> None:
    cfg = CommandServerConfig(
        command=["sh", "-c", "exit 0"], ready_url=f"http://127.0.0.1:{free_port()}/health", ready_timeout=1.0
    )
    with pytest.raises(VeekshaError, match=r"did not manage to answer 2xx .*exited with status 0"):
        start_server(cfg, log_path=tmp_path / "server.log")


def test_a_launcher_that_exited_0_is_a_dead_server_when_ready_url_stops_answering(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "pid"
    serve = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {tmp_path}"
    cfg = CommandServerConfig(
        command=["sh", "-c", f"{serve} >/dev/null 2>&1 & echo $! > {pid_file}; sleep 1; exit 0"],
        ready_url=f"http://127.0.0.1:{port}/",
        ready_timeout=30,
    )
    try:
        with start_server(cfg, log_path=tmp_path / "server.log") as handle:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the server dies, then the launcher exits 0
            handle.process.wait(timeout=10)
            assert "the server exited during the run (exit status 0" in (handle.exited_early(2.0) or "")
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- why it never got ready


# Answers /health with the status given as its second argument; /v1/models with 200 only to the key.
STATUS_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, status = int(sys.argv[1]), int(sys.argv[2])

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v1/models":
            ok = self.headers.get("Authorization") == "Bearer sk-ready-key-31"
            code = 200 if ok else 401
        else:
            code = status
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.mark.parametrize(
    ("status", "says"), [(502, "last answer: HTTP 502"), (None, "last error: ConnectError")]
)
def test_the_readiness_timeout_says_what_the_ready_url_last_answered(
    tmp_path: Path, status: int | None, says: str
) -> None:
    # The answering side is up before the launch (a gateway in front of a backend that never comes):
    # a Python server started by the command had to be up within the timeout on a loaded machine.
    command = [sys.executable, "-c", "import time; time.sleep(30)"]
    with contextlib.ExitStack() as stack:
        if status is None:  # nothing ever listens
            ready_url = f"http://127.0.0.1:{free_port()}/health"
        else:
            ready_url = stack.enter_context(serving(Answers502)).removesuffix("/v1") + "/health"
        cfg = CommandServerConfig(command=command, ready_url=ready_url, ready_timeout=1.5)
        with pytest.raises(VeekshaError, match="did not manage to answer 2xx") as caught:
            start_server(cfg, log_path=tmp_path / "server.log")
    assert says in str(caught.value)


def key_server_config(tmp_path: Path, api_base: str | None = None) -> BenchmarkConfig:
    port = free_port()
    tree: dict = {
        "server": {
            "type": "command",
            "command": [sys.executable, "-c", STATUS_SERVER, str(port), "200"],
            "ready_url": f"http://127.0.0.1:{port}/v1/models",
            "ready_timeout": 10,  # a Python server on a loaded machine: its start is not tested
        },
        "client": {"api_key": "sk-ready-key-31"},
    }
    if api_base is not None:
        tree["client"]["api_base"] = api_base
    return build_benchmark_config(tree)


def test_a_ready_url_behind_the_api_key_gets_the_key_the_client_sends(tmp_path: Path) -> None:
    """/v1/models of a server started with --api-key answers 401 without it: it never got ready."""
    cfg = key_server_config(tmp_path)
    assert isinstance(cfg.server, CommandServerConfig)
    with start_server(cfg.server, ready_headers=readiness_headers(cfg)) as handle:
        assert handle.process.poll() is None


def test_the_key_goes_to_the_ready_url_only_when_requests_go_to_the_same_server(tmp_path: Path) -> None:
    elsewhere = key_server_config(tmp_path, api_base="http://gateway.example:8000/v1")
    assert "Authorization" not in readiness_headers(elsewhere)
    same = key_server_config(tmp_path)
    assert readiness_headers(same)["Authorization"] == "Bearer sk-ready-key-31"


# ---------------------------------------------------------------- the program and its PATH


def test_a_program_is_looked_up_on_the_path_the_server_gets(tmp_path: Path) -> None:
    """`server.env.PATH: /opt/vllm/bin` with `command: [vllm, ...]` was refused: the check read the
    runner's PATH, while the server is started with its own."""
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "fake-llm-server"
    program.write_text("#!/bin/sh\nexec sleep 30\n")
    program.chmod(0o755)
    cfg = CommandServerConfig(
        command=["fake-llm-server"], ready_url="http://127.0.0.1:9/health", env={"PATH": str(folder)}
    )
    check_server_command(cfg)
    with pytest.raises(ConfigError, match="is not found on PATH"):
        check_server_command(
            CommandServerConfig(command=["fake-llm-server"], ready_url="http://127.0.0.1:9/health")
        )


# ---------------------------------------------------------------- a second Ctrl-C while it stops


def test_a_second_ctrl_c_during_the_stop_grace_kills_the_server_now(tmp_path: Path) -> None:
    """stop() marked the server stopped before waiting out its grace: a Ctrl-C then left a server that
    ignores SIGTERM running until the runner exited (the watchdog's turn), after a sweep's upload."""
    pid_file = tmp_path / "pid"
    server = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading
        from veeksha.runner.server_launcher import ServerHandle, _spawn
        handle = _spawn([sys.executable, "-c", {server!r}], dict(os.environ), None, api_base="")
        while not os.path.exists({str(pid_file)!r}) or not open({str(pid_file)!r}).read():
            pass
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            handle.stop(grace=30)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.stdin.read()  # stay alive: the watchdog must have nothing to do
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "interrupted\n"
        assert wait_gone(int(pid_file.read_text()), timeout=2)
    finally:
        parent.kill()
        parent.wait()
        for pipe in (parent.stdin, parent.stdout):
            pipe.close()


# ---------------------------------------------------------------- a chatty server's log


# Serves /health, prints a first line with its key, then ~12 MB of access-log-like lines over a second
# or two, then a last line, and waits.
CHATTY_SERVER = """
import sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("START", sys.argv[2:], flush=True)
line = "GET /v1/chat/completions 200 OK " + "x" * 90 + "\\n"
for i in range(100):
    sys.stdout.write(line * 1000)
    sys.stdout.flush()
    time.sleep(0.01)
print("THE END, key", sys.argv[3], flush=True)
time.sleep(60)
"""


def test_a_chatty_servers_log_is_kept_to_its_start_and_its_end(
    tmp_path: Path, temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's output went to a deleted temp file for the whole run: unbounded (vLLM's access
    log reaches gigabytes, unseen by du, in RAM on a tmpfs), and lost with a crash (200 characters of
    it survived). It is kept to its first and last bytes now, and written out scrubbed."""
    import veeksha.runner.server_launcher as launcher

    head, tail = 64 * 1024, 256 * 1024
    monkeypatch.setattr(launcher, "LOG_HEAD_BYTES", head, raising=False)
    monkeypatch.setattr(launcher, "LOG_TAIL_BYTES", tail, raising=False)
    monkeypatch.setattr(launcher, "LOG_TRIM_EVERY_S", 0.05, raising=False)
    # At idle priority the trimmer got next to no CPU on a busy machine and the log (tmpfs: RAM) grew
    # far past its cap: it runs at normal priority (it costs an fstat a tick).
    idled: list[str] = []
    monkeypatch.setattr(
        launcher, "to_background", lambda: idled.append(threading.current_thread().name), raising=False
    )
    port = free_port()
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", CHATTY_SERVER, str(port), "--api-key", "sk-chatty-secret-41"],
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    with start_server(cfg) as handle:
        largest = 0
        deadline = time.monotonic() + 30
        while "THE END" not in handle.output_tail(1):
            assert time.monotonic() < deadline
            # The file the server writes, as the system sees it (the name is already unlinked).
            largest = max(largest, os.stat(f"/proc/{handle.pid}/fd/1").st_size)
            time.sleep(0.02)
        # Bounded (the whole output is ~12 MB): a loaded machine may skip ticks, so a wide bound.
        assert largest < 8 * 1024 * 1024
        handle.stop(save_to=tmp_path / "server.log")
    text = (tmp_path / "server.log").read_text()
    assert text.startswith("START ['--api-key', '<redacted>']")
    assert re.search(r"\n\[veeksha: [\d,]+ bytes of the server's output left out here\]\n", text)
    assert text.endswith("THE END, key <redacted>\n") and "sk-chatty-secret-41" not in text
    assert len(text) < 8 * 1024 * 1024
    assert idled == []
    assert server_logs(temp_dir) == set()  # and nothing left in the temp folder
