"""Request and response bodies of the HTTP API (apart from the domain objects in ``models``).

Sample values (``x``, ``sequence``, ``y``) are documented here but validated against the
model's own spec by ``models.inputs`` (lengths, feature names, finiteness, label range), so the
error names the exact element (``x[2]: must be finite, got nan``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from models.spec import NAME_PATTERN

__all__ = [
    "STREAM_PATTERN",
    "EventsAccepted",
    "LearnRequest",
    "LearnResponse",
    "ModelInfo",
    "PredictRequest",
    "PredictResponse",
    "StreamEvent",
]

STREAM_PATTERN = r"^[A-Za-z0-9_.:@/-]{1,128}$"
EVENT_ID_PATTERN = r"^[!-~]{1,128}$"

Features = list[float] | dict[str, float]


class PredictRequest(BaseModel):
    """One step of a stream (``stream`` + ``x``) or a whole sequence (``sequence``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"stream": "sensor-7", "x": [0.1, 0.2, 0.3]},
        {"stream": "sensor-7", "x": {"temp": 0.1, "load": 0.2, "rpm": 0.3}},
        {"sequence": [[0.1, 0.2, 0.3], [0.0, 0.5, 0.1]]}]})

    stream: str | None = Field(None, pattern=STREAM_PATTERN,
                               description="stream key (stream mode; default 'default')")
    x: SkipValidation[Features | None] = Field(
        None, description="this step's features: a list, or an object keyed by feature name")
    sequence: SkipValidation[list[Features] | None] = Field(
        None, description="sequence mode: every step of one sample; no stream context")


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

    model: str = Field(pattern=NAME_PATTERN, description="the model the event is for")


class EventsAccepted(BaseModel):
    ids: list[str] = Field(description="stream entry id of each event, in order")
    partitions: list[int] = Field(description="the partition each event went to")


class PredictResponse(BaseModel):
    prediction: float | int = Field(description="what learn would predict for this input now")
    version: int = Field(description="the model version the prediction comes from")
    proba: dict[str, float] | None = Field(None, description="class → probability")

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
