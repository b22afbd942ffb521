"""Study: a search space, a seed and a storage; quasi-random trial i is Halton point i.

The domain rules of a study live here and only here: which point a trial is, its
training seed, when the study is full, what "pending" means, replicates, the round's
roles and conclusion, and when exploitation starts. Persistence is the storage's
(:mod:`tunebook.study._contract`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunebook._checks import as_integer, as_seed, as_text
from tunebook.study._contract import (
    ClaimedTrial,
    NewTrial,
    StudyExistsError,
    StudyRow,
    StudyStorage,
    TrialRow,
    dumps_params,
)
from tunebook.study._roles import Roles, check_roles
from tunebook.study._round import TuningRound
from tunebook.study._seeds import trial_seed
from tunebook.study._storage import default_storage, open_storage
from tunebook.study._url import has_studies
from tunebook.study._url import normalize as normalize_storage
from tunebook.study._trial import Trial, TrialRecord


def _dumps(value: Any) -> str:
    return dumps_params(value)


def _space_class(space: Any) -> str:
    """``module:qualname`` of the space's class, by its public path where it has one
    (``tunebook.search:SearchSpace``, not the private module that defines it)."""
    cls = type(space)
    module = cls.__module__
    while "." in module and module.rsplit(".", 1)[1].startswith("_"):
        parent = module.rsplit(".", 1)[0]
        if getattr(sys.modules.get(parent), cls.__qualname__, None) is not cls:
            break
        module = parent
    return f"{module}:{cls.__qualname__}"


def _load_space(class_path: str, space_json: str) -> Any:
    module, _, qualname = class_path.partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"cannot import the study's search space class {class_path!r}: {error}") from error
    return cls.from_dict(json.loads(space_json))


def _default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Study(TuningRound):
    """A tuning study: a search space, a seed, and a storage shared by its workers.

    The study's quasi-random trials are the points of the space's scrambled Halton
    sequence for ``seed``: the trial at point ``p`` has the parameters of point ``p``,
    so every worker, on every machine, agrees on what each trial is. Until the first
    replicate or exploitation trial, trial ``i`` is point ``i``. Every trial gets a
    training seed (:attr:`Trial.seed`), stable forever. The study's definition lives in
    storage, so any worker can reopen it by name alone.

    Besides quasi-random trials a study holds *replicates* (:meth:`rerun`: a trial's
    parameters trained again with other seeds, to measure the trial variance) and
    *exploitation* trials (:meth:`exploit`: proposed by Bayesian optimisation once
    exploration is done). Neither takes a Halton point or counts in ``max_trials``.

    A study is a round of the playbook's incremental tuning loop: it may declare its
    ``goal`` and its ``scientific``, ``nuisance`` and ``fixed`` hyperparameters
    (checked against the space), and ends with :meth:`conclude`.

    Args:
        name: the study's unique name in this storage.
        space: a ``tunebook.search.SearchSpace`` (or any object with
            ``sample(n, seed=, start=)``, ``to_dict()`` and a ``from_dict`` class
            method). Required to create a study; optional to reopen one, and then
            checked against the stored one.
        storage: a URL: ``sqlite:///path.db`` (the default is ``$TUNEBOOK_STORAGE`` or
            ``sqlite:///tunebook.db``), ``postgresql://user:password@host:port/db`` for
            many machines, or ``memory://name`` for one process; or a
            :class:`~tunebook.study.StudyStorage`.
        seed: the Halton scrambling seed, an integer in ``[0, 2**63)`` (default 0 for
            a new study; checked on reopen).
        max_trials: how many quasi-random trials the study runs; None for no limit.
            Given when reopening, it replaces the stored limit (to extend a study).
        metric: the metric whose best value ranks trials (default "valid_loss").
        mode: "min" or "max" (default "min"); metric and mode are checked on reopen.
        config_path: the config file the study came from (the playbook's study table).
        notes: free text; replaces the stored notes when given on reopen.
        command: the command that reproduces the study.
        goal: what this round is to find out (the playbook: a narrow goal per round).
        scientific: the hyperparameters whose effect the round measures (a name or
            a list); each must be searched by the space.
        nuisance: the hyperparameters optimised away so that the comparison is fair;
            each must be searched by the space. Default: every searched hyperparameter
            that is not scientific. When given, every searched one must have a role.
        fixed: ``{name: value}`` of the hyperparameters held fixed in this round; none
            may be searched by the space. Roles are checked when the study is
            created (or first given to a study that had none) and on reopen.
        read_only: open an existing study without ever creating a database file, a
            table or a lock; every write raises
            :class:`~tunebook.study.ReadOnlyStorageError`.

    Raises:
        LookupError: the study does not exist and no space was given.
        ValueError: reopening with a different space, seed, metric, mode or roles;
            roles that disagree with the space; a malformed storage URL, or an
            out-of-range seed.
        StorageError: the storage cannot be opened (the message names it and the fix).

    Example:
        >>> study = Study("lr-wd", space, storage="sqlite:///runs/studies.db", max_trials=64)
        >>> while (trial := study.ask()) is not None:
        ...     with trial:
        ...         for step in range(steps):
        ...             ...
        ...             trial.report(step=step, train_loss=loss, valid_loss=valid)
    """

    def __init__(
        self,
        name: str,
        space: Any = None,
        storage: str | StudyStorage | None = None,
        seed: int | None = None,
        max_trials: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
        config_path: str | None = None,
        notes: str | None = None,
        command: str | None = None,
        *,
        goal: str | None = None,
        scientific: Sequence[str] | str | None = None,
        nuisance: Sequence[str] | str | None = None,
        fixed: Mapping[str, Any] | None = None,
        read_only: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        as_text("name", name, limit=255)
        if mode is not None and not (isinstance(mode, str) and mode in ("min", "max")):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if max_trials is not None:
            max_trials = as_integer("max_trials", max_trials)
            if not 0 <= max_trials < 2**31:
                raise ValueError(f"{max_trials=} must be a non-negative integer below 2**31, or None")
        if metric is not None:
            as_text("metric", metric, limit=255, empty=False)
        for label, text in (("config_path", config_path), ("notes", notes), ("command", command)):
            if text is not None:
                as_text(label, text)
        if seed is not None:
            seed = as_seed(seed)  # stored as a signed 64-bit integer
        if space is not None and not (hasattr(space, "sample") and hasattr(space, "to_dict")):
            raise ValueError("space must be a SearchSpace (with sample() and to_dict()), got " + type(space).__name__)
        self.name = name
        #: The storage URL (as given: it may hold a password).
        if isinstance(storage, StudyStorage):
            self.storage = getattr(storage, "url", storage.describe())
        else:
            self.storage = normalize_storage(storage or default_storage())
        self._storage = open_storage(storage if isinstance(storage, StudyStorage) else self.storage,
                                     read_only=read_only)
        space_json = _dumps(space.to_dict()) if space is not None else None
        declares = any(v is not None for v in (goal, scientific, nuisance, fixed))
        roles = check_roles(space, goal, scientific, nuisance, fixed) if declares and space is not None else None
        updates = {
            key: value
            for key, value in {"max_trials": max_trials, "config_path": config_path, "notes": notes,
                               "command": command}.items()
            if value is not None
        }
        row = self._storage.get_study(name)
        if row is None:
            if space is None:
                raise LookupError(f"study {name!r} does not exist in {self._storage.describe()}; pass a space to create it")
            fields = {
                "name": name,
                "space_class": _space_class(space),
                "space_json": space_json,
                "seed": int(seed or 0),
                "max_trials": max_trials,
                "metric": metric or "valid_loss",
                "mode": mode or "min",
                "config_path": config_path,
                "notes": notes or "",
                "command": command,
                "goal": roles.goal if roles else None,
                "roles_json": roles.to_json() if roles else None,
            }
            try:
                row = self._storage.create_study(fields)
                updates = {}
            except StudyExistsError:
                row = self._storage.get_study(name)  # another worker created it first: reopen
        self._check_definition(row, space_json, seed, metric, mode)
        if declares:
            if roles is None:  # reopened by name: check the roles against the stored space
                roles = check_roles(_load_space(row.space_class, row.space_json), goal, scientific, nuisance, fixed)
            stored = Roles.from_stored(row.goal, row.roles_json)
            if stored.declared and stored != roles:
                raise ValueError(
                    f"study {name!r} already exists in {self._storage.describe()} with different roles: stored "
                    f"{stored._asdict()}, given {roles._asdict()}. Reopen it without roles (or the same ones), "
                    "or start the next round as a new study."
                )
            updates.update(goal=roles.goal, roles_json=roles.to_json())
        updates = {key: value for key, value in updates.items() if value != getattr(row, key)}
        if updates:
            row = self._storage.update_study(row.id, updates)
        self._set_row(row)
        self._space = space

    def _set_row(self, row: StudyRow) -> None:
        self._id = row.id
        self.seed = int(row.seed)
        self.metric, self.mode = row.metric, row.mode
        self.config_path, self.notes, self.command = row.config_path, row.notes, row.command
        self._max_trials = row.max_trials
        self._space_source = (row.space_class, row.space_json)
        self._row = row

    def _check_definition(self, row: Any, space_json: str | None, seed: Any, metric: Any, mode: Any) -> None:
        def differs(what: str, stored: Any, given: Any) -> ValueError:
            return ValueError(
                f"study {self.name!r} already exists in {self._storage.describe()} with a different {what}: "
                f"stored {stored}, given {given}. Reopen it with the same {what} (or omit it), "
                "or choose a new study name."
            )

        if space_json is not None and space_json != row.space_json:
            raise differs("search space", row.space_json, space_json)
        if seed is not None and int(seed) != row.seed:
            raise differs("seed", row.seed, seed)
        if metric is not None and metric != row.metric:
            raise differs("metric", repr(row.metric), repr(metric))
        if mode is not None and mode != row.mode:
            raise differs("mode", repr(row.mode), repr(mode))

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of a SQL storage (for inspection); AttributeError otherwise."""
        return self._storage.engine  # type: ignore[attr-defined]

    @property
    def read_only(self) -> bool:
        """Whether this study was opened read-only (``Study.load(..., read_only=True)``)."""
        return self._storage.read_only

    @classmethod
    def load(cls, name: str, storage: str | StudyStorage | None = None, *, read_only: bool = False) -> Study:
        """Reopens an existing study from storage alone.

        Args:
            name: the study's name.
            storage: its storage URL (default :func:`default_storage`).
            read_only: never create a database file, a table or a lock, and refuse
                writes (:class:`~tunebook.study.ReadOnlyStorageError`): for commands
                that only read.

        Raises:
            LookupError: the study (or, read-only, the SQLite file) does not exist.
        """
        return cls(name, storage=storage, read_only=read_only)

    @property
    def space(self) -> Any:
        """The search space (rebuilt from storage on first use when reopened by name)."""
        if self._space is None:
            self._space = _load_space(*self._space_source)
        return self._space

    def _refresh(self) -> StudyRow:
        """Re-reads the study's row (another worker may have changed it)."""
        row = self._storage.get_study(self.name)
        if row is not None:
            self._set_row(row)
        return self._row

    @property
    def max_trials(self) -> int | None:
        """The number of quasi-random trials, None for no limit (read from storage: another
        worker may have extended the study)."""
        return self._refresh().max_trials

    # ---------------------------------------------------------------- attributes
    def set_attr(self, key: str, value: Any) -> None:
        """Stores a JSON value under ``key`` with the study, replacing any earlier one.

        What a study remembers besides its trials: the playbook's procedures record
        their results here for the report. Any worker can write; the last write of a
        key wins, other keys are untouched.

        Args:
            key: a non-empty string of at most 255 characters.
            value: anything ``json.dumps`` accepts (NumPy scalars and arrays too; NaN
                and infinities are kept).

        Raises:
            ValueError: an empty or too long key.
            TypeError: a value that is not JSON serialisable.
        """
        if not isinstance(key, str) or not key or len(key) > 255:
            raise ValueError(f"key must be a non-empty string of at most 255 characters, got {key!r}")
        try:
            text = json.dumps(value, sort_keys=True, default=_json_scalar)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the value of study attribute {key!r} must be JSON serialisable: {error}") from None
        self._storage.set_study_attr(self._id, key, text)

    @property
    def attrs(self) -> dict[str, Any]:
        """Every attribute stored with :meth:`set_attr`, by key (read from storage each time)."""
        return {key: json.loads(text) for key, text in self._storage.get_study_attrs(self._id).items()}

    # ----------------------------------------------------------------- workers
    def ask(
        self,
        lease_seconds: float = 300.0,
        worker: str | None = None,
        *,
        heartbeat: bool = False,
    ) -> Trial | None:
        """Claims the next trial, atomically, and returns it; None when the study is full.

        In order: a trial whose worker's lease expired (it died, or stopped
        heartbeating), or a replicate waiting for a worker, lowest index first; else
        the quasi-random trial at the next Halton point, up to ``max_trials``; else,
        once :meth:`exploit` was called, an exploitation trial proposed from every
        finished trial, up to its budget. None means every trial is claimed or
        finished; trials still running elsewhere may yet expire, so a worker that
        wants to mop up can ask again later.

        Args:
            lease_seconds: how long the claim lasts without a report or heartbeat.
            worker: this worker's name (default ``host:pid``).
            heartbeat: extend the lease from a background thread every
                ``lease_seconds / 3`` until the trial finishes.

        Returns:
            The claimed :class:`Trial`, or None.
        """
        if not lease_seconds > 0:
            raise ValueError(f"{lease_seconds=} must be > 0")
        worker = worker or _default_worker()
        claimed = self._storage.claim(self._id, worker, lease_seconds, self._quasirandom_trial)
        if claimed is None:
            row = self._refresh()
            if row.exploit_json is None:
                return None
            from tunebook.playbook._exploit import claim_exploit_trial

            claimed = claim_exploit_trial(self, self._storage, worker, lease_seconds, json.loads(row.exploit_json))
            if claimed is None:
                return None
        return self._trial(claimed, worker, lease_seconds, heartbeat)

    def _trial(self, claimed: ClaimedTrial, worker: str, lease_seconds: float, heartbeat: bool) -> Trial:
        return Trial(self, self._storage, claimed.id, claimed.index, claimed.params, claimed.claim, worker,
                     lease_seconds, metric=self.metric, mode=self.mode, heartbeat=heartbeat, kind=claimed.kind,
                     point=claimed.point, parent=claimed.parent, seed=claimed.seed)

    def _quasirandom_trial(self, point: int) -> NewTrial:
        return NewTrial(self.params(point), trial_seed(self.seed, "quasirandom", point), "quasirandom", point)

    def params(self, index: int) -> dict[str, Any]:
        """The parameters of Halton point ``index`` (the quasi-random trial at that point)."""
        return dict(self.space.sample(1, seed=self.seed, start=int(index))[0])

    # ---------------------------------------------------------------- analysis
    def trials(self) -> list[TrialRecord]:
        """Every trial so far, by index. ``record.history(metric)`` loads lazily, one
        query per metric for the whole study."""
        now = time.time()
        histories = _HistoryCache(self._storage, self._id)
        return [_record(row, now, histories.history) for row in self._storage.get_trials(self._id)]

    def trial(self, index: int) -> TrialRecord:
        """The record of trial ``index`` (KeyError if it was never claimed)."""
        for record in self.trials():
            if record.index == index:
                return record
        raise KeyError(f"study {self.name!r} has no trial {index}")

    def _find(self, index: Any, argument: str) -> TrialRecord:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"{argument} must be a trial index, got {index!r}")
        records = self.trials()
        for record in records:
            if record.index == index:
                return record
        known = f"0..{records[-1].index}" if records else "none yet"
        raise ValueError(f"{argument}={index} is not a trial of study {self.name!r} (its trials: {known})")

    def best_trial(self) -> TrialRecord | None:
        """The configuration with the best value of the study metric: over the
        quasi-random and exploitation trials that are not infeasible (replicates
        re-measure a configuration; a lucky one is not a better configuration). Ties:
        the lower index. None when no trial has a finite value."""
        return self._best(self.trials())

    def _best(self, records: list[TrialRecord]) -> TrialRecord | None:
        from tunebook.checkpoints import rank_trials

        candidates = [r for r in records
                      if r.kind != "replicate" and r.state != "infeasible" and r.best_value is not None]
        candidates = [r for r in candidates if math.isfinite(r.best_value)]
        if not candidates:
            return None
        order = rank_trials(np.array([r.best_value for r in candidates]), mode=self.mode)
        return candidates[int(order[0])]

    def summary(self) -> dict[str, Any]:
        """The study's row of the playbook's study table.

        Returns:
            A dict: name, config, notes, metric, mode, max_trials, trials (claimed
            configurations: quasi-random and exploitation trials), trials_run
            (finished: complete, infeasible or failed), complete, infeasible, failed,
            running, exploit (exploitation trials), replicates, best_value,
            best_trial, best_step, command, goal, scientific, nuisance, fixed,
            conclusion, adopted, replicates_run (finished replicates), not_run (what
            has not yet been run: quasi-random trials up to ``max_trials``,
            exploitation trials up to their budget, unfinished replicates; None for a
            study without ``max_trials``).
        """
        row = self._refresh()
        all_records = self.trials()
        records = [r for r in all_records if r.kind != "replicate"]
        counts = defaultdict(int)
        for record in records:
            counts[record.state] += 1
        finished = ("complete", "infeasible", "failed")
        done = defaultdict(int)
        for record in all_records:
            done[record.kind] += record.state in finished
        replicates = len(all_records) - len(records)
        not_run = None
        if row.max_trials is not None:
            budget = json.loads(row.exploit_json)["n_trials"] if row.exploit_json else 0
            not_run = (max(row.max_trials - done["quasirandom"], 0) + max(budget - done["exploit"], 0)
                       + replicates - done["replicate"])
        best = self._best(records)
        roles = Roles.from_stored(row.goal, row.roles_json)
        return {
            "name": self.name,
            "config": self.config_path,
            "notes": self.notes,
            "metric": self.metric,
            "mode": self.mode,
            "max_trials": row.max_trials,
            "trials": len(records),
            "trials_run": counts["complete"] + counts["infeasible"] + counts["failed"],
            "complete": counts["complete"],
            "infeasible": counts["infeasible"],
            "failed": counts["failed"],
            "running": counts["running"] + counts["pending"],
            "best_value": best.best_value if best else None,
            "best_trial": best.index if best else None,
            "best_step": best.best_step if best else None,
            "command": self.command,
            "exploit": sum(r.kind == "exploit" for r in records),
            "replicates": replicates,
            "replicates_run": done["replicate"],
            "not_run": not_run,
            "goal": roles.goal,
            "scientific": list(roles.scientific),
            "nuisance": list(roles.nuisance),
            "fixed": dict(roles.fixed),
            "conclusion": row.conclusion,
            "adopted": row.adopted_trial if row.conclusion is not None else None,
        }

    def __repr__(self) -> str:
        return f"Study({self.name!r}, storage={self._storage.describe()!r}, seed={self.seed}, max_trials={self._max_trials})"


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _record(row: TrialRow, now: float, history: Any) -> TrialRecord:
    state = row.state
    if state == "running" and row.lease_expires is not None and row.lease_expires < now:
        state = "pending"  # its worker's lease expired: it will be given out again
    return TrialRecord(
        index=row.index,
        params=row.params,
        state=state,
        best_step=row.best_step,
        best_value=row.best_value,
        metric_names=row.metric_names,
        worker=row.worker,
        reason=row.reason,
        attempts=row.claim,
        started_at=row.started_at,
        finished_at=row.finished_at,
        kind=row.kind,
        point=row.point,
        parent=row.parent,
        seed=row.seed,
        _history=history,
    )


class _HistoryCache:
    """Loads one metric's history for every trial of a study at once, on first use."""

    def __init__(self, storage: StudyStorage, study_id: int) -> None:
        self.storage, self.study_id = storage, study_id
        self.loaded: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}

    def history(self, index: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        if metric not in self.loaded:
            self.loaded[metric] = self.storage.get_histories(self.study_id, metric)
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        return self.loaded[metric].get(index, empty)


def list_studies(storage: str | StudyStorage | None = None) -> list[dict[str, Any]]:
    """The study table of a storage: :meth:`Study.summary` of every study, oldest first.

    Reading creates nothing: a SQLite file that does not exist, or a database without
    tunebook's tables, holds no studies. (A database of an older tunebook is upgraded in
    place, as any open of it for writing would.)"""
    store = storage_to_read(storage)
    if store is None:
        return []
    return [Study(row.name, storage=store).summary() for row in store.list_studies()]


def storage_to_read(storage: str | StudyStorage | None) -> StudyStorage | None:
    """The storage that commands which only read open: None when it holds no studies
    (a missing SQLite file, a database without tunebook's tables), which they then
    leave uncreated. A database of an older tunebook is upgraded in place."""
    if isinstance(storage, StudyStorage):
        return storage
    storage = normalize_storage(storage or default_storage())
    if not storage.startswith("memory:") and not has_studies(storage):
        return None
    return open_storage(storage)
