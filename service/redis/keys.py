"""Every Redis key streamnorm uses, and nothing else: the one module that spells them.

A model's keys share the hash tag ``{name}``, so one model lives in one Redis Cluster slot and a
script or MULTI over its keys is legal on a cluster (``design.md``, "Redis layout"):
``sn:{name}:spec`` JSON · ``sn:{name}:state`` the latest snapshot (``OnlineLearner.to_bytes``
without contexts) · ``sn:{name}:meta`` hash (version, updates, samples, metrics,
snapshot_version, uid, state_bytes) · ``sn:{name}:ctx:{stream}`` a stream's context as of the
latest snapshot · ``sn:{name}:streams`` the index of those: stream → when it last moved (unix s)
· ``sn:{name}:seen`` applied event ids scored by the version that applied them ·
``sn:{name}:digest`` each of those ids → its event's digest · ``sn:{name}:log`` the events
applied since (and shortly before) the snapshot, a Redis Stream with entry ids ``{version}-0`` ·
``sn:{name}:lock`` the write lease · ``sn:{name}:wanted`` the writer queued first for it ·
``sn:{name}:curve`` the learning curve, a Redis Stream of points with entry ids ``{version}-0``
(bounded: ``STREAMNORM_CURVE_POINTS``) · ``sn:{name}:kept:{prediction_id}`` a kept prediction's
record (``models.KeptPrediction``), expiring after ``STREAMNORM_LABEL_WAIT_S`` ·
``sn:{name}:kept`` the index of those: prediction id → when it expires (unix ms), kept one wait
longer than the record so a late label is told "expired", not "unknown". (``streams``,
``digest``, ``wanted``, ``curve`` and the ``kept`` keys are additions to the design's layout.)
``sn:{name}:versions`` hash: ``state:{v}`` the learner at version ``v`` with its contexts,
``meta:{v}`` its JSON (version, time, metrics, when each stream last moved), for the versions
kept to roll back to (``STREAMNORM_KEEP_SNAPSHOTS``), listed by ``sn:{name}:vindex`` (a sorted
set of those versions).
The meta also holds ``rejected`` (updates rolled back, counted with the next committed one)
and ``loss_sum`` / ``loss_n`` (the losses since the curve's last point).

A race (a group of member models fed the same events) is one hash, ``sn:race:{name}``:
``def`` (its definition, JSON) and ``leader`` (the member serving its predictions); its
members are ordinary models. (An addition to the design's layout.)

The event streams, per partition ``p`` (the tag ``{p}`` keeps a partition in one slot):
``sn:events:{p}`` the stream · ``:dead`` its dead letters · ``:owner`` its lease · ``:done`` how
many entries were applied, ever; ``sn:workers`` the live workers by heartbeat expiry.
"""

from __future__ import annotations

__all__ = ["MODEL_PARTS", "RACE_PATTERN", "SPEC_PATTERN", "WORKERS", "context_key",
           "context_pattern", "kept_key", "kept_pattern", "model_key", "name_of_race_key",
           "name_of_spec_key", "partition_key", "race_key", "stream_event_id"]

MODEL_PARTS = ("meta", "spec", "state", "seen", "digest", "log", "lock", "wanted", "streams",
               "curve", "kept", "versions", "vindex")
SPEC_PATTERN = "sn:{*}:spec"  # matches every model's spec key (a SCAN lists models)
RACE_PATTERN = "sn:race:{*}"  # matches every race's key
WORKERS = "sn:workers"


def model_key(name: str, part: str) -> str:
    """``sn:{name}:part`` (the braces are the Redis Cluster hash tag)."""
    return f"sn:{{{name}}}:{part}"


def context_key(name: str, stream: str) -> str:
    """The key of one stream's context as of the model's latest snapshot."""
    return model_key(name, f"ctx:{stream}")


def context_pattern(name: str) -> str:
    """A SCAN pattern matching every context key of ``name``."""
    return model_key(name, "ctx:*")


def kept_key(name: str, prediction_id: str) -> str:
    """The key of one kept prediction's record (it expires with the label wait)."""
    return model_key(name, f"kept:{prediction_id}")


def kept_pattern(name: str) -> str:
    """A SCAN pattern matching every kept prediction's key of ``name``."""
    return model_key(name, "kept:*")


def name_of_spec_key(key: str) -> str:
    """The model name in a key matched by ``SPEC_PATTERN``."""
    return key[len("sn:{"):-len("}:spec")]


def race_key(name: str) -> str:
    """``sn:race:{name}``: a race's definition and leader."""
    return f"sn:race:{{{name}}}"


def name_of_race_key(key: str) -> str:
    """The race name in a key matched by ``RACE_PATTERN``."""
    return key[len("sn:race:{"):-1]


def partition_key(p: int, part: str = "") -> str:
    """``sn:events:{p}`` (the stream) or ``sn:events:{p}:part`` (dead, owner, done)."""
    return f"sn:events:{{{p}}}" + (f":{part}" if part else "")


def stream_event_id(p: int, entry_id: str) -> str:
    """The event id given to a stream entry that names none: a redelivery carries the same."""
    return f"{partition_key(p)}/{entry_id}"
