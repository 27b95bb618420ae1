"""A driver's CPU steal: the time the hypervisor took from its cores, from /proc/stat."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from veeksha.runner.driver.steal import StealWatch, driver_cpus, stolen_seconds

TICK = 1 / os.sysconf("SC_CLK_TCK")


def proc_stat(tmp_path: Path, steal: dict[int, int]) -> Path:
    """A /proc/stat of as many cores as `steal` has, each with that many ticks of steal."""
    total = sum(steal.values())
    lines = [f"cpu  100 0 50 1000 3 0 7 {total} 0 0"]
    lines += [f"cpu{c} 50 0 25 500 1 0 3 {ticks} 0 0" for c, ticks in sorted(steal.items())]
    lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000"]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_steal_is_read_for_the_given_cores_only(tmp_path: Path) -> None:
    path = proc_stat(tmp_path, {0: 40, 1: 7, 2: 1000})
    assert stolen_seconds(frozenset({0, 1}), path) == {
        0: pytest.approx(40 * TICK),
        1: pytest.approx(7 * TICK),
    }
    assert stolen_seconds(frozenset({2}), path) == {2: pytest.approx(1000 * TICK)}


def test_a_core_missing_from_the_file_makes_the_figure_unknown(tmp_path: Path) -> None:
    path = proc_stat(tmp_path, {0: 40})
    assert stolen_seconds(frozenset({0, 5}), path) is None


def test_no_cores_or_no_file_or_an_old_format_is_unknown(tmp_path: Path) -> None:
    assert stolen_seconds(frozenset(), proc_stat(tmp_path, {0: 1})) is None  # not Linux: no affinity
    assert stolen_seconds(frozenset({0}), tmp_path / "absent") is None
    short = tmp_path / "short"
    short.write_text("cpu0 50 0 25 500\n")  # kernels before 2.6.11 had no steal column
    assert stolen_seconds(frozenset({0}), short) is None


def test_a_watch_reports_the_worst_cores_steal_since_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst core, not the sum or the mean: a driver runs on one core at a time, and a mean
    over many idle cores would hide the one it was paused on."""
    monkeypatch.setattr("veeksha.runner.driver.steal.driver_cpus", lambda: frozenset({0, 1, 2, 3}))
    path = proc_stat(tmp_path, {0: 100, 1: 500, 2: 0, 3: 0})
    watch = StealWatch.start(path)
    proc_stat(tmp_path, {0: 130, 1: 512, 2: 0, 3: 1})  # core 0 lost 30 ticks since, the most
    assert watch.seconds(path) == pytest.approx(round(30 * TICK, 3))
    path.unlink()
    assert watch.seconds(path) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_this_machine_reports_a_steal_figure_for_this_process_s_cores() -> None:
    cpus = driver_cpus()
    assert cpus  # Linux has sched_getaffinity
    watch = StealWatch.start()
    assert watch.at_start is not None and set(watch.at_start) == cpus
    assert all(seconds >= 0 for seconds in watch.at_start.values())
    assert watch.seconds() is not None and watch.seconds() >= 0  # type: ignore[operator]
