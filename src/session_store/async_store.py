"""asyncio: :class:`AsyncSessionStore`, every public method of the store as a coroutine.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

from .auto_reset import ResetResult
from .catalog import SessionStore
from .errors import _T, InvalidInput, LockTimeout, SessionNotFound, SessionStoreError, StoreClosed
from .file_systems import FileSystem
from .leases import _POLL_BEHIND, _holding, _LeaseWait
from .records import (
    _HEAD,
    Branch,
    CheckReport,
    Event,
    LockInfo,
    LockResult,
    Message,
    PruneReport,
    SearchHit,
    SessionMetadata,
)
from .storage import Storage
from .validation import _check_name, _check_timeout

#
# AsyncSessionStore runs the store's blocking calls on a bounded executor of its own
# (never the loop's default one), copying the caller's context into the worker
# thread, so that a lock() block's holds (a ContextVar) follow the task into its
# calls. Waiting for a lease is the one call that is not just "run it on the
# executor": the attempts are (short, each under the storage's lock), the waiting
# between them is an asyncio sleep, woken early when a lease of this process is
# released. So a thousand tasks waiting for leases occupy no thread.


class AsyncSessionStore:
    """Every public method of :class:`SessionStore` as a coroutine, with the same
    names, arguments, results and errors, for asyncio programs.

    ``AsyncSessionStore(storage=None, *, max_workers=8, **options)``: wraps a ready
    :class:`SessionStore` (``AsyncSessionStore(store)``) or builds one from the same
    arguments as :class:`SessionStore` (a :class:`Storage`, a :class:`FileSystem`,
    ``storage_dir=``, ``durable=``...). Blocking I/O runs on a thread pool of at most
    ``max_workers`` threads of its own; waiting for a lease runs on the event loop and
    occupies no thread, however long it lasts and however many tasks wait.

    Use it as an async context manager (``async with AsyncSessionStore(...) as
    store:``) or call :meth:`close`. Safe to share between tasks and between event
    loops in several threads. ``async with store.lock(sid, owner):`` holds a lease for
    the block: every write of the task inside it is fenced, as with the sync store.
    Cancelling a task that waits for a lease leaves no lease and no place in the
    queue behind. :attr:`sync` is the wrapped :class:`SessionStore`.
    """

    def __init__(self, storage: SessionStore | Storage | FileSystem | None = None, *, max_workers: int = 8,
                 **options: Any) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise InvalidInput(f"max_workers must be an integer >= 1, not {max_workers!r}")
        if isinstance(storage, SessionStore):
            if options:
                raise InvalidInput("give AsyncSessionStore a SessionStore, or the arguments to make one, not both")
            self._store = storage
        else:
            self._store = SessionStore(storage, **options)
        import concurrent.futures  # here: importing asyncio and its kin costs every other user ~50 ms

        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="session-store")
        self._closed = False
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._waiters_lock = threading.Lock()
        self._store._lease_listeners = (*self._store._lease_listeners, self._wake)

    def __repr__(self) -> str:
        return f"AsyncSessionStore({self._store!r})"

    @property
    def sync(self) -> SessionStore:
        """The :class:`SessionStore` this wraps."""
        return self._store

    @property
    def storage(self) -> Storage:
        """The :class:`Storage` the store keeps its sessions in."""
        return self._store.storage

    async def __aenter__(self) -> AsyncSessionStore:
        await self.init()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` on the executor, in a copy of the caller's context."""
        import asyncio

        context = contextvars.copy_context()
        try:
            future = self._executor.submit(context.run, functools.partial(fn, *args, **kwargs))
        except RuntimeError:  # the executor is shut down: the store was closed
            raise StoreClosed("store is closed") from None
        return await asyncio.wrap_future(future)

    # -- open and close ------------------------------------------------------------

    async def init(self) -> None:
        """See :meth:`SessionStore.init`."""
        await self._run(self._store.init)

    async def flush(self) -> None:
        """See :meth:`SessionStore.flush`."""
        await self._run(self._store.flush)

    async def close(self) -> None:
        """See :meth:`SessionStore.close`; then the executor's threads end. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._store.close)
        finally:
            self._store._lease_listeners = tuple(x for x in self._store._lease_listeners if x != self._wake)
            self._executor.shutdown(wait=False)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """See :meth:`SessionStore.subscribe` (not a coroutine: it does no I/O). The
        callback runs in the executor thread that made the change."""
        return self._store.subscribe(callback)

    # -- sessions ------------------------------------------------------------------

    @overload
    async def resolve(self, key: str) -> str: ...

    @overload
    async def resolve(self, key: str, *, create: Literal[True]) -> str: ...

    @overload
    async def resolve(self, key: str, *, create: bool) -> str | None: ...

    async def resolve(self, key: str, *, create: bool = True) -> str | None:
        """See :meth:`SessionStore.resolve`."""
        return await self._run(self._store.resolve, key, create=create)

    async def get_keys(self, prefix: str = "") -> dict[str, str]:
        """See :meth:`SessionStore.get_keys`."""
        return await self._run(self._store.get_keys, prefix)

    async def list_sessions(self, *, key_prefix: str | None = None, limit: int | None = None,
                            offset: int = 0) -> list[SessionMetadata]:
        """See :meth:`SessionStore.list_sessions`."""
        return await self._run(self._store.list_sessions, key_prefix=key_prefix, limit=limit, offset=offset)

    async def set_title(self, session_id: str, title: str | None, *, owner_id: str | None = None,
                        fencing_token: int | None = None) -> None:
        """See :meth:`SessionStore.set_title`."""
        await self._run(self._store.set_title, session_id, title, owner_id=owner_id, fencing_token=fencing_token)

    async def search(self, query: str, *, key_prefix: str | None = None, limit: int = 20,
                     include_archived: bool = True) -> list[SearchHit]:
        """See :meth:`SessionStore.search`."""
        return await self._run(self._store.search, query, key_prefix=key_prefix, limit=limit,
                               include_archived=include_archived)

    async def prune(self, *, older_than: datetime.timedelta | float, key_prefix: str | None = None,
                    now: datetime.datetime | float | None = None, dry_run: bool = False,
                    archive_to: str | os.PathLike[str] | None = None) -> PruneReport:
        """See :meth:`SessionStore.prune`."""
        return await self._run(self._store.prune, older_than=older_than, key_prefix=key_prefix, now=now,
                               dry_run=dry_run, archive_to=archive_to)

    async def export_session(self, session_id: str) -> list[str]:
        """See :meth:`SessionStore.export_session`."""
        return await self._run(self._store.export_session, session_id)

    async def restore_session(self, lines: Iterable[str], *, key: str | None = None) -> str:
        """See :meth:`SessionStore.restore_session`."""
        return await self._run(self._store.restore_session, list(lines), key=key)

    async def has_key(self, key: str) -> bool:
        """See :meth:`SessionStore.has_key`."""
        return await self._run(self._store.has_key, key)

    async def has_session(self, session_id: str) -> bool:
        """See :meth:`SessionStore.has_session`."""
        return await self._run(self._store.has_session, session_id)

    async def get_all_session_ids(self) -> list[str]:
        """See :meth:`SessionStore.get_all_session_ids`."""
        return await self._run(self._store.get_all_session_ids)

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        """See :meth:`SessionStore.get_metadata`."""
        return await self._run(self._store.get_metadata, session_id)

    async def delete_session(self, session_id: str, *, owner_id: str | None = None,
                             fencing_token: int | None = None) -> None:
        """See :meth:`SessionStore.delete_session`."""
        await self._run(self._store.delete_session, session_id, owner_id=owner_id, fencing_token=fencing_token)

    async def fork_session(self, session_id: str, message_id: str | None = None, *, key: str | None = None,
                           owner_id: str | None = None, fencing_token: int | None = None) -> str:
        """See :meth:`SessionStore.fork_session`."""
        return await self._run(self._store.fork_session, session_id, message_id, key=key, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def import_session(self, key: str, messages: list[Message], *, branches: list[Branch] | None = None,
                             current: str = "main", forked_from: tuple[str, str | None] | None = None,
                             title: str | None = None) -> str:
        """See :meth:`SessionStore.import_session`."""
        return await self._run(self._store.import_session, key, messages, branches=branches, current=current,
                               forked_from=forked_from, title=title)

    async def import_messages(self, session_id: str, messages: Sequence[Message], *,
                              branches: Sequence[Branch] = (), owner_id: str | None = None,
                              fencing_token: int | None = None) -> list[Message]:
        """See :meth:`SessionStore.import_messages`."""
        return await self._run(self._store.import_messages, session_id, messages, branches=branches,
                               owner_id=owner_id, fencing_token=fencing_token)

    async def check(self, session_id: str | None = None) -> CheckReport:
        """See :meth:`SessionStore.check`."""
        return await self._run(self._store.check, session_id)

    async def repair(self, session_id: str | None = None) -> CheckReport:
        """See :meth:`SessionStore.repair`."""
        return await self._run(self._store.repair, session_id)

    # -- messages ------------------------------------------------------------------

    async def append(self, session_id: str, *, role: str, content: Any, type: str | None = None,
                     parent_id: str | None = _HEAD, id: str | None = None, owner_id: str | None = None,
                     fencing_token: int | None = None, **fields: Any) -> Message:
        """See :meth:`SessionStore.append`; inside ``async with store.lock(...)`` the
        owner and token are implied for the task."""
        return await self._run(self._store.append, session_id, role=role, content=content, type=type,
                               parent_id=parent_id, id=id, owner_id=owner_id, fencing_token=fencing_token, **fields)

    async def edit(self, session_id: str, message_id: str, *, content: Any, role: str | None = None,
                   type: str | None = None, owner_id: str | None = None, fencing_token: int | None = None,
                   **fields: Any) -> Message:
        """See :meth:`SessionStore.edit`."""
        return await self._run(self._store.edit, session_id, message_id, content=content, role=role, type=type,
                               owner_id=owner_id, fencing_token=fencing_token, **fields)

    async def regenerate(self, session_id: str, message_id: str, *, owner_id: str | None = None,
                         fencing_token: int | None = None) -> Branch:
        """See :meth:`SessionStore.regenerate`."""
        return await self._run(self._store.regenerate, session_id, message_id, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def append_many(self, session_id: str, messages: Sequence[Mapping[str, Any]], *,
                          parent_id: str | None = _HEAD, owner_id: str | None = None,
                          fencing_token: int | None = None) -> list[Message]:
        """See :meth:`SessionStore.append_many`."""
        return await self._run(self._store.append_many, session_id, messages, parent_id=parent_id,
                               owner_id=owner_id, fencing_token=fencing_token)

    async def reset(self, session_id: str, *, owner_id: str | None = None, fencing_token: int | None = None,
                    **overrides: Any) -> ResetResult:
        """See :meth:`SessionStore.reset`."""
        return await self._run(self._store.reset, session_id, owner_id=owner_id, fencing_token=fencing_token,
                               **overrides)

    async def get_messages(self, session_id: str) -> list[Message]:
        """See :meth:`SessionStore.get_messages`."""
        return await self._run(self._store.get_messages, session_id)

    async def get_message(self, session_id: str, message_id: str) -> Message:
        """See :meth:`SessionStore.get_message`."""
        return await self._run(self._store.get_message, session_id, message_id)

    async def get_linear_history(self, session_id: str, leaf_id: str | None = None, *,
                                 limit: int | None = None) -> list[Message]:
        """See :meth:`SessionStore.get_linear_history`."""
        return await self._run(self._store.get_linear_history, session_id, leaf_id, limit=limit)

    async def get_children(self, session_id: str, message_id: str) -> list[Message]:
        """See :meth:`SessionStore.get_children`."""
        return await self._run(self._store.get_children, session_id, message_id)

    async def has_children(self, session_id: str, message_id: str) -> bool:
        """See :meth:`SessionStore.has_children`."""
        return await self._run(self._store.has_children, session_id, message_id)

    async def get_tree(self, session_id: str, root_id: str | None = None) -> list[Message]:
        """See :meth:`SessionStore.get_tree`."""
        return await self._run(self._store.get_tree, session_id, root_id)

    async def get_leaves(self, session_id: str) -> list[Message]:
        """See :meth:`SessionStore.get_leaves`."""
        return await self._run(self._store.get_leaves, session_id)

    async def get_branch_points(self, session_id: str) -> list[Message]:
        """See :meth:`SessionStore.get_branch_points`."""
        return await self._run(self._store.get_branch_points, session_id)

    @overload
    async def build_context(self, session_id: str, leaf_id: str | None = None, *,
                            format: Literal["openai"] = "openai", strict: bool = False,
                            include_reset_markers: bool = False, limit: int | None = None
                            ) -> list[dict[str, Any]]: ...

    @overload
    async def build_context(self, session_id: str, leaf_id: str | None = None, *,
                            format: Literal["anthropic"], strict: bool = False,
                            include_reset_markers: bool = False, limit: int | None = None) -> dict[str, Any]: ...

    async def build_context(self, session_id: str, leaf_id: str | None = None, *, format: str = "openai",
                            strict: bool = False, include_reset_markers: bool = False, limit: int | None = None
                            ) -> list[dict[str, Any]] | dict[str, Any]:
        """See :meth:`SessionStore.build_context`."""
        return await self._run(self._store.build_context, session_id, leaf_id, format=format,
                               strict=strict, include_reset_markers=include_reset_markers, limit=limit)

    # -- branches ------------------------------------------------------------------

    async def create_branch(self, session_id: str, name: str, leaf_id: str, *, owner_id: str | None = None,
                            fencing_token: int | None = None) -> Branch:
        """See :meth:`SessionStore.create_branch`."""
        return await self._run(self._store.create_branch, session_id, name, leaf_id, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def get_branches(self, session_id: str) -> list[Branch]:
        """See :meth:`SessionStore.get_branches`."""
        return await self._run(self._store.get_branches, session_id)

    async def get_branch(self, session_id: str, name: str) -> Branch | None:
        """See :meth:`SessionStore.get_branch`."""
        return await self._run(self._store.get_branch, session_id, name)

    async def switch_to_branch(self, session_id: str, name: str, *, owner_id: str | None = None,
                               fencing_token: int | None = None) -> str | None:
        """See :meth:`SessionStore.switch_to_branch`."""
        return await self._run(self._store.switch_to_branch, session_id, name, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def get_head(self, session_id: str) -> str | None:
        """See :meth:`SessionStore.get_head`."""
        return await self._run(self._store.get_head, session_id)

    async def get_current_branch(self, session_id: str) -> str:
        """See :meth:`SessionStore.get_current_branch`."""
        return await self._run(self._store.get_current_branch, session_id)

    async def move_head(self, session_id: str, message_id: str | None, *, branch: str | None = None,
                        owner_id: str | None = None, fencing_token: int | None = None) -> Branch:
        """See :meth:`SessionStore.move_head`."""
        return await self._run(self._store.move_head, session_id, message_id, branch=branch, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def delete_branch(self, session_id: str, name: str, *, owner_id: str | None = None,
                            fencing_token: int | None = None) -> Branch:
        """See :meth:`SessionStore.delete_branch`."""
        return await self._run(self._store.delete_branch, session_id, name, owner_id=owner_id,
                               fencing_token=fencing_token)

    async def rename_branch(self, session_id: str, old: str, new: str, *, owner_id: str | None = None,
                            fencing_token: int | None = None) -> Branch:
        """See :meth:`SessionStore.rename_branch`."""
        return await self._run(self._store.rename_branch, session_id, old, new, owner_id=owner_id,
                               fencing_token=fencing_token)

    # -- leases ---------------------------------------------------------------------

    def _wake(self, session_id: str) -> None:
        """A lease of this process was released (any thread): wake this store's waiters
        for it on their own loops."""
        with self._waiters_lock:
            futures = list(self._waiters.get(session_id, ()))
        for future in futures:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                future.get_loop().call_soon_threadsafe(_resolve, future)

    async def _pause(self, session_id: str, seconds: float) -> None:
        """Sleep up to ``seconds``, or until a lease of this session is released here."""
        import asyncio

        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            self._waiters.setdefault(session_id, set()).add(future)
        try:
            await asyncio.wait_for(future, seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._waiters_lock:
                waiting = self._waiters.get(session_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[session_id]

    async def _attempt(self, wait: _LeaseWait) -> LockResult:
        """One attempt on the executor. If the task is cancelled meanwhile, an attempt
        that succeeds anyway gives its lease back: a cancelled waiter keeps nothing."""
        import asyncio

        context = contextvars.copy_context()
        future = self._executor.submit(context.run, wait.attempt)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            store, sid, owner = self._store, wait.session_id, wait.owner

            def give_back(done: concurrent.futures.Future[LockResult]) -> None:
                if not done.cancelled() and done.exception() is None and done.result().acquired:
                    with contextlib.suppress(SessionStoreError, OSError, RuntimeError):
                        self._executor.submit(store.release_lock, sid, owner)
            future.add_done_callback(give_back)
            raise

    async def acquire_lock(self, session_id: str, owner_id: str, *, timeout: float | None = 0) -> LockResult:
        """See :meth:`SessionStore.acquire_lock`. Waiting runs on the event loop: it
        occupies no thread, and other tasks run meanwhile."""
        _check_name("owner id", owner_id)
        _check_timeout(timeout)
        wait = _LeaseWait(self._store, session_id, owner_id, timeout)
        try:
            while True:
                result = await self._attempt(wait)
                if result.acquired:
                    return result
                pause = wait.pause(_POLL_BEHIND * 10)  # waiters here are woken by releases here
                if pause is None:
                    return result
                while True:
                    await self._pause(session_id, pause)
                    pause = wait.pause(_POLL_BEHIND * 10)
                    if pause is None or await self._run(wait.takeable):
                        break
        finally:
            if wait.waiter is not None:  # leave the queue, even when cancelled: never awaited
                with contextlib.suppress(RuntimeError):
                    self._executor.submit(contextvars.copy_context().run, wait.done)

    async def renew_lock(self, session_id: str, owner_id: str) -> LockResult:
        """See :meth:`SessionStore.renew_lock`."""
        return await self._run(self._store.renew_lock, session_id, owner_id)

    async def release_lock(self, session_id: str, owner_id: str) -> bool:
        """See :meth:`SessionStore.release_lock`."""
        return await self._run(self._store.release_lock, session_id, owner_id)

    async def is_locked(self, session_id: str) -> bool:
        """See :meth:`SessionStore.is_locked`."""
        return await self._run(self._store.is_locked, session_id)

    async def get_lock(self, session_id: str) -> LockInfo | None:
        """See :meth:`SessionStore.get_lock`."""
        return await self._run(self._store.get_lock, session_id)

    @contextlib.asynccontextmanager
    async def lock(self, session_id: str, owner_id: str, *, timeout: float | None = None
                   ) -> AsyncIterator[LockResult]:
        """See :meth:`SessionStore.lock`: ``async with store.lock(sid, owner):``. The
        holds are the task's (a ContextVar): writes of this task in the block are
        fenced, and so are those of tasks it creates inside the block (they start with
        a copy of its context); other tasks are not the holder. Released on exit,
        cancellation included."""
        import asyncio

        result = await self.acquire_lock(session_id, owner_id, timeout=timeout)
        if not result.acquired:
            raise LockTimeout(session_id, owner_id, result.holder_id, timeout)
        assert result.token is not None
        try:
            with _holding(self._store, session_id, owner_id, result.token):
                yield result
        finally:
            release = self._executor.submit(self._store.release_lock, session_id, owner_id)
            with contextlib.suppress(SessionNotFound):  # deleted in the block: its lease went with it
                await asyncio.shield(asyncio.wrap_future(release))  # cancelled meanwhile: it still runs

    async def with_lock(self, session_id: str, owner_id: str, fn: Callable[[], Any], *,
                        timeout: float | None = None) -> Any:
        """See :meth:`SessionStore.with_lock`: ``fn()`` runs on the event loop holding
        the lease (awaited when it returns an awaitable) and its result is returned."""
        async with self.lock(session_id, owner_id, timeout=timeout):
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
