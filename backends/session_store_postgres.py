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
  renewal, re-entrancy, fencing and owner rules as the file store. Expiry uses the
  clients' clocks (``SessionStore(clock=...)``): keep hosts in sync with NTP. A
  process holding a lease keeps a shared advisory lock on a connection of its own
  (opened from the DSN or the pool) as its proof of life; the lease is freed before
  it expires only when the server dropped that lock (the holder's connection ended),
  never because of a host name or a process id. With a single given connection there
  is no such connection: leases then end only when they expire.
- ``durable=False`` sets ``synchronous_commit = off`` for the store's connections.
- Search (:meth:`PostgresStorage.search_messages`) reads a ``tsvector`` of every
  message's words (a GIN index), written by the statement that writes the message;
  the best ``ts_rank`` first.
- After ``fork()``, a store made from a DSN opens its own connections in the child
  (the parent's are never used nor closed there); a given connection or pool belongs
  to the process that made it, and the child gets a clear :class:`StorageError`.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]

import contextlib
import errno
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    key_range,
    query_words,
    record_words,
)

# ============================================================================
# Schema
# ============================================================================
#
# Version 3, in the configured schema. The same JSON records as the other storages,
# one per row; ``seq`` numbers a session's messages (and, separately, its branch
# events) in append order. ``index_log`` is written under a transaction-scoped
# advisory lock, so its ``seq`` order is its commit order.
#
# ``sessions.key`` is collated "C" (byte order, whatever the database's collation),
# so that the keys starting with a prefix are one range of its unique index.
# ``message_words`` is the search index: one row per message row (its session, seq,
# id, timestamp and the words of record_words(record) as a ``tsvector``, GIN-indexed),
# written by the statement that writes the message row (an append, a creation with
# records, a repair's rewrite) and deleted with its session. The tsvector is built
# from those words as they are (a lexeme each, with its positions: what
# to_tsvector('simple') makes of them, without its parser's own idea of a word,
# which drops some that search_words keeps, such as "²"), and a query is the
# tsquery of its words as they are, ANDed: both are values passed as parameters.
# PostgreSQL's limits: a word of more than 2,046 bytes is left out (a query leaves
# it out too), positions past 16,383 count as 16,383, at most 256 are kept a word.
#
# Version 1 had no ``forked_from`` and no ``tallies``; version 2 a key collated as
# the database is, and no ``message_words``. Both are migrated when a store opens
# them (version 2: the index is built from the message rows in the migration's
# transaction).

#: The schema version this module creates and reads.
SCHEMA_VERSION = 3

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
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE {s}.sessions ADD COLUMN forked_from text",
        """CREATE TABLE {s}.tallies (
            session_id text PRIMARY KEY,
            generation bigint NOT NULL,
            events bigint NOT NULL,
            messages bigint NOT NULL,
            record text NOT NULL)"""],
    2: ['ALTER TABLE {s}.sessions ALTER COLUMN key TYPE text COLLATE "C"',
        """CREATE TABLE {s}.message_words (
            session_id text NOT NULL,
            seq bigint NOT NULL,
            message_id text NOT NULL,
            at bigint NOT NULL,
            words tsvector NOT NULL,
            PRIMARY KEY (session_id, seq))"""],  # then _index_messages, which makes its GIN index
}

# A message's search index row (its words: a tsvector literal, made by _tsvector).
_INSERT_WORDS = ("INSERT INTO {s}.message_words (session_id, seq, message_id, at, words) "
                 "VALUES (%s, %s, %s, %s, %s::tsvector)")
# PostgreSQL's limits on a tsvector: a lexeme's UTF-8 bytes, a position, positions a lexeme.
_MAX_LEXEME_BYTES, _MAX_POSITION, _MAX_POSITIONS = 2046, 16383, 256

_LOAD = """
    SELECT 0, generation, NULL FROM {s}.sessions WHERE id = %(sid)s
    UNION ALL SELECT 1, seq, record FROM {s}.branch_events WHERE session_id = %(sid)s AND seq >= %(events)s
    UNION ALL SELECT 2, seq, record FROM {s}.messages WHERE session_id = %(sid)s AND seq >= %(messages)s
    ORDER BY 1, 2
"""

_BACK_ROWS = 256  # message rows a part of a read of a path's end (Storage.load_backwards) takes
_INDEX_LOCK = 0x5E5510  # advisory lock key (with the schema's hash) serializing index changes
_abandoned: list[Any] = []  # connections a forked child inherited: never used, never closed


class ConnectionPool(Protocol):
    """What :class:`PostgresStorage` needs of a pool (``psycopg_pool.ConnectionPool`` fits)."""

    def getconn(self) -> psycopg.Connection[Any]: ...

    def putconn(self, conn: psycopg.Connection[Any]) -> None: ...


_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


def _storage_error(e: psycopg.Error, action: str) -> StorageError:
    """The store's error for a psycopg one: the server's full disk is ``ENOSPC``; a
    lost connection says so (``ECONNRESET``); anything else is ``EIO``."""
    if getattr(e, "sqlstate", None) == _DISK_FULL:
        return StorageError(errno.ENOSPC, f"could not {action}: the server's disk is full ({str(e).strip()})")
    lost = isinstance(e, psycopg.OperationalError)
    return StorageError(errno.ECONNRESET if lost else errno.EIO,
                        f"could not {action}: {'connection lost: ' if lost else ''}{str(e).strip()}")


def _quoted(word: str) -> str:
    """A word as a lexeme of a tsvector or tsquery literal: as it is, quoted."""
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def _tsvector(words: str) -> str:
    """The ``tsvector`` literal of :func:`record_words`: each word a lexeme as it is,
    with its positions (see "Schema" for PostgreSQL's limits)."""
    positions: dict[str, list[int]] = {}
    for n, word in enumerate(words.split(), 1):
        at = positions.setdefault(word, [])
        if len(at) < _MAX_POSITIONS and (not at or at[-1] < _MAX_POSITION):
            at.append(min(n, _MAX_POSITION))
    return " ".join(f"{_quoted(word)}:{','.join(map(str, at))}" for word, at in positions.items()
                    if len(word.encode("utf-8")) <= _MAX_LEXEME_BYTES)


def _words_of(record: Mapping[str, Any]) -> tuple[int, str]:
    """What the search index keeps of a message record: its timestamp (0 when it has
    none that fits a bigint) and the :func:`_tsvector` of :func:`record_words`."""
    at = record.get("timestamp")
    return (at if type(at) is int and -(1 << 63) <= at < (1 << 63) else 0), _tsvector(record_words(record))


def _indexed(line: str | bytes) -> tuple[int, str] | None:
    """:func:`_words_of` the record of a line; ``None`` for a line that is not a JSON
    object (it is not indexed)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return _words_of(record) if isinstance(record, dict) else None


def _key_range(prefix: str) -> tuple[str, str | None] | None:
    """:func:`key_range` of ``prefix``, under the "C" collation of the key column;
    ``None`` also for a prefix holding NUL (no PostgreSQL text can)."""
    return None if "\x00" in prefix else key_range(prefix)


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
        if conninfo is not None and not isinstance(conninfo, str):
            raise InvalidInput(f"conninfo must be a str, not {type(conninfo).__name__}")
        if not isinstance(schema, str) or not schema or not schema.replace("_", "").isalnum() or not schema.isascii():
            raise InvalidInput(f"schema must be ASCII letters, digits and underscores, not {schema!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput("timeout must be a number >= 0")
        self.conninfo, self.schema, self.timeout = conninfo, schema, timeout
        self._connection, self._pool = connection, pool
        self._pid = os.getpid()
        self._durable = True
        self._reset()
        s = sql.Identifier(schema)
        self._sql = {name: sql.SQL(text).format(s=s) for name, text in {
            "load": _LOAD,
            "load_back": "SELECT x.generation, m.seq, m.record FROM {s}.messages m JOIN {s}.sessions x "
                         "ON x.id = m.session_id WHERE m.session_id = %s AND m.seq < %s ORDER BY m.seq DESC LIMIT %s",
            "lock_session": "SELECT 1 FROM {s}.sessions WHERE id = %s FOR UPDATE",
            "insert_message": "INSERT INTO {s}.messages (session_id, seq, id, record) VALUES (%s, %s, %s, %s)",
            "insert_words": _INSERT_WORDS,
            # A message and its search index row: one statement, one round trip.
            "insert_message_words": "WITH m AS (INSERT INTO {s}.messages (session_id, seq, id, record) "
                                    "VALUES (%(sid)s, %(seq)s, %(id)s, %(record)s)) "
                                    "INSERT INTO {s}.message_words (session_id, seq, message_id, at, words) "
                                    "VALUES (%(sid)s, %(seq)s, %(id)s, %(at)s, %(words)s::tsvector)",
            "insert_event": "INSERT INTO {s}.branch_events (session_id, seq, record) VALUES (%s, %s, %s)",
            "read_lease": "SELECT record FROM {s}.leases WHERE session_id = %s",
            "write_lease": "INSERT INTO {s}.leases (session_id, record) VALUES (%s, %s) "
                           "ON CONFLICT (session_id) DO UPDATE SET record = excluded.record",
            "lookup": "SELECT id FROM {s}.sessions WHERE key = %s",
            "info": "SELECT id, key, created_at, forked_from FROM {s}.sessions WHERE id = %s",
            "mark": "SELECT pg_advisory_lock_shared(hashtext(%s), hashtext(%s))",
            "unmark": "SELECT pg_advisory_unlock_shared(hashtext(%s), hashtext(%s))",
            "probe": "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))",
            "unprobe": "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))",
        }.items()}
        _children.add(self)

    def _reset(self) -> None:
        self._shared_lock = threading.RLock()  # a single given connection: one thread at a time
        self._own: list[psycopg.Connection[Any]] = []  # idle connections opened from conninfo
        self._own_lock = threading.Lock()
        self._local = threading.local()  # .conn: this thread's writing-scope connection
        self._generations: dict[str, int] = {}
        self._configured: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._life: psycopg.Connection[Any] | None = None  # holds this process's proofs of life
        self._life_lock = threading.Lock()
        self._holds: dict[str, int] = {}

    def after_fork(self) -> None:
        """A child never uses or closes its parent's connections (closing one would end
        the parent's session on the server); it opens its own from the DSN."""
        _abandoned.extend(self._own)
        if self._life is not None:
            _abandoned.append(self._life)
        self._reset()

    def forget(self, session_id: str) -> None:
        self._generations.pop(session_id, None)

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

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo or "", connect_timeout=max(1, int(self.timeout)))

    def _checkout(self) -> psycopg.Connection[Any]:
        if os.getpid() != self._pid and self.conninfo is None:
            raise StorageError(errno.EINVAL, "a psycopg connection or pool made before fork() cannot be used in "
                                             "the child process: give PostgresStorage a conninfo, or make the "
                                             "pool after the fork")
        if self._connection is not None:
            self._shared_lock.acquire()
            return self._connection
        if self._pool is not None:
            conn = self._pool.getconn()
        else:
            with self._own_lock:
                idle = self._own.pop() if self._own else None
            conn = idle if idle is not None else self._connect()
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
        self._pid = os.getpid() if self.conninfo is not None else self._pid
        self._durable = durable
        s = sql.Identifier(self.schema)
        with self._using("open the database") as conn:
            if self._schema_version(conn) == SCHEMA_VERSION:
                return
        with self._transaction("create the schema") as conn:
            self._lock_index(conn)  # concurrent first opens create the schema once
            version = self._schema_version(conn)
            if version == 0:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=s))
                for statement in _SCHEMA:
                    conn.execute(sql.SQL(statement).format(s=s))
                conn.execute(sql.SQL("INSERT INTO {s}.meta VALUES ('schema_version', '1')").format(s=s))
                version = 1
            if version > SCHEMA_VERSION:
                raise StorageError(errno.EPROTO, f"schema {self.schema} has version {version}; this "
                                                 f"session_store_postgres reads up to {SCHEMA_VERSION}: upgrade it")
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    conn.execute(sql.SQL(statement).format(s=s))
                if version == 2:
                    self._index_messages(conn)
                version += 1
                conn.execute(sql.SQL("UPDATE {s}.meta SET value = %s WHERE name = 'schema_version'").format(s=s),
                             (str(version),))

    def _index_messages(self, conn: psycopg.Connection[Any]) -> None:
        """Migration 2 -> 3, in its transaction: the search index of every message row
        there is (a thousand rows at a time, in primary key order), then its GIN index."""
        s = sql.Identifier(self.schema)
        read = sql.SQL("SELECT session_id, seq, id, record FROM {s}.messages WHERE (session_id, seq) > (%s, %s) "
                       "ORDER BY session_id, seq LIMIT 1000").format(s=s)
        after: tuple[str, int] = ("", -1)
        while rows := conn.execute(read, after).fetchall():
            with conn.cursor() as cur:
                cur.executemany(self._sql["insert_words"], [(sid, seq, mid, *found) for sid, seq, mid, record in rows
                                                            if (found := _indexed(record)) is not None])
            after = (rows[-1][0], rows[-1][1])
        conn.execute(sql.SQL("CREATE INDEX message_words_search ON {s}.message_words USING gin (words)").format(s=s))

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int:
        # A query of pg_class, not to_regclass(): the latter answers from the backend's
        # catalog cache, which a wait for an advisory lock does not refresh (so a second
        # first-open saw no table that the first had just committed).
        exists = conn.execute("SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                              "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'meta'",
                              (self.schema,)).fetchone()
        if exists is None:
            return 0
        row = conn.execute(sql.SQL("SELECT value FROM {s}.meta WHERE name = 'schema_version'").format(
            s=sql.Identifier(self.schema))).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._generations = {}  # what it knew of each session read: kept, it would pin the freed memory around it
        with self._own_lock:
            conns, self._own = self._own, []
        with self._life_lock:
            life, self._life, self._holds = self._life, None, {}
        for conn in [*conns, *([life] if life is not None else [])]:
            if life is not None and conn is life and self._pool is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock_all()")
                self._pool.putconn(conn)
                continue
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- the index -------------------------------------------------------------------

    def lookup(self, key: str) -> str | None:
        with self._using("read the index") as conn:
            row = conn.execute(self._sql["lookup"], (key,)).fetchone()
        return str(row[0]) if row else None

    def session_info(self, session_id: str) -> IndexEntry | None:
        with self._using("read the index") as conn:
            row = conn.execute(self._sql["info"], (session_id,)).fetchone()
        return _entry(row) if row else None

    def list_sessions(self) -> list[IndexEntry]:
        s = sql.Identifier(self.schema)
        with self._using("list the sessions") as conn:
            rows = conn.execute(sql.SQL("SELECT id, key, created_at, forked_from FROM {s}.sessions "
                                        "ORDER BY created_at, id").format(s=s)).fetchall()
        return [_entry(row) for row in rows]

    def create_session(self, key: str, session_id: str, created_at: int, *,
                       messages: Sequence[bytes] = (), events: Sequence[bytes] = (),
                       forked_from: tuple[str, str | None] | None = None) -> str:
        s = sql.Identifier(self.schema)
        with self._transaction("create a session") as conn:  # one transaction: whole or nothing
            self._lock_index(conn)
            row = conn.execute(self._sql["lookup"], (key,)).fetchone()
            if row:
                return str(row[0])
            conn.execute(sql.SQL("INSERT INTO {s}.sessions (id, key, created_at, forked_from) "
                                 "VALUES (%s, %s, %s, %s)").format(s=s),
                         (session_id, key, created_at, json.dumps(list(forked_from)) if forked_from else None))
            conn.execute(sql.SQL("INSERT INTO {s}.index_log (op, session_id, key, created_at) "
                                 "VALUES ('create', %s, %s, %s)").format(s=s), (session_id, key, created_at))
            with conn.cursor() as cur:
                if messages:
                    records = [json.loads(line) for line in messages]
                    cur.executemany(self._sql["insert_message"],
                                    [(session_id, seq, record["id"], line[:-1].decode())
                                     for seq, (line, record) in enumerate(zip(messages, records, strict=True))])
                    cur.executemany(self._sql["insert_words"], [(session_id, seq, record["id"], *_words_of(record))
                                                                for seq, record in enumerate(records)])
                if events:
                    cur.executemany(self._sql["insert_event"],
                                    [(session_id, seq, line[:-1].decode()) for seq, line in enumerate(events)])
        return session_id

    def delete_session(self, session_id: str, at: int, *, check: Callable[[], None] | None = None) -> None:
        s = sql.Identifier(self.schema)
        with self._transaction("delete a session") as conn:
            self._lock_index(conn)
            if conn.execute(self._sql["lock_session"], (session_id,)).fetchone() is None:
                raise SessionNotFound(session_id)
            if check is not None:  # a lease check, with the session's row locked as writing() locks it,
                self._local.conn = conn  # read in this transaction: a second checkout could wait for this one
                try:
                    check()
                finally:
                    self._local.conn = None
            for table in ("messages", "message_words", "branch_events", "leases", "quarantine", "tallies"):
                conn.execute(sql.SQL("DELETE FROM {s}.{t} WHERE session_id = %s").format(s=s, t=sql.Identifier(table)),
                             (session_id,))
            conn.execute(sql.SQL("DELETE FROM {s}.sessions WHERE id = %s").format(s=s), (session_id,))
            conn.execute(sql.SQL("INSERT INTO {s}.index_log (op, session_id, created_at) "
                                 "VALUES ('delete', %s, %s)").format(s=s), (session_id, at))
        self._generations.pop(session_id, None)

    # -- finding sessions and messages ------------------------------------------------------

    def find_sessions(self, key_prefix: str) -> list[IndexEntry]:
        """A range of the key column's unique index (``low <= key < high`` under its
        "C" collation, see :func:`_key_range`): O(log sessions + matches). Not LIKE,
        which reads ``%``, ``_`` and ``\\``, and whose prefix search needs an index
        of its own under another collation. In key order."""
        bounds = _key_range(key_prefix)
        if bounds is None:
            return []
        low, high = bounds
        query = sql.SQL("SELECT id, key, created_at, forked_from FROM {s}.sessions WHERE key >= %s{high} ORDER BY key"
                        ).format(s=sql.Identifier(self.schema),
                                 high=sql.SQL(" AND key < %s" if high is not None else ""))
        with self._using("find sessions") as conn:
            rows = conn.execute(query, (low,) if high is None else (low, high)).fetchall()
        return [_entry(row) for row in rows if row[1].startswith(key_prefix)]

    def session_bytes(self, session_id: str) -> int | None:
        """The UTF-8 bytes of the session's message and branch event rows."""
        with self._using("measure a session") as conn:
            row = conn.execute(sql.SQL(
                "SELECT (SELECT coalesce(sum(octet_length(record)), 0) FROM {s}.messages WHERE session_id = %(sid)s)"
                " + (SELECT coalesce(sum(octet_length(record)), 0) FROM {s}.branch_events WHERE session_id = %(sid)s)"
                " FROM {s}.sessions WHERE id = %(sid)s").format(s=sql.Identifier(self.schema)),
                {"sid": session_id}).fetchone()
        return None if row is None else int(row[0])

    def search_messages(self, words: Sequence[str], key_prefix: str, limit: int,
                        offset: int) -> list[tuple[str, str]]:
        """The ``message_words`` index (see "Schema"), joined to the sessions whose
        key is in :func:`_key_range` of the prefix before the limit applies: the
        words, each a quoted lexeme of a ``tsquery`` passed as a parameter (never
        query syntax), must all be in a message's ``tsvector`` (its GIN index); the
        best ``ts_rank`` first, then the newest message (its timestamp). A word too
        long for a lexeme is left out of the query (its messages are among those
        found). No words: every message of those sessions, the newest first."""
        found = query_words(words)
        bounds = _key_range(key_prefix)
        if found is None or bounds is None or limit <= 0:
            return []
        low, high = bounds
        kept = [word for word in found if len(word.encode("utf-8")) <= _MAX_LEXEME_BYTES]
        query = sql.SQL(
            "SELECT w.session_id, w.message_id FROM {s}.message_words w JOIN {s}.sessions x ON x.id = w.session_id "
            "WHERE x.key >= %(low)s{high}{match} ORDER BY {rank}w.at DESC, w.seq DESC, w.session_id "
            "LIMIT %(limit)s OFFSET %(offset)s"
        ).format(s=sql.Identifier(self.schema), high=sql.SQL(" AND x.key < %(high)s" if high is not None else ""),
                 match=sql.SQL(" AND w.words @@ %(query)s::tsquery" if kept else ""),
                 rank=sql.SQL("ts_rank(w.words, %(query)s::tsquery) DESC, " if kept else ""))
        with self._using("search messages") as conn:
            rows = conn.execute(query, {"low": low, "high": high, "query": " & ".join(map(_quoted, kept)),
                                        "limit": limit, "offset": max(0, offset)}).fetchall()
        return [(str(sid), str(mid)) for sid, mid in rows]

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
            if position != (0, 0) and self._generations.get(session_id, generation) != generation:
                rows = conn.execute(query, {"sid": session_id, "events": 0, "messages": 0}).fetchall()
                if not rows or rows[0][0] != 0:
                    raise SessionNotFound(session_id)
                restart, generation = True, rows[0][1]
            self._generations[session_id] = generation
        if len(rows) == 1 and not restart:
            return None
        return Records.from_rows(session_id, position, rows[1:], events_label=f"{self.schema}.branch_events",
                                 messages_label=f"{self.schema}.messages", restart=restart)

    def load_backwards(self, session_id: str, position: Position) -> Iterator[Records]:
        def fetch(end: int) -> list[Any]:  # a round trip a part
            with self._using("read a session") as conn:
                return conn.execute(self._sql["load_back"], (session_id, end, _BACK_ROWS)).fetchall()
        return Records.parts_before(session_id, position[1], fetch, self._generations.get(session_id),
                                    events_label=f"{self.schema}.branch_events",
                                    messages_label=f"{self.schema}.messages")

    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        found = _indexed(line)
        with self._using("append a message") as conn:
            if found is None:
                conn.execute(self._sql["insert_message"], (session_id, position[1], message_id, line[:-1].decode()))
            else:
                conn.execute(self._sql["insert_message_words"], {
                    "sid": session_id, "seq": position[1], "id": message_id, "record": line[:-1].decode(),
                    "at": found[0], "words": found[1]})
        return (position[0], position[1] + 1)

    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        with self._using("append a branch event") as conn:
            conn.execute(self._sql["insert_event"], (session_id, position[0], line[:-1].decode()))
        return (position[0] + 1, position[1])

    # -- counts ------------------------------------------------------------------------------

    def read_tally(self, session_id: str) -> tuple[Position, dict[str, Any]] | None:
        s = sql.Identifier(self.schema)
        with self._using("read a tally") as conn:
            row = conn.execute(sql.SQL("SELECT t.events, t.messages, t.record, t.generation FROM {s}.tallies t "
                                       "JOIN {s}.sessions x ON x.id = t.session_id AND x.generation = t.generation "
                                       "WHERE t.session_id = %s").format(s=s), (session_id,)).fetchone()
        if row is None:
            return None
        try:
            tally = json.loads(row[2])
        except ValueError:
            return None
        if not isinstance(tally, dict):
            return None
        self._generations[session_id] = row[3]  # a load reading on from it sees a repair since as a restart
        return (int(row[0]), int(row[1])), tally

    def write_tally(self, session_id: str, position: Position, tally: Mapping[str, Any]) -> None:
        s = sql.Identifier(self.schema)
        with self._using("save a tally") as conn:
            # Of the generation the tally's records were read from: a store that read
            # them before a repair elsewhere saves nothing the repaired rows would believe.
            conn.execute(sql.SQL("INSERT INTO {s}.tallies SELECT id, generation, %s, %s, %s FROM {s}.sessions "
                                 "WHERE id = %s AND generation = %s ON CONFLICT (session_id) DO UPDATE SET "
                                 "generation = excluded.generation, events = excluded.events, "
                                 "messages = excluded.messages, record = excluded.record").format(s=s),
                         (position[0], position[1], json.dumps(dict(tally)), session_id,
                          self._generations.get(session_id, -1)))

    # -- leases ---------------------------------------------------------------------------

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        with self._using("read a lease") as conn:
            row = conn.execute(self._sql["read_lease"], (session_id,)).fetchone()
        if row is None:
            return None
        try:
            lease = json.loads(row[0])
        except (ValueError, RecursionError):
            return {"corrupt": True}
        return lease if isinstance(lease, dict) else {"corrupt": True}

    def write_lease(self, session_id: str, lease: Mapping[str, Any], *, durable: bool) -> None:
        # Inside writing(): committed with its transaction (synchronous_commit=on when durable).
        with self._using("write a lease") as conn:
            conn.execute(self._sql["write_lease"], (session_id, json.dumps(dict(lease), separators=(",", ":"))))

    def peek_lease(self, session_id: str) -> dict[str, Any] | None:
        return self.read_lease(session_id)

    def hold_lease(self, session_id: str) -> None:
        if self._connection is not None:
            return  # one given connection: no connection of our own to keep a lock on
        with self._life_lock:
            if self._holds.get(session_id):
                self._holds[session_id] += 1
                return
            try:
                if self._life is None or self._life.closed or self._life.broken:
                    self._life = self._pool.getconn() if self._pool is not None else self._connect()
                    self._life.autocommit = True
                self._life.execute(self._sql["mark"], (self.schema + ":lease", session_id))
            except psycopg.Error as e:
                self._life = None
                self._holds = {}
                raise _storage_error(e, f"keep the lease's proof of life ({self.location})") from e
            self._holds[session_id] = 1

    def drop_lease(self, session_id: str) -> None:
        with self._life_lock:
            count = self._holds.get(session_id, 0) - 1
            if count > 0:
                self._holds[session_id] = count
                return
            self._holds.pop(session_id, None)
            if self._life is not None and count == 0:
                with contextlib.suppress(psycopg.Error):
                    self._life.execute(self._sql["unmark"], (self.schema + ":lease", session_id))

    def holder_gone(self, session_id: str, lease: Mapping[str, Any]) -> bool:
        if self._connection is not None:
            return False
        with self._life_lock:
            if self._holds.get(session_id):
                return False  # we hold a mark: the probe would only find our own
        try:
            with self._using("test a lease holder") as conn:
                row = conn.execute(self._sql["probe"], (self.schema + ":lease", session_id)).fetchone()
                if row and row[0]:
                    conn.execute(self._sql["unprobe"], (self.schema + ":lease", session_id))
                    return True
        except StorageError:
            return False
        return False

    # -- repair -----------------------------------------------------------------------------

    def quarantine(self, session_id: str, problems: list[Problem], placeholders: Mapping[int, bytes]) -> list[str]:
        """Rows the store cannot use are copied to the ``quarantine`` table (never
        deleted); a message row is then replaced by its placeholder, an event row removed."""
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
                    if table == "messages":  # its search index row goes, or is the placeholder's
                        conn.execute(sql.SQL("DELETE FROM {s}.message_words WHERE session_id = %s AND seq = %s"
                                             ).format(s=s), (session_id, seq))
                    if table == "messages" and seq in placeholders:
                        text = placeholders[seq][:-1].decode()
                        record = json.loads(text)
                        conn.execute(sql.SQL("UPDATE {s}.messages SET record = %s, id = %s "
                                             "WHERE session_id = %s AND seq = %s").format(s=s),
                                     (text, record["id"], session_id, seq))
                        conn.execute(self._sql["insert_words"], (session_id, seq, record["id"], *_words_of(record)))
                    else:
                        conn.execute(sql.SQL("DELETE FROM {s}.{t} WHERE session_id = %s AND seq = %s"
                                             ).format(s=s, t=t), (session_id, seq))
                if seqs:
                    fixed.append(f"{label}: moved {len(seqs)} unusable record(s) of {session_id} to quarantine")
            if fixed:
                conn.execute(sql.SQL("UPDATE {s}.sessions SET generation = generation + 1 WHERE id = %s").format(s=s),
                             (session_id,))
        return fixed


class _Children:
    """Storages to reset in a child process after ``fork()`` (held weakly)."""

    def __init__(self) -> None:
        self._storages: weakref.WeakSet[PostgresStorage] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._run)

    def add(self, storage: PostgresStorage) -> None:
        self._storages.add(storage)

    def _run(self) -> None:
        for storage in list(self._storages):
            storage.after_fork()


_children = _Children()


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
