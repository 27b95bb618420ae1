"""Worker processes that upload directories, each under a deadline (spec: wandb.md, "Backfill").

Once the reachability probe has passed, a W&B server can still fail: answer 500 to every artifact
upload, or stall a stream; the SDK then retries for hours. So every directory runs in a worker
process with a deadline. A worker past its deadline is killed and only its directory fails (its
pending file stays, so the next upload resumes the same W&B run); a worker that dies fails only
the directory it held; a fresh worker takes the next directory.

A worker imports wandb and starts the SDK service once and then uploads many directories in turn
(import and start-up are paid per worker, not per directory).

A worker dies with the main process, however that ends (SIGKILL, the OOM killer: no `finally` of
ours runs): left alone it went on uploading with no deadline, holding the directory's lock, so every
later upload skipped the directory. Its SDK service follows it (it watches its parent's pid).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from veeksha.shared.deadlines import upload_deadline_s
from veeksha.uploader import remote
from veeksha.uploader.worker import FAILED, LOST_RACE, UPLOADED, Outcome, Task, run_task

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_S = 0.5


def _serve(conn: Connection, parent: int) -> None:
    """A worker: upload the directories it is sent, one at a time, until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with(parent)
    import wandb  # noqa: F401  (imported once per worker, reused for every directory it uploads)

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task, ends_at = message
        # The uploader's own questions to W&B stop asking again before this worker is killed.
        remote.set_deadline(ends_at)
        try:
            outcome = run_task(task)
        finally:
            remote.set_deadline(None)
        conn.send(outcome)


def _die_with(parent: int) -> None:
    """SIGKILL this worker as soon as `parent` (the main process) is gone: on Linux the kernel does it
    (PR_SET_PDEATHSIG; the pool forks from the thread that runs it until its workers are closed);
    a thread watching for re-parenting covers other systems and a parent that died before."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), name="veeksha-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Busy:
    task: Task
    deadline_s: float
    ends_at: float


class _Worker:
    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.busy: _Busy | None = None

    def give(self, task: Task, deadline_s: float) -> None:
        ends_at = time.monotonic() + deadline_s  # CLOCK_MONOTONIC: the same clock in the worker
        self.conn.send((task, ends_at))
        self.busy = _Busy(task, deadline_s, ends_at)

    def kill(self) -> None:
        """SIGKILL: a worker stuck in the SDK does not answer anything gentler. The SDK's service
        process watches its parent's pid and exits on its own."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.kill()


def _failed(task: Task, detail: str) -> Outcome:
    return Outcome(str(task.target.path), task.target.kind, FAILED, detail)


def _fallback(task: Task, outcome: Outcome) -> Task | None:
    """An online upload that failed after the probe passed, with --fallback-offline: retry offline.
    Not one that lost the race to create its run: that run is another upload's, and an offline copy
    of its id made the next online upload take it for ours and rewind it."""
    s = task.settings
    if not (task.fallback_offline and s is not None and s.mode == "online" and outcome.status == FAILED):
        return None
    if outcome.detail.startswith(LOST_RACE):
        return None
    return replace(task, settings=s.with_mode("offline"), note=outcome.detail, online_attempted=True)


def _after_fallback(outcome: Outcome, online_failure: str) -> str:
    """The detail of an offline retry's outcome, saying what the online upload did: only a retry
    that wrote an offline run says it did."""
    if outcome.status == UPLOADED:
        return f"{outcome.detail} (the online upload failed: {online_failure}; wrote an offline run instead)"
    if outcome.detail == online_failure:  # not W&B's fault: the directory itself (a corrupt file)
        return f"{outcome.detail} (the online upload failed the same way)"
    return f"{outcome.detail} (the online upload failed first: {online_failure})"


def run_pool(
    tasks: list[Task],
    jobs: int,
    base_deadline_s: float,
    on_outcome: Callable[[Outcome], None],
) -> None:
    """Upload every task in at most `jobs` worker processes; each outcome as it comes."""
    _Pool(tasks, jobs, base_deadline_s, on_outcome).run()


class _Pool:
    """run_pool's state: the tasks not yet handed out and the live workers (each busy with one or idle)."""

    def __init__(
        self,
        tasks: list[Task],
        jobs: int,
        base_deadline_s: float,
        on_outcome: Callable[[Outcome], None],
    ) -> None:
        self.queue = deque(tasks)
        self.jobs = jobs
        self.base_deadline_s = base_deadline_s
        self.on_outcome = on_outcome
        self.ctx = multiprocessing.get_context("spawn")  # no inherited SDK state, locks or threads
        self.workers: list[_Worker] = []

    def run(self) -> None:
        try:
            while self.queue or any(w.busy for w in self.workers):
                self._hand_out()
                busy, ready = self._wait()
                for worker in busy:
                    self._check(worker, ready)
        finally:
            self._close()

    def _hand_out(self) -> None:
        """Idle workers first (their SDK is already started), then new ones up to `jobs`."""
        for worker in list(self.workers):
            if worker.busy is None and self.queue and not self._give_next(worker):
                # It died while idle (killed, out of memory): a new worker takes the task.
                self.workers.remove(worker)
                worker.kill()
        while self.queue and len(self.workers) < self.jobs:
            worker = _Worker(self.ctx)
            if self._give_next(worker):
                self.workers.append(worker)
            else:  # dead from its start: its task fails rather than spawn for ever
                worker.kill()
                self.on_outcome(_failed(self.queue.popleft(), "the worker process died as it started"))

    def _give_next(self, worker: _Worker) -> bool:
        """Hand the next task to `worker`; False (the task stays first in the queue) when its
        pipe is broken."""
        task = self.queue.popleft()
        # Waiting for another uploader's lock is not upload time: it does not eat the deadline.
        try:
            worker.give(task, upload_deadline_s(task.target.path, self.base_deadline_s) + task.lock_wait_s)
        except OSError:
            self.queue.appendleft(task)
            return False
        return True

    def _wait(self) -> tuple[list[_Worker], Sequence[object]]:
        """The busy workers, and those of their pipes that are ready, by the soonest deadline at most."""
        busy = [w for w in self.workers if w.busy]
        if not busy:  # every new worker died as it started: nothing to wait for
            return [], []
        soonest = min(w.busy.ends_at for w in busy if w.busy)
        ready = wait([w.conn for w in busy], timeout=max(0.0, soonest - time.monotonic()))
        return busy, ready

    def _check(self, worker: _Worker, ready: Sequence[object]) -> None:
        """A busy worker after the wait: its outcome if it sent one, a failure if past its deadline."""
        assert worker.busy is not None
        # An outcome sent just after the wait timed out is still an outcome, not a deadline.
        if worker.conn in ready or worker.conn.poll(0):
            self._settle(worker, self._receive(worker))
        elif time.monotonic() >= worker.busy.ends_at:
            self._settle(worker, self._stop_overdue(worker))

    def _receive(self, worker: _Worker) -> Outcome:
        """The worker's outcome; a failure of its task if the worker died instead (it is dropped)."""
        assert worker.busy is not None
        try:
            outcome: Outcome = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)  # so that its exit code is known
            code = worker.process.exitcode
            outcome = _failed(worker.busy.task, f"the worker process died (exit code {code})")
            self.workers.remove(worker)
            worker.kill()
        return outcome

    def _stop_overdue(self, worker: _Worker) -> Outcome:
        """Kill a worker past its deadline (it may be stuck in SDK retries); its task fails."""
        assert worker.busy is not None
        limit = worker.busy.deadline_s
        detail = (
            f"did not finish within its deadline of {limit:.0f} s (--deadline); "
            "stopped; the next veeksha-upload resumes the same W&B run"
        )
        outcome = _failed(worker.busy.task, detail)
        self.workers.remove(worker)
        worker.kill()
        return outcome

    def _settle(self, worker: _Worker, outcome: Outcome) -> None:
        """The worker is free again; the outcome is reported, or its task queued again offline first."""
        assert worker.busy is not None
        task = worker.busy.task
        worker.busy = None
        retry = _fallback(task, outcome)
        if retry is not None:
            self.queue.appendleft(retry)
            return
        if task.online_attempted and task.note is not None:
            outcome.detail = _after_fallback(outcome, task.note)
        self.on_outcome(outcome)

    def _close(self) -> None:
        """Workers still uploading are killed (a run stopped by Ctrl-C or an error); idle ones stopped."""
        for worker in self.workers:
            if worker.busy:
                worker.kill()
            else:
                worker.stop()
