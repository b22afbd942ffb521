"""Trials: the claimed, writable :class:`Trial` a worker runs, and the read-only
:class:`TrialRecord` analysis reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tunebook._checks import STEP_LIMIT, as_step
from tunebook.study._contract import LeaseLostError, StudyStorage

if TYPE_CHECKING:
    from tunebook.study._study import Study

STATES = ("pending", "running", "complete", "infeasible", "failed")

__all__ = ["STATES", "LeaseLostError", "Trial", "TrialRecord"]


class Trial:
    """A trial claimed by this worker through :meth:`Study.ask`.

    Attributes:
        index: the trial number, unique in the study.
        params: the hyperparameters, a dict.
        seed: the training seed for this trial's RNGs (model initialisation, data
            order, dropout), in ``[0, 2**31)``: derived from the study seed and the
            trial, stable forever (see :mod:`tunebook.study._seeds`). Replicates of a
            trial have the same params and other seeds.
        kind: ``"quasirandom"`` (a Halton point), ``"replicate"`` (see
            :meth:`Study.rerun`) or ``"exploit"`` (see :meth:`Study.exploit`).
        point: the Halton index of a quasi-random trial, else None.
        parent: the trial a replicate repeats, else None.
        study: the study.
        worker: this worker's name.

    Reports are buffered and written every ``flush_every`` reports or
    ``flush_seconds`` seconds, and always by :meth:`flush`, :meth:`complete`,
    :meth:`infeasible` and :meth:`fail`. Every write checks this worker still holds the
    claim and extends the lease; a worker whose lease expired and whose trial was
    given to another raises :class:`LeaseLostError` instead of writing.

    Used as a context manager, an exception fails the trial (and propagates), and a
    trial left running at the end is completed.
    """

    def __init__(
        self,
        study: Study,
        storage: StudyStorage,
        trial_id: int,
        index: int,
        params: dict[str, Any],
        claim: int,
        worker: str,
        lease_seconds: float,
        *,
        metric: str,
        mode: str,
        heartbeat: bool = False,
        kind: str = "quasirandom",
        point: int | None = None,
        parent: int | None = None,
        seed: int | None = None,
        flush_every: int = 256,
        flush_seconds: float = 2.0,
    ) -> None:
        self.study, self.index, self.params = study, index, params
        self.kind, self.point, self.parent, self.seed = kind, point, parent, seed
        self.worker, self.lease_seconds = worker, lease_seconds
        self._storage, self._metric, self._mode = storage, metric, mode
        self._id, self._claim = trial_id, claim
        self._buffer: dict[tuple[str, int], float] = {}
        self._metric_names: set[str] = set()  # names already checked
        self._last_flush = time.monotonic()
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._write_lock = threading.Lock()
        self._finished: str | None = None
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        if heartbeat:
            self._heartbeat_thread = threading.Thread(
                target=self._beat, name=f"tunebook-heartbeat-{index}", daemon=True
            )
            self._heartbeat_thread.start()

    @property
    def state(self) -> str:
        return self._finished or "running"

    @property
    def attempt(self) -> int:
        """How many times this trial has been claimed (1 for a first claim)."""
        return self._claim

    def report(self, step: int, **metrics: float) -> None:
        """Records metric values at a step, e.g. ``report(step=100, train_loss=..., valid_loss=...)``.

        NaN and ±inf are stored as reported; they never become the trial's best.
        Reporting the same metric at the same step again replaces the value.

        Args:
            step: an integer in ``[0, 2**63)`` (int, NumPy or one-element torch integer).
            **metrics: numbers (or one-element arrays/tensors) by metric name; names are
                at most 255 characters.

        Raises:
            ValueError: naming the bad step or metric; nothing of this call is recorded.
        """
        self._check_running()
        if type(step) is not int or not 0 <= step < STEP_LIMIT:  # the common case checks nothing more
            step = as_step(step)
        if not metrics:
            raise ValueError("report() needs at least one metric, e.g. report(step=10, valid_loss=0.5)")
        # Everything is checked before anything is buffered: a refused call records nothing.
        values = []
        for name, value in metrics.items():
            if name not in self._metric_names:
                if len(name) > 255 or "\x00" in name:
                    raise ValueError(f"metric name {name[:40]!r}... must be at most 255 characters, without NUL")
                self._metric_names.add(name)
            if type(value) is not float:
                try:
                    if hasattr(value, "item"):
                        value = value.item()
                    value = float(value)
                except (TypeError, ValueError, RuntimeError, OverflowError):
                    raise ValueError(f"metric {name!r} must be a number, got {value!r}") from None
            values.append((name, value))
        with self._write_lock:
            for name, value in values:
                self._buffer[(name, step)] = value
            due = len(self._buffer) >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_seconds
        if due:
            self.flush()

    def flush(self) -> None:
        """Writes buffered reports and extends the lease."""
        self._check_running()
        self._write(state=None)

    def heartbeat(self) -> None:
        """Extends this worker's lease on the trial (and writes buffered reports)."""
        self.flush()

    def complete(self) -> None:
        """Marks the trial complete."""
        self._finish("complete", None)

    def infeasible(self, reason: str = "") -> None:
        """Marks the trial infeasible: diverged, NaN, or otherwise not a valid point."""
        self._finish("infeasible", reason)

    def fail(self, reason: str = "") -> None:
        """Marks the trial failed: it crashed for reasons unrelated to its parameters."""
        self._finish("failed", reason)

    def _finish(self, state: str, reason: str | None) -> None:
        self._check_running()
        if reason is not None:
            # Text columns take any string but NUL (PostgreSQL refuses it).
            reason = str(reason).replace("\x00", "\\0")
        self._stop.set()
        if self._heartbeat_thread is not None and self._heartbeat_thread is not threading.current_thread():
            self._heartbeat_thread.join()
        self._write(state=state, reason=reason)
        self._finished = state

    def _check_running(self) -> None:
        if self._finished is not None:
            raise RuntimeError(f"trial {self.index} is already {self._finished}")

    def _write(self, state: str | None, reason: str | None = None) -> None:
        with self._write_lock:
            values = [(name, step, value) for (name, step), value in self._buffer.items()]
            try:
                if state is not None:
                    self._storage.finish(self._id, self._claim, state, reason, values, self._metric, self._mode)
                else:
                    self._storage.report(self._id, self._claim, values, self.lease_seconds, self._metric, self._mode)
            except LeaseLostError:
                raise LeaseLostError(
                    f"trial {self.index} of study {self.study.name!r} is no longer claimed by {self.worker!r} "
                    f"(lease expired and reclaimed, or already finished)"
                ) from None
            self._buffer.clear()
            self._last_flush = time.monotonic()

    def _beat(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while not self._stop.wait(interval):
            try:
                self._write(state=None)
            except LeaseLostError:
                return
            except Exception:  # a transient outage: try again at the next beat
                continue

    def __enter__(self) -> Trial:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._finished is not None:
            return
        if exc is not None:
            # The user's exception propagates: recording the failure must never replace it.
            try:
                self.fail(reason=f"{exc_type.__name__}: {exc}")
            except LeaseLostError:
                pass
            except Exception as error:  # noqa: BLE001 - reported on the user's exception
                if hasattr(exc, "add_note"):
                    exc.add_note(f"tunebook: trial {self.index} could not be marked failed: {error!r}")
        else:
            self.complete()

    def __repr__(self) -> str:
        extra = f", parent={self.parent}" if self.parent is not None else ""
        return (f"Trial(study={self.study.name!r}, index={self.index}, kind={self.kind!r}{extra}, "
                f"state={self.state!r}, seed={self.seed}, params={self.params})")


@dataclass(frozen=True)
class TrialRecord:
    """A trial as stored: what analysis and reports read.

    Attributes:
        index: the trial number.
        params: its hyperparameters.
        state: "pending" (its worker's lease expired; it will be given out again),
            "running", "complete", "infeasible" or "failed".
        best_step, best_value: its best value of the study metric (study mode, finite
            values only, ties to the earlier step) and that step; None if none.
        metric_names: the metrics it reported.
        worker, reason, attempts, started_at, finished_at: bookkeeping.
        kind, point, parent, seed: as on :class:`Trial`.
    """

    index: int
    params: dict[str, Any]
    state: str
    best_step: int | None
    best_value: float | None
    metric_names: tuple[str, ...]
    worker: str | None = None
    reason: str | None = None
    attempts: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    kind: str = "quasirandom"
    point: int | None = None
    parent: int | None = None
    seed: int | None = None
    _history: Callable[[int, str], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )

    def history(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps int64, values float64)`` of a metric, by step; empty if never reported."""
        if self._history is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return self._history(self.index, metric)

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "infeasible", "failed")
