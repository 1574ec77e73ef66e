"""session_store_sqlite: a :class:`session_store.Storage` in one SQLite database file.

Many processes on one machine share sessions through one database file::

    from session_store import SessionStore
    from session_store_sqlite import SqliteStorage

    with SessionStore(SqliteStorage("sessions.db")) as store:
        sid = store.resolve("user:alice")
        store.append(sid, role="user", content="Hello!")

Standard library only (``sqlite3``); vendor it next to ``session_store.py``. The
database runs in WAL mode; with ``durable=True`` (the store's default) every append
is committed with ``synchronous=FULL`` before it returns. Writers take the database's
write lock (``BEGIN IMMEDIATE``) for one short transaction; a writer that finds it
busy waits up to ``timeout`` seconds and then raises :class:`StorageError`.

Do not put the file on a network file system: SQLite's locks are not reliable there
(use PostgreSQL to share sessions between machines).
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]

import contextlib
import errno
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from typing import Any

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
# Version 1. Records are the same JSON objects the JSONL storage writes, one per row;
# ``seq`` numbers a session's messages (and, separately, its branch events) from 0 in
# append order, so a reader's position is the next seq it has not read. ``generation``
# grows when a repair removes rows, which tells readers to reload from the start.

#: The schema version this module creates and reads.
SCHEMA_VERSION = 1

_SCHEMA = [
    """CREATE TABLE session_store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE index_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        op TEXT NOT NULL,
        session_id TEXT NOT NULL,
        key TEXT,
        created_at INTEGER)""",
    """CREATE TABLE messages (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, id)) WITHOUT ROWID""",
    """CREATE TABLE branch_events (
        session_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE leases (session_id TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        record TEXT NOT NULL)""",
]

# Migrations from version N to N + 1, applied in order inside one transaction.
_MIGRATIONS: dict[int, list[str]] = {}

# One statement, one snapshot: the session's generation, then its new events and messages.
_LOAD = """
    SELECT 0, generation, NULL FROM sessions WHERE id = :sid
    UNION ALL SELECT 1, seq, record FROM branch_events WHERE session_id = :sid AND seq >= :events
    UNION ALL SELECT 2, seq, record FROM messages WHERE session_id = :sid AND seq >= :messages
    ORDER BY 1, 2
"""


def _storage_error(e: sqlite3.Error, action: str) -> StorageError:
    """The store's error for a ``sqlite3`` one (busy and locked databases say so)."""
    busy = isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))
    return StorageError(errno.EBUSY if busy else errno.EIO, f"could not {action}: {e}")


# ============================================================================
# Storage
# ============================================================================


class _Connection:
    """A pooled connection and what it has seen (``PRAGMA data_version`` per session)."""

    __slots__ = ("db", "index_version", "versions")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.versions: dict[str, int] = {}
        self.index_version = -1

    def data_version(self) -> int:
        """Changes whenever *another* connection committed to the database."""
        row = self.db.execute("PRAGMA data_version").fetchone()
        return int(row[0])


class SqliteStorage(Storage):
    """Sessions in one SQLite database file, shared by every thread and process.

    ``SqliteStorage(path, *, timeout=30.0)``: ``path`` is created when missing (its
    directory must exist); ``timeout`` is how long a call waits for another writer
    holding the database before it raises :class:`StorageError`. The schema is
    created and migrated idempotently when the store opens.

    Leases live in a table and are written in the same short transactions, so two
    processes can never both hold one; fencing tokens grow per session as in the
    file store.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise InvalidInput("SqliteStorage needs a database file; use InMemoryFileSystem for a store in memory")
        if timeout < 0:
            raise InvalidInput("timeout must be >= 0")
        self.timeout = timeout
        self._durable = True
        self._pool: list[_Connection] = []
        self._all: list[_Connection] = []
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .conn: the connection of this thread's writing scope
        self._index_seq = 0
        self._index_loaded = False
        self._generations: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r}, timeout={self.timeout!r})"

    @property
    def location(self) -> str:
        return self.path

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> _Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        except BaseException:
            db.close()
            raise
        conn = _Connection(db)
        with self._pool_lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _using(self, action: str) -> Iterator[_Connection]:
        """The connection of this thread's writing scope, or one from the pool; sqlite3
        errors become :class:`StorageError`."""
        held: _Connection | None = getattr(self._local, "conn", None)
        try:
            if held is not None:
                yield held
                return
            with self._pool_lock:
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                if conn.db.in_transaction:  # an error left a transaction open
                    with contextlib.suppress(sqlite3.Error):
                        conn.db.rollback()
                with self._pool_lock:
                    self._pool.append(conn)
        except sqlite3.Error as e:
            raise _storage_error(e, f"{action} ({self.path})") from e

    def open(self, *, durable: bool) -> None:
        self._durable = durable
        with self._using("open the database") as conn:
            db = conn.db
            db.execute("BEGIN IMMEDIATE")
            try:
                exists = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session_store_meta'").fetchone()
                if not exists:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute("INSERT INTO session_store_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                version = int(db.execute(
                    "SELECT value FROM session_store_meta WHERE name = 'schema_version'").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise StorageError(errno.EPROTO, f"{self.path} has schema version {version}; this "
                                                     f"session_store_sqlite reads up to {SCHEMA_VERSION}: upgrade it")
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version]:
                        db.execute(statement)
                    version += 1
                    db.execute("UPDATE session_store_meta SET value = ? WHERE name = 'schema_version'",
                               (str(version),))
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise

    def close(self) -> None:
        with self._pool_lock:
            conns, self._all, self._pool = self._all, [], []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.db.close()

    # -- the index -------------------------------------------------------------------

    def read_index(self) -> tuple[list[IndexEntry], bool]:
        with self._using("read the index") as conn:
            db = conn.db
            version = conn.data_version()
            if not self._index_loaded:
                db.execute("BEGIN")  # one snapshot for both reads
                try:
                    rows = db.execute("SELECT id, key, created_at FROM sessions ORDER BY rowid").fetchall()
                    self._index_seq = db.execute("SELECT coalesce(max(seq), 0) FROM index_log").fetchone()[0]
                finally:
                    db.execute("COMMIT")
                self._index_loaded = True
                entries = [IndexEntry(op="create", session_id=sid, key=key, created_at=created)
                           for sid, key, created in rows]
            else:
                rows = db.execute("SELECT seq, op, session_id, key, created_at FROM index_log WHERE seq > ? "
                                  "ORDER BY seq", (self._index_seq,)).fetchall()
                entries = [IndexEntry(op=op, session_id=sid, key=key or "", created_at=created or 0)
                           for _, op, sid, key, created in rows]
                if rows:
                    self._index_seq = rows[-1][0]
            conn.index_version = version
            return entries, False

    def index_changed(self) -> bool:
        with self._using("read the index") as conn:
            return conn.data_version() != conn.index_version

    def create_session(self, key: str, session_id: str, created_at: int) -> None:
        with self._using("create a session") as conn:
            db = conn.db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM sessions WHERE key = ?", (key,)).fetchone() is None:
                    db.execute("INSERT INTO sessions (id, key, created_at) VALUES (?, ?, ?)",
                               (session_id, key, created_at))
                    db.execute("INSERT INTO index_log (op, session_id, key, created_at) VALUES ('create', ?, ?, ?)",
                               (session_id, key, created_at))
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise

    def delete_session(self, session_id: str, at: int) -> None:
        with self._using("delete a session") as conn:
            db = conn.db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                    raise SessionNotFound(session_id)
                for table in ("messages", "branch_events", "leases", "quarantine"):
                    db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
                db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
                db.execute("INSERT INTO index_log (op, session_id, created_at) VALUES ('delete', ?, ?)",
                           (session_id, at))
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        self._generations.pop(session_id, None)

    # -- a session's records --------------------------------------------------------------

    def writing(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        return _SqliteWriting(self, session_id)

    def load(self, session_id: str, position: Position, *, writer: bool = False) -> Records | None:
        with self._using("read a session") as conn:
            version = conn.data_version()
            # Nothing was committed by another connection since this one last read the
            # session, and the store applied this connection's own writes: nothing new.
            if position != (0, 0) and conn.versions.get(session_id) == version:
                return None
            rows = conn.db.execute(_LOAD, {"sid": session_id, "events": position[0],
                                           "messages": position[1]}).fetchall()
            if not rows or rows[0][0] != 0:
                raise SessionNotFound(session_id)
            restart = False
            generation = rows[0][1]
            if self._generations.get(session_id, generation) != generation:
                rows = conn.db.execute(_LOAD, {"sid": session_id, "events": 0, "messages": 0}).fetchall()
                if not rows or rows[0][0] != 0:
                    raise SessionNotFound(session_id)
                restart, generation = True, rows[0][1]
            self._generations[session_id] = generation
            conn.versions[session_id] = version
        if len(rows) == 1 and not restart:
            return None
        return Records.from_rows(session_id, position, rows[1:], events_label=f"{self.path}#branch_events",
                                 messages_label=f"{self.path}#messages", restart=restart)

    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        with self._using("append a message") as conn:
            conn.db.execute("INSERT INTO messages (session_id, seq, id, record) VALUES (?, ?, ?, ?)",
                            (session_id, position[1], message_id, line[:-1].decode("utf-8")))
        return (position[0], position[1] + 1)

    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        with self._using("append a branch event") as conn:
            conn.db.execute("INSERT INTO branch_events (session_id, seq, record) VALUES (?, ?, ?)",
                            (session_id, position[0], line[:-1].decode("utf-8")))
        return (position[0] + 1, position[1])

    # -- leases ---------------------------------------------------------------------------

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        with self._using("read a lease") as conn:
            row = conn.db.execute("SELECT record FROM leases WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        try:
            lease = json.loads(row[0])
        except ValueError:
            return None
        return lease if isinstance(lease, dict) else None

    def write_lease(self, session_id: str, lease: Mapping[str, Any]) -> None:
        with self._using("write a lease") as conn:
            conn.db.execute("INSERT OR REPLACE INTO leases (session_id, record) VALUES (?, ?)",
                            (session_id, json.dumps(dict(lease), separators=(",", ":"))))

    # -- check and repair -------------------------------------------------------------------

    def check(self, sessions: Mapping[str, str], *, index: bool) -> list[Problem]:
        if not index:
            return []
        with self._using("check the database") as conn:
            rows = conn.db.execute("PRAGMA quick_check").fetchall()
        return [Problem(session_id=None, file=self.path, offset=None, reason=f"quick_check: {row[0]}")
                for row in rows if row[0] != "ok"]

    def quarantine(self, session_id: str, problems: list[Problem]) -> list[str]:
        """Rows the store cannot use move to the ``quarantine`` table (never deleted)."""
        fixed: list[str] = []
        with self._using("quarantine records") as conn:
            db = conn.db
            for table in ("branch_events", "messages"):
                label = f"{self.path}#{table}"
                seqs = sorted({p.offset for p in problems if p.file == label and p.offset is not None})
                for seq in seqs:
                    db.execute(f"INSERT INTO quarantine (session_id, kind, seq, record) "
                               f"SELECT session_id, '{table}', seq, record FROM {table} "
                               f"WHERE session_id = ? AND seq = ?", (session_id, seq))
                    db.execute(f"DELETE FROM {table} WHERE session_id = ? AND seq = ?",
                               (session_id, seq))
                if seqs:
                    fixed.append(f"{label}: moved {len(seqs)} unusable record(s) of {session_id} to quarantine")
            if fixed:
                db.execute("UPDATE sessions SET generation = generation + 1 WHERE id = ?", (session_id,))
        return fixed


class _SqliteWriting:
    """``SqliteStorage.writing``: one ``BEGIN IMMEDIATE`` transaction, committed on exit."""

    __slots__ = ("_conn", "_session_id", "_storage")

    def __init__(self, storage: SqliteStorage, session_id: str) -> None:
        self._storage, self._session_id = storage, session_id
        self._conn: _Connection | None = None

    def __enter__(self) -> None:
        storage = self._storage
        if getattr(storage._local, "conn", None) is not None:
            raise RuntimeError("SqliteStorage.writing is not re-entrant")
        with storage._pool_lock:
            conn = storage._pool.pop() if storage._pool else None
        try:
            if conn is None:
                conn = storage._connect()
            conn.db.execute("BEGIN IMMEDIATE")
            try:
                if conn.db.execute("SELECT 1 FROM sessions WHERE id = ?", (self._session_id,)).fetchone() is None:
                    raise SessionNotFound(self._session_id)
            except BaseException:
                conn.db.rollback()
                raise
        except BaseException as e:
            if conn is not None:
                with storage._pool_lock:
                    storage._pool.append(conn)
            if isinstance(e, sqlite3.Error):
                raise _storage_error(e, f"write session {self._session_id!r} ({storage.path})") from e
            raise
        storage._local.conn = self._conn = conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        storage, conn = self._storage, self._conn
        self._conn = storage._local.conn = None
        if conn is None:
            return
        try:
            if exc_type is None:
                conn.db.execute("COMMIT")
            else:
                conn.db.rollback()
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.db.rollback()
            raise _storage_error(e, f"commit to session {self._session_id!r} ({storage.path})") from e
        finally:
            with storage._pool_lock:
                storage._pool.append(conn)
