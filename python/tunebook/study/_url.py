"""Storage URLs: parsing with errors that name the fix, display without the password,
read-only probes that create nothing, and database errors turned into short messages
that name the storage.

A storage is a SQLAlchemy URL: ``sqlite:///runs/studies.db`` (a relative path; four
slashes before an absolute one) or ``postgresql://user:password@host:5432/db``.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

EXAMPLES = "sqlite:///runs/studies.db (a file) or postgresql://user:password@host:5432/db"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


class StorageError(RuntimeError):
    """A study storage cannot be opened or read. The message names the storage (never
    its password), what went wrong, and what to do."""


def normalize(storage: Any) -> str:
    """``storage`` as a URL string, checked to look like one.

    Raises:
        ValueError: not a string, empty, or without ``://`` (a bare file path gets the
            URL to use instead).
    """
    if not isinstance(storage, str) or not storage.strip():
        raise ValueError(f"storage must be a database URL such as {EXAMPLES}; got {storage!r}")
    if "://" in storage:
        return storage
    if _SCHEME.match(storage):
        raise ValueError(
            f"storage must be a database URL, with '://' after its scheme, such as {EXAMPLES}; "
            f"got {mask(storage)!r}"
        )
    raise ValueError(
        f"storage must be a database URL, not a file path: for the SQLite file {storage!r} use "
        f"sqlite:///{storage}"
    )


def mask(text: str) -> str:
    """``text`` with any password in a ``scheme://user:password@`` part replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", text)


def parse(storage: Any) -> sa.URL:
    """The SQLAlchemy URL of a storage, checked.

    Raises:
        ValueError: naming the problem and the fix: not a URL, a port that is not a
            number, ``sqlite://name`` (two slashes: a host, not a file), a database
            tunebook does not support.
    """
    text = normalize(storage)
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError) as error:
        port = re.search(r"://[^/]*@[^/:]*:([^/]*)", text) or re.search(r"://[^/@:]*:([^/@]*)(?:/|$)", text)
        if port and not port.group(1).isdigit():
            raise ValueError(
                f"storage {mask(text)!r}: the port {port.group(1)!r} is not a number; "
                "write host:port with a numeric port, e.g. localhost:5432"
            ) from None
        raise ValueError(f"storage {mask(text)!r} is not a valid database URL ({error}); use {EXAMPLES}") from None
    backend = url.get_backend_name()
    if backend == "postgres":  # the Heroku spelling, which SQLAlchemy 2 no longer accepts
        url = url.set(drivername="postgresql" + url.drivername[len("postgres"):])
        backend = "postgresql"
    if backend == "sqlite":
        if url.host:
            path = url.host + (f"/{url.database}" if url.database else "")
            raise ValueError(
                f"storage {text!r} names a host ({url.host!r}), not a file: a SQLite URL has three "
                f"slashes before a relative path (sqlite:///{path}) and four before an absolute one "
                f"(sqlite:////absolute/{path})"
            )
    elif backend == "postgresql":
        if url.port is not None and not 0 < url.port < 65536:
            raise ValueError(f"storage {display(url)!r}: port {url.port} must be in 1..65535")
    else:
        raise ValueError(
            f"storage {display(url)!r} is a {backend!r} database; tunebook stores studies in SQLite or "
            f"PostgreSQL: use {EXAMPLES}"
        )
    return url


def display(storage: Any) -> str:
    """The storage as it is safe to print: the URL with its password hidden."""
    if isinstance(storage, sa.URL):
        return storage.render_as_string(hide_password=True)
    try:
        return parse(storage).render_as_string(hide_password=True)
    except ValueError:
        return mask(str(storage))


def sqlite_file(storage: Any) -> Path | None:
    """The file of a SQLite storage, or None (PostgreSQL, in-memory SQLite)."""
    url = storage if isinstance(storage, sa.URL) else parse(storage)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):
        return None  # a SQLite URI filename: leave it to SQLite
    return Path(url.database).expanduser()


def error_message(storage: Any, error: BaseException) -> str:
    """One or two lines on why ``storage`` failed with ``error``, naming it and the fix."""
    original = getattr(error, "orig", None) or error
    text = " ".join(str(original).split("\n\n")[0].split()) or type(original).__name__
    lower = text.lower()
    try:
        url: sa.URL | None = parse(storage)
    except ValueError:
        url = None
    path = sqlite_file(url) if url is not None else None
    if path is not None:
        if path.is_dir():
            return f"{path} is a directory, not a database file; name a file in it, e.g. sqlite:///{path}/studies.db"
        if any(s in lower for s in ("file is not a database", "malformed", "file is encrypted")):
            return f"{path} is not a tunebook study database (SQLite: {text}); check the storage path"
        if "locked" in lower or "busy" in lower:
            return f"{path} is locked by another process (SQLite: {text}); try again when it finishes"
        if isinstance(original, OSError) or "unable to open" in lower or "readonly" in lower or "read-only" in lower:
            return (
                f"cannot open the study database {path} ({text}); check that its directory exists "
                "and that you may write to it"
            )
        return f"study database {path}: {text}"
    shown = display(url) if url is not None else display(storage)
    if url is not None and url.get_backend_name() == "postgresql":
        where = f"{url.host or 'localhost'}:{url.port or 5432}"
        if any(s in lower for s in ("could not connect", "connection refused", "could not translate host name",
                                    "timeout expired", "no route to host", "name or service not known")):
            first = " ".join(str(original).strip().splitlines()[0].split())
            return (
                f"cannot connect to PostgreSQL at {where} ({first}); is the server running and reachable? "
                f"Check the host and port of {shown}"
            )
        if "password authentication failed" in lower or "authentication failed" in lower:
            return f"PostgreSQL at {where} refused the login of user {url.username!r}; check the user and password"
        if "database" in lower and "does not exist" in lower:
            return f"PostgreSQL at {where} has no database {url.database!r}; create it (createdb {url.database}) " \
                   "or fix the URL"
    return f"storage {shown}: {text}"


def sqlite_holds_studies(path: Path) -> bool:
    """Whether a SQLite file holds tunebook's tables; reads without creating anything.

    A database with no ``-wal`` file beside it is complete on disk, so it is opened
    immutable (no ``-shm``/``-wal`` files are made); otherwise read-only.
    """
    wal = Path(f"{path}-wal").exists()
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as error:
        raise StorageError(error_message(f"sqlite:///{path}", error)) from error
    try:
        row = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tunebook_meta'"
        ).fetchone()
    except sqlite3.Error as error:
        raise StorageError(error_message(f"sqlite:///{path}", error)) from error
    finally:
        connection.close()
    return row is not None


def has_studies(storage: str) -> bool:
    """Whether ``storage`` exists and holds tunebook's tables, creating nothing.

    Raises:
        ValueError: a malformed storage URL.
        StorageError: the storage cannot be read (unreachable server, not a database).
    """
    url = parse(storage)
    path = sqlite_file(url)
    if url.get_backend_name() == "sqlite":
        if path is None:
            return False  # in memory: nothing outlives this process
        if not path.exists():
            return False
        if path.is_dir():
            raise StorageError(error_message(storage, IsADirectoryError(str(path))))
        return sqlite_holds_studies(path)
    from tunebook.study._storage import get_engine

    try:
        return sa.inspect(get_engine(storage)).has_table("tunebook_meta")
    except sa.exc.DBAPIError as error:
        raise StorageError(error_message(storage, error)) from error
