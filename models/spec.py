"""``ModelSpec``: everything that defines a model, validated with messages a person can act on."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import norms

__all__ = ["NAME_PATTERN", "ModelSpec", "OptimizerSpec"]

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class OptimizerSpec(BaseModel):
    """The optimizer: ``sgd``, ``adam`` or ``rmsprop``, its learning rate, gradient clipping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sgd", "adam", "rmsprop"] = "adam"
    lr: float = Field(0.005, gt=0, le=10, description="learning rate")
    clip: float | None = Field(1.0, gt=0, le=1e6,
                               description="max gradient norm (None: no clipping)")


class ModelSpec(BaseModel):
    """A model: task, inputs, recurrent cell, normalization, optimizer, window, seed.

    >>> ModelSpec(name="demo", task="regression", n_features=3).norm.method
    'streaming'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="model name, [A-Za-z0-9_.-]{1,64}")
    task: Literal["regression", "binary", "multiclass"]
    n_classes: int | None = Field(None, ge=2, le=10_000, description="multiclass only")
    features: tuple[Name, ...] | None = Field(None, min_length=1, max_length=10_000,
                                              description="input feature names, in order")
    n_features: int | None = Field(None, ge=1, le=10_000, description="input width")
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden_size: int = Field(32, ge=1, le=1024)
    num_layers: int = Field(1, ge=1, le=8)
    norm: norms.NormSpec = Field(default_factory=lambda: norms.parse("streaming"))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    window: int = Field(16, ge=1, le=1024, description="truncated-BPTT length (stream mode)")
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @field_validator("norm", mode="before")
    @classmethod
    def _bare_norm_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.task == "multiclass" and self.n_classes is None:
            raise ValueError("n_classes is required when task is 'multiclass'")
        if self.task != "multiclass" and self.n_classes is not None:
            raise ValueError(f"n_classes is only for task 'multiclass', not {self.task!r}")
        if self.features is None and self.n_features is None:
            raise ValueError("give features (a list of names) or n_features")
        if self.features is not None:
            if len(set(self.features)) != len(self.features):
                raise ValueError("features: names must be unique")
            if self.n_features is not None and self.n_features != len(self.features):
                raise ValueError(f"n_features ({self.n_features}) differs from the number of "
                                 f"features ({len(self.features)})")
        return self

    @property
    def input_size(self) -> int:
        """Number of input features."""
        return len(self.features) if self.features is not None else int(self.n_features or 0)

    @property
    def output_size(self) -> int:
        """Width of the head: one logit or value, or one per class."""
        return int(self.n_classes) if self.task == "multiclass" else 1
