"""The suite's waits: a polled condition (its accepted value, or a failure naming what it waited for), a process held
stopped, and who listens on a port."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.waits import stopped, until
from tools.cluster import Proc, listens_on


async def test_until_returns_the_first_value_the_condition_accepts_from_a_sync_or_async_probe() -> None:
    """A counting probe is called until its value passes ``done``; an async probe is awaited the same way."""
    counter = itertools.count()
    assert await until(lambda: next(counter), lambda n: n >= 3, what="three", every=0) == 3

    async def later() -> str:
        await asyncio.sleep(0)
        return "ready"

    assert await until(later, what="ready") == "ready"


async def test_until_fails_naming_what_it_waited_for_and_the_last_value() -> None:
    """Past its timeout the wait is an AssertionError that says what it waited for and what it saw last."""
    with pytest.raises(AssertionError, match=r"waited [0-9.]+ s for the door to open; last value: 'shut'"):
        await until(lambda: "shut", lambda v: v == "open", what="the door to open", timeout=0.05, every=0.01)


async def test_until_lets_a_probes_own_timeout_through() -> None:
    """A TimeoutError raised by the probe is the probe's failure, not reported as this wait running out."""
    def probe() -> None:
        raise TimeoutError("the probe's own")

    with pytest.raises(TimeoutError, match="the probe's own"):
        await until(probe, what="never")


def test_a_port_counts_as_listened_on_only_by_the_process_holding_its_socket() -> None:
    """``listens_on`` names the process that holds a listening socket, not any process while the port answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listens_on(os.getpid(), port) is True
        with subprocess.Popen(["sleep", "30"]) as other:
            try:
                assert listens_on(other.pid, port) is False
            finally:
                other.kill()
    assert listens_on(os.getpid(), port) is False


async def test_stopped_holds_a_process_stopped_as_the_kernel_reports_it_and_continues_it_after(tmp_path: Path) -> None:
    """Inside ``stopped`` the process's state is ``T``; after it, the process runs again."""
    with subprocess.Popen(["sleep", "30"]) as popen:
        proc = Proc("sleep", popen, tmp_path / "sleep.log", ["sleep", "30"])
        try:
            async with stopped(proc):
                assert proc.state == "T"
            await until(lambda: proc.state, lambda state: state != "T", what="sleep to run again")
        finally:
            popen.kill()
    assert proc.state == "X"
