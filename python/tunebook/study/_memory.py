"""A study storage held in this process's memory: for tests and notebooks.

It keeps the storage contract (:mod:`tunebook.study._contract`) with one lock: claims
are atomic between threads. Nothing survives the process, and other processes cannot
see it; use SQLite or PostgreSQL for workers in several processes.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tunebook.study._contract import (
    UPDATABLE_STUDY_FIELDS,
    ClaimedTrial,
    History,
    LeaseLostError,
    NewTrial,
    ReadOnlyStorageError,
    StaleProposalError,
    StudyExistsError,
    StudyRow,
    StudyStorage,
    TrialRow,
    best_of,
    check_final_state,
    dumps_params,
)


@dataclass
class _Trial:
    row: TrialRow
    study_id: int
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)


class _Data:
    """What one ``memory://`` URL holds; shared by every storage opened on it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.studies: dict[int, StudyRow] = {}
        self.attrs: dict[int, dict[str, str]] = {}
        self.trials: dict[int, _Trial] = {}
        self.by_study: dict[int, dict[int, int]] = {}  # study id -> trial index -> trial id


_stores: dict[str, _Data] = {}
_stores_lock = threading.Lock()


def memory_storage(url: str = "memory://", *, read_only: bool = False) -> InMemoryStorage:
    """The in-memory storage of a ``memory://name`` URL: one per name and process."""
    with _stores_lock:
        data = _stores.setdefault(url, _Data())
    return InMemoryStorage(url=url, read_only=read_only, _data=data)


class InMemoryStorage(StudyStorage):
    """A study storage in this process's memory.

    Args:
        url: its name, for messages (``memory://`` URLs share one store per name
            through :func:`~tunebook.study.open_storage`; a storage built directly is
            private to its holders).
        read_only: refuse writes.
    """

    def __init__(self, url: str = "memory://", *, read_only: bool = False, _data: _Data | None = None) -> None:
        self.url = url
        self.read_only = read_only
        self._data = _data if _data is not None else _Data()

    def describe(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"InMemoryStorage({self.url!r}{', read_only=True' if self.read_only else ''})"

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStorageError(f"{self.describe()} was opened read-only")

    # ------------------------------------------------------------------ studies
    def create_study(self, fields: Mapping[str, Any]) -> StudyRow:
        self._check_writable()
        with self._data.lock:
            if any(s.name == fields["name"] for s in self._data.studies.values()):
                raise StudyExistsError(f"study {fields['name']!r} already exists in {self.describe()}")
            study_id = len(self._data.studies) + 1
            row = StudyRow(id=study_id, created_at=time.time(), **fields)
            self._data.studies[study_id] = row
            self._data.attrs[study_id] = {}
            self._data.by_study[study_id] = {}
            return row

    def get_study(self, name: str) -> StudyRow | None:
        with self._data.lock:
            return next((s for s in self._data.studies.values() if s.name == name), None)

    def list_studies(self) -> list[StudyRow]:
        with self._data.lock:
            return sorted(self._data.studies.values(), key=lambda s: s.id)

    def update_study(self, study_id: int, fields: Mapping[str, Any]) -> StudyRow:
        self._check_writable()
        unknown = set(fields) - set(UPDATABLE_STUDY_FIELDS)
        if unknown:
            raise ValueError(f"cannot update study fields {sorted(unknown)}")
        with self._data.lock:
            row = replace(self._data.studies[study_id], **fields)
            self._data.studies[study_id] = row
            return row

    def set_study_attr(self, study_id: int, key: str, value_json: str) -> None:
        self._check_writable()
        with self._data.lock:
            self._data.attrs[study_id][key] = value_json

    def get_study_attrs(self, study_id: int) -> dict[str, str]:
        with self._data.lock:
            return dict(sorted(self._data.attrs.get(study_id, {}).items()))

    # ------------------------------------------------------------------ claims
    def claim(
        self,
        study_id: int,
        worker: str,
        lease_seconds: float,
        make_trial: Callable[[int], NewTrial],
    ) -> ClaimedTrial | None:
        self._check_writable()
        with self._data.lock:
            now = time.time()
            indices = self._data.by_study[study_id]
            for index in sorted(indices):
                trial = self._data.trials[indices[index]]
                row = trial.row
                if row.state == "running" and row.lease_expires is not None and row.lease_expires < now:
                    started = now if row.claim == 0 else row.started_at
                    trial.row = replace(row, claim=row.claim + 1, worker=worker, lease_expires=now + lease_seconds,
                                        started_at=started)
                    return self._claimed(trial.row)
            points = [self._data.trials[i].row.point for i in indices.values()]
            point = max((p for p in points if p is not None), default=-1) + 1
            max_trials = self._data.studies[study_id].max_trials
            if max_trials is not None and point >= max_trials:
                return None
            trial = replace(make_trial(point), kind="quasirandom", point=point, parent=None)
            return self._insert(study_id, trial, now, worker=worker, claim=1, lease=now + lease_seconds)

    @staticmethod
    def _claimed(row: TrialRow) -> ClaimedTrial:
        return ClaimedTrial(row.id, row.index, copy.deepcopy(row.params), row.claim, row.kind, row.point, row.parent,
                            row.seed)

    def _insert(self, study_id: int, new: NewTrial, now: float, *, worker: str | None, claim: int,
                lease: float) -> ClaimedTrial:
        indices = self._data.by_study[study_id]
        index = max(indices) + 1 if indices else 0
        trial_id = len(self._data.trials) + 1
        row = TrialRow(id=trial_id, index=index, params=json.loads(dumps_params(new.params)), state="running",
                       worker=worker, claim=claim, lease_expires=lease, started_at=now, finished_at=None,
                       reason=None, best_step=None, best_value=None, kind=new.kind, point=new.point,
                       parent=new.parent, seed=new.seed)
        self._data.trials[trial_id] = _Trial(row, study_id)
        indices[index] = trial_id
        return self._claimed(row)

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
        self._check_writable()
        with self._data.lock:
            indices = self._data.by_study[study_id]
            if sum(self._data.trials[i].row.kind == trial.kind for i in indices.values()) >= kind_limit:
                return None
            last = max(indices) if indices else None
            if last != if_last_index:
                raise StaleProposalError(f"trial {last} was created after the proposal")
            now = time.time()
            return self._insert(study_id, trial, now, worker=worker, claim=1, lease=now + lease_seconds)

    def add_replicates(
        self, study_id: int, parent: int, n: int, make_replicate: Callable[[int], NewTrial]
    ) -> list[int]:
        self._check_writable()
        with self._data.lock:
            indices = self._data.by_study[study_id]
            if parent not in indices:
                raise KeyError(parent)
            replicates = [index for index in sorted(indices)
                          if self._data.trials[indices[index]].row.kind == "replicate"
                          and self._data.trials[indices[index]].row.parent == parent]
            now = time.time()
            for number in range(len(replicates) + 1, n + 1):
                claimed = self._insert(study_id, make_replicate(number), now, worker=None, claim=0, lease=0.0)
                replicates.append(claimed.index)
            return replicates[:n]

    # ------------------------------------------------------------------ a worker's writes
    def _owned(self, trial_id: int, claim: int) -> _Trial:
        trial = self._data.trials.get(trial_id)
        if trial is None or trial.row.claim != claim or trial.row.state != "running":
            raise LeaseLostError(f"trial {trial_id} is no longer held under claim {claim}")
        return trial

    def _store(self, trial: _Trial, values: Sequence[tuple[str, int, float]], metric: str, mode: str) -> None:
        for name, step, value in values:
            trial.metrics.setdefault(name, {})[int(step)] = float(value)
        best_step, best_value = best_of(trial.metrics.get(metric, {}), mode)
        trial.row = replace(trial.row, best_step=best_step, best_value=best_value)

    def renew(self, trial_id: int, claim: int, lease_seconds: float) -> None:
        self._check_writable()
        with self._data.lock:
            trial = self._owned(trial_id, claim)
            trial.row = replace(trial.row, lease_expires=time.time() + lease_seconds)

    def report(
        self,
        trial_id: int,
        claim: int,
        values: Sequence[tuple[str, int, float]],
        lease_seconds: float,
        metric: str,
        mode: str,
    ) -> None:
        self._check_writable()
        with self._data.lock:
            trial = self._owned(trial_id, claim)
            if values:
                self._store(trial, values, metric, mode)
            trial.row = replace(trial.row, lease_expires=time.time() + lease_seconds)

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
        self._check_writable()
        check_final_state(state)
        with self._data.lock:
            trial = self._owned(trial_id, claim)
            self._store(trial, values, metric, mode)
            trial.row = replace(trial.row, state=state, reason=reason or None, lease_expires=None,
                                finished_at=time.time())

    # ------------------------------------------------------------------ reads
    def get_trials(self, study_id: int) -> list[TrialRow]:
        with self._data.lock:
            indices = self._data.by_study.get(study_id, {})
            out = []
            for index in sorted(indices):
                trial = self._data.trials[indices[index]]
                names = tuple(sorted(trial.metrics))
                out.append(replace(trial.row, params=copy.deepcopy(trial.row.params), metric_names=names))
            return out

    def get_histories(self, study_id: int, metric: str) -> dict[int, History]:
        with self._data.lock:
            indices = self._data.by_study.get(study_id, {})
            out: dict[int, History] = {}
            for index in sorted(indices):
                values = self._data.trials[indices[index]].metrics.get(metric)
                if values:
                    steps = sorted(values)
                    out[index] = (np.asarray(steps, dtype=np.int64),
                                  np.asarray([values[s] for s in steps], dtype=np.float64))
            return out
