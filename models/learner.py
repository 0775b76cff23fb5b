"""``OnlineLearner``: test-then-train on one sample at a time, over named streams.

``learn_one`` runs **one** training forward over the stream's window (its stored start state and
last inputs, then ``x``); that forward's output is both the returned (prequential) prediction and
the loss input. Then backward through the window, one optimizer step, the normalization
statistics' step notification, and ``x`` joins the context. ``predict_one`` runs exactly that
forward on a copy of the statistics, so it returns the same prediction and changes nothing.
Inputs are validated before anything changes; a step that would leave any weight, optimizer
moment or statistic non-finite is rolled back and reported (``UpdateRejected``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .cells import skip_init
from .context import StreamContext
from .fast import lstm_kernel
from .fast.flat import FlatState
from .fast.optim import FlatOptimizer
from .inputs import InvalidInput, to_features, to_sequence, to_target
from .kept import KeptPrediction
from .metrics import Metrics
from .network import Network
from .persist import learner_from_bytes, learner_to_bytes, load_into
from .spec import ModelSpec

__all__ = ["LearnResult", "OnlineLearner", "StreamContext", "UpdateRejected"]

DEFAULT_STREAM = "default"


class UpdateRejected(RuntimeError):
    """The update would have made the model non-finite; it was rolled back."""


@dataclass(frozen=True)
class LearnResult:
    """What one ``learn_one`` / ``learn_many`` sample returns: the prediction made before the
    update, the loss it scored, and class probabilities for classifiers."""

    prediction: float | int
    loss: float
    proba: dict[int, float] | None = None


class OnlineLearner:
    """A model learning from a stream of samples (see the module docstring).

    Weights, optimizer state and normalization statistics are shared by every stream; each
    stream (a sensor, a user: any string) keeps its own recurrent context. ``learner.metrics``
    scores every prediction made before learning (prequential, as River's
    ``evaluate.progressive_val_score``).

    Examples
    --------
    >>> import math
    >>> from models import ModelSpec, OnlineLearner
    >>> spec = ModelSpec(name="wave", task="regression", n_features=1, hidden_size=8,
    ...                  window=4, norm="layer", optimizer={"name": "adam", "lr": 0.05}, seed=0)
    >>> learner = OnlineLearner(spec)
    >>> for t in range(200):  # the next value of a sine wave, one sample at a time
    ...     _ = learner.learn_one([math.sin(0.3 * t)], math.sin(0.3 * (t + 1)), stream="wave")
    >>> report = learner.metrics.report()
    >>> report["n"], report["MAE"]["rolling"] < report["MAE"]["value"]  # it got better
    (200, True)
    >>> learner.updates, learner.streams
    (200, ['wave'])
    """

    def __init__(self, spec: ModelSpec | dict[str, Any], *, metrics_window: int = 100,
                 _blank: bool = False) -> None:
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
        self.spec_json = self.spec.model_dump_json()  # canonical: what a state's header holds
        if _blank:  # weights are about to be loaded: skip the seeded initialisation
            with skip_init():
                self.net = Network(self.spec)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.spec.seed)
                self.net = Network(self.spec)
        self.net.train()
        self.optimizer = FlatOptimizer(self.spec.optimizer,
                                       sum(p.numel() for p in self.net.parameters()))
        self.flat = FlatState(self.net, self.optimizer)  # binds the optimizer to it
        self._notify = [m for m in self.net.modules() if callable(getattr(m, "on_optimizer_step",
                                                                           None))]
        self.metrics = Metrics(self.spec.task, metrics_window)
        self.contexts: dict[str, StreamContext] = {}
        self.updates = 0  # optimizer steps taken
        self.samples = 0  # samples learned (learn_many counts each)

    # -- public API ----------------------------------------------------------------------------
    def predict_one(self, x: Any = None, *, stream: str = DEFAULT_STREAM,
                    sequence: Any = None) -> float | int:
        """The prediction ``learn_one`` would return for ``x`` now; changes nothing.

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=2,
        ...                                   hidden_size=8, window=4, seed=0))
        >>> _ = learner.learn_one([0.5, -1.0], 1.0, stream="sensor-7")
        >>> before = learner.to_bytes()
        >>> prediction = learner.predict_one([0.1, 0.2], stream="sensor-7")
        >>> learner.to_bytes() == before
        True
        >>> learner.learn_one([0.1, 0.2], 0.3, stream="sensor-7").prediction == prediction
        True
        """
        window, state, _, capture = self._window(x, stream, sequence)
        return self.net.decode(self._predict_logits(window, state, capture))[0][0]

    def predict_proba_one(self, x: Any = None, *, stream: str = DEFAULT_STREAM,
                          sequence: Any = None) -> dict[int, float]:
        """Class probabilities (label → probability) for classifiers; changes nothing.

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="multiclass", n_classes=3,
        ...                                   n_features=2, hidden_size=8, seed=0))
        >>> proba = learner.predict_proba_one([0.2, 0.1], stream="user-1")
        >>> sorted(proba), round(sum(proba.values()), 6)
        ([0, 1, 2], 1.0)
        >>> learner.predict_one([0.2, 0.1], stream="user-1") == max(proba, key=proba.get)
        True
        """
        if self.spec.task == "regression":
            raise TypeError("predict_proba_one is for classifiers; this model does regression")
        window, state, _, capture = self._window(x, stream, sequence)
        proba = self.net.decode(self._predict_logits(window, state, capture))[1]
        assert proba is not None
        return dict(enumerate(proba[0]))

    def learn_one(self, x: Any = None, y: Any = None, *, stream: str = DEFAULT_STREAM,
                  sequence: Any = None) -> LearnResult:
        """Test-then-train on one sample (stream mode with ``x``, or sequence mode).

        Returns the prediction made before the update (what prequential metrics score) and
        the loss it scored; ``x`` joins the stream's context.

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=2,
        ...                                   hidden_size=8, window=4, seed=0))
        >>> result = learner.learn_one([0.5, -1.0], 1.0, stream="sensor-7")
        >>> type(result.prediction).__name__, result.loss > 0, learner.updates
        ('float', True, 1)
        >>> learner.streams, learner.contexts["sensor-7"].inputs.tolist()
        (['sensor-7'], [[0.5, -1.0]])

        Sequence mode: the whole sequence is one sample, and no context is kept.

        >>> _ = learner.learn_one(sequence=[[0.1, 0.2], [0.3, 0.4]], y=0.5)
        >>> learner.updates, learner.streams
        (2, ['sensor-7'])
        """
        window, state, ctx_key, capture = self._window(x, stream, sequence)
        target = to_target(y, self.spec)
        self.flat.save_point()
        out = self.net(window, state, capture=capture)
        loss = self.net.loss(out.logits, self._target_tensor([target]))
        self._step(loss)
        result = self._score(out.logits, [target], loss)[0]
        if ctx_key is not None:
            self._move_on(ctx_key, window, out.captured if capture is not None else state)
        return result

    def keep_one(self, x: Any = None, *, stream: str = DEFAULT_STREAM, sequence: Any = None
                 ) -> tuple[float | int, dict[int, float] | None, KeptPrediction]:
        """The prediction ``predict_one`` gives (and class probabilities), with what a label
        arriving later needs to train on exactly this window (``learn_kept``). In stream mode
        ``x`` joins the stream's context (the input has happened); nothing else changes.

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=1,
        ...                                   hidden_size=8, window=4, seed=0))
        >>> prediction, _, kept = learner.keep_one([0.5], stream="s")
        >>> learner.updates, learner.contexts["s"].inputs.tolist()  # x joined the context
        (0, [[0.5]])
        >>> result = learner.learn_kept(kept, 1.0)  # the label, later
        >>> result.prediction == prediction, learner.updates
        (True, 1)
        """
        window, state, ctx_key, capture = self._window(x, stream, sequence)
        self.flat.save_point()
        try:
            with lstm_kernel.forward_only():
                out = self.net(window, state, capture=capture)
        finally:
            self.flat.rollback()
        logits = out.logits.detach().clone()
        if not bool(torch.isfinite(logits).all()):  # refused before anything moves
            raise InvalidInput("x", "the model's output for this input is not finite (inputs "
                                    "far outside the range it has learned from?)")
        kept = KeptPrediction(window[:, 0].detach().clone(),
                              None if state is None else tuple(s.detach().clone() for s in state),
                              capture, logits)
        if ctx_key is not None:
            self._move_on(ctx_key, window, out.captured if capture is not None else state)
        preds, probas = self.net.decode(logits)
        return preds[0], None if probas is None else dict(enumerate(probas[0])), kept

    def learn_kept(self, kept: KeptPrediction, y: Any) -> LearnResult:
        """Train on a kept prediction's window with today's weights (the update ``learn_one``
        would make on that window and start state now), and score the kept prediction: the
        result's prediction and loss are the kept one's. No stream context changes."""
        target = to_target(y, self.spec)
        self.flat.save_point()
        out = self.net(kept.window.unsqueeze(1), kept.state, capture=kept.capture)
        self._step(self.net.loss(out.logits, self._target_tensor([target])))
        return self._score(kept.logits, [target], None)[0]

    def kept_from_bytes(self, data: bytes, max_steps: int = 10_000) -> KeptPrediction:
        """A ``KeptPrediction.to_bytes`` record, checked to fit this learner's model."""
        return KeptPrediction.from_bytes(data, self.spec, self.net.stack.n_state, max_steps)

    def learn_many(self, sequences: Sequence[Any], ys: Sequence[Any]) -> list[LearnResult]:
        """Several sequence-mode samples, one optimizer step (River's ``learn_many``).

        Sequences of equal length run as one batch (batch statistics for the batch-norm
        baselines); the loss is the mean over all samples.
        """
        if isinstance(sequences, str | bytes) or not isinstance(sequences, Sequence):
            raise InvalidInput("sequences", "must be a list of sequences")
        if not isinstance(ys, Sequence) or len(ys) != len(sequences) or not sequences:
            raise InvalidInput("y", "must be a list with one target per sequence")
        seqs = [to_sequence(s, self.spec, f"sequences[{i}]") for i, s in enumerate(sequences)]
        targets = [to_target(y, self.spec, f"y[{i}]") for i, y in enumerate(ys)]
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            groups.setdefault(s.shape[0], []).append(i)
        self.flat.save_point()
        total: Tensor | None = None
        logits_by_index: dict[int, Tensor] = {}
        for idx in groups.values():
            batch = torch.stack([seqs[i] for i in idx], 1)
            out = self.net(batch, None)
            part = self.net.loss(out.logits, self._target_tensor([targets[i] for i in idx]))
            part = part * (len(idx) / len(seqs))
            total = part if total is None else total + part
            for row, i in enumerate(idx):
                logits_by_index[i] = out.logits[row:row + 1]
        assert total is not None
        self._step(total, samples=len(seqs))
        logits = torch.cat([logits_by_index[i] for i in range(len(seqs))])
        return self._score(logits, targets, None)

    @property
    def streams(self) -> list[str]:
        """Names of the streams with a stored context."""
        return sorted(self.contexts)

    # -- internals -----------------------------------------------------------------------------
    def _window(self, x: Any, stream: str, sequence: Any
                ) -> tuple[Tensor, tuple[Tensor, ...] | None, str | None, int | None]:
        """The window ``[T, 1, I]``, its start state, the context key (``None``: sequence), and
        the step whose state starts the next window (0 once the window is full, else ``None``).
        """
        if sequence is not None:
            if x is not None:
                raise InvalidInput("sequence", "give either x (stream mode) or sequence")
            return to_sequence(sequence, self.spec).unsqueeze(1), None, None, None
        if x is None:
            raise InvalidInput("x", "is required (or give sequence)")
        if not isinstance(stream, str) or not stream:
            raise InvalidInput("stream", "must be a non-empty string")
        row = torch.tensor([to_features(x, self.spec)], dtype=torch.float32)
        ctx = self.contexts.get(stream)
        window = row if ctx is None else torch.cat([ctx.inputs, row])
        capture = 0 if window.shape[0] == self.spec.window else None
        return window.unsqueeze(1), None if ctx is None else ctx.state, stream, capture

    def _move_on(self, stream: str, window: Tensor, state: tuple[Tensor, ...] | None) -> None:
        """The stream's context after ``window`` (its last ``window − 1`` inputs, and the state
        at their start)."""
        keep = self.spec.window - 1
        self.contexts[stream] = StreamContext(
            None if state is None else tuple(s.detach() for s in state),
            window[max(0, window.shape[0] - keep):, 0].detach().clone())

    def _target_tensor(self, targets: list[float | int]) -> Tensor:
        if self.spec.task == "multiclass":
            return torch.tensor(targets, dtype=torch.int64)
        return torch.tensor(targets, dtype=torch.float32)

    def _predict_logits(self, window: Tensor, state: tuple[Tensor, ...] | None,
                        capture: int | None) -> Tensor:
        """The training forward ``learn_one`` would run (same capture, so the very same
        kernels), then every statistic put back from the flat save point."""
        self.flat.save_point()
        try:
            with lstm_kernel.forward_only():
                return self.net(window, state, capture=capture).logits.detach()
        finally:
            self.flat.rollback()

    def _rollback(self) -> None:
        self.flat.grad.zero_()
        self.flat.rollback()

    def _step(self, loss: Tensor, samples: int = 1) -> None:
        """Backward, clip, step, notify; roll everything back if anything became non-finite."""
        try:
            loss.backward()
            clip = self.spec.optimizer.clip
            if clip is not None:  # as clip_grad_norm_, on the flat gradient buffer
                coef = clip / (float(torch.linalg.vector_norm(self.flat.grad)) + 1e-6)
                if coef < 1.0:
                    self.flat.grad.mul_(coef)
            self.optimizer.step()
            self.flat.grad.zero_()
            # weights, statistics and optimizer moments: one check over the flat buffer
            finite = bool(torch.isfinite(loss.detach())) and self.flat.finite()
        except Exception:
            self._rollback()
            raise
        if not finite:
            self._rollback()
            raise UpdateRejected("the update would make the model non-finite; rolled back")
        for site in self._notify:
            site.on_optimizer_step()
        self.updates += 1
        self.samples += samples

    def _score(self, logits: Tensor, targets: list[float | int], loss: Tensor | None
               ) -> list[LearnResult]:
        preds, probas = self.net.decode(logits.detach())
        results = []
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            proba = dict(enumerate(probas[i])) if probas is not None else None
            p_true = proba[int(target)] if proba is not None else None
            self.metrics.update(target, pred, p_true)
            sample_loss = float(loss.detach()) if loss is not None else float(self.net.loss(
                logits[i:i + 1].detach(), self._target_tensor([target])))
            results.append(LearnResult(pred, sample_loss, proba))
        return results

    def with_spec(self, spec: ModelSpec) -> OnlineLearner:
        """A copy of this learner under another name and optimizer settings (a fork): the same
        weights, optimizer moments, statistics, contexts, counters and metrics. Any other spec
        change, or another kind of optimizer (other moments), raises ``InvalidInput``."""
        same = {**self.spec.model_dump(), "name": spec.name, "optimizer": spec.optimizer}
        if ModelSpec.model_validate(same) != spec:
            raise InvalidInput("spec", "a fork may change only its name and optimizer settings")
        other = OnlineLearner.blank(spec)
        if other.flat.layout_json != self.flat.layout_json:
            raise InvalidInput("optimizer.name", "a fork keeps its optimizer's kind (its "
                                                 "moments carry over); change lr or clip")
        with torch.no_grad():
            for code, flat in other.flat.flats.items():
                flat.copy_(self.flat.flats[code])
        other.contexts = {s: StreamContext(None if c.state is None else tuple(
            t.clone() for t in c.state), c.inputs.clone()) for s, c in self.contexts.items()}
        other.metrics = copy.deepcopy(self.metrics)
        other.updates, other.samples = self.updates, self.samples
        return other

    # serialization lives in models/persist.py to keep this file about learning
    def to_bytes(self, *, contexts: bool = True) -> bytes:
        """Everything this learner holds, as safetensors + JSON (see ``models.persist``);
        ``contexts=False`` leaves the streams' contexts out (``persist.context_to_bytes``
        writes each on its own).

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=2,
        ...                                   hidden_size=8, window=4, seed=0))
        >>> _ = learner.learn_one([0.5, -1.0], 1.0, stream="sensor-7")
        >>> blob = learner.to_bytes()
        >>> OnlineLearner.from_bytes(blob).to_bytes() == blob
        True
        >>> len(learner.to_bytes(contexts=False)) < len(blob)
        True
        """
        return learner_to_bytes(self, contexts=contexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int | None = None) -> OnlineLearner:
        """A learner equal to the one that wrote ``data``; never executes code.

        A state written by an earlier streamnorm is upgraded first (``models.upgrades``);
        bytes that are not a learner state raise ``StateError``.

        Examples
        --------
        >>> from models import ModelSpec, OnlineLearner
        >>> learner = OnlineLearner(ModelSpec(name="demo", task="regression", n_features=2,
        ...                                   hidden_size=8, window=4, seed=0))
        >>> _ = learner.learn_one([0.5, -1.0], 1.0, stream="sensor-7")
        >>> copy = OnlineLearner.from_bytes(learner.to_bytes())
        >>> copy.streams, copy.updates
        (['sensor-7'], 1)
        >>> copy.predict_one([0.3, 0.3], stream="sensor-7") == learner.predict_one(
        ...     [0.3, 0.3], stream="sensor-7")
        True
        >>> from models import StateError
        >>> try:
        ...     OnlineLearner.from_bytes(b"not a state")
        ... except StateError as err:
        ...     print(err)
        not a streamnorm.learner state: header length out of range
        """
        return learner_from_bytes(data, cls.blank, max_bytes=max_bytes)

    @classmethod
    def blank(cls, spec: ModelSpec) -> OnlineLearner:
        """A learner of ``spec`` whose values are about to be loaded: no seeded initialisation
        (``from_bytes`` copies the structure of one of these per spec)."""
        return cls(spec, _blank=True)

    def load_bytes(self, data: bytes, *, max_bytes: int | None = None) -> None:
        """Replace this learner's state with ``data`` (same spec); unchanged if invalid."""
        load_into(self, data, max_bytes=max_bytes)
