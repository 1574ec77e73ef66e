"""session_store_openai_agents: a session store as an OpenAI Agents SDK ``Session``.

Two lines give an agent a history that survives crashes, branches, and never loses
what was popped or cleared::

    from session_store_openai_agents import SessionStoreSession

    session = SessionStoreSession("user:alice", store)   # a SessionStore or an AsyncSessionStore
    result = await Runner.run(agent, "Hello!", session=session)

Every input item the SDK adds is one message of the key's session, stored as given (the
item is the message's content), in order, on the current branch; ``get_items`` reads
them back from the head. ``pop_item`` and ``clear_session`` move the head (back one
message; to an empty branch) and delete nothing: the old messages stay in the tree,
readable with ``store.get_tree(session_id)``, and moving the head back
(``store.move_head``) restores them. ``store.build_context(sid, format="openai" |
"anthropic")`` turns what the SDK wrote into a request for either API.

With ``owner=``, the writes go under the session's lease, so that runners in other
tasks, threads or processes (each with its own owner) never interleave: wrap each run
in ``async with session.turn():`` to hold the lease from the first read of the history
to the last write of the run (see :meth:`SessionStoreSession.turn`).

Imports ``session_store`` and the ``openai-agents`` package (``pip install
"session-store[openai-agents]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreSession"]

import asyncio
import contextlib
import contextvars
import copy
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit

from session_store import (
    AsyncSessionStore,
    InvalidInput,
    InvalidMessage,
    Message,
    SessionNotFound,
    SessionStore,
)

_T = TypeVar("_T")

# ============================================================================
# Stores
# ============================================================================

# One AsyncSessionStore per SessionStore given to this module, made on first use and
# shared by every SessionStoreSession on that store: its executor runs the blocking
# calls, and it waits for leases on the event loop without occupying a thread. Keyed by
# id(): the wrapper holds the store and the store holds the wrapper (its lease
# listener), so an entry lives exactly as long as its store, and an id is never reused
# while its entry lives.
_WRAPPERS: weakref.WeakValueDictionary[int, AsyncSessionStore] = weakref.WeakValueDictionary()


def _async_store(store: SessionStore | AsyncSessionStore) -> AsyncSessionStore:
    if isinstance(store, AsyncSessionStore):
        return store
    if not isinstance(store, SessionStore):
        raise InvalidInput(f"store must be a SessionStore or an AsyncSessionStore, not {type(store).__name__}")
    wrapper = _WRAPPERS.get(id(store))
    if wrapper is None or wrapper.sync is not store:
        wrapper = _WRAPPERS[id(store)] = AsyncSessionStore(store)
    return wrapper


# The sessions whose turn the current task holds (see SessionStoreSession.turn).
_TURNS: contextvars.ContextVar[tuple[SessionStoreSession, ...]] = contextvars.ContextVar(
    "session_store_openai_agents_turns", default=())

# Roles of the Responses items that are not messages, for records that read well in a
# tree view; build_context reads the item itself, whatever the record's role.
_ITEM_ROLES = {"function_call": "assistant", "function_call_output": "tool", "reasoning": "assistant",
               "custom_tool_call": "assistant", "custom_tool_call_output": "tool"}


def _record_of(item: Any) -> tuple[str, str]:
    """The role and type of the record holding a Responses input item; refuses what
    is not a JSON object (before anything of a batch is written)."""
    if not isinstance(item, dict):
        raise InvalidMessage(f"session items are Responses input items (dicts), not {type(item).__name__}")
    try:
        same = json.loads(json.dumps(item, allow_nan=False)) == item
    except (TypeError, ValueError, RecursionError):
        same = False
    if not same:
        raise InvalidMessage(f"a session item must be JSON (string keys, no NaN, no objects): {item!r:.200}")
    kind = item.get("type")
    kind = kind if isinstance(kind, str) and kind else "message"
    role = item.get("role")
    role = role if isinstance(role, str) and role else _ITEM_ROLES.get(kind, kind)
    if kind in ("reset", "damaged") or role in ("reset", "damaged"):
        # types the store gives a meaning to: the item keeps its own type, in the content
        return "user", "item"
    return role, kind


# ============================================================================
# The session
# ============================================================================


class SessionStoreSession:
    """An OpenAI Agents SDK ``Session`` (``agents.memory.Session``) kept in a session store.

    ``SessionStoreSession(key, store, *, owner=None, session_settings=None)``:

    - ``key``: the store's key of the conversation (``"user:alice"``), also the
      SDK's ``session_id``; the session is created on first use.
    - ``store``: a :class:`~session_store.SessionStore` (its calls then run on an
      executor shared by every adapter on that store) or an
      :class:`~session_store.AsyncSessionStore`.
    - ``owner``: a name for this runner (a worker, a process). Each write then holds
      the session's lease as ``owner``, waiting while another owner holds it, and
      :meth:`turn` holds it across a whole run. Two runners that must not interleave
      need two owners: a lease is re-entrant for its owner.
    - ``session_settings``: the SDK's ``SessionSettings`` (or a dict of them), e.g.
      a default ``limit`` for :meth:`get_items`.

    Items are stored one message each, the item itself as the content (so
    ``get_items`` returns exactly what ``add_items`` took, as plain copies);
    ``pop_item`` and ``clear_session`` move the branch's head and delete nothing.
    Every method accepts the SDK's optional ``wrapper`` keyword (the run's context),
    and ignores it.
    """

    session_settings: SessionSettings | None = None

    def __init__(self, key: str, store: SessionStore | AsyncSessionStore, *, owner: str | None = None,
                 session_settings: SessionSettings | dict[str, Any] | None = None) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"key must be a non-empty string, not {key!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise InvalidInput(f"owner must be a non-empty string or None, not {owner!r}")
        self.session_id = key
        self.key = key
        self.owner = owner
        self.store = _async_store(store)
        self.session_settings = (coerce_session_settings(session_settings) if session_settings is not None
                                 else SessionSettings())
        self._sid: str | None = None

    def __repr__(self) -> str:
        return f"SessionStoreSession({self.key!r}, {self.store!r}, owner={self.owner!r})"

    async def store_session_id(self) -> str:
        """The store's id of this key's session (creating the session on first use)."""
        if self._sid is None:
            self._sid = await self.store.resolve(self.key)
        return self._sid

    async def _on_session(self, fn: Callable[[str], Awaitable[_T]]) -> _T:
        """``fn(session id)``; once more with the key resolved again if the session
        was deleted meanwhile (the key then names a new, empty one)."""
        try:
            return await fn(await self.store_session_id())
        except SessionNotFound:
            self._sid = None
            return await fn(await self.store_session_id())

    # -- the lease ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, *, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold the session's lease as ``owner`` for the ``async with`` block::

            async with session.turn():
                result = await Runner.run(agent, "Next question", session=session)

        One ``Runner.run`` reads the history once (``get_items``, before the first
        model call) and adds items after each step until the run ends; held across
        the run, the lease keeps every other owner's reads-then-writes out of it, so
        two runners take turns instead of answering from the same history and
        interleaving their items. Writes in the block (of this task, and of tasks it
        starts) are fenced: refused with :class:`~session_store.LeaseLost` if the
        lease was lost. The lease is renewed while the block runs, and released on
        exit, whatever happened.

        ``timeout``: seconds to wait for the lease (``None``: as long as it takes),
        then :class:`~session_store.LockTimeout`. Re-entrant within a task.
        :class:`~session_store.InvalidInput` without ``owner``.
        """
        if self.owner is None:
            raise InvalidInput("turn() holds the session's lease for an owner: make the session with owner=...")
        if self in _TURNS.get():
            yield
            return
        sid = await self.store_session_id()
        async with self.store.lock(sid, self.owner, timeout=timeout):
            held = _TURNS.set((*_TURNS.get(), self))
            renewal = asyncio.create_task(self._renew(sid, self.owner))
            try:
                yield
            finally:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
                try:
                    _TURNS.reset(held)
                except ValueError:  # left in another context than entered
                    _TURNS.set(tuple(s for s in _TURNS.get() if s is not self))

    async def _renew(self, sid: str, owner: str) -> None:
        """Renew the lease every third of its length, until it is lost or the turn ends."""
        while True:
            await asyncio.sleep(self.store.sync.lock_timeout_ms / 3000)
            if not (await self.store.renew_lock(sid, owner)).acquired:
                return  # lost: the next write raises LeaseLost

    def _write_scope(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The scope of one write: the lease for an owner (a no-op inside its turn)."""
        return self.turn() if self.owner is not None else contextlib.nullcontext()

    # -- the Session protocol ----------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[TResponseInputItem]:
        """The items on the current branch, oldest first: the last ``limit`` of them
        (default: ``session_settings.limit``; ``None``: all). With a limit this reads
        O(limit) messages back from the head, whatever the session's length. A reset
        marker (:meth:`~session_store.SessionStore.reset`) is not an item: it is left out.
        """
        limit = resolve_session_limit(limit, self.session_settings)
        if limit is not None and limit <= 0:
            return []

        async def read(sid: str) -> list[Message]:
            return await self.store.get_linear_history(sid, limit=None if limit is None else limit + 1)
        path = [m for m in await self._on_session(read) if m.type != "reset"]
        if limit is not None:
            path = path[-limit:]
        return [cast(TResponseInputItem, copy.deepcopy(m.content)) for m in path]

    async def add_items(self, items: list[TResponseInputItem], *, wrapper: Any = None) -> None:
        """Append ``items`` in order, one message each, after the head (durable when
        this returns, with the store's ``durable``: one sync for them all). A bad item
        (not a dict, not JSON) raises :class:`~session_store.InvalidMessage` before
        anything is written; the items are written all or none
        (:meth:`~session_store.SessionStore.append_many`)."""
        records = [{"role": role, "type": kind, "content": item}
                   for item, (role, kind) in zip(items, [_record_of(item) for item in items], strict=True)]

        async def write(sid: str) -> None:
            async with self._write_scope():
                await self.store.append_many(sid, records)
        if items:
            await self._on_session(write)

    async def pop_item(self, *, wrapper: Any = None) -> TResponseInputItem | None:
        """Move the head back over the last item and return it (``None`` when there
        is none). The item stays in the tree: ``store.move_head(sid, its id)`` puts it
        back. Without ``owner`` this reads then moves: a writer between the two (another
        process on the same key) may be moved over too."""
        async def pop(sid: str) -> TResponseInputItem | None:
            async with self._write_scope():
                path = await self.store.get_linear_history(sid, limit=2)
                if not path or path[-1].type == "reset":
                    return None
                await self.store.move_head(sid, path[-2].id if len(path) == 2 else None)
                return cast(TResponseInputItem, copy.deepcopy(path[-1].content))
        return await self._on_session(pop)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Empty the current branch: the next :meth:`get_items` returns ``[]`` and the
        next item starts a new root. Nothing is deleted; no text is added."""
        async def clear(sid: str) -> None:
            async with self._write_scope():
                await self.store.move_head(sid, None)
        await self._on_session(clear)
