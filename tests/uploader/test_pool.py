"""The worker pool (pool.py): a worker that dies while idle costs nothing.

Real worker processes (spawned, the SDK imported); the tasks are dry runs, so no upload is made.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from veeksha.uploader.discovery import discover
from veeksha.uploader.planning import plan_task
from veeksha.uploader.pool import _Pool, _Worker
from veeksha.uploader.settings import Layer, env_layer
from veeksha.uploader.worker import DRY_RUN, FAILED, Outcome

from tests.uploader.builders import RunSpec, build_run


def test_a_worker_that_died_while_idle_hands_its_next_task_to_a_new_one(tmp_path: Path) -> None:
    # Sending the next task to a dead idle worker raised BrokenPipeError: a traceback that ended
    # the whole backfill.
    run_dir = build_run(tmp_path, RunSpec(seed=1))
    (target,) = discover([str(run_dir)], recursive=False)
    task = plan_task(target, env_layer({}), Layer(mode="offline"), force=False, dry_run=True)
    outcomes: list[Outcome] = []
    pool = _Pool([task], jobs=1, base_deadline_s=120, on_outcome=outcomes.append)
    dead = _Worker(multiprocessing.get_context("spawn"))
    dead.process.kill()
    dead.process.join(10)
    pool.workers.append(dead)

    pool.run()

    assert [o.status for o in outcomes] == [DRY_RUN], outcomes
    assert dead not in pool.workers


def test_a_new_worker_that_dies_as_it_starts_fails_its_task_and_the_pool_ends(
    tmp_path: Path, monkeypatch
) -> None:
    # With no busy worker left, the pool's wait took the minimum of nothing: a ValueError traceback.
    # (The broken pipe is arranged: a worker process cannot be made to die between its start and
    # its first task on cue.)
    run_dir = build_run(tmp_path, RunSpec(seed=1))
    (target,) = discover([str(run_dir)], recursive=False)
    task = plan_task(target, env_layer({}), Layer(mode="offline"), force=False, dry_run=True)

    def broken(self: _Worker, task: object, deadline_s: float) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(_Worker, "give", broken)
    outcomes: list[Outcome] = []
    _Pool([task], jobs=1, base_deadline_s=120, on_outcome=outcomes.append).run()
    assert [(o.status, o.detail) for o in outcomes] == [(FAILED, "the worker process died as it started")]
