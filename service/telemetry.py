"""The Prometheus counters every layer of the service bumps (served by ``GET /metrics``).

With several uvicorn workers, ``streamnorm serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and the
endpoint aggregates every worker's values (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "render"]

REQUESTS = Counter("streamnorm_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram("streamnorm_request_seconds", "HTTP request latency", ["route"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5))
UPDATES = Counter("streamnorm_updates_applied_total", "updates committed by this process",
                  ["model"])
REJECTED = Counter("streamnorm_updates_rejected_total",
                   "updates the learner rolled back (a non-finite loss, gradient, moment or "
                   "statistic): a model that rejects every update has diverged", ["model"])
LOCK_WAIT = Histogram("streamnorm_lock_wait_seconds", "time to obtain a model's write lease",
                      buckets=(0.0002, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
STATE_BYTES = Gauge("streamnorm_state_bytes", "size of the last snapshot written", ["model"],
                    multiprocess_mode="max")
STATE_LOADS = Counter("streamnorm_state_loads_total",
                      "model states deserialized from Redis (a hot model loads once)", ["model"])
REPLAYED = Counter("streamnorm_replayed_updates_total",
                   "logged updates replayed to catch a cached learner up", ["model"])
LABELS = Counter("streamnorm_labels_total", "delayed labels by outcome: applied, expired (the "
                 "kept prediction waited longer than STREAMNORM_LABEL_WAIT_S), unknown",
                 ["model", "outcome"])
ROLLBACKS = Counter("streamnorm_rollbacks_total", "rollbacks to a retained version, by why: "
                    "request (POST rollback) or the spec's divergence guard", ["model", "why"])
SNAPSHOTS = Counter("streamnorm_snapshots_total", "snapshots written", ["model"])

# the event streams: the worker's own counters, and what any process reads from Redis on scrape
EVENTS = Counter("streamnorm_events_applied_total", "stream events applied by this worker")
DEAD_LETTERED = Counter("streamnorm_events_dead_lettered_total",
                        "stream events moved to a dead-letter stream by this worker")
EVENT_RATE = Gauge("streamnorm_events_per_second",
                   "stream events applied per second by this worker (last 10 s)",
                   multiprocess_mode="livesum")
BACKLOG = Gauge("streamnorm_stream_backlog", "entries not yet acknowledged (the lag)",
                ["partition"], multiprocess_mode="mostrecent")
PENDING = Gauge("streamnorm_stream_pending", "entries read by a worker, not yet acknowledged",
                ["partition"], multiprocess_mode="mostrecent")
DEAD = Gauge("streamnorm_stream_dead_letters", "entries in the dead-letter stream",
             ["partition"], multiprocess_mode="mostrecent")
APPLIED = Gauge("streamnorm_stream_applied_events",
                "events applied and acknowledged by all workers, ever (rate() gives events/s)",
                ["partition"], multiprocess_mode="mostrecent")


def render() -> bytes:
    """The exposition text (every worker's, in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
