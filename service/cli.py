"""``streamnorm`` command line: ``serve`` runs the HTTP API with uvicorn, ``worker`` a stream
consumer, ``feed`` streams a CSV file or a River dataset into a model or race (``feed.py``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

if TYPE_CHECKING:
    from .settings import Settings

app = typer.Typer(help="streamnorm: online learning for recurrent models", no_args_is_help=True,
                  rich_markup_mode="markdown")  # docstring lines re-flow to the terminal


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="interface to bind"),
          port: int = typer.Option(8000, help="TCP port"),
          workers: int = typer.Option(1, min=1, help="uvicorn worker processes"),
          log_level: str = typer.Option("info", help="uvicorn log level"),
          access_log: bool = typer.Option(False, help="log every request (costs ~5 % of "
                                                      "throughput)"),
          stream_workers: int | None = typer.Option(
              None, min=0, help="`streamnorm worker` processes to run alongside (default: 1 "
                                "with the embedded Redis, else 0)")) -> None:
    """Run the HTTP API (uvloop + httptools, one torch thread per process). Without
    STREAMNORM_REDIS_URL an embedded Redis is started (AOF in STREAMNORM_DATA_DIR), with one
    stream worker so that POST /events is applied on a first run too. SIGTERM or SIGINT:
    the API finishes its requests and snapshots, then the workers stop, then Redis; exit 0.
    Its children stop too if it is killed outright."""
    from .lifecycle import SUPERVISOR_ENV
    from .settings import Settings

    settings = Settings()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one thread per process: deterministic replay
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    _stop_on_signals()
    # _Stop: a signal during start-up, or re-raised by uvicorn once it is done; either way
    # the children were stopped on the way out of _serve, and this is a clean exit
    with contextlib.suppress(_Stop):
        _serve(settings, host, port, workers, log_level, access_log, stream_workers)


def _serve(settings: Settings, host: str, port: int, workers: int, log_level: str,
           access_log: bool, stream_workers: int | None) -> None:
    """Start Redis and the workers if needed, run uvicorn, stop them in reverse order."""
    import uvicorn

    from .lifecycle import preexec_child, stop_child
    from .redis.embedded import DataDirBusy, EmbeddedRedis

    with ExitStack() as stack:
        if not settings.redis_url:
            try:
                embedded = stack.enter_context(EmbeddedRedis(
                    Path(settings.data_dir) / "redis", binary=settings.redis_server))
            except DataDirBusy as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            os.environ["STREAMNORM_REDIS_URL"] = embedded.url
            typer.echo(f"embedded Redis on {embedded.url} (data in "
                       f"{embedded.data_dir.resolve()})", err=True)
        if stream_workers is None:
            stream_workers = 0 if settings.redis_url else 1
        for k in range(stream_workers):
            child = subprocess.Popen([sys.executable, "-m", "service.cli", "worker",
                                      "--name", f"serve-{os.getpid()}-{k}",
                                      "--log-level", log_level], stdin=subprocess.DEVNULL,
                                     preexec_fn=preexec_child(os.getpid()), process_group=0)
            stack.callback(stop_child, child, settings.shutdown_grace_s)
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="streamnorm-prom-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port,
                    workers=workers, loop="uvloop", http="httptools", log_level=log_level,
                    access_log=access_log, timeout_graceful_shutdown=int(settings.shutdown_grace_s))


class _Stop(Exception):
    """SIGTERM or SIGINT outside uvicorn's own handling."""


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT raise ``_Stop``: during start-up it unwinds what was started; while
    uvicorn runs, uvicorn handles them itself and, once shut down, re-raises them here, where
    they no longer kill the process before its children are stopped."""
    import signal

    def stop(*_: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):  # once: the ordered stop is not cut
            signal.signal(sig, signal.SIG_IGN)       # short (SIGKILL still can)
        raise _Stop

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


@app.command()
def worker(name: str | None = typer.Option(None, help="consumer name (default: host-pid-random)"),
           log_level: str = typer.Option("info", help="log level")) -> None:
    """Consume the event stream partitions (needs STREAMNORM_REDIS_URL: workers and API
    processes must share one Redis). SIGTERM finishes the batch in hand and stops."""
    import asyncio
    import logging
    import signal

    import uvloop

    from .settings import Settings

    def early_exit(*_: object) -> None:  # stopped while starting: nothing held yet
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early_exit)  # until the event loop takes over
    settings = Settings()
    if not settings.redis_url:
        raise typer.BadParameter("set STREAMNORM_REDIS_URL to the Redis the API uses",
                                 param_hint="STREAMNORM_REDIS_URL")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        import gc

        import torch

        from .api.scrape import serve_metrics
        from .redis.connect import close, connect
        from .worker import Worker

        torch.set_num_threads(1)
        redis = connect(settings)
        consumer = Worker(settings, redis, name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        if settings.worker_metrics_port:
            serve_metrics(settings.worker_metrics_port, settings)  # behind the read keys
        gc.collect()
        gc.freeze()  # as in the API process: no full collections of the start-up heap
        gc.set_threshold(20_000, 20, 100)
        logging.getLogger("streamnorm.worker").info("worker %s started", consumer.name)
        try:
            await consumer.run()
        finally:
            await close(redis)

    uvloop.run(main())


@app.command()
def feed(csv: str | None = typer.Option(None, help="a CSV file with a header row"),
         river: str | None = typer.Option(None, help="a River dataset (TrumpApproval, Phishing, "
                                                     "Bananas, ...): pip install "
                                                     "'streamnorm[river]'"),
         target: str | None = typer.Option(None, help="CSV: the target column (default: the "
                                                      "last)"),
         features: str | None = typer.Option(None, help="CSV: the feature columns, a,b,c "
                                                        "(default: the other numeric ones)"),
         stream: str = typer.Option("feed", help="the stream key every row goes to"),
         model: str | None = typer.Option(None, help="feed this model"),
         race: str | None = typer.Option(None, help="or this race"),
         create: bool = typer.Option(False, help="create the model or race if missing"),
         spec: str | None = typer.Option(None, help="with --create: spec fields as JSON "
                                                    "(default: inferred from the data)"),
         norms: str | None = typer.Option(None, help="with --create --race: the members' "
                                                     "norms, a,b,c (default: all)"),
         via: Literal["http", "stream"] = typer.Option(
             "http", help="learn over HTTP, or POST /events for a worker"),
         batch: int = typer.Option(100, min=1, max=1000, help="--via stream: events per POST"),
         url: str = typer.Option("http://127.0.0.1:8000", help="the service"),
         api_key: str | None = typer.Option(None, envvar="STREAMNORM_API_KEY",
                                            help="an admin key, if the service needs one"),
         limit: int | None = typer.Option(None, min=1, help="feed the first N rows only"),
         wait: float = typer.Option(60.0, min=0, help="--via stream: seconds to wait for "
                                                      "the worker to apply the rows"),
         scale: bool = typer.Option(False, help="standardize each feature online (as River's "
                                                "StandardScaler) before sending")) -> None:
    """Stream a CSV file or a River dataset into a model or a race, then print its metrics.
    Each row's event id is feed-FILE-ROW: a re-run applies nothing twice."""
    import json

    from .feed import FeedError, Options, run

    def names(text: str | None) -> list[str] | None:
        return [n.strip() for n in text.split(",") if n.strip()] if text else None

    try:
        given = json.loads(spec) if spec else {}
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--spec") from None
    if not isinstance(given, dict):
        raise typer.BadParameter("a JSON object of spec fields", param_hint="--spec")
    try:
        run(Options(Path(csv) if csv else None, river, target, names(features), stream, model,
                    race, create, given, names(norms), via, batch, url, api_key, limit, wait,
                    scale))
    except FeedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as v

    typer.echo(v("streamnorm"))


if __name__ == "__main__":
    app()
