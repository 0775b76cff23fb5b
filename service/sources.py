"""Rows for ``streamnorm feed``: a CSV file or one of River's bundled datasets, read twice.

The first pass (``scan``) checks every row and learns what the target is (numbers, 0/1, class
labels), so a bad value at row 90,000 stops the feed before anything was sent, and a model can
be created with the right task and ``n_classes``; the second (``Source.rows``) yields each row
as ``(x, y)``: ``x`` a list of floats in the order of ``Source.features``, ``y`` a float
(regression), 0/1 (binary) or a class index (multiclass).
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FeedError", "Scan", "Source", "csv_source", "river_source"]

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a feature name a model spec accepts
MAX_CLASSES_GUESSED = 20  # whole-number targets with more distinct values are a regression


class FeedError(Exception):
    """Something the user can fix: a bad file, a missing column, a refused request."""


@dataclass
class Scan:
    """What the first pass learned: the row count and the kind of target."""

    rows: int = 0
    labels: list[str] | None = None  # class labels (not numbers), sorted: index = position
    whole: set[int] = field(default_factory=set)  # distinct int targets (bool: 0/1)
    floats: bool = False  # a target written as a float (1.5, 2.0): a regression

    def task(self, declared: str | None = None) -> dict[str, Any]:
        """``{"task": ...}`` plus ``n_classes`` for multiclass: regression for numbers, binary
        for 0/1 or two labels, multiclass for labels or a few whole numbers ≥ 0."""
        if self.labels is not None:
            if declared == "regression":
                raise FeedError("the target holds labels, not numbers: it cannot be a regression")
            if len(self.labels) <= 2 and declared != "multiclass":
                return {"task": "binary"}
            return {"task": "multiclass", "n_classes": max(len(self.labels), 2)}
        binary = self.whole <= {0, 1} and not self.floats
        few = (not self.floats and len(self.whole) <= MAX_CLASSES_GUESSED
               and min(self.whole, default=0) >= 0)
        if declared is None:
            declared = "binary" if binary else "multiclass" if few else "regression"
        if declared == "multiclass":
            return {"task": "multiclass", "n_classes": max(max(self.whole, default=1) + 1, 2)}
        return {"task": declared}


Row = tuple[list[float], Any]


@dataclass
class Source:
    """A named table of rows; ``name`` goes into every event id (``feed-<name>-<row>``)."""

    name: str
    features: list[str]
    read: Callable[[], Iterator[Row]]  # raw rows: x numbers, y as read (str, number or bool)
    limit: int | None = None
    declared_task: str | None = None  # River's, when the dataset says
    skipped: list[str] = field(default_factory=list)  # columns left out: not numeric
    scan: Scan = field(default_factory=Scan)

    def check(self) -> Scan:
        """The first pass: every row read and checked, the target's kind learned."""
        scan, kinds = Scan(), set()
        labels: set[str] = set()
        for i, (_, y) in enumerate(itertools.islice(self.read(), self.limit), start=1):
            scan.rows = i
            if isinstance(y, str):
                kinds.add("label")
                labels.add(y)
            elif isinstance(y, int):  # bool included: 0/1
                kinds.add("number")
                scan.whole.add(int(y))
            else:
                kinds.add("number")
                scan.floats = True
        if kinds == {"label", "number"}:
            raise FeedError(f"the target of {self.name} mixes numbers and labels")
        if "label" in kinds:
            scan.labels = sorted(labels)
        if scan.rows == 0:
            raise FeedError(f"{self.name} has no rows")
        self.scan = scan
        return scan

    def rows(self) -> Iterator[Row]:
        """The second pass: ``(x, y)`` with y a number; labels become their index."""
        index = {label: i for i, label in enumerate(self.scan.labels or [])}
        for x, y in itertools.islice(self.read(), self.limit):
            yield x, index[y] if isinstance(y, str) else int(y) if isinstance(y, bool) else y


def _number(text: str) -> int | float | None:
    """``text`` as a finite number (an int when written as one), else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _label(text: str) -> str | bool:
    low = text.strip().lower()
    return low == "true" if low in ("true", "false") else text.strip()


def csv_source(path: Path, target: str | None = None, features: list[str] | None = None,
               limit: int | None = None) -> Source:
    """A CSV file with a header row. ``target`` defaults to the last column; the features to
    every other column holding a number in the first data row (in header order)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            first = next(reader, None)
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FeedError(f"{path} is not a CSV file: {exc}") from None
    if not header or not any(header):
        raise FeedError(f"{path} is empty: a CSV file with a header row is expected")
    if first is None:
        raise FeedError(f"{path} has a header and no rows")
    if len(set(header)) != len(header):
        raise FeedError(f"{path}: the header names a column twice")
    target = target or header[-1]
    for name in [target, *(features or [])]:
        if name not in header:
            raise FeedError(f"{path} has no column {name!r} (columns: {', '.join(header)})")
    skipped: list[str] = []
    if features is None:
        features = [h for i, h in enumerate(header) if h != target and i < len(first)
                    and _number(first[i]) is not None]
        skipped = [h for h in header if h not in features and h != target]
    if target in features:
        raise FeedError(f"the target column {target!r} cannot also be a feature")
    if not features:
        raise FeedError(f"{path} has no numeric column besides the target {target!r}")
    cols, y_col = [header.index(h) for h in features], header.index(target)

    def read() -> Iterator[Row]:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader)
            labels: bool | None = None  # whether the target holds labels: from the first row
            for row_no, row in enumerate(reader, start=1):
                if not row:
                    continue  # a blank line
                where = f"{path.name}: row {row_no} (line {reader.line_num})"
                if len(row) != len(header):
                    raise FeedError(f"{where} has {len(row)} values, the header {len(header)}")
                x = []
                for i, name in zip(cols, features, strict=True):
                    value = _number(row[i])
                    if value is None:
                        raise FeedError(f"{where}, column {name!r}: {row[i]!r} is not a "
                                        "finite number")
                    x.append(float(value))
                y = _number(row[y_col])
                labels = (y is None) if labels is None else labels
                if labels:
                    if not row[y_col].strip():
                        raise FeedError(f"{where}, column {target!r}: the target is empty")
                    yield x, _label(row[y_col])
                elif y is None:
                    raise FeedError(f"{where}, column {target!r}: {row[y_col]!r} is not a "
                                    "finite number (the first row's target is a number)")
                else:
                    yield x, y

    return Source(_id_part(path.name), list(features), read, limit, skipped=skipped)


_TASKS = {"Regression": "regression", "Binary classification": "binary",
          "Multi-class classification": "multiclass"}


def river_source(name: str, limit: int | None = None) -> Source:
    """``river.datasets.<name>()``: the features are the first sample's numeric (int, float,
    bool, datetime as a Unix time) keys, in its order; the task is the one River declares."""
    try:
        from river import datasets
    except ImportError:
        raise FeedError("River is not installed: pip install 'streamnorm[river]'") from None
    cls = getattr(datasets, name, None)
    if not isinstance(cls, type) or name.startswith("_"):
        bundled = [n for n in datasets.__all__ if isinstance(getattr(datasets, n), type)
                   and not issubclass(getattr(datasets, n), datasets.base.RemoteDataset)
                   and getattr(getattr(datasets, n)(), "task", "") in _TASKS]
        raise FeedError(f"River has no dataset {name!r} (bundled: {', '.join(sorted(bundled))})")
    dataset = cls()
    if isinstance(dataset, datasets.base.RemoteDataset) and not dataset.is_downloaded:
        raise FeedError(f"River's {name} is not bundled: it is downloaded on first use; fetch "
                        f"it once with: python -c 'from river import datasets; "
                        f"datasets.{name}().download()'")
    task = _TASKS.get(getattr(dataset, "task", ""))
    if task is None:
        raise FeedError(f"River's {name} is a {dataset.task} dataset: feed takes regression, "
                        "binary and multi-class ones")
    first, _ = next(iter(dataset))
    features = [k for k, v in first.items() if _river_value(v) is not None]
    skipped = [str(k) for k in first if k not in features]
    if not features:
        raise FeedError(f"River's {name} has no numeric feature")

    def read() -> Iterator[Row]:
        for row_no, (x, y) in enumerate(dataset, start=1):
            values = [_river_value(x.get(k)) for k in features]
            for k, v in zip(features, values, strict=True):
                if v is None:
                    raise FeedError(f"{name}: row {row_no}, feature {k!r}: {x.get(k)!r} is "
                                    "not a number")
            yield values, y  # type: ignore[misc]  # checked above

    return Source(name, [str(k) for k in features], read, limit, declared_task=task,
                  skipped=skipped)


def _river_value(v: Any) -> float | None:
    if isinstance(v, dt.datetime):  # a naive one as UTC: the same number on every machine
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(v, bool | int | float) and math.isfinite(v):
        return float(v)
    return None


def _id_part(text: str) -> str:
    """``text`` as it may appear in an event id (printable ASCII, no space), at most 80 chars."""
    return re.sub(r"[^A-Za-z0-9_.@:-]", "_", text)[:80] or "data"
