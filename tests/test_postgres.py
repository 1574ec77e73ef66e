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


# -- finding sessions and searching (the behaviour on every SQL backend: test_search_backends) --


def test_a_version_2_schema_is_migrated_and_its_messages_indexed(schema: str) -> None:
    with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
        a, b = store.resolve("t1:a"), store.resolve("t2:b")
        old = [m.id for m in store.append_many(a, [{"role": "user", "content": f"old words {n}"}
                                                   for n in range(1500)])]  # indexed in two parts
        other = store.append(b, role="user", content="old words elsewhere").id
    with psycopg.connect(pg.DSN, autocommit=True) as conn:  # what version 2 had
        conn.execute(f'DROP TABLE "{schema}".message_words')
        conn.execute(f'ALTER TABLE "{schema}".sessions ALTER COLUMN key TYPE text COLLATE "default"')
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '2'")
    storage = PostgresStorage(pg.DSN, schema=schema)
    with SessionStore(storage) as store:
        assert sorted(storage.search_messages(["old", "words"], "t1:", 2000, 0)) == sorted((a, i) for i in old)
        assert storage.search_messages(["elsewhere"], "", 10, 0) == [(b, other)]
        new = store.append(a, role="user", content="new words").id
        assert storage.search_messages(["words", "new"], "", 10, 0) == [(a, new)]
    with psycopg.connect(pg.DSN) as conn:
        assert conn.execute(f'SELECT value FROM "{schema}".meta').fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute(f'SELECT count(*) FROM "{schema}".message_words').fetchone() == (1502,)
        assert conn.execute("SELECT collation_name FROM information_schema.columns WHERE table_schema = %s "
                            "AND table_name = 'sessions' AND column_name = 'key'", (schema,)).fetchone() == ("C",)


class Recording(psycopg.Connection[Any]):
    """A connection that keeps every statement it runs, with its parameters."""

    seen: list[tuple[Any, Any]]

    def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
        self.__dict__.setdefault("seen", []).append((query, params))
        return super().execute(query, params, **options)


def test_finding_and_searching_read_through_indexes(schema: str) -> None:
    with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
        for n in range(20):
            store.append(store.resolve(f"t{n % 2}:{n}"), role="user", content=f"message {n}")
    with Recording.connect(pg.DSN) as conn:
        storage = PostgresStorage(connection=conn, schema=schema)
        conn.execute("SELECT 1")
        start = len(conn.seen)
        assert len(storage.find_sessions("t1:")) == 10
        assert len(storage.search_messages(["message"], "t1:", 5, 0)) == 5
        find, search = conn.seen[start:]
        conn.execute("SET enable_seqscan = off")  # on 20 rows a scan is cheapest: is an index usable at all?
        plans = ["\n".join(row[0] for row in conn.execute(psycopg.sql.SQL("EXPLAIN ") + query, params))
                 for query, params in (find, search)]
    assert "Index Cond: ((key >= 't1:'::text) AND (key < 't1;'::text))" in plans[0], plans[0]
    assert "sessions_key_key" in plans[0] and "Seq Scan" not in plans[0], plans[0]
    assert "Bitmap Index Scan on message_words_search" in plans[1], plans[1]


def test_find_sessions_in_a_database_whose_collation_is_not_byte_order() -> None:
    name = pg.new_schema()
    with psycopg.connect(pg.DSN, autocommit=True) as conn:
        try:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                         "LOCALE 'C.UTF-8'")
        except psycopg.Error as e:
            pytest.skip(f"cannot create a database collated by ICU here: {e}")
    try:
        dsn = psycopg.conninfo.make_conninfo(pg.DSN, dbname=name)
        with psycopg.connect(dsn) as conn:  # the database's own order is not the keys' byte order
            assert conn.execute("SELECT 'a' < 'B', 'a_b' < 'a%', 'é' < 'f'").fetchone() == (True, True, True)
        keys = ["a", "A", "ab", "aB", "a-b", "a_b", "a b", "a%", "a\\", "b", "B", "é", "e", "E", "ß", "ss", "a'b",
                "t1:x", "t1-x", "T1:x", "t1x", "t1", "a%c", "a_c", "Ab"]
        with SessionStore(PostgresStorage(dsn)) as store:
            for key in keys:
                store.resolve(key)
            prefixes = {key[:n] for key in keys for n in range(len(key) + 1)}
            for prefix in sorted(prefixes):
                found = store._storage.find_sessions(prefix)
                assert sorted(e.key for e in found) == sorted(k for k in keys if k.startswith(prefix)), prefix
    finally:
        with psycopg.connect(pg.DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_prefix_holding_nul_finds_nothing(schema: str) -> None:
    with SessionStore(PostgresStorage(pg.DSN, schema=schema)) as store:
        store.append(store.resolve("a"), role="user", content="x")
        assert store._storage.find_sessions("a\x00") == []
        assert store._storage.search_messages(["x"], "a\x00", 10, 0) == []
