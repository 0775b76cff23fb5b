"""River estimators over ``OnlineLearner``: ``RecurrentRegressor`` and ``RecurrentClassifier``.

River users write ``model.learn_one(x, y)`` / ``model.predict_one(x)`` with ``x`` a dict, chain
``preprocessing.StandardScaler() | model`` and score with ``evaluate.progressive_val_score``.
These classes speak that: they are ``river.base`` estimators (parameters visible to River,
``clone()``, pipelines), each wrapping one ``OnlineLearner`` built at the first sample.

- **Features**: the first ``x`` fixes the input's feature names (sorted, so their order in a
  dict does not matter), unless ``features`` names them; a missing feature reads as 0 and a new
  one is ignored, as River's checks ask of a model with a fixed input.
- **Streams**: one stream (recurrent context) per estimator; ``stream="sensor_id"`` keys the
  context by that feature's value instead (and leaves it out of the inputs).
- **Labels** (``RecurrentClassifier``): with ``n_classes=None`` a binary classifier whose labels
  are ``False``/``True`` (River's convention; 0/1 read as such, anything else refused); with
  ``n_classes=k`` up to ``k`` labels of any kind, numbered in the order they appear,
  ``predict_proba_one`` over those seen so far.
- **Pickling** (River clones and checks pickle estimators) goes through
  ``OnlineLearner.to_bytes``: safetensors + JSON, so unpickling never runs a learner's code.

River is an optional dependency (``pip install 'streamnorm[river]'``): ``import models`` does
not import this module.
"""

from __future__ import annotations

from typing import Any

from river import base

from .learner import OnlineLearner
from .spec import ModelSpec

__all__ = ["RecurrentClassifier", "RecurrentRegressor", "feature_names", "inputs"]


def feature_names(x: dict[Any, Any], stream: Any = None) -> tuple[str, ...]:
    """The input's feature names a first sample ``x`` fixes: its keys but the stream's, as
    strings, sorted (the order of a dict's keys does not matter)."""
    key = None if stream is None else str(stream)
    return tuple(sorted({str(k) for k in x} - {key}))


def inputs(x: dict[Any, Any], names: tuple[str, ...], stream: Any = None
           ) -> tuple[list[float], str]:
    """The input vector of a River sample (a missing or ``None`` feature reads as 0, one not
    in ``names`` is ignored) and its stream: the value of the ``stream`` feature as a string,
    ``"default"`` without one (no ``stream``, or the feature missing or ``None``)."""
    values = {str(k): v for k, v in x.items()}
    vector = [0.0 if values.get(n) is None else float(values[n]) for n in names]
    if stream is None:
        return vector, "default"
    value = values.get(str(stream))
    return vector, "default" if value is None or value == "" else str(value)


class _Recurrent:
    """What both estimators share: the spec from the parameters, the input vector, pickling."""

    task: str

    def __init__(self, cell: str = "lstm", hidden_size: int = 32, num_layers: int = 1,
                 norm: str | dict[str, Any] = "streaming", optimizer: str = "adam",
                 lr: float = 0.005, clip: float | None = 1.0, window: int = 16, seed: int = 0,
                 stream: str | None = None, features: tuple[str, ...] | None = None) -> None:
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.norm, self.optimizer, self.lr, self.clip = norm, optimizer, lr, clip
        self.window, self.seed, self.stream = window, seed, stream
        self.features = features
        self.learner: OnlineLearner | None = None
        self._names: tuple[str, ...] | None = features

    def _spec(self, names: tuple[str, ...], **task: Any) -> ModelSpec:
        return ModelSpec.model_validate({
            "name": "river", "n_features": len(names), "cell": self.cell,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers, "norm": self.norm,
            "optimizer": {"name": self.optimizer, "lr": self.lr, "clip": self.clip},
            "window": self.window, "seed": self.seed, **task})

    def _task(self) -> dict[str, Any]:
        raise NotImplementedError

    def _ready(self, x: dict[Any, Any]) -> OnlineLearner:
        """The learner, built at the first sample (its feature names fixed then)."""
        if self.learner is None:
            if self._names is None:
                self._names = feature_names(x, self.stream)
            self.learner = OnlineLearner(self._spec(self._names, **self._task()))
        return self.learner

    def _args(self, x: dict[Any, Any]) -> tuple[list[float], str]:
        """The input vector and the stream (``inputs``)."""
        assert self._names is not None
        return inputs(x, self._names, self.stream)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.learner is not None:
            state["learner"] = self.learner.to_bytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.get("learner")
        if isinstance(blob, bytes):
            state = {**state, "learner": OnlineLearner.from_bytes(blob)}
        self.__dict__.update(state)


class RecurrentRegressor(_Recurrent, base.Regressor):
    """A recurrent regressor learning one sample at a time (``models.OnlineLearner``).

    Parameters
    ----------
    cell
        ``lstm``, ``gru`` or ``rnn``.
    hidden_size, num_layers
        The recurrent stack's size.
    norm
        A normalization method (``GET /norms``, ``models.NORMS``) or ``{"method": ..., ...}``.
    optimizer, lr, clip
        ``sgd``, ``adam`` or ``rmsprop``, its learning rate, the gradient norm clip (None: no
        clipping).
    window
        Truncated-BPTT length: the steps of context each update runs through.
    seed
        Initialisation seed (the estimator is deterministic).
    stream
        A feature whose value keys the recurrent context (None: one context).
    features
        The input feature names, in order (None: the first sample's, sorted).

    Examples
    --------
    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> from models.river import RecurrentRegressor
    >>> model = preprocessing.StandardScaler() | RecurrentRegressor(hidden_size=8, window=4,
    ...                                                              lr=0.01, norm="layer")
    >>> evaluate.progressive_val_score(datasets.TrumpApproval().take(200), model,
    ...                                metrics.MAE())
    MAE: ...
    """

    def _task(self) -> dict[str, Any]:
        return {"task": "regression"}

    def learn_one(self, x: dict[Any, Any], y: float) -> None:
        learner = self._ready(x)
        vector, stream = self._args(x)
        learner.learn_one(vector, float(y), stream=stream)

    def predict_one(self, x: dict[Any, Any]) -> float:
        learner = self._ready(x)
        vector, stream = self._args(x)
        return float(learner.predict_one(vector, stream=stream))


class RecurrentClassifier(_Recurrent, base.Classifier):
    """A recurrent classifier learning one sample at a time (``models.OnlineLearner``).

    Parameters are ``RecurrentRegressor``'s, and ``n_classes``: None for a binary classifier
    (labels ``False``/``True``), or the most labels a multi-class one will see (numbered as
    they appear).

    Examples
    --------
    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> from models.river import RecurrentClassifier
    >>> model = preprocessing.StandardScaler() | RecurrentClassifier(hidden_size=8, window=4)
    >>> evaluate.progressive_val_score(datasets.Phishing().take(200), model,
    ...                                metrics.Accuracy())
    Accuracy: ...
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 32, num_layers: int = 1,
                 norm: str | dict[str, Any] = "streaming", optimizer: str = "adam",
                 lr: float = 0.005, clip: float | None = 1.0, window: int = 16, seed: int = 0,
                 stream: str | None = None, features: tuple[str, ...] | None = None,
                 n_classes: int | None = None) -> None:
        super().__init__(cell, hidden_size, num_layers, norm, optimizer, lr, clip, window,
                         seed, stream, features)
        self.n_classes = n_classes
        self.labels: list[Any] = [False, True] if n_classes is None else []

    @property
    def _multiclass(self) -> bool:
        return self.n_classes is not None

    def _task(self) -> dict[str, Any]:
        if self.n_classes is None:
            return {"task": "binary"}
        return {"task": "multiclass", "n_classes": self.n_classes}

    def _index(self, y: Any) -> int:
        """The class index of label ``y`` (a new one numbered next)."""
        if self.n_classes is None:
            if isinstance(y, bool) or y in (0, 1):
                return int(y)
            raise ValueError(f"label {y!r}: a binary classifier's labels are False/True (or "
                             "0/1); give n_classes for labels of another kind")
        if y not in self.labels:
            if len(self.labels) >= self.n_classes:
                raise ValueError(f"label {y!r} is one more than n_classes={self.n_classes}")
            self.labels.append(y)
        return self.labels.index(y)

    def learn_one(self, x: dict[Any, Any], y: Any) -> None:
        learner = self._ready(x)
        index = self._index(y)
        vector, stream = self._args(x)
        learner.learn_one(vector, index, stream=stream)

    def predict_proba_one(self, x: dict[Any, Any]) -> dict[Any, float]:
        learner = self._ready(x)
        if not self.labels:
            return {}
        vector, stream = self._args(x)
        proba = learner.predict_proba_one(vector, stream=stream)
        seen = {label: proba[i] for i, label in enumerate(self.labels)}
        total = sum(seen.values())
        return {label: p / total for label, p in seen.items()} if self._multiclass else seen

    def predict_one(self, x: dict[Any, Any]) -> Any:
        proba = self.predict_proba_one(x)
        return max(proba, key=proba.__getitem__) if proba else None
