"""session_store_postgres: a :class:`session_store.Storage` on a PostgreSQL server.

Workers on many machines share sessions through one PostgreSQL database::

    from session_store import SessionStore
    from session_store_postgres import PostgresStorage

    with SessionStore(PostgresStorage("postgresql://app@db.internal/app")) as store:
        store.append(store.resolve("user:alice"), role="user", content="Hello!")

Needs psycopg 3 (``pip install "session-store[postgres]"``); vendor it next to
``session_store.py``. ``PostgresStorage`` takes a DSN, a ready ``psycopg.Connection``
or a pool (``psycopg_pool.ConnectionPool`` or anything with ``getconn()`` and
``putconn()``), and a schema name (default ``session_store``) where its tables live.

How it keeps the contract across machines:

- A writer holds the session's row (``SELECT ... FOR UPDATE``) for one short
  transaction: appends, branch events and lease changes of one session are serialized
  on the server, whatever the number of hosts. Two writers appending onto the same head
  both land: the second waits, catches up, and its message follows the first (the
  head rule of the store, "an append onto the head advances it", is applied under the
  row lock, so no head is ever lost).
- Each append is one transaction: a connection dropped mid-append leaves no partial
  record and raises :class:`StorageError`. Whether a commit that was cut off landed is
  unknowable to the client, so retry with the same message id: an append naming an
  existing id with the same content returns the stored message instead of writing it
  twice.
- Leases are rows with fencing tokens, written in those transactions: the same expiry,
  renewal, re-entrancy and owner rules as the file store. Expiry uses the clients'
  clocks (``SessionStore(clock=...)``): keep hosts in sync with NTP.
- ``durable=False`` sets ``synchronous_commit = off`` for the store's connections.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

import contextlib
import errno
import json
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import psycopg
from psycopg import sql

from session_store import (
    IndexEntry,
    InvalidInput,
    Position,
    Problem,
    Records,
    SessionNotFound,
    Storage,
    StorageError,
)

# ============================================================================
# Schema
# ============================================================================
#
# Version 1, in the configured schema. The same JSON records as the other storages,
# one per row; ``seq`` numbers a session's messages (and, separately, its branch
# events) in append order. ``index_log`` is written under a transaction-scoped
# advisory lock, so its ``seq`` order is its commit order and readers never skip one.

#: The schema version this module creates and reads.
SCHEMA_VERSION = 1

_SCHEMA = [
    "CREATE TABLE {s}.meta (name text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE {s}.sessions (
        id text PRIMARY KEY,
        key text NOT NULL UNIQUE,
        created_at bigint NOT NULL,
        generation bigint NOT NULL DEFAULT 0)""",
    """CREATE TABLE {s}.index_log (
        seq bigserial PRIMARY KEY,
        op text NOT NULL,
        session_id text NOT NULL,
        key text,
        created_at bigint)""",
    """CREATE TABLE {s}.messages (
        session_id text NOT NULL,
        seq bigint NOT NULL,
        id text NOT NULL,
        record text NOT NULL,
        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, id))""",
    """CREATE TABLE {s}.branch_events (
        session_id text NOT NULL,
        seq bigint NOT NULL,
        record text NOT NULL,
        PRIMARY KEY (session_id, seq))""",
    "CREATE TABLE {s}.leases (session_id text PRIMARY KEY, record text NOT NULL)",
    """CREATE TABLE {s}.quarantine (
        id bigserial PRIMARY KEY,
        session_id text NOT NULL,
        kind text NOT NULL,
        seq bigint NOT NULL,
        record text NOT NULL)""",
]

# Migrations from version N to N + 1, applied in order inside one transaction.
_MIGRATIONS: dict[int, list[str]] = {}

_LOAD = """
    SELECT 0, generation, NULL FROM {s}.sessions WHERE id = %(sid)s
    UNION ALL SELECT 1, seq, record FROM {s}.branch_events WHERE session_id = %(sid)s AND seq >= %(events)s
    UNION ALL SELECT 2, seq, record FROM {s}.messages WHERE session_id = %(sid)s AND seq >= %(messages)s
    ORDER BY 1, 2
"""

_INDEX_LOCK = 0x5E5510  # advisory lock key (with the schema's hash) serializing index changes


class ConnectionPool(Protocol):
    """What :class:`PostgresStorage` needs of a pool (``psycopg_pool.ConnectionPool`` fits)."""

    def getconn(self) -> psycopg.Connection[Any]: ...

    def putconn(self, conn: psycopg.Connection[Any]) -> None: ...


def _storage_error(e: psycopg.Error, action: str) -> StorageError:
    """The store's error for a psycopg one; a lost connection says so."""
    lost = isinstance(e, psycopg.OperationalError)
    return StorageError(errno.ECONNRESET if lost else errno.EIO,
                        f"could not {action}: {'connection lost: ' if lost else ''}{str(e).strip()}")


# ============================================================================
# Storage
# ============================================================================


class PostgresStorage(Storage):
    """Sessions in a PostgreSQL database, shared by every process on every host.

    ``PostgresStorage(conninfo=None, *, connection=None, pool=None,
    schema="session_store", timeout=30.0)``: give exactly one of a DSN
    (``conninfo``), a ``psycopg.Connection`` (used by one thread at a time; the
    storage never closes it) or a pool. ``timeout`` bounds how long a writer waits
    for another writer's row lock (``lock_timeout``) before :class:`StorageError`.
    """

    def __init__(self, conninfo: str | None = None, *, connection: psycopg.Connection[Any] | None = None,
                 pool: ConnectionPool | None = None, schema: str = "session_store", timeout: float = 30.0) -> None:
        if sum(x is not None for x in (conninfo, connection, pool)) != 1:
            raise InvalidInput("give exactly one of conninfo, connection or pool")
        if not schema or not schema.replace("_", "").isalnum():
            raise InvalidInput(f"schema must be letters, digits and underscores, not {schema!r}")
        if timeout < 0:
            raise InvalidInput("timeout must be >= 0")
        self.conninfo, self.schema, self.timeout = conninfo, schema, timeout
        self._connection, self._pool = connection, pool
        self._shared_lock = threading.RLock()  # a single given connection: one thread at a time
        self._own: list[psycopg.Connection[Any]] = []  # idle connections opened from conninfo
        self._own_lock = threading.Lock()
        self._local = threading.local()  # .conn: this thread's writing-scope connection
        self._durable = True
        self._index_seq = 0
        self._index_loaded = False
        self._generations: dict[str, int] = {}
        self._configured: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        s = sql.Identifier(schema)
        self._sql = {name: sql.SQL(text).format(s=s) for name, text in {
            "load": _LOAD,
            "lock_session": "SELECT 1 FROM {s}.sessions WHERE id = %s FOR UPDATE",
            "insert_message": "INSERT INTO {s}.messages (session_id, seq, id, record) VALUES (%s, %s, %s, %s)",
            "insert_event": "INSERT INTO {s}.branch_events (session_id, seq, record) VALUES (%s, %s, %s)",
            "read_lease": "SELECT record FROM {s}.leases WHERE session_id = %s",
            "write_lease": "INSERT INTO {s}.leases (session_id, record) VALUES (%s, %s) "
                           "ON CONFLICT (session_id) DO UPDATE SET record = excluded.record",
        }.items()}

    def __repr__(self) -> str:
        return f"PostgresStorage({self.location!r}, schema={self.schema!r})"

    @property
    def location(self) -> str:
        if self.conninfo is not None:
            info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
            info.pop("password", None)
            return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})
        return "a given connection" if self._connection is not None else "a connection pool"

    # -- connections -------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Session settings, once per connection: autocommit (transactions are explicit),
        the lock wait bound and the commit durability."""
        if conn in self._configured:
            return
        conn.autocommit = True
        conn.execute("SET lock_timeout = %s" % int(self.timeout * 1000))  # noqa: UP031 - SET takes no params
        conn.execute(f"SET synchronous_commit = {'on' if self._durable else 'off'}")
        self._configured.add(conn)

    def _checkout(self) -> psycopg.Connection[Any]:
        if self._connection is not None:
            self._shared_lock.acquire()
            return self._connection
        if self._pool is not None:
            conn = self._pool.getconn()
        else:
            with self._own_lock:
                idle = self._own.pop() if self._own else None
            conn = idle if idle is not None else psycopg.connect(self.conninfo or "",
                                                                 connect_timeout=max(1, int(self.timeout)))
        try:
            self._configure(conn)
        except BaseException:
            self._checkin(conn)
            raise
        return conn

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        if self._connection is not None:
            self._shared_lock.release()
            return
        if self._pool is not None:
            self._pool.putconn(conn)
        elif conn.broken or conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        else:
            with self._own_lock:
                self._own.append(conn)

    @contextlib.contextmanager
    def _using(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """This thread's writing-scope connection, or one checked out for the call."""
        held: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        try:
            if held is not None:
                yield held
                return
            conn = self._checkout()
            try:
                yield conn
            finally:
                self._checkin(conn)
        except psycopg.Error as e:
            raise _storage_error(e, f"{action} ({self.location})") from e

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        with self._using(action) as conn, conn.transaction():
            yield conn

    def _lock_index(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_INDEX_LOCK, self.schema))

    def open(self, *, durable: bool) -> None:
        self._durable = durable
        s = sql.Identifier(self.schema)
        with self._transaction("create the schema") as conn:
            self._lock_index(conn)  # concurrent first opens create the schema once
            exists = conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.meta",)).fetchone()
            if exists is None or exists[0] is None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=s))
                for statement in _SCHEMA:
                    conn.execute(sql.SQL(statement).format(s=s))
                conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('schema_version', %s)").format(s=s),
                             (str(SCHEMA_VERSION),))
            row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE name = 'schema_version'").format(s=s)
                               ).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StorageError(errno.EPROTO, f"schema {self.schema} has version {version}; this "
                                                 f"session_store_postgres reads up to {SCHEMA_VERSION}: upgrade it")
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(sql.SQL(statement).format(s=s))
                version += 1
                conn.execute(sql.SQL("UPDATE {s}.meta SET value = %s WHERE name = 'schema_version'").format(s=s),
                             (str(version),))

    def close(self) -> None:
        with self._own_lock:
            conns, self._own = self._own, []
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- the index -------------------------------------------------------------------

    def read_index(self) -> tuple[list[IndexEntry], bool]:
        s = sql.Identifier(self.schema)
        with self._using("read the index") as conn:
            if not self._index_loaded:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
                    rows = conn.execute(sql.SQL("SELECT id, key, created_at FROM {s}.sessions ORDER BY created_at, id"
                                                ).format(s=s)).fetchall()
                    top = conn.execute(sql.SQL("SELECT coalesce(max(seq), 0) FROM {s}.index_log").format(s=s)
                                       ).fetchone()
                self._index_seq = int(top[0]) if top else 0
                self._index_loaded = True
                return [IndexEntry(op="create", session_id=sid, key=key, created_at=created)
                        for sid, key, created in rows], False
            rows = conn.execute(sql.SQL("SELECT seq, op, session_id, key, created_at FROM {s}.index_log "
                                        "WHERE seq > %s ORDER BY seq").format(s=s), (self._index_seq,)).fetchall()
        if rows:
            self._index_seq = rows[-1][0]
        return [IndexEntry(op=op, session_id=sid, key=key or "", created_at=created or 0)
                for _, op, sid, key, created in rows], False

    def create_session(self, key: str, session_id: str, created_at: int) -> None:
        s = sql.Identifier(self.schema)
        with self._transaction("create a session") as conn:
            self._lock_index(conn)
            if conn.execute(sql.SQL("SELECT 1 FROM {s}.sessions WHERE key = %s").format(s=s), (key,)).fetchone():
                return
            conn.execute(sql.SQL("INSERT INTO {s}.sessions (id, key, created_at) VALUES (%s, %s, %s)").format(s=s),
                         (session_id, key, created_at))
            conn.execute(sql.SQL("INSERT INTO {s}.index_log (op, session_id, key, created_at) "
                                 "VALUES ('create', %s, %s, %s)").format(s=s), (session_id, key, created_at))

    def delete_session(self, session_id: str, at: int) -> None:
        s = sql.Identifier(self.schema)
        with self._transaction("delete a session") as conn:
            self._lock_index(conn)
            if conn.execute(self._sql["lock_session"], (session_id,)).fetchone() is None:
                raise SessionNotFound(session_id)
            for table in ("messages", "branch_events", "leases", "quarantine"):
                conn.execute(sql.SQL("DELETE FROM {s}.{t} WHERE session_id = %s").format(s=s, t=sql.Identifier(table)),
                             (session_id,))
            conn.execute(sql.SQL("DELETE FROM {s}.sessions WHERE id = %s").format(s=s), (session_id,))
            conn.execute(sql.SQL("INSERT INTO {s}.index_log (op, session_id, created_at) "
                                 "VALUES ('delete', %s, %s)").format(s=s), (session_id, at))
        self._generations.pop(session_id, None)

    # -- a session's records --------------------------------------------------------------

    def writing(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        return _PostgresWriting(self, session_id)

    def load(self, session_id: str, position: Position, *, writer: bool = False) -> Records | None:
        query = self._sql["load"]
        with self._using("read a session") as conn:
            rows = conn.execute(query, {"sid": session_id, "events": position[0],
                                        "messages": position[1]}).fetchall()
            if not rows or rows[0][0] != 0:
                raise SessionNotFound(session_id)
            restart = False
            generation = rows[0][1]
            if self._generations.get(session_id, generation) != generation:
                rows = conn.execute(query, {"sid": session_id, "events": 0, "messages": 0}).fetchall()
                if not rows or rows[0][0] != 0:
                    raise SessionNotFound(session_id)
                restart, generation = True, rows[0][1]
            self._generations[session_id] = generation
        if len(rows) == 1 and not restart:
            return None
        return Records.from_rows(session_id, position, rows[1:], events_label=f"{self.schema}.branch_events",
                                 messages_label=f"{self.schema}.messages", restart=restart)

    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        with self._using("append a message") as conn:
            conn.execute(self._sql["insert_message"], (session_id, position[1], message_id, line[:-1].decode()))
        return (position[0], position[1] + 1)

    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        with self._using("append a branch event") as conn:
            conn.execute(self._sql["insert_event"], (session_id, position[0], line[:-1].decode()))
        return (position[0] + 1, position[1])

    # -- leases ---------------------------------------------------------------------------

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        with self._using("read a lease") as conn:
            row = conn.execute(self._sql["read_lease"], (session_id,)).fetchone()
        if row is None:
            return None
        try:
            lease = json.loads(row[0])
        except ValueError:
            return None
        return lease if isinstance(lease, dict) else None

    def write_lease(self, session_id: str, lease: Mapping[str, Any]) -> None:
        with self._using("write a lease") as conn:
            conn.execute(self._sql["write_lease"], (session_id, json.dumps(dict(lease), separators=(",", ":"))))

    # -- repair -----------------------------------------------------------------------------

    def quarantine(self, session_id: str, problems: list[Problem]) -> list[str]:
        """Rows the store cannot use move to the ``quarantine`` table (never deleted)."""
        s = sql.Identifier(self.schema)
        fixed: list[str] = []
        with self._using("quarantine records") as conn:
            for table in ("branch_events", "messages"):
                label = f"{self.schema}.{table}"
                seqs = sorted({p.offset for p in problems if p.file == label and p.offset is not None})
                t = sql.Identifier(table)
                for seq in seqs:
                    conn.execute(sql.SQL("INSERT INTO {s}.quarantine (session_id, kind, seq, record) "
                                         "SELECT session_id, %s, seq, record FROM {s}.{t} "
                                         "WHERE session_id = %s AND seq = %s").format(s=s, t=t),
                                 (table, session_id, seq))
                    conn.execute(sql.SQL("DELETE FROM {s}.{t} WHERE session_id = %s AND seq = %s").format(s=s, t=t),
                                 (session_id, seq))
                if seqs:
                    fixed.append(f"{label}: moved {len(seqs)} unusable record(s) of {session_id} to quarantine")
            if fixed:
                conn.execute(sql.SQL("UPDATE {s}.sessions SET generation = generation + 1 WHERE id = %s").format(s=s),
                             (session_id,))
        return fixed


class _PostgresWriting:
    """``PostgresStorage.writing``: a transaction holding the session's row lock."""

    __slots__ = ("_conn", "_session_id", "_storage", "_tx")

    def __init__(self, storage: PostgresStorage, session_id: str) -> None:
        self._storage, self._session_id = storage, session_id
        self._conn: psycopg.Connection[Any] | None = None
        self._tx: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> None:
        storage = self._storage
        if getattr(storage._local, "conn", None) is not None:
            raise RuntimeError("PostgresStorage.writing is not re-entrant")
        action = f"write session {self._session_id!r} ({storage.location})"
        try:
            conn = storage._checkout()
        except psycopg.Error as e:
            raise _storage_error(e, action) from e
        tx = conn.transaction()
        try:
            tx.__enter__()
            try:
                if conn.execute(storage._sql["lock_session"], (self._session_id,)).fetchone() is None:
                    raise SessionNotFound(self._session_id)
            except BaseException as e:
                tx.__exit__(type(e), e, e.__traceback__)
                raise
        except BaseException as e:
            storage._checkin(conn)
            if isinstance(e, psycopg.Error):
                raise _storage_error(e, action) from e
            raise
        self._conn, self._tx = conn, tx
        storage._local.conn = conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        storage, conn, tx = self._storage, self._conn, self._tx
        self._conn = self._tx = storage._local.conn = None
        if conn is None or tx is None:
            return
        try:
            tx.__exit__(exc_type, exc, tb)  # commits, or rolls back on an exception
        except psycopg.Error as e:
            raise _storage_error(e, f"commit to session {self._session_id!r} ({storage.location})") from e
        finally:
            storage._checkin(conn)
