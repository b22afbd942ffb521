"""Storage engines: SQLite (WAL, busy timeout, write transactions that take the lock up
front) and PostgreSQL (row locks), behind one SQLAlchemy 2 engine per URL and process,
with retries for the transient errors of a shared database."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from tunebook.study._url import parse as parse_storage
from tunebook.study._url import sqlite_file

T = TypeVar("T")

#: The environment variable naming the default storage URL.
STORAGE_ENV = "TUNEBOOK_STORAGE"
DEFAULT_STORAGE = "sqlite:///tunebook.db"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_write_locks: dict[int, _WriterQueue] = {}


class _WriterQueue:
    """Queues SQLite writers on ``flock`` of a file beside the database.

    SQLite's busy handler makes a blocked writer sleep in growing steps (up to 100 ms),
    so under contention the lock sits idle between sleeps. ``flock`` waits in the
    kernel and wakes the next writer as soon as the lock is released: with 8 workers
    this multiplies claims per second. ``BEGIN IMMEDIATE`` and the busy timeout still
    guard against writers that do not use this queue.
    """

    def __init__(self, database: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(database)) + "-tunebook-lock"
        self.local = threading.local()  # one open file per thread: flock excludes between them

    @contextmanager
    def hold(self) -> Iterator[None]:
        fd = getattr(self.local, "fd", None)
        if fd is None:
            fd = self.local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def default_storage() -> str:
    """``$TUNEBOOK_STORAGE``, else a ``tunebook.db`` SQLite file in the current directory."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def _sqlite_engine(url: sa.URL) -> Engine:
    memory = url.database in (None, "", ":memory:")
    if memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _write_locks[id(engine)] = _WriterQueue(url.database)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let the "begin" hook below emit BEGIN, so writes can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: never corrupts; a power cut may lose the last commits, which only
        # the (equally lost) local workers could have seen.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        # BEGIN IMMEDIATE takes the write lock at once: a read-then-write transaction can
        # then never fail to upgrade its lock midway (SQLITE_BUSY that no timeout cures).
        write = connection.get_execution_options().get("tunebook_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_driver(url: sa.URL) -> sa.URL:
    """A plain ``postgresql://`` URL gets whichever driver is installed (SQLAlchemy's
    own default, psycopg 3, is often not)."""
    if url.drivername != "postgresql":
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return url.set(drivername=driver)
    raise ImportError('PostgreSQL storage needs a driver: pip install "tunebook[postgres]" (psycopg2-binary)')


def get_engine(storage: str) -> Engine:
    """The process's engine for a storage URL (created once, re-created after fork)."""
    url = parse_storage(storage)  # ValueError naming the fix for a malformed URL
    path = sqlite_file(url)
    if path is not None:
        # One engine per file, whatever the current directory was when it was named
        # (SQLite resolves a relative path at each connect; "~" it does not expand).
        url = url.set(database=str(path.absolute()))
    key = url.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if url.get_backend_name() == "sqlite":
                engine = _sqlite_engine(url)
            else:
                # No pre-ping (a round trip per transaction): run_transaction retries on a
                # connection found dead instead.
                engine = sa.create_engine(_postgres_driver(url), pool_size=4, max_overflow=4)
            _engines[key] = engine
        return engine


def _after_fork_in_child() -> None:
    # A forked child must not reuse its parent's pooled connections.
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _write_locks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """A transaction; on SQLite a write transaction holds the write lock from the start."""
    queue = _write_locks.get(id(engine)) if write else None
    with queue.hold() if queue is not None else contextlib.nullcontext(), engine.connect() as connection:
        connection.execution_options(tunebook_write=write)
        with connection.begin():
            yield connection


def _transient(error: BaseException) -> bool:
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = getattr(error, "orig", None)
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    if code in ("40001", "40P01", "55P03"):  # serialization failure, deadlock, lock not available
        return True
    message = str(orig or error).lower()
    return isinstance(error, sa.exc.OperationalError) and any(
        text in message for text in ("database is locked", "database is busy", "could not connect", "closed")
    )


def run_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    write: bool,
    retry_integrity: bool = False,
    attempts: int = 20,
) -> T:
    """Runs ``work(connection)`` in a transaction, retrying transient failures.

    Args:
        engine: the engine.
        work: the transaction body; it must be safe to run again from the start.
        write: a write transaction (takes SQLite's write lock at BEGIN).
        retry_integrity: also retry integrity errors (two workers inserting the same
            unique row at once on PostgreSQL: the loser retries and sees the winner's).
        attempts: how many times to try.
    """
    delay = 0.01
    for attempt in range(attempts):
        try:
            with transaction(engine, write=write) as connection:
                return work(connection)
        except sa.exc.DBAPIError as error:
            retryable = _transient(error) or (retry_integrity and isinstance(error, sa.exc.IntegrityError))
            if not retryable or attempt == attempts - 1:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")
