"""One Redis client per process, from the settings: a single server or a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from ..settings import Settings

__all__ = ["AnyRedis", "close", "connect"]

AnyRedis = Redis | RedisCluster


def connect(settings: Settings) -> AnyRedis:
    """A client for ``settings.redis_url``: a bounded pool that makes callers wait for a
    connection (not fail) under bursts; with ``redis_cluster``, a cluster client that routes
    each command by its key's slot (a model's keys share one slot, a partition's too)."""
    if not settings.redis_url:
        raise RuntimeError("STREAMNORM_REDIS_URL is not set (`streamnorm serve` starts an "
                           "embedded Redis when it is not)")
    timeout = settings.redis_timeout_s
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, max_connections=settings.redis_connections,
                                     socket_timeout=timeout, socket_connect_timeout=timeout)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_connections, timeout=timeout,
        socket_timeout=timeout, socket_connect_timeout=timeout)
    return Redis(connection_pool=pool)


async def close(redis: AnyRedis) -> None:
    """Close the client and its connections (a pool handed to ``Redis`` is not closed by it)."""
    await redis.aclose()
    if isinstance(redis, Redis):
        await redis.connection_pool.disconnect()
