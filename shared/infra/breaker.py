"""A circuit breaker per dependency, so a dead MongoDB or Redis does not pile up waiting work.

closed -> (``threshold`` failures in a row) -> open: calls fail at once with ``Unavailable``
open -> (``cooldown`` seconds later) -> half-open: one trial call; success closes, failure reopens.

Only the dependency's own failures count: an error that ``blameless`` says the request caused (a
document the database refused) shows the dependency answered, so it counts as a success and reaches
the caller unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.infra.metrics import BREAKER_OPEN
from shared.wire.errors import Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, name: str, threshold: int = 5, cooldown: float = 2.0, failures: tuple[type[BaseException], ...] = (),
                 blameless: Callable[[BaseException], bool] = lambda exc: False) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = failures
        self.blameless = blameless
        self.consecutive = 0
        self.opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.consecutive < self.threshold:
            return CLOSED
        return HALF_OPEN if time.monotonic() - self.opened_at >= self.cooldown else OPEN

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` unless the breaker is open; a ``failures`` exception counts and becomes ``Unavailable``
        unless ``blameless``, which is raised as it is."""
        state = self.state
        if state == OPEN or (state == HALF_OPEN and self._trial_running):
            raise Unavailable(f"{self.name} is unavailable (circuit open)")
        self._trial_running = state == HALF_OPEN
        try:
            result = await operation()
        except self.failures as exc:
            if self.blameless(exc):
                self._record_success()
                raise
            self._record_failure()
            raise Unavailable.of(self.name, exc) from exc
        finally:
            self._trial_running = False
        self._record_success()
        return result

    def _record_success(self) -> None:
        if self.consecutive:
            log.info("circuit closed", extra={"breaker": self.name})
            BREAKER_OPEN.labels(self.name).set(0)
        self.consecutive = 0

    def _record_failure(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.threshold:
            if self.consecutive == self.threshold or self.state == HALF_OPEN:
                log.warning("circuit open", extra={"breaker": self.name, "failures": self.consecutive})
                BREAKER_OPEN.labels(self.name).set(1)
            self.opened_at = time.monotonic()
