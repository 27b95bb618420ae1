"""Drivers on a Ray cluster (runtime.ray_address): the same driver processes, on the cluster's nodes.

One Ray actor per driver (one CPU each, spread over the nodes) spawns the driver process on its node
exactly as a local run does, and a thread in the actor buffers the driver's messages. Here, one relay
thread per driver long-polls its actor and writes what it gets into a local pipe, which the recorder
reads like any local driver's. The common start crosses machines as wall-clock time (the nodes'
clocks must be NTP-synchronised: docs/scale-out.md); every latency is still measured on one node's
monotonic clock. When an actor or its node dies, its relay ends the stream: the recorder records that
driver's in-flight requests as driver_lost and says which driver died. When only the driver process
dies (SIGKILL, the OOM killer), its actor reads the dispatches the driver never shipped from the
driver's ring file (driver/dispatch_ring.py, in the actor's temporary directory on the node) and
sends them last (ipc.UNSHIPPED): they get driver_lost records too. What an actor or node that dies
held is lost with it (docs/scale-out.md).

Only imported when runtime.ray_address is set: Ray is an optional extra (veeksha[ray]).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

# Ray reads these when it is imported, so they are set first.
# - A wrong address otherwise keeps ray.init retrying for minutes (measured with Ray 2.60: over
#   150 s); with these it gives up in seconds, and a right one still connects at once.
# - Under `uv run`, Ray would package the current directory (where a config file may hold an API
#   key) and upload it to the cluster for its workers. The drivers need only veeksha installed on
#   every node (docs/scale-out.md).
RAY_ENV_DEFAULTS = {
    "RAY_py_gcs_connect_timeout_s": "1",
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_gcs_rpc_server_connect_timeout_s": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
for _name, _value in RAY_ENV_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import orjson  # noqa: E402
import ray  # noqa: E402
from veeksha.runner import ipc  # noqa: E402
from veeksha.runner.driver.dispatch_ring import read_ring  # noqa: E402
from veeksha.runner.driver.dispatcher import Placement, driver_main  # noqa: E402
from veeksha.runner.driver.rescue import CrashFiles  # noqa: E402
from veeksha.runner.drivers import (  # noqa: E402
    DriverLink,
    interrupt_process,
    num_drivers,
    send_start,
    stop_process,
)
from veeksha.shared.config import BenchmarkConfig  # noqa: E402
from veeksha.shared.errors import ConfigError  # noqa: E402
from veeksha.shared.redact import redact_argv  # noqa: E402

# Far enough ahead for the GO call to reach every actor before the common start.
RAY_START_MARGIN_S = 1.0
POLL_S = 0.2  # how long one relay call waits for the driver's next messages
CALL_TIMEOUT_S = 30.0  # a control call (go, interrupt, stop) that takes longer: the actor is lost
# A driver whose stream has ended exits at once (killed) or within its last flush (a normal end);
# one still there after this long is taken as failed, and its ring file is read.
EXIT_WAIT_S = 5.0
TEMP_PREFIX = "veeksha-driver-"  # the actor's temporary directory on its node, for the ring file
NAMESPACE = "veeksha"
_joined: str | None = None  # the address this process joined (connect)


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (HOST:PORT, ray://HOST:PORT or auto) as a client; a clear
    ConfigError when it cannot be reached. Called before any server starts or directory is made."""
    global _joined
    if ray.is_initialized():
        if address == _joined:
            return
        # A sweep over ray_address: a process is in one cluster at a time, and staying in the first
        # ran (and checked) every member there.
        disconnect()
    # ray.init installs a SIGTERM handler of its own (sys.exit): the command's (cli._guard) stays,
    # so a SIGTERM still ends the run, a sweep or a search with its final status.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with _held_back_stderr(), _redacted_entrypoint():
            ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError... by version
        raise _unreachable(address, str(e) or type(e).__name__) from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    _joined = address


@contextlib.contextmanager
def _held_back_stderr() -> Iterator[None]:
    """Ray's C++ client writes its connection warnings straight to file descriptor 2 (three lines
    for an open port that is not Ray): keep them out of the console, where the one-line error says it
    all. Nothing else runs yet: the drivers, the server and the run directory come after."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def _redacted_entrypoint() -> Iterator[None]:
    """Ray records this process's command line as the job's entrypoint in the cluster's control
    store (`ray list jobs`, the dashboard): it gets the command line as run.json keeps it, without
    the values of --client.api_key, --server.env and the like."""
    utils = ray._private.utils
    original = getattr(utils, "get_entrypoint_name", None)
    if original is None:  # another Ray version: the end-to-end test reads the job table and says so
        yield
        return
    utils.get_entrypoint_name = lambda: shlex.join(redact_argv(sys.argv))
    try:
        yield
    finally:
        utils.get_entrypoint_name = original


def _unreachable(address: str, why: str) -> ConfigError:
    first_line = (why.strip().splitlines() or [""])[0][:200]
    return ConfigError(
        f"config error at runtime.ray_address: cannot join the Ray cluster at {address!r} "
        f"({first_line}); start one (`ray start --head`) or fix the address"
    )


def check_cluster(cfg: BenchmarkConfig, api_host: str | None) -> None:
    """What the joined cluster must have for this run, checked before any server starts: a CPU per
    driver asked for (else the extra actors wait for one, and the run fails 30 s later), and, when
    requests go to a loopback address, no driver node on another machine (its drivers would send
    them to their own machine)."""
    address = cfg.runtime.ray_address
    n = cfg.runtime.num_drivers
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if isinstance(n, int) and n > cpus:
        raise ConfigError(
            f"config error at runtime.num_drivers: {n} drivers need {n} CPUs, and the Ray cluster at "
            f"{address!r} has {cpus}; use at most {cpus}, auto, or add nodes"
        )
    if api_host is None or not is_loopback(api_host):
        return
    # In client mode (ray://) this process is on no node of the cluster.
    here = None if address is None or address.startswith("ray://") else ray.util.get_node_ip_address()
    elsewhere = nodes_elsewhere(ray.nodes(), here)
    if elsewhere:
        shown = ", ".join(elsewhere[:3]) + (" ..." if len(elsewhere) > 3 else "")
        raise ConfigError(
            f"config error at client.api_base: requests would go to {api_host}, this machine's "
            f"loopback, but the Ray cluster has driver nodes at {shown}, whose drivers would send them "
            "to their own machine; give the server's address that every node can reach "
            "(a server section's server listens here: start it yourself and set client.api_base)"
        )


def is_loopback(host: str) -> bool:
    """Whether requests to `host` stay on the machine that sends them: localhost (and the names under
    it, RFC 6761), a loopback address, or the unspecified one (0.0.0.0, ::: a connection to it reaches
    the sending machine), in every spelling a resolver reads as one (127.1, 2130706433, localhost.)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _ip_address(name)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1
    return address.is_loopback or address.is_unspecified


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`name` as an address; the short IPv4 forms too (127.1, 0x7f.1), which ipaddress refuses and
    the C resolver (inet_aton) accepts."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def nodes_elsewhere(nodes: list[dict[str, Any]], here: str | None) -> list[str]:
    """Addresses of the live nodes that can take a driver (they have a CPU) and are not this
    machine (`here`: its address in the cluster; a node at a loopback address is this machine)."""
    found = {
        str(node.get("NodeManagerAddress"))
        for node in nodes
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0
    }
    return sorted(a for a in found if a != here and not is_loopback(a))


def disconnect() -> None:
    global _joined
    if ray.is_initialized():
        ray.shutdown()
    _joined = None


def ray_driver_links(cfg: BenchmarkConfig) -> list[DriverLink]:
    """One link per driver, each an actor on a cluster node (spread: one per core)."""
    assert cfg.runtime.ray_address is not None
    connect(cfg.runtime.ray_address)
    cores = int(ray.cluster_resources().get("CPU", 1))
    n = num_drivers(cfg, cores)
    links: list[DriverLink] = []
    try:
        for i in range(n):
            links.append(RayDriver(cfg, Placement(i, n)))
    except BaseException:  # the actors made so far would stay on the cluster
        for link in links:
            link.stop(0.0)
        raise
    return links


class DriverActor:
    """Runs one driver process on its node and buffers its messages for the relay to take."""

    def __init__(self, cfg: BenchmarkConfig, placement: Placement) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._messages, sender = ctx.Pipe(duplex=False)
        go_receiver, self._go = ctx.Pipe(duplex=False)
        self._temp = _private_temp_dir()
        # The driver's ring file, private to this actor (no rescue file: the recorder is elsewhere).
        self._ring = None if self._temp is None else os.path.join(self._temp, "dispatches")
        crash_files = None if self._ring is None else CrashFiles(rescue=None, dispatches=self._ring)
        self._proc = ctx.Process(
            target=driver_main, args=(cfg, sender, go_receiver, placement, crash_files), daemon=True
        )
        self._proc.start()
        sender.close()
        go_receiver.close()
        self._buffer: list[bytes] = []
        self._ended = False
        self._ready = threading.Condition()
        # The pump and `stop` both wait for the driver's exit (two waits at once can lose its exit
        # code), and `stop` removes the ring file the pump may be reading: one at a time.
        self._reaping = threading.Lock()
        threading.Thread(target=self._pump, name="veeksha-pump", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                message = self._messages.recv_bytes()
            except (EOFError, OSError):
                message = None
            last = self._unshipped() if message is None else None
            with self._ready:
                if message is not None:
                    self._buffer.append(ipc.frame(message))
                else:  # the end of the stream, after what its driver never shipped
                    if last is not None:
                        self._buffer.append(last)
                    self._ended = True
                self._ready.notify_all()
            if message is None:
                return

    def _unshipped(self) -> bytes | None:
        """The driver's stream has ended. Unless the driver exited normally (exit code 0: after its
        DONE, or its FAILED at set-up), an UNSHIPPED frame: its ring file's lines, which hold the
        dispatches it never shipped (its last tick, its write buffer); the recorder keeps those past
        the last it traced."""
        with self._reaping:
            self._proc.join(EXIT_WAIT_S)
            if self._proc.exitcode == 0 or self._ring is None:
                return None
            t0, lines = read_ring(self._ring)
        if t0 is None or not lines:  # it never started: it sent nothing
            return None
        return ipc.frame(orjson.dumps([ipc.UNSHIPPED, {"trace": lines}]))

    def where(self) -> str:
        node = ray.get_runtime_context().get_node_id()[:8]
        return f"ray node {node} at {ray.util.get_node_ip_address()} ({socket.gethostname()})"

    def poll(self, timeout: float) -> tuple[bytes, bool]:
        """The driver's framed messages since the last poll (waiting up to `timeout` for one), and
        whether its stream has ended."""
        with self._ready:
            self._ready.wait_for(lambda: self._buffer or self._ended, timeout)
            data = b"".join(self._buffer)
            self._buffer.clear()
            return data, self._ended

    def go(self, start: dict[str, Any]) -> None:
        send_start(self._go, start)

    def interrupt(self) -> None:
        interrupt_process(self._proc)

    def stop(self, wait_s: float) -> int | None:
        with self._reaping:
            code = stop_process(self._proc, wait_s)
            if self._temp is not None:  # the ring file: its driver is gone
                shutil.rmtree(self._temp, ignore_errors=True)
        return code


def _private_temp_dir() -> str | None:
    """A directory of this actor's own in the node's temporary directory (TMPDIR); None when none
    can be made: the driver then runs without a ring file, as a Ray driver did before it had one."""
    try:
        return tempfile.mkdtemp(prefix=TEMP_PREFIX)
    except OSError:
        return None


# Threaded: a long poll must not hold up go, interrupt or stop. (Ray's stubs know actor options only
# through the decorator's untyped path.)
_RemoteActor: Any = ray.remote(num_cpus=1, max_concurrency=4)(DriverActor)  # type: ignore[call-overload]


class RayDriver:
    """The recorder's link to one driver actor: its messages arrive on a local pipe."""

    shares_clock = False
    start_margin_s = RAY_START_MARGIN_S

    def __init__(self, cfg: BenchmarkConfig, placement: Placement) -> None:
        self.driver_id = placement.driver_id
        self.actor = _RemoteActor.options(scheduling_strategy="SPREAD", max_restarts=0).remote(cfg, placement)
        read_fd, self._write_fd = os.pipe()
        self.conn = Connection(read_fd, writable=False)
        self.where = "ray"
        self.lost: str | None = None  # why the actor could not be reached any more
        self.exit_code: int | None = None
        self.stopped = False
        self._go_sent: Any = None  # the start's call (a Ray ObjectRef)
        self._relay = threading.Thread(
            target=self._relay_messages, name=f"veeksha-relay-{self.driver_id}", daemon=True
        )

    def start(self) -> None:
        try:
            self.where = ray.get(self.actor.where.remote(), timeout=CALL_TIMEOUT_S)
        except Exception as e:  # the actor did not come up: its relay ends the stream at once
            self.lost = _describe(e)
        self._relay.start()

    def _relay_messages(self) -> None:
        try:
            while self.lost is None:
                data, ended = ray.get(self.actor.poll.remote(POLL_S), timeout=POLL_S + CALL_TIMEOUT_S)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view) :]
                if ended:
                    return
        except Exception as e:  # RayActorError when the actor or its node died
            self.lost = _describe(e)
        finally:
            os.close(self._write_fd)  # the recorder sees the end of this driver's stream

    def go(self, start: dict[str, float | None]) -> None:
        # Not waited for: the recorder gives every driver its start in turn, and waiting for each
        # reply (tens of ms through ray://) would use up the start margin with many drivers. An
        # actor that cannot take it is found by its relay.
        self._go_sent = self.actor.go.remote(start)

    def alive(self) -> bool:
        return self._relay.is_alive()

    def describe_exit(self) -> str:
        return self.lost if self.lost is not None else f"exit code {self.exit_code}"

    def interrupt(self) -> None:
        self._call("interrupt")

    def stop(self, wait_s: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.lost is None:
            self.exit_code = self._call("stop", wait_s, timeout=wait_s + CALL_TIMEOUT_S)
        if self._go_sent is not None:  # taken, so that Ray does not report its failure as unhandled
            with contextlib.suppress(Exception):
                ray.get(self._go_sent, timeout=0.1)
        ray.kill(self.actor)
        if self._relay.is_alive():
            self._relay.join(CALL_TIMEOUT_S)

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """A control call on the actor; None when it cannot be reached (its relay reports why)."""
        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout)
        except Exception as e:
            self.lost = self.lost or _describe(e)
            return None


def _describe(e: BaseException) -> str:
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"its Ray actor was lost: {type(e).__name__}" + (f": {first_line}" if first_line else "")
