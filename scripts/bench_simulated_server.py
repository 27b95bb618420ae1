"""How many streamed requests per second the simulated server sustains, and what it costs in CPU.

Starts the server with the launcher (its own process), runs a closed loop of N concurrent clients that
each send one streaming chat request after another (64 output tokens, ignore_eos), and reports
requests/s, tokens/s and the server's CPU seconds per 1000 requests (from /proc, Linux).

    .venv/bin/python scripts/bench_simulated_server.py --client raw --concurrency 200 --duration 10

`--client raw` is a minimal keep-alive HTTP/1.1 client (so the number is about the server);
`--client httpx` uses httpx like the benchmark driver does. Default server timing is the config's
default; pass `--fast` for a short decode step (a server-overhead test, not a realistic GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import httpx
import orjson
import uvloop
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import SimulatedServerConfig
from veeksha.shared.schema import build

FAST = {"decode_step_base": 0.002, "decode_step_per_seq": 0.000005, "max_batch_size": 1024}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_body(tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": "veeksha-sim",
            "messages": [{"role": "user", "content": "hello " * 32}],
            "max_completion_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


async def raw_worker(host: str, port: int, body: bytes, stop_at: float, done: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (host.encode(), len(body), body)
    )
    while time.monotonic() < stop_at:
        writer.write(req)
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            tail = (tail + data)[-16:]
        done[0] += 1
    writer.close()


async def httpx_worker(
    client: httpx.AsyncClient, url: str, body: bytes, stop_at: float, done: list[int]
) -> None:
    headers = {"content-type": "application/json"}
    while time.monotonic() < stop_at:
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            async for _ in resp.aiter_raw():
                pass
        done[0] += 1


async def run(args: argparse.Namespace, api_base: str) -> tuple[int, float]:
    body = request_body(args.tokens)
    done = [0]
    hostport = api_base.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    if args.client == "raw":
        start = time.monotonic()
        stop_at = start + args.duration
        workers = [raw_worker(host, int(port), body, stop_at, done) for _ in range(args.concurrency)]
        await asyncio.gather(*workers)
    else:
        # One pool per `shard` connections: httpcore's pool scans every connection on each request
        # event (O(connections) per event), so one pool of 200 connections is far slower.
        shard = args.httpx_pool_size
        limits = httpx.Limits(max_connections=shard, max_keepalive_connections=shard)
        clients = [
            httpx.AsyncClient(limits=limits, timeout=60, verify=False, trust_env=False)
            for _ in range(0, args.concurrency, shard)
        ]
        url = api_base + "/chat/completions"
        start = time.monotonic()
        stop_at = start + args.duration
        await asyncio.gather(
            *[httpx_worker(clients[i // shard], url, body, stop_at, done) for i in range(args.concurrency)]
        )
        for c in clients:
            await c.aclose()
    return done[0], time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--httpx-pool-size", type=int, default=1, help="connections per httpx.AsyncClient")
    ap.add_argument("--fast", action="store_true", help="short decode steps: measure overhead")
    ap.add_argument("--config-json", default="{}", help="SimulatedServerConfig overrides")
    args = ap.parse_args()
    overrides = {**(FAST if args.fast else {}), **json.loads(args.config_json)}
    cfg = build(SimulatedServerConfig, overrides, "server")
    with start_server(cfg) as server:
        steps0 = httpx.get(server.api_base[:-3] + "/sim/stats").json()["steps"]
        cpu0, client_cpu0 = cpu_seconds(server.pid), time.process_time()
        n, elapsed = uvloop.run(run(args, server.api_base))
        cpu, client_cpu = cpu_seconds(server.pid) - cpu0, time.process_time() - client_cpu0
        steps = httpx.get(server.api_base[:-3] + "/sim/stats").json()["steps"] - steps0
    print(
        json.dumps(
            {
                "client": args.client,
                "concurrency": args.concurrency,
                "tokens_per_request": args.tokens,
                "server_overrides": overrides,
                "requests": n,
                "seconds": round(elapsed, 2),
                "requests_per_s": round(n / elapsed, 1),
                "tokens_per_s": round(n * args.tokens / elapsed),
                "server_cpu_s": round(cpu, 2),
                "server_cpu_s_per_1000_requests": round(1000 * cpu / max(n, 1), 3),
                "server_cpu_utilisation": round(cpu / elapsed, 2),
                "client_cpu_utilisation": round(client_cpu / elapsed, 2),
                "engine_steps_per_s": round(steps / elapsed, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
