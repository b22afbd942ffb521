"""Study: a search space, a seed and a storage URL; trial i is Halton point i."""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tunebook.study._schema import ensure_schema
from tunebook.study._schema import metrics as metrics_table
from tunebook.study._schema import study_attrs as attrs_table
from tunebook.study._schema import studies as studies_table
from tunebook.study._schema import trials as trials_table
from tunebook._checks import as_integer, as_seed, as_text
from tunebook.study._storage import default_storage, get_engine, run_transaction
from tunebook.study._url import StorageError, has_studies
from tunebook.study._url import display as display_storage
from tunebook.study._url import error_message as storage_error_message
from tunebook.study._url import normalize as normalize_storage
from tunebook.study._trial import Trial, TrialRecord

_UNSET: Any = object()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


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


# Statements of the claim transaction, built once (see _trial.py for why).
_LOCK_STUDY = (
    sa.select(studies_table.c.max_trials).where(studies_table.c.id == sa.bindparam("b_study")).with_for_update()
)
_EXPIRED = (
    sa.select(trials_table.c.id, trials_table.c.trial_index, trials_table.c.params_json, trials_table.c.claim)
    .where(
        (trials_table.c.study_id == sa.bindparam("b_study"))
        & (trials_table.c.state == "running")
        & (trials_table.c.lease_expires < sa.bindparam("b_now"))
    )
    .order_by(trials_table.c.trial_index)
    .limit(1)
)
_RECLAIM = (
    trials_table.update()
    .where((trials_table.c.id == sa.bindparam("b_id")) & (trials_table.c.claim == sa.bindparam("b_claim")))
    .values(
        claim=sa.bindparam("b_new_claim"),
        worker=sa.bindparam("b_worker"),
        lease_expires=sa.bindparam("b_lease"),
        updated_at=sa.bindparam("b_now"),
    )
)
_NEXT_INDEX = sa.select(sa.func.coalesce(sa.func.max(trials_table.c.trial_index) + 1, 0)).where(
    trials_table.c.study_id == sa.bindparam("b_study")
)


# PostgreSQL's claim (see Study._claim_postgres).
def _postgres_claim_statements() -> tuple[Any, Any, Any, Any]:
    from sqlalchemy.dialects.postgresql import insert

    expired = (
        sa.select(trials_table.c.id)
        .where(
            (trials_table.c.study_id == sa.bindparam("b_study"))
            & (trials_table.c.state == "running")
            & (trials_table.c.lease_expires < sa.bindparam("b_now"))
        )
        .order_by(trials_table.c.trial_index)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    reclaim = (
        trials_table.update()
        .where(trials_table.c.id == expired)
        .values(
            claim=trials_table.c.claim + 1,
            worker=sa.bindparam("b_worker"),
            lease_expires=sa.bindparam("b_lease"),
            updated_at=sa.bindparam("b_now"),
        )
        .returning(trials_table.c.id, trials_table.c.trial_index, trials_table.c.params_json, trials_table.c.claim)
    )
    others = trials_table.alias("others")
    next_index = (
        sa.select(sa.func.coalesce(sa.func.max(others.c.trial_index) + 1, 0))
        .where(others.c.study_id == studies_table.c.id)
        .scalar_subquery()
    )
    source = sa.select(
        studies_table.c.id,
        next_index,
        sa.literal("", sa.Text),
        sa.literal("running", sa.String),
        sa.bindparam("b_worker", type_=sa.String),
        sa.literal(1, sa.Integer),
        sa.bindparam("b_lease", type_=sa.Float),
        sa.bindparam("b_now", type_=sa.Float),
        sa.bindparam("b_now", type_=sa.Float),
    ).where(
        (studies_table.c.id == sa.bindparam("b_study"))
        & (studies_table.c.max_trials.is_(None) | (studies_table.c.max_trials > next_index))
    )
    columns = ["study_id", "trial_index", "params_json", "state", "worker", "claim", "lease_expires",
               "started_at", "updated_at"]
    insert_next = (
        insert(trials_table)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=["study_id", "trial_index"])
        .returning(trials_table.c.id, trials_table.c.trial_index)
    )
    set_params = (
        trials_table.update()
        .where(trials_table.c.id == sa.bindparam("b_id"))
        .values(params_json=sa.bindparam("b_params"))
    )
    full = sa.select(
        sa.select(sa.func.coalesce(sa.func.max(trials_table.c.trial_index) + 1, 0))
        .where(trials_table.c.study_id == sa.bindparam("b_study"))
        .scalar_subquery(),
        sa.select(studies_table.c.max_trials).where(studies_table.c.id == sa.bindparam("b_study")).scalar_subquery(),
    )
    return reclaim, insert_next, set_params, full


_PG_RECLAIM, _PG_INSERT, _SET_PARAMS, _PG_FULL = _postgres_claim_statements()


class Study:
    """A tuning study: a search space, a seed, and a storage URL shared by its workers.

    Trial ``i`` has the parameters of point ``i`` of the space's scrambled Halton
    sequence for ``seed``, so every worker, on every machine, agrees on what trial
    ``i`` is. The study's definition lives in storage, so any worker can reopen it by
    name alone.

    Args:
        name: the study's unique name in this storage.
        space: a ``tunebook.search.SearchSpace`` (or any object with
            ``sample(n, seed=, start=)``, ``to_dict()`` and a ``from_dict`` class
            method). Required to create a study; optional to reopen one, and then
            checked against the stored one.
        storage: a SQLAlchemy URL: ``sqlite:///path.db`` (the default is
            ``$TUNEBOOK_STORAGE`` or ``sqlite:///tunebook.db``) or
            ``postgresql://user:password@host:port/db`` for many machines.
        seed: the Halton scrambling seed, an integer in ``[0, 2**63)`` (default 0 for
            a new study; checked on reopen).
        max_trials: how many trials the study runs; None for no limit. Given when
            reopening, it replaces the stored limit (to extend a study).
        metric: the metric whose best value ranks trials (default "valid_loss").
        mode: "min" or "max" (default "min"); metric and mode are checked on reopen.
        config_path: the config file the study came from (the playbook's study table).
        notes: free text; replaces the stored notes when given on reopen.
        command: the command that reproduces the study.

    Raises:
        ValueError: reopening with a different space, seed, metric or mode, a
            malformed storage URL, or an out-of-range seed.
        LookupError: reopening by name a study that does not exist.
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
        storage: str | None = None,
        seed: int | None = None,
        max_trials: int | None = None,
        metric: str | None = None,
        mode: str | None = None,
        config_path: str | None = None,
        notes: str | None = None,
        command: str | None = None,
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
        self.storage = normalize_storage(storage or default_storage())
        try:
            self.engine = get_engine(self.storage)
            ensure_schema(self.engine)
        except (sa.exc.DBAPIError, OSError) as error:
            raise StorageError(storage_error_message(self.storage, error)) from error
        space_json = _dumps(space.to_dict()) if space is not None else None
        space_class = _space_class(space) if space is not None else None

        def open_or_create(connection: Connection) -> Any:
            row = connection.execute(sa.select(studies_table).where(studies_table.c.name == name)).first()
            if row is None:
                if space is None:
                    raise LookupError(
                        f"study {name!r} does not exist in {self._safe_storage()}; pass a space to create it"
                    )
                values = {
                    "name": name,
                    "space_class": space_class,
                    "space_json": space_json,
                    "seed": int(seed or 0),
                    "max_trials": max_trials,
                    "metric": metric or "valid_loss",
                    "mode": mode or "min",
                    "config_path": config_path,
                    "notes": notes or "",
                    "command": command,
                    "created_at": time.time(),
                }
                connection.execute(studies_table.insert().values(**values))
                return connection.execute(sa.select(studies_table).where(studies_table.c.name == name)).one()
            self._check_definition(row, space_json, seed, metric, mode)
            updates = {
                key: value
                for key, value in {
                    "max_trials": max_trials,
                    "config_path": config_path,
                    "notes": notes,
                    "command": command,
                }.items()
                if value is not None and value != getattr(row, key)
            }
            if updates:
                connection.execute(studies_table.update().where(studies_table.c.id == row.id).values(**updates))
                row = connection.execute(sa.select(studies_table).where(studies_table.c.id == row.id)).one()
            return row

        # Reopening by name alone writes nothing, so it takes no write lock (and creates no
        # lock file): read-only commands and read-only directories can open a study.
        writes = space is not None or any(v is not None for v in (max_trials, config_path, notes, command))
        try:
            row = run_transaction(self.engine, open_or_create, write=writes, retry_integrity=True)
        except (sa.exc.DBAPIError, OSError) as error:
            raise StorageError(storage_error_message(self.storage, error)) from error
        self._id = row.id
        self.seed = int(row.seed)
        self.metric, self.mode = row.metric, row.mode
        self.config_path, self.notes, self.command = row.config_path, row.notes, row.command
        self._max_trials = row.max_trials
        self._space = space
        self._space_source = (row.space_class, row.space_json)

    def _check_definition(self, row: Any, space_json: str | None, seed: Any, metric: Any, mode: Any) -> None:
        def differs(what: str, stored: Any, given: Any) -> ValueError:
            return ValueError(
                f"study {self.name!r} already exists in {self._safe_storage()} with a different {what}: "
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

    def _safe_storage(self) -> str:
        return display_storage(self.storage)

    @classmethod
    def load(cls, name: str, storage: str | None = None) -> Study:
        """Reopens an existing study from storage alone (LookupError if it does not exist)."""
        return cls(name, storage=storage)

    @property
    def space(self) -> Any:
        """The search space (rebuilt from storage on first use when reopened by name)."""
        if self._space is None:
            self._space = _load_space(*self._space_source)
        return self._space

    @property
    def max_trials(self) -> int | None:
        return self._max_trials

    # ----------------------------------------------------------------- workers
    def ask(
        self,
        lease_seconds: float = 300.0,
        worker: str | None = None,
        *,
        heartbeat: bool = False,
    ) -> Trial | None:
        """Claims the next trial, atomically, and returns it; None when the study is full.

        A trial whose worker's lease expired (it died, or stopped heartbeating) is given
        out again before any new trial, lowest index first. Otherwise the next index is
        claimed, up to ``max_trials``. None means every trial is claimed or finished;
        trials still running elsewhere may yet expire, so a worker that wants to
        mop up can ask again later.

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

        def claim(connection: Connection) -> tuple[int, int, dict[str, Any], int] | None:
            now = time.time()
            # Locks the study row on PostgreSQL (SQLite's BEGIN IMMEDIATE already holds
            # the database write lock), so claims of one study are serialised.
            max_trials = connection.execute(_LOCK_STUDY, {"b_study": self._id}).scalar_one()
            self._max_trials = max_trials
            expired = connection.execute(_EXPIRED, {"b_study": self._id, "b_now": now}).first()
            if expired is not None:
                connection.execute(
                    _RECLAIM,
                    {
                        "b_id": expired.id,
                        "b_claim": expired.claim,
                        "b_new_claim": expired.claim + 1,
                        "b_worker": worker,
                        "b_lease": now + lease_seconds,
                        "b_now": now,
                    },
                )
                return expired.id, expired.trial_index, json.loads(expired.params_json), expired.claim + 1
            index = connection.execute(_NEXT_INDEX, {"b_study": self._id}).scalar_one()
            if max_trials is not None and index >= max_trials:
                return None
            params = self.params(index)
            result = connection.execute(
                trials_table.insert()
                .values(
                    study_id=self._id,
                    trial_index=index,
                    params_json=_dumps(params),
                    state="running",
                    worker=worker,
                    claim=1,
                    lease_expires=now + lease_seconds,
                    started_at=now,
                    updated_at=now,
                )
            )
            trial_id = result.inserted_primary_key[0]
            return trial_id, index, json.loads(_dumps(params)), 1

        if self.engine.dialect.name == "postgresql":
            claimed = self._claim_postgres(worker, lease_seconds)
        else:
            claimed = run_transaction(self.engine, claim, write=True, retry_integrity=True)
        if claimed is None:
            return None
        trial_id, index, params, attempt = claimed
        return Trial(self, trial_id, index, params, attempt, worker, lease_seconds, heartbeat=heartbeat)

    def _claim_postgres(self, worker: str, lease_seconds: float) -> tuple[int, int, dict[str, Any], int] | None:
        """Claims in one transaction of few round trips and no lock held across them.

        A reclaim is one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)``;
        a new trial is one ``INSERT ... SELECT max(index) + 1 ... ON CONFLICT DO NOTHING``,
        which the unique (study, index) constraint gives to exactly one worker (a loser
        inserts again and, in READ COMMITTED, sees the winner's row). On a machine
        whose CPU is busy every round trip costs a scheduling delay, so they are few.
        """

        def claim(connection: Connection) -> tuple[int, int, dict[str, Any], int] | None:
            now = time.time()
            values = {"b_study": self._id, "b_now": now, "b_worker": worker, "b_lease": now + lease_seconds}
            row = connection.execute(_PG_RECLAIM, values).first()
            if row is not None:
                return row.id, row.trial_index, json.loads(row.params_json), row.claim
            while True:
                row = connection.execute(_PG_INSERT, values).first()
                if row is not None:
                    params = self.params(row.trial_index)
                    connection.execute(_SET_PARAMS, {"b_id": row.id, "b_params": _dumps(params)})
                    return row.id, row.trial_index, json.loads(_dumps(params)), 1
                index, self._max_trials = connection.execute(_PG_FULL, {"b_study": self._id}).one()
                if self._max_trials is not None and index >= self._max_trials:
                    return None
                # Another worker inserted that index first: try the next one.

        return run_transaction(self.engine, claim, write=True, retry_integrity=True)

    def params(self, index: int) -> dict[str, Any]:
        """The parameters of trial ``index``: point ``index`` of the Halton sequence."""
        return dict(self.space.sample(1, seed=self.seed, start=int(index))[0])

    # ---------------------------------------------------------------- analysis
    def trials(self) -> list[TrialRecord]:
        """Every trial so far, by index. ``record.history(metric)`` loads lazily, one
        query per metric for the whole study."""
        now = time.time()

        def read(connection: Connection) -> tuple[list[Any], dict[int, list[str]]]:
            rows = connection.execute(
                sa.select(trials_table).where(trials_table.c.study_id == self._id).order_by(trials_table.c.trial_index)
            ).all()
            names = connection.execute(
                sa.select(metrics_table.c.trial_id, metrics_table.c.name)
                .join(trials_table, trials_table.c.id == metrics_table.c.trial_id)
                .where(trials_table.c.study_id == self._id)
                .group_by(metrics_table.c.trial_id, metrics_table.c.name)
            ).all()
            by_trial: dict[int, list[str]] = defaultdict(list)
            for trial_id, metric_name in names:
                by_trial[trial_id].append(metric_name)
            return rows, by_trial

        rows, names = run_transaction(self.engine, read, write=False)
        cache = _HistoryCache(self, {row.trial_index: row.id for row in rows})
        records = []
        for row in rows:
            state = row.state
            if state == "running" and row.lease_expires is not None and row.lease_expires < now:
                state = "pending"
            records.append(
                TrialRecord(
                    index=row.trial_index,
                    params=json.loads(row.params_json),
                    state=state,
                    best_step=None if row.best_step is None else int(row.best_step),
                    best_value=None if row.best_value is None else float(row.best_value),
                    metric_names=tuple(sorted(names.get(row.id, ()))),
                    worker=row.worker,
                    reason=row.reason,
                    attempts=row.claim,
                    started_at=row.started_at,
                    finished_at=row.finished_at,
                    _history=cache.history,
                )
            )
        return records

    def trial(self, index: int) -> TrialRecord:
        """The record of trial ``index`` (KeyError if it was never claimed)."""
        for record in self.trials():
            if record.index == index:
                return record
        raise KeyError(f"study {self.name!r} has no trial {index}")

    def best_trial(self) -> TrialRecord | None:
        """The trial with the best value of the study metric, over every trial that is
        not infeasible (ties: the lower index); None when no trial has a finite value."""
        from tunebook.checkpoints import rank_trials

        candidates = [r for r in self.trials() if r.state != "infeasible" and r.best_value is not None]
        candidates = [r for r in candidates if math.isfinite(r.best_value)]
        if not candidates:
            return None
        order = rank_trials(np.array([r.best_value for r in candidates]), mode=self.mode)
        return candidates[int(order[0])]

    def summary(self) -> dict[str, Any]:
        """The study's row of the playbook's study table.

        Returns:
            A dict: name, config, notes, metric, mode, max_trials, trials (claimed),
            trials_run (finished: complete, infeasible or failed), complete,
            infeasible, failed, running, best_value, best_trial, best_step, command.
        """
        records = self.trials()
        counts = defaultdict(int)
        for record in records:
            counts[record.state] += 1
        best = self.best_trial()
        return {
            "name": self.name,
            "config": self.config_path,
            "notes": self.notes,
            "metric": self.metric,
            "mode": self.mode,
            "max_trials": self.max_trials,
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
        }

    # -------------------------------------------------------------- attributes
    def set_attr(self, key: str, value: Any) -> None:
        """Stores a JSON value under ``key`` with the study, replacing any earlier one.

        What a study remembers besides its trials: the playbook's procedures record
        their results here (``playbook.throughput_sweep``, ...) for the report. Any
        worker can write; the last write of a key wins, other keys are untouched.

        Args:
            key: a non-empty string of at most 255 characters.
            value: anything ``json.dumps`` accepts (numpy scalars and arrays too; NaN
                and infinities are kept).

        Raises:
            ValueError: an empty or too long key.
            TypeError: a value that is not JSON serialisable.
        """
        if not isinstance(key, str) or not key or len(key) > 255:
            raise ValueError(f"key must be a non-empty string of at most 255 characters, got {key!r}")
        try:
            text = json.dumps(value, sort_keys=True, default=_json_default)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the value of study attribute {key!r} must be JSON serialisable: {error}") from None

        def write(connection: Connection) -> None:
            where = (attrs_table.c.study_id == self._id) & (attrs_table.c.key == key)
            connection.execute(attrs_table.delete().where(where))
            connection.execute(attrs_table.insert().values(study_id=self._id, key=key, value_json=text,
                                                           updated_at=time.time()))

        run_transaction(self.engine, write, write=True, retry_integrity=True)

    @property
    def attrs(self) -> dict[str, Any]:
        """Every attribute stored with :meth:`set_attr`, by key (read from storage each time)."""

        def read(connection: Connection) -> list[Any]:
            return connection.execute(
                sa.select(attrs_table.c.key, attrs_table.c.value_json)
                .where(attrs_table.c.study_id == self._id)
                .order_by(attrs_table.c.key)
            ).all()

        return {key: json.loads(text) for key, text in run_transaction(self.engine, read, write=False)}

    def __repr__(self) -> str:
        return f"Study({self.name!r}, storage={self._safe_storage()!r}, seed={self.seed}, max_trials={self.max_trials})"


class _HistoryCache:
    """Loads one metric's history for every trial of a study in one query."""

    def __init__(self, study: Study, ids: dict[int, int]) -> None:
        self.study, self.ids = study, ids
        self.loaded: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}

    def history(self, index: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        if metric not in self.loaded:
            self.loaded[metric] = self._load(metric)
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        return self.loaded[metric].get(self.ids.get(index, -1), empty)

    def _load(self, metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        def read(connection: Connection) -> list[Any]:
            return connection.execute(
                sa.select(metrics_table.c.trial_id, metrics_table.c.step, metrics_table.c.value)
                .join(trials_table, trials_table.c.id == metrics_table.c.trial_id)
                .where((trials_table.c.study_id == self.study._id) & (metrics_table.c.name == metric))
                .order_by(metrics_table.c.trial_id, metrics_table.c.step)
            ).all()

        rows = run_transaction(self.study.engine, read, write=False)
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if not rows:
            return out
        trial_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        steps = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter((np.nan if r[2] is None else r[2] for r in rows), dtype=np.float64, count=len(rows))
        starts = np.flatnonzero(np.r_[True, trial_ids[1:] != trial_ids[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        for start, end in zip(starts, ends):
            out[int(trial_ids[start])] = (steps[start:end], values[start:end])
        return out


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """The study table of a storage: :meth:`Study.summary` of every study, oldest first.

    Reading creates nothing: a SQLite file that does not exist, or a database without
    tunebook's tables, holds no studies."""
    storage = normalize_storage(storage or default_storage())
    if not has_studies(storage):
        return []
    engine = get_engine(storage)
    try:
        ensure_schema(engine)
    except (sa.exc.DBAPIError, OSError) as error:
        raise StorageError(storage_error_message(storage, error)) from error
    names = run_transaction(
        engine,
        lambda c: [r.name for r in c.execute(sa.select(studies_table.c.name).order_by(studies_table.c.id))],
        write=False,
    )
    return [Study(name, storage=storage).summary() for name in names]
