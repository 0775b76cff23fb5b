"""``streamnorm feed``: stream a CSV file or a River dataset into a model or a race of a running
service, so that "try it on my data" is one command.

A client of the HTTP API (``httpx``, one connection), nothing below it. Every row carries the
event id ``feed-<file or dataset>-<row>``, so a re-run applies no row twice, over either
transport: ``http`` (``POST /models/{name}/learn`` or ``/races/{name}/learn``, one row at a
time, each reply waited for) or ``stream`` (``POST /events`` in batches, a worker applies
them; the table waits, bounded, until the updates reach the rows sent). All rows go to one
``stream`` key, in file order: the model's recurrent context runs along the file. (A model
remembers the last ``STREAMNORM_SEEN_LIMIT`` event ids, 100,000 by default: a re-run of a
longer file applies its first rows again.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import client
from .sources import NAME, FeedError, Source, csv_source, river_source

__all__ = ["Client", "FeedError", "Options", "Scaler", "Target", "default_spec", "ensure",
           "feed", "model_table", "race_table", "run"]

RETRIES = 20  # 429 / 503 answers retried (after Retry-After) before giving up on a request


@dataclass
class Options:
    """What ``streamnorm feed`` was asked (see its ``--help``)."""

    csv: Path | None = None
    river: str | None = None
    target: str | None = None
    features: list[str] | None = None
    stream: str = "feed"
    model: str | None = None
    race: str | None = None
    create: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    norms: list[str] | None = None
    via: str = "http"
    batch: int = 100
    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    limit: int | None = None
    wait: float = 60.0
    scale: bool = False


class Client:
    """``service.client.Client`` for the feed: a refusal, or no service, raises ``FeedError``
    with the server's ``{"detail", "field"}``; 429 and 503 are retried after Retry-After."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.api = client.Client(url, api_key, retries=RETRIES, max_wait_s=30.0,
                                 timeout_s=60.0, connect_retries=0)  # nothing there: say so

    def close(self) -> None:
        self.api.close()

    def call(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        """The JSON reply (None for 204, or for 404 when ``missing_ok``)."""
        try:
            return self.api.request(method, path, body)
        except client.NotFound as exc:
            if missing_ok:
                return None
            raise FeedError(f"{method} {path}: {_detail(exc)}") from None
        except client.ServiceError as exc:
            if exc.status == 0:  # no connection, after the retries
                raise FeedError(f"cannot reach {self.api.http.base_url}: {exc.detail}") \
                    from None
            raise FeedError(f"{method} {path}: {_detail(exc)}") from None
        except httpx.HTTPError as exc:  # a URL it cannot use, a reply it cannot read
            raise FeedError(f"cannot reach {self.api.http.base_url}: {exc}") from None


def _detail(exc: client.ServiceError) -> str:
    """The status, the server's error message and the field it names."""
    return f"{exc.status} {exc.detail}" + (f" (field: {exc.field})" if exc.field else "")


@dataclass(frozen=True)
class Target:
    """A model or a race, by name."""

    kind: str  # "model" | "race"
    name: str

    @property
    def path(self) -> str:
        return f"/{self.kind}s/{self.name}"


class Scaler:
    """Online standardization (River's ``StandardScaler``: learn the row, then transform it):
    deterministic, so a re-run sends the same numbers."""

    def __init__(self, width: int) -> None:
        self.n, self.mean, self.m2 = 0, [0.0] * width, [0.0] * width

    def __call__(self, x: list[float]) -> list[float]:
        self.n += 1
        out = []
        for i, v in enumerate(x):
            delta = v - self.mean[i]
            self.mean[i] += delta / self.n
            self.m2[i] += delta * (v - self.mean[i])
            sd = (self.m2[i] / self.n) ** 0.5
            out.append((v - self.mean[i]) / sd if sd > 0 else 0.0)
        return out


def default_spec(source: Source, given: dict[str, Any]) -> dict[str, Any]:
    """A model spec for ``source``: the task from its target (unless ``given`` names one),
    its features, then ``given`` on top."""
    spec = source.scan.task(given.get("task") or source.declared_task)
    spec |= {"cell": "lstm", "hidden_size": 32, "window": 16,
             "optimizer": {"name": "adam", "lr": 0.005}, "seed": 0}
    names = source.features
    if all(NAME.match(n) for n in names) and len(set(names)) == len(names):
        spec["features"] = names
    else:
        spec["n_features"] = len(names)
    if "features" in given or "n_features" in given:
        spec.pop("features", None)
        spec.pop("n_features", None)
    return spec | {k: v for k, v in given.items() if k != "name"}


def ensure(client: Client, target: Target, opts: Options, source: Source,
           console: Console) -> dict[str, Any]:
    """The target's ``GET``, after creating it when missing and ``--create`` was given."""
    info = client.call("GET", target.path, missing_ok=True)
    if info is not None:
        return dict(info)
    if not opts.create:
        raise FeedError(f"no {target.kind} named {target.name!r}: pass --create to create it")
    spec = default_spec(source, opts.spec)
    if target.kind == "model":
        client.call("POST", "/models", {"name": target.name, **spec})
        what = f"model {target.name}"
    else:
        methods = opts.norms or [n["method"] for n in client.call("GET", "/norms")]
        client.call("POST", "/races", {"name": target.name, "spec": spec,
                                       "members": [{"norm": m} for m in methods]})
        what = f"race {target.name} ({', '.join(methods)})"
    console.print(f"created {what}: {json.dumps(spec)}", markup=False)
    return dict(client.call("GET", target.path))


def updates(info: dict[str, Any]) -> int:
    """A model's updates, or the fewest of a race's members."""
    if "members" in info:
        return min((int(m.get("updates") or 0) for m in info["members"]), default=0)
    return int(info.get("updates") or 0)


@dataclass
class Fed:
    """What a feed did: rows sent, rows every target had applied already, member failures."""

    sent: int = 0
    repeated: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # member → its last error


def events(source: Source, opts: Options) -> Iterator[dict[str, Any]]:
    """Each row as a learn body with its event id."""
    scale = Scaler(len(source.features)) if opts.scale else None
    for row, (x, y) in enumerate(source.rows(), start=1):
        yield {"stream": opts.stream, "x": scale(x) if scale else x, "y": y,
               "event_id": f"feed-{source.name}-{row}"}


def feed(client: Client, target: Target, source: Source, opts: Options,
         progress: Progress) -> Fed:
    """Send every row; over ``http`` one learn each, over ``stream`` batches of events."""
    fed = Fed()
    task = progress.add_task(f"{target.kind} {target.name}", total=source.scan.rows)
    batch: list[dict[str, Any]] = []
    for body in events(source, opts):
        if opts.via == "stream":
            batch.append({target.kind: target.name, **body})
            if len(batch) >= opts.batch:
                client.call("POST", "/events", batch)
                progress.advance(task, len(batch))
                batch = []
        else:
            reply = client.call("POST", f"{target.path}/learn", body)
            fed.repeated += _repeated(reply, fed)
            progress.advance(task)
        fed.sent += 1
    if batch:
        client.call("POST", "/events", batch)
        progress.advance(task, len(batch))
    return fed


def _repeated(reply: dict[str, Any], fed: Fed) -> int:
    """1 when the row had been applied already (by every member of a race), else 0."""
    if "results" not in reply:
        return int(reply.get("applied") is False)
    results = reply["results"]
    for member, res in results.items():
        if "applied" not in res:
            fed.failed[member] = str(res.get("detail") or res)
    return int(bool(results) and all(r.get("applied") is False for r in results.values()))


def settle(client: Client, target: Target, want: int, wait: float) -> dict[str, Any]:
    """The target's ``GET`` once its updates reach ``want``, or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        info = dict(client.call("GET", target.path))
        if updates(info) >= want or time.monotonic() >= deadline:
            return info
        time.sleep(0.2)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _metric_names(metrics: dict[str, Any] | None) -> list[str]:
    return [k for k, v in (metrics or {}).items() if isinstance(v, dict)]


def model_table(info: dict[str, Any]) -> Group:
    """A model's version, updates and prequential metrics, cumulative and rolling."""
    table = Table()
    for col in ("metric", "cumulative", "rolling"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    metrics = info.get("metrics") or {}
    for name in _metric_names(metrics):
        table.add_row(name, _fmt(metrics[name].get("value")), _fmt(metrics[name].get("rolling")))
    return Group(Text(f"model {info.get('name')}: version {info.get('version')}, "
                      f"{info.get('updates')} updates", style="bold"), table)


def race_table(info: dict[str, Any], width: int | None = None) -> Group:
    """A race's members by rank, the leader marked, each metric rolling and cumulative (the
    race's own metric first; the others only as far as ``width`` allows)."""
    members = sorted(info.get("members") or [], key=lambda m: m.get("rank") or 1 << 30)
    names = next((_metric_names(m.get("metrics")) for m in members if m.get("metrics")), [])
    names.sort(key=lambda n: n != info.get("metric"))
    while True:
        table = _standings(info, members, names)
        if width is None or len(names) <= 1 or _width(table) <= width:
            break
        names = names[:-1]
    return Group(Text(f"race {info.get('name')}: ranked by rolling {info.get('metric')}, "
                      f"leader {info.get('leader') or '- (none yet)'}", style="bold"), table)


def _standings(info: dict[str, Any], members: list[dict[str, Any]], names: list[str]) -> Table:
    table = Table()
    for col in ("rank", "member", "norm", "updates"):
        table.add_column(col, justify="right" if col in ("rank", "updates") else "left",
                         no_wrap=True)
    for name in names:
        table.add_column(f"{name}\nrolling", justify="right", no_wrap=True)
        table.add_column(f"{name}\ncumulative", justify="right", no_wrap=True)
    for m in members:
        leader = m.get("name") == info.get("leader")
        metrics = m.get("metrics") or {}
        cells = [_fmt(metrics.get(n, {}).get(k)) for n in names for k in ("rolling", "value")]
        table.add_row(_fmt(m.get("rank")), f"{m.get('name')}{' ★ leader' if leader else ''}",
                      str(m.get("norm")), _fmt(m.get("updates")), *cells,
                      style="bold" if leader else None)
    return table


def _width(table: Table) -> int:
    """The columns ``table`` takes unsqueezed."""
    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


class _Rate(ProgressColumn):
    """Rows per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- rows/s" if speed is None else f"{speed:,.0f} rows/s")


def open_source(opts: Options) -> Source:
    if (opts.csv is None) == (opts.river is None):
        raise FeedError("give one source: --csv PATH or --river NAME")
    if opts.csv is not None:
        return csv_source(opts.csv, opts.target, opts.features, opts.limit)
    return river_source(str(opts.river), opts.limit)


def run(opts: Options, console: Console | None = None) -> dict[str, Any]:
    """Feed ``opts``' source to its target and print the final table; the target's ``GET``."""
    # not a terminal (a pipe, a file, a test): wide enough for a race's table
    console = console or Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ
                                 else 160)
    if (opts.model is None) == (opts.race is None):
        raise FeedError("give one target: --model NAME or --race NAME")
    target = Target("model", opts.model) if opts.model else Target("race", str(opts.race))
    source = open_source(opts)
    source.check()
    if source.skipped:
        console.print(f"not numeric, left out: {', '.join(source.skipped)}", markup=False)
    client = Client(opts.url, opts.api_key)
    try:
        before = updates(ensure(client, target, opts, source, console))
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            _Rate(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        with progress:
            fed = feed(client, target, source, opts, progress)
        info = (settle(client, target, max(before, fed.sent), opts.wait)
                if opts.via == "stream" else dict(client.call("GET", target.path)))
    finally:
        client.close()
    if target.kind == "race":
        info.setdefault("name", target.name)
    console.print(model_table(info) if target.kind == "model"
                  else race_table(info, console.width))
    note = f"{fed.sent} rows of {source.name} sent via {opts.via}"
    if opts.via == "http":
        note += f", {fed.sent - fed.repeated} applied, {fed.repeated} applied before"
    console.print(note, markup=False)
    for member, detail in fed.failed.items():
        console.print(f"member {member} failed rows; the last error: {detail}", style="yellow",
                      markup=False)
    if opts.via == "stream" and updates(info) < max(before, fed.sent):
        raise FeedError(f"after {opts.wait:g} s the {target.kind} has {updates(info)} updates "
                        f"of the {fed.sent} rows sent (is a `streamnorm worker` running?)")
    return info
