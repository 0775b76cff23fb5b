"""Request and response bodies of the HTTP API (apart from the domain objects in ``models``).

Sample values (``x``, ``sequence``, ``y``) are documented here but validated against the
model's own spec by ``models.inputs`` (lengths, feature names, finiteness, label range), so the
error names the exact element (``x[2]: must be finite, got nan``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SkipValidation,
    StrictBool,
    Tag,
)

from models import ModelSpec

__all__ = [
    "EVENTS_TAGS",
    "MODEL_NAME_PATTERN",
    "STREAM_PATTERN",
    "Curve",
    "ErrorBody",
    "EventsAccepted",
    "EventsBody",
    "ForkRequest",
    "LabelRequest",
    "LearnRequest",
    "LearnResponse",
    "ModelInfo",
    "NewModel",
    "NewRace",
    "PredictRequest",
    "PredictResponse",
    "RaceInfo",
    "RaceLearnResponse",
    "RacePredictResponse",
    "RollbackRequest",
    "RollbackResponse",
    "StreamEvent",
    "VersionInfo",
    "errors",
]

# a model's name in a path: no leading '.', so no name is '.' or '..', which clients that
# normalise paths rewrite (ModelSpec keeps the older pattern, so a stored spec still loads)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
STREAM_PATTERN = r"^[A-Za-z0-9_.:@/-]{1,128}$"
EVENT_ID_PATTERN = r"^[!-~]{1,128}$"
PREDICTION_ID_PATTERN = r"^[A-Za-z0-9_.:@/-]{1,128}$"

Features = list[float] | dict[str, float]


class PredictRequest(BaseModel):
    """One step of a stream (``stream`` + ``x``) or a whole sequence (``sequence``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"stream": "sensor-7", "x": [0.1, 0.2, 0.3]},
        {"sequence": [[0.1, 0.2, 0.3], [0.0, 0.5, 0.1]]}]})

    stream: str | None = Field(None, pattern=STREAM_PATTERN,
                               description="stream key (stream mode; default 'default')")
    x: SkipValidation[Features | None] = Field(
        None, description="this step's features: a list of n_features numbers, or, for a "
                          "model with `features`, an object keyed by them "
                          "(`{\"temp\": 0.1, \"load\": 0.2}`)")
    sequence: SkipValidation[list[Features] | None] = Field(
        None, description="sequence mode: every step of one sample; no stream context")
    keep: StrictBool | None = Field(None, description="keep this prediction for a delayed label "
                              "(POST /models/{name}/label): the reply carries its "
                              "prediction_id; in stream mode x joins the stream's context. "
                              "Needs write access")
    prediction_id: str | None = Field(None, pattern=PREDICTION_ID_PATTERN, description="keep "
                                      "the prediction under this id (implies keep); a repeat "
                                      "answers the kept prediction")

    def keeps(self) -> bool:
        """Whether this predict keeps its prediction (a write)."""
        return bool(self.keep) or self.prediction_id is not None


class LabelRequest(BaseModel):
    """The label of a kept prediction."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prediction_id": "forecast-2026-12-07T10:00", "y": 1.5}]})

    prediction_id: str = Field(pattern=PREDICTION_ID_PATTERN,
                               description="the id predict returned (or was given)")
    y: SkipValidation[float | int | bool] = Field(
        description="target: a number (regression), 0/1/bool (binary), a class index")


def _json_integer(value: Any) -> Any:
    """A JSON number with no fraction (``7`` or ``7.0``, as JSON Schema's ``integer``); not
    ``true`` or ``"7"``, which pydantic's lax int would take."""
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


Version = Annotated[int, Field(ge=0, le=10**15), BeforeValidator(_json_integer)]


class RollbackRequest(BaseModel):
    """Return a model to a retained version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"version": 300, "event_id": "rollback-after-bad-batch"}]})

    version: Version = Field(description="a version GET /models/{name}/versions lists")
    event_id: str | None = Field(None, pattern=EVENT_ID_PATTERN,
                                 description="idempotency key: a repeat is not applied again")


class RollbackResponse(BaseModel):
    version: int = Field(description="the model's version after the rollback (it moves "
                         "forward: a rollback is an update)")
    restored: int = Field(description="the retained version whose state the model now has")
    applied: bool = Field(description="false when event_id had already been applied")


class ForkRequest(BaseModel):
    """A new model from a model's state."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "demo-lr-low", "optimizer": {"lr": 0.001}}, {"name": "demo-v300",
                                                              "version": 300}]})

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="the new model's name")
    version: Version | None = Field(None, description="a retained version (default: the "
                                    "latest state)")
    optimizer: dict[str, Any] | None = Field(None, description="optimizer settings to change "
                                             "(`lr`, `clip`; the same kind of optimizer: its "
                                             "moments carry over)")


class VersionInfo(BaseModel):
    version: int
    time: float = Field(description="when it was written (unix s)")
    updates: int = Field(description="optimizer steps the model had taken")
    metrics: dict[str, Any] = Field(description="prequential metrics then")


class BatchItem(BaseModel):
    """One sequence-mode sample of a mini-batch."""

    sequence: list[Features]
    y: float | int | bool


class LearnRequest(PredictRequest):
    """Test-then-train on one sample, or one mini-batch step (``batch``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"stream": "sensor-7", "x": [0.1, 0.2, 0.3], "y": 1.5, "event_id": "evt-0001"},
        {"sequence": [[0.1, 0.2, 0.3], [0.0, 0.5, 0.1]], "y": 1},
        {"batch": [{"sequence": [[0.1, 0.2, 0.3]], "y": 0.5},
                   {"sequence": [[0.3, 0.1, 0.0]], "y": 0.1}], "event_id": "batch-17"}]})

    y: SkipValidation[float | int | bool | None] = Field(
        None, description="target: a number (regression), 0/1/bool (binary), a class index")
    event_id: str | None = Field(None, pattern=EVENT_ID_PATTERN,
                                 description="idempotency key: a repeat is not applied again")
    batch: SkipValidation[list[BatchItem] | None] = Field(
        None, description="mini-batch mode: several sequence samples, one optimizer step")


class StreamEvent(LearnRequest):
    """A learn body plus the model it is for: one entry of ``POST /events``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "demo", "stream": "sensor-7", "x": [0.1, 0.2, 0.3], "y": 1.5,
         "event_id": "evt-0001"}]})

    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN,
                              description="the model the event is for")
    race: str | None = Field(None, pattern=MODEL_NAME_PATTERN,
                             description="or the race: every member applies it, once each")


class NewModel(ModelSpec):
    """The body of ``POST /models``: a model spec whose name can be used in a path."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="model name: letters, digits, "
                      "'_', '-', '.' (not first); 1 to 64 characters")


MAX_EVENTS = 1000
EVENTS_TAGS = ("one", "many")  # the branches of EventsBody, left out of error field names
EventsBody = Annotated[
    Annotated[StreamEvent, Tag("one")]
    | Annotated[Annotated[list[StreamEvent], Field(min_length=1, max_length=MAX_EVENTS)],
                Tag("many")],
    Discriminator(lambda v: "many" if isinstance(v, list) else "one")]
"""One event, or a list of 1 to 1,000: errors name ``[3].x`` (the branch the body took)."""


class EventsAccepted(BaseModel):
    ids: list[str] = Field(description="stream entry id of each event, in order")
    partitions: list[int] = Field(description="the partition each event went to")


class PredictResponse(BaseModel):
    prediction: float | int = Field(description="what learn would predict for this input now")
    version: int = Field(description="the model version the prediction comes from (a kept "
                         "prediction: the version its keep committed)")
    proba: dict[str, float] | None = Field(None, description="class → probability")
    prediction_id: str | None = Field(None, description="a kept prediction's id: label it "
                                      "with POST /models/{name}/label")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prediction": 1.37, "version": 42, "proba": None}]})


class LearnResponse(BaseModel):
    prediction: float | int | None = Field(description="the prediction made before the update")
    loss: float | None = Field(description="the loss of that prediction")
    version: int = Field(description="the version this event produced (or produced before)")
    applied: bool = Field(description="false when event_id had already been applied")
    proba: dict[str, float] | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prediction": 1.37, "loss": 0.017, "version": 43, "applied": True, "proba": None}]})


class ModelInfo(BaseModel):
    """A model's spec with its progress."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"name": "demo", "task": "regression", "n_features": 3, "cell": "lstm",
         "hidden_size": 32, "num_layers": 1, "norm": {"method": "streaming", "preset": "online"},
         "optimizer": {"name": "adam", "lr": 0.005, "clip": 1.0}, "window": 16, "seed": 0,
         "version": 0, "updates": 0, "samples": 0,
         "metrics": {"MAE": {"value": None, "rolling": None}, "n": 0}}]})

    version: int
    updates: int = 0
    samples: int = 0
    metrics: dict[str, Any] | None = None


class Curve(BaseModel):
    """A page of a model's learning curve."""

    points: list[dict[str, Any]] = Field(description="{version, time (unix s), loss (mean "
                                         "since the previous point), rejected (updates rolled "
                                         "back so far), metrics}, in version order")
    last: int = Field(description="the version of the last point (pass it as `after`)")


class RaceMember(BaseModel):
    """A member of a new race: its name (default ``{race}.{norm method}``) and the spec
    fields it changes (any but ``task``, ``n_features``, ``features``, ``n_classes``)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"norm": "layer"}, {"name": "demo.big", "hidden_size": 64}]})

    name: str | None = Field(None, pattern=MODEL_NAME_PATTERN, description="the member model's "
                             "name (default: the race's name, '.', the norm method)")


class NewRace(BaseModel):
    """The body of ``POST /races``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "demo", "spec": {"task": "regression", "n_features": 3, "hidden_size": 32},
         "members": [{"norm": "streaming"}, {"norm": "layer"}, {"norm": "none"}]}]})

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="the race's name")
    spec: dict[str, Any] = Field(description="a model spec without `name`: what the members "
                                             "share unless they change it")
    members: list[RaceMember] = Field(min_length=1, max_length=256, description="at most "
                                      "STREAMNORM_MAX_RACE_MEMBERS (16)")
    metric: Literal["MAE", "RMSE", "Accuracy", "LogLoss"] | None = Field(
        None, description="what ranks the members, by its rolling value (default: MAE for "
                          "regression, Accuracy for classification)")
    min_updates: int = Field(100, ge=0, le=10**9, strict=True,
                             description="updates a member needs before it can lead")
    margin: float = Field(0.02, ge=0.0, le=1.0, strict=True, description="how much better "
                          "(relative) a challenger must be to take the lead")


class RaceStanding(BaseModel):
    name: str
    norm: str
    rank: int = Field(description="1 = best rolling metric")
    version: int | None = Field(description="None: the member model is gone")
    updates: int | None
    rolling: float | None = Field(description="the rolling value of the race's metric")
    metrics: dict[str, Any] | None


class RaceInfo(BaseModel):
    name: str
    metric: str
    leader: str | None = Field(description="the member serving predictions (None: none has "
                                           "min_updates yet; the first member serves)")
    min_updates: int
    margin: float
    spec: dict[str, Any]
    members: list[RaceStanding]


class RaceLearnResponse(BaseModel):
    results: dict[str, dict[str, Any]] = Field(description="member → its learn reply, or "
                                               "{status, detail, field} when it failed")
    leader: str | None = Field(description="the leader after this event")
    prediction: float | int | None = Field(description="the prediction made before the update "
                                           "by the member serving then")
    model: str = Field(description="that member")


class RacePredictResponse(PredictResponse):
    model: str = Field(description="the member that answered (the leader)")
    failed: dict[str, dict[str, Any]] | None = Field(None, description="a kept prediction: "
                                                     "the members that could not keep it, "
                                                     "each {status, detail, field}")


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error: what is wrong and the part of the request it is about (``x[2]``,
    ``[3].model``, ``authorization``, ``body``…); a 422 of a malformed body lists up to 20."""

    detail: str = Field(description="what is wrong, for a person")
    field: str | None = Field(description="the part of the request it is about")
    errors: list[ErrorItem] | None = Field(None, description="every invalid part (422)")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "x[2]: must be finite, got nan", "field": "x[2]"}]})


_WHY = {  # status: (when, an example body)
    400: ("a malformed request header (Content-Length)",
          {"detail": "Content-Length is not a number", "field": "content-length"}),
    401: ("no 'Authorization: Bearer <key>' (only when keys are configured)",
          {"detail": "this endpoint needs 'Authorization: Bearer <api key>'",
           "field": "authorization"}),
    403: ("the key is not valid, or a read key on a write",
          {"detail": "the API key is not valid", "field": "authorization"}),
    404: ("no such model (or race)", {"detail": "no model named 'demo'", "field": "name"}),
    409: ("a conflict (the field says which)",
          {"detail": "a model named 'demo' exists with another spec", "field": "name"}),
    413: ("the body is larger than STREAMNORM_MAX_BODY_BYTES",
          {"detail": "request body is larger than 1048576 bytes", "field": "body"}),
    422: ("invalid input or over a limit (the field is named)",
          {"detail": "x[2]: must be finite, got nan", "field": "x[2]"}),
    429: ("the stream is too far behind; retry after Retry-After seconds",
          {"detail": "the stream is behind: partition(s) [5] hold 100000 unacknowledged "
                     "events (limit 100000); retry later", "field": "body"}),
    503: ("Redis unavailable, or the model's write lease busy; retry after Retry-After seconds",
          {"detail": "Redis is unavailable (ConnectionError); retry later", "field": None}),
}


def errors(*codes: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the ``ErrorBody`` shape and an
    example; ``why`` overrides a description (``e409="..."``)."""
    return {code: {"model": ErrorBody, "description": why.get(f"e{code}", _WHY[code][0]),
                   "content": {"application/json": {"example": _WHY[code][1]}}}
            for code in codes}
