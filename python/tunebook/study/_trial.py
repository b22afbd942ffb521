"""Trials: the claimed, writable :class:`Trial` a worker runs, and the read-only
:class:`TrialRecord` analysis reads."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tunebook._checks import STEP_LIMIT, as_step
from tunebook.study._schema import metrics as metrics_table
from tunebook.study._schema import trials as trials_table
from tunebook.study._storage import run_transaction

if TYPE_CHECKING:
    from tunebook.study._study import Study

STATES = ("pending", "running", "complete", "infeasible", "failed")


class LeaseLostError(RuntimeError):
    """This worker's claim on a trial is gone: its lease expired and another worker
    claimed the trial, or the trial was already finished."""


_UPSERTS: dict[str, Any] = {}


def _upsert_metrics(connection: Connection, rows: list[dict[str, Any]]) -> None:
    dialect = connection.dialect.name
    statement = _UPSERTS.get(dialect)
    if statement is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(metrics_table)
        statement = statement.on_conflict_do_update(
            index_elements=["trial_id", "name", "step"], set_={"value": statement.excluded.value}
        )
        _UPSERTS[dialect] = statement
    connection.execute(statement, rows)


def _stored(value: float) -> float | None:
    return None if math.isnan(value) else value


class Trial:
    """A trial claimed by this worker through :meth:`Study.ask`.

    Attributes:
        index: the trial number; its parameters are point ``index`` of the study's
            Halton sequence.
        params: the hyperparameters, a dict.
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
        trial_id: int,
        index: int,
        params: dict[str, Any],
        claim: int,
        worker: str,
        lease_seconds: float,
        *,
        heartbeat: bool = False,
        flush_every: int = 256,
        flush_seconds: float = 2.0,
    ) -> None:
        self.study, self.index, self.params = study, index, params
        self.worker, self.lease_seconds = worker, lease_seconds
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
            rows = [
                {"trial_id": self._id, "name": name, "step": step, "value": _stored(value)}
                for (name, step), value in self._buffer.items()
            ]
            study = self.study

            def work(connection: Connection) -> None:
                now = time.time()
                params: dict[str, Any] = {
                    "b_id": self._id,
                    "b_claim": self._claim,
                    "b_now": now,
                    "b_lease": None if state is not None else now + self.lease_seconds,
                }
                if rows or state is not None:
                    if rows:
                        _upsert_metrics(connection, rows)
                    # The best (step, value) is recomputed inside the UPDATE, from
                    # everything stored: exact even after re-reports and reclaims.
                    params["b_name"] = study.metric
                    if state is not None:
                        params.update(b_state=state, b_reason=reason or None)
                        statement = _FINISH[study.mode]
                    else:
                        statement = _RENEW_WITH_BEST[study.mode]
                else:
                    statement = _RENEW
                # The UPDATE checks this worker still holds the claim; on PostgreSQL it
                # also waits for (and then sees) a concurrent reclaim. If the claim is
                # gone, raising rolls back the metric writes above.
                if connection.execute(statement, params).rowcount != 1:
                    raise LeaseLostError(
                        f"trial {self.index} of study {study.name!r} is no longer claimed by {self.worker!r} "
                        f"(lease expired and reclaimed, or already finished)"
                    )

            run_transaction(study.engine, work, write=True)
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
        return f"Trial(study={self.study.name!r}, index={self.index}, state={self.state!r}, params={self.params})"


def _best_query(mode: str, column: sa.Column) -> sa.ScalarSelect:
    """The best finite value of the study metric for the trial being updated (a
    correlated subquery): finite values only, ties to the earlier step."""
    value = metrics_table.c.value
    finite = (
        (metrics_table.c.trial_id == trials_table.c.id)
        & (metrics_table.c.name == sa.bindparam("b_name"))
        & value.is_not(None)
        & (value > -math.inf)
        & (value < math.inf)
    )
    order = value.asc() if mode == "min" else value.desc()
    return (
        sa.select(column).where(finite).order_by(order, metrics_table.c.step.asc()).limit(1).scalar_subquery()
    )


# Statements built once: constructing SQLAlchemy expressions per call costs more than
# running them on SQLite.
_OWNED = (
    (trials_table.c.id == sa.bindparam("b_id"))
    & (trials_table.c.claim == sa.bindparam("b_claim"))
    & (trials_table.c.state == "running")
)
_RENEW = trials_table.update().where(_OWNED).values(
    updated_at=sa.bindparam("b_now"), lease_expires=sa.bindparam("b_lease")
)
_RENEW_WITH_BEST = {
    mode: _RENEW.values(
        best_step=_best_query(mode, metrics_table.c.step), best_value=_best_query(mode, metrics_table.c.value)
    )
    for mode in ("min", "max")
}
_FINISH = {
    mode: statement.values(
        state=sa.bindparam("b_state"), finished_at=sa.bindparam("b_now"), reason=sa.bindparam("b_reason")
    )
    for mode, statement in _RENEW_WITH_BEST.items()
}


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
