"""Run a service with its wall clock off by ``CLOCK_SKEW_MS`` (put this directory first on ``PYTHONPATH``): every
``time.time`` reading is shifted, as on a host whose clock drifted; the loop's monotonic clock is left alone."""

from __future__ import annotations

import os
import time

_skew = int(os.environ.get("CLOCK_SKEW_MS", "0")) / 1000
if _skew:
    _wall = time.time
    _wall_ns = time.time_ns
    time.time = lambda: _wall() + _skew
    time.time_ns = lambda: _wall_ns() + int(_skew * 1e9)
