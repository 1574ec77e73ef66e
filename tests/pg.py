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
