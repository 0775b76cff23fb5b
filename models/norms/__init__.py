"""Normalization methods for recurrent cells, one file per method, and their registry.

>>> from models import norms
>>> sorted(norms.NORMS)[:3]
['batch_rnn', 'cosine', 'layer']
>>> norms.build({"method": "streaming", "preset": "paper"}).params.preset
'paper'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from .base import Linear, NormMethod, NormParams, Site, SiteKind, notify_optimizer_step
from .batch_rnn import BatchRNN, BatchRNNParams
from .cosine import CosineNorm, CosineNormParams
from .layer import LayerNorm, LayerNormParams
from .none import NoNorm, NoNormParams
from .online import OnlineNorm, OnlineNormParams
from .recurrent_batch import RecurrentBatchNorm, RecurrentBatchNormParams
from .streaming import StreamingNorm, StreamingNormParams
from .weight import WeightNorm, WeightNormParams

__all__ = [
    "NORMS",
    "Linear",
    "NormInfo",
    "NormMethod",
    "NormParams",
    "NormSpec",
    "Site",
    "SiteKind",
    "build",
    "describe",
    "notify_optimizer_step",
    "parse",
]


@dataclass(frozen=True)
class NormInfo:
    """A registry entry: the method's name, a one-line description, its parameter model."""

    name: str
    description: str
    params: type[NormParams]
    method: type[NormMethod]

    def schema(self) -> dict[str, Any]:
        """JSON schema of the parameters (what ``GET /norms`` shows)."""
        return self.params.model_json_schema()


NORMS: dict[str, NormInfo] = {
    info.name: info
    for info in (
        NormInfo("streaming", "Streaming Normalization (Liao et al. 2016): statistics and their "
                 "gradients streamed with short/long memories; works at batch size 1",
                 StreamingNormParams, StreamingNorm),
        NormInfo("layer", "Layer Normalization (Ba et al. 2016): per-sample statistics over "
                 "units; stateless", LayerNormParams, LayerNorm),
        NormInfo("online", "Online Normalization (Chiley et al. 2019): per-feature running "
                 "statistics and layer scaling; its backward control is off by default at "
                 "batch size 1 (alpha_b 1; the paper's 0.99 turns it on)", OnlineNormParams,
                 OnlineNorm),
        NormInfo("recurrent_batch", "Recurrent Batch Norm (Cooijmans et al. 2016): per-time-step "
                 "statistics, gain initialised at 0.1", RecurrentBatchNormParams,
                 RecurrentBatchNorm),
        NormInfo("batch_rnn", "Batch-Normalized RNN (Laurent et al. 2015): sequence-wise BN of "
                 "the input-to-hidden term only", BatchRNNParams, BatchRNN),
        NormInfo("weight", "Weight Normalization (Salimans & Kingma 2016): w = g·v/‖v‖ per row",
                 WeightNormParams, WeightNorm),
        NormInfo("cosine", "Cosine Normalization (Luo et al. 2017): pre-activations are cosines, "
                 "times a learned gain", CosineNormParams, CosineNorm),
        NormInfo("none", "No normalization: plain cells on PyTorch's fused kernels",
                 NoNormParams, NoNorm),
    )
}

NormSpec = Annotated[
    StreamingNormParams | LayerNormParams | OnlineNormParams | RecurrentBatchNormParams
    | BatchRNNParams | WeightNormParams | CosineNormParams | NoNormParams,
    Field(discriminator="method"),
]
"""A method's parameters as a tagged union on ``method`` (for embedding in other models)."""

_ADAPTER: TypeAdapter[NormParams] = TypeAdapter(NormSpec)


def parse(spec: str | dict[str, Any] | NormParams) -> NormParams:
    """Validate ``{"method": NAME, ...params}`` (or a bare name) into that method's params.

    Raises ``pydantic.ValidationError`` naming the offending field.
    """
    if isinstance(spec, NormParams):
        return spec
    if isinstance(spec, str):
        spec = {"method": spec}
    return _ADAPTER.validate_python(spec)


def build(spec: str | dict[str, Any] | NormParams) -> NormMethod:
    """The method object for a validated spec."""
    params = parse(spec)
    return NORMS[params.method].method(params)  # type: ignore[attr-defined]


def describe() -> list[dict[str, Any]]:
    """Every method as ``{"method", "description", "params_schema"}`` (``GET /norms``).

    Examples
    --------
    >>> from models import norms
    >>> [entry["method"] for entry in norms.describe()]
    ['streaming', 'layer', 'online', 'recurrent_batch', 'batch_rnn', 'weight', 'cosine', 'none']
    >>> streaming = norms.describe()[0]
    >>> sorted(streaming["params_schema"]["properties"])
    ['alpha', 'beta', 'eps', 'kappa', 'method', 'p', 'preset']
    >>> streaming["params_schema"]["properties"]["preset"]["default"]
    'online'
    """
    return [{"method": i.name, "description": i.description, "params_schema": i.schema()}
            for i in NORMS.values()]
