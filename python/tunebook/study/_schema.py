"""The study database schema, versioned.

``tunebook_meta`` holds ``schema_version``. Opening a database creates the tables when
missing, refuses a database written by a newer tunebook, and runs the migrations in
:data:`MIGRATIONS` (version ``v`` to ``v + 1``) on an older one, in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tunebook.study._storage import run_transaction

SCHEMA_VERSION = 2

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
    sa.UniqueConstraint("study_id", "trial_index", name="tunebook_trials_study_index"),
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


#: Migrations: MIGRATIONS[v] upgrades a version-v database to v + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_study_attrs}


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


def schema_version(engine: Engine) -> int:
    """The schema version stored in the database."""
    value = run_transaction(
        engine, lambda c: c.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar(), write=False
    )
    return int(value)
