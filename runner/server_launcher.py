"""Start the LLM server a config asks for, wait until it answers, and stop it without leaving orphans.

`server: {type: simulated}` runs `python -m veeksha.runner.simserver.server` and waits for its
LISTENING line; `server: {type: command}` runs any command (vLLM, SGLang, llama-server) and polls its
`ready_url` until it answers 2xx. Something already answering 2xx at `ready_url` before the launch (a
forgotten vLLM, a container left from an earlier run) is refused: the run would measure it instead; any
other answer (a gateway's 502 while its backend is down) is no readiness, and not refused. A command
that exits 0 (`docker compose up -d --wait`, a script that backgrounds the server) is a launcher: the
server is ready when ready_url answers 2xx; a non-zero exit before that is a failed start.
The readiness probe sends the client's key and headers when requests go to the same server (a
`/v1/models` behind `--api-key` answers 401 without them).

Its output goes to a temp file, unlinked at once, kept to its first and last megabytes
(LOG_HEAD_BYTES, LOG_TAIL_BYTES: vLLM's access log alone can reach gigabytes); `save_log` writes it,
scrubbed, into the run directory as `server.log` when the run ends, however it ends.

No orphans: the server gets its own session, so `stop()` can signal its whole process group (workers
included), and a tiny watchdog process (own session too) terminates that group if the benchmark process
disappears without calling `stop()` (SIGKILL, OOM kill, crash). A watchdog rather than
PR_SET_PDEATHSIG: that signal follows the *thread* that forked (wrong when started from a worker
thread), reaches only the direct child, and needs a preexec_fn, which is unsafe in threaded programs.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from veeksha.runner.driver.http.client import build_headers
from veeksha.runner.held_signals import HeldSignals
from veeksha.shared.config import BenchmarkConfig, CommandServerConfig, SimulatedServerConfig
from veeksha.shared.config_checks import uses_client_api_base
from veeksha.shared.errors import ConfigError, VeekshaError
from veeksha.shared.redact import (
    REDACTED,
    environment_secrets,
    redact,
    redact_url,
    scrub_list,
    scrub_text,
    secret_values,
)
from veeksha.shared.schema import to_dict

LISTENING_PREFIX = "VEEKSHA_SIMULATED_SERVER_LISTENING"  # printed by simserver/server.py
SIMULATED_START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_POLL_S = 0.02
# A server bound to every interface is reached over the loopback address of the family it listens
# on: `::` is an IPv6-only socket (asyncio sets IPV6_V6ONLY), which 127.0.0.1 never reaches; "" binds
# both families, and the port announced for it is the IPv4 socket's (simserver.listening_address).
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
_TAIL_LINES = 30
_TAIL_WINDOW = 64 * 1024  # what output_tail reads its lines from
# The server's log is kept to its start (the command line, the config, model loading) and its end
# (what it did last, a traceback), the middle dropped once it outgrows them: checked every second.
LOG_HEAD_BYTES = 2 * 1024 * 1024
LOG_TAIL_BYTES = 8 * 1024 * 1024
LOG_TRIM_EVERY_S = 1.0
# Before the launch: how long something already at ready_url has to accept a connection, and to answer.
ALREADY_THERE_CONNECT_S = 1.0
ALREADY_THERE_ANSWER_S = 2.0
# A launcher that exited 0 mid-run: how long ready_url has to answer the one probe that tells a
# launcher whose server runs on from a server that is gone.
STILL_THERE_S = 2.0

# Runs as `python -c` with argv [parent_pid, pgid]: when the parent is gone (we get reparented),
# SIGTERM the server's group, give it the grace period, then SIGKILL. Exits once the group is gone.
_WATCHDOG = """# veeksha server watchdog
import os, signal, sys, time
parent, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while alive():
    if os.getppid() != parent:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            break
        end = time.monotonic() + grace
        while alive() and time.monotonic() < end:
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.5)
"""


class CappedLog:
    """A temp log the server appends to (O_APPEND), kept to its first LOG_HEAD_BYTES and about its
    last LOG_TAIL_BYTES to 2 * LOG_TAIL_BYTES: once the file outgrows them, its start is kept in memory
    (once), its last LOG_TAIL_BYTES too, and the file is truncated (the server's next write lands at
    its new end, 0). Output the server writes between that read and the truncation (microseconds) is
    lost with the rest of the middle. Read through our own descriptor: the file is already unlinked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.head: bytes | None = None  # the first LOG_HEAD_BYTES, once the file outgrew them
        self.carry = b""  # the last bytes before the latest truncation
        self.dropped = 0  # bytes left out between head and carry
        self.lock = threading.Lock()  # the trimming thread and the readers share the offset-free fd

    def trim(self) -> None:
        with self.lock:
            size = os.fstat(self.fd).st_size
            start = LOG_HEAD_BYTES if self.head is None else 0  # where the droppable part begins
            if size <= start + 2 * LOG_TAIL_BYTES:
                return
            if self.head is None:
                self.head = os.pread(self.fd, LOG_HEAD_BYTES, 0)
            keep_from = size - LOG_TAIL_BYTES
            kept = _read_from(self.fd, keep_from)
            os.ftruncate(self.fd, 0)
            self.dropped += len(self.carry) + keep_from - start
            self.carry = kept

    def contents(self) -> bytes:
        """Everything kept, with a line where the middle was left out. A line cut at either edge of
        the gap is dropped whole: a secret cut there would escape the scrub."""
        with self.lock:
            rest = self.carry + _read_from(self.fd, 0)
            if self.head is None:
                return rest
            head, dropped = self.head, self.dropped
        gap = f"\n[veeksha: {dropped:,} bytes of the server's output left out here]\n".encode()
        return _before_last_line_break(head) + gap + _after_first_line_break(rest)

    def close(self) -> None:
        with self.lock:
            os.close(self.fd)


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1024 * 1024, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _before_last_line_break(data: bytes) -> bytes:
    return data[: max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]


def _after_first_line_break(data: bytes) -> bytes:
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return data[min(ends) + 1 :] if ends else b""


@dataclass
class ServerHandle:
    """A started server. `stop()` (or leaving the `with` block) ends its whole process group."""

    process: subprocess.Popen[bytes]
    api_base: str
    log_path: Path
    watchdog: subprocess.Popen[bytes] | None = None
    # A temp log of ours: unlinked as soon as the server has it open (a run killed while the server
    # loads leaves no raw output in /tmp); read through _log (CappedLog); written out scrubbed if kept.
    owns_log: bool = False
    secrets: list[str] = field(default_factory=list)  # scrubbed from what we show of its output
    _stopped: bool = field(default=False, repr=False)
    _log: CappedLog | None = field(default=None, repr=False)
    _trimmer: threading.Thread | None = field(default=None, repr=False)
    _trim_stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _exit_note: str | None = field(default=None, repr=False)
    # A command server's ready_url and readiness headers: a launcher that exited 0 (docker compose
    # up -d, a script that backgrounds the server) is no dead server while ready_url answers 2xx.
    ready_url: str | None = field(default=None, repr=False)
    ready_headers: dict[str, str] = field(default_factory=dict, repr=False)
    _launcher_done: bool = field(default=False, repr=False)  # it exited 0 and ready_url answered

    @property
    def pid(self) -> int:
        return self.process.pid

    def output_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines the server printed (stdout and stderr), secrets scrubbed."""
        if self._log is not None:
            return _tail(self._log.contents(), lines, self.secrets)
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                start = max(0, f.tell() - _TAIL_WINDOW)
                f.seek(start)
                return _tail(f.read(), lines, self.secrets, cut=start > 0)
        except OSError:
            return ""

    def output(self) -> str:
        """Everything the server printed so far (of a temp log: what CappedLog kept), unscrubbed: for
        our own reading, never shown."""
        try:
            if self._log is not None:
                return self._log.contents().decode(errors="replace")
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def exited_early(self, elapsed: float | None = None) -> str | None:
        """Why the run cannot be trusted when the server exited before stop() (it crashed or quit
        mid-run: every later request failed against nothing); None while it runs. `elapsed`: seconds
        since the run's start when asked (the recorder asks every round); the first answer is kept."""
        if self._exit_note is not None:
            return self._exit_note
        code = None if self._stopped or self._launcher_done else self.process.poll()
        if code is None:
            return None
        if code == 0 and self.ready_url is not None and self._still_answers():
            self._launcher_done = True  # asked once: a launcher that handed the server on, exited
            return None
        when = f", at {elapsed:.1f} s" if elapsed is not None else ""
        last = (self.output_tail(1).strip().splitlines() or ["(no output)"])[-1][:200]
        self._exit_note = (
            f"the server exited during the run (exit status {code}{when}); its last output: {last}"
        )
        return self._exit_note

    def _still_answers(self) -> bool:
        """True when ready_url answers 2xx now (one probe, within STILL_THERE_S)."""
        assert self.ready_url is not None
        try:
            with httpx.Client(timeout=STILL_THERE_S, trust_env=False) as client:
                status = client.get(self.ready_url, headers=self.ready_headers).status_code
        except httpx.HTTPError:
            return False
        return 200 <= status < 300

    def keep_log(self) -> None:
        """Leave the log for the user (the server failed), its secrets scrubbed: our temp log is
        written out again under its name, a log the user named is scrubbed in place."""
        if not (self.owns_log or self.secrets):
            return
        text = scrub_text(self.output(), self.secrets)
        with contextlib.suppress(OSError):
            if self.owns_log:  # readable by us alone, as mkstemp made it; never through a planted link
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            else:
                self.log_path.write_text(text)
        self.owns_log = False

    def save_log(self, path: Path) -> None:
        """Write what was kept of the server's output to `path` (the run directory's SERVER_LOG),
        scrubbed of its secrets (its args', its environment's, the client's). Whatever ended the run,
        a crash's traceback included. A failure to write is said, never raised: the run's own files
        matter more."""
        try:
            path.write_text(scrub_text(self.output(), self.secrets))
        except OSError as e:
            print(f"veeksha: could not write the server's log {path}: {e.strerror or e}", file=sys.stderr)

    def stop(self, grace: float = STOP_GRACE_S, keep_log: bool = False, save_to: Path | None = None) -> None:
        """SIGTERM the server's process group, SIGKILL whatever remains after `grace` seconds;
        `keep_log`: then leave its log for the user (see keep_log); `save_to`: write it there
        (save_log). Interrupted meanwhile (a second Ctrl-C), it kills the group at once: the watchdog
        would act only once the runner exits, after a sweep's next runs or its upload."""
        if self._stopped:
            return
        self._stopped = True
        try:
            _terminate_group(self.process, grace)
        except BaseException:
            _terminate_group(self.process, 0.0)
            raise
        finally:
            self._release(keep_log, save_to)

    def _release(self, keep_log: bool, save_to: Path | None) -> None:
        """The watchdog, the log's trimming and its descriptor, once the server is gone."""
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.kill()
            self.watchdog.wait()
        self._trim_stop.set()
        if self._trimmer is not None:
            self._trimmer.join()
        if save_to is not None:
            self.save_log(save_to)
        if keep_log:
            self.keep_log()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_server_command(
    cfg: SimulatedServerConfig | CommandServerConfig | None, secrets: list[str] | None = None
) -> None:
    """A command server whose program cannot be found is a config error: say so before any
    directory, log file or process exists. `secrets`: the run's known secret values (scrub_list),
    hidden in the program as the message quotes it."""
    if not isinstance(cfg, CommandServerConfig) or not cfg.command:
        return
    program = str(cfg.command[0])
    # A path with a folder is checked as it is, else the PATH the server gets (server.env's, if it
    # sets one), as Popen(env=...) looks the program up there.
    path = {**os.environ, **cfg.env}.get("PATH", os.defpath)
    if shutil.which(program, path=path) is None:
        where = "is not an executable file" if os.sep in program else "is not found on PATH"
        raise ConfigError(
            f"config error at server.command[0]: {_shown_program(program, secrets or [])!r} {where}; "
            f"{_program_hint(program)}"
        )


def _shown_program(program: str, secrets: list[str]) -> str:
    """The first word of server.command as a message may show it: redacted as the whole command is
    (`VLLM_API_KEY=<redacted>` inside one string holding a whole command line), the value of an
    environment assignment hidden whatever its name, as every server.env value is, and the run's
    other `secrets` hidden (the client's key written into a whole command line)."""
    name, eq, _ = program.partition("=")
    if eq and name.isidentifier():
        return f"{name}={REDACTED}"
    return scrub_text(str(redact([program])[0]), secrets)


def _program_hint(program: str) -> str:
    """What to do about a first word of server.command that is no program."""
    name, eq, _ = program.partition("=")
    if eq and name.isidentifier():
        return (
            f"an environment variable is no program: set it as server.env.{name} and begin "
            "server.command with the program"
        )
    if len(program.split()) > 1:
        return (
            "server.command is a list of words: give the program alone first, each argument as an "
            "item of its own, environment variables in server.env"
        )
    return "install the server or give the full path to its executable"


def check_server_port(
    cfg: SimulatedServerConfig | CommandServerConfig | None,
    host_key: str = "server.host",
    port_key: str = "server.port",
) -> None:
    """A simulated server that could not listen is a config error, before any directory is made
    (the server failed with a 30-line traceback, the directory made): a fixed port another process
    listens on, or a host that does not resolve or is no address of this machine (checked for port 0
    too). Every address the host resolves to is tried, as the server binds them all.
    `host_key`/`port_key` name the keys in the message (`--host`/`--port` for simulate-server)."""
    if not isinstance(cfg, SimulatedServerConfig):
        return
    where = f"{url_host(cfg.host)}:{cfg.port}"
    try:
        # "" means every interface to the server (asyncio's create_server), as None does here.
        addresses = socket.getaddrinfo(
            cfg.host or None, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as e:
        raise ConfigError(
            f"config error at {host_key}: {cfg.host!r} does not resolve ({e.strerror or e}); give an "
            "address of this machine, e.g. 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
                if family == socket.AF_INET6:  # IPv6-only, as asyncio binds: 127.0.0.1:port may be taken
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as e:
            raise ConfigError(_cannot_listen(e, where, host_key, port_key)) from None


def _cannot_listen(e: OSError, where: str, host_key: str, port_key: str) -> str:
    """The key a failed bind is about: the port when it is taken or privileged, else the host."""
    reason = e.strerror or str(e)
    if e.errno in (errno.EADDRINUSE, errno.EACCES):
        return (
            f"config error at {port_key}: cannot listen on {where} ({reason}); choose another port, "
            "or 0 for a free one"
        )
    return (
        f"config error at {host_key}: cannot listen on {where} ({reason}); the host must be an address "
        "of this machine, e.g. 127.0.0.1, or 0.0.0.0 for every interface"
    )


def check_ready_url_free(cfg: SimulatedServerConfig | CommandServerConfig | None) -> None:
    """ConfigError when something answers 2xx at a command server's ready_url before it is launched:
    it would pass for our server's readiness, and the run would measure whatever is there. Any other
    answer, or none (a gateway answering 502 until its backend exists, a port that accepts connections
    and waits), cannot pass for it: not refused (a server of ours that cannot bind the port exits
    non-zero before it is ready, an error then). Not part of a dry run's checks: it connects
    (runner/benchmark.py asks before the output directory is made)."""
    if not isinstance(cfg, CommandServerConfig):
        return
    answer = _answer_before_launch(cfg.ready_url)
    if answer is not None:
        raise ConfigError(
            f"config error at server.ready_url: {redact_url(cfg.ready_url)} already answers ({answer}) "
            "before the server is started: something else serves there (a server left running, a "
            "container from an earlier run?); stop what is there, or change the port"
        )


def _answer_before_launch(url: str) -> str | None:
    """`HTTP <status>` when `url` answers 2xx now, else None (another answer, none, no such host)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _is_local(host):  # a refused connection says it at once: no HTTP client needed
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((host, port), timeout=ALREADY_THERE_CONNECT_S).close()
        except (OSError, ValueError):
            return None
    timeout = httpx.Timeout(ALREADY_THERE_ANSWER_S, connect=ALREADY_THERE_CONNECT_S)
    try:  # no credentials to whatever is there: it is not the server the client's key is for
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            status = client.get(url).status_code
    except httpx.HTTPError:
        return None
    return f"HTTP {status}" if 200 <= status < 300 else None


def _is_local(host: str) -> bool:
    """A host that is this machine: its ports are ours to check."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def readiness_headers(cfg: BenchmarkConfig) -> dict[str, str]:
    """The headers the readiness probe sends: the client's key and headers, as its requests carry
    them, when ready_url is on the server the requests go to (scheme, host and port); none for a
    ready_url elsewhere, which the key is not for."""
    server = cfg.server
    if not isinstance(server, CommandServerConfig):
        return {}
    api_base = planned_api_base(cfg, server)
    if _origin(api_base) != _origin(server.ready_url):
        return {}
    client = replace(cfg.client, api_base=api_base)
    return {name: value for name, value in build_headers(client) if name.lower() not in _BODY_HEADERS}


_BODY_HEADERS = ("accept", "content-type")  # a GET with no body asks for no stream


def planned_api_base(cfg: BenchmarkConfig, server: CommandServerConfig) -> str:
    """Where a command server's requests go (config_checks.uses_client_api_base): its api_base, the
    user's client.api_base, else the one guessed from ready_url."""
    if uses_client_api_base(cfg):
        return cfg.client.api_base or ""
    return server.api_base or _api_base_from(server.ready_url)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


def start_server(
    cfg: SimulatedServerConfig | CommandServerConfig,
    log_path: Path | None = None,
    extra_secrets: Iterable[str] = (),
    ready_headers: Mapping[str, str] | None = None,
) -> ServerHandle:
    """Start the server described by `cfg` (SimulatedServerConfig or CommandServerConfig) and return
    once it is ready. Its stdout/stderr go to `log_path`; when not given, to a temp file unlinked as
    soon as the server has it open (written out, scrubbed, and named in the error when it fails to
    start). Raises ConfigError before the launch when something already answers 2xx at ready_url;
    VeekshaError with the last lines of its output when it fails (a non-zero exit) or is not ready in
    time. `extra_secrets` (the client's: the server inherits the environment that may
    hold them) are scrubbed from its output as its own are. `ready_headers` go with each readiness
    probe (readiness_headers)."""
    if isinstance(cfg, SimulatedServerConfig):
        return _start_simulated(cfg, log_path)
    if isinstance(cfg, CommandServerConfig):
        return _start_command(cfg, log_path, extra_secrets, dict(ready_headers or {}))
    raise VeekshaError(f"unknown server type {cfg.type!r} (allowed: simulated, command)")


def _await_ready(handle: ServerHandle, wait: Callable[[], None]) -> ServerHandle:
    """Run the readiness wait; whatever interrupts it (Ctrl-C included) stops the server first."""
    try:
        wait()
    except BaseException:
        handle.stop()
        raise
    return handle


def _start_simulated(cfg: SimulatedServerConfig, log_path: Path | None) -> ServerHandle:
    fields = to_dict(cfg)
    command = [
        sys.executable,
        "-m",
        "veeksha.runner.simserver.server",
        "--config-json",
        json.dumps(fields),
    ]
    handle = _spawn(command, dict(os.environ), log_path, api_base="")
    deadline = time.monotonic() + SIMULATED_START_TIMEOUT_S

    def wait() -> None:
        while True:
            line = _find_line(handle.output(), LISTENING_PREFIX)
            if line is not None:
                host, port = line.split()[1:3]
                handle.api_base = local_api_base(host, int(port))
                return
            _fail_if_dead_or_late(handle, deadline, "the simulated server", "to start listening")
            time.sleep(_POLL_S)

    return _await_ready(handle, wait)


def _start_command(
    cfg: CommandServerConfig, log_path: Path | None, extra_secrets: Iterable[str], headers: dict[str, str]
) -> ServerHandle:
    if not cfg.command:
        raise VeekshaError("server.command is empty: give the server command as a list")
    env = {**os.environ, **cfg.env}
    # What the server may print: its config's secrets, the client's, and those of the environment it
    # inherits (WANDB_API_KEY, HF_TOKEN: variables named like secrets, credentials in URLs).
    secrets = scrub_list(
        [*secret_values(to_dict(cfg)), *environment_secrets(env), *extra_secrets, *secret_values(headers)]
    )
    check_server_command(cfg, secrets)
    # ready_url's host is not resolved first: a Kubernetes Service or a docker network alias exists
    # once the command made it. A host that never resolves is named when readiness times out.
    check_ready_url_free(cfg)
    api_base = cfg.api_base or _api_base_from(cfg.ready_url)
    # What the user may read: the command with the values of secret flags hidden, and any other
    # secret of the run (the client's key given under a flag no rule knows).
    shown = scrub_text(" ".join(str(a) for a in redact(list(cfg.command))), secrets)
    what = f"server command {shown!r}"
    try:
        handle = _spawn(list(cfg.command), env, log_path, api_base=api_base, secrets=secrets)
    except OSError as exc:
        program = _shown_program(str(cfg.command[0]), secrets)
        raise VeekshaError(f"cannot start server command {program!r}: {exc.strerror}") from None
    handle.ready_url, handle.ready_headers = cfg.ready_url, headers
    deadline = time.monotonic() + float(cfg.ready_timeout)
    shown_url = redact_url(cfg.ready_url)
    host = urlsplit(cfg.ready_url).hostname or ""

    def wait() -> None:
        pause = 0.05  # quick servers are noticed quickly; slow ones (model loading) twice a second
        last = None  # the last probe's outcome, for the timeout's message
        # trust_env=False: the server is local; a proxy from the environment must not intercept.
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0), trust_env=False) as client:
            while True:
                try:
                    status = client.get(cfg.ready_url, headers=headers).status_code
                    last = f"last answer: HTTP {status}"
                except httpx.HTTPError as e:
                    status = None
                    last = f"last error: {type(e).__name__}: {scrub_text(str(e), secrets)}".splitlines()[0]
                    if _caused_by(e, socket.gaierror):
                        last = f"last error: ready_url's host {host!r} does not resolve ({e})".splitlines()[0]
                if status is not None and 200 <= status < 300:
                    _fail_if_not_ours(handle, what, shown_url)
                    return
                _fail_if_dead_or_late(
                    handle, deadline, what, f"to answer 2xx at {shown_url}", last, launcher=True
                )
                time.sleep(pause)
                pause = min(0.5, pause * 1.5)

    return _await_ready(handle, wait)


def _fail_if_not_ours(handle: ServerHandle, what: str, shown_url: str) -> None:
    """ready_url answered 2xx: when our process has failed meanwhile (a non-zero exit), what answered
    is something else (a server started meanwhile, one it left behind). One that exited 0 was a
    launcher (`docker compose up -d --wait`, a script that backgrounds the server): accepted."""
    code = handle.process.poll()
    if code is None:
        return
    if code == 0:
        handle._launcher_done = True  # the mid-run watch then has no process of ours to watch
        return
    tail = handle.output_tail()
    handle.stop(keep_log=True)
    raise VeekshaError(
        f"{what} exited with status {code}, yet {shown_url} answers: something else serves there; stop "
        f"it, or change the port. Full output: {handle.log_path}. Last lines of its output:\n"
        f"{tail or '(no output)'}"
    )


def planned_api_host(cfg: BenchmarkConfig) -> str | None:
    """The host requests will go to, known before any server starts (as runner/benchmark.py
    resolves client.api_base once the server runs); None when nothing names one yet."""
    server = cfg.server
    if uses_client_api_base(cfg):
        return urlsplit(cfg.client.api_base).hostname if cfg.client.api_base else None
    if isinstance(server, SimulatedServerConfig):
        return client_host(server.host)
    assert isinstance(server, CommandServerConfig), "uses_client_api_base is true without a server"
    return urlsplit(server.api_base or server.ready_url).hostname


def client_host(bound: str) -> str:
    """The address a client on this machine reaches a server bound to `bound` at."""
    return _LOOPBACK_FOR.get(bound, bound)


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def local_api_base(bound: str, port: int) -> str:
    """The `/v1` base URL of a simulated server bound to `bound`:`port`, for a client on this machine."""
    return f"http://{url_host(client_host(bound))}:{port}/v1"


def _api_base_from(ready_url: str) -> str:
    """`http://host:port/health` → `http://host:port/v1` (the OpenAI-compatible servers' layout)."""
    parts = urlsplit(ready_url)
    return f"{parts.scheme}://{parts.netloc}/v1"


def _spawn(
    command: list[str],
    env: dict[str, str],
    log_path: Path | None,
    api_base: str,
    secrets: list[str] | None = None,
) -> ServerHandle:
    owns_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="veeksha-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    # The server runs in a session of its own: a Ctrl-C never reaches it, so one that landed while
    # Popen waits for its exec, or before the `try` below, left it running for good (holding a GPU).
    # Held until the handle and its watchdog exist, then acted on where the server gets stopped.
    with HeldSignals() as held:
        process = _launch(command, env, log_path, owns_log)
        capped = None
        handle = None
        try:
            if owns_log:
                capped = CappedLog(os.open(log_path, os.O_RDWR))  # closed by ServerHandle.stop()
                log_path.unlink()
            watchdog = _start_watchdog(process)
            handle = ServerHandle(
                process, api_base, log_path, watchdog, owns_log, secrets=secrets or [], _log=capped
            )
            if capped is not None:
                handle._trimmer = _start_trimming(capped, handle._trim_stop)
            held.release()  # a Ctrl-C that came meanwhile raises here
        except BaseException:  # a held Ctrl-C, or a failure before the watchdog ran: nothing else stops it
            _abandon(process, handle, capped)
            raise
    return handle


def _launch(
    command: list[str], env: dict[str, str], log_path: Path, owns_log: bool
) -> subprocess.Popen[bytes]:
    try:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
    except OSError:
        if owns_log:  # nothing ran: leave no empty log behind
            log_path.unlink(missing_ok=True)
        raise


def _start_watchdog(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(process.pid), str(STOP_GRACE_S)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or group kill aimed at us must not take the guard along
    )


def _abandon(process: subprocess.Popen[bytes], handle: ServerHandle | None, capped: CappedLog | None) -> None:
    """Stop a server whose start failed or was interrupted: its handle's stop() once it exists (the
    watchdog and the log's trimming go too), else its group, and the log's descriptor."""
    if handle is not None:
        handle.stop()
        return
    _terminate_group(process, STOP_GRACE_S)
    if capped is not None:
        capped.close()


def _start_trimming(log: CappedLog, stop: threading.Event) -> threading.Thread:
    """A thread that keeps `log` within its bounds every LOG_TRIM_EVERY_S until `stop` is set. At
    normal priority: at idle priority a busy machine starved it and the log (on a tmpfs: RAM) grew far
    past its cap. It is cheap: an fstat a tick, a trim (one tail read, a truncation) once the file
    outgrew its bounds. It runs in the process that launched the server, never in a driver."""

    def run() -> None:
        while not stop.wait(LOG_TRIM_EVERY_S):
            with contextlib.suppress(OSError):  # (a full /tmp: the server's own writes fail too)
                log.trim()

    thread = threading.Thread(target=run, name="veeksha-server-log", daemon=True)
    thread.start()
    return thread


def _fail_if_dead_or_late(
    handle: ServerHandle,
    deadline: float,
    what: str,
    goal: str,
    last: str | None = None,
    launcher: bool = False,
) -> None:
    """`last`: what the readiness probe got last (a status, an error class), for the timeout.
    `launcher`: an exit with status 0 is no failure (a launcher that started the server): waited on."""
    code = handle.process.poll()
    if (code is None or (launcher and code == 0)) and time.monotonic() < deadline:
        return
    tail = handle.output_tail()
    handle.stop(keep_log=True)
    if code is not None and not (launcher and code == 0):
        msg = f"{what} exited with status {code} before it was ready"
    else:
        msg = f"{what} did not manage {goal} within the deadline ({last or 'no probe finished'})"
        msg += "; it had exited with status 0" if code == 0 else "; stopped it"
    raise VeekshaError(
        f"{msg}. Full output: {handle.log_path}. Last lines of its output:\n{tail or '(no output)'}"
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when `kind` is in the chain of causes of `exc` (httpx wraps httpcore, which wraps the OS's)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _find_line(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return line
    return None


def _tail(data: bytes, lines: int, secrets: list[str], cut: bool = False) -> str:
    """The last `lines` lines of the last _TAIL_WINDOW bytes of `data`, `secrets` scrubbed (`cut`:
    `data` itself began inside a line). Scrubbed before the lines are taken: a secret of several lines
    (a list of keys, a PEM key) is found only whole, and the last lines may hold only its end."""
    window = data[-_TAIL_WINDOW:]
    kept = scrub_text(window.decode(errors="replace"), secrets).splitlines()
    if cut or len(window) < len(data):  # the window began inside a line: a secret cut there would
        kept = kept[1:]  # escape the scrub (lines as splitlines sees them: a progress bar's \r too)
    return "\n".join(kept[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate_group(process: subprocess.Popen[bytes], grace: float) -> None:
    pgid = process.pid  # session leader: its pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # The leader may be gone while its children still shut down: they share the grace period.
    while _group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()
