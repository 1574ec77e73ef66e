"""The session cache: a store's settings, its storage, and the session trees it keeps in memory.

:class:`_SessionCache` is the bottom layer of :class:`SessionStore`: it opens and
closes the storage, keeps a least-recently-used cache of :class:`_Session` trees
within a byte and session budget (never evicting one being used or whose lease this
store holds), brings a cached tree up to date with what other stores wrote
(:meth:`_catch_up`), and delivers events to subscribers outside every lock. It
writes no record: writing is the next layer's (``leases``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .auto_reset import AutoResetConfig
from .errors import (
    _T,
    InvalidInput,
    SessionNotFound,
    SessionStoreError,
    StorageError,
    StoreClosed,
    _log,
    _storage_error,
    _storage_errors,
)
from .file_systems import FileSystem, _after_fork_hooks
from .jsonl_storage import JsonlStorage
from .log_format import (
    _damaged_record,
    _encode_line,
    _placeholder_of,
    _sealed,
)
from .records import (
    Event,
    Problem,
)
from .storage import IndexEntry, Storage
from .tree import _KEPT, _Session
from .tuning import _GC_PAUSE, _TRIM_AFTER, _GcPause, _give_back_freed_memory

_CLAIMED: weakref.WeakKeyDictionary[Storage, Any] = weakref.WeakKeyDictionary()


def _weakrefable(obj: object) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def _valid_tally(tally: Any) -> bool:
    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return (isinstance(tally, dict) and whole(tally.get("messages")) and whole(tally.get("updatedAt"))
            and whole(tally.get("resets")) and whole(tally.get("branches", 1))
            and (tally.get("lastResetAt") is None or whole(tally.get("lastResetAt")))
            # Saved before titles existed: counted again once, for its title and preview.
            and "preview" in tally and all(tally.get(k) is None or isinstance(tally[k], str)
                                           for k in ("title", "preview")))


class _SessionCache:
    """A store's settings, its storage and its bounded cache of session trees (see the module)."""

    def __init__(
        self,
        storage: Storage | FileSystem | None = None,
        *,
        storage_dir: str | os.PathLike[str] | None = None,
        index_save_delay_ms: int = 100,
        lock_timeout_ms: int = 30000,
        auto_reset: AutoResetConfig | None = None,
        durable: bool = True,
        clock: Callable[[], float] | None = None,
        require_lock: bool = False,
        cache_bytes: int = 64 * 2**20,
        cache_sessions: int = 4096,
    ) -> None:
        for name, value, low in (("index_save_delay_ms", index_save_delay_ms, 0),
                                 ("lock_timeout_ms", lock_timeout_ms, 1),
                                 ("cache_bytes", cache_bytes, 0), ("cache_sessions", cache_sessions, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInput(f"{name} must be an integer >= {low}, not {value!r}")
        if isinstance(storage, Storage):
            if storage_dir is not None:
                raise InvalidInput("storage_dir is for the JSONL storage; this store was given a Storage")
            self._storage: Storage = storage
        elif storage is None or isinstance(storage, FileSystem):
            self._storage = JsonlStorage(storage, "./sessions" if storage_dir is None else storage_dir)
        else:
            raise InvalidInput(f"storage must be a Storage or a FileSystem, not {type(storage).__name__}")
        if auto_reset is not None and not isinstance(auto_reset, AutoResetConfig):
            raise InvalidInput("auto_reset must be an AutoResetConfig or None")
        if clock is not None and not callable(clock):
            raise InvalidInput("clock must be a callable returning seconds, like time.time")
        self._auto_reset = auto_reset
        # Whether a lease needs a proof of life other processes can test (see _mark).
        self._proof_of_life = self._storage.shared_across_processes
        self._durable = bool(durable)
        self._clock = clock if clock is not None else time.time
        self._require_lock = bool(require_lock)
        self.lock_timeout_ms = lock_timeout_ms
        self._cache_bytes = cache_bytes
        self._cache_sessions = cache_sessions
        self._subscribers: tuple[Callable[[Event], None], ...] = ()
        self._opened = False
        self._closed = False
        self._reset_process_state()
        _after_fork_hooks.add(self._after_fork)

    def _reset_process_state(self) -> None:
        self._mutex = threading.RLock()  # guards the dicts below; never held across I/O
        # The turn of a write scope (see _WriteScope), for a storage whose scopes are short and local.
        self._turn: threading.RLock | None = threading.RLock() if self._storage.local_writes else None
        self._open_lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # the cache, least recently used first
        self._cached_bytes = 0
        self._read_bytes = 0  # bytes of records cached since open (see _give_back_freed_memory)
        self._marks: set[str] = set()  # sessions whose lease this store holds (a proof of life kept)
        self._lease_changed = threading.Condition(threading.Lock())
        self._lease_waiters = 0  # threads waiting on _lease_changed (none: a release notifies nobody)
        self._lease_listeners: tuple[Callable[[str], None], ...] = ()  # AsyncSessionStore's waiters

    def _after_fork(self) -> None:
        """In a child process after ``fork()`` (called by ``os.register_at_fork``):
        start with an empty cache and fresh locks. Leases and their proofs of life
        stay the parent's; the storage reopens its own descriptors or connections."""
        self._reset_process_state()

    def __repr__(self) -> str:
        return f"SessionStore({self._storage!r}, durable={self._durable!r})"

    def _new_state(self, info: IndexEntry) -> _Session:
        return _Session(info.session_id, info.key, info.created_at, self._auto_reset, info.forked_from)

    # -- settings ---------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        """The :class:`Storage` this store keeps its sessions in."""
        return self._storage

    @property
    def storage_dir(self) -> str:
        """Where the storage keeps its data (the JSONL directory, a database file...)."""
        return self._storage.location

    @property
    def auto_reset(self) -> AutoResetConfig | None:
        """The auto-reset config, fixed when the store is made (read-only: sessions
        already loaded carry their segments' totals for it)."""
        return self._auto_reset

    @auto_reset.setter
    def auto_reset(self, value: Any) -> None:
        raise AttributeError("auto_reset is fixed when the store is made: open a new SessionStore(auto_reset=...)")

    @property
    def durable(self) -> bool:
        """Whether writes return only once on disk (read-only)."""
        return self._durable

    @property
    def require_lock(self) -> bool:
        """Whether appends naming no owner are refused while a lease is held (read-only)."""
        return self._require_lock

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    # -- open, flush, close -----------------------------------------------------

    def init(self) -> None:
        """Open the storage (idempotent). Reads and writes nothing but what the
        storage needs to connect; the first write creates what is missing."""
        with self._open_lock:
            if self._closed:
                raise StoreClosed("store is closed")
            if self._opened:
                return
            claimant = _CLAIMED.get(self._storage) if _weakrefable(self._storage) else None
            if claimant is not None and claimant() not in (None, self):
                raise InvalidInput(f"{self._storage!r} is already used by another SessionStore; give each store "
                                   "its own Storage object (they may share the data it points at)")
            with _storage_errors(f"open the store in {self._storage.location}"):
                self._storage.open(durable=self._durable)
            if _weakrefable(self._storage):
                _CLAIMED[self._storage] = weakref.ref(self)
            self._opened = True

    def _ready(self) -> None:
        if not self._opened:
            if self._closed:
                raise StoreClosed("store is closed")
            self.init()

    def flush(self) -> None:
        """Save what this store keeps only in memory: the tallies of the sessions it
        wrote (a cache that lets :meth:`get_metadata` read little). Nothing else needs
        it: every write is in storage (and durable, with ``durable``) when it returns."""
        self._ready()
        with self._mutex:
            states = [s for s in self._sessions.values() if s.untallied]
        for state in states:
            self._save_tally(state)

    def _save_tally(self, state: _Session) -> None:
        """Write the session's tally if this store wrote records since the last one
        (a cache: a failure is logged, never raised). Not while a branch event read
        ahead of the messages it names waits for them: the position read to is past
        that event, which the counts do not include yet."""
        with state.lock:
            if not state.untallied or state.deleted or not state.loaded or state.pending_events:
                return
            try:
                self._storage.write_tally(state.session_id, state.position, state.tally())
                state.untallied = 0
            except (SessionStoreError, OSError) as e:
                _log.warning("could not save the tally of session %s: %s", state.session_id, e)

    def close(self) -> None:
        """Save the tallies, give up this store's proofs of life, release descriptors
        and connections and drop the cache; after a large cache, with
        :func:`tune_process`, give the freed memory back to the operating system (see
        :func:`_give_back_freed_memory`). Idempotent."""
        if self._closed:
            return
        try:
            if self._opened:
                self.flush()
                for sid in list(self._marks):
                    self._unmark(sid)
        finally:
            with self._mutex:
                self._closed = True
                self._opened = False
                self._sessions.clear()
                self._cached_bytes = 0
                read, self._read_bytes = self._read_bytes, 0
            if _weakrefable(self._storage) and _CLAIMED.get(self._storage) is not None:
                with contextlib.suppress(KeyError):
                    del _CLAIMED[self._storage]
            try:
                with _storage_errors(f"close the store in {self._storage.location}"):
                    self._storage.close()
            finally:
                if read >= _TRIM_AFTER:
                    _give_back_freed_memory()

    # -- events -------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every durable change; returns the unsubscriber.

        Callbacks run in the writing thread, after the write and outside every
        internal lock; one that raises is logged and ignored.
        """
        if not callable(callback):
            raise InvalidInput("subscribe() takes a callable")
        with self._mutex:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._mutex:
                subs = list(self._subscribers)
                if callback in subs:
                    subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def _emit(self, type_: str, session_id: str, data: Any) -> None:
        subscribers = self._subscribers
        if not subscribers:
            return
        event = Event(type=type_, session_id=session_id, data=data)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                _log.exception("subscriber %r failed on %s", callback, type_)

    # -- the cache ----------------------------------------------------------------

    def _mark(self, session_id: str) -> None:
        """Keep a proof of life for a lease this store holds (inside ``_writing``).
        A storage no other process sees needs none (a holder in this process is alive
        while it runs): the session is only noted as leased."""
        with self._mutex:
            if session_id in self._marks:
                return
            if not self._proof_of_life:
                self._marks.add(session_id)
                return
        with _storage_errors(f"keep a proof of life for the lease of {session_id!r}"):
            self._storage.hold_lease(session_id)
        with self._mutex:
            self._marks.add(session_id)

    def _unmark(self, session_id: str) -> None:
        with self._mutex:
            if session_id not in self._marks:
                return
            self._marks.discard(session_id)
            if not self._proof_of_life:
                return
        with contextlib.suppress(SessionStoreError, OSError):
            self._storage.drop_lease(session_id)

    def _state(self, session_id: str) -> _Session:
        """The session's cached state (made on first use: the index is asked once)."""
        if not self._opened:
            self._ready()
        if type(session_id) is not str and not isinstance(session_id, str):
            raise SessionNotFound(session_id)
        with self._mutex:
            state = self._sessions.get(session_id)
            if state is not None and not state.deleted:
                self._sessions.move_to_end(session_id)
                return state
        with _storage_errors(f"read session {session_id!r}"):
            info = self._storage.session_info(session_id)
        if info is None:
            raise SessionNotFound(session_id)
        with self._mutex:
            state = self._sessions.get(session_id)
            if state is None or state.deleted:
                state = self._sessions[session_id] = self._new_state(info)
            self._sessions.move_to_end(session_id)
        self._trim()
        return state

    def _trim(self) -> None:
        """Evict least recently used idle sessions beyond the budget (their tallies are
        saved first, outside the store's lock). Busy, leased and the last used stay."""
        if len(self._sessions) <= self._cache_sessions and self._cached_bytes <= self._cache_bytes:
            return  # the common case, read without the lock: a trim that races is only late by one call
        evicted: list[tuple[str, _Session]] = []  # (its key in the cache, the session)
        with self._mutex:
            sessions = self._sessions
            excess, over = len(sessions) - self._cache_sessions, self._cached_bytes - self._cache_bytes
            if excess <= 0 and over <= 0:
                return
            # From the least recently used, visiting only what it evicts (and the busy it
            # steps over): a full cache costs each new session O(1), not O(cache).
            last = next(reversed(sessions))
            for sid, state in sessions.items():
                if excess <= 0 and over <= 0:
                    break
                if sid == last or sid in self._marks or state.lock.locked():
                    continue
                evicted.append((sid, state))
                excess -= 1
                over -= state.nbytes
            for sid, state in evicted:
                del sessions[sid]
                self._cached_bytes -= state.nbytes
        for _, state in evicted:
            self._save_tally(state)
            self._storage.forget(state.session_id)

    def _drop_tree(self, state: _Session) -> None:
        """Forget the session's cached tree (reloaded on next use) and its bytes in the budget."""
        with self._mutex:
            if self._sessions.get(state.session_id) is state:
                self._cached_bytes -= state.nbytes
        state.clear()
        state.loaded = False

    def _forget_deleted(self, state: _Session) -> None:
        state.deleted = True
        with self._mutex:
            if self._sessions.get(state.session_id) is state:
                del self._sessions[state.session_id]
                self._cached_bytes -= state.nbytes
        if state.session_id in self._marks:
            self._unmark(state.session_id)
        self._storage.forget(state.session_id)

    def _catch_up(self, state: _Session, *, writer: bool = False) -> None:
        """Load what was appended to the session since we last looked, a part at a time
        (see :meth:`Storage.load_parts`).

        Caller holds ``state.lock`` (and, when ``writer``, the storage's ``writing``).
        """
        if state.deleted:
            raise SessionNotFound(state.session_id)
        before = state.nbytes
        if not state.loaded:
            state.clear()
            state.loaded = True
        paused = False
        try:
            for found in self._storage.load_parts(state.session_id, state.position, writer=writer):
                if not paused and found.nbytes >= _GcPause.BYTES:
                    _GC_PAUSE.pause()
                    paused = True
                state.ingest(found)
        except SessionNotFound:
            self._forget_deleted(state)
            raise
        except BaseException as e:
            state.loaded = False  # half-applied records must not linger
            if isinstance(e, OSError) and not isinstance(e, StorageError):
                raise _storage_error(e, f"read session {state.session_id!r}") from e
            raise
        finally:
            if paused:
                _GC_PAUSE.resume()
            if state.nbytes != before:
                with self._mutex:
                    if self._sessions.get(state.session_id) is state:
                        self._cached_bytes += state.nbytes - before
                    self._read_bytes += max(0, state.nbytes - before)

    # -- check and repair --------------------------------------------------------------

    def _scan_session(self, entry: IndexEntry) -> tuple[_Session, dict[int, bytes]]:
        """Load a session afresh into a scratch tree (never touching the cache): the
        tree (its ``problems``), and a placeholder for each message record a repair
        moves aside (damaged, or a duplicate id), by where the record is."""
        scratch = _Session(entry.session_id, entry.key, entry.created_at)
        found = self._storage.scan(entry.session_id)
        placeholders: dict[int, bytes] = {}
        if found is not None:
            scratch.ingest(found)
            reason_of = {p.offset: p.reason for p in scratch.problems
                         if p.file == found.messages_label and p.offset is not None and not p.reason.endswith(_KEPT)}
            last = 0
            for where, rec in found.messages:
                ts = rec.get("timestamp")
                if where not in reason_of:
                    last = ts if isinstance(ts, int) and not isinstance(ts, bool) else last
                    continue
                why = reason_of[where]
                if why.startswith("duplicate id"):
                    placeholder = _damaged_record(b"", where, why)
                elif rec.get("type") == "damaged" and "damaged" in rec:
                    placeholder = dict(rec)  # decoded as a placeholder already (its id salvaged if it could be)
                else:
                    placeholder = _placeholder_of(rec, where, why)
                placeholder["timestamp"] = last
                placeholders[where] = _sealed(_encode_line(placeholder))
        scratch.problems += [
            Problem(session_id=entry.session_id, file=scratch.events_label, offset=None,
                    reason=f"branch event {ev['op']!r} on {ev['name']!r} follows messages that are missing")
            for ev in scratch.pending_events]
        return scratch, placeholders

    # -- reading -------------------------------------------------------------------

    def _read(self, session_id: str, fn: Callable[[_Session], _T]) -> _T:
        state = self._state(session_id)
        with state.lock:
            self._catch_up(state)
            result = fn(state)
        self._trim()
        return result

    def _grow(self, state: _Session, nbytes: int) -> None:
        """Count ``nbytes`` more of the session's cached state into the cache budget
        (caller holds ``state.lock``)."""
        state.nbytes += nbytes
        with self._mutex:
            if self._sessions.get(state.session_id) is state:
                self._cached_bytes += nbytes
