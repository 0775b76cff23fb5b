"""What can go wrong when the engine serves a model, in the engine's words (no HTTP here).

Each edge maps these its own way: ``service.api.errors`` to statuses, the stream worker to
dead-letter (the event can never apply) or retry (the infrastructure failed).
``models.InvalidInput`` (input that does not fit the model, or is over a limit) and
``service.redis.store.LeaseLost`` (a commit refused: retry) are the other two kinds.
"""

from __future__ import annotations

__all__ = ["Backlogged", "Busy", "Conflict", "EngineError", "Rejected", "Unavailable",
           "UnknownModel", "UnknownPrediction", "UnknownRace", "UnknownVersion"]


class EngineError(Exception):
    """A failure of one request, with the part of it the failure is about (``field``)."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.field = detail, field


class UnknownModel(EngineError):
    """No model of that name (the event can never apply)."""

    def __init__(self, name: str, field: str = "name") -> None:
        super().__init__(f"no model named {name!r}", field)


class Conflict(EngineError):
    """The request contradicts what is stored: a name taken by another spec, an event id used by
    another event."""


class Rejected(EngineError):
    """The learner rolled the update back (a non-finite loss, gradient or statistic)."""


class Busy(EngineError):
    """The model's write lease was not free in time: retry shortly."""


class Unavailable(EngineError):
    """The model could not be served now (it kept moving, or was replaced): retry."""


class Backlogged(EngineError):
    """The event stream is too far behind to take more now: retry later."""


class UnknownPrediction(EngineError):
    """No kept prediction of that id: never kept, already expired (``expired``), or deleted
    with its model (the label can never apply)."""

    def __init__(self, prediction_id: str, expired: bool) -> None:
        why = "expired (STREAMNORM_LABEL_WAIT_S)" if expired else "unknown"
        super().__init__(f"no kept prediction {prediction_id!r}: {why}", "prediction_id")
        self.expired = expired


class UnknownVersion(EngineError):
    """No retained version of that number (never kept, or no longer)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"version {version} is not kept (GET /models/{{name}}/versions lists "
                         "those that are)", "version")


class UnknownRace(EngineError):
    """No race of that name."""

    def __init__(self, name: str, field: str = "name") -> None:
        super().__init__(f"no race named {name!r}", field)
