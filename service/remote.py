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

from models.river import feature_names, inputs

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
        """The client, once the model's feature names are known (an error here leaves
        nothing half set: the next call looks again)."""
        if self._client is None:
            client = Client(self.url, self.api_key)
            try:
                features = client.get_model(self.model).get("features")
            except BaseException:
                client.close()
                raise
            if features:
                self._names, self._by_name = tuple(features), True
            self._client = client
        return self._client

    def _args(self, x: dict[Any, Any]) -> dict[str, Any]:
        """The request's ``x`` and ``stream`` for a River sample, as ``models.river`` makes
        them (by name when the model names its features)."""
        if self._names is None:
            self._names = feature_names(x, self.stream)
        vector, stream = inputs(x, self._names, self.stream)
        return {"x": dict(zip(self._names, vector, strict=True)) if self._by_name else vector,
                "stream": stream}

    def close(self) -> None:
        """Close the client's connections (a later call opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:  # River prints parameters: not the key
        shown = "..." if self.api_key else None
        return (f"{type(self).__name__}(url={self.url!r}, model={self.model!r}, "
                f"api_key={shown!r}, stream={self.stream!r})")

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
