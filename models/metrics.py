"""Prequential (test-then-train) metrics, named as River names them: cumulative and rolling.

Each metric is updated with the prediction made *before* learning from the sample. State is
plain numbers and lists (JSON-ready).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Any

__all__ = ["Metrics"]

_EPS = 1e-15


class _Running:
    """Cumulative and rolling mean of one per-sample score."""

    def __init__(self, window: int) -> None:
        self.total, self.count = 0.0, 0
        self.recent: deque[float] = deque(maxlen=window)
        self.recent_sum = 0.0

    def update(self, value: float) -> None:
        self.total += value
        self.count += 1
        if len(self.recent) == self.recent.maxlen:
            self.recent_sum -= self.recent[0]
        self.recent.append(value)
        # re-sum now and then so float drift cannot accumulate over millions of updates
        if self.count % 4096 == 0:
            self.recent_sum = math.fsum(self.recent)
        else:
            self.recent_sum += value

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def rolling(self) -> float | None:
        return self.recent_sum / len(self.recent) if self.recent else None

    def to_dict(self, recent: bool = True) -> dict[str, Any]:
        out = {"total": self.total, "count": self.count, "recent_sum": self.recent_sum}
        if recent:
            out["recent"] = list(self.recent)
        return out

    def load(self, data: dict[str, Any]) -> None:
        self.total, self.count = float(data["total"]), int(data["count"])
        self.recent.clear()
        self.recent.extend(map(float, data["recent"]))
        self.recent_sum = float(data["recent_sum"])


class Metrics:
    """``MAE`` and ``RMSE`` for regression; ``Accuracy`` and ``LogLoss`` for classification.

    Each is kept cumulatively (``value``) and over the last ``window`` samples (``rolling``);
    a learner updates its own with each prediction made before it learns (``learner.metrics``).

    Examples
    --------
    >>> from models.metrics import Metrics
    >>> metrics = Metrics("regression", window=2)
    >>> for y, prediction in [(1.0, 0.5), (2.0, 2.5), (0.0, 1.0)]:
    ...     metrics.update(y, prediction)
    >>> metrics.report()  # doctest: +NORMALIZE_WHITESPACE
    {'MAE': {'value': 0.6666666666666666, 'rolling': 0.75},
     'RMSE': {'value': 0.7071067811865476, 'rolling': 0.7905694150420949}, 'n': 3}

    Classifiers score the label and the probability given to the true one:

    >>> metrics = Metrics("binary")
    >>> for y, label, p_true in [(1, 1, 0.9), (0, 1, 0.4), (1, 1, 0.8)]:
    ...     metrics.update(y, label, p_true)
    >>> report = metrics.report()
    >>> round(report["Accuracy"]["value"], 4), round(report["LogLoss"]["value"], 4)
    (0.6667, 0.4149)
    """

    def __init__(self, task: str, window: int = 100) -> None:
        self.task, self.window = task, window
        names = ("MAE", "RMSE") if task == "regression" else ("Accuracy", "LogLoss")
        self._scores = {name: _Running(window) for name in names}

    def update(self, y_true: float | int, y_pred: float | int,
               proba_true: float | None = None) -> None:
        """Score one prediction; ``proba_true`` is the probability given to the true label."""
        if self.task == "regression":
            err = float(y_true) - float(y_pred)
            self._scores["MAE"].update(abs(err))
            self._scores["RMSE"].update(err * err)
        else:
            self._scores["Accuracy"].update(1.0 if int(y_true) == int(y_pred) else 0.0)
            p = min(max(float(proba_true if proba_true is not None else 0.0), _EPS), 1.0)
            self._scores["LogLoss"].update(-math.log(p))

    def report(self) -> dict[str, dict[str, float | int | None]]:
        """``{"MAE": {"value", "rolling"}, ..., "n": count}`` as River would print them."""
        out: dict[str, Any] = {}
        for name, run in self._scores.items():
            value, rolling = run.mean(), run.rolling()
            if name == "RMSE":
                value = math.sqrt(value) if value is not None else None
                rolling = math.sqrt(max(rolling, 0.0)) if rolling is not None else None
            out[name] = {"value": value, "rolling": rolling}
        out["n"] = next(iter(self._scores.values())).count
        return out

    def to_dict(self, *, recent: bool = True) -> dict[str, Any]:
        """JSON-ready state; ``recent=False`` leaves out the rolling windows' values (a state
        file stores them as float64 tensors: exact, and ~100x cheaper than JSON floats)."""
        scores = {k: v.to_dict(recent) for k, v in self._scores.items()}
        return {"task": self.task, "window": self.window, "scores": scores}

    def recent(self) -> dict[str, array[float]]:
        """The rolling windows' values per metric (the part ``to_dict(recent=False)`` omits)."""
        return {k: array("d", v.recent) for k, v in self._scores.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        """Inverse of ``to_dict``."""
        metrics = cls(str(data["task"]), int(data["window"]))
        for name, run in metrics._scores.items():
            run.load(data["scores"][name])
        return metrics
