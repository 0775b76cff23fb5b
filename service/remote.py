"""River estimators whose model lives in a streamnorm service: ``RemoteRegressor`` and
``RemoteClassifier`` (``evaluate.progressive_val_score`` can drive a hosted model).

Each ``learn_one`` is a ``POST /models/{model}/learn`` (with an ``event_id``, so the client's
retries are safe) and each ``predict_one`` a ``predict``, through ``service.client.Client``. The
input dict becomes the model's input as ``models.river`` makes it: the model's ``features`` by
name when its spec names them, else the first sample's feature names, sorted (missing ones read
as 0). ``stream`` names a feature whose value keys the recurrent context. River is an optional
dependency (``pip install 'streamnorm[river]'``).
"""

from __future__ import annotations

from typing import Any

from river import base

from .client import Client

__all__ = ["RemoteClassifier", "RemoteRegressor"]


class _Remote:
    """The model's name and inputs, and the client (made on first use, never pickled)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", model: str = "demo",
                 api_key: str | None = None, stream: str | None = None) -> None:
        self.url, self.model, self.api_key, self.stream = url, model, api_key, stream
        self._client: Client | None = None
        self._names: tuple[str, ...] | None = None
        self._by_name = False

    def _call(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.api_key)
            features = self._client.get_model(self.model).get("features")
            if features:
                self._names, self._by_name = tuple(features), True
        return self._client

    def _args(self, x: dict[Any, Any]) -> dict[str, Any]:
        """The request's ``x`` (and ``stream``) for a River sample."""
        values = {str(k): v for k, v in x.items()}
        if self._names is None:
            self._names = tuple(sorted(k for k in values if k != self.stream))
        vector = [float(values.get(n) or 0.0) for n in self._names]
        out: dict[str, Any] = {"x": dict(zip(self._names, vector, strict=True))
                               if self._by_name else vector}
        out["stream"] = "default" if self.stream is None else \
            str(values.get(self.stream) or "default")
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}


class RemoteRegressor(_Remote, base.Regressor):
    """A regression model of a streamnorm service as a River regressor.

    Parameters
    ----------
    url
        The service's base URL.
    model
        The hosted model's name.
    api_key
        A key, when the service has keys (learning needs an admin key).
    stream
        A feature whose value keys the recurrent context (None: one context).
    """

    def learn_one(self, x: dict[Any, Any], y: float) -> None:
        client = self._call()
        client.learn(self.model, y=float(y), **self._args(x))

    def predict_one(self, x: dict[Any, Any]) -> float:
        client = self._call()
        return float(client.predict(self.model, **self._args(x))["prediction"])


class RemoteClassifier(_Remote, base.Classifier):
    """A binary or multi-class model of a streamnorm service as a River classifier (labels
    are the model's: 0/1 for binary, read back as ``False``/``True``; class indices)."""

    def learn_one(self, x: dict[Any, Any], y: Any) -> None:
        client = self._call()
        client.learn(self.model, y=int(y), **self._args(x))

    def predict_proba_one(self, x: dict[Any, Any]) -> dict[Any, float]:
        client = self._call()
        proba = client.predict(self.model, **self._args(x))["proba"]
        labels = {int(k): p for k, p in proba.items()}
        if len(labels) == 2 and set(labels) == {0, 1}:
            return {False: labels[0], True: labels[1]}
        return labels

    def predict_one(self, x: dict[Any, Any]) -> Any:
        proba = self.predict_proba_one(x)
        return max(proba, key=proba.__getitem__)
