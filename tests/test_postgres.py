"""What is particular to the PostgreSQL backend (the shared contract runs in test_conformance).

Needs a server: ``python3 tests/run.py`` starts one when PostgreSQL is installed, or set
``SESSION_STORE_POSTGRES_DSN``. Without one these tests are skipped, with that message.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import _procs
import pg
import pytest

from session_store import SessionStore, StorageError

pg.require_server()

import psycopg  # noqa: E402

from session_store_postgres import SCHEMA_VERSION, PostgresStorage  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def schema() -> Iterator[str]:
    name = pg.new_schema()
    yield name
    pg.drop_schema(name)


def test_schema_is_created_once_in_the_named_schema_with_its_version(schema: str) -> None:
    for _ in range(2):
        with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
            store.append(store.resolve("k"), role="user", content="hi")
    with psycopg.connect(pg.DSN) as conn:
        version = conn.execute(f'SELECT value FROM "{schema}".meta').fetchone()
        count = conn.execute(f'SELECT count(*) FROM "{schema}".messages').fetchone()
    assert version == (str(SCHEMA_VERSION),) and count == (2,)


def test_a_newer_schema_is_refused(schema: str) -> None:
    with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
        store.resolve("k")
    with psycopg.connect(pg.DSN, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '{SCHEMA_VERSION + 1}'")
    with pytest.raises(StorageError, match="schema"):
        SessionStore(PostgresStorage(pg.DSN, schema=schema)).init()


class OnePool:
    """The smallest pool: what PostgresStorage needs of psycopg_pool.ConnectionPool."""

    def __init__(self) -> None:
        self.idle = [psycopg.connect(pg.DSN)]
        self.out = 0

    def getconn(self) -> psycopg.Connection[Any]:
        self.out += 1
        return self.idle.pop() if self.idle else psycopg.connect(pg.DSN)

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        self.out -= 1
        self.idle.append(conn)


def test_a_connection_or_a_pool_work_like_a_dsn(schema: str) -> None:
    with psycopg.connect(pg.DSN) as conn:
        with SessionStore(PostgresStorage(connection=conn, schema=schema)) as store:
            sid = store.resolve("k")
            store.append(sid, role="user", content="via a connection")
        assert not conn.closed  # not ours to close
    pool = OnePool()
    with SessionStore(PostgresStorage(pool=pool, schema=schema)) as store:
        store.append(sid, role="user", content="via a pool")
        assert [m.content for m in store.get_linear_history(sid)] == ["via a connection", "via a pool"]
    assert pool.out == 0  # every connection went back
    with pytest.raises(ValueError, match="exactly one"):
        PostgresStorage(pg.DSN, pool=pool)
    with pytest.raises(ValueError, match="schema"):
        PostgresStorage(pg.DSN, schema='x"; DROP TABLE y; --')


class DroppingStorage(PostgresStorage):
    """Loses its connection (the server ends the backend) on the next message append."""

    drop_next = False

    def append_message(self, session_id: str, position: tuple[int, int], message_id: str, line: bytes
                       ) -> tuple[int, int]:
        if self.drop_next:
            self.drop_next = False
            with self._using("test") as conn:
                pid = conn.info.backend_pid
                with psycopg.connect(pg.DSN, autocommit=True) as killer:
                    killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return super().append_message(session_id, position, message_id, line)


def test_a_dropped_connection_mid_append_is_a_clear_error_and_the_retry_by_id_lands_once(schema: str) -> None:
    storage = DroppingStorage(pg.DSN, schema=schema)
    with SessionStore(storage) as store:
        sid = store.resolve("k")
        first = store.append(sid, role="user", content="one")
        storage.drop_next = True
        with pytest.raises(StorageError, match="connection"):
            store.append(sid, role="assistant", content="two", id="answer-1")
        assert store.get_linear_history(sid) == [first]  # no partial record
        second = store.append(sid, role="assistant", content="two", id="answer-1")
        again = store.append(sid, role="assistant", content="two", id="answer-1")  # unsure? retry again
        assert again == second
        assert store.get_linear_history(sid) == [first, second]


@pytest.mark.parametrize("use_lock", [False, True], ids=["unlocked", "locked"])
def test_eight_processes_append_500_each_to_one_session(schema: str, use_lock: bool) -> None:
    procs = [SPAWN.Process(target=_procs.append_many, args=(f"postgres:{schema}", "shared", f"p{i}", 500, use_lock,
                                                            True)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
        sid = store.resolve("shared")
        contents = [m.content for m in store.get_messages(sid)]
        assert len(store.get_linear_history(sid)) == 8 * 500  # each append landed on the head: no lost update
        assert store.check().ok
    assert sorted(contents) == sorted(f"p{i}:{j}" for i in range(8) for j in range(500))


def test_a_full_disk_on_the_server_is_enospc_and_loses_nothing_acknowledged(schema: str) -> None:
    """The session tables in a tablespace on a 2 MiB tmpfs: the server's "could not
    extend file" (SQLSTATE 53100, disk_full) is StorageError(ENOSPC), not EIO."""
    import errno
    import os
    import shutil
    import subprocess
    import tempfile
    import uuid
    from pathlib import Path

    if os.geteuid() != 0 or "127.0.0.1" not in pg.DSN:
        pytest.skip("needs root and the local server tests/run.py starts (a tablespace on a tmpfs)")
    mount = Path(tempfile.mkdtemp(prefix="session-store-tiny-"))  # in /tmp: the server's user reaches it
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    space = f"tiny_{uuid.uuid4().hex[:8]}"
    try:
        shutil.chown(mount, "postgres")
        with psycopg.connect(pg.DSN, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
        dsn = f"{pg.DSN} options='-c default_tablespace={space}'"
        store = SessionStore(PostgresStorage(dsn, schema=schema))
        sid = store.resolve("k")
        acknowledged: list[str] = []
        errnos: set[int | None] = set()
        for _ in range(400):
            try:
                acknowledged.append(store.append(sid, role="user", content=os.urandom(10_000).hex()).id)
            except StorageError as e:
                errnos.add(e.errno)
                if len(acknowledged) > 10:
                    break
        assert errnos == {errno.ENOSPC}, errnos
        store.close()
        with SessionStore(PostgresStorage(dsn, schema=schema)) as fresh:
            assert [m.id for m in fresh.get_messages(sid)][:len(acknowledged)] == acknowledged
    finally:
        pg.drop_schema(schema)
        with psycopg.connect(pg.DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLESPACE IF EXISTS {space}")
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()
