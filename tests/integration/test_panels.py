"""tools/panels.py against a running stack: its scrapes and the dashboard's queries show the stack's traffic and sockets."""

from __future__ import annotations

import asyncio
import json

from tests.client import receive_ids
from tests.conftest import RunningStack
from tools.panels import DASHBOARD, load_panels, scrape, series, text

OPS_KEY = "ops-secret-for-panels"


async def test_the_panels_show_the_posts_accepted_and_delivered_and_the_connected_socket(start_stack) -> None:
    """While a connected user receives one post after another, three seconds of scrapes with the operators' key render
    "Messages in / out / delivered" with nonzero accepted and delivered rates, "Connections per node" with the socket on
    its node, and one live node."""
    running: RunningStack = start_stack(nodes=1, OPS_KEY=OPS_KEY)
    s, c = running.stack, running.client
    ws = await c.connect("watched")
    targets = [("auth", s.auth_url), ("collect", s.collect_url), ("dispatch", s.dispatch_url),
               *(("push", s.push_url(port)) for port in s.push_ports)]
    sampling = asyncio.ensure_future(asyncio.to_thread(scrape, targets, 3, 0.5, OPS_KEY))
    posted = 0
    while not sampling.done():
        code, body = await c.post({"user_id": "watched", "payload": "count me"})
        assert code == 202 and await receive_ids(ws, 1) == [body["id"]]
        posted += 1
    store, times = await sampling
    await ws.close()

    panels = {panel.title: panel for panel in load_panels(json.loads(DASHBOARD.read_text()))}
    drawn = {title: series(panel, store, times) for title, panel in panels.items()}
    traffic = drawn["Messages in / out / delivered (per second)"]
    assert posted and traffic["accepted (collect)"][-1][1] > 0, (posted, traffic)
    assert traffic["written to a socket"][-1][1] > 0, traffic
    assert {name: points[-1][1] for name, points in drawn["Connections per node"].items()} == {f"127.0.0.1:{s.push_ports[0]}": 1}
    assert drawn["Live push nodes (dispatch's view)"]["nodes"][-1][1] == 1
    assert "accepted (collect)" in text(list(panels.values()), list(drawn.values()))
