"""Leases and the write scope: who may write a session, and the one way a write is held.

:class:`_LeasedStore` adds to the cache the exclusive scope every write runs in
(:meth:`_writing`: the session's thread lock, the storage's ``writing``, caught up
with the records, undone when it fails), the sync after it, and the leases:
owner-based, with strictly increasing fencing tokens, a fair queue of waiters, and a
proof of life so that a holder that died is known dead at once. A lease record's
meaning is the store's; a storage only keeps it.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import (
    _T,
    InvalidInput,
    LeaseLost,
    LockTimeout,
    SessionLocked,
    SessionNotFound,
    SessionStoreError,
    StorageError,
    _log,
    _storage_error,
)
from .records import (
    LockInfo,
    LockResult,
    _lock_result,
)
from .session_cache import _SessionCache
from .storage import Position
from .tree import _Session
from .validation import _check_name, _check_timeout

_PROCESS = os.urandom(8).hex()

# The lock() blocks entered in this context: (store, process, session id, owner,
# token). A ContextVar, not a thread-local, so that asyncio tasks (and the executor
# threads AsyncSessionStore runs their calls in) see their own holds.
_HELD: contextvars.ContextVar[tuple[tuple[int, str, str, str, int], ...]] = contextvars.ContextVar(
    "session_store_held", default=())

_QUEUE_MS = 2_000  # a waiter's place in a lease's queue lasts this long unless renewed
_POLL = 0.001  # seconds between the first waiter's looks at a held lease (a read of its record)
_POLL_BEHIND = 0.005  # the same for waiters behind it (their turn cannot come first)
_WAITER_IDS = itertools.count(1)


def _new_process() -> None:
    global _PROCESS
    _PROCESS = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)


@contextlib.contextmanager
def _holding(store: object, session_id: str, owner_id: str, token: int) -> Iterator[None]:
    """For the block, this context (thread or asyncio task) holds the lease of
    ``token``: its writes to the session are fenced with it (see :meth:`_LeasedStore._implied`).
    The block's entry is removed on exit, also when it is left in another context
    than it was entered in (then only this entry)."""
    entry = (id(store), _PROCESS, session_id, owner_id, token)
    reset = _HELD.set((*_HELD.get(), entry))
    try:
        yield
    finally:
        try:
            _HELD.reset(reset)
        except ValueError:  # left in another context than entered: remove our entry only
            _HELD.set(tuple(e for e in _HELD.get() if e is not entry))


class _LeasedStore(_SessionCache):
    """The write scope, syncs and leases over the session cache (see the module)."""

    # -- writing ------------------------------------------------------------------------

    def _write(self, session_id: str, change: Callable[[_Session], tuple[_T, list[tuple[str, Any]]]], *,
               owner_id: str | None = None, fencing_token: int | None = None, chain: bool = False) -> _T:
        """Change a session: the one path of every public write (:meth:`append`,
        :meth:`append_many`, :meth:`reset`, :meth:`import_messages` and the branch
        operations; :meth:`delete_session` and :meth:`fork_session`, which the storage
        carries out whole, keep the same lease rule through :meth:`_fence`). In order:

        1. the lease (:meth:`_fence`): the owner and fencing token given, else those a
           :meth:`lock` block implies, are checked in the storage's exclusive section,
           together with the write (:class:`SessionLocked`, :class:`LeaseLost`);
        2. the session is held and caught up (:class:`_WriteScope`), and
           ``change(state)`` checks the call against the tree and writes its records;
           an error anywhere leaves none of them in storage or in the cache;
        3. the records are made durable (:meth:`_sync`), outside the exclusive
           section, so that one sync can cover many writers;
        4. the events ``change`` returned (``(type, data)`` pairs) reach subscribers,
           outside every lock.

        ``chain``: message records are applied at once and written together (see
        :meth:`SessionStore._write_batch`), for :meth:`append_many`.
        """
        fence = self._fence(session_id, owner_id, fencing_token)
        with _WriteScope(self, self._state(session_id), True, fence, chain) as state:
            result, events = change(state)
        self._sync(session_id)
        if self._subscribers:
            for type_, data in events:
                self._emit(type_, session_id, data)
        return result

    def _writing(self, session_id: str, *, catch_up: bool = True,
                 fence: tuple[str | None, int | None] | None = None) -> _WriteScope:
        """Hold the session exclusively without :meth:`_write`'s sync and events: for
        the store's own writes (lease records, repairs) and for a read that must agree
        with the lease (:meth:`fork_session`). Thread lock, storage lock, caught up with
        the records (``catch_up=False``: only checked that the session still exists),
        and the lease of ``fence`` checked (see :meth:`_fence`)."""
        return _WriteScope(self, self._state(session_id), catch_up, fence, False)

    def _sync(self, session_id: str) -> None:
        """Make this process's records of the session durable (outside the writing
        scope, so that a storage can cover many writers with one sync). A failed sync
        drops the cached tree: what is in storage is reloaded, without the records
        the storage removed."""
        if not self._durable:
            return
        try:
            self._storage.sync(session_id)
        except BaseException as e:
            with self._mutex:
                state = self._sessions.get(session_id)
            if state is not None:
                with state.lock:
                    self._drop_tree(state)
            if isinstance(e, OSError) and not isinstance(e, StorageError):
                raise _storage_error(e, f"sync session {session_id!r}") from e
            raise

    # -- locks ------------------------------------------------------------------------

    def _implied(self, session_id: str) -> tuple[str, int] | None:
        """The owner and token of the innermost :meth:`lock` block on this session in
        this context (thread or asyncio task), if any."""
        me, process = id(self), _PROCESS
        for store, proc, sid, owner, token in reversed(_HELD.get()):
            if store == me and sid == session_id and proc == process:
                return owner, token
        return None

    def _fence(self, session_id: str, owner_id: str | None, fencing_token: int | None
               ) -> tuple[str | None, int | None] | None:
        """Whom a write to the session is checked for (the rule for every write):
        ``(owner, token)`` as given, else as implied by this context's :meth:`lock`
        block; ``None`` when the write is not checked at all (no owner, no token, no
        block, and the store was not made with ``require_lock``). :meth:`_check_lease`
        then runs in the storage's exclusive section, with the write."""
        if owner_id is not None:
            _check_name("owner id", owner_id)
        if fencing_token is not None and (not isinstance(fencing_token, int) or isinstance(fencing_token, bool)
                                          or fencing_token < 0):
            raise InvalidInput(f"fencing_token must be a non-negative integer, not {fencing_token!r}")
        implied = self._implied(session_id)
        if implied is not None and fencing_token is None and owner_id in (None, implied[0]):
            return implied
        if owner_id is None and fencing_token is None and not self._require_lock:
            return None
        return owner_id, fencing_token

    def _check_lease(self, state: _Session, owner_id: str | None, token: int | None) -> None:
        """Raise :class:`LeaseLost` unless the lease of ``token`` (and ``owner_id``) is
        live and current; else :class:`SessionLocked` when another owner holds it."""
        lease = self._read_lease(state)
        now = self._now_ms()
        holder = lease["owner"] if self._live(state.session_id, lease, now) else None
        if token is not None:
            if holder is None or lease["token"] != token or (owner_id is not None and holder != owner_id):
                raise LeaseLost(state.session_id, owner_id, holder, token)
        elif holder is not None and holder != owner_id:
            raise SessionLocked(state.session_id, owner_id, holder)

    def _read_lease(self, state: _Session) -> Mapping[str, Any]:
        """The lease record (caller is in ``_writing``), normalized by :meth:`_normal_lease`;
        the record this store wrote last when it reads back as that (its check would
        find what it found when the store made it: the common case, a store taking and
        letting go of a lease, checks nothing)."""
        try:
            raw = self._storage.read_lease(state.session_id)
        except StorageError:
            raise
        except OSError as e:
            raise _storage_error(e, f"read the lease of {state.session_id!r}") from e
        known = state.lease
        if known is not None and raw == known:
            return known
        return self._normal_lease(raw)

    def _normal_lease(self, raw: Mapping[str, Any] | None, *, quiet: bool = False) -> Mapping[str, Any]:
        """A lease record with every field checked: ``owner`` (or ``None``), ``count``,
        ``token``, ``expiresAt``, ``process``, ``queue`` (waiters, oldest first) and
        the reserved range of tokens (``reserved``, ``reservedBy``, see
        :meth:`_next_token`). A corrupt or malformed record is free, and its token the
        current time in ms: above every token issued before it (they count up from 1),
        so fencing tokens keep growing even when their record is lost.

        Records are never changed in place (a change is a new dict): the one returned
        may be the storage's own fresh copy."""
        if raw is None:
            return _FREE
        if not _lease_fields_ok(raw):
            token = max(_whole(raw.get("token")), _whole(raw.get("reserved")))
            if not quiet:
                _log.warning("a lease record is corrupt (%r): treating it as free; tokens continue above %d",
                             dict(raw), max(token, self._now_ms()))
            return {"owner": None, "token": max(token, self._now_ms()), "queue": []}
        if "queue" not in raw:
            return {**raw, "queue": []}
        return raw

    def _write_lease(self, state: _Session, lease: Mapping[str, Any], *, durable: bool = False,
                     undo: Mapping[str, Any] | None = None) -> None:
        """Store the lease record (caller is in ``_writing``).

        ``undo``: the record this one replaces, put back (best effort) when the write
        fails. A write can land and then report failure (its fsync fails); the caller is
        told the call failed, so what landed must not stand: an acquire must not leave
        an owner who was told no, a release or renewal must not take effect unseen."""
        state.lease = None
        try:
            self._storage.write_lease(state.session_id, lease, durable=durable)
            state.lease = lease
        except (StorageError, OSError) as e:
            if undo is not None:
                with contextlib.suppress(SessionStoreError, OSError):
                    self._storage.write_lease(state.session_id, undo, durable=False)
            if isinstance(e, StorageError):
                raise
            raise _storage_error(e, f"write the lease of {state.session_id!r}") from e

    def _live(self, session_id: str, lease: Mapping[str, Any], now: int) -> bool:
        """Whether the lease is held: an owner, not expired, and its holder not proven dead.

        Only proof frees a lease early: the holder's own mark of life (a ``flock`` on
        files and SQLite, an advisory lock on PostgreSQL), which the operating system
        or the server drops when the holder dies, in whatever PID namespace, container
        or host. A process id is never compared: another namespace may reuse it.
        """
        if lease.get("owner") is None or lease["expiresAt"] <= now:  # (a record with an owner has an expiry)
            return False
        process = lease.get("process")
        if process == _PROCESS or not isinstance(process, str):
            return True  # ours; or written before marks of life existed: only expiry frees it
        return not self._storage.holder_gone(session_id, lease)

    def _try_acquire(self, session_id: str, owner_id: str, waiter: str | None) -> tuple[LockResult, int]:
        """One attempt, under the storage's lock: the result, and the waiter's place in
        the lease's queue (``-1`` when not queued). A free lease goes to the first
        waiter in the queue; others (and attempts that do not wait) queue behind."""
        marked = False  # whether this attempt took the proof of life, to give back if it fails
        try:
            with self._writing(session_id, catch_up=False) as state:
                before = self._read_lease(state)
                now = self._now_ms()
                queue = before["queue"]
                if queue:
                    queue = [w for w in queue if w[1] > now]
                mine = next((i for i, w in enumerate(queue) if w[0] == waiter), -1) if waiter is not None else -1
                live = self._live(session_id, before, now)
                expires = now + self.lock_timeout_ms
                if live and before["owner"] == owner_id:
                    if mine >= 0:
                        del queue[mine]
                    lease = {**before, "count": before["count"] + 1, "expiresAt": expires, "queue": queue}
                    token, durable = before["token"], False
                elif live or (queue and mine != 0):
                    if waiter is not None:
                        if mine < 0:
                            queue = [*queue, [waiter, now + _QUEUE_MS]]
                            mine = len(queue) - 1
                        elif queue[mine][1] - now < _QUEUE_MS // 2:
                            queue = [*queue[:mine], [waiter, now + _QUEUE_MS], *queue[mine + 1:]]
                        else:
                            waiter = None  # nothing to write
                        if waiter is not None or len(queue) != len(before["queue"]):
                            self._write_lease(state, {**before, "queue": queue})
                    holder = before["owner"] if live else None
                    return _lock_result(False, owner_id, holder, before["expiresAt"] if live else None, None), mine
                else:
                    if mine >= 0:
                        del queue[mine]
                    token, reserved = self._next_token(before)
                    durable = reserved != before.get("reserved")  # a new range: synced before any of it is used
                    lease = {"owner": owner_id, "count": 1, "token": token, "expiresAt": expires,
                             "process": _PROCESS, "queue": queue, "reserved": reserved, "reservedBy": _PROCESS}
                self._mark(session_id)
                marked = before.get("process") != _PROCESS or before.get("owner") is None
                self._write_lease(state, lease, durable=durable, undo=before)  # failed: as it was (best effort)
                return _lock_result(True, owner_id, owner_id, expires, token), -1
        except StorageError:
            # Also when the scope fails after the write (a storage that syncs when the
            # scope ends, SQLite's durable lease range): without the proof of life,
            # other processes see the record's holder gone, so the lease is free.
            if marked:
                self._unmark(session_id)
            raise

    @staticmethod
    def _next_token(lease: Mapping[str, Any]) -> tuple[int, int]:
        """A new holder's fencing token, and the end of the range of tokens reserved.

        Tokens never repeat, across crashes and power loss, without a sync per new
        holder: a process reserves a range of :data:`_TOKEN_RANGE` tokens by writing
        its end (``reserved``) and its own identity (``reservedBy``) durably, then hands
        out the tokens of the range with unsynced writes. A record that names this
        process as the reserver was written by this process, alive now; a crash ends
        the process, so whatever record survives it (the synced reservation, or a later
        unsynced write) sends the next process above the whole range. Another process's
        range is never used: alternating processes pay a sync per turn, as before.
        """
        token, reserved = lease["token"] + 1, lease.get("reserved") or 0
        if lease.get("reservedBy") == _PROCESS and token <= reserved:
            return token, reserved
        token = max(token, reserved + 1)
        return token, token + _TOKEN_RANGE - 1

    def _leave_queue(self, session_id: str, waiter: str) -> None:
        """A waiter that gives up (timeout, cancellation) leaves the queue."""
        with contextlib.suppress(SessionStoreError, OSError):
            with self._writing(session_id, catch_up=False) as state:
                lease = self._read_lease(state)
                queue = [w for w in lease["queue"] if w[0] != waiter]
                if len(queue) != len(lease["queue"]):
                    self._write_lease(state, {**lease, "queue": queue})
        self._lease_freed(session_id)

    def _lease_freed(self, session_id: str) -> None:
        """Wake this process's waiters for the session's lease (threads and event loops);
        waiters in other processes look again after a short pause."""
        if self._lease_waiters:
            with self._lease_changed:
                self._lease_changed.notify_all()
        for listener in self._lease_listeners:
            listener(session_id)

    def _looks_takeable(self, session_id: str, waiter: str) -> tuple[bool, int]:
        """Between attempts: whether the lease looks free for this waiter, read without
        the storage's lock (``True`` when the storage cannot tell cheaply), and the
        waiter's place in the queue (``-1``: not in it)."""
        raw = self._storage.peek_lease(session_id)
        if raw is None:
            return True, -1
        lease = self._normal_lease(raw, quiet=True)  # a torn read (a write under way) just means: look again
        now = self._now_ms()
        queue = [w for w in lease["queue"] if w[1] > now]
        place = next((i for i, w in enumerate(queue) if w[0] == waiter), -1)
        if place != 0 and queue:
            return place > 0 and queue[place][1] - now < _QUEUE_MS // 2, place  # time to renew our place
        return not self._live(session_id, lease, now), place

    def acquire_lock(self, session_id: str, owner_id: str, *, timeout: float | None = 0) -> LockResult:
        """Take the session's lease for ``owner_id``.

        ``timeout``: ``0`` tries once (the seed), seconds waits that long, ``None``
        waits forever; negative raises ``ValueError``. The lease lasts
        ``lock_timeout_ms`` unless renewed. The same owner acquiring again is
        re-entrant: it counts, extends the lease and keeps its token; a new holder
        gets a token strictly greater than every earlier one of this session, also
        across crashes and power loss (see :meth:`_next_token`). Waiters are served in the order
        they came, across threads and processes: each takes a place in the lease's
        queue, and a free lease goes to the first (an attempt that does not wait
        never jumps the queue).
        """
        _check_name("owner id", owner_id)
        if timeout == 0:  # one attempt, never queued
            return self._try_acquire(session_id, owner_id, None)[0]
        _check_timeout(timeout)
        wait = _LeaseWait(self, session_id, owner_id, timeout)
        try:
            while True:
                result = wait.attempt()
                if result.acquired:
                    return result
                pause = wait.pause()
                if pause is None:
                    return result
                while True:
                    with self._lease_changed:
                        self._lease_waiters += 1
                        try:
                            self._lease_changed.wait(pause)
                        finally:
                            self._lease_waiters -= 1
                    pause = wait.pause()
                    if pause is None or wait.takeable():
                        break
        finally:
            wait.done()

    def renew_lock(self, session_id: str, owner_id: str) -> LockResult:
        """Extend ``owner_id``'s live lease by ``lock_timeout_ms``; not acquired when not held."""
        _check_name("owner id", owner_id)
        with self._writing(session_id, catch_up=False) as state:
            lease = self._read_lease(state)
            now = self._now_ms()
            live = self._live(session_id, lease, now)
            if lease["owner"] != owner_id or not live:
                holder = lease["owner"] if live else None
                return _lock_result(False, owner_id, holder, lease.get("expiresAt") if holder else None, None)
            before, lease = lease, {**lease, "expiresAt": now + self.lock_timeout_ms}
            self._write_lease(state, lease, undo=before)
            return _lock_result(True, owner_id, owner_id, lease["expiresAt"], lease["token"])

    def release_lock(self, session_id: str, owner_id: str) -> bool:
        """Release one hold of ``owner_id``; ``False`` when that owner does not hold it."""
        _check_name("owner id", owner_id)
        with self._writing(session_id, catch_up=False) as state:
            lease = self._read_lease(state)
            if lease["owner"] != owner_id or not self._live(session_id, lease, self._now_ms()):
                if lease.get("process") != _PROCESS or lease["owner"] is None:
                    self._unmark(session_id)
                return False
            before, count = lease, lease["count"] - 1
            if count > 0:
                lease = {**before, "count": count}
            else:
                lease = {k: v for k, v in before.items() if k not in _HOLDER_FIELDS}
                lease["owner"] = None
            self._write_lease(state, lease, undo=before)  # failed: still held, as it was
            if count <= 0:
                self._unmark(session_id)
        self._lease_freed(session_id)
        return True

    def is_locked(self, session_id: str) -> bool:
        """Whether a live lease is held (an expired one is not a lock)."""
        return self.get_lock(session_id) is not None

    def get_lock(self, session_id: str) -> LockInfo | None:
        """The live lease (holder, expiry, token, count) or ``None``."""
        with self._writing(session_id, catch_up=False) as state:
            lease = self._read_lease(state)
            live = self._live(session_id, lease, self._now_ms())
        if not live:
            return None
        return LockInfo(holder_id=lease["owner"], expires_at=lease["expiresAt"], token=lease["token"],
                        count=int(lease["count"]))

    @contextlib.contextmanager
    def lock(self, session_id: str, owner_id: str, *, timeout: float | None = None) -> Iterator[LockResult]:
        """Hold the lease for the ``with`` block; writes in it count as ``owner_id``'s.

        ``LockTimeout`` when it cannot be acquired within ``timeout`` (``None``:
        wait forever). Every write in the block (in this thread or asyncio task) is
        fenced: it carries the lease's token, and the storage refuses it with
        :class:`LeaseLost` once the lease expired or another owner took it. The lease
        is released on exit, whatever happened, including ``KeyboardInterrupt``. (An
        interrupt landing between the acquisition and the start of the block cannot be
        caught in Python; that lease ends when it expires. A release that fails raises
        from the ``with`` and leaves the lease held, as it was: it ends when it expires.)
        """
        result = self.acquire_lock(session_id, owner_id, timeout=timeout)
        if not result.acquired:
            raise LockTimeout(session_id, owner_id, result.holder_id, timeout)
        assert result.token is not None
        try:
            with _holding(self, session_id, owner_id, result.token):
                yield result
        finally:
            with contextlib.suppress(SessionNotFound):  # deleted in the block: its lease went with it
                self.release_lock(session_id, owner_id)

    def with_lock(self, session_id: str, owner_id: str, fn: Callable[[], _T], *,
                  timeout: float | None = None) -> _T:
        """Run ``fn()`` holding the lease and return its result; see :meth:`lock`."""
        with self.lock(session_id, owner_id, timeout=timeout):
            return fn()


_FREE: Mapping[str, Any] = types.MappingProxyType({"owner": None, "token": 0, "queue": ()})  # no record yet
_HOLDER_FIELDS = frozenset({"owner", "count", "expiresAt", "process"})  # what a release takes out of a record
_TOKEN_RANGE = 256  # fencing tokens a process reserves with one synced write (see _next_token)


def _whole(v: object) -> int:
    """``v`` when it is a non-negative integer, else 0."""
    return v if type(v) is int and v >= 0 else 0


def _lease_fields_ok(lease: Mapping[str, Any]) -> bool:
    """Whether a lease record is whole and well-formed (see :meth:`SessionStore._normal_lease`)."""
    get = lease.get
    token = get("token")
    if type(token) is not int or token < 0 or get("corrupt"):
        return False
    queue = get("queue")
    if queue and (type(queue) is not list or not all(
            type(w) is list and len(w) == 2 and type(w[0]) is str and type(w[1]) is int and w[1] >= 0
            for w in queue)):
        return False
    reserved = get("reserved")
    if reserved is not None and (type(reserved) is not int or reserved < token or type(get("reservedBy")) is not str):
        return False
    owner = get("owner")
    if owner is None:
        return True
    count, expires = get("count"), get("expiresAt")
    return (type(owner) is str and type(count) is int and count >= 1 and type(expires) is int and expires >= 0
            and type(get("process", "")) is str)


class _LeaseWait:
    """One owner waiting for a session's lease: its attempts, its place in the queue,
    and the pause between attempts. The waiting itself is the caller's, so that
    :meth:`SessionStore.acquire_lock` blocks a thread and the asyncio facade awaits
    without one."""

    __slots__ = ("deadline", "owner", "place", "session_id", "store", "waiter")

    def __init__(self, store: _LeasedStore, session_id: str, owner_id: str, timeout: float | None) -> None:
        self.store, self.session_id, self.owner = store, session_id, owner_id
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.waiter: str | None = None if timeout == 0 else f"{_PROCESS}:{next(_WAITER_IDS)}"
        self.place = -1

    def attempt(self) -> LockResult:
        result, self.place = self.store._try_acquire(self.session_id, self.owner, self.waiter)
        return result

    def pause(self, behind: float = _POLL_BEHIND) -> float | None:
        """Seconds until the next look, ``None`` when the time is up. The first in the
        queue looks often; the others (``behind``), whose turn cannot come first, less."""
        pause = _POLL if self.place <= 0 else behind
        if self.deadline is None:
            return pause
        remaining = self.deadline - time.monotonic()
        return None if remaining <= 0 else min(pause, remaining)

    def takeable(self) -> bool:
        if self.waiter is None:
            return True
        try:
            takeable, self.place = self.store._looks_takeable(self.session_id, self.waiter)
        except (SessionStoreError, OSError):
            return True  # let the attempt raise it
        return takeable

    def done(self) -> None:
        if self.waiter is not None:
            self.store._leave_queue(self.session_id, self.waiter)
            self.waiter = None


class _WriteScope:
    """The exclusive scope of every write (:meth:`_LeasedStore._write`, and the store's
    own lease and repair writes through ``_writing``): a class, not a generator,
    because it is on every write.

    Takes the store's turn first when its storage's writes are local (see
    :attr:`Storage.local_writes`: the scopes of a process then run one at a time). The
    turn is never waited for holding a lock, nor a session's lock waited for holding
    the turn (it is let go meanwhile), so that neither waits on the other. Then it
    holds ``state.lock`` and the storage's ``writing``, catches the tree up, and
    checks the lease of ``fence`` (an owner and token, see ``_fence``) there. When the scope fails after
    the cache took records the storage may have discarded (a transaction rolled
    back), the cache is dropped and reloaded on next use. Leaving it saves the
    storage's tally every few hundred records written, so that counts stay cheap.
    """

    __slots__ = ("_catch_up", "_chain", "_entered_at", "_fence", "_state", "_store", "_turn", "_writing")

    def __init__(self, store: _LeasedStore, state: _Session, catch_up: bool,
                 fence: tuple[str | None, int | None] | None, chain: bool) -> None:
        self._store, self._state, self._catch_up, self._fence = store, state, catch_up, fence
        self._chain = chain
        self._writing: contextlib.AbstractContextManager[Any] | None = None
        self._entered_at: Position = (0, 0)
        self._turn: threading.RLock | None = None  # the store's turn, when this scope took it

    def __enter__(self) -> _Session:
        state, store = self._state, self._store
        turn = self._turn = store._turn
        if turn is None:
            state.lock.acquire()
        else:  # never wait for the session holding the turn: a reader may hold it long (a cold load)
            while True:
                turn.acquire()
                if state.lock.acquire(blocking=False):
                    break
                turn.release()
                state.lock.acquire()
                state.lock.release()
        try:
            return self._enter(state, store)
        except BaseException:
            if turn is not None:
                turn.release()
            raise

    def _enter(self, state: _Session, store: _LeasedStore) -> _Session:
        """The scope once ``state.lock`` is held (let go here on failure)."""
        try:
            writing = store._storage.writing(state.session_id)
            try:
                writing.__enter__()
            except SessionNotFound:
                store._forget_deleted(state)
                raise
            except StorageError:
                raise
            except OSError as e:
                raise _storage_error(e, f"write session {state.session_id!r}") from e
            try:
                if self._catch_up:
                    store._catch_up(state, writer=True)
                elif state.deleted:
                    raise SessionNotFound(state.session_id)
                if self._fence is not None:
                    store._check_lease(state, *self._fence)
            except BaseException as e:
                writing.__exit__(type(e), e, e.__traceback__)
                if isinstance(e, OSError) and not isinstance(e, StorageError):
                    raise _storage_error(e, f"read session {state.session_id!r}") from e
                raise
            self._writing = writing
            self._entered_at = state.position
            if self._chain:
                state.batch = []
            return state
        except BaseException:
            state.lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        writing, self._writing = self._writing, None
        state = self._state
        # Whether the cache took records the storage may not hold: written in this scope
        # (the position moved), or applied and not written yet (a chain's batch).
        changed = state.position != self._entered_at or bool(state.batch)
        state.batch = None
        try:
            if writing is not None:
                try:
                    if exc_type is not None and changed:
                        try:  # a failed write leaves no trace: its records are cut off again
                            self._store._storage.rollback(state.session_id, self._entered_at)
                        except (SessionStoreError, OSError) as e:
                            _log.error("could not undo a failed write to session %s: %s", state.session_id, e)
                    if exc_type is None and state.untallied >= _TALLY_EVERY and state.loaded:
                        with contextlib.suppress(SessionStoreError, OSError):
                            self._store._storage.write_tally(state.session_id, state.position, state.tally())
                            state.untallied = 0
                except BaseException:  # whatever happens, the storage's lock is let go
                    writing.__exit__(exc_type, exc, tb)
                    raise
                try:
                    writing.__exit__(exc_type, exc, tb)
                except BaseException as e:
                    exc_type = exc_type or StorageError
                    if isinstance(e, OSError) and not isinstance(e, StorageError):
                        raise _storage_error(e, f"write session {state.session_id!r}") from e
                    raise
        finally:
            try:
                if exc_type is not None and changed:
                    self._store._drop_tree(state)
            finally:
                turn, self._turn = self._turn, None
                state.lock.release()
                if turn is not None:
                    turn.release()
        self._store._trim()


_TALLY_EVERY = 256  # records written between two saves of a session's tally
