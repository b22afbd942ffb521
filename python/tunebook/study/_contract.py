"""The storage contract: everything :class:`~tunebook.study.Study` and
:class:`~tunebook.study.Trial` ask of a database, and nothing more.

Optuna's ``BaseStorage`` is the model: the domain classes hold the rules (which point
trial ``i`` is, what "pending" means, when a study is full, how roles are checked),
and a storage only keeps rows and makes the few operations that must be atomic
atomic. Three implementations keep this contract:

* :class:`~tunebook.study._sql.SQLStorage` over SQLite (WAL) or PostgreSQL, for
  workers on one machine or many;
* :class:`~tunebook.study._memory.InMemoryStorage`, in one process (tests, notebooks).

The contract
============

**Studies.** A study is a row with a unique name (:class:`StudyRow`).
:meth:`StudyStorage.create_study` creates one or raises :class:`StudyExistsError`;
two processes creating the same name at once see one success and one
:class:`StudyExistsError`. :meth:`~StudyStorage.update_study` changes only the fields
listed in :data:`UPDATABLE_STUDY_FIELDS`. Study attributes are a key → JSON value map
per study; setting a key replaces its value atomically.

**Trials.** A trial row has a unique ``index`` per study (0, 1, 2, ... in creation
order), its parameters, its training ``seed``, its ``kind`` and a claim counter.
Kinds: ``quasirandom`` (with ``point``, its Halton index: unique per study, 0, 1, 2,
... in creation order), ``replicate`` (with ``parent``, the index of the trial it
repeats) and ``exploit`` (proposed by a Bayesian sampler). States: ``running``
(claimed, or waiting for its first claim when its ``claim`` is 0), ``complete``,
``infeasible``, ``failed``; the last three are final.

**Claims** are atomic: across every process and machine sharing the storage, each
call returns a trial no other live call got. :meth:`~StudyStorage.claim` takes, in this
order, (1) the running trial of lowest index whose lease expired (its worker died or
stopped heartbeating) or that waits for its first claim, incrementing its ``claim``;
(2) else a new quasi-random trial at the next Halton point, if fewer than the study's
``max_trials`` quasi-random trials exist. :meth:`~StudyStorage.claim_new_trial` inserts
and claims a trial proposed outside the storage (an exploitation trial), only while
fewer than a limit of its kind exist and only if no trial was created since the
proposal was made. :meth:`~StudyStorage.add_replicates` tops a trial's replicates up
to ``n`` atomically (two workers asking for 5 replicates make 5, not 10); they wait
for claims. A claim carries a lease: ``lease_expires = now + lease_seconds``.

**Writes by a worker** (:meth:`~StudyStorage.renew`, :meth:`~StudyStorage.report`,
:meth:`~StudyStorage.finish`) name the trial and the claim they hold. Each checks, in
the same transaction as its write, that the trial is still running under that claim,
and raises :class:`LeaseLostError` otherwise, writing nothing. ``report`` stores metric
values (a re-report of a metric at a step replaces it; NaN and ±inf are kept as
such) and recomputes the trial's best value of the study metric from everything
stored: the best finite value in the study's mode, ties to the earlier step.
``finish`` does the same and sets a final state.

**Reads** return immutable snapshots (:class:`TrialRow`, :class:`StudyRow`);
histories come as NumPy arrays per trial. Reads never write.

**Read-only storages** (``read_only=True``) never create a database file, a table or
a lock file; every write method raises :class:`ReadOnlyStorageError`.

**Errors.** A storage that cannot be opened or read (unreachable server, a file that is
not a database, a directory that cannot be written) raises
:class:`~tunebook.study.StorageError`, whose message names the storage (never its
password) and the fix.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Trial states as stored. "pending" is derived by the domain (running, lease expired).
STORED_STATES = ("running", "complete", "infeasible", "failed")
FINAL_STATES = ("complete", "infeasible", "failed")

#: The fields :meth:`StudyStorage.update_study` may change.
UPDATABLE_STUDY_FIELDS = ("max_trials", "config_path", "notes", "command", "goal", "roles_json", "conclusion",
                          "adopted_trial", "concluded_at", "exploit_json")
#: Trial kinds.
KINDS = ("quasirandom", "replicate", "exploit")


class LeaseLostError(RuntimeError):
    """This worker's claim on a trial is gone: its lease expired and another worker
    claimed the trial, or the trial was already finished."""


class StudyExistsError(ValueError):
    """A study of that name already exists in the storage."""


class ReadOnlyStorageError(PermissionError):
    """A write was attempted through a storage opened read-only."""


class StaleProposalError(RuntimeError):
    """:meth:`StudyStorage.claim_new_trial`: a trial was created after the proposal was
    made from the trials then stored; propose again from the new ones."""


@dataclass(frozen=True)
class StudyRow:
    """A study as stored."""

    id: int
    name: str
    space_class: str
    space_json: str
    seed: int
    max_trials: int | None
    metric: str
    mode: str
    config_path: str | None
    notes: str
    command: str | None
    created_at: float
    goal: str | None = None
    roles_json: str | None = None
    conclusion: str | None = None
    adopted_trial: int | None = None
    concluded_at: float | None = None
    exploit_json: str | None = None


@dataclass(frozen=True)
class NewTrial:
    """What a new trial is created with (the storage gives it its index).

    Attributes:
        params: its parameters.
        seed: its training seed.
        kind: one of :data:`KINDS`.
        point: the Halton index of a quasi-random trial, else None.
        parent: the trial a replicate repeats, else None.
    """

    params: dict[str, Any]
    seed: int
    kind: str = "quasirandom"
    point: int | None = None
    parent: int | None = None


@dataclass(frozen=True)
class ClaimedTrial:
    """A trial handed to one worker by :meth:`StudyStorage.claim`.

    Attributes:
        id: the storage's key for the trial (passed back by every write).
        index: its index in the study.
        params: its parameters.
        claim: the claim counter this worker holds (1 for a first claim).
        kind, point, parent, seed: as in :class:`NewTrial`.
    """

    id: int
    index: int
    params: dict[str, Any]
    claim: int
    kind: str = "quasirandom"
    point: int | None = None
    parent: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class TrialRow:
    """A trial as stored (state as stored: see :data:`STORED_STATES`)."""

    id: int
    index: int
    params: dict[str, Any]
    state: str
    worker: str | None
    claim: int
    lease_expires: float | None
    started_at: float
    finished_at: float | None
    reason: str | None
    best_step: int | None
    best_value: float | None
    metric_names: tuple[str, ...] = field(default=())
    kind: str = "quasirandom"
    point: int | None = None
    parent: int | None = None
    seed: int | None = None


History = tuple[np.ndarray, np.ndarray]


class StudyStorage(abc.ABC):
    """The storage contract (see the module docstring for the guarantees).

    Attributes:
        read_only: whether writes are refused.
    """

    read_only: bool = False

    # ------------------------------------------------------------------ identity
    @abc.abstractmethod
    def describe(self) -> str:
        """The storage for messages: a URL with any password hidden."""

    # ------------------------------------------------------------------ studies
    @abc.abstractmethod
    def create_study(self, fields: Mapping[str, Any]) -> StudyRow:
        """Creates a study from ``fields`` (every :class:`StudyRow` field but ``id`` and
        ``created_at``).

        Raises:
            StudyExistsError: a study of that name exists (also when another process
                created it an instant before).
        """

    @abc.abstractmethod
    def get_study(self, name: str) -> StudyRow | None:
        """The study named ``name``, or None."""

    @abc.abstractmethod
    def list_studies(self) -> list[StudyRow]:
        """Every study, oldest first. A storage that holds no database yet holds none."""

    @abc.abstractmethod
    def update_study(self, study_id: int, fields: Mapping[str, Any]) -> StudyRow:
        """Sets the given :data:`UPDATABLE_STUDY_FIELDS` and returns the new row."""

    @abc.abstractmethod
    def set_study_attr(self, study_id: int, key: str, value_json: str) -> None:
        """Stores a study attribute (JSON text), replacing any value of that key."""

    @abc.abstractmethod
    def get_study_attrs(self, study_id: int) -> dict[str, str]:
        """Every study attribute, key → JSON text."""

    # ------------------------------------------------------------------ claims
    @abc.abstractmethod
    def claim(
        self,
        study_id: int,
        worker: str,
        lease_seconds: float,
        make_trial: Callable[[int], NewTrial],
    ) -> ClaimedTrial | None:
        """Atomically claims a trial for ``worker`` (see "Claims" above).

        Args:
            study_id: the study.
            worker: the claiming worker's name.
            lease_seconds: the lease, from now.
            make_trial: builds the quasi-random trial of a Halton point; called
                inside the claim, so it must be fast and side-effect free (it may be
                called for a point that another worker then wins: the storage calls it
                again for the next).

        Returns:
            The claimed trial, or None when no trial is free and the study has its
            ``max_trials`` quasi-random trials.
        """

    @abc.abstractmethod
    def claim_new_trial(
        self,
        study_id: int,
        trial: NewTrial,
        worker: str,
        lease_seconds: float,
        *,
        kind_limit: int,
        if_last_index: int | None,
    ) -> ClaimedTrial | None:
        """Atomically inserts ``trial`` claimed by ``worker``, at the next index.

        Args:
            kind_limit: insert only while fewer than this many trials of
                ``trial.kind`` exist; else return None.
            if_last_index: the highest trial index the proposal saw (None: it saw no
                trial). If the study now holds a higher one, insert nothing and raise
                :class:`StaleProposalError`.
        """

    @abc.abstractmethod
    def add_replicates(
        self, study_id: int, parent: int, n: int, make_replicate: Callable[[int], NewTrial]
    ) -> list[int]:
        """Atomically tops the replicates of trial ``parent`` up to ``n``.

        Replicates are numbered 1, 2, ... in creation order; ``make_replicate(r)``
        builds number ``r`` for each one missing. New replicates wait for a claim
        (state running, claim 0, lease expired).

        Returns:
            The indices of the trial's first ``n`` replicates (all of them when it
            already had more).

        Raises:
            KeyError: the study has no trial ``parent``.
        """

    # ------------------------------------------------------------------ a worker's writes
    @abc.abstractmethod
    def renew(self, trial_id: int, claim: int, lease_seconds: float) -> None:
        """Extends the lease to now + ``lease_seconds`` (LeaseLostError if not held)."""

    @abc.abstractmethod
    def report(
        self,
        trial_id: int,
        claim: int,
        values: Sequence[tuple[str, int, float]],
        lease_seconds: float,
        metric: str,
        mode: str,
    ) -> None:
        """Stores ``(metric name, step, value)`` triples, recomputes the trial's best
        ``metric`` value in ``mode``, and extends the lease (LeaseLostError if not held)."""

    @abc.abstractmethod
    def finish(
        self,
        trial_id: int,
        claim: int,
        state: str,
        reason: str | None,
        values: Sequence[tuple[str, int, float]],
        metric: str,
        mode: str,
    ) -> None:
        """Stores the last values and sets a final state, in one transaction
        (LeaseLostError if not held)."""

    # ------------------------------------------------------------------ reads
    @abc.abstractmethod
    def get_trials(self, study_id: int) -> list[TrialRow]:
        """Every trial of the study, by index, with the names of its metrics."""

    @abc.abstractmethod
    def get_histories(self, study_id: int, metric: str) -> dict[int, History]:
        """One metric's history for every trial that reported it: trial index →
        ``(steps int64, values float64)``, by step."""


# ---------------------------------------------------------------------- helpers for implementations


def check_final_state(state: str) -> None:
    if state not in FINAL_STATES:
        raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")


def best_of(values: Mapping[int, float], mode: str) -> tuple[int | None, float | None]:
    """The best finite value of a ``{step: value}`` map in ``mode``, ties to the
    earlier step: the rule every storage applies (a reference for the SQL version)."""
    best_step, best_value = None, None
    for step in sorted(values):
        value = values[step]
        if value is None or not math.isfinite(value):
            continue
        if best_value is None or (value < best_value if mode == "min" else value > best_value):
            best_step, best_value = step, value
    return best_step, best_value


def dumps_params(params: Mapping[str, Any]) -> str:
    """Parameters as stored: JSON with sorted keys (NumPy scalars as Python ones)."""
    return json.dumps(params, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
