"""The profiler's reading of a py-spy sample: idle, a system call, the loop itself, the project's code or a library."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.profile import IDLE_PART, part_of, summarize

START = ("_run_module_as_main (<frozen runpy>:198)", "<module> (services/push/__main__.py:21)",
         "run (uvloop/__init__.py:92)", "run (asyncio/runners.py:118)", "run_until_complete (loop.c:35410)",
         "Loop__run (loop.c:20313)", "uv_run (core.c:464)")
CALLBACK = ("uv__run_idle (loop-watcher.c:68)", "Handle__run (loop.c:61090)", "task_step (_asynciomodule.c:2998)")


@pytest.mark.parametrize(("tail", "part"), [
    (("uv__io_poll (linux.c:1452)", "epoll_pwait (libc.so.6)"), IDLE_PART),
    (("uv__io_poll (linux.c:1452)", "uv__hrtime (linux.c:1603)"), "event loop (asyncio, uvloop)"),
    ((*CALLBACK, "flush (services/push/acks.py:97)"), "this project's code (shared/, services/)"),
    ((*CALLBACK, "corked (services/push/hub.py:502)", "UVStream_write (loop.c:107733)", "write (libc.so.6)"),
     "system calls (socket reads and writes)"),
    ((*CALLBACK, "flush (services/push/acks.py:97)", "execute (redis/asyncio/client.py:2262)",
      "_execute_pipeline (redis/asyncio/client.py:2134)"), "Redis client (redis-py, hiredis)"),
    ((*CALLBACK, "pack_command (shared/infra/clients.py:86)", "pack_command (pack.c:60)"), "Redis client (redis-py, hiredis)"),
    ((*CALLBACK, "data_received (websockets/asyncio/connection.py:1081)", "parse (websockets/protocol.py:601)"),
     "websockets (framing, reading, handshakes)"),
])
def test_a_native_sample_is_put_in_the_part_its_frames_name(tail: tuple[str, ...], part: str) -> None:
    """A native stack is read past uvloop's C frames: epoll is idle, a libc write a system call, a callback its code."""
    assert part_of((*START, *tail)) == part


def test_a_python_only_sample_with_no_task_running_is_the_event_loops() -> None:
    """Without native frames, a sample stopped at the runner is the loop's (idle and work cannot be told apart)."""
    assert part_of(START[:4]) == "event loop (asyncio, uvloop)"


def test_the_summary_leaves_idle_samples_out_of_the_shares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Of 100 samples, 75 idle: the other 25 make the shares, 20 of them the project's code (80%)."""
    stacks = tmp_path / "latency-dispatch.txt"
    stacks.write_text(f"{';'.join((*START, 'uv__io_poll (linux.c:1452)', 'epoll_pwait (libc.so.6)'))} 75\n"
                      f"{';'.join((*START, *CALLBACK, 'flush (services/push/acks.py:97)'))} 20\n"
                      f"{';'.join((*START, 'uv__io_poll (linux.c:1452)', 'uv__hrtime (linux.c:1603)'))} 5\n")
    summarize([stacks])
    printed = capsys.readouterr().out
    assert "100 samples, 75 of them idle in epoll_wait; shares of the other 25" in printed
    assert "this project's code (shared/, services/)       80.0%" in printed
    assert "event loop (asyncio, uvloop)                   20.0%" in printed
