"""A Python client for the streamnorm HTTP service: ``Client`` (sync) and ``AsyncClient``.

Every verb of the HTTP contract (``design.md``) is one method, written once (``_Verbs``) and
sent by either client. What a careful caller would otherwise write by hand:

- **Safe retries**: a learn, a race learn, a rollback and each learn event get an ``event_id``
  (a UUID) unless one is given, and a kept prediction a ``prediction_id``, so a request retried
  after a lost reply is never applied twice (the service answers ``applied: false``).
- **Back-off**: 429 and 503 (a stream behind, Redis down, a busy lease) and connection errors
  are retried up to ``retries`` times (of them at most ``connect_retries`` after finding no
  server), after the server's ``Retry-After`` when it sends one (else 0.1 s doubling), at most
  ``max_wait_s`` each. A fork is not retried (a second one would answer 409).
- **Typed errors** carrying the server's ``detail`` and ``field``: ``NotFound`` (404),
  ``Conflict`` (409), ``Invalid`` (422), ``Denied`` (401/403), ``Unavailable`` (429/503 or no
  connection, once retries are spent), ``ServiceError`` for the rest.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as sn:
        sn.create_model({"name": "demo", "task": "regression", "n_features": 3})
        sn.learn("demo", x=[0.1, 0.2, 0.3], y=1.5, stream="sensor-7")
        sn.predict("demo", x=[0.2, 0.1, 0.0], stream="sensor-7")["prediction"]
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import httpx

__all__ = ["AsyncClient", "Client", "Conflict", "Denied", "Invalid", "NotFound",
           "ServiceError", "Unavailable"]

class ServiceError(Exception):
    """A request the service refused: its HTTP ``status``, ``detail`` and ``field``."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(f"{status}: {detail}" + (f" (field {field})" if field else ""))
        self.status, self.detail, self.field = status, detail, field


class NotFound(ServiceError):
    """404: no such model, race, kept prediction or version."""


class Conflict(ServiceError):
    """409: a name taken by another spec, an id used by another event."""


class Invalid(ServiceError):
    """422: input that does not fit the model, or over a limit (``field`` names it)."""


class Denied(ServiceError):
    """401/403: no key, a wrong key, or a read key for a write."""


class Unavailable(ServiceError):
    """429/503 or no connection, after every retry."""


_ERRORS: dict[int, type[ServiceError]] = {404: NotFound, 409: Conflict, 422: Invalid,
                                          401: Denied, 403: Denied, 429: Unavailable,
                                          503: Unavailable}
_RETRY = frozenset({429, 503})


class _Request(NamedTuple):
    method: str
    path: str
    body: Any = None
    gone_ok: bool = False  # a 404 on a retry means the first try did it (a delete)
    retry: bool = True  # False: not safe to send twice (a fork)


def _error(response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
        detail, field = str(body.get("detail")), body.get("field")
    except (ValueError, AttributeError):
        detail, field = response.text[:200], None
    return _ERRORS.get(response.status_code, ServiceError)(response.status_code, detail, field)


def _outcome(request: _Request, response: httpx.Response, attempt: int) -> Any:
    """The reply's JSON (None when empty), or raise its error."""
    if response.status_code == 404 and request.gone_ok and attempt > 0:
        return None
    if response.is_error:
        raise _error(response)
    try:
        return response.json() if response.content else None
    except ValueError:
        raise ServiceError(response.status_code, "the reply is not JSON: "
                           f"{response.text[:200]!r}") from None


def _wait(response: httpx.Response | None, attempt: int, max_wait_s: float) -> float:
    """Seconds before the next try: the server's ``Retry-After``, else 0.1 s doubling."""
    if response is not None:
        try:
            after = float(response.headers.get("retry-after", ""))
            if math.isfinite(after):
                return min(max(after, 0.0), max_wait_s)
        except ValueError:
            pass
    return min(0.1 * 2 ** attempt, max_wait_s)


def _new_id() -> str:
    return uuid.uuid4().hex


def _clean(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class _Verbs:
    """Every call of the HTTP contract, once; ``_send`` (sync or async) sends it."""

    def _send(self, request: _Request) -> Any:
        raise NotImplementedError

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Any call by its method and path (the verbs below name every one of the contract),
        with the same retries and errors: the reply's JSON, None when it has none."""
        return self._send(_Request(method, path, body))

    # -- models --------------------------------------------------------------------------------
    def create_model(self, spec: dict[str, Any]) -> Any:
        """``POST /models``: the stored spec (the same spec again is not an error)."""
        return self._send(_Request("POST", "/models", spec))

    def get_model(self, name: str) -> Any:
        return self._send(_Request("GET", f"/models/{name}"))

    def list_models(self) -> Any:
        return self._send(_Request("GET", "/models"))

    def delete_model(self, name: str) -> Any:
        return self._send(_Request("DELETE", f"/models/{name}", gone_ok=True))

    def metrics(self, name: str) -> Any:
        return self._send(_Request("GET", f"/models/{name}/metrics"))

    def curve(self, name: str, after: int = 0, limit: int = 1000) -> Any:
        return self._send(_Request("GET", f"/models/{name}/curve?after={after}&limit={limit}"))

    def norms(self) -> Any:
        return self._send(_Request("GET", "/norms"))

    # -- data ----------------------------------------------------------------------------------
    def predict(self, name: str, x: Any = None, *, stream: str | None = None,
                sequence: Any = None, keep: bool = False,
                prediction_id: str | None = None) -> Any:
        """``{"prediction", "version", "proba"}``; with ``keep`` (or a ``prediction_id``) the
        prediction is kept for a delayed label and the reply carries its ``prediction_id``."""
        pid = prediction_id or (_new_id() if keep else None)
        return self._send(_Request("POST", f"/models/{name}/predict", _clean(
            stream=stream, x=x, sequence=sequence, prediction_id=pid)))

    def learn(self, name: str, x: Any = None, y: Any = None, *, stream: str | None = None,
              sequence: Any = None, batch: list[dict[str, Any]] | None = None,
              event_id: str | None = None) -> Any:
        """Test-then-train; ``applied: false`` when the ``event_id`` (made here unless given)
        was applied already."""
        return self._send(_Request("POST", f"/models/{name}/learn", _clean(
            stream=stream, x=x, sequence=sequence, y=y, batch=batch,
            event_id=event_id or _new_id())))

    def label(self, name: str, prediction_id: str, y: Any) -> Any:
        """The delayed label of a kept prediction (applied once per ``prediction_id``)."""
        return self._send(_Request("POST", f"/models/{name}/label",
                                   {"prediction_id": prediction_id, "y": y}))

    def events(self, events: list[dict[str, Any]] | dict[str, Any]) -> Any:
        """``POST /events`` (one event or a list): each learn event without an ``event_id``
        gets one (a label's ``prediction_id`` is its own)."""
        sent = [e if e.get("event_id") is not None or e.get("prediction_id") is not None
                else {**e, "event_id": _new_id()}
                for e in ([events] if isinstance(events, dict) else events)]
        return self._send(_Request("POST", "/events", sent))

    # -- versions ------------------------------------------------------------------------------
    def versions(self, name: str) -> Any:
        return self._send(_Request("GET", f"/models/{name}/versions"))

    def rollback(self, name: str, version: int, event_id: str | None = None) -> Any:
        return self._send(_Request("POST", f"/models/{name}/rollback",
                                   {"version": version, "event_id": event_id or _new_id()}))

    def fork(self, name: str, new: str, version: int | None = None,
             optimizer: dict[str, Any] | None = None) -> Any:
        """A new model ``new`` from ``name``'s state. Not retried: a fork whose reply was
        lost has happened, and a second one would answer 409 (look with ``get_model``)."""
        return self._send(_Request("POST", f"/models/{name}/fork",
                                   _clean(name=new, version=version, optimizer=optimizer),
                                   retry=False))

    # -- races ---------------------------------------------------------------------------------
    def create_race(self, race: dict[str, Any]) -> Any:
        return self._send(_Request("POST", "/races", race))

    def get_race(self, name: str) -> Any:
        return self._send(_Request("GET", f"/races/{name}"))

    def list_races(self) -> Any:
        return self._send(_Request("GET", "/races"))

    def delete_race(self, name: str) -> Any:
        return self._send(_Request("DELETE", f"/races/{name}", gone_ok=True))

    def race_learn(self, name: str, x: Any = None, y: Any = None, *,
                   stream: str | None = None, sequence: Any = None,
                   event_id: str | None = None) -> Any:
        return self._send(_Request("POST", f"/races/{name}/learn", _clean(
            stream=stream, x=x, sequence=sequence, y=y, event_id=event_id or _new_id())))

    def race_predict(self, name: str, x: Any = None, *, stream: str | None = None,
                     sequence: Any = None, keep: bool = False,
                     prediction_id: str | None = None) -> Any:
        pid = prediction_id or (_new_id() if keep else None)
        return self._send(_Request("POST", f"/races/{name}/predict", _clean(
            stream=stream, x=x, sequence=sequence, prediction_id=pid)))

    def race_label(self, name: str, prediction_id: str, y: Any) -> Any:
        return self._send(_Request("POST", f"/races/{name}/label",
                                   {"prediction_id": prediction_id, "y": y}))


class _Settings(NamedTuple):
    retries: int
    max_wait_s: float
    connect_retries: int  # of them, how many may follow a failed connection

    @classmethod
    def of(cls, retries: int, max_wait_s: float, connect_retries: int | None) -> _Settings:
        return cls(retries, max_wait_s, retries if connect_retries is None else connect_retries)


# a request that cannot work however often it is sent (a URL without http://, say)
_HOPELESS = (httpx.UnsupportedProtocol,)


class _Tries:
    """The retry loop's decisions, the same for both clients: after each try, the reply's
    JSON (done), an error to raise, or how long to wait before the next try."""

    def __init__(self, request: _Request, settings: _Settings) -> None:
        self.request, self.settings = request, settings
        self.attempt = self.failed = 0  # tries so far; of them, without a server

    def after(self, response: httpx.Response | None, error: Exception | None
              ) -> tuple[bool, Any, float]:
        """``(done, reply, seconds to wait)`` after a try that got ``response`` or found no
        server (``error``)."""
        attempt, settings = self.attempt, self.settings
        self.attempt += 1
        self.failed += response is None
        last = not self.request.retry or attempt >= settings.retries \
            or self.failed > settings.connect_retries
        if response is None:
            if last:
                raise Unavailable(0, f"no connection: {error}") from error
        elif response.status_code not in _RETRY or last:
            return True, _outcome(self.request, response, attempt), 0.0
        return False, None, _wait(response, attempt, settings.max_wait_s)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class Client(_Verbs):
    """The service over one keep-alive ``httpx.Client`` (a context manager)."""

    def __init__(self, url: str, api_key: str | None = None, *, retries: int = 5,
                 max_wait_s: float = 5.0, timeout_s: float = 30.0,
                 connect_retries: int | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=_headers(api_key),
                                 timeout=timeout_s, transport=transport)
        self.settings = _Settings.of(retries, max_wait_s, connect_retries)
        self._sleep = sleep

    def _send(self, request: _Request) -> Any:
        tries = _Tries(request, self.settings)
        while True:
            response, error = None, None
            try:
                response = self.http.request(request.method, request.path, json=request.body)
            except _HOPELESS:
                raise
            except httpx.TransportError as exc:
                error = exc
            done, reply, wait = tries.after(response, error)
            if done:
                return reply
            self._sleep(wait)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient(_Verbs):
    """The service over one ``httpx.AsyncClient``; every verb returns an awaitable (an async
    context manager)."""

    def __init__(self, url: str, api_key: str | None = None, *, retries: int = 5,
                 max_wait_s: float = 5.0, timeout_s: float = 30.0,
                 connect_retries: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(api_key),
                                      timeout=timeout_s, transport=transport)
        self.settings = _Settings.of(retries, max_wait_s, connect_retries)

    def _send(self, request: _Request) -> Awaitable[Any]:
        return self._sent(request)

    async def _sent(self, request: _Request) -> Any:
        tries = _Tries(request, self.settings)
        while True:
            response, error = None, None
            try:
                response = await self.http.request(request.method, request.path,
                                                   json=request.body)
            except _HOPELESS:
                raise
            except httpx.TransportError as exc:
                error = exc
            done, reply, wait = tries.after(response, error)
            if done:
                return reply
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
