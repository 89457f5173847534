"""Per-process CPU of the cluster's servers over a scenario: what each one spent, and per 1,000 messages.

Each server is a named process; its CPU includes its descendants' (PostgreSQL forks a backend per
connection), read with psutil before and after, so the split says where the work went.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants: the live ones, and those that ended and were
    reaped (counted in their parent's children times), so a PostgreSQL backend that exits mid-scenario
    still counts."""
    total = 0.0
    try:
        process = psutil.Process(pid)
        for p in (process, *process.children(recursive=True)):
            try:
                times = p.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


@dataclass(frozen=True)
class CpuSplit:
    seconds: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def kinds(self) -> dict[str, float]:
        """Each kind of server's CPU-s, most first ("push-8101" and "push-8102" add up as "push")."""
        kinds: dict[str, float] = {}
        for name, value in self.seconds.items():
            kind = name.partition("-")[0]
            kinds[kind] = kinds.get(kind, 0.0) + value
        return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))

    def describe(self, messages: int) -> str:
        """One row: each kind of server, most first, the total, and the total per 1,000 ``messages``."""
        split = " / ".join(f"{k} {v:.2f}" for k, v in self.kinds().items())
        per_thousand = f"{1000 * self.total / messages:.3f}" if messages else "n/a (none delivered)"
        return f"{split} / total {self.total:.2f} = {per_thousand} CPU-s per 1,000 msgs"

    def per_thousand(self, messages: int) -> str:
        """Each kind of server's CPU-s per 1,000 ``messages``, most first."""
        return " / ".join(f"{k} {1000 * v / messages:.3f}" for k, v in self.kinds().items()) if messages else "n/a"


class CpuMeter:
    """Start with ``CpuMeter(processes)``, then ``stop()`` for the split since."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self.before = {name: cpu_seconds(pid) for name, pid in processes.items()}

    def stop(self) -> CpuSplit:
        return CpuSplit({name: cpu_seconds(pid) - self.before[name] for name, pid in self.processes.items()})
