#!/usr/bin/env python
"""The driver's per-read cost, without the kernel: `_Connection.data_received` fed in-process.

`--streams` connections (500: about the streams open at 800 requests/s) each receive one streamed
chat completion of 64 content events, the reads interleaved across connections as in a run (so the
objects of one stream are not in the cache when its next read comes). Every read goes through the
real code: httptools, the SSE parser, the chunk decoder, the response reader. No sockets: what is
measured is the Python (and C extension) work per read, which a run adds to the kernel's.

Prints the best of `--rounds` rounds, microseconds per read. Compare two versions by running it
alternately from two checkouts (`PYTHONPATH=<other checkout's snapshot>`): the machine's speed
drifts, so a single pair of runs can mislead.

    .venv/bin/python scripts/bench_read_path.py [--streams 500] [--rounds 6]
"""

from __future__ import annotations

import argparse
import time

import orjson
import uvloop
from veeksha.runner.driver.http.openai import ResponseReader
from veeksha.runner.driver.http.outcome import Outcome
from veeksha.runner.driver.http.transport import _Connection

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
WORDS = [" alpha", " beta", " gamma", " delta", " river", " stone"]
TOKENS = 64


class _Pool:
    """What a connection asks of its pool during a response."""

    due_hook = None

    def _on_closed(self, conn: _Connection) -> None:
        pass

    def _release(self, conn: _Connection) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None


def http_chunk(obj: object) -> bytes:
    event = b"data: " + orjson.dumps(obj) + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(event), event)


def content_event(stream: int, text: str, finish: str | None = None) -> bytes:
    return http_chunk(
        {
            "id": f"chatcmpl-sim-{stream}",
            "object": "chat.completion.chunk",
            "created": 1796119822,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}],
        }
    )


def stream_reads(stream: int) -> list[bytes]:
    reads = [content_event(stream, WORDS[(stream + k) % len(WORDS)]) for k in range(TOKENS - 1)]
    reads.append(content_event(stream, " end", "length"))
    usage = {"prompt_tokens": 200, "completion_tokens": TOKENS, "total_tokens": 200 + TOKENS}
    reads.append(http_chunk({"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    reads.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return reads


async def best_us_per_read(num_streams: int, rounds: int) -> float:
    conns = []
    for _ in range(num_streams):
        conn = _Connection(_Pool())  # type: ignore[arg-type]  # the pool's two callbacks are all it uses
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        conns.append(conn)
    streams = [stream_reads(i) for i in range(num_streams)]
    reads_per_stream = len(streams[0])
    best = float("inf")
    for _ in range(rounds):
        replies = []
        for conn in conns:
            out = Outcome()
            reader = ResponseReader(out, stream=True)
            conn.begin(b"x", reader)
            conn.data_received(HEAD)
            replies.append((out, reader))
        start = time.perf_counter()
        for k in range(reads_per_stream):
            for conn, reads in zip(conns, streams, strict=True):
                conn.data_received(reads[k])
        elapsed = time.perf_counter() - start
        for (out, reader), conn in zip(replies, conns, strict=True):
            reader.finalize()
            if len(out.chunk_times) != TOKENS or out.completion_tokens != TOKENS:
                raise SystemExit(f"a stream was misread: {len(out.chunk_times)} chunks")
            conn.end_request()
        best = min(best, elapsed / (num_streams * reads_per_stream) * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    us = uvloop.run(best_us_per_read(args.streams, args.rounds))
    print(f"{us:.3f} us per read ({args.streams} interleaved streams, best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
