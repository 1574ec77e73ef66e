"""A user's conversations, search and retention: the public :class:`SessionStore`.

The store's core (``store``) keeps sessions one at a time; this module adds what
works across them: :meth:`SessionStore.list_sessions` (a user's conversations,
newest first, with titles), :meth:`SessionStore.set_title`,
:meth:`SessionStore.search` (every message, reset history included), and
:meth:`SessionStore.prune` (retention), with the native export its archives are
written in (:meth:`SessionStore.export_session`, :meth:`SessionStore.restore_session`).
"""

from __future__ import annotations

import datetime
import heapq
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InvalidInput, InvalidKey, SessionLocked, SessionNotFound, _storage_errors
from .log_format import _dumps, _message_from_record
from .real_file_system import RealFileSystem
from .records import FORMAT_VERSION, Branch, Message, PruneReport, SearchHit, SessionMetadata
from .searching import _shown_title, _snippet, message_text, search_words
from .store import _StoreBase
from .tree import _Session
from .validation import _check_title

#
# Search reads what a storage's index (Storage.search_messages) finds, best first, and
# checks each hit against the message itself (an index may hold stale entries); a
# storage without an index (the JSONL files) is read session by session instead.
#
# Why the files have no index beside the logs. Both were measured on 10,000 sessions
# x 50 messages (benchmarks/catalog.py, numbers in benchmarks/CATALOG.md). The scan
# reads every message of the prefix's sessions through the store's cache, a substring
# test before the word test: 9-13 s for the whole store, ~23 ms for one user's 20
# sessions. A file of each message's words beside its log (a prototype) searched the
# whole store in 0.5-1.7 s, but it must be written, and fsync'd, with every append
# (1.45x a durable append there), kept by every process writing to the store, and agree
# with the log after every crash: every append pays for what only a search needs. So
# the files scan (a search is mostly one user's, a prefix), and a store that searches
# everything at that size belongs on SQLite or PostgreSQL, whose index is written in
# the append's own transaction.

_SEARCH_BATCH = 100  # index candidates read at a time
_MAX_LIMIT = 1000


def _check_prefix(key_prefix: object) -> str:
    if key_prefix is None:
        return ""
    if not isinstance(key_prefix, str):
        raise InvalidKey(f"a key prefix must be a string or None, not {type(key_prefix).__name__}")
    return key_prefix


def _check_count(name: str, value: object, *, none: bool, least: int) -> int | None:
    if value is None and none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < least or value > (
            _MAX_LIMIT if name == "limit" else 2**62):
        top = f" and at most {_MAX_LIMIT}" if name == "limit" else ""
        raise InvalidInput(f"{name} must be an integer >= {least}{top}{' or None' if none else ''}, not {value!r}")
    return value


def _duration_ms(value: object) -> int:
    """``older_than``: a :class:`datetime.timedelta` or seconds, not negative."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidInput(f"older_than must be a timedelta or seconds, not {type(value).__name__}")
    if not seconds >= 0 or seconds == float("inf"):
        raise InvalidInput(f"older_than must be a finite duration >= 0, not {value!r}")
    return round(seconds * 1000)


def _moment_ms(value: object) -> int:
    """``now``: a timezone-aware :class:`datetime.datetime` or seconds since the epoch."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise InvalidInput("now must be a timezone-aware datetime (or seconds since the epoch)")
        return round(value.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e13:
        return round(value * 1000)
    raise InvalidInput(f"now must be seconds since the epoch or an aware datetime, not {value!r}")


class _Written(Exception):
    """A session prune listed was written before it could be deleted."""


def _places(state: _Session) -> tuple[set[str], set[str]]:
    """The ids on the current branch's path after its last reset (what a context
    sends), and the history resets archived: the path before that reset, and the
    paths each reset on the way moved the head away from (a reset marker names that
    head as ``archived_head``; a kept copy names its original as ``reset_from``)."""
    head = state.head()
    path = [] if head is None else state.path_to(head)
    last = max((i for i, m in enumerate(path) if m.type == "reset"), default=-1)
    current = {m.id for m in path[last + 1:]}
    archived: set[str] = set()
    todo = [path[:last + 1], path[last + 1:]]
    while todo:
        for m in todo.pop():
            if m.id not in current:
                archived.add(m.id)
            for field in ("archived_head", "reset_from"):
                before = m.fields.get(field)
                if isinstance(before, str) and before in state.by_id and before not in archived | current:
                    todo.append(state.path_to(before))
    return current, archived - current


def _export_state(state: _Session) -> list[str]:
    """The native export of a session (caller holds its lock, caught up)."""
    header: dict[str, Any] = {"version": FORMAT_VERSION, "sessionId": state.session_id, "key": state.key,
                              "createdAt": state.created_at, "current": state.current}
    if state.title is not None:
        header["title"] = state.title
    if state.forked_from is not None:
        header["forkedFrom"] = list(state.forked_from)
    lines = [_dumps({"session": header})]
    lines += [_dumps({"message": m.to_record()}) for m in state.by_id.values()]
    lines += [_dumps({"branch": {"name": b.name, "headId": b.head_id, "createdAt": b.created_at,
                                 "updatedAt": b.updated_at}}) for b in state.branches.values()]
    return lines


class SessionStore(_StoreBase):
    """Sessions of message trees with branches, an index by key, and leases.

    ``SessionStore(storage=None, *, storage_dir=None, lock_timeout_ms=30000,
    auto_reset=None, durable=True, clock=None, require_lock=False,
    cache_bytes=64 MiB, cache_sessions=4096)``

    - ``storage``: a :class:`Storage` (e.g. ``session_store_sqlite.SqliteStorage``),
      or a :class:`FileSystem` to keep :class:`JsonlStorage` files on
      (:class:`RealFileSystem` by default, :class:`InMemoryFileSystem` for tests).
      ``storage_dir`` (default ``"./sessions"``) is the JSONL storage's directory.
      Two stores on the same storage see each other's writes (reads notice that a
      session grew and load only what is new). A :class:`Storage` object serves one
      store at a time.
    - ``durable``: ``append`` returns only once its record is on disk (fsync'd, or
      committed by a backend's durable commit), and so does every creation,
      deletion and new lease. ``False`` skips that (a machine crash may lose the last
      records; a process crash loses nothing the OS accepted).
    - ``lock_timeout_ms``: the lease length of :meth:`acquire_lock`.
    - ``auto_reset``: an :class:`AutoResetConfig`; appends onto the current head that
      would take the segment over a limit reset it first (see "Auto-reset").
    - ``clock``: a ``time.time``-like callable (seconds) for every timestamp and lease.
    - ``require_lock``: refuse an ``append`` naming no owner while another owner
      holds the session's lease (by default such appends are advisory, as in the seed).
    - ``cache_bytes``, ``cache_sessions``: the memory budget. Sessions are loaded on
      first use and kept in a least-recently-used cache of at most this many bytes
      of records (as stored, plus 300 bytes per message of a kept context: see
      :meth:`build_context`) and this many sessions; sessions being read or written,
      or whose lease this store holds, are never evicted (nor the one used last).
      A cached message takes about 1.5 times its record's bytes of memory for chat
      turns of a few hundred characters (the record's text plus ~300 bytes: the
      :class:`Message`, its id, time and place in the tree); a long session is
      decoded a few MiB at a time, so loading it needs little more.
      ``close()`` releases everything (with :func:`tune_process`, after a large cache
      on glibc, it also has the C allocator give the freed memory back). Opening a
      store loads nothing: the key index is read one key at a time.
    - ``index_save_delay_ms``: accepted for compatibility and ignored (the key index
      has had no checkpoint to save since format 2).

    Safe to share between threads, and usable across ``fork()``: a child process
    reopens what must be its own (descriptors, locks, connections) and never uses
    or releases what the parent holds. Methods open the store on first use;
    :meth:`init` does it explicitly. Use it as a context manager, or call :meth:`close`.
    """

    def __enter__(self) -> SessionStore:
        self.init()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- a user's conversations ---------------------------------------------------------

    def list_sessions(self, *, key_prefix: str | None = None, limit: int | None = None,
                      offset: int = 0) -> list[SessionMetadata]:
        """The sessions whose key starts with ``key_prefix`` (all, by default), newest
        first (by their last write: ``updated_at``), as :class:`SessionMetadata` with
        their titles; ``offset`` skipped, at most ``limit``.

        Never loads a session: each one's metadata comes from its saved tally (see
        :meth:`get_metadata`). The sessions of a prefix are found through the key
        index (O(matches) on the files, SQLite and PostgreSQL), so one user's
        conversations cost about the same in a store of 10 sessions or of 100,000;
        without a prefix, every session's metadata is read.
        """
        prefix = _check_prefix(key_prefix)
        most = _check_count("limit", limit, none=True, least=1)
        skip = _check_count("offset", offset, none=False, least=0)
        assert skip is not None
        self._ready()
        with _storage_errors("list the sessions"):
            entries = self._storage.find_sessions(prefix)
        found: list[SessionMetadata] = []
        for entry in entries:
            if entry.key.startswith(prefix):
                meta = self.get_metadata(entry.session_id)
                if meta is not None and meta.key.startswith(prefix):
                    found.append(meta)
        found.sort(key=lambda m: (m.updated_at, m.created_at, m.session_id), reverse=True)
        return found[skip:None if most is None else skip + most]

    def set_title(self, session_id: str, title: str | None, *, owner_id: str | None = None,
                  fencing_token: int | None = None) -> None:
        """Give the session a title (one line, 1 to 200 characters, kept verbatim),
        or with ``None`` take it away (the title is then derived from the first user
        message again; see :class:`SessionMetadata`). A write like any other: it
        counts as the session's last write, and ``owner_id`` and ``fencing_token`` are
        checked as :meth:`append` checks them (:class:`SessionLocked`,
        :class:`LeaseLost`, nothing written); inside :meth:`lock` both are implied.
        Subscribers get ``session.titled`` with the title."""
        _check_title(title)

        def change(state: _Session) -> tuple[None, list[tuple[str, Any]]]:
            self._branch_event(state, {"op": "title", "name": state.current, "title": title, "at": self._now_ms(),
                                       "seq": state.record_count})
            return None, [("session.titled", title)]
        self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    # -- search -------------------------------------------------------------------------

    def search(self, query: str, *, key_prefix: str | None = None, limit: int = 20,
               include_archived: bool = True) -> list[SearchHit]:
        """Messages holding every word of ``query``, best first, as :class:`SearchHit`
        (session, key, message, role, a snippet, and where the message stands: on the
        current path, in history a reset archived, or on another branch).

        The query is text: its words (runs of letters and digits, any case; see
        :func:`search_words`) are what is matched, so quotes, ``OR``, ``*``, ``-``
        or ``NEAR`` are plain words, whatever engine is underneath. Every message of
        every session is searched, whatever branch it is on; ``include_archived=False``
        leaves out history a reset archived. ``key_prefix`` is applied before
        ``limit``: one tenant's search never sees another's sessions.

        "Best": on SQLite and PostgreSQL, the engine's ranking (FTS5's bm25,
        ``ts_rank``), newer first on a tie; on the files, the count of the query's
        words in the message, then newer first. The files keep no index: a search
        reads every record of the prefix's sessions (see the module's comment).
        """
        if not isinstance(query, str):
            raise InvalidInput(f"a search query must be a string, not {type(query).__name__}")
        prefix = _check_prefix(key_prefix)
        most = _check_count("limit", limit, none=False, least=1)
        assert most is not None
        if not isinstance(include_archived, bool):
            raise InvalidInput(f"include_archived must be True or False, not {include_archived!r}")
        words = list(dict.fromkeys(search_words(query)))
        if not words:
            return []
        self._ready()
        places: dict[str, tuple[set[str], set[str]]] = {}
        hits: list[SearchHit] = []
        offset = 0
        while len(hits) < most:
            with _storage_errors("search"):
                found = self._storage.search_messages(words, prefix, _SEARCH_BATCH, offset)
            if found is None:
                return self._scan(words, prefix, most, include_archived)
            for session_id, message_id in found:
                hit = self._hit(session_id, message_id, words, prefix, include_archived, places)
                if hit is not None and len(hits) < most:
                    hits.append(hit)
            if len(found) < _SEARCH_BATCH:
                break
            offset += len(found)
        return hits

    def _hit(self, session_id: str, message_id: str, words: Sequence[str], prefix: str, include_archived: bool,
             places: dict[str, tuple[set[str], set[str]]]) -> SearchHit | None:
        """The hit of this message, if it matches (read from the session itself)."""
        def read(state: _Session) -> SearchHit | None:
            msg = state.by_id.get(message_id)
            if msg is None or not state.key.startswith(prefix):
                return None
            text = message_text(msg.content)
            if not set(words) <= set(search_words(text)):
                return None
            if session_id not in places:
                places[session_id] = _places(state)
            current, archived = places[session_id]
            place = "current" if message_id in current else "archived" if message_id in archived else "branch"
            if place == "archived" and not include_archived:
                return None
            return SearchHit(session_id=session_id, key=state.key, message_id=message_id, role=msg.role,
                             snippet=_snippet(text, words), place=place, timestamp=msg.timestamp,
                             title=_shown_title(state.title, state.preview()))
        try:
            return self._read(session_id, read)
        except SessionNotFound:
            return None

    def _scan(self, words: Sequence[str], prefix: str, limit: int, include_archived: bool) -> list[SearchHit]:
        """Search without an index: every message of the prefix's sessions, read
        through the store's bounded cache one session at a time; the best ``limit``
        hits kept (a heap), so memory stays bounded."""
        with _storage_errors("search"):
            entries = self._storage.find_sessions(prefix)
        wanted = set(words)
        best: list[tuple[int, int, int, SearchHit]] = []  # (score, time, tiebreak, hit): a min-heap of the best
        places: dict[str, tuple[set[str], set[str]]] = {}
        n = 0
        for entry in sorted(entries, key=lambda e: (e.created_at, e.session_id)):
            if not entry.key.startswith(prefix):
                continue
            def matches(state: _Session) -> list[tuple[int, int, str]]:
                return [(score, m.timestamp, m.id) for m in state.by_id.values()
                        if (score := _score(m.content, words, wanted))]
            try:
                matched = self._read(entry.session_id, matches)
            except SessionNotFound:
                continue
            for score, ts, message_id in matched:
                if len(best) == limit and (score, ts) <= best[0][:2]:
                    continue
                hit = self._hit(entry.session_id, message_id, words, prefix, include_archived, places)
                if hit is None:
                    continue
                n += 1
                item = (score, hit.timestamp, -n, hit)
                if len(best) < limit:
                    heapq.heappush(best, item)
                else:
                    heapq.heappushpop(best, item)
            places.pop(entry.session_id, None)
        return [item[3] for item in sorted(best, reverse=True)]

    # -- retention ----------------------------------------------------------------------

    def prune(self, *, older_than: datetime.timedelta | float, key_prefix: str | None = None,
              now: datetime.datetime | float | None = None, dry_run: bool = False,
              archive_to: str | os.PathLike[str] | None = None) -> PruneReport:
        """Delete whole sessions whose last write is older than ``older_than`` (a
        :class:`~datetime.timedelta` or seconds), among those whose key starts with
        ``key_prefix``; returns a :class:`PruneReport`.

        - The last write is the session's ``updated_at`` (its newest message, branch
          change or title) or its creation, whichever is later: reading never
          refreshes it, nor does taking a lease. ``now`` (seconds since the epoch, or
          an aware datetime; default the store's clock) makes a run deterministic.
        - A session whose lease is held is kept (``kept_leased``), and so is one
          written after it was listed (``kept_written``): both are checked in the
          storage's exclusive section, with the deletion.
        - ``dry_run``: nothing is written; the report names what a run would delete
          now.
        - ``archive_to``: a directory (made if missing); each session is first
          written there as ``<session id>.jsonl`` in the native export
          (:meth:`export_session`; :meth:`restore_session` or ``session-store
          import`` bring it back), durably, then deleted.
        - Each deletion is atomic: a crash part way leaves every session whole or
          gone (and its archive, if any, whole), and a second run finishes the job.

        Sessions past the age but not pruned yet are not hidden: :meth:`resolve` of
        their key, reads and writes work on them as on any session until a prune
        deletes them (a write makes them recent again).
        """
        age = _duration_ms(older_than)
        prefix = _check_prefix(key_prefix)
        at = self._now_ms() if now is None else _moment_ms(now)
        if not isinstance(dry_run, bool):
            raise InvalidInput(f"dry_run must be True or False, not {dry_run!r}")
        directory = None
        if archive_to is not None:
            try:
                directory = os.fspath(archive_to)
            except TypeError:
                raise InvalidInput(f"archive_to must be a directory path, not {archive_to!r}") from None
            if not isinstance(directory, str) or not directory:
                raise InvalidInput(f"archive_to must be a directory path, not {archive_to!r}")
        cutoff = at - age
        old = [m for m in self.list_sessions(key_prefix=prefix) if max(m.updated_at, m.created_at) < cutoff]
        old.reverse()  # oldest first
        deleted: list[str] = []
        leased: list[str] = []
        written: list[str] = []
        archived: list[str] = []
        freed = 0
        archive = (RealFileSystem(max_open_files=4), directory) if directory is not None and not dry_run else None
        if archive is not None and old:
            with _storage_errors(f"make the archive directory {archive[1]}"):
                archive[0].makedirs(archive[1], durable=True)
        for meta in old:
            sid = meta.session_id
            try:
                if dry_run:
                    nbytes = self._prune_check(sid, cutoff)
                else:
                    nbytes, path = self._prune_one(sid, cutoff, archive)
                    if path is not None:
                        archived.append(path)
            except SessionLocked:
                leased.append(sid)
                continue
            except _Written:
                written.append(sid)
                continue
            except SessionNotFound:
                continue  # deleted meanwhile
            deleted.append(sid)
            freed += nbytes
        return PruneReport(deleted=tuple(deleted), kept_leased=tuple(leased), kept_written=tuple(written),
                           archived=tuple(archived), bytes_freed=freed, dry_run=dry_run)

    def _prune_check(self, session_id: str, cutoff: int) -> int:
        """A dry run's check of one session, under the storage's lock, writing nothing:
        what :meth:`_prune_one` checks. Returns its bytes."""
        with self._writing(session_id) as state:
            return self._prunable(state, cutoff)

    def _prunable(self, state: _Session, cutoff: int) -> int:
        """Raise unless the session may go: its lease free, not written since the
        cutoff (caller is in the storage's exclusive section, caught up). Its bytes."""
        self._check_lease(state, None, None)
        if max(state.updated_at, state.created_at) >= cutoff:
            raise _Written(state.session_id)
        with _storage_errors(f"measure session {state.session_id!r}"):
            nbytes = self._storage.session_bytes(state.session_id)
        return state.nbytes if nbytes is None else nbytes

    def _prune_one(self, session_id: str, cutoff: int,
                   archive: tuple[RealFileSystem, str] | None) -> tuple[int, str | None]:
        """Check, archive and delete one session, all in the storage's exclusive section
        (the archive written whole and durably, or not at all, before the deletion)."""
        done: dict[str, Any] = {}

        def check(state: _Session) -> None:
            self._catch_up(state, writer=True)
            done["bytes"] = self._prunable(state, cutoff)
            if archive is not None:
                files, directory = archive
                path = os.path.join(directory, f"{state.session_id}.jsonl")
                with _storage_errors(f"write the archive {path}"):
                    files.write_atomic(path, "".join(f"{line}\n" for line in _export_state(state)).encode(),
                                       durable=True)
                done["path"] = path
        self._delete(session_id, check)
        return done["bytes"], done.get("path")

    # -- the native export ----------------------------------------------------------------

    def export_session(self, session_id: str) -> list[str]:
        """The session as JSON lines (the native export): a ``session`` line (key,
        creation time, current branch, title, what it was forked from), one
        ``message`` line per message in append order, one ``branch`` line per branch.
        :meth:`restore_session` (and ``session-store import``) read it back."""
        return self._read(session_id, _export_state)

    def restore_session(self, lines: Iterable[str], *, key: str | None = None) -> str:
        """Create a session from the native export's lines (see :meth:`export_session`):
        the same messages, branches, current branch and title, under ``key`` (by
        default the key it was exported with). All or nothing, like
        :meth:`import_session` (:class:`InvalidInput` for a line that is not the
        export's, with its number; :class:`InvalidKey` when the key has a session).
        Returns the new session's id."""
        header: dict[str, Any] | None = None
        messages: list[Message] = []
        branches: list[Branch] = []
        for n, text in enumerate(lines, 1):
            if not isinstance(text, str):
                raise InvalidInput(f"line {n}: the export's lines are strings, not {type(text).__name__}")
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                if not isinstance(line, dict) or len(line) != 1:
                    raise ValueError("not a session, message or branch line")
                if isinstance(line.get("session"), dict) and header is None:
                    header = line["session"]
                elif "message" in line:
                    messages.append(_message_from_record(line["message"]))
                elif isinstance(line.get("branch"), dict):
                    b = line["branch"]
                    branches.append(Branch(name=b["name"], head_id=b["headId"], created_at=b["createdAt"],
                                           updated_at=b["updatedAt"]))
                else:
                    raise ValueError("not a session, message or branch line")
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                raise InvalidInput(f"line {n}: not a session-store export line ({e})") from None
        if header is None:
            raise InvalidInput("no session line: not a session-store export")
        target = key if key is not None else header.get("key")
        if not isinstance(target, str):
            raise InvalidInput("the session line has no key: give one")
        fork = header.get("forkedFrom")
        forked_from = (fork[0], fork[1]) if isinstance(fork, list) and len(fork) == 2 else None
        return self.import_session(target, messages, branches=branches, current=header.get("current", "main"),
                                   forked_from=forked_from, title=header.get("title"))


def _score(content: Any, words: Sequence[str], wanted: set[str]) -> int:
    """How well a message matches (the count of the query's words in it), or 0 when
    it lacks one of them: a substring test first (cheap), then the words."""
    text = message_text(content)
    low = text.lower()
    if not all(w in low for w in words):
        return 0
    found = search_words(text)
    if not wanted <= set(found):
        return 0
    return sum(1 for w in found if w in wanted)
