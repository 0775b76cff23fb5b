"""``ModelSpec``: everything that defines a model, validated with messages a person can act on."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from . import norms

__all__ = ["NAME_PATTERN", "GuardSpec", "ModelSpec", "OptimizerSpec"]

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class OptimizerSpec(BaseModel):
    """The optimizer: ``sgd``, ``adam`` or ``rmsprop``, its learning rate, gradient clipping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sgd", "adam", "rmsprop"] = "adam"
    lr: float = Field(0.005, gt=0, le=10, description="learning rate")
    clip: float | None = Field(1.0, gt=0, le=1e6,
                               description="max gradient norm (None: no clipping)")


class GuardSpec(BaseModel):
    """When a service hosting the model rolls it back by itself to the retained version with
    the best rolling loss (``MAE``, or ``LogLoss`` for classifiers): after ``rejected_in_row``
    rejected updates in a row, or when the rolling loss is over ``loss_ratio`` times that best
    (looked at with each snapshot, once ``min_samples`` predictions were scored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rejected_in_row: int | None = Field(None, ge=1, le=100_000)
    loss_ratio: float | None = Field(None, gt=1, le=1e6)
    min_samples: int = Field(100, ge=1, le=10**9)

    @model_validator(mode="after")
    def _some_trigger(self) -> GuardSpec:
        if self.rejected_in_row is None and self.loss_ratio is None:
            raise ValueError("give rejected_in_row, loss_ratio, or both")
        return self


class ModelSpec(BaseModel):
    """A model: task, inputs, recurrent cell, normalization, optimizer, window, seed.

    Frozen and validated: an invalid spec raises pydantic's ``ValidationError`` naming the
    field. ``norm`` takes a method name or ``{"method": ..., **params}`` (``models.norms``).

    Examples
    --------
    >>> from models import ModelSpec
    >>> spec = ModelSpec(name="demo", task="multiclass", n_classes=3,
    ...                  features=["temp", "load"], cell="gru", hidden_size=16,
    ...                  norm={"method": "layer"}, optimizer={"name": "adam", "lr": 0.01})
    >>> spec.input_size, spec.output_size, spec.norm.method, spec.window
    (2, 3, 'layer', 16)
    >>> ModelSpec(name="demo", task="regression", n_features=3).norm.method
    'streaming'

    Errors name the field:

    >>> from pydantic import ValidationError
    >>> try:
    ...     ModelSpec(name="demo", task="multiclass", n_features=3)
    ... except ValidationError as err:
    ...     print(err.errors()[0]["loc"], err.errors()[0]["msg"])
    ('n_classes',) Value error, n_classes is required when task is 'multiclass'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="model name, [A-Za-z0-9_.-]{1,64}")
    task: Literal["regression", "binary", "multiclass"]
    n_classes: int | None = Field(None, ge=2, le=10_000, validate_default=True,
                                  description="multiclass only")
    features: tuple[Name, ...] | None = Field(None, min_length=1, max_length=10_000,
                                              description="input feature names, in order")
    n_features: int | None = Field(None, ge=1, le=10_000, validate_default=True,
                                   description="input width")
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden_size: int = Field(32, ge=1, le=1024)
    num_layers: int = Field(1, ge=1, le=8)
    norm: norms.NormSpec = Field(default_factory=lambda: norms.parse("streaming"))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    window: int = Field(16, ge=1, le=1024, description="truncated-BPTT length (stream mode)")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    guard: GuardSpec | None = Field(None, exclude_if=lambda v: v is None,
                                    description="automatic rollback of a diverging model "
                                                "(a service feature; unset: none)")

    @field_validator("norm", mode="before")
    @classmethod
    def _bare_norm_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value

    # cross-field checks are field validators (reading earlier fields), so errors name the field
    @field_validator("n_classes", mode="after")
    @classmethod
    def _n_classes(cls, value: int | None, info: ValidationInfo) -> int | None:
        task = info.data.get("task")
        if task == "multiclass" and value is None:
            raise ValueError("n_classes is required when task is 'multiclass'")
        if task is not None and task != "multiclass" and value is not None:
            raise ValueError(f"n_classes is only for task 'multiclass', not {task!r}")
        return value

    @field_validator("features", mode="after")
    @classmethod
    def _unique(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names must be unique")
        return value

    @field_validator("n_features", mode="after")
    @classmethod
    def _n_features(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "features" not in info.data:  # features itself was invalid (already reported)
            return value
        features = info.data["features"]
        if features is None and value is None:
            raise ValueError("give features (a list of names) or n_features")
        if features is not None and value is not None and value != len(features):
            raise ValueError(f"n_features ({value}) differs from the number of features "
                             f"({len(features)})")
        return value

    @property
    def input_size(self) -> int:
        """Number of input features."""
        return len(self.features) if self.features is not None else int(self.n_features or 0)

    @property
    def output_size(self) -> int:
        """Width of the head: one logit or value, or one per class."""
        return int(self.n_classes) if self.task == "multiclass" else 1
