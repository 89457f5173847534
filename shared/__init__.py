"""The project's library, grouped by concern, in the order a message meets them.

* ``model`` -- what a message is (fields, priority, topics), its states and the rules its delivery state keeps;
* ``wire`` -- what crosses a socket or an HTTP boundary: frames, link items, signed proofs, the error map, OpenAPI;
* ``delivery`` -- where a message's state lives: the MongoDB store, the handover to Redis, inboxes, the stream,
  the schedule and the lifecycle record;
* ``cluster`` -- who holds whom: push nodes' cards, user routes and topic holders in Redis;
* ``infra`` -- what every service runs on: config, logs, metrics, Redis clients and scripts, retries, breakers,
  the HTTP server and its pieces.
"""
