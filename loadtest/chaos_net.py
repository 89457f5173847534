"""Network faults for the chaos run, through toxiproxy (``bin/toxiproxy-server``, github.com/Shopify/toxiproxy/v2).

The checker starts the server itself (a process of its ``Cluster``, stopped by pid) and up to two proxies: ``link``
in front of the first push node's port, which that node's card gives dispatch and collect (``PUSH_LINK_ADDRESS``), so
its dispatch links and signed requests pass through it while its browsers connect directly; and, on one Redis only
(a Redis Cluster hands its clients the masters' own addresses), ``redis`` in front of Redis, which the last push node
reaches only through it (``ChaosStack.start``'s ``node_redis_url``). A ``net`` fault adds one toxic to one proxy for a
few seconds, then removes it: ``blackhole`` (data dropped, connections kept open: timeout 0), ``latency`` (1-2 s
each way), ``reset`` (every connection reset as it sends) or ``down`` (the proxy disabled: connections closed, new
ones refused).

Built by ``make bin/toxiproxy-server`` (``make chaos`` depends on it): ``go install`` of
``github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0``, renamed to ``bin/toxiproxy-server``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tools.cluster import ROOT, Cluster, Proc, free_port

SERVER = ROOT / "bin" / "toxiproxy-server"
TOXICS = ("blackhole", "latency", "reset", "down")


class Toxiproxy:
    def __init__(self, cluster: Cluster) -> None:
        if not SERVER.exists():
            raise SystemExit(f"{SERVER} is missing: see loadtest/chaos_net.py for how to build it")
        self.port = free_port()
        self.proc: Proc = cluster.spawn("toxiproxy", [str(SERVER), "-host", "127.0.0.1", "-port", str(self.port)])
        cluster.wait_tcp(self.proc, self.port)
        self.proxies: list[str] = []  # their names, in the order made

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def proxy(self, name: str, upstream_port: int) -> int:
        """A proxy called ``name`` in front of ``upstream_port`` on loopback; the port it listens on."""
        port = free_port()
        self.call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{upstream_port}",
                                       "enabled": True})
        self.proxies.append(name)
        return port

    def faults(self) -> list[str]:
        """Every fault a ``net`` plan can pick: ``<proxy>-<toxic>``."""
        return [f"{proxy}-{toxic}" for proxy in self.proxies for toxic in TOXICS]

    def harm(self, proxy: str, toxic: str, latency_ms: int) -> None:
        """Start ``toxic`` on ``proxy``, both ways."""
        if toxic == "down":
            self.call("POST", f"/proxies/{proxy}", {"enabled": False})
            return
        kind, attributes = {"blackhole": ("timeout", {"timeout": 0}), "reset": ("reset_peer", {"timeout": 0}),
                            "latency": ("latency", {"latency": latency_ms, "jitter": 100})}[toxic]
        for stream in ("upstream", "downstream"):
            self.call("POST", f"/proxies/{proxy}/toxics", {"name": f"{toxic}-{stream}", "type": kind, "stream": stream,
                                                           "attributes": attributes})

    def heal(self, proxy: str) -> None:
        """Remove every toxic of ``proxy`` and enable it again."""
        for toxic in self.call("GET", f"/proxies/{proxy}/toxics"):
            self.call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")
        self.call("POST", f"/proxies/{proxy}", {"enabled": True})
