"""Races in Redis: a race's definition and leader in one hash, its members' standings.

A race claims its name before its members are created (``claim``: HSETNX, so two creators
cannot both win) and is removed after them (``delete``). The leader moves by compare-and-set
(``move_leader``), so processes deciding at once from different snapshots of the metrics never
undo each other's change without having seen it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.asyncio import Redis

from .keys import RACE_PATTERN, model_key, name_of_race_key, race_key

__all__ = ["RaceStore", "Standing"]


class Standing(NamedTuple):
    """A member model as stored now: version, updates and the metrics JSON (``None``: the
    model is gone)."""

    version: int
    updates: int
    metrics_json: str


# KEYS: race; ARGV: expected leader ("" = none) new leader. 1 when moved.
_MOVE = """
local cur = redis.call('HGET', KEYS[1], 'leader') or ''
if redis.call('EXISTS', KEYS[1]) == 0 or cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'leader', ARGV[2])
return 1
"""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RaceStore:
    """Async access to races (the members themselves are models: ``Store``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._move = redis.register_script(_MOVE)

    async def claim(self, name: str, definition: str) -> bool:
        """Store a new race's definition; ``False`` if the name is taken."""
        return bool(await self.redis.hsetnx(race_key(name), "def", definition))

    async def get(self, name: str) -> tuple[str, str] | None:
        """The definition JSON and the leader (``""``: none yet)."""
        found = await self.redis.hmget(race_key(name), "def", "leader")
        if found[0] is None:
            return None
        return _str(found[0]), _str(found[1] or b"")

    async def names(self) -> list[str]:
        """Every race name (a SCAN; listing is rare)."""
        out = {name_of_race_key(_str(k))
               async for k in self.redis.scan_iter(match=RACE_PATTERN, count=1000)}
        return sorted(out)

    async def delete(self, name: str) -> bool:
        return bool(await self.redis.delete(race_key(name)))

    async def move_leader(self, name: str, expected: str, leader: str) -> bool:
        """Set the leader to ``leader`` if it is still ``expected``."""
        return bool(await self._move(keys=[race_key(name)], args=[expected, leader]))

    async def standings(self, members: list[str]) -> list[Standing | None]:
        """Each member's version, updates and metrics, in one pipeline (``None``: gone)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hmget(model_key(member, "meta"), "version", "updates", "metrics")
            rows = await pipe.execute()
        return [None if row[0] is None else
                Standing(int(row[0]), int(row[1] or 0), _str(row[2] or b"null"))
                for row in rows]
