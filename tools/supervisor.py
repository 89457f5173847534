"""``make run``'s answer to a crash: restart the process with backoff, like docker-compose's ``restart: unless-stopped``.

A process that ran for ``stable`` seconds before it exited is restarted after ``base`` seconds; one
that keeps crashing waits twice as long each time, up to ``cap``. Every exit and restart is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tools.cluster import Cluster, Proc


@dataclass
class Backoff:
    """How long to wait before restarting a process that exited after running ``lived`` seconds."""

    base: float = 0.5
    cap: float = 30.0
    stable: float = 60.0
    streak: dict[str, int] = field(default_factory=dict)

    def delay(self, name: str, lived: float) -> float:
        streak = 0 if lived >= self.stable else self.streak.get(name, 0) + 1
        self.streak[name] = streak
        return min(self.cap, self.base * 2 ** max(0, streak - 1))


class Supervisor:
    def __init__(self, cluster: Cluster, backoff: Backoff | None = None,
                 say: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.cluster = cluster
        self.backoff = backoff or Backoff()
        self.say = say
        self._started = {proc.name: time.monotonic() for proc in cluster.procs}
        self._due: dict[str, tuple[Proc, float]] = {}

    def tick(self, now: float) -> None:
        """Schedule a restart for each process that exited; restart those whose wait is over."""
        for proc in self.cluster.procs:
            if proc.alive or proc.name in self._due:
                continue
            lived = now - self._started.get(proc.name, now)
            wait = self.backoff.delay(proc.name, lived)
            self._due[proc.name] = (proc, now + wait)
            self.say(f"{proc.name} exited with code {proc.popen.returncode} after {lived:.1f} s; restarting in {wait:.1f} s. "
                     f"Its last log lines:\n{proc.log_tail(10)}")
        for name, (proc, at) in list(self._due.items()):
            if now < at:
                continue
            del self._due[name]
            fresh = self.cluster.respawn(proc)
            self._started[name] = now
            self.say(f"{name} restarted (pid {fresh.popen.pid})")
