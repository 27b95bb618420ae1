"""CPU time the hypervisor took from a driver's cores during its run ("steal").

On a virtual machine the host may give the cores a driver runs on to other guests. While a core is
taken away (or is slow to come back from idle), the driver cannot read a chunk or send a request,
so the times it records include the pause: a latency tail that belongs to the load machine, not to
the server. Linux counts that time per core in /proc/stat's `steal` column. A driver reads it once
before its run and once after (never on the hot path) for the cores it may run on; the `drivers`
health check reports it (docs/metrics.md; docs/performance.md has what it was on our own machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
STEAL_COLUMN = 8  # cpuN user nice system idle iowait irq softirq steal ...


def driver_cpus() -> frozenset[int]:
    """The cores this process may run on (empty where the platform cannot say)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset()


def stolen_seconds(cpus: frozenset[int], proc_stat: Path = PROC_STAT) -> dict[int, float] | None:
    """Seconds of steal of each of `cpus` since boot; None where it cannot be read (not Linux, a
    core missing from the file, an unexpected line; or a container whose /proc/stat numbers its
    cores anew, as lxcfs does, so that they do not match the affinity's)."""
    if not cpus:
        return None
    try:
        text = proc_stat.read_text()
    except OSError:
        return None
    wanted = {f"cpu{c}": c for c in cpus}
    tick = os.sysconf("SC_CLK_TCK")
    steal: dict[int, float] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            if len(fields) <= STEAL_COLUMN or not fields[STEAL_COLUMN].isdigit():
                return None
            steal[wanted[fields[0]]] = int(fields[STEAL_COLUMN]) / tick
    return steal if len(steal) == len(wanted) else None


@dataclass(frozen=True)
class StealWatch:
    """Steal on this process's cores from its creation on."""

    cpus: frozenset[int]
    at_start: dict[int, float] | None

    @classmethod
    def start(cls, proc_stat: Path = PROC_STAT) -> StealWatch:
        cpus = driver_cpus()
        return cls(cpus, stolen_seconds(cpus, proc_stat))

    def seconds(self, proc_stat: Path = PROC_STAT) -> float | None:
        """The most steal any one of its cores had since start (None: not known). The worst core,
        not the sum or the mean: an unpinned driver runs on one core at a time, and a mean over many
        idle cores would hide the one it was paused on."""
        now = stolen_seconds(self.cpus, proc_stat)
        if now is None or self.at_start is None:
            return None
        worst = max(now[c] - self.at_start[c] for c in self.cpus)
        return round(max(0.0, worst), 3)  # whole ticks: no float dust in run.json
