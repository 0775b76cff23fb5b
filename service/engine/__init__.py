"""The engine: one ``Replica`` per hosted model, and the verbs every edge calls (``Engine``)."""

from .engine import Engine
from .errors import (
    Backlogged,
    Busy,
    Conflict,
    EngineError,
    Rejected,
    Unavailable,
    UnknownModel,
    UnknownPrediction,
    UnknownRace,
    UnknownVersion,
)
from .event import Event, LearnOutcome

__all__ = [
           "Backlogged",
           "Busy",
           "Conflict",
           "Engine",
           "EngineError",
           "Event",
           "LearnOutcome",
           "Rejected",
           "Unavailable",
           "UnknownModel",
           "UnknownPrediction",
           "UnknownRace",
           "UnknownVersion",
]
