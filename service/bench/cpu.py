"""CPU accounting from ``/proc``: what our processes used, and what everything else used.

On a shared 2-core machine another process's work lands in our figures. Every figure comes
with the CPU that the rest of the machine used meanwhile (``system busy - ours``), so a run
disturbed by a neighbour can be told from a slow service. Linux only; elsewhere the figures
read 0 and ``available()`` is False.
"""

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return os.path.exists("/proc/stat")


def system_busy_seconds() -> float:
    """CPU seconds all cores spent running processes since boot (``/proc/stat``).

    user + nice + system + steal: idle and iowait are not busy, and irq/softirq time is left
    out because the loopback traffic of the benchmark itself is processed there, charged to
    no process.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system = fields[:3]
    steal = fields[7] if len(fields) > 7 else 0
    # guest time is already counted in user and nice
    return (user + nice + system + steal) / _TICK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def own_cpu_seconds(live_children: Iterable[int] = ()) -> float:
    """This process, its waited-for children, and the live ``live_children``."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    waited = sum(u.ru_utime + u.ru_stime for u in usage)
    return waited + sum(process_cpu_seconds(pid) for pid in live_children)


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    busy: float
    own: float

    @classmethod
    def take(cls, live_children: Iterable[int] = ()) -> "CpuSnapshot":
        return cls(time.perf_counter(), system_busy_seconds(), own_cpu_seconds(live_children))

    def others_since(self, start: "CpuSnapshot") -> float:
        """Cores used on average by processes that are not ours, from ``start`` to this one."""
        wall = self.wall - start.wall
        if wall <= 0:
            return 0.0
        return max(0.0, (self.busy - start.busy) - (self.own - start.own)) / wall
