"""Safe state bytes: round trip, metadata, and rejection of bytes that are not ours."""

from __future__ import annotations

import pickle

import pytest
import torch

from models import RecurrentStack
from models.state import StateError, module_from_bytes, module_to_bytes, read_meta


class _Boom:
    def __reduce__(self) -> tuple:
        return (exec, ("raise SystemExit('code ran')",))


def test_round_trip_restores_every_tensor_and_the_metadata() -> None:
    net = RecurrentStack("lstm", 3, 4, 1, "streaming")
    blob = module_to_bytes(net, {"k": [1, 2]})
    assert read_meta(blob) == {"k": [1, 2]}
    other = RecurrentStack("lstm", 3, 4, 1, "streaming")
    module_from_bytes(other, blob)
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


@pytest.mark.parametrize("blob", [
    b"", b"\x00" * 7, b"garbage-garbage-garbage", (10**9).to_bytes(8, "little") + b"{}",
    pickle.dumps(_Boom()), pickle.dumps({"weight": [1.0, 2.0]}),
])
def test_malformed_bytes_raise_state_error_and_run_nothing(blob: bytes) -> None:
    net = RecurrentStack("gru", 3, 4, 1, "layer")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(StateError):
        module_from_bytes(net, blob)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_state_of_another_shape_is_rejected() -> None:
    blob = module_to_bytes(RecurrentStack("lstm", 3, 4, 2, "none"))
    for other in (RecurrentStack("lstm", 3, 5, 2, "none"), RecurrentStack("lstm", 3, 4, 1, "none"),
                  RecurrentStack("lstm", 3, 4, 2, "layer")):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(StateError, match="does not fit"):
            module_from_bytes(other, blob)
        for k, v in other.state_dict().items():
            assert torch.equal(v, before[k]), k
