"""A push node's own metrics, beside the shared ones."""

from prometheus_client import Counter, Gauge, Histogram

from shared.infra.metrics import LATENCY_BUCKETS

CONNECTIONS = Gauge("push_connections", "Open browser websocket connections")
USERS = Gauge("push_users", "Distinct users connected to this node")
CONNECTS = Counter("push_connects_total", "Browser connections accepted")
REFUSED = Counter("push_refused_total", "Browser connections closed before use, by close code", ["code"])
DELIVERED = Counter("push_delivered_total", "Messages written to at least one socket of their user")
PUBLISHED = Counter("push_published_total", "Sockets written a topic or broadcast message")
ABSENT = Counter("push_absent_total", "Messages for users not connected here")
DELIVERY_LATENCY = Histogram(
    "push_delivery_latency_seconds", "From acceptance by collect to the write on a socket", buckets=LATENCY_BUCKETS
)
REPLAYED = Counter("push_replayed_total", "Stored messages sent to a user on connect (offline inbox and unacked)")
SLOW_CLOSED = Counter("push_slow_closed_total", "Connections closed because their client did not read (1013)")
QUEUED = Gauge("push_frames_queued", "Live frames queued in the node for sockets whose buffer is backed up")
ACKS_DROPPED = Counter("push_acks_dropped_total", "Client acks dropped past the node's backlog cap while Redis was down "
                       "(their messages stay open and are sent again: at least once)")
ACKS_PENDING = Gauge("push_acks_pending", "Client acks the node holds for its next flush to Redis (many: Redis is unreachable)")
SENT_FORGOTTEN = Counter("push_sent_forgotten_total", "Sent, unacked message ids a socket forgot past its cap (a replay "
                         "may then write one again; the client drops it by id)")
SIGNED = Counter("push_signed_requests_total", "Signed internal requests admitted (each nonce kept 60 s, at most 10,000 per "
                 "purpose), by purpose: link, drain, topic_users", ["purpose"])
HISTORY_READS = Counter("push_history_reads_total", "Reads of topic positions and histories from Redis (one per batch of "
                        "subscribes waiting at once, whatever their number)")
RECOVERIES = Counter("push_recoveries_total", "Topic recoveries asked by subscribers, by outcome: recovered (every missed "
                     "message sent) or gap (the client must reload)", ["outcome"])
TOPIC_GAPS = Counter("push_topic_gaps_total", "Holes in a topic's offsets on this node (a stall, a retry overtaken, two dispatch "
                     "instances), by outcome: filled from the history before the next message was written, or not (gone)",
                     ["outcome"])
UNANSWERED = Counter("push_keepalive_closed_total", "Sockets closed (1011) because a ping was still unanswered at the next, "
                     "PING_INTERVAL_SECONDS later")
BUNDLES = Counter("push_bundles_total", "Bundles written: one websocket frame of the topic frames that waited for a socket "
                  "that asked for bundles (it is written at most once per BUNDLE_MS)")
BUNDLED = Counter("push_bundled_frames_total", "Topic frames written inside bundles (over push_bundles_total: frames a bundle)")
