"""Per-process CPU of the cluster's servers over a scenario: what each one spent, and per 1,000 messages.

Each server is a named process; its CPU includes its children's (PostgreSQL forks a backend per
connection), read with psutil before and after, so the split says where the work went.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children."""
    total = 0.0
    try:
        process = psutil.Process(pid)
        for p in (process, *process.children(recursive=True)):
            try:
                times = p.cpu_times()
                total += times.user + times.system
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

    def per_thousand(self, messages: int) -> float:
        return 1000 * self.total / max(messages, 1)

    def describe(self) -> str:
        kinds: dict[str, float] = {}
        for name, value in self.seconds.items():
            kind = name.partition("-")[0]  # "push-8101" and "push-8102" add up as "push"
            kinds[kind] = kinds.get(kind, 0.0) + value
        return " / ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


class CpuMeter:
    """Start with ``CpuMeter(processes)``, then ``stop()`` for the split since."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self.before = {name: cpu_seconds(pid) for name, pid in processes.items()}

    def stop(self) -> CpuSplit:
        return CpuSplit({name: cpu_seconds(pid) - self.before[name] for name, pid in self.processes.items()})
