"""Flame graphs of every service while a ``make bench`` scenario runs: where each process spends its CPU.

    .venv/bin/python -m loadtest.profile --scenario steady               # -> loadtest/profiles/steady-<service>.svg
    .venv/bin/python -m loadtest.profile --scenario latency --python-only  # Python frames only (py-spy without --native)

It runs ``loadtest.bench_e2e`` with that one scenario on its own cluster, waits until collect gets busy (the
scenario's posting has begun, past the connects), then samples collect, dispatch, auth and each push node with
py-spy for ``--seconds``, all at once; the bench's own table follows as usual. Each process's samples are kept as
py-spy's collapsed stacks (``<scenario>-<service>.txt``, one line per stack and its count) and drawn as an SVG flame
graph beside them (``flamegraph.py``), titled with the command. ``summarize`` prints, per process, the share of its
samples in each part (``PARTS``: JSON, the Redis client, websockets, ...), which ``loadtest/README.md`` quotes.

py-spy takes a thread waiting in ``epoll_wait`` for a running one often enough to count a mostly idle event loop as
busy: a loop that wakes 500 times a second and used 1.3% of a core got samples for 11% of the time. So the stacks
are native (``--native``: uvloop's and libuv's C frames, the system calls), a sample whose innermost frame is the
loop's ``epoll_wait`` is counted as idle and left out of the shares, and the summary prints beside the samples what
the kernel says each process used over the same seconds (its CPU time in ``/proc``).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from loadtest import flamegraph

PROFILES = Path(__file__).parent / "profiles"
SERVICES = ("services.collect", "services.dispatch", "services.auth", "services.push")
BUSY_PERCENT = 10.0  # the watched service's CPU (% of a core) that says the scenario's load has begun...
STARTED_S = 5.0  # ... once it has run this long (its own start is busy too)
PY_SPY = Path(sys.executable).parent / "py-spy"


def service_processes(bench: psutil.Process) -> dict[str, psutil.Process]:
    """The services the bench started, by name (``push-1``, ``push-2``, ... for the nodes, by port)."""
    found = {}
    for proc in bench.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        for module in SERVICES:
            if module in cmd:
                name = module.removeprefix("services.")
                if name == "push":
                    port = next((c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN), proc.pid)
                    name = f"push-{port}"
                found[name] = proc
    nodes = sorted((n for n in found if n.startswith("push-")), key=lambda n: int(n.removeprefix("push-")))
    return {(f"push-{nodes.index(n) + 1}" if n in nodes else n): p for n, p in found.items()}


def wait_busy(bench: psutil.Process, timeout: float, watched: str) -> dict[str, psutil.Process]:
    """The bench's services once one named ``watched`` or starting so (collect: the scenario's posting has begun; push
    for connections) uses more than ``BUSY_PERCENT`` of a core over half a second, found again at each look (a
    service may be restarted while the cluster starts)."""
    deadline = time.monotonic() + timeout
    seen: dict[int, tuple[float, float]] = {}  # pid -> (first seen, CPU-s at the last look)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        services = service_processes(bench)
        for proc in (p for name, p in services.items() if name.startswith(watched)):
            try:
                used = sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
            first, last = seen.get(proc.pid, (time.monotonic(), used))
            if time.monotonic() - first > STARTED_S and (used - last) / 0.5 * 100 > BUSY_PERCENT:
                return services
            seen[proc.pid] = (first, used)
    raise SystemExit(f"{watched} did not get busy: the scenario's load did not begin")


def cpu_seconds(proc: psutil.Process) -> float:
    """The user and system CPU time ``proc`` has used so far (0 once it is gone)."""
    try:
        return sum(proc.cpu_times()[:2])
    except psutil.Error:
        return 0.0


def record(args: argparse.Namespace, bench_args: list[str]) -> int:
    PROFILES.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "loadtest.bench_e2e", "--scenarios", args.scenario, *bench_args]
    bench = subprocess.Popen(command)
    try:
        services = wait_busy(psutil.Process(bench.pid), args.timeout, args.busy)
        used = {name: cpu_seconds(p) for name, p in services.items()}
        spies = {name: subprocess.Popen([str(PY_SPY), "record", "--pid", str(p.pid), "--duration", str(args.sample_seconds),
                                         "--rate", str(args.rate), "--format", "raw",
                                         # native stacks need each sample taken with the process paused
                                         *(["--nonblocking"] if args.python_only else ["--native"]),
                                         "--output", str(PROFILES / f"{args.scenario}-{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, p in services.items()}
        title = f"python -m loadtest.profile {' '.join(sys.argv[1:])}"
        for name, spy in spies.items():
            spy.wait()
            used[name] = cpu_seconds(services[name]) - used[name]
            stacks = PROFILES / f"{args.scenario}-{name}.txt"
            stacks.with_suffix(".svg").write_text(flamegraph.render(flamegraph.read(stacks), f"{name}, {args.scenario}: {title}"))
        for name, seconds in sorted(used.items()):
            print(f"{name}: {100 * seconds / args.sample_seconds:.1f}% of a core while sampled (its CPU time in /proc)")
        return bench.wait()
    finally:
        if bench.poll() is None:  # an interrupt, so the bench stops the cluster it started (SIGTERM would orphan it)
            bench.send_signal(signal.SIGINT)
            bench.wait()


RUNNER = re.compile(r"\((asyncio/runners|uvloop/__init__)\.py")  # the event loop's own frame: tasks run above it
PYTHON = re.compile(r"\.py:\d+\)$")  # a Python frame (native ones name a C file or a library)
IDLE = re.compile(r"^epoll_p?wait ")  # the loop waiting for its sockets: a sample of an idle process
SYSCALL = re.compile(r"^(write|writev|send|sendmsg|sendto|read|readv|recv|recvmsg|recvfrom) \(libc")
IDLE_PART = "idle (the loop waiting in epoll_wait)"
PROJECT = re.compile(r"\((shared|services)/(?!.*__main__)")
PARTS = {  # what the project's code calls, by the file of the called frame (``function (file:line)``)
    "JSON (orjson)": r"orjson|^(loads|dumps) ",
    "Redis client (redis-py, hiredis)": r"\((redis|hiredis)/|\((pack|reader|hiredis)\.c[:)]",
    "MongoDB driver (pymongo, bson)": r"\((pymongo|bson)/",
    "websockets (framing, reading, handshakes)": r"\(websockets/",
    "HTTP (uvicorn, httptools, Starlette)": r"\((uvicorn|httptools|starlette)/",
    "metrics (prometheus_client)": r"\(prometheus_client/",
    "logging": r"\(logging/",
    "garbage collector": r"gc_collect|collect_generation",
    "event loop (asyncio, uvloop)": r"\((asyncio|uvloop)/|\((loop|core|linux|stream|loop-watcher|_asynciomodule)\.c[:)]",
}


def part_of(stack: tuple[str, ...]) -> str:
    """What a sample was doing: idle, in epoll_wait; a socket's system call (the kernel's part of a read or a write,
    whoever made it); the event loop itself (polling, scheduling) when no task was running; else the project's own
    code if its innermost frame is the project's, or the part the project's innermost frame called; for a task with no
    project frame (an HTTP parser calling in), its innermost frame's part."""
    if IDLE.search(stack[-1]):
        return IDLE_PART
    if SYSCALL.search(stack[-1]):
        return "system calls (socket reads and writes)"
    runner = [i for i, frame in enumerate(stack) if RUNNER.search(frame)]
    stack = stack[runner[-1] + 1:] if runner else stack  # what the loop runs, not how the process started it
    python = [i for i, frame in enumerate(stack) if PYTHON.search(frame)]
    stack = stack[python[0]:] if python else ()  # the loop's own C frames down to the callback it runs
    if not stack:
        return "event loop (asyncio, uvloop)"
    mine = [i for i, frame in enumerate(stack) if PROJECT.search(frame)]
    if mine and mine[-1] == len(stack) - 1:
        return "this project's code (shared/, services/)"
    for frame in [stack[mine[-1] + 1]] if mine else reversed(stack):
        for part, pattern in PARTS.items():
            if re.search(pattern, frame):
                return part
    return "other (interpreter, other libraries)"


def summarize(paths: list[Path]) -> None:
    """Per process: its samples, those idle in epoll_wait (left out of the shares), the share of the others in each
    part of ``PARTS`` (each sample counted once, for the innermost frame that names a part), and the project's
    functions with the most samples in their own code."""
    for path in paths:
        stacks = flamegraph.read(path)
        parts: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for stack, n in stacks.items():
            parts[part_of(stack)] += n
            if PROJECT.search(stack[-1]):
                own[stack[-1]] += n
        idle = parts.pop(IDLE_PART, 0)
        busy = sum(parts.values()) or 1
        print(f"{path.stem}: {busy + idle:,} samples, {idle:,} of them idle in epoll_wait; shares of the other {busy:,}")
        for part, n in parts.most_common():
            print(f"  {part:<45} {100 * n / busy:5.1f}%")
        for frame, n in own.most_common(5):
            print(f"    own time {100 * n / busy:4.1f}%  {frame}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="steady", help="one bench scenario (steady, latency, storm, ...)")
    p.add_argument("--busy", default="collect", help="the service whose CPU says the load has begun (push for connections)")
    p.add_argument("--sample-seconds", type=int, default=10, help="how long to sample once the posting has begun")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--python-only", action="store_true", help="Python frames only (py-spy without --native): idle time "
                   "then counts as the event loop's")
    p.add_argument("--timeout", type=float, default=300, help="give up waiting for the services or the posting")
    p.add_argument("--summarize", nargs="*", type=Path, help="only print the summary of these stack files")
    args, bench_args = p.parse_known_args()
    if args.summarize is not None:
        summarize(args.summarize or sorted(PROFILES.glob("*.txt")))
        return
    code = record(args, bench_args)
    summarize(sorted(PROFILES.glob(f"{args.scenario}-*.txt")))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
