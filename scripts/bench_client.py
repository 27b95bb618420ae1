#!/usr/bin/env python
"""Client hot-path benchmark: CPU per request and timing accuracy of the native and httpx backends.

Starts a precise mock SSE server in a separate process (uvloop; every stream: `--ttft-ms` to the first
token, then one token every `--itl-ms`, `--tokens` tokens, usage chunk, [DONE], chunked encoding,
keep-alive), then drives each rate for `--duration` seconds from this single uvloop process with an
open-loop fixed schedule, and prints per backend and rate:

  achieved   completed requests per second of schedule
  cpu_ms     client CPU per request: time.process_time() of this process / completed requests
  late_p99   how late request() started versus its schedule (the driver's own lateness), ms
  ttfc_p50   measured time to first chunk (the server's is --ttft-ms plus one loop turn), ms
  itl_err    mean measured gap between chunks minus --itl-ms, ms (timestamp accuracy)
  server_cpu the mock server's CPU use meanwhile (near 100% = the mock, not the client, is the limit)

Backend "floor" is a calibration: raw keep-alive sockets that parse nothing (see FloorClient).

    .venv/bin/python scripts/bench_client.py --rates 100,400,800 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httptools
import orjson
import uvloop

# -- mock server (runs in its own process) -----------------------------------------------------------


def _events(tokens: int) -> tuple[bytes, list[bytes], bytes]:
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    def event(obj: object) -> bytes:
        return chunk(b"data: " + orjson.dumps(obj) + b"\n\n")

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
    )
    body = [
        event({"choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}]})
        for i in range(tokens)
    ]
    usage = {"prompt_tokens": 16, "completion_tokens": tokens}
    tail = event({"choices": [], "usage": usage}) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    return head, body, tail


class _Stream:
    __slots__ = ("next", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.next = 0


class _MockServer:
    """All streams advance on one shared ticker: one token per stream every itl, cheap and regular."""

    def __init__(self, tokens: int, ttft: float, itl: float) -> None:
        self.head, self.body, self.tail = _events(tokens)
        self.ttft, self.itl = ttft, itl
        self.active: list[_Stream] = []
        self.loop = asyncio.get_running_loop()
        self.loop.call_later(itl, self.tick)

    def start(self, transport: asyncio.Transport) -> None:
        transport.write(self.head)
        self.loop.call_later(self.ttft, self.activate, _Stream(transport))

    def activate(self, stream: _Stream) -> None:
        self.active.append(stream)

    def tick(self) -> None:
        self.loop.call_later(self.itl, self.tick)
        keep = []
        n = len(self.body)
        for s in self.active:
            if s.transport.is_closing():
                continue
            if s.next < n:
                s.transport.write(self.body[s.next])
                s.next += 1
                keep.append(s)
            else:
                s.transport.write(self.tail)
        self.active = keep


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: _MockServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.server.start(self.transport)  # type: ignore[arg-type]


def serve(tokens: int, ttft: float, itl: float) -> None:
    async def main() -> None:
        mock = _MockServer(tokens, ttft, itl)
        server = await asyncio.get_running_loop().create_server(
            lambda: _ServerProtocol(mock), "127.0.0.1", 0, backlog=4096
        )
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


# -- load driver (this process) ----------------------------------------------------------------------


class _FloorConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.done: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        time.perf_counter()
        if data.endswith(b"0\r\n\r\n") and self.done is not None and not self.done.done():
            self.done.set_result(None)


class FloorClient:
    """Calibration only: keep-alive sockets that send the same request and parse nothing. Its CPU per
    request is what the event loop and the kernel cost on this machine before any client logic."""

    is_stream = True

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_FloorConn] = []

    async def request(self, payload: object, max_tokens: int) -> object:
        from veeksha.runner.driver.http.outcome import Outcome

        loop = asyncio.get_running_loop()
        if self.idle:
            conn = self.idle.pop()
        else:
            _, conn = await loop.create_connection(_FloorConn, "127.0.0.1", self.port)
        body = orjson.dumps({"model": "mock", "messages": payload, "max_tokens": max_tokens})
        conn.done = loop.create_future()
        conn.transport.write(  # type: ignore[union-attr]
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body)
        )
        out = Outcome(picked_up_at=time.perf_counter())
        await conn.done
        self.idle.append(conn)
        out.completed_at = time.perf_counter()
        return out

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.transport.close()  # type: ignore[union-attr]


async def drive(port: int, backend: str, rate: float, duration: float, max_connections: int) -> dict:
    from veeksha.runner.driver.http.client import make_client
    from veeksha.shared.config import ClientConfig

    cfg = ClientConfig(
        api_base=f"http://127.0.0.1:{port}/v1", model="mock", http_backend=backend, request_timeout=30
    )
    client = FloorClient(port) if backend == "floor" else make_client(cfg, max_connections)
    messages = [{"role": "user", "content": "hello " * 16}]
    n = int(rate * duration)
    lateness: list[float] = []
    tasks = []

    async def one(due: float):
        lateness.append(time.perf_counter() - due)
        return await client.request(messages, 64)

    await client.request(messages, 64)  # warm-up: imports, first connection
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(due)))
    # A backend that cannot keep up is not waited for forever: stragglers are cancelled (not "ok").
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + duration + 10 - time.perf_counter()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    outs = [t.result() for t in tasks if not t.cancelled()]
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await client.aclose()
    ok = [o for o in outs if o.status == "success"]  # type: ignore[attr-defined]
    failed = [o for o in outs if o.status != "success"]
    if failed:
        print(f"  {len(failed)} failed, e.g. {failed[0].error_type}: {failed[0].error_message}")
    ttfc = [o.chunk_times[0] - o.picked_up_at for o in ok if o.chunk_times]
    gaps = [b - a for o in ok for a, b in zip(o.chunk_times, o.chunk_times[1:], strict=False)]
    return {
        "ok": len(ok),
        "wall": wall,
        "errors": n - len(ok),
        "achieved": len(ok) / max(wall, duration),
        "cpu_ms": 1000 * cpu / max(1, n),
        "late_p99": 1000 * sorted(lateness)[int(0.99 * (len(lateness) - 1))],
        "ttfc_p50": 1000 * statistics.median(ttfc) if ttfc else float("nan"),
        "itl_mean": 1000 * statistics.fmean(gaps) if gaps else float("nan"),
    }


def _cpu_seconds(pid: int) -> float:
    """user+system CPU of another process (Linux /proc), to show whether the mock was the limit."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="100,400,800", help="comma-separated requests per second")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    ap.add_argument("--backends", default="floor,native,httpx")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=5.0)
    ap.add_argument("--itl-ms", type=float, default=1.0)
    ap.add_argument("--max-connections", type=int, default=1024)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.tokens, args.ttft_ms / 1000, args.itl_ms / 1000)
        return

    cmd = [sys.executable, __file__, "--serve", f"--tokens={args.tokens}"]
    cmd += [f"--ttft-ms={args.ttft_ms}", f"--itl-ms={args.itl_ms}"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        print(f"mock: {args.tokens} tokens, ttft {args.ttft_ms} ms, itl {args.itl_ms} ms; port {port}")
        print(f"{'backend':8} {'rate':>6} {'achieved':>9} {'cpu_ms':>7} {'late_p99':>9} "
              f"{'ttfc_p50':>9} {'itl_err':>8} {'errors':>6} {'server_cpu':>10}")  # fmt: skip
        for backend in args.backends.split(","):
            for rate in (float(r) for r in args.rates.split(",")):
                server_cpu0 = _cpu_seconds(server.pid)
                r = uvloop.run(drive(port, backend, rate, args.duration, args.max_connections))
                server_pct = 100 * (_cpu_seconds(server.pid) - server_cpu0) / r["wall"]
                collapsed = r["achieved"] < 0.8 * rate
                print(
                    f"{backend:8} {rate:6.0f} {r['achieved']:9.1f} {r['cpu_ms']:7.3f} "
                    f"{r['late_p99']:9.2f} {r['ttfc_p50']:9.2f} {r['itl_mean'] - args.itl_ms:8.3f} "
                    f"{r['errors']:6d} {server_pct:9.0f}%",
                    flush=True,
                )
                if collapsed:
                    print(f"{backend:8} cannot keep up at {rate:.0f} req/s: higher rates skipped")
                    break
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
