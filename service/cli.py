"""``streamnorm`` command line: ``serve`` runs the HTTP API with uvicorn, ``worker`` a stream
consumer."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import typer

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
    stream worker so that POST /events is applied on a first run too."""
    import uvicorn

    from .embedded import EmbeddedRedis
    from .settings import Settings

    settings = Settings()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one thread per process: deterministic replay
    with ExitStack() as stack:
        if not settings.redis_url:
            embedded = stack.enter_context(EmbeddedRedis(
                Path(settings.data_dir) / "redis", binary=settings.redis_server))
            os.environ["STREAMNORM_REDIS_URL"] = embedded.url
            typer.echo(f"embedded Redis on {embedded.url} (data in "
                       f"{embedded.data_dir.resolve()})", err=True)
        if stream_workers is None:
            stream_workers = 0 if settings.redis_url else 1
        for k in range(stream_workers):
            child = subprocess.Popen([sys.executable, "-m", "service.cli", "worker",
                                      "--name", f"serve-{os.getpid()}-{k}",
                                      "--log-level", log_level], stdin=subprocess.DEVNULL)
            stack.callback(_stop, child)
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="streamnorm-prom-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        uvicorn.run("service.app:create_app", factory=True, host=host, port=port,
                    workers=workers, loop="uvloop", http="httptools", log_level=log_level,
                    access_log=access_log)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker finishes its batch), then SIGKILL if it hangs."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


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

    signal.signal(signal.SIGTERM, early_exit)  # until the event loop takes over
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
        from prometheus_client import start_http_server

        from .connect import close, connect
        from .worker import Worker

        torch.set_num_threads(1)
        redis = connect(settings)
        consumer = Worker(settings, redis, name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
        if settings.worker_metrics_port:
            start_http_server(settings.worker_metrics_port)
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
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as v

    typer.echo(v("streamnorm"))


if __name__ == "__main__":
    app()
