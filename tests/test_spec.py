"""ModelSpec validation: every mistake is reported with the field it concerns."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models import ModelSpec

BASE: dict[str, Any] = {"name": "m", "task": "regression", "n_features": 3}


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "has space"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"task": "ranking"}, "task"),
    ({"task": "multiclass"}, "n_classes is required"),
    ({"n_classes": 3}, "n_classes is only for task"),
    ({"n_features": None}, "give features"),
    ({"features": ["a", "b"]}, "differs from the number of features"),
    ({"features": ["a", "a", "b"], "n_features": None}, "unique"),
    ({"cell": "transformer"}, "cell"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"window": 0}, "window"),
    ({"norm": {"method": "layer", "eps": -1}}, "eps"),
    ({"norm": "batchnorm"}, "norm"),
    ({"optimizer": {"name": "adam", "lr": 0}}, "lr"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer"),
    ({"extra": 1}, "extra"),
])
def test_invalid_specs_name_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate({**BASE, **change})


def test_defaults_and_derived_sizes() -> None:
    spec = ModelSpec.model_validate({**BASE, "features": ["a", "b", "c"]})
    assert spec.input_size == 3 and spec.output_size == 1
    assert spec.norm.method == "streaming" and spec.norm.preset == "online"  # type: ignore
    assert spec.optimizer.name == "adam" and spec.optimizer.clip == 1.0
    multi = ModelSpec.model_validate({**BASE, "task": "multiclass", "n_classes": 5,
                                      "norm": "layer"})
    assert multi.output_size == 5 and multi.norm.method == "layer"
