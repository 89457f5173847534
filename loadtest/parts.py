"""Three faster parts from PyPI, each measured bare against the part the project runs now: figures, and the ratio
candidate / current.

    .venv/bin/python -m loadtest.parts                          # all three, current and candidate twice, interleaved
    .venv/bin/python -m loadtest.parts --parts json             # one part (or a comma-separated list)
    .venv/bin/python -m loadtest.parts --sockets 10000 --fanout-rounds 50
    make bench-parts PARTS_ARGS='--parts sockets,http --rounds 3'

No project service, Redis or MongoDB runs. Each server is a process of its own (uvloop), each load client too; the
run order is current, candidate, current, candidate (``--rounds`` pairs), as the machine's speed drifts, and every
run's figures are printed as they come and in one table per part at the end. Server CPU is psutil's user + system
of the server process and its descendants (``loadtest.cpu``); client CPU ("client busy", share of one core) says
when the load generator, not the server, may be what limits a figure.

* sockets: websockets 17 (the push node's server: ``websockets.asyncio.server.serve``, compression off, pings every
  20 s) against picows (Cython; text frames, server side, no compression, periodic pings every 20 s, on uvloop's
  transports unless ``--picows-aiofastnet``, a ``--picows-read-buffer`` initial read buffer). Each server sends a
  ~60-byte welcome text frame on open and keeps the socket idle, reading (and dropping) what the client sends.
  ``--sockets`` sockets come from client processes of ``--per-process`` each, the i-th from 127.0.0.(2+i)
  (``loadtest.fleet``), ``--concurrency`` handshakes in flight each, all speaking the same minimal client (a raw
  asyncio protocol: the upgrade request, then frame counting), so the client costs little and the same for both.
  Figures: connect rate (sockets welcomed per second, from the first connect to the last welcome), server CPU-s per
  1,000 connects, server RSS per idle socket (after minus before, KB, ``--settle`` s after the last welcome); then
  fan-out: the server writes ``--fanout-rounds`` rounds of a ~100-byte text frame to every socket (websockets: the
  node's way, the frame pre-framed once by ``services.push.hub.wire`` and appended to each socket's transport;
  picows: ``WSTransport.send`` of the same JSON bytes), timed from the first write to the last socket's last frame:
  frames/s and server CPU-s per 1,000 frames.
* http: uvicorn 0.54 + httptools + uvloop (collect's and auth's server, ``shared.infra.serve``) against granian
  (Rust; one worker, interface asgi, ``--loop uvloop``), both running the same Starlette app: ``POST /v1/echo`` reads
  a ~300-byte JSON body with orjson, checks two fields and answers 202 with a small JSON. An aiohttp client process
  (after ``WARMUP_REQUESTS``) sends ``--requests`` requests, ``--in-flight`` at once over ``--connections``
  connections: requests/s, latency p50/p99, server CPU-s per 1,000 requests; then a paced run, ``--paced-rate``
  requests/s for ``--paced-seconds`` (latency from each request's scheduled time, so a late client counts): p50/p99.
* json: orjson 3.13 against msgspec, in this process (best of ``--json-repeats`` timings, µs per op): (a) a post body
  ``{"messages": [...]}`` of 1 and of 200 messages decoded and validated into typed objects (orjson.loads and plain
  checks into a dataclass, as collect's ``intake`` does them, against ``msgspec.json.Decoder`` of a ``Struct`` with
  constraints); for scale, collect's whole ``parse_body`` (ids, frames, limits) of the same body; (b) a message frame
  encoded to bytes (``orjson.dumps`` of a dict, as ``MessageFrame.encode``, against ``msgspec.json.Encoder`` of a
  tagged ``Struct``); (c) a client ack of 20 ids parsed (the node's ``parse_client_frame`` against a Decoder of a
  tagged union of client frames).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import timeit
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import msgspec
import orjson
import psutil
import uvloop
from picows import WSAutoPingStrategy, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from loadtest.cpu import cpu_seconds
from loadtest.fleet import Fleet
from loadtest.raw_socket import RawSocket, upgrade_request
from loadtest.report import grid, percentile
from services.collect.intake import MAX_TTL_SECONDS, PRIORITIES, Limits, parse_body
from services.push.hub import wire
from shared.model.priority import Priority
from shared.wire.protocol import MAX_ACK_IDS, USER_ID_PATTERN, parse_client_frame, valid_user_id
from tools.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PINGS_S = 20.0  # the push node's PING_INTERVAL_SECONDS (and its ping timeout)
MAX_FRAME = 1024 * 1024  # the push node's MAX_FRAME_BYTES
BACKLOG = 4096  # the push node's listen backlog
WARMUP_REQUESTS = 500
MAX_PER_PROCESS = 15_000  # a client process may hold 20,000 open files here
SIDES = {"sockets": ("websockets", "picows"), "http": ("uvicorn", "granian"), "json": ("orjson", "msgspec")}


@dataclass(frozen=True)
class Figure:
    label: str
    digits: int
    better: str  # "higher", "lower" or "" (a check, not a figure of merit)


Figures = dict[str, float]  # one run's figures, by key of the part's ``Figure``s


# ---------------------------------------------------------------- child processes


def spawn(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, Connection]:
    """A spawned process running ``target(*args, pipe)``, and the parent's end of that pipe."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    return proc, parent


def receive(pipe: Connection, timeout: float, what: str) -> Any:
    """The next message from a child, or SystemExit naming ``what`` after ``timeout`` s."""
    if not pipe.poll(timeout):
        raise SystemExit(f"no {what} from a child process within {timeout:.0f} s")
    return pipe.recv()


def expect(pipe: Connection, tag: str, timeout: float) -> tuple[Any, ...] | None:
    """The next message tagged ``tag`` from a child (others skipped), or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while pipe.poll(max(0.0, deadline - time.monotonic())):
        message = pipe.recv()
        if message[0] == tag:
            return tuple(message[1:])
    return None


def need(pipe: Connection, tag: str, timeout: float) -> tuple[Any, ...]:
    """As ``expect``, but SystemExit after ``timeout`` s."""
    if (message := expect(pipe, tag, timeout)) is None:
        raise SystemExit(f"no {tag!r} from a child process within {timeout:.0f} s")
    return message


def end(proc: BaseProcess) -> None:
    """Stop a process this module started, by its handle: SIGTERM, then SIGKILL after 5 s."""
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------- sockets: the servers

WELCOME = orjson.dumps({"type": "welcome", "user_id": "user-000001", "node": "push-8101"})  # ~60 bytes
FANOUT = orjson.dumps({"type": "message", "id": "0196f2a4c1d0e3b70000", "payload": {"title": "t", "body": "b" * 12},
                       "ts": 1767225600000})  # ~100 bytes


class Hub:
    """A server's open sockets, each as the call that writes the fan-out frame to it; says ``open`` on the pipe once
    ``expect`` sockets got their welcome."""

    def __init__(self, expect: int, pipe: Connection) -> None:
        self.expect, self.pipe = expect, pipe
        self.writes: list[Callable[[], None]] = []

    def opened(self, write: Callable[[], None]) -> None:
        self.writes.append(write)
        if len(self.writes) == self.expect:
            self.pipe.send(("open",))

    async def fan_out(self, rounds: int) -> tuple[float, float]:
        """``rounds`` times the frame to every socket, yielding to the loop between rounds; the wall-clock start and end."""
        start = time.time()
        for _ in range(rounds):
            for write in self.writes:
                write()
            await asyncio.sleep(0)
        return start, time.time()


async def serve_websockets(port: int, hub: Hub) -> Server:
    """The push node's server settings, bare: welcome, then read until closed; fan-out the node's way (``wire``)."""
    wired = wire(FANOUT)
    welcome = WELCOME.decode()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(welcome)
        hub.opened(partial(ws.transport.write, wired))
        with contextlib.suppress(ConnectionClosed):  # the clients drop their sockets at the end, without a close frame
            async for _ in ws:
                pass

    return await serve(handler, HOST, port, compression=None, ping_interval=PINGS_S, ping_timeout=PINGS_S,
                       max_size=MAX_FRAME, server_header=None, backlog=BACKLOG)


class PicowsSocket(WSListener):
    """One picows socket: the welcome on open; a CLOSE answered with the peer's code, other frames dropped."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, WELCOME)
        self.hub.opened(partial(transport.send, WSMsgType.TEXT, FANOUT))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


@dataclass(frozen=True)
class SocketServer:
    library: str  # websockets or picows
    port: int
    sockets: int  # say ``open`` once this many are welcomed
    read_buffer: int  # picows's initial read buffer per socket
    aiofastnet: bool  # picows on aiofastnet's transports rather than the loop's (uvloop's)


async def serve_picows(spec: SocketServer, hub: Hub) -> asyncio.Server:
    """picows pinned to what the node needs: server side, text frames, no compression (picows has none), periodic
    pings and the node's frame limit and backlog; the upgrade's path routed as the node's (``/ws``, else 404)."""

    def route(request: WSUpgradeRequest) -> PicowsSocket | None:
        return PicowsSocket(hub) if request.path.partition(b"?")[0] == b"/ws" else None

    return await ws_create_server(route, HOST, spec.port, enable_auto_ping=True, auto_ping_idle_timeout=PINGS_S,
                                  auto_ping_reply_timeout=PINGS_S, auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
                                  max_frame_size=MAX_FRAME, read_buffer_init_size=spec.read_buffer,
                                  use_aiofastnet=spec.aiofastnet, backlog=BACKLOG)


async def socket_server(spec: SocketServer, pipe: Connection) -> None:
    """Serve until told ``stop``; on ``fanout`` (rounds), fan out and answer ``sent`` (start, end)."""
    hub = Hub(spec.sockets, pipe)
    server = await (serve_websockets(spec.port, hub) if spec.library == "websockets" else serve_picows(spec, hub))
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def on_pipe() -> None:
        try:
            commands.put_nowait(pipe.recv())
        except EOFError:  # the parent is gone
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            commands.put_nowait(("stop",))

    asyncio.get_running_loop().add_reader(pipe.fileno(), on_pipe)
    pipe.send(("ready",))
    while (command := await commands.get())[0] == "fanout":
        pipe.send(("sent", *await hub.fan_out(command[1])))
    server.close()


def socket_server_main(spec: SocketServer, pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops this process by its handle
    uvloop.run(socket_server(spec, pipe))


# ---------------------------------------------------------------- sockets: the client

UPGRADE = upgrade_request(HOST, "/ws")


@dataclass
class SocketShare:
    port: int
    count: int
    concurrency: int
    rounds: int  # fan-out frames each socket should get
    timeout: float


@dataclass
class SocketReport:
    opened: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    connected: float = 0.0  # the last welcome
    frames: int = 0  # fan-out frames received
    last_frame: float = 0.0
    busy: float = 0.0  # this process's CPU over its work, as a share of one core


class Tally:
    """A client process's fan-out frames: ``done`` once every welcomed socket has all of its ``rounds``."""

    def __init__(self, report: SocketReport) -> None:
        self.report = report
        self.target: int | None = None
        self.done = asyncio.get_running_loop().create_future()

    def frame(self, _payload: bytes) -> None:
        self.report.frames += 1
        self.report.last_frame = time.time()
        self.check()

    def expect(self, frames: int) -> None:
        self.target = frames
        self.check()

    def check(self) -> None:
        if self.target is not None and self.report.frames >= self.target and not self.done.done():
            self.done.set_result(None)


@contextlib.asynccontextmanager
async def hold_sockets(source: str, share: SocketShare) -> AsyncIterator[SocketReport]:
    """A ``loadtest.fleet`` worker: open the share's sockets from ``source`` (each welcomed within 30 s), then wait
    until each has ``rounds`` fan-out frames (at most ``timeout`` s), report; the sockets close when left."""
    loop = asyncio.get_running_loop()
    report = SocketReport(started=time.time())
    cpu, wall = time.process_time(), time.monotonic()
    tally, gate, transports = Tally(report), asyncio.Semaphore(share.concurrency), []

    async def one() -> None:
        async with gate:
            try:
                transport, protocol = await asyncio.wait_for(loop.create_connection(
                    partial(RawSocket, UPGRADE, tally.frame), HOST, share.port, local_addr=(source, 0)), 30)
                transports.append(transport)
                await asyncio.wait_for(protocol.welcome, 30)
                report.opened += 1
            except (OSError, TimeoutError) as exc:
                report.failures[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(share.count)))
    report.connected = time.time()
    tally.expect(report.opened * share.rounds)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done, share.timeout)
    report.busy = (time.process_time() - cpu) / (time.monotonic() - wall)
    try:
        yield report
    finally:
        for transport in transports:
            transport.close()


# ---------------------------------------------------------------- sockets: one run

SOCKET_FIGURES = {
    "welcomed": Figure("sockets welcomed", 0, ""),
    "connect_rate": Figure("connect rate (sockets welcomed/s)", 0, "higher"),
    "connect_cpu": Figure("server CPU-s per 1,000 connects", 3, "lower"),
    "rss_kb": Figure("server RSS per idle socket (KB)", 1, "lower"),
    "fanout_rate": Figure("fan-out frames/s (to the last socket)", 0, "higher"),
    "fanout_cpu": Figure("server CPU-s per 1,000 fan-out frames", 4, "lower"),
    "client_busy": Figure("client processes busy (% of a core, summed)", 0, ""),
}


def socket_run(library: str, args: argparse.Namespace) -> Figures:
    """One server of ``library``, its sockets opened, held idle, fanned out to; the figures."""
    port = free_port()
    spec = SocketServer(library, port, args.sockets, args.picows_read_buffer, args.picows_aiofastnet)
    server, pipe = spawn(socket_server_main, spec)
    shares = [SocketShare(port, min(args.per_process, args.sockets - start), args.concurrency, args.fanout_rounds, args.timeout)
              for start in range(0, args.sockets, args.per_process)]
    fleet = Fleet(hold_sockets, shares, max_hold_seconds=4 * args.timeout)
    try:
        need(pipe, "ready", args.timeout)
        rss_before, cpu_before = rss(server.pid), cpu_seconds(server.pid)
        fleet.start()
        for worker in fleet.pipes:  # ``Fleet.go``, but the server is watched while the workers work
            worker.send("go")
        expect(pipe, "open", args.timeout)  # or not all welcomed in time: the figures say how many were
        time.sleep(args.settle)
        rss_idle, cpu_open = rss(server.pid), cpu_seconds(server.pid)
        pipe.send(("fanout", args.fanout_rounds))
        start, _ = need(pipe, "sent", args.timeout)
        reports: list[SocketReport] = [receive(worker, 2 * args.timeout, "client report") for worker in fleet.pipes]
        cpu_after = cpu_seconds(server.pid)
    finally:
        end(server)
        fleet.close(timeout=10)
    welcomed, frames = sum(r.opened for r in reports), sum(r.frames for r in reports)
    failures = sum((r.failures for r in reports), Counter())
    if failures or frames < welcomed * args.fanout_rounds:
        print(f"    {library}: failures {dict(failures)}, fan-out frames {frames:,} of {welcomed * args.fanout_rounds:,}")
    connect_s = max(r.connected for r in reports) - min(r.started for r in reports)
    fanout_s = max(r.last_frame for r in reports) - start
    return {"welcomed": welcomed, "connect_rate": welcomed / connect_s, "connect_cpu": 1000 * (cpu_open - cpu_before) / max(welcomed, 1),
            "rss_kb": (rss_idle - rss_before) / 1024 / max(welcomed, 1), "fanout_rate": frames / fanout_s if frames else 0.0,
            "fanout_cpu": 1000 * (cpu_after - cpu_open) / max(frames, 1), "client_busy": 100 * sum(r.busy for r in reports)}


# ---------------------------------------------------------------- http: the app and its servers

ECHO_BODY = orjson.dumps({"user_id": "user-000123", "ttl_seconds": 3600, "priority": "normal",
                          "payload": {"title": "Your order has shipped", "order": "A-1029384756", "body": "x" * 180}})
ACCEPTED = orjson.dumps({"id": "0196f2a4c1d0e3b7", "accepted": 1})
JSON_TYPE = "application/json"


async def echo(request: Request) -> Response:
    """``POST /v1/echo``: the body's JSON read with orjson, two fields checked, 202 with a small JSON."""
    body = orjson.loads(await request.body())
    if not isinstance(body, dict) or not valid_user_id(body.get("user_id")) or not isinstance(body.get("ttl_seconds"), int):
        return Response(b'{"error":"invalid"}', 400, media_type=JSON_TYPE)
    return Response(ACCEPTED, 202, media_type=JSON_TYPE)


ECHO_APP = Starlette(routes=[Route("/v1/echo", echo, methods=["POST"])])


def http_server_command(server: str, port: int) -> list[str]:
    """uvicorn as ``shared.infra.serve.run_http`` runs it (uvloop, httptools, no access log), or granian: one worker,
    ASGI, uvloop; both serving ``ECHO_APP``."""
    where = ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log", *where,
                "loadtest.parts:ECHO_APP"]
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1", *where,
            "loadtest.parts:ECHO_APP"]


def wait_listening(name: str, port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on port {port} within {timeout:.0f} s (exit status {server.poll()})")


def end_server(server: subprocess.Popen[bytes]) -> None:
    """Stop an HTTP server this module started, and any worker it forked (granian's), by their handles."""
    workers = []
    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(server.pid).children(recursive=True)
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for worker in workers:
        with contextlib.suppress(psutil.Error):
            worker.kill()


# ---------------------------------------------------------------- http: the load client


@dataclass(frozen=True)
class HttpPlan:
    url: str
    requests: int
    in_flight: int
    connections: int
    paced_rate: int
    paced_seconds: float


async def post(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.post(url, data=ECHO_BODY, headers={"content-type": JSON_TYPE}) as response:
            await response.read()
            return response.status == 202
    except (aiohttp.ClientError, TimeoutError):
        return False


def summary(latencies: list[float], errors: int, seconds: float, cpu: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"ok": len(ordered), "errors": errors, "seconds": seconds, "p50_ms": 1000 * percentile(ordered, 0.5),
            "p99_ms": 1000 * percentile(ordered, 0.99), "busy": 100 * cpu / seconds}


async def saturate(session: aiohttp.ClientSession, url: str, total: int, in_flight: int) -> dict[str, float]:
    """``total`` requests, ``in_flight`` at once, queued for the session's connections (so the latency counts the
    queueing). Each sender yields after an answer: else aiohttp hands the connection straight back to the same sender,
    and the senders beyond the connections' count would wait until the end."""
    latencies: list[float] = []
    left, errors = total, 0

    async def sender() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            sent = time.perf_counter()
            if await post(session, url):
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
            await asyncio.sleep(0)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(in_flight)))
    return summary(latencies, errors, time.perf_counter() - wall, time.process_time() - cpu)


async def paced(session: aiohttp.ClientSession, url: str, rate: int, seconds: float) -> dict[str, float]:
    """``rate`` requests a second for ``seconds``, each timed from when it was due (open loop)."""
    latencies: list[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        if await post(session, url):
            latencies.append(time.perf_counter() - due)
        else:
            errors += 1

    cpu, wall = time.process_time(), time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        due = wall + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return summary(latencies, errors, time.perf_counter() - wall, time.process_time() - cpu)


async def http_client(plan: HttpPlan, pipe: Connection) -> None:
    """Warm up, then each phase (saturated, paced) on the parent's ``go``, answering its summary."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=plan.connections), timeout=timeout) as session:
        await saturate(session, plan.url, WARMUP_REQUESTS, plan.in_flight)
        for phase in (partial(saturate, session, plan.url, plan.requests, plan.in_flight),
                      partial(paced, session, plan.url, plan.paced_rate, plan.paced_seconds)):
            pipe.send(("ready",))
            pipe.recv()
            pipe.send(("done", await phase()))


def http_client_main(plan: HttpPlan, pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops this process by its handle
    uvloop.run(http_client(plan, pipe))


# ---------------------------------------------------------------- http: one run

HTTP_FIGURES = {
    "rps": Figure("requests/s (saturated)", 0, "higher"),
    "p50_ms": Figure("latency p50, saturated (ms)", 2, "lower"),
    "p99_ms": Figure("latency p99, saturated (ms)", 2, "lower"),
    "cpu": Figure("server CPU-s per 1,000 requests", 3, "lower"),
    "busy": Figure("client busy, saturated (% of a core)", 0, ""),
    "paced_p50_ms": Figure("paced latency p50 (ms)", 2, "lower"),
    "paced_p99_ms": Figure("paced latency p99 (ms)", 2, "lower"),
    "paced_cpu": Figure("paced server CPU-s per 1,000 requests", 3, "lower"),
    "errors": Figure("errors (both runs)", 0, ""),
}


def http_run(server_name: str, args: argparse.Namespace) -> Figures:
    """One HTTP server, warmed up, then saturated and paced by a client process; the figures."""
    port = free_port()
    server = subprocess.Popen(http_server_command(server_name, port), cwd=ROOT, stdin=subprocess.DEVNULL)
    client: BaseProcess | None = None
    try:
        wait_listening(server_name, port, server, args.timeout)
        plan = HttpPlan(f"http://{HOST}:{port}/v1/echo", args.requests, args.in_flight, args.connections,
                        args.paced_rate, args.paced_seconds)
        client, pipe = spawn(http_client_main, plan)
        phases = []
        for _ in range(2):  # saturated, then paced
            need(pipe, "ready", args.timeout)
            cpu = cpu_seconds(server.pid)
            pipe.send("go")
            figures = need(pipe, "done", args.timeout)[0]
            phases.append({**figures, "cpu": 1000 * (cpu_seconds(server.pid) - cpu) / max(figures["ok"], 1)})
    finally:
        if client is not None:
            end(client)
        end_server(server)
    saturated, paced_run = phases
    return {"rps": saturated["ok"] / saturated["seconds"], "p50_ms": saturated["p50_ms"], "p99_ms": saturated["p99_ms"],
            "cpu": saturated["cpu"], "busy": saturated["busy"], "paced_p50_ms": paced_run["p50_ms"],
            "paced_p99_ms": paced_run["p99_ms"], "paced_cpu": paced_run["cpu"], "errors": saturated["errors"] + paced_run["errors"]}


# ---------------------------------------------------------------- json


@dataclass(frozen=True, slots=True)
class Item:
    """A post's message as collect validates it (``intake._message``, the fields a message to one user has)."""

    user_id: str
    payload: Any
    ttl_seconds: int
    priority: Priority


LIMITS = Limits(max_payload_bytes=64 * 1024, max_batch=1000, max_recipients=1000, default_ttl_seconds=86_400)


def item_of(item: Any) -> Item:
    if not isinstance(item, dict) or "payload" not in item:
        raise ValueError("a message must be an object with a payload")
    if not valid_user_id(user := item.get("user_id")):
        raise ValueError("bad user_id")
    ttl = item.get("ttl_seconds", LIMITS.default_ttl_seconds)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECONDS:
        raise ValueError("bad ttl_seconds")
    priority = item.get("priority", Priority.NORMAL.value)
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise ValueError("bad priority")
    return Item(user, item["payload"], ttl, Priority(priority))


def orjson_post(body: bytes) -> list[Item]:
    obj = orjson.loads(body)
    items = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= LIMITS.max_batch:
        raise ValueError("'messages' must be a list of 1 to 1,000")
    return [item_of(item) for item in items]


class MsgItem(msgspec.Struct, frozen=True):
    user_id: Annotated[str, msgspec.Meta(pattern=f"^{USER_ID_PATTERN}$")]
    payload: Any
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_SECONDS)] = LIMITS.default_ttl_seconds
    priority: Priority = Priority.NORMAL


class MsgPost(msgspec.Struct, frozen=True):
    messages: Annotated[list[MsgItem], msgspec.Meta(min_length=1, max_length=LIMITS.max_batch)]


class MsgFrame(msgspec.Struct, tag="message", tag_field="type"):
    id: str
    user_id: str
    payload: Any
    ts: int


class MsgAck(msgspec.Struct, tag="ack", tag_field="type"):
    ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_ACK_IDS)]


class MsgPing(msgspec.Struct, tag="ping", tag_field="type"):
    pass


POST_DECODER = msgspec.json.Decoder(MsgPost)
CLIENT_DECODER = msgspec.json.Decoder(MsgAck | MsgPing)
ENCODER = msgspec.json.Encoder()
PAYLOAD = {"title": "Your order has shipped", "order": "A-1029384756", "carrier": {"name": "DHL", "eta_days": 2}}


def post_body(messages: int) -> bytes:
    return orjson.dumps({"messages": [{"user_id": f"user-{i:06d}", "payload": PAYLOAD, "ttl_seconds": 3600, "priority": "normal"}
                                      for i in range(messages)]})


def collect_parse(body: bytes) -> object:
    """Collect's whole parse of a post (``read_json``'s orjson, then ``parse_body``: ids, frames, limits)."""
    return parse_body(orjson.loads(body), LIMITS, 1767225600000)


def frame_by_dict(mid: str, user: str, payload: Any, ts: int) -> bytes:
    return orjson.dumps({"type": "message", "id": mid, "user_id": user, "payload": payload, "ts": ts})


def frame_by_struct(mid: str, user: str, payload: Any, ts: int) -> bytes:
    return ENCODER.encode(MsgFrame(mid, user, payload, ts))


def json_ops() -> Iterator[tuple[str, Callable[[], Any], Callable[[], Any] | None]]:
    """Each op: its figure key, the current way, the candidate way (None: the current's cost alone, for scale); the two
    ways checked to give the same answer before they are timed."""
    for n in (1, 200):
        body = post_body(n)
        current, candidate = partial(orjson_post, body), partial(POST_DECODER.decode, body)
        assert [(i.user_id, i.payload, i.ttl_seconds, i.priority) for i in current()] == \
               [(i.user_id, i.payload, i.ttl_seconds, i.priority) for i in candidate().messages]
        yield f"post_{n}", current, candidate
        yield f"parse_body_{n}", partial(collect_parse, body), None
    frame = ("0196f2a4c1d0e3b70000", "user-000123", PAYLOAD, 1767225600000)
    by_dict, by_struct = partial(frame_by_dict, *frame), partial(frame_by_struct, *frame)
    assert by_dict() == by_struct()
    yield "frame", by_dict, by_struct
    ack = orjson.dumps({"type": "ack", "ids": [f"0196f2a4c1d0e3b7{i:04x}" for i in range(20)]}).decode()
    parse_ack, decode_ack = partial(parse_client_frame, ack), partial(CLIENT_DECODER.decode, ack)
    assert list(parse_ack().ids) == decode_ack().ids
    yield "ack", parse_ack, decode_ack


JSON_FIGURES = {
    "post_1": Figure("post of 1: decode + validate (µs/op)", 2, "lower"),
    "parse_body_1": Figure("  for scale: collect's parse_body, 1 (µs/op)", 2, ""),
    "post_200": Figure("post of 200: decode + validate (µs/op)", 1, "lower"),
    "parse_body_200": Figure("  for scale: collect's parse_body, 200 (µs/op)", 1, ""),
    "frame": Figure("message frame: encode (µs/op)", 3, "lower"),
    "ack": Figure("ack of 20 ids: parse (µs/op)", 3, "lower"),
}


def per_op_us(fn: Callable[[], object], repeats: int) -> float:
    """The best of ``repeats`` timings of ``fn`` (each of ~50 ms of calls), in µs per call."""
    timer, number = timeit.Timer(fn), 1
    while (took := timer.timeit(number)) < 0.01:
        number *= 10
    number = max(1, int(number * 0.05 / took))
    return 1e6 * min(timer.repeat(repeats, number)) / number


def json_rounds(args: argparse.Namespace) -> list[tuple[Figures, Figures]]:
    """Per round, (orjson figures, msgspec figures), each op timed current then candidate."""
    ops = list(json_ops())
    rounds = []
    for _ in range(args.rounds):
        current, candidate = {}, {}
        for key, now, then in ops:
            current[key] = per_op_us(now, args.json_repeats)
            if then is not None:
                candidate[key] = per_op_us(then, args.json_repeats)
        rounds.append((current, candidate))
    return rounds


# ---------------------------------------------------------------- the table


def ratio(current: float | None, candidate: float | None) -> str:
    return f"{candidate / current:.2f}x" if current and candidate is not None else ""


def shown(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def part_table(part: str, figures: dict[str, Figure], rounds: list[tuple[Figures, Figures]]) -> str:
    current, candidate = SIDES[part]
    rows = []
    for key, figure in figures.items():
        for i, (a, b) in enumerate(rounds, 1):
            rows.append((figure.label if i == 1 else "", str(i), shown(a.get(key), figure.digits), shown(b.get(key), figure.digits),
                         ratio(a.get(key), b.get(key)) if figure.better else "", figure.better if i == 1 else ""))
    return f"{part}: {current} (current) against {candidate} (candidate)\n" + \
        grid(("figure", "round", current, candidate, f"{candidate} / {current}", "better"), rows)


def one_line(figures: dict[str, Figure], values: Figures) -> str:
    return ", ".join(f"{figures[k].label} {shown(v, figures[k].digits)}" for k, v in values.items())


def ab_rounds(part: str, run: Callable[[str, argparse.Namespace], Figures], figures: dict[str, Figure],
              args: argparse.Namespace) -> list[tuple[Figures, Figures]]:
    """``--rounds`` pairs of runs, current then candidate, each printed as it ends."""
    rounds = []
    for i in range(1, args.rounds + 1):
        pair = []
        for side in SIDES[part]:
            values = run(side, args)
            print(f"  [{part} {i}] {side}: {one_line(figures, values)}", flush=True)
            pair.append(values)
        rounds.append((pair[0], pair[1]))
    return rounds


def versions() -> str:
    """The packages measured, with their versions: what a table's figures are of."""
    sides = " / ".join(f"{a} {metadata.version(a)} vs {b} {metadata.version(b)}" for a, b in SIDES.values())
    return f"current vs candidate: {sides}; {os.cpu_count()} cores"


def load() -> str:
    """The machine's 1-minute load average: others' work on it drifts the figures."""
    return f"load average {os.getloadavg()[0]:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="sockets,http,json", help="which parts, comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs, current then candidate (default: %(default)s)")
    p.add_argument("--sockets", type=int, default=5000, help="sockets opened to each socket server (default: %(default)s)")
    p.add_argument("--per-process", type=int, default=2500,
                   help=f"sockets per client process, at most {MAX_PER_PROCESS:,} (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per client process (default: %(default)s)")
    p.add_argument("--picows-read-buffer", type=int, default=1024,
                   help="picows's initial read buffer per socket, bytes (its own default 16384; the node's client frames "
                        "are small, and it grows for a larger one) (default: %(default)s)")
    p.add_argument("--picows-aiofastnet", action="store_true",
                   help="picows on aiofastnet's transports, as it picks when installed (default: uvloop's, the node's loop)")
    p.add_argument("--fanout-rounds", type=int, default=20, help="fan-out frames written to every socket (default: %(default)s)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between the last welcome and the idle RSS (default: %(default)s)")
    p.add_argument("--requests", type=int, default=10_000, help="requests of the saturated HTTP run (default: %(default)s)")
    p.add_argument("--in-flight", type=int, default=256, help="HTTP requests in flight, saturated run (default: %(default)s)")
    p.add_argument("--connections", type=int, default=64, help="HTTP connections of the load client (default: %(default)s)")
    p.add_argument("--paced-rate", type=int, default=1000, help="requests/s of the paced HTTP run (default: %(default)s)")
    p.add_argument("--paced-seconds", type=float, default=3.0, help="length of the paced HTTP run (default: %(default)s)")
    p.add_argument("--json-repeats", type=int, default=5, help="timings of each JSON op, the best kept (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for any one step (a server's start, the connects, a load run) (default: %(default)s)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as Ctrl-C: the finally blocks stop what was started
    parts = args.parts.split(",")
    if unknown := set(parts) - set(SIDES):
        p.error(f"unknown parts {', '.join(sorted(unknown))}: choose from {', '.join(SIDES)}")
    if not 0 < args.per_process <= MAX_PER_PROCESS:
        p.error(f"--per-process must be 1 to {MAX_PER_PROCESS:,}")
    print(f"{versions()}; {load()} at the start", flush=True)
    tables = []
    if "sockets" in parts:
        tables.append(part_table("sockets", SOCKET_FIGURES, ab_rounds("sockets", socket_run, SOCKET_FIGURES, args)))
    if "http" in parts:
        tables.append(part_table("http", HTTP_FIGURES, ab_rounds("http", http_run, HTTP_FIGURES, args)))
    if "json" in parts:
        tables.append(part_table("json", JSON_FIGURES, json_rounds(args)))
    print("\n\n".join(tables))
    print(f"{load()} at the end")


if __name__ == "__main__":
    main()
