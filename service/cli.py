"""``streamnorm`` command line: ``serve`` runs the HTTP API with uvicorn."""

from __future__ import annotations

import typer

app = typer.Typer(help="streamnorm: online learning for recurrent models", no_args_is_help=True)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="interface to bind"),
          port: int = typer.Option(8000, help="TCP port"),
          workers: int = typer.Option(1, min=1, help="uvicorn worker processes")) -> None:
    """Run the HTTP API (one torch thread per process)."""
    import torch
    import uvicorn

    torch.set_num_threads(1)
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as v

    typer.echo(v("streamnorm"))


if __name__ == "__main__":
    app()
