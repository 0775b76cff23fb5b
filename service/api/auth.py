"""Who may do what: API keys in two roles, checked the same way by every door.

With no key configured the service is open (a first run on one's own machine). Once any key is
set (``STREAMNORM_API_KEYS`` admin keys, ``STREAMNORM_READ_KEYS`` read-only keys), every route
but ``/healthz``, ``/readyz`` and the dashboard's page and files (``/``, ``/static/…``: no data;
the page sends the key its user types on every read) needs ``Authorization: Bearer <key>``:
- **read** (either kind of key): predictions, every ``GET`` (models, metrics, norms, the OpenAPI
  document and ``/docs``) and Prometheus ``/metrics`` (model names are in its labels), also on
  a stream worker's metrics port;
- **write** (admin keys only): creating and deleting models, learning, keeping a prediction
  (``predict`` with ``keep``/``prediction_id``: it moves the stream on) and labelling it,
  ``POST /events``, and
  ``GET /models/{name}/state`` (weights, optimizer moments, stream names and their last inputs).
Keys are compared in constant time against every configured key (no early exit).
"""

from __future__ import annotations

import enum
import hmac

from ..settings import Settings

__all__ = ["Access", "AccessDenied", "authorize", "keys_configured"]


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


class AccessDenied(Exception):
    """401 (no usable key) or 403 (a key that is not valid, or only a read key for a write)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def keys_configured(settings: Settings) -> bool:
    return bool(settings.api_keys or settings.read_keys)


def authorize(settings: Settings, header: str, need: Access) -> None:
    """Check an ``Authorization`` header for ``need``; raise ``AccessDenied`` otherwise."""
    if not keys_configured(settings):
        return
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AccessDenied(401, "this endpoint needs 'Authorization: Bearer <api key>'")
    given_b = given.strip().encode()
    admin = read = False
    for key in settings.api_keys:  # every key is compared, whichever matches
        admin |= hmac.compare_digest(given_b, key.encode())
    for key in settings.read_keys:
        read |= hmac.compare_digest(given_b, key.encode())
    if not (admin or read):
        raise AccessDenied(403, "the API key is not valid")
    if need is Access.WRITE and not admin:
        raise AccessDenied(403, "this key may only read; this endpoint needs an admin key "
                                "(STREAMNORM_API_KEYS)")
