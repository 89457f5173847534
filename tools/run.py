"""``make run``: Redis, PostgreSQL + FerretDB, auth, collect, dispatch, webhooks and two push nodes on this machine.

Set ``REDIS_URL`` or ``MONGO_URL`` to use servers you already run instead of starting them, and
``RUN_DIR`` to keep logs and data elsewhere than ``.run``. With ``REDIS_CLUSTER=1`` (``make run
REDIS_CLUSTER=1``) it starts a Redis Cluster of three masters (ports 7000-7002, from the same
redis-server binary) instead of one Redis, and the services on it with ``STREAM_SHARDS=3``
(``shared/infra/slots.py``). The Redis it starts requires a password
(AUTH): ``REDIS_PASSWORD``, or a random one written to ``{RUN_DIR}/redis-password``. A process that
crashes is restarted with backoff (``tools/supervisor.py``). Ctrl-C stops every process this
started, push nodes first (they withdraw their routes), servers last.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

from shared.infra.config import DEV_ADMIN_KEY, DEV_API_KEYS
from tools.cluster import ROOT, Cluster, Stack, free_cluster_port, free_port, port_is_free
from tools.supervisor import Supervisor

CLUSTER_PORTS = (7000, 7001, 7002)  # REDIS_CLUSTER=1: three masters sharing the 16384 slots, no replicas

BANNER = """
The push cluster is up.

  auth      {auth}/v1/tokens            collect   {collect}/v1/messages
  dispatch  {dispatch}/healthz         push      {pushes}
  webhooks  {webhooks}/metrics
  redis     {redis}
  mongodb   {mongo} {store}
  logs      {logs}/
  browser   {collect}/demo (development only) and {collect}/dashboard

Try it (in a second terminal, from {root}):

  TOKEN=$(curl -s -X POST {auth}/v1/tokens -H 'Authorization: Bearer {admin}' \\
      -d '{{"user_id": "alice", "ttl_seconds": 3600}}' | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  .venv/bin/python -m websockets "{ws}?token=$TOKEN"

and in a third:

  curl -s -X POST {collect}/v1/messages -H 'Authorization: Bearer {api_key}' \\
      -d '{{"user_id": "alice", "payload": {{"text": "hello"}}}}'

A process that crashes is restarted (with backoff if it keeps crashing). Press Ctrl-C to stop everything.
"""


def pick(port: int) -> int:
    return port if port_is_free(port) else free_port()


def pick_cluster(port: int) -> int:
    """``port`` for a Redis Cluster node if it and its bus port (10,000 above) are free, else another such pair."""
    return port if port_is_free(port) and port_is_free(port + 10_000) else free_cluster_port()


def masked(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def redis_password(workdir: Path) -> tuple[str, str]:
    """The password for the Redis this starts, and where to find it: ``REDIS_PASSWORD``, else a new random one in a file."""
    password = os.environ.get("REDIS_PASSWORD")
    if password:
        return password, "$REDIS_PASSWORD"
    password, path = secrets.token_urlsafe(24), workdir / "redis-password"
    path.touch(mode=0o600)
    path.write_text(password + "\n")
    return password, str(path)


def main() -> None:
    workdir = Path(os.environ.get("RUN_DIR", ROOT / ".run"))
    cluster = Cluster(workdir)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        redis_url = os.environ.get("REDIS_URL")
        redis_shown = masked(redis_url or "")
        env = {}
        if not redis_url:
            cluster.redis_password, password_at = redis_password(workdir)
            if os.environ.get("REDIS_CLUSTER") == "1":
                ports = [pick_cluster(port) for port in CLUSTER_PORTS]
                cluster.start_redis_cluster(ports)
                redis_url = cluster.redis_cluster_url(ports)
                env["STREAM_SHARDS"] = os.environ.get("STREAM_SHARDS", str(len(ports)))
            else:
                port = pick(6379)
                cluster.start_redis(port)
                redis_url = cluster.redis_url(port)
            redis_shown = f"{masked(redis_url)}  (password: {password_at})"
        mongo_url = os.environ.get("MONGO_URL")
        if not mongo_url:
            port = pick(27017)
            cluster.start_ferretdb(port)
            mongo_url = f"mongodb://127.0.0.1:{port}/"
        stack = Stack(redis_url, mongo_url, os.environ.get("MONGO_DB", "push"),
                      pick(8001), pick(8002), pick(8003), [pick(8101), pick(8102)], env, webhooks_port=pick(8004))
        cluster.start_stack(stack)
        print(BANNER.format(
            auth=stack.auth_url, collect=stack.collect_url, dispatch=stack.dispatch_url,
            webhooks=f"http://127.0.0.1:{stack.webhooks_port}",
            pushes=", ".join(f"ws://127.0.0.1:{p}/ws" for p in stack.push_ports), ws=f"ws://127.0.0.1:{stack.push_ports[0]}/ws",
            redis=redis_shown, mongo=mongo_url, logs=Path(workdir, "logs"), root=ROOT,
            store=f"(FerretDB on {cluster.postgresql_url})" if cluster.postgresql_url else "",
            admin=os.environ.get("AUTH_ADMIN_KEY", DEV_ADMIN_KEY),
            api_key=os.environ.get("COLLECT_API_KEYS", DEV_API_KEYS).split(",")[0].partition(":")[2],
        ), flush=True)
        supervisor = Supervisor(cluster)
        while not stopping:
            supervisor.tick(time.monotonic())
            time.sleep(0.2)
    finally:
        print("stopping...", flush=True)
        cluster.stop_all()
        print("stopped.")


if __name__ == "__main__":
    main()
