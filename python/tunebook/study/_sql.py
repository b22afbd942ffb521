"""The study storage over SQL: SQLite (WAL) and PostgreSQL through SQLAlchemy Core.

Every statement is built once at import: constructing SQLAlchemy expressions per call
costs more than running them on SQLite. The two dialects differ only in the claim
(:meth:`SQLStorage._claim_sqlite` under SQLite's database write lock,
:meth:`SQLStorage._claim_postgres` with row locks and no lock held across round trips)
and in the upsert statement.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
    check_final_state,
    dumps_params,
)
from tunebook.study._schema import check_schema, ensure_schema
from tunebook.study._schema import metrics as metrics_table
from tunebook.study._schema import studies as studies_table
from tunebook.study._schema import study_attrs as attrs_table
from tunebook.study._schema import trials as trials_table
from tunebook.study._storage import get_engine, run_transaction
from tunebook.study._url import StorageError, display, error_message

# ---------------------------------------------------------------------- the claim (SQLite)
_CLAIMED_COLUMNS = (trials_table.c.id, trials_table.c.trial_index, trials_table.c.params_json, trials_table.c.claim,
                    trials_table.c.kind, trials_table.c.point, trials_table.c.parent, trials_table.c.seed)
_LOCK_STUDY = (
    sa.select(studies_table.c.max_trials).where(studies_table.c.id == sa.bindparam("b_study")).with_for_update()
)
# A trial waiting for its first claim (a replicate) starts when it is claimed.
_STARTED = sa.case((trials_table.c.claim == 0, sa.bindparam("b_now")), else_=trials_table.c.started_at)
_EXPIRED = (
    sa.select(*_CLAIMED_COLUMNS)
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
        started_at=_STARTED,
    )
)
# The next index and the next Halton point, as two scalar subqueries: each is then one
# step down a unique index.
_NEXT = sa.select(
    sa.select(sa.func.coalesce(sa.func.max(trials_table.c.trial_index) + 1, 0))
    .where(trials_table.c.study_id == sa.bindparam("b_study"))
    .scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(trials_table.c.point) + 1, 0))
    .where(trials_table.c.study_id == sa.bindparam("b_study"))
    .scalar_subquery(),
)
_INSERT_TRIAL = trials_table.insert().values(
    study_id=sa.bindparam("b_study"),
    trial_index=sa.bindparam("b_index"),
    params_json=sa.bindparam("b_params"),
    state="running",
    worker=sa.bindparam("b_worker"),
    claim=sa.bindparam("b_claim"),
    lease_expires=sa.bindparam("b_lease"),
    started_at=sa.bindparam("b_now"),
    updated_at=sa.bindparam("b_now"),
    kind=sa.bindparam("b_kind"),
    point=sa.bindparam("b_point"),
    parent=sa.bindparam("b_parent"),
    seed=sa.bindparam("b_seed"),
)
_COUNT_KIND = sa.select(sa.func.count()).where(
    (trials_table.c.study_id == sa.bindparam("b_study")) & (trials_table.c.kind == sa.bindparam("b_kind"))
)
_REPLICATES = (
    sa.select(trials_table.c.trial_index)
    .where((trials_table.c.study_id == sa.bindparam("b_study")) & (trials_table.c.parent == sa.bindparam("b_parent"))
           & (trials_table.c.kind == "replicate"))
    .order_by(trials_table.c.trial_index)
)
_LOCK_TRIAL = (
    sa.select(trials_table.c.id)
    .where((trials_table.c.study_id == sa.bindparam("b_study")) & (trials_table.c.trial_index == sa.bindparam("b_index")))
    .with_for_update()
)


# ---------------------------------------------------------------------- the claim (PostgreSQL)
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
            started_at=_STARTED,
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    others = trials_table.alias("others")
    next_index = (
        sa.select(sa.func.coalesce(sa.func.max(others.c.trial_index) + 1, 0))
        .where(others.c.study_id == studies_table.c.id)
        .scalar_subquery()
    )
    next_point = (
        sa.select(sa.func.coalesce(sa.func.max(others.c.point) + 1, 0))
        .where(others.c.study_id == studies_table.c.id)
        .scalar_subquery()
    )
    source = sa.select(
        studies_table.c.id,
        next_index,
        next_point,
        sa.literal("quasirandom", sa.String),
        sa.literal("", sa.Text),
        sa.literal("running", sa.String),
        sa.bindparam("b_worker", type_=sa.String),
        sa.literal(1, sa.Integer),
        sa.bindparam("b_lease", type_=sa.Float),
        sa.bindparam("b_now", type_=sa.Float),
        sa.bindparam("b_now", type_=sa.Float),
    ).where(
        (studies_table.c.id == sa.bindparam("b_study"))
        & (studies_table.c.max_trials.is_(None) | (studies_table.c.max_trials > next_point))
    )
    columns = ["study_id", "trial_index", "point", "kind", "params_json", "state", "worker", "claim",
               "lease_expires", "started_at", "updated_at"]
    # No conflict target: a loser may collide on (study, index) or on (study, point).
    insert_next = (
        insert(trials_table)
        .from_select(columns, source)
        .on_conflict_do_nothing()
        .returning(trials_table.c.id, trials_table.c.trial_index, trials_table.c.point)
    )
    set_params = (
        trials_table.update()
        .where(trials_table.c.id == sa.bindparam("b_id"))
        .values(params_json=sa.bindparam("b_params"), seed=sa.bindparam("b_seed"))
    )
    full = sa.select(
        sa.select(sa.func.coalesce(sa.func.max(trials_table.c.point) + 1, 0))
        .where(trials_table.c.study_id == sa.bindparam("b_study"))
        .scalar_subquery(),
        sa.select(studies_table.c.max_trials).where(studies_table.c.id == sa.bindparam("b_study")).scalar_subquery(),
    )
    return reclaim, insert_next, set_params, full


_PG_RECLAIM, _PG_INSERT, _PG_SET_PARAMS, _PG_FULL = _postgres_claim_statements()


# ---------------------------------------------------------------------- a worker's writes
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
    return sa.select(column).where(finite).order_by(order, metrics_table.c.step.asc()).limit(1).scalar_subquery()


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


def _upsert(dialect: str, table: sa.Table, keys: list[str], update: list[str]) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=keys, set_={name: statement.excluded[name] for name in update}
    )


_UPSERTS = {
    (dialect, what): _upsert(dialect, table, keys, update)
    for dialect in ("sqlite", "postgresql")
    for what, table, keys, update in (
        ("metrics", metrics_table, ["trial_id", "name", "step"], ["value"]),
        ("attrs", attrs_table, ["study_id", "key"], ["value_json", "updated_at"]),
    )
}


def _stored(value: float) -> float | None:
    # SQLite cannot store NaN: NULL stands for it (±inf are stored as such).
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------- reads
_TRIAL_NAMES = (
    sa.select(metrics_table.c.trial_id, metrics_table.c.name)
    .join(trials_table, trials_table.c.id == metrics_table.c.trial_id)
    .where(trials_table.c.study_id == sa.bindparam("b_study"))
    .group_by(metrics_table.c.trial_id, metrics_table.c.name)
)
_HISTORY = (
    sa.select(trials_table.c.trial_index, metrics_table.c.step, metrics_table.c.value)
    .join(trials_table, trials_table.c.id == metrics_table.c.trial_id)
    .where((trials_table.c.study_id == sa.bindparam("b_study")) & (metrics_table.c.name == sa.bindparam("b_name")))
    .order_by(trials_table.c.trial_index, metrics_table.c.step)
)


def _study_row(row: Any) -> StudyRow:
    return StudyRow(
        id=row.id, name=row.name, space_class=row.space_class, space_json=row.space_json, seed=int(row.seed),
        max_trials=row.max_trials, metric=row.metric, mode=row.mode, config_path=row.config_path,
        notes=row.notes, command=row.command, created_at=row.created_at, goal=row.goal, roles_json=row.roles_json,
        conclusion=row.conclusion, adopted_trial=row.adopted_trial, concluded_at=row.concluded_at,
        exploit_json=row.exploit_json,
    )


def _claimed(row: Any) -> ClaimedTrial:
    return ClaimedTrial(row.id, row.trial_index, json.loads(row.params_json), row.claim, row.kind, row.point,
                        row.parent, None if row.seed is None else int(row.seed))


def _insert_values(study_id: int, index: int, trial: NewTrial, now: float, *, worker: str | None, claim: int,
                   lease: float | None) -> dict[str, Any]:
    return {"b_study": study_id, "b_index": index, "b_params": dumps_params(trial.params), "b_worker": worker,
            "b_claim": claim, "b_lease": lease, "b_now": now, "b_kind": trial.kind, "b_point": trial.point,
            "b_parent": trial.parent, "b_seed": trial.seed}


class SQLStorage(StudyStorage):
    """A study storage in a SQLite file or a PostgreSQL database.

    Args:
        url: ``sqlite:///path.db`` or ``postgresql://user:password@host:port/db``.
        read_only: never create or change anything (see :func:`open_storage`).
    """

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.engine = self._guard(lambda: get_engine(url, read_only=read_only))
        self.dialect = self.engine.dialect.name
        # A read-only open of a database without tunebook's tables holds no studies.
        self._has_tables = self._guard(
            lambda: check_schema(self.engine) if read_only else (ensure_schema(self.engine) or True))

    def describe(self) -> str:
        return display(self.url)

    def _guard(self, call: Callable[[], Any]) -> Any:
        """Runs ``call``; a database or file error becomes a :class:`StorageError` naming
        the storage (never its password) and the fix. Integrity errors pass: callers
        decide what a lost race means."""
        try:
            return call()
        except sa.exc.IntegrityError:
            raise
        except (sa.exc.DBAPIError, OSError) as error:
            raise StorageError(error_message(self.url, error)) from error

    def __repr__(self) -> str:
        return f"SQLStorage({self.describe()!r}{', read_only=True' if self.read_only else ''})"

    def _write(self, work: Callable[[Connection], Any], *, retry_integrity: bool = False) -> Any:
        if self.read_only:
            raise ReadOnlyStorageError(f"{self.describe()} was opened read-only")
        try:
            return run_transaction(self.engine, work, write=True, retry_integrity=retry_integrity)
        except sa.exc.IntegrityError:
            raise
        except (sa.exc.DBAPIError, OSError) as error:
            raise StorageError(error_message(self.url, error)) from error

    def _read(self, work: Callable[[Connection], Any]) -> Any:
        try:
            return run_transaction(self.engine, work, write=False)
        except (sa.exc.DBAPIError, OSError) as error:
            raise StorageError(error_message(self.url, error)) from error

    # ------------------------------------------------------------------ studies
    def create_study(self, fields: Mapping[str, Any]) -> StudyRow:
        def create(connection: Connection) -> Any:
            exists = connection.execute(
                sa.select(studies_table.c.id).where(studies_table.c.name == fields["name"])
            ).first()
            if exists is not None:
                raise StudyExistsError(f"study {fields['name']!r} already exists in {self.describe()}")
            connection.execute(studies_table.insert().values(**fields, created_at=time.time()))
            return connection.execute(sa.select(studies_table).where(studies_table.c.name == fields["name"])).one()

        try:
            return _study_row(self._write(create))
        except sa.exc.IntegrityError:
            # Another process created it between our check and our insert.
            if self.get_study(fields["name"]) is not None:
                raise StudyExistsError(f"study {fields['name']!r} already exists in {self.describe()}") from None
            raise

    def get_study(self, name: str) -> StudyRow | None:
        if not self._has_tables:
            return None
        row = self._read(lambda c: c.execute(sa.select(studies_table).where(studies_table.c.name == name)).first())
        return None if row is None else _study_row(row)

    def list_studies(self) -> list[StudyRow]:
        if not self._has_tables:
            return []
        rows = self._read(lambda c: c.execute(sa.select(studies_table).order_by(studies_table.c.id)).all())
        return [_study_row(row) for row in rows]

    def update_study(self, study_id: int, fields: Mapping[str, Any]) -> StudyRow:
        unknown = set(fields) - set(UPDATABLE_STUDY_FIELDS)
        if unknown:
            raise ValueError(f"cannot update study fields {sorted(unknown)}")

        def update(connection: Connection) -> Any:
            if fields:
                connection.execute(studies_table.update().where(studies_table.c.id == study_id).values(**fields))
            return connection.execute(sa.select(studies_table).where(studies_table.c.id == study_id)).one()

        return _study_row(self._write(update))

    def set_study_attr(self, study_id: int, key: str, value_json: str) -> None:
        statement = _UPSERTS[(self.dialect, "attrs")]
        self._write(lambda c: c.execute(
            statement, [{"study_id": study_id, "key": key, "value_json": value_json, "updated_at": time.time()}]
        ))

    def get_study_attrs(self, study_id: int) -> dict[str, str]:
        if not self._has_tables:
            return {}
        rows = self._read(
            lambda c: c.execute(
                sa.select(attrs_table.c.key, attrs_table.c.value_json)
                .where(attrs_table.c.study_id == study_id)
                .order_by(attrs_table.c.key)
            ).all()
        )
        return {key: value for key, value in rows}

    # ------------------------------------------------------------------ claims
    def claim(
        self,
        study_id: int,
        worker: str,
        lease_seconds: float,
        make_trial: Callable[[int], NewTrial],
    ) -> ClaimedTrial | None:
        if self.read_only:
            raise ReadOnlyStorageError(f"{self.describe()} was opened read-only")
        if self.dialect == "postgresql":
            return self._claim_postgres(study_id, worker, lease_seconds, make_trial)
        return self._claim_sqlite(study_id, worker, lease_seconds, make_trial)

    def _claim_sqlite(
        self, study_id: int, worker: str, lease_seconds: float, make_trial: Callable[[int], NewTrial]
    ) -> ClaimedTrial | None:
        """Claims under SQLite's database write lock (``BEGIN IMMEDIATE``)."""

        def claim(connection: Connection) -> ClaimedTrial | None:
            now = time.time()
            # Locks the study row where row locks exist; SQLite's BEGIN IMMEDIATE already
            # holds the database write lock, so claims of one study are serialised.
            max_trials = connection.execute(_LOCK_STUDY, {"b_study": study_id}).scalar_one()
            expired = connection.execute(_EXPIRED, {"b_study": study_id, "b_now": now}).first()
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
                return replace(_claimed(expired), claim=expired.claim + 1)
            index, point = connection.execute(_NEXT, {"b_study": study_id}).one()
            if max_trials is not None and point >= max_trials:
                return None
            trial = replace(make_trial(point), kind="quasirandom", point=point, parent=None)
            values = _insert_values(study_id, index, trial, now, worker=worker, claim=1, lease=now + lease_seconds)
            result = connection.execute(_INSERT_TRIAL, values)
            return ClaimedTrial(result.inserted_primary_key[0], index, json.loads(values["b_params"]), 1, trial.kind,
                                trial.point, trial.parent, trial.seed)

        return self._write(claim, retry_integrity=True)

    def _claim_postgres(
        self, study_id: int, worker: str, lease_seconds: float, make_trial: Callable[[int], NewTrial]
    ) -> ClaimedTrial | None:
        """Claims in one transaction of few round trips and no lock held across them.

        A reclaim is one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)``;
        a new trial is one ``INSERT ... SELECT max(index) + 1 ... ON CONFLICT DO NOTHING``,
        which the unique (study, index) constraint gives to exactly one worker (a loser
        inserts again and, in READ COMMITTED, sees the winner's row). On a machine
        whose CPU is busy every round trip costs a scheduling delay, so they are few.
        """

        def claim(connection: Connection) -> ClaimedTrial | None:
            now = time.time()
            values = {"b_study": study_id, "b_now": now, "b_worker": worker, "b_lease": now + lease_seconds}
            row = connection.execute(_PG_RECLAIM, values).first()
            if row is not None:
                return _claimed(row)
            while True:
                row = connection.execute(_PG_INSERT, values).first()
                if row is not None:
                    trial = make_trial(row.point)
                    params_json = dumps_params(trial.params)
                    connection.execute(_PG_SET_PARAMS, {"b_id": row.id, "b_params": params_json, "b_seed": trial.seed})
                    return ClaimedTrial(row.id, row.trial_index, json.loads(params_json), 1, "quasirandom", row.point,
                                        None, trial.seed)
                point, max_trials = connection.execute(_PG_FULL, {"b_study": study_id}).one()
                if max_trials is not None and point >= max_trials:
                    return None
                # Another worker inserted that index first: try the next one.

        return self._write(claim, retry_integrity=True)

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
        def insert(connection: Connection) -> ClaimedTrial | None:
            now = time.time()
            # Serialises the inserts of one study (SQLite: BEGIN IMMEDIATE already did).
            connection.execute(_LOCK_STUDY, {"b_study": study_id})
            if connection.execute(_COUNT_KIND, {"b_study": study_id, "b_kind": trial.kind}).scalar_one() >= kind_limit:
                return None
            index, _ = connection.execute(_NEXT, {"b_study": study_id}).one()
            if index - 1 != (-1 if if_last_index is None else if_last_index):
                raise StaleProposalError(f"trial {index - 1} was created after the proposal")
            values = _insert_values(study_id, index, trial, now, worker=worker, claim=1, lease=now + lease_seconds)
            result = connection.execute(_INSERT_TRIAL, values)
            return ClaimedTrial(result.inserted_primary_key[0], index, json.loads(values["b_params"]), 1, trial.kind,
                                trial.point, trial.parent, trial.seed)

        return self._write(insert, retry_integrity=True)

    def add_replicates(
        self, study_id: int, parent: int, n: int, make_replicate: Callable[[int], NewTrial]
    ) -> list[int]:
        def add(connection: Connection) -> list[int]:
            now = time.time()
            # Locking the parent serialises two workers topping up the same trial.
            if connection.execute(_LOCK_TRIAL, {"b_study": study_id, "b_index": parent}).first() is None:
                raise KeyError(parent)
            indices = list(connection.execute(_REPLICATES, {"b_study": study_id, "b_parent": parent}).scalars())
            if len(indices) < n:
                index, _ = connection.execute(_NEXT, {"b_study": study_id}).one()
                rows = []
                for number in range(len(indices) + 1, n + 1):
                    # Waiting for a claim: claim 0 and a lease that expired at the epoch.
                    rows.append(_insert_values(study_id, index, make_replicate(number), now, worker=None, claim=0,
                                               lease=0.0))
                    indices.append(index)
                    index += 1
                connection.execute(_INSERT_TRIAL, rows)
            return indices[:n]

        return self._write(add, retry_integrity=True)

    # ------------------------------------------------------------------ a worker's writes
    def _owned_update(
        self,
        trial_id: int,
        claim: int,
        values: Sequence[tuple[str, int, float]],
        *,
        lease_seconds: float | None,
        metric: str | None,
        mode: str | None,
        state: str | None = None,
        reason: str | None = None,
    ) -> None:
        rows = [{"trial_id": trial_id, "name": name, "step": step, "value": _stored(value)}
                for name, step, value in values]
        upsert = _UPSERTS[(self.dialect, "metrics")]

        def work(connection: Connection) -> None:
            now = time.time()
            params: dict[str, Any] = {
                "b_id": trial_id,
                "b_claim": claim,
                "b_now": now,
                "b_lease": None if lease_seconds is None else now + lease_seconds,
            }
            if metric is not None:
                if rows:
                    connection.execute(upsert, rows)
                # The best (step, value) is recomputed inside the UPDATE, from
                # everything stored: exact even after re-reports and reclaims.
                params["b_name"] = metric
                if state is not None:
                    params.update(b_state=state, b_reason=reason or None)
                    statement = _FINISH[mode]
                else:
                    statement = _RENEW_WITH_BEST[mode]
            else:
                statement = _RENEW
            # The UPDATE checks this worker still holds the claim; on PostgreSQL it also
            # waits for (and then sees) a concurrent reclaim. If the claim is gone,
            # raising rolls back the metric writes above.
            if connection.execute(statement, params).rowcount != 1:
                raise LeaseLostError(f"trial {trial_id} is no longer held under claim {claim}")

        self._write(work)

    def renew(self, trial_id: int, claim: int, lease_seconds: float) -> None:
        self._owned_update(trial_id, claim, (), lease_seconds=lease_seconds, metric=None, mode=None)

    def report(
        self,
        trial_id: int,
        claim: int,
        values: Sequence[tuple[str, int, float]],
        lease_seconds: float,
        metric: str,
        mode: str,
    ) -> None:
        if not values:
            self.renew(trial_id, claim, lease_seconds)
            return
        self._owned_update(trial_id, claim, values, lease_seconds=lease_seconds, metric=metric, mode=mode)

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
        check_final_state(state)
        self._owned_update(trial_id, claim, values, lease_seconds=None, metric=metric, mode=mode, state=state,
                           reason=reason)

    # ------------------------------------------------------------------ reads
    def get_trials(self, study_id: int) -> list[TrialRow]:
        if not self._has_tables:
            return []

        def read(connection: Connection) -> tuple[list[Any], list[Any]]:
            rows = connection.execute(
                sa.select(trials_table).where(trials_table.c.study_id == study_id).order_by(trials_table.c.trial_index)
            ).all()
            return rows, connection.execute(_TRIAL_NAMES, {"b_study": study_id}).all()

        rows, names = self._read(read)
        by_trial: dict[int, list[str]] = {}
        for trial_id, name in names:
            by_trial.setdefault(trial_id, []).append(name)
        return [
            TrialRow(
                id=row.id,
                index=row.trial_index,
                params=json.loads(row.params_json),
                state=row.state,
                worker=row.worker,
                claim=row.claim,
                lease_expires=row.lease_expires,
                started_at=row.started_at,
                finished_at=row.finished_at,
                reason=row.reason,
                best_step=None if row.best_step is None else int(row.best_step),
                best_value=None if row.best_value is None else float(row.best_value),
                metric_names=tuple(sorted(by_trial.get(row.id, ()))),
                kind=row.kind,
                point=row.point,
                parent=row.parent,
                seed=None if row.seed is None else int(row.seed),
            )
            for row in rows
        ]

    def get_histories(self, study_id: int, metric: str) -> dict[int, History]:
        if not self._has_tables:
            return {}
        rows = self._read(lambda c: c.execute(_HISTORY, {"b_study": study_id, "b_name": metric}).all())
        out: dict[int, History] = {}
        if not rows:
            return out
        indices = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        steps = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        values = np.fromiter((np.nan if r[2] is None else r[2] for r in rows), dtype=np.float64, count=len(rows))
        starts = np.flatnonzero(np.r_[True, indices[1:] != indices[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        for start, end in zip(starts, ends):
            out[int(indices[start])] = (steps[start:end], values[start:end])
        return out
