"""Storage: the contract between the store and where sessions are kept.

:class:`Storage` is the abstract backend (a key index, records in order, durably, a
lease record, and exclusion of writers); :class:`Records` is what a load finds after a
:data:`Position`; :class:`IndexEntry` is a live session as the index knows it.
Backends: :class:`JsonlStorage` here, SQLite and PostgreSQL in ``backends/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .log_format import _checked_message, _decode_record, _scan_json
from .records import Problem

#
# The store keeps sessions' trees in memory (a bounded cache), validates every write
# and derives branch heads; a Storage keeps the key index, records in order, durably,
# and the lease record, and excludes writers. JsonlStorage (files on a FileSystem,
# below) is one Storage; the optional backends (session_store_sqlite,
# session_store_postgres) are others. The conformance kit in
# session_store_conformance.py runs the same state machine over every one of them.

#: Where a reader stands in a session's records: ``(branch events, messages)`` read
#: so far, in units the storage chooses (bytes for JSONL, rows for SQL). Start: (0, 0).
Position = tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntry:
    """A live session as the key index knows it: its id, key and creation time (ms),
    and what it was forked from (:meth:`SessionStore.fork_session`)."""

    session_id: str
    key: str
    created_at: int
    forked_from: tuple[str, str | None] | None = None


@dataclasses.dataclass(slots=True, kw_only=True)
class Records:
    """What :meth:`Storage.load` found after a position.

    ``events`` and ``messages`` are ``(where, record)`` pairs in write order, where
    ``where`` locates the record for reports (a byte offset, a row number) and
    ``record`` is the decoded JSON object. A message record that cannot be decoded
    is still there, as a *placeholder* (type ``damaged``, made by
    :func:`_damaged_record`: its id and parent when they can be read, so the tree
    and the records after it stay whole), and it is reported in ``problems``.
    ``restart``: the storage was rewritten (a repair), so the reader must drop what
    it has and take these records from the start.
    """

    position: Position
    events: list[tuple[int, dict[str, Any]]]
    messages: list[tuple[int, dict[str, Any]]]
    events_label: str
    messages_label: str
    restart: bool = False
    problems: list[Problem] = dataclasses.field(default_factory=list)
    nbytes: int = 0  # bytes of message records read (what the store's cache budget counts)

    @classmethod
    def from_rows(cls, session_id: str, position: Position, rows: list[tuple[int, int, str]], *,
                  events_label: str, messages_label: str, restart: bool = False) -> Records:
        """:meth:`from_tables` of rows ``(table, seq, text)`` read by one statement
        (table 1: branch events, 2: messages), each table's rows in ``seq`` order."""
        return cls.from_tables(session_id, position, [(seq, text) for table, seq, text in rows if table == 1],
                               [(seq, text) for table, seq, text in rows if table != 1],
                               events_label=events_label, messages_label=messages_label, restart=restart)

    @classmethod
    def from_tables(cls, session_id: str, position: Position, events: Iterable[tuple[int, str]],
                    messages: Iterable[tuple[int, str]], *, events_label: str, messages_label: str,
                    restart: bool = False) -> Records:
        """Decode records kept as JSON text rows, as a SQL storage reads them after
        ``position``: ``(seq, text)`` pairs of branch events and of messages, each in
        ``seq`` order.

        The new position is one past the last ``seq`` of each table; a row that is not
        a JSON object is reported in ``problems`` (at its ``seq``): an event is skipped,
        a message becomes a placeholder.
        """
        epos, mpos = (0, 0) if restart else position
        found = cls(position=position, events=[], messages=[], events_label=events_label,
                    messages_label=messages_label, restart=restart)
        scan, nbytes = _scan_json, 0
        for rows, label, out, message in ((events, events_label, found.events, False),
                                          (messages, messages_label, found.messages, True)):
            seq = -1
            for seq, text in rows:
                nbytes += len(text)
                try:  # the common row, read by the scanner exactly as json.loads reads it (see _parse_lines)
                    record, stop = scan(text, 0)
                    if stop == len(text) and type(record) is dict:
                        out.append((seq, _checked_message(text.encode("utf-8", "surrogatepass"), seq, record,
                                                          label, session_id, found.problems) if message else record))
                        continue
                except (ValueError, StopIteration, RecursionError):
                    pass
                raw = text.encode("utf-8", "surrogatepass")
                record = _decode_record(raw, seq, label, session_id, found.problems, message=message)
                if message and record is not None:
                    record = _checked_message(raw, seq, record, label, session_id, found.problems)
                if record is not None:
                    out.append((seq, record))
            if seq >= 0 and message:
                mpos = seq + 1
            elif seq >= 0:
                epos = seq + 1
        found.position, found.nbytes = (epos, mpos), nbytes
        return found

    @classmethod
    def parts_before(cls, session_id: str, end: int, fetch: Callable[[int], Sequence[tuple[int, int, str]]],
                     generation: int | None, *, events_label: str, messages_label: str) -> Iterator[Records]:
        """:meth:`Storage.load_backwards` of a SQL storage: ``fetch(end)`` gives a part
        of the message rows before seq ``end``, the newest first, as ``(generation, seq,
        text)``; each part is decoded as :meth:`from_tables` decodes rows. A part of
        another ``generation`` than the one the storage last loaded is a ``restart``."""
        while end > 0:
            rows = fetch(end)
            if not rows:
                return
            if rows[0][0] != generation:
                yield cls(position=(0, end), events=[], messages=[], events_label=events_label,
                          messages_label=messages_label, restart=True)
                return
            end = rows[-1][1]
            yield cls.from_tables(session_id, (0, end), (), [(seq, text) for _, seq, text in reversed(rows)],
                                  events_label=events_label, messages_label=messages_label)


class Storage(ABC):
    """Where a :class:`SessionStore` keeps sessions: a key index, records, leases.

    Records are JSON objects encoded by the store as one UTF-8 line each
    (``b'{...}\\n'``): *messages* (format in "Log format") and *branch events*
    (``create``/``switch``/``move``/``delete``/``rename``, each naming ``seq``, the
    number of message records before it). Branch heads are saved as these events and
    loaded by replaying them in ``seq`` order, so an append is one record and a head
    never needs a read-modify-write. The semantics every implementation keeps:

    - **The index** maps each key to at most one live session, across every store
      on the storage: :meth:`create_session` is atomic and exclusive, and a session
      it creates with records (an import, a fork) appears whole or not at all.
      :meth:`lookup`, :meth:`session_info` and :meth:`list_sessions` read it without
      loading any session; :meth:`delete_session` is atomic: the session is fully
      there or fully gone, whatever fails or crashes.
    - **Writers are exclusive.** :meth:`writing` holds a session against every
      other writer, in every thread and process (and machine, where the storage is
      shared); it raises :class:`SessionNotFound` when the session is gone, also when
      it went while the writer waited. Inside it the store calls :meth:`load` with
      ``writer=True`` (to catch up), then :meth:`append_message` /
      :meth:`append_event` / the lease methods. Leaving it normally makes the writes
      visible (a transactional storage commits there); leaving it by an exception
      may discard them.
    - **Appends are ordered and atomic per record.** A failed append raises
      :class:`StorageError` and leaves no partial record visible to a reader.
    - **Durability.** With ``open(durable=True)`` every record is durable once
      :meth:`sync` returns after it, by a sync that started after it was written; a
      sync that fails never lets a later one acknowledge the records it covered.
    - **Positions only grow**, unless :meth:`load` says ``restart``: a storage that
      rewrites a session (a repair) makes every reader start again.
    - **Opening reads and writes nothing** the store did not ask for; the first
      write creates what is needed.
    - **After fork()**, :meth:`after_fork` runs in the child: nothing the parent
      owns (descriptors, locks, connections) is used or closed by the child.

    The store serializes, within one process, the writer calls of one session;
    reads may run concurrently with a writer. I/O failures raise
    :class:`StorageError` (``OSError`` is translated by the store). Methods with a
    default are optional.
    """

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives (a directory, a database file, a DSN without secrets)."""

    def open(self, *, durable: bool) -> None:  # noqa: B027 - optional hook with a no-op default
        """Prepare to be used (connect; check a schema version). Writes nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release connections and descriptors."""

    def after_fork(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """In a child process after ``fork()``: forget what the parent owns."""

    def forget(self, session_id: str) -> None:  # noqa: B027 - optional hook with a no-op default
        """The store dropped its cached state of this session: per-session caches may go."""

    @property
    def local_writes(self) -> bool:
        """Whether a :meth:`writing` scope runs only this process's code and short local
        system calls (no wait on a server): then a store runs such scopes one at a
        time, also for different sessions. They hold the interpreter's lock but at
        those system calls, where threads writing at once would hand it over at every
        one (8 threads appending to 8 sessions: half one thread's rate); queued on a
        lock instead, they do not, and the syncs after the scopes still overlap. A
        scope that waits for another process's lock on its session (files), or syncs
        inside (a new range of lease tokens, a repair), keeps the others of its process
        waiting meanwhile: rare, and as short as another process's scope or one sync.
        ``False`` by default (a database's scope waits on its server)."""
        return False

    @property
    def shared_across_processes(self) -> bool:
        """Whether other processes may use the same data."""
        return True

    @property
    def sync_takes_back(self) -> bool:
        """Whether a failed :meth:`sync` takes back the records it covered (files cut
        them off), rather than leaving them, unacknowledged, and refusing writes until
        the storage is opened again (a database whose commit others may have read).
        The conformance kit injects failed syncs only into a storage that takes back:
        the other kind is tested with its own failing ``fsync``."""
        return True

    # -- the key index ----------------------------------------------------------------

    @abstractmethod
    def lookup(self, key: str) -> str | None:
        """The live session of ``key``, or ``None``. Never loads a session."""

    @abstractmethod
    def session_info(self, session_id: str) -> IndexEntry | None:
        """The live session ``session_id`` (its key and creation time), or ``None``."""

    @abstractmethod
    def list_sessions(self) -> list[IndexEntry]:
        """Every live session, oldest first."""

    @abstractmethod
    def create_session(self, key: str, session_id: str, created_at: int, *,
                       messages: Sequence[bytes] = (), events: Sequence[bytes] = (),
                       forked_from: tuple[str, str | None] | None = None) -> str:
        """Create session ``session_id`` for ``key`` with these records (and what it was
        forked from, kept in its :class:`IndexEntry`), unless ``key`` already has a live
        session; returns the key's session id either way.

        Atomic and exclusive across every store on the storage, and durable (with
        ``durable``) when it returns: a failure or a crash leaves no session that a
        reader can find, and a retry starts afresh.
        """

    @abstractmethod
    def delete_session(self, session_id: str, at: int, *, check: Callable[[], None] | None = None) -> None:
        """Delete the session, its records and lease: atomically, and durably.

        Holds the session as :meth:`writing` does, so no writer appends to a session
        that is going away. :class:`SessionNotFound` when it does not exist.
        ``check``, when given, is called while the session is held, before anything is
        deleted: the store's lease check (it reads the lease with :meth:`read_lease`).
        When it raises, nothing is deleted and its error propagates. The store passes
        it only when a lease is to be checked, so a storage written before it existed
        still deletes unleased sessions.
        """

    # -- finding sessions ------------------------------------------------------------

    def find_sessions(self, key_prefix: str) -> list[IndexEntry]:
        """Every live session whose key starts with ``key_prefix`` (``""``: every
        one), in any order, without loading a session. By default
        :meth:`list_sessions` filtered, O(sessions); a storage whose key index is
        ordered answers in O(matches)."""
        return [e for e in self.list_sessions() if e.key.startswith(key_prefix)]

    def session_bytes(self, session_id: str) -> int | None:
        """About what deleting the session frees: the bytes its records take;
        ``None`` (the default) when the storage cannot tell cheaply."""
        return None

    def search_messages(self, words: Sequence[str], key_prefix: str, limit: int,
                        offset: int) -> list[tuple[str, str]] | None:
        """Messages whose :func:`record_words` hold every one of ``words`` (each a
        lowercase word of :func:`search_words`), in live sessions whose key starts
        with ``key_prefix``: ``(session id, message id)`` pairs, best first, the
        first ``offset`` skipped, at most ``limit``. ``None`` (the default): this
        storage keeps no search index, and the store reads the sessions instead.

        A storage that keeps one indexes :func:`record_words` of every message record
        in the same atomic step that writes the record (an append, a creation with
        records, a repair's rewrite), and drops a session's entries with it. It may
        return a pair that no longer matches (the store checks each one against the
        message); it must not miss one that does. ``words`` are data, never the
        engine's query syntax.
        """
        return None

    # -- a session's records -------------------------------------------------------

    @abstractmethod
    def writing(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold the session exclusively for writing; see the class docstring."""

    @abstractmethod
    def load(self, session_id: str, position: Position, *, writer: bool = False) -> Records | None:
        """The records written after ``position``; ``None`` when there are none.

        A record being written by another writer may be missing; with ``writer``
        (inside :meth:`writing`) none can be, and a torn one is removed.
        :class:`SessionNotFound` when the session is gone.
        """

    def scan(self, session_id: str) -> Records | None:
        """Every record of the session, read afresh for :meth:`SessionStore.check` and
        :meth:`SessionStore.repair`: what :meth:`load` returns from ``(0, 0)``, except
        that it leaves alone whatever this storage remembers for its readers (where
        they read on from, and what vouches for it). By default, :meth:`load`."""
        return self.load(session_id, (0, 0))

    def load_parts(self, session_id: str, position: Position, *, writer: bool = False) -> Iterable[Records]:
        """What :meth:`load` returns, in parts, so that a reader never holds every
        decoded record of a long session at once: each part reads on from the one
        before (its ``position``); only the first may say ``restart``. By default one
        part, :meth:`load`'s (none when it finds nothing)."""
        found = self.load(session_id, position, writer=writer)
        return () if found is None else (found,)

    def load_backwards(self, session_id: str, position: Position) -> Iterable[Records] | None:
        """The message records written before ``position``, in parts, the newest part
        first (a part's records in write order); ``None`` (the default) when this
        storage cannot read backwards. What lets a read of a path's last messages skip
        loading the session (:meth:`SessionStore.get_linear_history` with ``limit``).
        A part with ``restart`` set says the storage was rewritten meanwhile: the
        reader must not trust what it read. :class:`SessionNotFound` when the session
        is gone."""
        return None

    @abstractmethod
    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        """Append a message record at ``position`` (the end); returns the new end."""

    def append_messages(self, session_id: str, position: Position, lines: Sequence[tuple[str, bytes]]) -> Position:
        """Append message records ``(message id, line)`` at ``position`` (the end), in
        order; returns the new end. They are one :meth:`SessionStore.append_many` chain
        (or the part of one between two branch events): no reader may ever see some of
        them without the rest, also after a crash part way. By default
        :meth:`append_message` for each, which is enough for a storage whose
        :meth:`writing` scope is atomic (a transaction); JsonlStorage writes them with
        one ``write()``, marked so that readers hold back an unfinished chain."""
        for message_id, line in lines:
            position = self.append_message(session_id, position, message_id, line)
        return position

    @abstractmethod
    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        """Append a branch event record at ``position`` (the end); returns the new end."""

    def sync(self, session_id: str) -> None:  # noqa: B027 - optional hook
        """Make every record this process wrote to the session durable (called after
        :meth:`writing`); :class:`StorageError` when that cannot be promised. The
        records that sync covered are then not part of the session any more where the
        storage can take them back (files: cut off); where it cannot (a database whose
        commit others may already have read) they were never acknowledged, and the
        storage refuses further writes until it is opened again."""

    def rollback(self, session_id: str, position: Position) -> None:  # noqa: B027 - optional hook
        """Inside :meth:`writing`, after a failed write: remove the records written
        after ``position`` (a storage that discards them when :meth:`writing` is left
        by an exception, as a transaction does, needs nothing here)."""

    # -- counts without loading a session ------------------------------------------------

    def read_tally(self, session_id: str) -> tuple[Position, dict[str, Any]] | None:
        """A saved tally of the session's records up to a position (see
        :meth:`write_tally`), if one is still valid; the store reads on from there."""
        return None

    def write_tally(self, session_id: str, position: Position, tally: Mapping[str, Any]) -> None:  # noqa: B027
        """Save the store's tally (counts and times) of the records up to ``position``
        (inside :meth:`writing`); a cache, so it need not be durable."""

    # -- leases (inside writing) -------------------------------------------------------

    @abstractmethod
    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        """The session's lease record as last written, or ``None``; a record that
        cannot be read back whole is returned as ``{"corrupt": True}``."""

    @abstractmethod
    def write_lease(self, session_id: str, lease: Mapping[str, Any], *, durable: bool) -> None:
        """Replace the session's lease record (its meaning is the store's: owner,
        count, fencing token, expiry, holder process, waiters). ``durable``: on disk
        when this returns (a new fencing token must never be issued twice)."""

    def peek_lease(self, session_id: str) -> dict[str, Any] | None:
        """The lease record read without holding the session (for waiters polling a
        held lease); ``None`` when that cannot be done cheaply (the store then tries
        to acquire)."""
        return None

    def hold_lease(self, session_id: str) -> None:  # noqa: B027 - optional: no proof of life
        """This process holds the session's lease: keep a proof of life that other
        processes can test with :meth:`holder_gone` (counted; see :meth:`drop_lease`)."""

    def drop_lease(self, session_id: str) -> None:  # noqa: B027 - optional
        """Undo one :meth:`hold_lease`."""

    def holder_gone(self, session_id: str, lease: Mapping[str, Any]) -> bool:
        """``True`` only on proof that no process holds the session's lease any more
        (its holder died); ``False`` when alive or unknown: the lease then ends only
        when it expires."""
        return False

    # -- check and repair ----------------------------------------------------------

    def check(self, sessions: Mapping[str, str], *, index: bool) -> list[Problem]:
        """Problems below the records (torn tails, missing files; the index too when
        ``index``) of ``sessions`` (id -> key). Changes nothing."""
        return []

    def quarantine(self, session_id: str, problems: list[Problem], placeholders: Mapping[int, bytes]) -> list[str]:
        """Inside :meth:`writing`: move the records ``problems`` point at (and torn
        tails) aside, never deleting them; a damaged message record is replaced by
        its placeholder from ``placeholders`` (by its ``where``), so that the records
        after it keep their place. Returns one sentence per change."""
        return []

    def repair_index(self) -> list[str]:
        """Bring the index in line with the sessions found and clear what is provably
        garbage (interrupted creations and deletions, temp files); one sentence per
        change."""
        return []
