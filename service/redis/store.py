"""Models in Redis: create, read, the lease, the fenced commit of updates, snapshots.

The key layout is ``service.redis.keys``.

Concurrency: **a lease lock with a fencing check**. A writer takes ``lock`` with ``SET NX PX``
and a random token, applies events to its in-memory learner, and commits them (one or several,
in order: ``service.engine.replica`` groups the updates computed while the previous commit was
in flight) with one Lua script that first checks that the lock still holds its token and
that ``meta.version`` is the version the first of them extends, then appends the log entries,
bumps version/updates/metrics, records the event ids, and renews the lease — all or nothing.
Redis runs a script as one atomic unit, like MULTI/EXEC; a script is used instead of WATCH +
MULTI/EXEC because the fencing check must happen inside the transaction and WATCH would add two
round trips per update.
Why a lease and not a bare version CAS: computing an update costs ~1 ms of CPU, so under
contention a CAS loop would throw most of that work away; a lease makes writers wait (cheaply)
instead, and the fencing check still refuses a commit from a writer whose lease expired
(a paused or partitioned process), so an update is never applied twice or on a stale learner.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from redis.asyncio import Redis

from ..settings import Settings
from .keys import (
    MODEL_PARTS,
    SPEC_PATTERN,
    context_key,
    context_pattern,
    kept_key,
    kept_pattern,
    model_key,
    name_of_spec_key,
)

__all__ = ["Applied", "Committed", "ContextWrites", "LeaseLost", "ModelHead", "Retained", "Store",
           "Stored"]


class ContextWrites(NamedTuple):
    """What a snapshot writes besides the state: contexts (stream → bytes, and when each last
    moved) and the streams whose contexts were dropped."""

    put: dict[str, bytes]
    times: dict[str, float]
    drop: set[str]


class Retained(NamedTuple):
    """A version kept to roll back to: the learner with its contexts (``to_bytes()``) and its
    meta JSON (``version``, ``time``, ``metrics``, and ``times``: when each stream last moved)."""

    full: bytes
    meta: str


class Committed(NamedTuple):
    """One applied event as a commit stores it: the log entry, its id and digest, its loss
    (``None``: none, a mini-batch), the metrics JSON when its version closes a curve point
    (else ``""``), how many updates were rolled back since the previous one, and a kept
    prediction it stores (a keep: ``(id, record)``) or removes (a label: ``(id, None)``)."""

    event_json: str
    event_id: str | None
    digest: str
    loss: float | None
    point_metrics: str
    rejected: int
    kept: tuple[str, bytes | None] | None = None


class LeaseLost(RuntimeError):
    """The commit was refused: the lease expired or the model changed underneath."""


class ModelHead(NamedTuple):
    """The small part of a model's meta every request reads."""

    version: int
    uid: str
    snapshot_version: int


_HEAD = ("version", "uid", "snapshot_version")


class Stored(NamedTuple):
    """A model's latest snapshot: the state (without contexts, or with all of them if it was
    written before contexts had keys of their own), its head, and the contexts as of it:
    ``(stream, when it last moved, bytes)``, least recently moved first."""

    state: bytes
    head: ModelHead
    contexts: list[tuple[str, float, bytes]]


class Applied(NamedTuple):
    """An event id found applied: the version that applied it, its event's digest."""

    version: int
    digest: str | None  # the meta fields of a ModelHead, in order


# KEYS: meta lock wanted; ARGV: token lease_ms. ``wanted`` names the writer that queued first
# for a held lease: others let it go first, and the holder yields after its next commit.
_ACQUIRE = """
local w = redis.call('GET', KEYS[3])
if w and w ~= ARGV[1] and redis.call('EXISTS', KEYS[2]) == 0 then return {0, 1} end
local ok = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
if not ok then
  if not w then redis.call('SET', KEYS[3], ARGV[1], 'PX', 250)
  elseif w == ARGV[1] then redis.call('PEXPIRE', KEYS[3], 250) end
  return {0, redis.call('PTTL', KEYS[2])}
end
if w == ARGV[1] then redis.call('DEL', KEYS[3]) end
local m = redis.call('HMGET', KEYS[1], 'version', 'uid', 'snapshot_version')
if not m[1] then redis.call('DEL', KEYS[2]) return {-1} end
return {1, m[1], m[2], m[3]}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock; ARGV: token lease_ms. Extend a lease still held by ``token``: 1, else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: meta lock log seen wanted digest curve kept, then the key of each kept record an event
#       stores or removes, in event order;
# ARGV: token version n updates samples metrics seen_limit lease_ms uid curve_every
#       curve_points now label_wait_ms, then n nonuples (event, event_id, digest, loss, point
#       metrics, updates rolled back just before it, kept op ("", "put" or "del"), prediction
#       id, record).
#       Appends the n events as versions version+1 … version+n of the model incarnation
#       ``uid`` (a model deleted and re-created meanwhile has another), and the learning curve's
#       point of every version that is a multiple of curve_every (the loss mean over the
#       updates since the last point, kept in the meta); stores a keep's record (expiring after
#       the label wait, indexed by its expiry) and removes a labelled one.
#       Returns {last version, whether another writer waits}.
_COMMIT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local m = redis.call('HMGET', KEYS[1], 'version', 'uid', 'loss_sum', 'loss_n', 'rejected')
local rejected = tonumber(m[5]) or 0
local v = tonumber(m[1])
if v == nil or v ~= tonumber(ARGV[2]) or m[2] ~= ARGV[9] then return -2 end
local loss_sum, loss_n = tonumber(m[3]) or 0, tonumber(m[4]) or 0
local every = tonumber(ARGV[10])
local now_ms, wait_ms = math.floor(tonumber(ARGV[12]) * 1000), tonumber(ARGV[13])
local ids, kk = false, 8
for i = 1, tonumber(ARGV[3]) do
  v = v + 1
  local at = 5 + 9 * i
  redis.call('XADD', KEYS[3], v .. '-0', 'event', ARGV[at])
  if ARGV[at + 1] ~= '' then
    redis.call('ZADD', KEYS[4], v, ARGV[at + 1])
    redis.call('HSET', KEYS[6], ARGV[at + 1], ARGV[at + 2])
    ids = true
  end
  if ARGV[at + 3] ~= '' then
    loss_sum, loss_n = loss_sum + tonumber(ARGV[at + 3]), loss_n + 1
  end
  rejected = rejected + tonumber(ARGV[at + 5])
  if v % every == 0 then
    local mean = 'null'
    if loss_n > 0 then mean = string.format('%.17g', loss_sum / loss_n) end
    redis.call('XADD', KEYS[7], 'MAXLEN', ARGV[11], v .. '-0', 'point',
               '{"version":' .. v .. ',"time":' .. ARGV[12] .. ',"loss":' .. mean ..
               ',"rejected":' .. rejected .. ',"metrics":' .. ARGV[at + 4] .. '}')
    loss_sum, loss_n = 0, 0
  end
  local op = ARGV[at + 6]
  if op ~= '' then
    kk = kk + 1
    if op == 'put' then
      redis.call('SET', KEYS[kk], ARGV[at + 8], 'PX', wait_ms)
      redis.call('ZADD', KEYS[8], now_ms + wait_ms, ARGV[at + 7])
      redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now_ms - wait_ms)
    else
      redis.call('DEL', KEYS[kk])
      redis.call('ZREM', KEYS[8], ARGV[at + 7])
    end
  end
end
redis.call('HSET', KEYS[1], 'version', v, 'updates', ARGV[4], 'samples', ARGV[5],
           'metrics', ARGV[6], 'loss_sum', string.format('%.17g', loss_sum), 'loss_n', loss_n,
           'rejected', rejected)
if ids then
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
  while extra > 0 do  -- the oldest ids go, with their digests (a bounded unpack per call)
    local old = redis.call('ZRANGE', KEYS[4], 0, math.min(extra, 1000) - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, #old - 1)
    redis.call('HDEL', KEYS[6], unpack(old))
    extra = extra - #old
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {v, redis.call('EXISTS', KEYS[5])}
"""

# KEYS: meta lock state log streams versions vindex, then n_put ctx keys to write, then the ctx
#       keys to delete;
# ARGV: token version keep state n_put retain full retained_meta, then n_put (bytes, stream,
#       time) triples, then the streams whose contexts were dropped. ``full`` (the learner with
#       its contexts; "" for none) is kept as a version to roll back to, the newest ``retain``.
_SNAPSHOT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'version')) ~= tonumber(ARGV[2]) then return -2 end
redis.call('SET', KEYS[3], ARGV[4])
local n = tonumber(ARGV[5])
for i = 1, n do
  redis.call('SET', KEYS[7 + i], ARGV[6 + 3 * i])
  redis.call('ZADD', KEYS[5], ARGV[8 + 3 * i], ARGV[7 + 3 * i])
end
for j = 1, #KEYS - 7 - n do
  redis.call('DEL', KEYS[7 + n + j])
  redis.call('ZREM', KEYS[5], ARGV[8 + 3 * n + j])
end
redis.call('HSET', KEYS[1], 'snapshot_version', ARGV[2], 'state_bytes', string.len(ARGV[4]))
local keep_from = math.max(1, tonumber(ARGV[2]) - tonumber(ARGV[3]) + 1)
redis.call('XTRIM', KEYS[4], 'MINID', keep_from .. '-0')
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[6], 'state:' .. ARGV[2], ARGV[7], 'meta:' .. ARGV[2], ARGV[8])
  redis.call('ZADD', KEYS[7], ARGV[2], ARGV[2])
end
local extra = redis.call('ZCARD', KEYS[7]) - tonumber(ARGV[6])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[7], 0, extra - 1)) do
    redis.call('HDEL', KEYS[6], 'state:' .. old, 'meta:' .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, extra - 1)
end
return 1
"""

# KEYS: spec state meta versions vindex; ARGV: spec state uid metrics updates samples
#       retained_meta (the state, which holds its contexts, is version 0 to roll back to;
#       "": none)
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'version', 0, 'updates', ARGV[5], 'samples', ARGV[6],
           'snapshot_version', 0, 'uid', ARGV[3], 'metrics', ARGV[4],
           'state_bytes', string.len(ARGV[2]))
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[4], 'state:0', ARGV[2], 'meta:0', ARGV[7])
  redis.call('ZADD', KEYS[5], 0, 0)
end
return 1
"""


def _int(value: Any) -> int:
    return int(value.decode() if isinstance(value, bytes) else value)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _head(raw: list[Any]) -> ModelHead | None:
    """A ModelHead from the ``_HEAD`` fields as Redis returns them (``None``: no model)."""
    if raw[0] is None:
        return None
    return ModelHead(_int(raw[0]), _str(raw[1]), _int(raw[2]))


class Store:
    """Async access to models in Redis (one client with a connection pool per process)."""

    def __init__(self, redis: Redis, *, seen_limit: int = 100_000, curve_every: int = 10,
                 curve_points: int = 10_000, label_wait_s: float = 86_400.0) -> None:
        self.redis = redis
        self.seen_limit = seen_limit
        self.label_wait_ms = max(1, round(label_wait_s * 1000))
        self.curve_every, self.curve_points = curve_every, curve_points
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._commit = redis.register_script(_COMMIT)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._create = redis.register_script(_CREATE)

    @classmethod
    def configured(cls, redis: Any, settings: Settings) -> Store:
        """A store with the limits of ``settings``."""
        return cls(redis, seen_limit=settings.seen_limit, curve_every=settings.curve_every,
                   curve_points=settings.curve_points, label_wait_s=settings.label_wait_s)

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    # -- models --------------------------------------------------------------------------------
    async def create(self, name: str, spec_json: str, state: bytes, uid: str,
                     metrics_json: str, *, updates: int = 0, samples: int = 0,
                     retained: str = "") -> bool:
        """Store a new model at version 0 (a fork's carries the counters of its source);
        ``False`` if the name is taken. ``retained``: the meta of version 0 kept to roll back
        to (``state`` then holds the contexts)."""
        keys = [model_key(name, p) for p in ("spec", "state", "meta", "versions", "vindex")]
        return bool(await self._create(keys=keys, args=[spec_json, state, uid, metrics_json,
                                                        updates, samples, retained]))

    async def spec(self, name: str) -> str | None:
        raw = await self.redis.get(model_key(name, "spec"))
        return None if raw is None else _str(raw)

    async def head(self, name: str) -> ModelHead | None:
        """Version, uid and snapshot version (one round trip)."""
        return _head(await self.redis.hmget(model_key(name, "meta"), *_HEAD))

    async def describe(self, name: str) -> tuple[str, dict[str, str]] | None:
        """The spec JSON and the whole meta hash."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(model_key(name, "spec"))
            pipe.hgetall(model_key(name, "meta"))
            spec, meta = await pipe.execute()
        if spec is None or not meta:
            return None
        return _str(spec), {_str(k): _str(v) for k, v in meta.items()}

    async def names(self) -> list[str]:
        """Every model name (a SCAN over ``sn:{*}:spec``; listing is rare)."""
        out = set()
        async for key in self.redis.scan_iter(match=SPEC_PATTERN, count=1000):
            out.add(name_of_spec_key(_str(key)))
        return sorted(out)

    async def delete(self, name: str) -> bool:
        """Remove every key of the model (meta first, so readers see it gone at once)."""
        fixed = [model_key(name, p) for p in MODEL_PARTS]  # meta first
        removed = await self.redis.delete(*fixed)
        for pattern in (context_pattern(name), kept_pattern(name)):
            found = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
            for at in range(0, len(found), 1000):
                await self.redis.delete(*found[at:at + 1000])
        return bool(removed)

    # -- snapshot and log ----------------------------------------------------------------------
    async def snapshot(self, name: str) -> Stored | None:
        """The latest snapshot: its state bytes, the head, and every stream context as of it
        (read in transactions, again if a snapshot was written between them)."""
        for _ in range(5):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(model_key(name, "state"))
                pipe.hmget(model_key(name, "meta"), *_HEAD)
                pipe.zrange(model_key(name, "streams"), 0, -1, withscores=True)
                state, raw, index = await pipe.execute()
            head = _head(raw)
            if state is None or head is None:
                return None
            times = [(_str(s), float(t)) for s, t in index]
            if not times:
                return Stored(bytes(state), head, [])
            async with self.redis.pipeline(transaction=True) as pipe:
                for at in range(0, len(times), 1000):
                    pipe.mget([context_key(name, s) for s, _ in times[at:at + 1000]])
                pipe.hmget(model_key(name, "meta"), *_HEAD)
                *chunks, raw = await pipe.execute()
            if _head(raw) is None or _head(raw)[1:] != head[1:]:
                continue  # a snapshot (or a re-created model) landed between the reads
            blobs = [b for chunk in chunks for b in chunk]
            return Stored(bytes(state), head, [(s, t, bytes(b)) for (s, t), b
                                               in zip(times, blobs, strict=True) if b is not None])
        raise LeaseLost("the model's snapshot kept moving while it was read; retry")

    async def log_after(self, name: str, version: int, upto: int) -> list[tuple[int, str]]:
        """Logged events with versions ``version+1 … upto`` (fewer if trimmed: caller checks)."""
        if upto <= version:
            return []
        entries = await self.redis.xrange(model_key(name, "log"), min=f"{version + 1}-0",
                                          max=f"{upto}-0")
        return [(int(_str(eid).split("-")[0]), _str(fields[b"event"]))
                for eid, fields in entries]

    # -- the write path ------------------------------------------------------------------------
    async def acquire(self, name: str, token: str, lease_ms: int
                      ) -> tuple[ModelHead | None, int]:
        """Try to take the lease: ``(head, 0)`` when taken, ``(None, pttl)`` when held by
        another writer, ``(None, -1)`` when the model does not exist."""
        keys = [model_key(name, p) for p in ("meta", "lock", "wanted")]
        res = await self._acquire(keys=keys, args=[token, lease_ms])
        if _int(res[0]) == 1:
            return _head(res[1:]), 0
        if _int(res[0]) == -1:
            return None, -1
        return None, max(_int(res[1]), 0)

    async def release(self, name: str, token: str) -> None:
        await self._release(keys=[model_key(name, "lock")], args=[token])

    async def renew(self, name: str, token: str, lease_ms: int) -> bool:
        """Extend the lease ``token`` holds; ``False`` when it no longer holds it."""
        return bool(await self._renew(keys=[model_key(name, "lock")], args=[token, lease_ms]))

    async def seen(self, name: str, event_ids: list[str]) -> dict[str, Applied]:
        """Those of ``event_ids`` that were applied: the version that applied each, and the
        digest of its event (``None`` for ids recorded before digests were)."""
        if not event_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(model_key(name, "seen"), event_ids)
            pipe.hmget(model_key(name, "digest"), event_ids)
            scores, digests = await pipe.execute()
        return {e: Applied(int(s), None if d is None else _str(d))
                for e, s, d in zip(event_ids, scores, digests, strict=True) if s is not None}

    async def commit(self, name: str, token: str, version: int, events: list[Committed], *,
                     uid: str, updates: int, samples: int, metrics_json: str, lease_ms: int
                     ) -> tuple[int, bool]:
        """Append applied events as versions ``version+1 …`` atomically (see the module
        docstring), with the meta as of the last one and the learning curve's points they
        close: the new version, and whether another writer is waiting for the lease (the
        holder should yield)."""
        keys = [model_key(name, p) for p in ("meta", "lock", "log", "seen", "wanted", "digest",
                                             "curve", "kept")]
        args: list[Any] = [token, version, len(events), updates, samples, metrics_json,
                           self.seen_limit, lease_ms, uid, self.curve_every, self.curve_points,
                           round(time.time(), 3), self.label_wait_ms]
        for event in events:
            args += (event.event_json, event.event_id or "", event.digest,
                     "" if event.loss is None else repr(event.loss), event.point_metrics,
                     event.rejected)
            if event.kept is None:
                args += ("", "", "")
            else:
                pid, record = event.kept
                keys.append(kept_key(name, pid))
                args += ("put" if record is not None else "del", pid, record or "")
        res = await self._commit(keys=keys, args=args)
        if not isinstance(res, list):
            code = _int(res)
            raise LeaseLost("the lease expired" if code == -1
                            else "the model's version (or incarnation) moved")
        return _int(res[0]), bool(_int(res[1]))

    async def kept(self, name: str, prediction_id: str) -> bytes | None:
        """A kept prediction's record (``None``: labelled, expired, or never kept)."""
        raw = await self.redis.get(kept_key(name, prediction_id))
        return None if raw is None else bytes(raw)

    async def kept_expired(self, name: str, prediction_id: str) -> bool:
        """Whether ``prediction_id`` was kept and has expired (within the last wait)."""
        score = await self.redis.zscore(model_key(name, "kept"), prediction_id)
        return score is not None and score <= time.time() * 1000

    async def kept_waiting(self, name: str) -> int:
        """How many kept predictions of the model wait for their labels."""
        return int(await self.redis.zcount(model_key(name, "kept"), time.time() * 1000, "+inf"))

    async def versions(self, name: str) -> list[str]:
        """The meta JSON of every retained version, newest first."""
        kept = await self.redis.zrevrange(model_key(name, "vindex"), 0, -1)
        if not kept:
            return []
        metas = await self.redis.hmget(model_key(name, "versions"),
                                       [f"meta:{_str(v)}" for v in kept])
        return [_str(m) for m in metas if m is not None]

    async def retained(self, name: str, version: int) -> Retained | None:
        """A retained version's learner bytes and meta (``None``: not kept)."""
        full, meta = await self.redis.hmget(model_key(name, "versions"), f"state:{version}",
                                            f"meta:{version}")
        return None if full is None or meta is None else Retained(bytes(full), _str(meta))

    async def curve(self, name: str, after: int, limit: int) -> list[str]:
        """The learning curve's points (JSON) with versions after ``after``, oldest first."""
        entries = await self.redis.xrange(model_key(name, "curve"), min=f"{after + 1}-0",
                                          max="+", count=limit)
        return [_str(fields[b"point"]) for _, fields in entries]

    async def curves(self, cursors: dict[str, int], limit: int) -> dict[str, list[str]]:
        """``curve`` of several models (each after its own version), in one pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, after in cursors.items():
                pipe.xrange(model_key(name, "curve"), min=f"{after + 1}-0", max="+",
                            count=limit)
            found = await pipe.execute()
        return {name: [_str(fields[b"point"]) for _, fields in entries]
                for name, entries in zip(cursors, found, strict=True)}

    async def curve_tail(self, name: str) -> int | None:
        """The version of the curve's newest point (``None``: no point yet)."""
        newest = await self.redis.xrevrange(model_key(name, "curve"), count=1)
        return int(_str(newest[0][0]).split("-")[0]) if newest else None

    async def write_snapshot(self, name: str, token: str, version: int, state: bytes,
                             contexts: ContextWrites, keep: int = 0,
                             retained: Retained | None = None, retain: int = 0) -> bool:
        """Store the learner at ``version``, write the contexts that moved and delete those
        dropped since the last snapshot, and trim the log to the ``keep`` entries up to it (a
        process that far behind replays instead of loading the snapshot); keep ``retained``
        as a version to roll back to, the newest ``retain`` of them; lease holders only."""
        put, drop = list(contexts.put), sorted(contexts.drop)
        keys = [model_key(name, p) for p in ("meta", "lock", "state", "log", "streams",
                                             "versions", "vindex")]
        keys += [context_key(name, stream) for stream in put + drop]
        args: list[Any] = [token, version, keep, state, len(put), retain,
                           retained.full if retained else "", retained.meta if retained else ""]
        for stream in put:
            args += (contexts.put[stream], stream, contexts.times[stream])
        return _int(await self._snapshot(keys=keys, args=[*args, *drop])) == 1
