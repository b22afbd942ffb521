"""The study database schema, versioned.

``tunebook_meta`` holds ``schema_version``. Opening a database creates the tables when
missing, refuses a database written by a newer tunebook, and runs the migrations in
:data:`MIGRATIONS` (version ``v`` to ``v + 1``) on an older one, in one transaction.
A read-only open (:func:`check_schema`) creates and migrates nothing.

Versions: 1, the first; 2 adds study attributes (``tunebook_study_attrs``); 3 adds the
round's goal, roles and conclusion and the exploitation settings (``tunebook_studies``),
and each trial's kind, Halton point, parent and training seed (``tunebook_trials``).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tunebook.study._storage import run_transaction

SCHEMA_VERSION = 3

metadata = sa.MetaData()

meta = sa.Table(
    "tunebook_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

studies = sa.Table(
    "tunebook_studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("space_class", sa.String(255), nullable=False),
    sa.Column("space_json", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("max_trials", sa.Integer, nullable=True),
    sa.Column("metric", sa.String(255), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("config_path", sa.Text, nullable=True),
    sa.Column("notes", sa.Text, nullable=False, default=""),
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # Version 3: the round of the tuning log, and the exploitation phase.
    sa.Column("goal", sa.Text, nullable=True),
    sa.Column("roles_json", sa.Text, nullable=True),
    sa.Column("conclusion", sa.Text, nullable=True),
    sa.Column("adopted_trial", sa.Integer, nullable=True),
    sa.Column("concluded_at", sa.Float, nullable=True),
    sa.Column("exploit_json", sa.Text, nullable=True),
)

trials = sa.Table(
    "tunebook_trials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("tunebook_studies.id", ondelete="CASCADE"), nullable=False),
    sa.Column("trial_index", sa.Integer, nullable=False),
    sa.Column("params_json", sa.Text, nullable=False),
    # running | complete | infeasible | failed ("pending" is derived: running, lease expired)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("worker", sa.String(255), nullable=True),
    # Incremented at every claim; a worker's writes must carry the claim it got.
    sa.Column("claim", sa.Integer, nullable=False),
    sa.Column("lease_expires", sa.Float, nullable=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("best_step", sa.BigInteger, nullable=True),
    sa.Column("best_value", sa.Float, nullable=True),
    # Version 3. kind: quasirandom | replicate | exploit. point: the Halton index of a
    # quasi-random trial (else NULL). parent: the trial a replicate repeats. seed: the
    # training seed handed to the worker.
    sa.Column("kind", sa.String(16), nullable=False, server_default="quasirandom"),
    sa.Column("point", sa.Integer, nullable=True),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("study_id", "trial_index", name="tunebook_trials_study_index"),
    sa.UniqueConstraint("study_id", "point", name="tunebook_trials_study_point"),
    sa.Index("tunebook_trials_study_state", "study_id", "state"),
)

metrics = sa.Table(
    "tunebook_metrics",
    metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("tunebook_trials.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True),
    # NULL stands for NaN (SQLite cannot store NaN); ±inf are stored as such.
    sa.Column("value", sa.Float, nullable=True),
)

# A study's named JSON values (Study.set_attr / Study.attrs): what the playbook's
# procedures record for the report. One row per key, so writers of different keys never
# overwrite each other. Added in schema version 2.
study_attrs = sa.Table(
    "tunebook_study_attrs",
    metadata,
    sa.Column("study_id", sa.Integer, sa.ForeignKey("tunebook_studies.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value_json", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _add_study_attrs(connection: Connection) -> None:
    study_attrs.create(connection, checkfirst=True)


def _add_trial_kinds(connection: Connection) -> None:
    from tunebook.study._seeds import trial_seed

    # Idempotent: a database that already has some of the columns (an interrupted or
    # hand-made upgrade) gains only the missing ones.
    inspector = sa.inspect(connection)
    for table, columns in ((studies, ("goal", "roles_json", "conclusion", "adopted_trial", "concluded_at",
                                      "exploit_json")),
                           (trials, ("kind", "point", "parent", "seed"))):
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for name in columns:
            if name in present:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {name} {table.c[name].type.compile(connection.dialect)}"
            if name == "kind":
                ddl += " NOT NULL DEFAULT 'quasirandom'"
            connection.exec_driver_sql(ddl)
    # Every earlier trial is quasi-random: trial i is Halton point i, with the seed a
    # version-3 study would have given it.
    connection.execute(trials.update().where(trials.c.point.is_(None) & (trials.c.kind == "quasirandom"))
                       .values(point=trials.c.trial_index))
    rows = connection.execute(
        sa.select(trials.c.id, trials.c.trial_index, studies.c.seed)
        .join(studies, studies.c.id == trials.c.study_id)
        .where(trials.c.seed.is_(None) & (trials.c.kind == "quasirandom"))
    ).all()
    if rows:
        connection.execute(
            trials.update().where(trials.c.id == sa.bindparam("b_id")).values(seed=sa.bindparam("b_seed")),
            [{"b_id": row.id, "b_seed": trial_seed(int(row.seed), "quasirandom", row.trial_index)} for row in rows],
        )
    indexes = {index["name"] for index in inspector.get_indexes(trials.name)}
    indexes |= {constraint["name"] for constraint in inspector.get_unique_constraints(trials.name)}
    if "tunebook_trials_study_point" not in indexes:
        connection.exec_driver_sql(
            "CREATE UNIQUE INDEX tunebook_trials_study_point ON tunebook_trials (study_id, point)"
        )


#: Migrations: MIGRATIONS[v] upgrades a version-v database to v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_study_attrs, 2: _add_trial_kinds}


class SchemaVersionError(RuntimeError):
    """The database was written by a newer tunebook."""


def _ensure(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Serialises concurrent first openings (CREATE TABLE is not idempotent under races).
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7270523455)"))
    metadata.create_all(connection, checkfirst=True)
    version = connection.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if version is None:
        connection.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return
    version = int(version)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has schema version {version}, newer than this tunebook's "
            f"({SCHEMA_VERSION}); upgrade tunebook to open it"
        )
    while version < SCHEMA_VERSION:
        MIGRATIONS[version](connection)
        version += 1
    connection.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))


_ready: set[int] = set()


def ensure_schema(engine: Engine) -> None:
    """Creates or upgrades the schema once per engine and process."""
    if id(engine) in _ready:
        return

    def check(connection: Connection) -> bool:
        version = connection.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        return version is not None and int(version) == SCHEMA_VERSION

    inspector_has_meta = sa.inspect(engine).has_table("tunebook_meta")
    if not (inspector_has_meta and run_transaction(engine, check, write=False)):
        run_transaction(engine, _ensure, write=True, retry_integrity=True)
    _ready.add(id(engine))


def check_schema(engine: Engine) -> bool:
    """For a read-only open: whether the database holds tunebook's tables, at this
    tunebook's schema version. Creates nothing.

    Raises:
        SchemaVersionError: the database was written by another version (a newer one:
            upgrade tunebook; an older one: open it once for writing, which upgrades it).
    """
    if not sa.inspect(engine).has_table("tunebook_meta"):
        return False
    version = schema_version(engine)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has schema version {version}, newer than this tunebook's "
            f"({SCHEMA_VERSION}); upgrade tunebook to open it"
        )
    if version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database has schema version {version}, older than this tunebook's ({SCHEMA_VERSION}), "
            "and a read-only open does not upgrade it: open the study once for writing (for example "
            "Study(name, storage=...)), which upgrades it in place"
        )
    return True


def schema_version(engine: Engine) -> int:
    """The schema version stored in the database."""
    value = run_transaction(
        engine, lambda c: c.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar(), write=False
    )
    return int(value)
