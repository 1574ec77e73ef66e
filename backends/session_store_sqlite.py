"""session_store_sqlite: a :class:`session_store.Storage` in one SQLite database file.

Many processes on one machine share sessions through one database file::

    from session_store import SessionStore
    from session_store_sqlite import SqliteStorage

    with SessionStore(SqliteStorage("sessions.db")) as store:
        sid = store.resolve("user:alice")
        store.append(sid, role="user", content="Hello!")

Standard library only (``sqlite3``); vendor it next to ``session_store.py``. The
database runs in WAL mode. With ``durable=True`` (the store's default) every write is
synced before it returns, by group commit: a transaction commits with
``synchronous=NORMAL`` (nothing synced while it holds the write lock), then one
``fdatasync`` of the WAL file covers every transaction this process committed before
it began, so that writers from many threads share syncs (see :class:`_WalSync`).
Writers take the database's
write lock (``BEGIN IMMEDIATE``) for one short transaction; a writer that finds it
busy looks again every half millisecond (not SQLite's backing-off busy handler, which
let a writer working back to back starve the others) for up to ``timeout`` seconds,
and then raises :class:`StorageError`.

Do not put the file on a network file system: SQLite's locks are not reliable there
(use PostgreSQL to share sessions between machines).

Search (:meth:`SqliteStorage.search_messages`) reads an index of every message's
words, written in the transaction that writes the message: an FTS5 table ranked by
``bm25()`` when this ``sqlite3`` has FTS5 (most builds do), else a plain table of
words read with ``instr()`` and ranked by how often the words occur (correct, but it
reads every message of the sessions whose key has the prefix). A key prefix of at most
200 sessions is searched the plain way even with FTS5: cheaper than ranking every
match in the store. A query whose words are in most messages costs O(matches) with
FTS5 (bm25 ranks every match): see benchmarks/CATALOG.md.

A process that holds a lease keeps a ``flock`` on a small file in ``<path>-leases/``
as its proof of life: the lease is freed before it expires only when that lock is
gone (its holder died), whatever PID namespace or container it ran in. After
``fork()`` a child opens its own connections and never touches its parent's.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]

import contextlib
import errno
import itertools
import json
import operator
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from session_store import (
    IndexEntry,
    InvalidInput,
    Position,
    Problem,
    RealFileSystem,
    Records,
    SessionNotFound,
    Storage,
    StorageError,
    key_range,
    query_words,
    record_words,
)

# ============================================================================
# Schema
# ============================================================================
#
# Version 3. Records are the same JSON objects the JSONL storage writes, one per row;
# ``seq`` numbers a session's messages (and, separately, its branch events) from 0 in
# append order, so a reader's position is the next seq it has not read. ``generation``
# grows when a repair rewrites rows, which tells readers to reload from the start.
# ``tallies`` caches counts per session (see Storage.write_tally).
#
# ``message_words`` is the search index: one row per message row (its session, seq,
# id, timestamp and ``record_words(record)``), written in the same transaction as the
# message row (an append, a creation with records, a repair's rewrite) and deleted
# with its session. Where this sqlite3 has FTS5, ``message_words_fts`` indexes its
# ``words`` (an external-content table, kept in step by triggers, so no code path can
# write one without the other); its tokenizer is ``ascii``, which splits exactly
# where record_words put spaces (every non-ASCII character is a token character, and
# the words hold no ASCII character but letters and digits), so FTS5 reads the very
# words search_words makes. A database created by a sqlite3 without FTS5 keeps the
# plain table only (searched with instr()); one with the FTS5 table cannot be written
# by such a sqlite3 (its triggers fail: "no such module: fts5").
#
# Version 1 had no ``forked_from`` and no ``tallies``; version 2 no ``message_words``.
# Both are migrated when a store opens them (version 2: the index is built from the
# message rows in the migration's transaction).

#: The schema version this module creates and reads.
SCHEMA_VERSION = 3

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
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE sessions ADD COLUMN forked_from TEXT",
        """CREATE TABLE tallies (
            session_id TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            events INTEGER NOT NULL,
            messages INTEGER NOT NULL,
            record TEXT NOT NULL) WITHOUT ROWID"""],
    2: ["""CREATE TABLE message_words (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            at INTEGER NOT NULL,
            words TEXT NOT NULL,
            UNIQUE (session_id, seq))"""],  # then _index_messages
}

# The FTS5 index of message_words (where this sqlite3 has FTS5), created after the
# rows are in (its 'rebuild' reads them once). It is fed in batches: an append writes
# only its message_words row, and once _FTS_BATCH rows wait past ``fts_upto`` (in
# session_store_meta), the append that sees it indexes them all, in its transaction
# (FTS5 writes a segment per statement that feeds it: ~100 µs, which each append
# paid when a trigger fed it row by row). A search reads FTS5 up to ``fts_upto`` and
# the rows after it (at most about a batch) with instr(), in one snapshot, so nothing
# written is ever missed; those newest rows come first (newest first), then FTS5's
# best. Deleting or rewriting a row already fed takes it out of FTS5
# (the triggers, which run only for such rows).
_FTS_BATCH = 64
_FTS_SCHEMA = [
    """CREATE VIRTUAL TABLE message_words_fts USING fts5(
        words, content='message_words', content_rowid='id', tokenize='ascii')""",
    """CREATE TRIGGER message_words_fts_delete AFTER DELETE ON message_words
        WHEN old.id <= (SELECT CAST(value AS INTEGER) FROM session_store_meta WHERE name = 'fts_upto') BEGIN
        INSERT INTO message_words_fts (message_words_fts, rowid, words) VALUES ('delete', old.id, old.words); END""",
    """CREATE TRIGGER message_words_fts_update AFTER UPDATE ON message_words
        WHEN old.id <= (SELECT CAST(value AS INTEGER) FROM session_store_meta WHERE name = 'fts_upto') BEGIN
        INSERT INTO message_words_fts (message_words_fts, rowid, words) VALUES ('delete', old.id, old.words);
        INSERT INTO message_words_fts (rowid, words) VALUES (new.id, new.words); END""",
    "INSERT INTO message_words_fts (message_words_fts) VALUES ('rebuild')",
    """INSERT OR REPLACE INTO session_store_meta (name, value)
        SELECT 'fts_upto', CAST(coalesce(max(id), 0) AS TEXT) FROM message_words""",
]
_FTS_UPTO = "SELECT CAST(value AS INTEGER) FROM session_store_meta WHERE name = 'fts_upto'"
_FEW_SESSIONS = 200  # a key prefix of at most this many sessions is searched row by row

_INSERT_WORDS = "INSERT INTO message_words (session_id, seq, message_id, at, words) VALUES (?, ?, ?, ?, ?)"


def _has_fts5() -> bool:
    """Whether this sqlite3 can make an FTS5 table (tried in a database in memory)."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE VIRTUAL TABLE temp.probe USING fts5(words)")
        return True
    except sqlite3.Error:
        return False
    finally:
        db.close()


#: Whether a new search index is made with FTS5, and searched with it: what this
#: sqlite3 can do (the tests set it ``False`` to run the plain table).
_FTS5 = _has_fts5()

# A load: three statements in one read transaction (one snapshot). The session's
# generation and the end of its messages; its new branch events; its new messages,
# without their seq when those run on without a gap from the reader's position (as
# appends make them; quarantine replaces a row in place). One UNION ALL statement
# costs twice as much: its ORDER BY sorts what the primary key already orders, and
# every row carries a table number and a seq that Python must build.
_LOAD_HEAD = ("SELECT generation, (SELECT max(seq) + 1 FROM messages WHERE session_id = :sid) "
              "FROM sessions WHERE id = :sid")
_LOAD_EVENTS = "SELECT seq, record FROM branch_events WHERE session_id = ? AND seq >= ? ORDER BY seq"
_LOAD_MESSAGES = "SELECT record FROM messages WHERE session_id = ? AND seq >= ? ORDER BY seq"
_LOAD_NUMBERED = "SELECT seq, record FROM messages WHERE session_id = ? AND seq >= ? ORDER BY seq"
_first = operator.itemgetter(0)
# A read of a path's end (Storage.load_backwards): rows before a seq, the newest first,
# with the generation they belong to, _BACK_ROWS at a time.
_LOAD_BACK = ("SELECT s.generation, m.seq, m.record FROM messages m JOIN sessions s ON s.id = m.session_id "
              "WHERE m.session_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?")
_BACK_ROWS = 256

_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_abandoned: list[Any] = []  # connections a forked child inherited: never used, never closed


_SQLITE_FULL = 13  # "database or disk is full" (sqlite3.SQLITE_FULL from Python 3.11)


def _storage_error(e: sqlite3.Error, action: str) -> StorageError:
    """The store's error for a ``sqlite3`` one: a full disk is ``ENOSPC`` (free space
    and retry), a busy or locked database ``EBUSY``, anything else ``EIO``."""
    if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(e):
        return StorageError(errno.ENOSPC, f"could not {action}: the disk is full ({e})")
    busy = isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))
    return StorageError(errno.EBUSY if busy else errno.EIO, f"could not {action}: {e}")


def _words_of(record: Mapping[str, Any]) -> tuple[int, str]:
    """What the search index keeps of a message record: its timestamp (0 when it has
    none that fits a column) and :func:`record_words`."""
    at = record.get("timestamp")
    return (at if type(at) is int and -(1 << 63) <= at < (1 << 63) else 0), record_words(record)


def _indexed(line: str | bytes) -> tuple[int, str] | None:
    """:func:`_words_of` the record of a line; ``None`` for a line that is not a JSON
    object (it is not indexed)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return _words_of(record) if isinstance(record, dict) else None


def _entry(row: tuple[Any, ...]) -> IndexEntry:
    sid, key, created, fork = row
    forked_from = None
    if fork:
        with contextlib.suppress(ValueError, TypeError):
            source, message = json.loads(fork)
            forked_from = (str(source), message if isinstance(message, str) else None)
    return IndexEntry(session_id=sid, key=key, created_at=created, forked_from=forked_from)


# ============================================================================
# Storage
# ============================================================================


class _Connection:
    """A pooled connection and what it has seen: per session, ``PRAGMA data_version``
    and the position a load brought its reader to."""

    __slots__ = ("db", "polling", "reached", "sync_now", "versions")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.versions: dict[str, tuple[int, Position]] = {}
        self.sync_now = False  # the write scope under way wrote what its commit must sync at once
        self.reached: tuple[str, Position] | None = None  # the session and end its records reached
        self.polling = False  # SQLite's busy handler is off (see _begin_immediate)

    def data_version(self) -> int:
        """Changes whenever *another* connection committed to the database (what this
        one commits, in :class:`_SqliteWriting`, drops its ``versions`` of the session)."""
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
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise InvalidInput(f"path must be a path, not {type(path).__name__}") from None
        if not isinstance(self.path, str) or not self.path or "\x00" in self.path:
            raise InvalidInput(f"path must be a non-empty str path, not {path!r}")
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise InvalidInput("SqliteStorage needs a database file; use InMemoryFileSystem for a store in memory")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput("timeout must be a number >= 0")
        self.timeout = timeout
        self._file = os.path.abspath(self.path)  # what every connection opens, whatever the working directory
        self._durable = True
        self._marks = RealFileSystem(max_open_files=16)
        self._reset()
        _children.add(self)

    def _reset(self) -> None:
        self._pool: list[_Connection] = []
        self._all: list[_Connection] = []
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .conn: the connection of this thread's writing scope
        self._generations: dict[str, int] = {}
        self._fts: bool | None = None  # whether search reads FTS5 (known at the first search)
        self._fts_seen = 0  # fts_upto as this storage last read it (see _feed_fts)
        self._wal = _WalSync()
        # This process's writers queue here for the write lock rather than polling it
        # (see _begin_immediate); re-entrant, so that a nested write still fails as SQLite's.
        self._writer = threading.RLock()

    def after_fork(self) -> None:
        """A child never uses (nor closes: that could disturb the parent's locks) the
        parent's connections; it opens its own."""
        _abandoned.extend(self._all)
        self._wal._close_fd()  # a descriptor, no lock: closing the child's copy leaves the parent's (and its
        # condition may have been copied held by a thread the child does not have: not waited on)
        self._reset()

    def forget(self, session_id: str) -> None:
        self._generations.pop(session_id, None)
        with self._pool_lock:
            for conn in self._all:
                conn.versions.pop(session_id, None)

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r}, timeout={self.timeout!r})"

    @property
    def location(self) -> str:
        return self.path

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> _Connection:
        db = sqlite3.connect(self._file, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            _retry_busy(lambda: db.execute("PRAGMA journal_mode=WAL"), self.timeout)
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                db.execute("PRAGMA synchronous=NORMAL")  # durable: synced after the commit (see _WalSync)
                # Where SQLite keeps the database (symbolic links resolved): one file for
                # every connection, or the WAL synced would not be the one written.
                found = next(row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main")
                if self._wal.path is None:
                    self._wal.path = found
                elif found != self._wal.path:
                    raise StorageError(errno.ESTALE, f"{self.path} now names {found}, not {self._wal.path} as when "
                                                     "this storage opened it (a link moved): open it again")
            else:  # (a file system without WAL's shared memory): each commit syncs itself
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
                if conn.polling:  # left by a write transaction: waits for busy readers as SQLite does
                    conn.db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                    conn.polling = False
                yield conn
            finally:
                if conn.db.in_transaction:  # an error left a transaction open
                    with contextlib.suppress(sqlite3.Error):
                        conn.db.rollback()
                with self._pool_lock:
                    self._pool.append(conn)
        except sqlite3.Error as e:
            raise _storage_error(e, f"{action} ({self.path})") from e

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        with self._using(action) as conn:
            db = conn.db
            self._begin_write(conn, action)
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
            finally:
                self._writer.release()
        self._synced()

    def _begin_write(self, conn: _Connection, action: str) -> None:
        """Begin a write transaction on ``conn`` (refused after a failed sync): this
        process's turn first (threads queue on a lock, not by polling SQLite's, which
        wakes every half millisecond), then SQLite's write lock, both within
        ``timeout`` seconds. The caller lets go of the turn (``_writer``) when the
        transaction ends; a begin that fails lets go of it here."""
        self._wal.check()
        start = time.monotonic()
        if not self._writer.acquire(timeout=self.timeout):
            raise StorageError(errno.EBUSY, f"{action} ({self.path}): another thread of this process held "
                                            f"the database for {self.timeout} s")
        try:
            _begin_immediate(conn, max(0.0, self.timeout - (time.monotonic() - start)))
        except BaseException:
            self._writer.release()
            raise

    def _synced(self) -> None:
        """Make what this process committed durable now (a durable storage): every write
        but a session's records, whose sync the store asks for after the write scope
        (:meth:`sync`), outside the session's locks, so that writers share it."""
        if self._durable:
            self._wal.committed()
            self._wal.sync()

    def open(self, *, durable: bool) -> None:
        self._durable = durable
        with self._using("open the database") as conn:
            if self._schema_version(conn.db) == SCHEMA_VERSION:
                return  # the usual case: no write lock taken
        with self._transaction("create the schema") as db:
            version = self._schema_version(db)
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO session_store_meta VALUES ('schema_version', '1')")
                version = 1
            if version > SCHEMA_VERSION:
                raise StorageError(errno.EPROTO, f"{self.path} has schema version {version}; this "
                                                 f"session_store_sqlite reads up to {SCHEMA_VERSION}: upgrade it")
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                if version == 2:
                    _index_messages(db)
                version += 1
                db.execute("UPDATE session_store_meta SET value = ? WHERE name = 'schema_version'", (str(version),))

    def _schema_version(self, db: sqlite3.Connection) -> int:
        """The schema's version; 0 for a database without one (a new file). One statement:
        every fresh store runs it, so it is not preceded by a look into sqlite_master."""
        try:
            row = db.execute("SELECT value FROM session_store_meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.OperationalError as e:
            if str(e).startswith("no such table"):
                return 0
            raise
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._pool_lock:
            conns, self._all, self._pool = self._all, [], []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.db.close()
        self._marks.close()
        self._wal.close()
        self._wal = _WalSync()  # opened again, it syncs (and writes) afresh
        self._generations = {}  # what it knew of each session read: kept, it would pin the freed memory around it

    # -- the index -------------------------------------------------------------------

    def lookup(self, key: str) -> str | None:
        with self._using("read the index") as conn:
            row = conn.db.execute("SELECT id FROM sessions WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def session_info(self, session_id: str) -> IndexEntry | None:
        with self._using("read the index") as conn:
            row = conn.db.execute("SELECT id, key, created_at, forked_from FROM sessions WHERE id = ?",
                                  (session_id,)).fetchone()
        return _entry(row) if row else None

    def list_sessions(self) -> list[IndexEntry]:
        with self._using("list the sessions") as conn:
            rows = conn.db.execute("SELECT id, key, created_at, forked_from FROM sessions "
                                   "ORDER BY created_at, id").fetchall()
        return [_entry(row) for row in rows]

    def create_session(self, key: str, session_id: str, created_at: int, *,
                       messages: Sequence[bytes] = (), events: Sequence[bytes] = (),
                       forked_from: tuple[str, str | None] | None = None) -> str:
        with self._transaction("create a session") as db:  # one transaction: whole or nothing
            row = db.execute("SELECT id FROM sessions WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return str(row[0])
            db.execute("INSERT INTO sessions (id, key, created_at, forked_from) VALUES (?, ?, ?, ?)",
                       (session_id, key, created_at, json.dumps(list(forked_from)) if forked_from else None))
            db.execute("INSERT INTO index_log (op, session_id, key, created_at) VALUES ('create', ?, ?, ?)",
                       (session_id, key, created_at))
            records = [json.loads(line) for line in messages]
            db.executemany("INSERT INTO messages (session_id, seq, id, record) VALUES (?, ?, ?, ?)",
                           [(session_id, seq, record["id"], line[:-1].decode("utf-8"))
                            for seq, (line, record) in enumerate(zip(messages, records, strict=True))])
            db.executemany(_INSERT_WORDS, [(session_id, seq, record["id"], *_words_of(record))
                                           for seq, record in enumerate(records)])
            if records:
                self._feed_fts(db, db.execute("SELECT max(id) FROM message_words").fetchone()[0])
            db.executemany("INSERT INTO branch_events (session_id, seq, record) VALUES (?, ?, ?)",
                           [(session_id, seq, line[:-1].decode("utf-8")) for seq, line in enumerate(events)])
        return session_id

    def delete_session(self, session_id: str, at: int, *, check: Callable[[], None] | None = None) -> None:
        with self._transaction("delete a session") as db:
            if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                raise SessionNotFound(session_id)
            if check is not None:  # a lease check: no other writer can commit while we hold IMMEDIATE
                check()
            for table in ("messages", "message_words", "branch_events", "leases", "quarantine", "tallies"):
                db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            db.execute("INSERT INTO index_log (op, session_id, created_at) VALUES ('delete', ?, ?)",
                       (session_id, at))
        self.forget(session_id)
        if _SESSION_ID_RE.fullmatch(session_id):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}-leases/{session_id}")

    # -- finding sessions and messages ------------------------------------------------------

    def find_sessions(self, key_prefix: str) -> list[IndexEntry]:
        """A range of the key column's index (``low <= key < high``, see
        :func:`key_range`): O(log sessions + matches). Not LIKE, which is
        case-insensitive for ASCII and reads ``%`` and ``_``; not GLOB, which reads
        ``*``, ``?`` and ``[``. In key order."""
        bounds = key_range(key_prefix)
        if bounds is None:
            return []
        low, high = bounds
        with self._using("find sessions") as conn:
            rows = conn.db.execute("SELECT id, key, created_at, forked_from FROM sessions WHERE key >= ?"
                                   + (" AND key < ?" if high is not None else "") + " ORDER BY key",
                                   (low,) if high is None else (low, high)).fetchall()
        return [_entry(row) for row in rows if row[1].startswith(key_prefix)]

    def session_bytes(self, session_id: str) -> int | None:
        """The UTF-8 bytes of the session's message and branch event rows."""
        with self._using("measure a session") as conn:
            row = conn.db.execute(
                "SELECT (SELECT coalesce(sum(length(CAST(record AS BLOB))), 0) FROM messages WHERE session_id = :sid)"
                " + (SELECT coalesce(sum(length(CAST(record AS BLOB))), 0) FROM branch_events WHERE session_id = :sid)"
                " FROM sessions WHERE id = :sid", {"sid": session_id}).fetchone()
        return None if row is None else int(row[0])

    def search_messages(self, words: Sequence[str], key_prefix: str, limit: int,
                        offset: int) -> list[tuple[str, str]]:
        """The ``message_words`` index (see "Schema"), joined to the sessions whose
        key is in :func:`key_range` of the prefix before the limit applies. With
        FTS5: each word a quoted FTS5 string (an operator is a plain word), the best
        ``bm25()`` first; without it, or for a prefix of at most 200 sessions, every
        word found with ``instr()`` between spaces, the most occurrences first. Then
        the newest message first (its timestamp, then the latest written). No words:
        every message of those sessions, the newest first."""
        found = query_words(words)
        bounds = key_range(key_prefix)
        if found is None or bounds is None or limit <= 0:
            return []
        low, high = bounds
        where, params = ["s.key >= ?"], [low]
        if high is not None:
            where.append("s.key < ?")
            params.append(high)
        scan = ["instr(' ' || w.words || ' ', ?) > 0"] * len(found)
        scanned = [f" {word} " for word in found]
        # The count of the words in a row (about: a word repeated back to back counts less).
        often = " + ".join(["(length(' ' || w.words || ' ') - length(replace(' ' || w.words || ' ', ?, '')))"
                            " / ?"] * len(found))
        counted = [x for word in found for x in (f" {word} ", len(word) + 2)]
        with self._using("search messages") as conn:
            db = conn.db
            own = not db.in_transaction
            if own:  # one snapshot: fts_upto and the rows on both sides of it
                db.execute("BEGIN")
            try:
                # A prefix of a few sessions is read row by row: cheaper than ranking every
                # match FTS5 finds in the whole store and keeping the prefix's.
                if found and self._fts_writes(db) and not (key_prefix and db.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM sessions s WHERE " + " AND ".join(where) + " LIMIT ?)",
                        (*params, _FEW_SESSIONS + 1)).fetchone()[0] <= _FEW_SESSIONS):
                    row = db.execute(_FTS_UPTO).fetchone()
                    upto = int(row[0]) if row is not None else 0
                    match = " ".join('"' + word.replace('"', '""') + '"' for word in found)
                    query = ("SELECT session_id, message_id FROM ("
                             "SELECT w.session_id, w.message_id, bm25(message_words_fts) AS rank, w.at, w.id "
                             "FROM message_words_fts f JOIN message_words w ON w.id = f.rowid "
                             "JOIN sessions s ON s.id = w.session_id "
                             "WHERE message_words_fts MATCH ? AND " + " AND ".join(where) + " UNION ALL "
                             "SELECT w.session_id, w.message_id, -1e300, w.at, w.id FROM message_words w "
                             "CROSS JOIN sessions s ON s.id = w.session_id "  # (CROSS: the rows after fts_upto first)
                             "WHERE w.id > ? AND " + " AND ".join(where + scan) +
                             ") ORDER BY rank, at DESC, id DESC LIMIT ? OFFSET ?")
                    args = (match, *params, upto, *params, *scanned)
                else:
                    query = ("SELECT w.session_id, w.message_id FROM sessions s JOIN message_words w "
                             "ON w.session_id = s.id WHERE " + " AND ".join(where + scan) +
                             f" ORDER BY {often + ' DESC, ' if found else ''}w.at DESC, w.id DESC LIMIT ? OFFSET ?")
                    args = (*params, *scanned, *counted)
                rows = db.execute(query, (*args, limit, max(0, offset))).fetchall()
            finally:
                if own:
                    db.execute("COMMIT")
        return [(str(sid), str(mid)) for sid, mid in rows]

    # -- a session's records --------------------------------------------------------------

    def writing(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        return _SqliteWriting(self, session_id)

    def load(self, session_id: str, position: Position, *, writer: bool = False) -> Records | None:
        with self._using("read a session") as conn:
            version = conn.data_version()
            # Nothing was committed by another connection since this one brought a reader
            # of this session to this very position: nothing new.
            if position != (0, 0) and conn.versions.get(session_id) == (version, position):
                return None
            db = conn.db
            own = not db.in_transaction  # a writer's load runs in its write transaction
            if own:  # (an error leaves it to _using to roll back)
                db.execute("BEGIN")
            head = db.execute(_LOAD_HEAD, {"sid": session_id}).fetchone()
            if head is None:
                raise SessionNotFound(session_id)
            generation, end = head[0], head[1] or 0
            restart = position != (0, 0) and self._generations.get(session_id, generation) != generation
            start = (0, 0) if restart else position
            events = db.execute(_LOAD_EVENTS, (session_id, start[0])).fetchall()
            texts = db.execute(_LOAD_MESSAGES, (session_id, start[1])).fetchall()
            if len(texts) == end - start[1]:  # seq start, start + 1, ..., end - 1
                messages: Iterable[tuple[int, str]] = zip(itertools.count(start[1]), map(_first, texts))
            else:
                messages = db.execute(_LOAD_NUMBERED, (session_id, start[1])).fetchall()
            if own:
                db.execute("COMMIT")
            self._generations[session_id] = generation
            found = Records.from_tables(session_id, position, events, messages, restart=restart,
                                        events_label=f"{self.path}#branch_events",
                                        messages_label=f"{self.path}#messages")
            if not writer:  # a writer's own appends move it on; its next load must look
                conn.versions[session_id] = (version, found.position)
        if not events and not texts and not restart:
            return None
        return found

    def load_backwards(self, session_id: str, position: Position) -> Iterator[Records]:
        def fetch(end: int) -> list[Any]:
            with self._using("read a session") as conn:
                return conn.db.execute(_LOAD_BACK, (session_id, end, _BACK_ROWS)).fetchall()
        return Records.parts_before(session_id, position[1], fetch, self._generations.get(session_id),
                                    events_label=f"{self.path}#branch_events", messages_label=f"{self.path}#messages")

    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        found = _indexed(line)
        with self._using("append a message") as conn:  # (inside writing(): one transaction with its index row)
            conn.db.execute("INSERT INTO messages (session_id, seq, id, record) VALUES (?, ?, ?, ?)",
                            (session_id, position[1], message_id, line[:-1].decode("utf-8")))
            if found is not None:
                last = conn.db.execute(_INSERT_WORDS, (session_id, position[1], message_id, *found)).lastrowid
                self._feed_fts(conn.db, last)
            conn.reached = session_id, (position[0], position[1] + 1)
        return (position[0], position[1] + 1)

    def _feed_fts(self, db: sqlite3.Connection, last: int | None) -> None:
        """Inside a write transaction, after message_words rows up to id ``last`` were
        written: once a batch of rows waits past ``fts_upto``, index them in FTS5 (see
        "Schema"). Reads ``fts_upto`` only when the value last seen says a batch may wait."""
        if last is None or last - self._fts_seen < _FTS_BATCH or not self._fts_writes(db):
            return
        row = db.execute(_FTS_UPTO).fetchone()
        upto = int(row[0]) if row is not None else last
        if last - upto >= _FTS_BATCH:
            db.execute("INSERT INTO message_words_fts (rowid, words) SELECT id, words FROM message_words "
                       "WHERE id > ? ORDER BY id", (upto,))
            db.execute("UPDATE session_store_meta SET value = ? WHERE name = 'fts_upto'", (str(last),))
            upto = last
        self._fts_seen = upto

    def _fts_writes(self, db: sqlite3.Connection) -> bool:
        """Whether this database has the FTS5 table (and this sqlite3 can write it)."""
        if self._fts is None:
            self._fts = _FTS5 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                              "AND name = 'message_words_fts'").fetchone() is not None
        return self._fts

    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        with self._using("append a branch event") as conn:
            conn.db.execute("INSERT INTO branch_events (session_id, seq, record) VALUES (?, ?, ?)",
                            (session_id, position[0], line[:-1].decode("utf-8")))
            conn.reached = session_id, (position[0] + 1, position[1])
        return (position[0] + 1, position[1])

    def sync(self, session_id: str) -> None:
        """Group commit: one ``fdatasync`` of the WAL covers every transaction this
        process committed before it began (see :class:`_WalSync`)."""
        if self._durable:
            self._wal.sync()

    @property
    def sync_takes_back(self) -> bool:
        """No: what a failed sync covered was committed, maybe read by others; the
        storage refuses writes until opened again (see :class:`_WalSync`)."""
        return False

    # -- counts ------------------------------------------------------------------------------

    def read_tally(self, session_id: str) -> tuple[Position, dict[str, Any]] | None:
        with self._using("read a tally") as conn:
            row = conn.db.execute("SELECT t.events, t.messages, t.record, t.generation FROM tallies t JOIN sessions s "
                                  "ON s.id = t.session_id AND s.generation = t.generation WHERE t.session_id = ?",
                                  (session_id,)).fetchone()
        if row is None:
            return None
        try:
            tally = json.loads(row[2])
        except ValueError:
            return None
        if not isinstance(tally, dict):
            return None
        self._generations[session_id] = row[3]  # a load reading on from it sees a repair since as a restart
        return (row[0], row[1]), tally

    def write_tally(self, session_id: str, position: Position, tally: Mapping[str, Any]) -> None:
        # Of the generation the tally's records were read from: a store that read them
        # before a repair elsewhere saves nothing the repaired rows would believe.
        with self._using("save a tally") as conn:
            conn.db.execute("INSERT OR REPLACE INTO tallies SELECT id, generation, ?, ?, ? FROM sessions "
                            "WHERE id = ? AND generation = ?", (position[0], position[1], json.dumps(dict(tally)),
                                                               session_id, self._generations.get(session_id, -1)))

    # -- leases ---------------------------------------------------------------------------

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        with self._using("read a lease") as conn:
            row = conn.db.execute("SELECT record FROM leases WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        try:
            lease = json.loads(row[0])
        except (ValueError, RecursionError):
            return {"corrupt": True}
        return lease if isinstance(lease, dict) else {"corrupt": True}

    def write_lease(self, session_id: str, lease: Mapping[str, Any], *, durable: bool) -> None:
        # Inside writing(): committed with its transaction, and synced before writing()
        # returns when ``durable`` (a reserved range of tokens, see SessionStore._next_token).
        with self._using("write a lease") as conn:
            conn.db.execute("INSERT OR REPLACE INTO leases (session_id, record) VALUES (?, ?)",
                            (session_id, json.dumps(dict(lease), separators=(",", ":"))))
            conn.sync_now |= durable

    def peek_lease(self, session_id: str) -> dict[str, Any] | None:
        return self.read_lease(session_id)  # a plain read: WAL readers never wait for the writer

    def _mark_path(self, session_id: str) -> str:
        if not _SESSION_ID_RE.fullmatch(session_id):
            raise InvalidInput(f"not a session id: {session_id!r}")
        return f"{self.path}-leases/{session_id}"

    def hold_lease(self, session_id: str) -> None:
        path = self._mark_path(session_id)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._marks.hold(path)
        except OSError as e:
            raise StorageError(e.errno, f"could not keep the lease's proof of life {path}: {e.strerror}") from e

    def drop_lease(self, session_id: str) -> None:
        self._marks.release(self._mark_path(session_id))

    def holder_gone(self, session_id: str, lease: Mapping[str, Any]) -> bool:
        try:
            return self._marks.is_held(self._mark_path(session_id)) is False
        except (OSError, InvalidInput):
            return False

    # -- check and repair -------------------------------------------------------------------

    def check(self, sessions: Mapping[str, str], *, index: bool) -> list[Problem]:
        if not index:
            return []
        with self._using("check the database") as conn:
            rows = conn.db.execute("PRAGMA quick_check").fetchall()
        return [Problem(session_id=None, file=self.path, offset=None, reason=f"quick_check: {row[0]}")
                for row in rows if row[0] != "ok"]

    def quarantine(self, session_id: str, problems: list[Problem], placeholders: Mapping[int, bytes]) -> list[str]:
        """Rows the store cannot use are copied to the ``quarantine`` table (never
        deleted); a message row is then replaced by its placeholder, an event row removed."""
        fixed: list[str] = []
        with self._using("quarantine records") as conn:
            db = conn.db
            conn.sync_now = True
            for table in ("branch_events", "messages"):
                label = f"{self.path}#{table}"
                seqs = sorted({p.offset for p in problems if p.file == label and p.offset is not None})
                for seq in seqs:
                    db.execute(f"INSERT INTO quarantine (session_id, kind, seq, record) "
                               f"SELECT session_id, '{table}', seq, record FROM {table} "
                               f"WHERE session_id = ? AND seq = ?", (session_id, seq))
                    if table == "messages":  # its search index row goes, or is the placeholder's
                        db.execute("DELETE FROM message_words WHERE session_id = ? AND seq = ?", (session_id, seq))
                    if table == "messages" and seq in placeholders:
                        text = placeholders[seq][:-1].decode("utf-8")
                        record = json.loads(text)
                        db.execute("UPDATE messages SET record = ?, id = ? WHERE session_id = ? AND seq = ?",
                                   (text, record["id"], session_id, seq))
                        last = db.execute(_INSERT_WORDS, (session_id, seq, record["id"], *_words_of(record))).lastrowid
                        self._feed_fts(db, last)
                    else:
                        db.execute(f"DELETE FROM {table} WHERE session_id = ? AND seq = ?", (session_id, seq))
                if seqs:
                    fixed.append(f"{label}: moved {len(seqs)} unusable record(s) of {session_id} to quarantine")
            if fixed:
                db.execute("UPDATE sessions SET generation = generation + 1 WHERE id = ?", (session_id,))
        return fixed


def _index_messages(db: sqlite3.Connection) -> None:
    """Migration 2 -> 3, in its transaction: the search index of every message row
    there is (read in primary key order, a thousand rows at a time), then its FTS5
    table where this sqlite3 has FTS5."""
    rows = db.execute("SELECT session_id, seq, id, record FROM messages")
    while batch := rows.fetchmany(1000):
        db.executemany(_INSERT_WORDS, [(sid, seq, mid, *found) for sid, seq, mid, record in batch
                                       if (found := _indexed(record)) is not None])
    if _FTS5:
        for statement in _FTS_SCHEMA:
            db.execute(statement)


class _Children:
    """Storages to reset in a child process after ``fork()`` (held weakly)."""

    def __init__(self) -> None:
        self._storages: weakref.WeakSet[SqliteStorage] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._run)

    def add(self, storage: SqliteStorage) -> None:
        self._storages.add(storage)

    def _run(self) -> None:
        for storage in list(self._storages):
            storage.after_fork()


_children = _Children()


def _begin_immediate(conn: _Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE``, retried every :data:`_RETRY` seconds while another
    connection writes, for at most ``timeout`` seconds (then the busy error).

    SQLite's own busy handler sleeps longer each time it finds the database busy (up
    to 100 ms), so a process that writes back to back (a lease taken, a message, the
    lease released, taken again) gets the write lock again and again while the others
    sleep: they never reach the lease's queue. Measured with 4 processes taking turns
    on one session's lease: the busiest took 75-88% of the turns. Retrying at a short,
    fixed interval lets a waiter in at the next gap between two transactions.

    SQLite's handler stays off after the transaction (nothing in it waits: it holds
    the write lock): :meth:`SqliteStorage._using` puts it back before the
    connection's next use outside a write, so that writes back to back set it once.
    """
    db = conn.db
    if not conn.polling:
        db.execute("PRAGMA busy_timeout = 0")
        conn.polling = True
    _retry_busy(lambda: db.execute("BEGIN IMMEDIATE"), timeout)


def _retry_busy(step: Callable[[], object], timeout: float) -> None:
    """``step()``, retried every :data:`_RETRY` seconds while the database is busy, for
    at most ``timeout`` seconds (then the busy error). Also for ``PRAGMA
    journal_mode=WAL`` on a connection being opened: SQLite answers it busy at once,
    without its busy handler, while another process opens the same new database
    (processes creating one store at once failed with "database is locked")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise  # (the extended codes of a busy database share the primary code's low byte)
        time.sleep(_RETRY)


_RETRY = 0.0005  # seconds between two attempts to begin a write transaction


class _WalSync:
    """Group commit for one durable :class:`SqliteStorage`: transactions commit with
    ``synchronous=NORMAL``, which writes their pages to the WAL file and syncs
    nothing, so the write lock is held for no sync; then :meth:`sync` makes them
    durable with one ``fdatasync`` of the WAL file, which covers every page written to
    it before the call (the kernel syncs the file, whichever descriptor asks). The
    first writer to arrive syncs; writers arriving meanwhile wait and are all
    released by the next sync, which covers them all: 8 threads pay about one sync
    per round, not one each behind the write lock as with ``synchronous=FULL``.

    Why it is as durable as ``FULL`` (which syncs the WAL at each commit): a write is
    acknowledged only after a sync that began after its commit. SQLite in WAL mode
    with ``NORMAL`` syncs the WAL before each checkpoint and the database after it,
    and restarts the WAL from its start only once all of it is checkpointed; so a
    commit's pages are durable in the WAL when our sync ran, or in the database file
    when a checkpoint moved them first. The WAL file is never removed while this
    storage has a connection open (SQLite removes it when the last connection
    closes, after a checkpoint into the synced database); it is opened again when
    it was replaced, found by comparing its inode before each sync.

    A failed sync (``EIO``) fails the writes it covered and every later write of
    this storage (:class:`StorageError`), until it is opened again: after a failed
    ``fsync`` the kernel may have dropped the pages, and a later sync "succeeding"
    would prove nothing (the fsyncgate lesson). A write told it failed so may still
    be found after reopening, as after any commit whose answer was lost.
    """

    __slots__ = ("cond", "failed", "fd", "ident", "path", "synced", "syncing", "written")

    def __init__(self) -> None:
        self.path: str | None = None  # the database file, as SQLite names it; the WAL is path + "-wal"
        self.cond = threading.Condition(threading.Lock())
        self.written = 0  # transactions committed by this process (a count)
        self.synced = 0  # of them, those a finished sync covered
        self.syncing = False
        self.failed: str | None = None
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None

    def committed(self) -> None:
        with self.cond:
            self.written += 1

    def check(self) -> None:
        """Refuse to write after a failed sync."""
        if self.failed is not None:
            raise StorageError(errno.EIO, self.failed)

    def sync(self) -> None:
        """Return once a sync that began after every commit counted so far finished."""
        with self.cond:
            want = self.written
            while self.synced < want:
                self.check()
                if not self.syncing:
                    break
                self.cond.wait()
            else:
                return
            self.syncing = True
            target = self.written
        done = False
        try:
            try:
                fd = self._descriptor()
            except OSError as e:  # not a failed sync: nothing was lost (too many open files...)
                raise StorageError(e.errno or errno.EIO, f"could not open {self.path}-wal to sync it: "
                                                          f"{e.strerror or e}") from e
            if fd is not None:
                try:
                    _fdatasync(fd)
                except OSError as e:  # (set before the waiters wake below: they must see it)
                    self.failed = (f"could not sync {self.path}: {e.strerror or e}; this storage writes nothing "
                                   "more until it is opened again (what the failed sync covered may or may not "
                                   "have been kept)")
                    raise StorageError(e.errno or errno.EIO, self.failed) from e
            done = True
        finally:  # whatever happened, the next writer may sync
            with self.cond:
                if done:
                    self.synced = max(self.synced, target)
                self.syncing = False
                self.cond.notify_all()

    def _descriptor(self) -> int | None:
        """The WAL file's descriptor, opened again when the file was replaced; ``None``
        when there is none (all of it was checkpointed into the database, which the
        checkpoint synced; or the database is not in WAL mode: its commits synced).
        A WAL file this storage had not seen has its directory entry synced first, as
        SQLite syncs a new journal's directory (its first sync with ``FULL``).

        The database file itself is never opened here: closing any descriptor of it
        would drop this process's POSIX locks on it, SQLite's included."""
        if self.path is None:
            return None  # no connection in WAL mode was ever opened: nothing to sync
        path = self.path + "-wal"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if self.fd is not None and self.ident == (st.st_dev, st.st_ino):
            return self.fd
        self._close_fd()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            found = os.fstat(fd)
            directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.ident = fd, (found.st_dev, found.st_ino)
        return fd

    def close(self) -> None:
        """Close the WAL's descriptor, once no sync is using it."""
        with self.cond:
            while self.syncing:
                self.cond.wait()
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self.fd, self.ident = self.fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


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
        conn = None
        try:
            with storage._pool_lock:
                conn = storage._pool.pop() if storage._pool else None
            if conn is None:
                conn = storage._connect()
            conn.sync_now, conn.reached = False, None  # (left by a call made outside a scope)
            storage._begin_write(conn, f"write session {self._session_id!r}")
            try:
                if conn.db.execute("SELECT 1 FROM sessions WHERE id = ?", (self._session_id,)).fetchone() is None:
                    raise SessionNotFound(self._session_id)
            except BaseException:
                try:
                    conn.db.rollback()
                finally:
                    storage._writer.release()
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
        sync_now, conn.sync_now = conn.sync_now, False
        reached, conn.reached, seen = conn.reached, None, None
        try:
            if exc_type is None:
                if reached is not None and reached[0] == self._session_id:
                    # Nobody else commits while this transaction holds the write lock:
                    # after the commit, the session is at ``reached`` as of this version.
                    seen = conn.data_version(), reached[1]
                conn.db.execute("COMMIT")
            else:
                conn.db.rollback()
        except sqlite3.Error as e:
            seen = None
            with contextlib.suppress(sqlite3.Error):
                conn.db.rollback()
            raise _storage_error(e, f"commit to session {self._session_id!r} ({storage.path})") from e
        finally:
            storage._writer.release()
            # What this connection commits leaves its data_version as it was: the
            # position it last read the session to no longer tells "nothing new",
            # unless it is where this commit left the session (then the next writer's
            # load on this connection reads nothing, see load()).
            if seen is None:
                conn.versions.pop(self._session_id, None)
            else:
                conn.versions[self._session_id] = seen
            with storage._pool_lock:
                storage._pool.append(conn)
        if exc_type is None and storage._durable:
            storage._wal.committed()  # a session's records: synced by the store's sync() after this scope
            if sync_now:  # a reserved range of tokens, a repair: durable before the scope ends
                storage._wal.sync()
