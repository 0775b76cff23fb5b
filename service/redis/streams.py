"""The event streams in Redis: partitions, their consumer group, leases and dead letters.

Events are partitioned by a stable hash of the model name (CRC-32 modulo
``STREAMNORM_PARTITIONS``), so one model's events stay in one partition, in the order they were
appended (keys: ``service.redis.keys``). An entry's fields are ``model`` (or ``race``: then it is
for each member, the race's events in the race's partition) and ``event`` (the learn body as
JSON), and ``valid_for`` (a model uid) when the API appended it already validated; a dead
letter adds ``error``, ``source_id`` and ``failed_at``. The consumer group is ``streamnorm``.

A partition is consumed by the one worker that holds its lease, so a model's events are applied
in order (a consumer group alone hands one stream's entries to several consumers at once). An
entry is acknowledged *and deleted* once its update is committed (or it is dead-lettered), in
one MULTI, so a partition's length is its backlog: what ``POST /events`` bounds (429) and
``/metrics`` reports as lag.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .connect import AnyRedis
from .keys import WORKERS, partition_key, stream_event_id

__all__ = ["GROUP", "Entry", "PartitionStats", "Streams", "partition_of"]

GROUP = "streamnorm"


def partition_of(model: str, partitions: int) -> int:
    """The partition of a model's events: stable across processes, machines and restarts."""
    return zlib.crc32(model.encode()) % partitions


class Entry(NamedTuple):
    """One stream entry: its id and fields (``model``, ``event``), undecoded."""

    id: str
    fields: dict[str, str]


class PartitionStats(NamedTuple):
    backlog: int  # entries not yet acknowledged (read or not)
    pending: int  # read by a worker and not yet acknowledged
    dead: int  # entries in the dead-letter stream
    done: int  # entries applied (or found already applied) and acknowledged, ever


# KEYS: owner; ARGV: token ttl_ms. Take a free partition or renew our own: 1 when held.
_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: stream owner; ARGV: token group consumer count id lease_ms. XREADGROUP only while the
# caller holds the partition (renewing it): a worker whose lease lapsed can never take entries
# the new holder would then see out of order. (No BLOCK inside a script: callers poll.)
_READ = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
                  'STREAMS', KEYS[1], ARGV[5])
"""

_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Streams:
    """Async access to the event partitions (one client per process)."""

    def __init__(self, redis: AnyRedis, partitions: int) -> None:
        self.redis, self.partitions = redis, partitions
        self._hold = redis.register_script(_HOLD)
        self._let_go = redis.register_script(_LET_GO)
        self._read = redis.register_script(_READ)
        self._groups: set[int] = set()

    @staticmethod
    def event_id(p: int, entry: Entry) -> str:
        """The event id of an entry that names none (the same on every redelivery)."""
        return stream_event_id(p, entry.id)

    # -- producers -----------------------------------------------------------------------------
    async def backlog(self, parts: set[int]) -> dict[int, int]:
        """Each partition's backlog (its length: acknowledged entries are deleted)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in sorted(parts):
                pipe.xlen(partition_key(p))
            lengths = await pipe.execute()
        return dict(zip(sorted(parts), (int(n) for n in lengths), strict=True))

    async def append(self, events: list[tuple[str, str, str, str | None]]
                     ) -> list[tuple[int, str]]:
        """Append ``(kind, name, event JSON, valid_for)`` events — ``kind`` is ``model`` or
        ``race``, the field naming the target — each to its target's partition, in order:
        ``(partition, entry id)`` per event. ``valid_for``: the model incarnation the event was
        validated for, canonical (the field ``valid_for``; a worker then takes it as it is).
        On one server all of them or none (MULTI/EXEC); a cluster cannot run one transaction
        over several partitions' slots."""
        async with self.redis.pipeline(transaction=isinstance(self.redis, Redis)) as pipe:
            parts = []
            for kind, name, body, valid_for in events:
                p = partition_of(name, self.partitions)
                parts.append(p)
                fields = {kind: name, "event": body}
                if valid_for is not None:
                    fields["valid_for"] = valid_for
                pipe.xadd(partition_key(p), fields)
            ids = await pipe.execute()
        return [(p, _decode(i)) for p, i in zip(parts, ids, strict=True)]

    # -- consumers -----------------------------------------------------------------------------
    async def ensure_group(self, p: int) -> None:
        """Create the partition's consumer group (and stream) if missing."""
        if p in self._groups:
            return
        try:
            await self.redis.xgroup_create(partition_key(p), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(p)

    async def hold(self, p: int, token: str, ttl_ms: int) -> bool:
        """Take partition ``p``'s lease if free, or renew it if ``token`` holds it."""
        return bool(await self._hold(keys=[partition_key(p, "owner")], args=[token, ttl_ms]))

    async def let_go(self, p: int, token: str) -> None:
        await self._let_go(keys=[partition_key(p, "owner")], args=[token])

    async def claim_all(self, p: int, consumer: str) -> int:
        """Move every pending entry of the partition to ``consumer`` (the caller holds the
        lease, so their previous reader is gone or fenced): how many were claimed."""
        start, claimed = "0-0", 0
        while True:
            reply = await self.redis.xautoclaim(partition_key(p), GROUP, consumer, min_idle_time=0,
                                                start_id=start, count=1000)
            start = _decode(reply[0])  # (redis-py's justid=True drops this cursor)
            claimed += len(reply[1])
            if start == "0-0":
                return claimed

    async def read(self, p: int, consumer: str, token: str, after: str | None, count: int,
                   lease_ms: int) -> list[Entry] | None:
        """``after`` given: this consumer's pending entries after that id; ``None``: new
        ones. ``None`` back when ``token`` no longer holds the partition (nothing was read)."""
        try:
            reply = await self._read(keys=[partition_key(p), partition_key(p, "owner")], args=[
                token, GROUP, consumer, count, after if after is not None else ">", lease_ms])
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was lost and re-created: make it again
                self._groups.discard(p)
            raise
        if reply == -1:
            return None
        if not reply:
            return []
        out = []
        for eid, flat in reply[0][1]:
            if flat is None:  # deleted while pending
                continue
            pairs = [_decode(v) for v in flat]
            out.append(Entry(_decode(eid), dict(zip(pairs[::2], pairs[1::2], strict=True))))
        return out

    async def done(self, p: int, ids: list[str],
                   dead: list[tuple[Entry, str]] | None = None) -> None:
        """Acknowledge and delete entries; ``dead`` ones go to the dead-letter stream with
        their error, in the same MULTI."""
        dead = dead or []
        if not ids and not dead:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry, error in dead:
                pipe.xadd(partition_key(p, "dead"), {**entry.fields, "error": error[:2000],
                                            "source_id": entry.id, "failed_at": str(time.time())})
            every = ids + [entry.id for entry, _ in dead]
            pipe.xack(partition_key(p), GROUP, *every)
            pipe.xdel(partition_key(p), *every)
            if ids:
                pipe.incrby(partition_key(p, "done"), len(ids))
            await pipe.execute()

    # -- workers and stats ---------------------------------------------------------------------
    async def heartbeat(self, worker: str, ttl_ms: int) -> int:
        """Record ``worker`` as alive for ``ttl_ms``; how many workers are alive."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(WORKERS, 0, now)
            pipe.zadd(WORKERS, {worker: now + ttl_ms})
            pipe.zcard(WORKERS)
            *_, alive = await pipe.execute()
        return max(1, int(alive))

    async def leave(self, worker: str) -> None:
        await self.redis.zrem(WORKERS, worker)

    async def stats(self) -> list[PartitionStats]:
        """Backlog, pending and dead-letter counts of every partition."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.xlen(partition_key(p))
                pipe.xlen(partition_key(p, "dead"))
                pipe.get(partition_key(p, "done"))
            lengths = await pipe.execute()
        pending = []
        for p in range(self.partitions):
            if lengths[3 * p] == 0:
                pending.append(0)
                continue
            try:
                info = await self.redis.xpending(partition_key(p), GROUP)
                pending.append(int(info["pending"]))
            except ResponseError:  # no group yet: nothing read
                pending.append(0)
        return [PartitionStats(int(lengths[3 * p]), pending[p], int(lengths[3 * p + 1]),
                               int(lengths[3 * p + 2] or 0)) for p in range(self.partitions)]

