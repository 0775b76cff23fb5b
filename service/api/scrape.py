"""A stream worker's metrics port: prometheus-client's WSGI app behind the API's read keys."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from ..settings import Settings
from .auth import Access, AccessDenied, authorize

__all__ = ["serve_metrics"]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:  # scrapes are not worth a log line each
        pass


def serve_metrics(port: int, settings: Settings, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve this process's metrics on ``port`` (a stream worker's), in a daemon thread, behind
    the same read keys as the API's ``/metrics``."""
    metrics_app = make_wsgi_app()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            authorize(settings, environ.get("HTTP_AUTHORIZATION", ""), Access.READ)
        except AccessDenied as exc:
            body = json.dumps({"detail": exc.detail, "field": "authorization"}).encode()
            status = "401 Unauthorized" if exc.status == 401 else "403 Forbidden"
            start_response(status, [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body))),
                                    ("WWW-Authenticate", "Bearer")])
            return [body]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(addr, port, guarded, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
