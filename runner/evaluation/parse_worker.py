"""Worker processes that parse blocks of a run's JSONL logs (`python -m ...parse_worker`).

Plain subprocesses talking over pipes, not multiprocessing: nothing of the caller's `__main__` is
re-imported, so evaluate_run works the same from the CLI, a notebook or an unguarded script.

Protocol. The parent writes one JSON line per task to the worker's stdin, then closes it:
    {"records": path, "offset": o, "length": n, "kinds": {...}}   a block of request records
    {"trace": path, "kinds": {...}}                                the whole dispatch trace
The worker answers each task, in order, on stdout with length-prefixed payloads (8-byte little-endian
length, then bytes): records → frame as Arrow IPC, gaps (float64), gaps per row (int64), block bytes
(int64); trace → frame as Arrow IPC. On an error it writes the traceback to stderr and exits non-zero.

Ctrl-C. A terminal's reaches the whole process group, the workers too; it is the parent's to handle.
The workers ignore SIGINT from their start (each printed a KeyboardInterrupt traceback), and end
without it: the parent kills them when it stops them (_stop), and if it dies, their stdin (closed
once the tasks are written) ends and their next answer finds no reader (a broken pipe).
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import polars as pl
from veeksha.runner.evaluation.blocks import Parsed, parse_records_block, parse_trace_file
from veeksha.runner.held_signals import sigint_blocked

_LEN = struct.Struct("<q")


def _ipc(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def _send(out: IO[bytes], *payloads: bytes | np.ndarray) -> None:
    for p in payloads:
        data = np.ascontiguousarray(p).data.cast("B") if isinstance(p, np.ndarray) else p
        out.write(_LEN.pack(len(data)))
        out.write(data)  # arrays go out straight from their buffer, no intermediate copy
    out.flush()


def _recv(src: IO[bytes], proc: subprocess.Popen[bytes]) -> bytes:
    head = src.read(_LEN.size)
    if len(head) < _LEN.size:
        raise RuntimeError(f"a parse worker stopped early (exit code {proc.wait()}); see its error above")
    (n,) = _LEN.unpack(head)
    data = src.read(n)
    if len(data) < n:
        raise RuntimeError(f"a parse worker stopped mid-answer (exit code {proc.wait()})")
    return data


def main() -> None:
    # Blocked since our start (sigint_blocked): a Ctrl-C that came meanwhile is dropped when unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        task = orjson.loads(line)
        if "records" in task:
            frame, gaps, lengths, length, skipped = parse_records_block(
                Path(task["records"]), task["offset"], task["length"], task["kinds"]
            )
            _send(out, _ipc(frame), gaps, lengths.astype(np.int64), _LEN.pack(length), _LEN.pack(skipped))
        else:
            _send(out, _ipc(parse_trace_file(Path(task["trace"]), task["kinds"])))


def parse_in_workers(
    workers: int,
    records_path: Path,
    kinds: dict[str, str],
    ranges: list[tuple[int, int]],
    trace_task: tuple[Path, dict[str, str]] | None,
) -> tuple[Iterator[Parsed], Callable[[], pl.DataFrame | None]]:
    """(record blocks in file order, a function returning the trace once they are consumed).

    Blocks go round-robin to the workers; the trace goes last to the one with fewest blocks.
    """
    # One polars thread per worker: the workers are the parallelism (more threads only contend).
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    with sigint_blocked():
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "veeksha.runner.evaluation.parse_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(workers)
        ]
    tasks: list[list[dict[str, Any]]] = [[] for _ in procs]
    for i, (offset, length) in enumerate(ranges):
        tasks[i % workers].append(
            {"records": str(records_path), "offset": offset, "length": length, "kinds": kinds}
        )
    trace_worker = min(range(workers), key=lambda w: len(tasks[w]))
    if trace_task is not None:
        tasks[trace_worker].append({"trace": str(trace_task[0]), "kinds": trace_task[1]})
    for proc, todo in zip(procs, tasks, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(b"".join(orjson.dumps(t) + b"\n" for t in todo))
        proc.stdin.close()

    def blocks() -> Iterator[Parsed]:
        try:
            for i in range(len(ranges)):
                proc = procs[i % workers]
                assert proc.stdout is not None
                frame, gaps, lengths, length, skipped = (_recv(proc.stdout, proc) for _ in range(5))
                yield (
                    pl.read_ipc(frame),
                    np.frombuffer(gaps, dtype=np.float64),
                    np.frombuffer(lengths, dtype=np.int64),
                    _LEN.unpack(length)[0],
                    _LEN.unpack(skipped)[0],
                )
        except BaseException:
            _stop(procs)
            raise

    def trace() -> pl.DataFrame | None:
        try:
            if trace_task is None:
                return None
            proc = procs[trace_worker]
            assert proc.stdout is not None
            return pl.read_ipc(_recv(proc.stdout, proc))
        finally:
            _stop(procs)

    return blocks(), trace


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
