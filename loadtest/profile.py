"""Flame graphs of every service while a ``make bench`` scenario runs: where each process spends its CPU.

    .venv/bin/python -m loadtest.profile --scenario steady            # -> loadtest/profiles/steady-<service>.svg
    .venv/bin/python -m loadtest.profile --scenario latency --native  # C frames too (uvloop, hiredis, orjson)
    make profile SCENARIO=latency

It runs ``loadtest.bench_e2e`` with that one scenario on its own cluster, waits until collect gets busy (the
scenario's posting has begun, past the connects), then samples collect, dispatch, auth and each push node with
py-spy for ``--seconds``, all at once; the bench's own table follows as usual. Each process's samples are kept as
py-spy's collapsed stacks (``<scenario>-<service>.txt``, one line per stack and its count) and drawn as an SVG flame
graph beside them (``flamegraph.py``), titled with the command. ``summarize`` prints, per process, the share of its
samples in the parts that matter most (``FOCUS``), which ``loadtest/README.md`` quotes.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from loadtest import flamegraph

PROFILES = Path(__file__).parent / "profiles"
SERVICES = ("services.collect", "services.dispatch", "services.auth", "services.push")
BUSY_PERCENT = 30.0  # collect's CPU (% of a core) that says the scenario's posting has begun


def service_processes(bench: psutil.Process) -> dict[str, psutil.Process]:
    """The services the bench started, by name (``push-<port>`` for each node)."""
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
    return found


def wait_busy(proc: psutil.Process, timeout: float) -> None:
    """Return once ``proc`` uses more than ``BUSY_PERCENT`` of a core over half a second (or at ``timeout``)."""
    proc.cpu_percent()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if proc.cpu_percent() > BUSY_PERCENT:
            return


def record(args: argparse.Namespace, bench_args: list[str]) -> int:
    PROFILES.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "loadtest.bench_e2e", "--scenarios", args.scenario, *bench_args]
    bench = subprocess.Popen(command)
    try:
        parent = psutil.Process(bench.pid)
        deadline = time.monotonic() + args.timeout
        services: dict[str, psutil.Process] = {}
        while "collect" not in services or not any(n.startswith("push") for n in services):
            if time.monotonic() > deadline or bench.poll() is not None:
                raise SystemExit("the bench's services did not start")
            time.sleep(0.5)
            services = service_processes(parent)
        time.sleep(2)  # every push node up
        services = service_processes(parent)
        wait_busy(services["collect"], args.timeout)
        spies = {name: subprocess.Popen(["py-spy", "record", "--pid", str(p.pid), "--duration", str(args.seconds),
                                         "--rate", str(args.rate), "--format", "raw", "--nonblocking",
                                         *(["--native"] if args.native else []),
                                         "--output", str(PROFILES / f"{args.scenario}-{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, p in services.items()}
        title = f"python -m loadtest.profile {' '.join(sys.argv[1:])}"
        for name, spy in spies.items():
            spy.wait()
            stacks = PROFILES / f"{args.scenario}-{name}.txt"
            stacks.with_suffix(".svg").write_text(flamegraph.render(flamegraph.read(stacks), f"{name}, {args.scenario}: {title}"))
        return bench.wait()
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait()


FOCUS = {  # a part -> a pattern of frame names; a sample counts for a part when any frame of its stack matches
    "HTTP server (uvicorn, httptools, Starlette)": r"uvicorn|httptools|starlette",
    "MongoDB driver (pymongo)": r"pymongo",
    "Redis client (redis-py, hiredis)": r"redis/|hiredis",
    "websockets": r"websockets/",
    "JSON (orjson)": r"orjson|\(loads\)|\(dumps\)",
    "garbage collector": r"gc_collect|collect_generation",
    "idle (waiting in the event loop)": r"\(select\)|epoll_wait|_run_once.*\(base_events|run_forever",
}


def summarize(paths: list[Path]) -> None:
    """Per process: its samples, and the share of them in each ``FOCUS`` part (parts overlap: a Redis call made
    by a Starlette handler counts for both)."""
    for path in paths:
        stacks = flamegraph.read(path)
        total = sum(stacks.values())
        print(f"{path.stem}: {total:,} samples")
        for label, pattern in FOCUS.items():
            hits = sum(n for stack, n in stacks.items() if any(re.search(pattern, frame) for frame in stack))
            if hits:
                print(f"  {label:<45} {100 * hits / total:5.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="steady", help="one bench scenario (steady, latency, storm, ...)")
    p.add_argument("--seconds", type=int, default=15, help="how long to sample once the posting has begun")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
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
