"""The registry: every method is listed with a description and a validating parameter model."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from models import NORMS, norms
from models.norms.streaming import StreamingNormParams

from .conftest import METHODS


def test_registry_lists_exactly_the_documented_methods() -> None:
    assert sorted(NORMS) == sorted(METHODS)
    described = norms.describe()
    assert [d["method"] for d in described] == list(NORMS)
    for entry in described:
        assert entry["description"] and "\n" not in entry["description"]
        json.dumps(entry["params_schema"])  # serializable for GET /norms
        assert entry["params_schema"]["properties"]["method"]["const"] == entry["method"]


@pytest.mark.parametrize("method", METHODS)
def test_defaults_validate_and_build(method: str) -> None:
    params = norms.parse({"method": method})
    assert params.method == method  # type: ignore[attr-defined]
    assert norms.build(method).name == method


@pytest.mark.parametrize(("spec", "field"), [
    ({"method": "layer", "eps": 0}, "eps"),
    ({"method": "layer", "gain": 2}, "gain"),
    ({"method": "online", "alpha_f": 1.0}, "alpha_f"),
    ({"method": "recurrent_batch", "t_max": 0}, "t_max"),
    ({"method": "streaming", "p": 0.5}, "p"),
    ({"method": "streaming", "kappa": [0.5, 0.5]}, "kappa"),
    ({"method": "cosine", "gain_init": -1}, "gain_init"),
    ({"method": "batch_rnn", "momentum": 2}, "momentum"),
    ({"method": "nope"}, "method"),
])
def test_bad_parameters_raise_an_error_naming_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        norms.parse(spec)
    assert field in str(info.value)


def test_streaming_presets_resolve_as_documented() -> None:
    paper = StreamingNormParams(preset="paper").resolved()
    online = StreamingNormParams().resolved()
    sample = StreamingNormParams(preset="sample").resolved()
    assert (paper["axes"], paper["stats"], paper["kappa"][0]) == ("unit", "meanstd", 0.7)
    assert (online["axes"], online["stats"], online["kappa"][0]) == ("unit", "moments", 0.99)
    assert (sample["axes"], sample["kappa"][2]) == ("sample", 0.99)
    assert paper["alpha"] == (0.7, 0.3) and paper["beta"] == (0.7, 0.0, 0.3)
    assert online["beta"] == sample["beta"] == (0.0, 0.0, 0.3)
    custom = StreamingNormParams(alpha=(0.5, 0.5), kappa=(0.9, 0.1, 0.8, 0.2)).resolved()
    assert custom["alpha"] == (0.5, 0.5) and custom["kappa"] == (0.9, 0.1, 0.8, 0.2)
