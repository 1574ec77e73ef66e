"""Where the PostgreSQL tests find their server (see tests/run.py), and fresh schemas on it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from session_store import SessionStore

DSN = os.environ.get("SESSION_STORE_POSTGRES_DSN", "")
REQUIRED = os.environ.get("SESSION_STORE_REQUIRE_POSTGRES") == "1"
SKIP_REASON = ("no PostgreSQL server: set SESSION_STORE_POSTGRES_DSN, or run python3 tests/run.py, which starts "
               "one when PostgreSQL is installed")


def require_server() -> None:
    """Skip the calling test module when there is no server (fail instead when required)."""
    if not DSN:
        if REQUIRED:
            pytest.fail(SKIP_REASON + " (SESSION_STORE_REQUIRE_POSTGRES=1: not skipping)", pytrace=False)
        pytest.skip(SKIP_REASON, allow_module_level=True)


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def postgres_storage() -> Iterator[Any]:
    """Conformance-kit opener: a fresh schema per ``with`` block, dropped afterwards;
    each storage in a :class:`~session_store_conformance.FaultyStorage`, for the kit's
    fault and crash rules."""
    from session_store_postgres import PostgresStorage

    schema = new_schema()
    opened: list[SessionStore] = []

    def factory(**options: Any) -> SessionStore:
        from session_store_conformance import FaultyStorage

        store = SessionStore(FaultyStorage(PostgresStorage(DSN, schema=schema)), **options)
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            store.close()
        drop_schema(schema)


@contextlib.contextmanager
def fresh_stores(backend: str, directory: Any) -> Iterator[Any]:
    """A factory of new, empty stores on ``backend`` (``memory``, ``files``, ``sqlite``
    or ``postgres``: a schema of its own each), for suites that want a fresh store per
    case (the frameworks' conformance suites); all closed, and schemas dropped, at the end."""
    from pathlib import Path

    opened: list[tuple[SessionStore, str | None]] = []

    def make() -> SessionStore:
        from session_store import InMemoryFileSystem

        n, schema = len(opened), None
        if backend == "memory":
            store = SessionStore(InMemoryFileSystem())
        elif backend == "files":
            store = SessionStore(storage_dir=Path(directory) / f"files-{n}")
        elif backend == "sqlite":
            from session_store_sqlite import SqliteStorage

            store = SessionStore(SqliteStorage(str(Path(directory) / f"s-{n}.db")))
        else:
            from session_store_postgres import PostgresStorage

            require_server()
            schema = new_schema()
            store = SessionStore(PostgresStorage(DSN, schema=schema))
        opened.append((store, schema))
        return store

    try:
        yield make
    finally:
        for store, schema in opened:
            store.close()
            if schema is not None:
                drop_schema(schema)
