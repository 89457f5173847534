"""dispatch's own metrics, beside the shared ones."""

from prometheus_client import Counter, Gauge, Histogram

from shared.infra.metrics import LATENCY_BUCKETS

FORWARDED = Counter("dispatch_forwarded_total", "Deliveries accepted by a push node")
UNROUTED = Counter("dispatch_unrouted_total", "Deliveries for users with no live route (left stored)")
RETRIED = Counter("dispatch_retried_total", "Entries left pending for a retry because a node failed or was stalled")
GIVEN_UP = Counter("dispatch_given_up_total", "Entries tried MAX_ATTEMPTS times, then acknowledged and left to the inboxes")
LIVE_NODES = Gauge("dispatch_live_nodes", "Push nodes with a live card")
BATCH_SECONDS = Histogram("dispatch_batch_seconds", "Time to route and forward one stream batch", buckets=LATENCY_BUCKETS)
