"""The webhooks service's own metrics, beside the shared ones: per endpoint, attempts by outcome, queue depth, drops and
the last error."""

from prometheus_client import Counter, Gauge

EVENTS = Counter("webhook_events_total", "Events fanned out to at least one endpoint, by type", ["type"])
ATTEMPTS = Counter("webhook_attempts_total", "Attempts by endpoint and outcome (ok, failed)", ["endpoint", "outcome"])
SUCCESS_RATE = Gauge("webhook_success_ratio", "Share of an endpoint's attempts answered 2xx since this process started",
                     ["endpoint"])
QUEUE_DEPTH = Gauge("webhook_queue_depth", "Events queued for an endpoint (due now or waiting for a retry)", ["endpoint"])
FAILURES = Gauge("webhook_failures", "Events in an endpoint's failure list", ["endpoint"])
DROPPED = Counter("webhook_dropped_total", "Events pushed out of an endpoint's full queue into its failure list",
                  ["endpoint"])
LAST_ERROR = Gauge("webhook_last_error_timestamp_seconds", "When an endpoint's last failed attempt was, labelled with "
                   "its error", ["endpoint", "error"])
