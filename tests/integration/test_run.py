"""``make run`` keeps the cluster up: a crashed service is restarted and the others keep running."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import psutil

from loadtest.target import listening_pid
from tests.client import ClusterClient, receive_ids
from tests.conftest import ROOT, Servers
from tests.waits import scaled
from tools.cluster import Stack


async def read_until(stdout: asyncio.StreamReader, pattern: str, seen: list[str], timeout: float = 60) -> re.Match[str]:
    """Read lines until one matches ``pattern`` (every line read is kept in ``seen``)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            line = (await stdout.readline()).decode()
            assert line, "make run ended:\n" + "".join(seen)
            seen.append(line)
            if found := re.search(pattern, line):
                return found


async def test_make_run_restarts_a_killed_service_and_the_cluster_still_delivers(servers: Servers, tmp_path: Path) -> None:
    """SIGKILL dispatch under `python -m tools.run`: it is restarted with a new pid, other pids stay, a post is delivered;
    SIGINT stops all."""
    redis_url, mongo_db = servers.fresh_database()
    env = {**os.environ, "REDIS_URL": redis_url, "MONGO_URL": servers.mongo_url, "MONGO_DB": mongo_db,
           "RUN_DIR": str(tmp_path), "APP_ENV": "development"}
    run = await asyncio.create_subprocess_exec(sys.executable, "-u", "-m", "tools.run", cwd=ROOT, env=env,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    try:
        assert run.stdout is not None
        await read_until(run.stdout, "Press Ctrl-C", seen, timeout=120)
        banner = "".join(seen)
        ports = {name: int(re.findall(rf"\b{name}\s+http://127\.0\.0\.1:(\d+)", banner)[0]) for name in ("auth", "collect", "dispatch")}
        push_ports = [int(p) for p in re.findall(r"ws://127\.0\.0\.1:(\d+)/ws\b", banner.partition("redis")[0])]
        stack = Stack(redis_url, servers.mongo_url, mongo_db, ports["auth"], ports["collect"], ports["dispatch"], push_ports)
        before = {port: listening_pid(port) for port in [*ports.values(), *push_ports]}

        os.kill(before[ports["dispatch"]], signal.SIGKILL)
        await read_until(run.stdout, rf"dispatch-{ports['dispatch']} exited with code -9 .* restarting in", seen)
        restarted = int((await read_until(run.stdout, rf"dispatch-{ports['dispatch']} restarted \(pid (\d+)\)", seen))[1])
        assert restarted != before[ports["dispatch"]]
        assert {p: pid for p, pid in before.items() if p != ports["dispatch"]} == \
               {p: listening_pid(p) for p in before if p != ports["dispatch"]}

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:
            client = ClusterClient(stack, session)
            ws = await client.connect("after-restart")
            accepted = await client.post_until_accepted({"user_id": "after-restart", "payload": "still here"})
            assert await receive_ids(ws, 1) == [accepted["ids"][0]]
            await ws.close()
    finally:
        if run.returncode is None:
            run.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(run.wait(), scaled(60))
    assert code == 0
    assert not any(psutil.pid_exists(pid) for pid in before.values() if pid)


async def test_make_run_with_redis_cluster_runs_the_stack_on_three_masters(servers: Servers, tmp_path: Path) -> None:
    """`REDIS_CLUSTER=1 python -m tools.run` starts a 3-master Redis Cluster, names it in the banner, delivers a post
    over it, and stops its Redis processes on SIGINT."""
    mongo_db = servers.fresh_database()[1]
    env = {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, "REDIS_CLUSTER": "1", "MONGO_URL": servers.mongo_url,
           "MONGO_DB": mongo_db, "RUN_DIR": str(tmp_path), "APP_ENV": "development"}
    run = await asyncio.create_subprocess_exec(sys.executable, "-u", "-m", "tools.run", cwd=ROOT, env=env,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    redis_pids: list[int] = []
    try:
        assert run.stdout is not None
        await read_until(run.stdout, "Press Ctrl-C", seen, timeout=120)
        banner = "".join(seen)
        redis_ports = [int(p) for p in re.findall(r"redis\+cluster://:\*\*\*@([\d.:,]+)/", banner)[0].replace("127.0.0.1:", "").split(",")]
        assert len(redis_ports) == 3
        redis_pids = [listening_pid(p) for p in redis_ports]
        ports = {name: int(re.findall(rf"\b{name}\s+http://127\.0\.0\.1:(\d+)", banner)[0]) for name in ("auth", "collect", "dispatch")}
        push_ports = [int(p) for p in re.findall(r"ws://127\.0\.0\.1:(\d+)/ws\b", banner.partition("redis")[0])]
        stack = Stack("", servers.mongo_url, mongo_db, ports["auth"], ports["collect"], ports["dispatch"], push_ports)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(15))) as session:
            client = ClusterClient(stack, session)
            ws = await client.connect("on-the-cluster")
            accepted = await client.post_until_accepted({"user_id": "on-the-cluster", "payload": "sharded"})
            assert await receive_ids(ws, 1) == [accepted["ids"][0]]
            await ws.close()
    finally:
        if run.returncode is None:
            run.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(run.wait(), scaled(60))
    assert code == 0
    assert redis_pids and not any(psutil.pid_exists(pid) for pid in redis_pids if pid)
