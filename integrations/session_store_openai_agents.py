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

Branches, turns and usage
-------------------------

The session also has the API of the SDK's ``AdvancedSQLiteSession``, with its method
names, arguments, return shapes and errors (``ValueError`` with its messages, as
:class:`~session_store.InvalidInput`), so code written for it runs on this store::

    await session.store_run_usage(result)                # after each Runner.run
    turns = await session.get_conversation_turns()       # [{"turn": 1, "content": ...}, ...]
    await session.create_branch_from_turn(2, "retry")    # turns before 2, now current
    await session.switch_to_branch("main")
    await session.get_session_usage()                    # {"requests": ..., "total_turns": ...}

Each maps onto the session's tree, and nothing is stored beside it:

- a branch is one of the session's named branches (``store.get_branches(sid)``);
  ``create_branch_from_turn`` names the message before that turn's user message
  (``store.create_branch``, O(1), nothing copied) and switches to it;
  ``switch_to_branch``, ``delete_branch``, ``list_branches`` and
  ``get_items(branch_id=)`` are the store's branch operations and paths;
- turn ``n`` of a branch is the ``n``-th user message on its root -> head path
  (``get_conversation_turns``, ``find_turns_by_content``, ``get_conversation_by_turns``,
  ``get_tool_usage`` read that path);
- ``store_run_usage`` appends a usage record (type ``openai_agents.usage``, naming the
  branch) after the turn's items: it lives in the session, across restarts and
  processes. ``get_items`` and contexts leave it out; a turn's usage is the last
  record of that branch after its user message, so popping the turn's question, or
  deleting the branch, takes its usage away as ``AdvancedSQLiteSession`` deletes it.

Where this differs from ``AdvancedSQLiteSession``, and why:

- The current branch is the session's, kept by the store: every adapter and process
  on the key shares it, and a restart resumes there. ``AdvancedSQLiteSession`` keeps
  it per instance (a new one starts on ``main``).
- Nothing is deleted: ``delete_branch`` removes the name and leaves the messages in
  the tree, and a deleted branch's name can be used again (it reserves names for
  ever, because its instances hold branch names in memory). ``clear_session`` empties
  the current branch only (it deletes every branch and its usage): branches here
  belong to the session, which other tools share; delete them with ``delete_branch``.
- A branch without messages (``main`` before the first item, a branch from turn 1)
  exists: it is listed with 0 messages and can be switched to (it has no rows for it,
  so neither).
- Times (``"timestamp"``, ``"created_at"``) are when a message was stored (a turn a
  branch holds keeps its time) and when the branch was made; ``list_branches`` gives
  ``main`` first, then the branches as they were made.
- Making a branch is two writes (three from turn 1 with nothing before it: made at
  the turn, then emptied): a crash between them leaves the branch made but not
  current. With ``owner=``, one lease holds them all.
- ``store_run_usage`` logs a failure instead of raising it, as ``AdvancedSQLiteSession``
  does, except a write the lease fences out (:class:`~session_store.SessionLocked`,
  :class:`~session_store.LeaseLost`), raised as by every write. Usage is kept under
  the branch's name: ``store.rename_branch`` leaves earlier usage under the old name.
- A process that builds a context of the session without importing this module
  leaves the usage records out and logs it once (``strict=True`` raises): importing
  it registers their context reader.
- ``find_turns_by_content`` skips a user message whose content is neither text nor
  content parts (``AdvancedSQLiteSession`` raises ``TypeError`` on ``None``).

Imports ``session_store`` and the ``openai-agents`` package (``pip install
"session-store[openai-agents]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreSession"]

import asyncio
import contextlib
import contextvars
import copy
import datetime
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit
from agents.result import RunResult

from session_store import (
    AsyncSessionStore,
    Branch,
    BranchExists,
    BranchNotFound,
    InvalidInput,
    InvalidMessage,
    Message,
    SessionLocked,
    SessionNotFound,
    SessionStore,
    register_context_reader,
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
    if kind in ("reset", "damaged") or role in ("reset", "damaged") or kind.partition(".")[0] == _FORMAT:
        # types the store, or this module (a usage record), gives a meaning to: the item
        # keeps its own type, in the content
        return "user", "item"
    return role, kind


# ============================================================================
# Turns, branches and usage: read from the tree
# ============================================================================

# A usage record (store_run_usage): a message of this type on the branch's path, right
# after the items of the turn it counts; its content is
#   {"branch": <the branch it was stored on>, "requests": int, "input_tokens": int,
#    "output_tokens": int, "total_tokens": int,
#    "input_tokens_details": {...} | None, "output_tokens_details": {...} | None}
# (the details as AdvancedSQLiteSession keeps them: the SDK's objects' __dict__). Its turn
# is not stored: it is the number of user items before it on the path. A format only
# gains fields; readers take what they know. Role "usage": no API has it, so a process
# that builds a context without this module imported leaves the record out (and logs it
# once); with it imported, the reader below leaves it out silently.
_FORMAT = "openai_agents"
_USAGE = _FORMAT + ".usage"
_USAGE_FIELDS = ("requests", "input_tokens", "output_tokens", "total_tokens")
_DETAILS = ("input_tokens_details", "output_tokens_details")

_log = logging.getLogger(__name__)

# The item types AdvancedSQLiteSession counts as tool calls (get_tool_usage).
_TOOL_CALLS = frozenset({"tool_call", "function_call", "computer_call", "file_search_call", "web_search_call",
                         "code_interpreter_call", "tool_search_call", "custom_tool_call", "mcp_call",
                         "mcp_approval_request", "shell_call", "apply_patch_call"})
_NAMELESS_TOOLS = frozenset({"computer_call", "file_search_call", "web_search_call", "code_interpreter_call",
                             "shell_call", "apply_patch_call"})


def _read_usage_records(path: list[Message], children: Callable[[str], list[Message]]) -> list[Message]:
    """The context reader of this module's records (see ``register_context_reader``):
    a usage record is bookkeeping, never sent to a model."""
    return [m for m in path if m.type != _USAGE]


register_context_reader(_FORMAT, _read_usage_records)


def _is_item(m: Message) -> bool:
    """Whether a record on a path holds an SDK item (not a reset marker, not usage)."""
    return m.type != "reset" and m.type != _USAGE


def _starts_turn(m: Message) -> bool:
    """Whether a record holds a user message: AdvancedSQLiteSession starts a turn there."""
    return _is_item(m) and isinstance(m.content, dict) and m.content.get("role") == "user"


def _turns(path: Sequence[Message]) -> Iterator[tuple[int, Message]]:
    """Each item of a root -> head path with its turn: the number of user messages up
    to it (0 before the first), as AdvancedSQLiteSession numbers a branch's turns."""
    turn = 0
    for m in path:
        if _starts_turn(m):
            turn += 1
        if _is_item(m):
            yield turn, m


def _usage_by_turn(path: Sequence[Message], branch: str) -> dict[int, dict[str, Any]]:
    """The usage stored on ``branch`` along its path, by turn: a turn's last record wins
    (AdvancedSQLiteSession replaces a turn's row). Records another branch stored before
    this one forked from it are that branch's, as AdvancedSQLiteSession keeps them."""
    turn, found = 0, {}
    for m in path:
        if _starts_turn(m):
            turn += 1
        elif m.type == _USAGE and isinstance(m.content, dict) and m.content.get("branch") == branch:
            found[turn] = m.content
    return found


def _usage_row(record: Any) -> dict[str, Any]:
    """A usage record as AdvancedSQLiteSession's ``get_turn_usage`` returns a row."""
    row: dict[str, Any] = {name: record.get(name, 0) for name in _USAGE_FIELDS}
    row.update({name: copy.deepcopy(record.get(name)) for name in _DETAILS})
    return row


def _details(value: Any, name: str) -> Any:
    """Token details as AdvancedSQLiteSession stores them: the object's ``__dict__``
    as JSON (``None`` when there are none, or they are not JSON)."""
    if not value:
        return None
    try:
        return json.loads(json.dumps(value.__dict__, allow_nan=False))
    except (AttributeError, TypeError, ValueError) as e:
        _log.warning("usage %s not stored: %s", name, e)
        return None


def _when(ms: int) -> str:
    """A time as SQLite's ``CURRENT_TIMESTAMP`` writes it (UTC), as AdvancedSQLiteSession returns times."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _preview(content: Any, max_length: int | None = None) -> str:
    """A user message's content as text (JSON unless it is a string), cut to ``max_length``."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return text[:max_length] + "..." if max_length is not None and len(text) > max_length else text


def _texts(content: Any) -> list[str] | None:
    """The texts ``find_turns_by_content`` searches: the content, or its parts' ``text``
    (``None`` for content it cannot read, which AdvancedSQLiteSession skips)."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        return None
    texts = [part.get("text", "") for part in content]
    return texts if all(isinstance(text, str) for text in texts) else None


def _item_type(item: Any) -> str:
    """An item's type as AdvancedSQLiteSession classifies it: its role for user and
    assistant messages, else its ``type`` (``"other"`` without one)."""
    if item.get("role") in ("user", "assistant"):
        return str(item["role"])
    return str(item["type"]) if item.get("type") else "other"


def _tool_name(item: Any) -> str | None:
    """The tool an item calls or answers, named as AdvancedSQLiteSession names it."""
    kind = item.get("type")
    if kind in ("mcp_call", "mcp_approval_request") and "server_label" in item:
        label, name = item.get("server_label"), item.get("name")
        return f"{label}.{name}" if label and name else str(label) if label else str(name) if name else None
    if kind in ("tool_search_call", "tool_search_output"):
        return "tool_search"
    if kind in _NAMELESS_TOOLS:
        return str(kind)
    if "name" not in item or item["name"] is None:
        return None
    name, namespace = str(item["name"]), item.get("namespace")
    space = str(namespace) if namespace is not None else None
    if name and space and space != name:  # a namespace equal to the name is the SDK's synthetic one
        return f"{space}.{name}"
    return name


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
    The methods of the SDK's ``Session`` accept its optional ``wrapper`` keyword (the
    run's context), and ignore it. The branch, turn and usage methods are
    ``AdvancedSQLiteSession``'s (see the module's docstring for how they map onto the
    tree, and where they differ).
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

    async def get_items(self, limit: int | None = None, branch_id: str | None = None, *,
                        wrapper: Any = None) -> list[TResponseInputItem]:
        """The items on the current branch (or on ``branch_id``: ``[]`` for a branch
        that does not exist), oldest first: the last ``limit`` of them (default:
        ``session_settings.limit``; ``None``: all). With a limit this reads O(limit)
        messages back from the head, whatever the session's length. Reset markers
        (:meth:`~session_store.SessionStore.reset`) and usage records
        (:meth:`store_run_usage`) are not items: they are left out.
        """
        limit = resolve_session_limit(limit, self.session_settings)
        if limit is not None and limit <= 0:
            return []

        async def read(sid: str) -> list[Message]:
            leaf = None
            if branch_id is not None:
                branch = await self._branch(sid, branch_id)
                if branch is None or branch.head_id is None:
                    return []
                leaf = branch.head_id
            if limit is None:
                return await self.store.get_linear_history(sid, leaf)
            return await self._tail(sid, leaf, lambda path: sum(map(_is_item, path)) >= limit, window=limit + 1)
        path = [m for m in await self._on_session(read) if _is_item(m)]
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
        back. Usage records after it (:meth:`store_run_usage`) are passed over too;
        while its turn keeps an item, the turn's usage is written again after the new
        head, so the turn keeps it (as in ``AdvancedSQLiteSession``). Without ``owner``
        this reads then moves: a writer between the two (another process on the same
        key) may be moved over too."""
        async def pop(sid: str) -> TResponseInputItem | None:
            async with self._write_scope():
                path = await self._tail(sid, None, lambda p: sum(map(_is_item, p)) >= 2 or any(
                    m.type == "reset" for m in p))
                at = len(path) - 1
                while at >= 0 and path[at].type == _USAGE:
                    at -= 1
                if at < 0 or path[at].type == "reset":
                    return None
                popped, head = path[at], path[at - 1].id if at > 0 else None
                branch = await self.store.get_current_branch(sid)
                usage = [m for m in path[at + 1:] if isinstance(m.content, dict) and m.content.get("branch") == branch]
                turn_left = not _starts_turn(popped) and any(_is_item(m) for m in path[:at])
                if usage and turn_left:
                    # the turn's usage again after the new head, then the head to it: a
                    # crash between the two leaves the item where it was
                    kept = await self.store.append_many(sid, [{"role": usage[-1].role, "type": _USAGE, "content":
                                                               copy.deepcopy(usage[-1].content)}], parent_id=head)
                    head = kept[-1].id
                await self.store.move_head(sid, head)
                return cast(TResponseInputItem, copy.deepcopy(popped.content))
        return await self._on_session(pop)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Empty the current branch: the next :meth:`get_items` returns ``[]`` and the
        next item starts a new root. Nothing is deleted; no text is added."""
        async def clear(sid: str) -> None:
            async with self._write_scope():
                await self.store.move_head(sid, None)
        await self._on_session(clear)

    # -- reading the tree ------------------------------------------------------------

    async def _branch(self, sid: str, name: str) -> Branch | None:
        """The branch of that name, or ``None`` (also for a name no branch can have)."""
        try:
            return await self.store.get_branch(sid, name)
        except InvalidInput:
            return None

    async def _tail(self, sid: str, leaf_id: str | None, enough: Callable[[list[Message]], bool], *,
                    window: int = 8) -> list[Message]:
        """The end of the path to ``leaf_id`` (default: the current head), read back
        from it in growing windows (the first of ``window`` messages) until
        ``enough(path)`` or the root: O(what is needed)."""
        while True:
            path = await self.store.get_linear_history(sid, leaf_id, limit=window)
            if len(path) < window or enough(path):
                return path
            window *= 4

    async def _path(self, branch_id: str | None) -> tuple[str, list[Message]] | None:
        """The name and root -> head path of ``branch_id`` (default: the current
        branch); ``None`` when there is no such branch."""
        async def read(sid: str) -> tuple[str, list[Message]] | None:
            if branch_id is None:
                return await self.store.get_current_branch(sid), await self.store.get_linear_history(sid)
            branch = await self._branch(sid, branch_id)
            if branch is None:
                return None
            return branch.name, [] if branch.head_id is None else await self.store.get_linear_history(
                sid, branch.head_id)
        return await self._on_session(read)

    # -- turns ------------------------------------------------------------------------

    async def get_conversation_turns(self, branch_id: str | None = None) -> list[dict[str, Any]]:
        """The user turns of the current branch (or of ``branch_id``; ``[]`` for no such
        branch), oldest first, for choosing where to branch. Each is a dict: ``turn``;
        ``content``, the user message's content as text cut to 100 characters;
        ``full_content``; ``timestamp``, when the message was stored (UTC,
        ``"YYYY-MM-DD HH:MM:SS"``); ``can_branch``, ``True``. Turn ``n`` is the ``n``-th
        user message on the branch's path: nothing beside the messages numbers them."""
        found = await self._path(branch_id)
        if found is None:
            return []
        return [{"turn": turn, "content": _preview(content, 100), "full_content": content,
                 "timestamp": _when(m.timestamp), "can_branch": True}
                for turn, m in _turns(found[1]) if _starts_turn(m)
                for content in [copy.deepcopy(m.content.get("content", ""))]]

    async def find_turns_by_content(self, search_term: str, branch_id: str | None = None) -> list[dict[str, Any]]:
        """The user turns of the current branch (or of ``branch_id``) whose text holds
        ``search_term`` (ASCII letters in any case), as :meth:`get_conversation_turns`
        gives them, the content uncut."""
        found = await self._path(branch_id)
        if found is None:
            return []
        pattern = re.compile(re.escape(search_term), re.IGNORECASE | re.ASCII)
        turns = []
        for turn, m in _turns(found[1]):
            content = m.content.get("content", "") if _starts_turn(m) else None
            texts = _texts(content)
            if texts is not None and any(pattern.search(text) for text in texts):
                turns.append({"turn": turn, "content": _preview(content), "full_content": copy.deepcopy(content),
                              "timestamp": _when(m.timestamp), "can_branch": True})
        return turns

    async def get_conversation_by_turns(self, branch_id: str | None = None) -> dict[int, list[dict[str, str | None]]]:
        """The items of the current branch (or of ``branch_id``) by turn: for each,
        ``{"type"`` (``"user"``, ``"assistant"`` or the item's type), ``"tool_name"}``."""
        found = await self._path(branch_id)
        by_turn: dict[int, list[dict[str, str | None]]] = {}
        for turn, m in _turns(found[1] if found is not None else []):
            by_turn.setdefault(turn, []).append({"type": _item_type(m.content), "tool_name": _tool_name(m.content)})
        return by_turn

    async def get_tool_usage(self, branch_id: str | None = None) -> list[tuple[str, int, int]]:
        """The tool calls of the current branch (or of ``branch_id``): ``(tool name,
        calls, turn)`` for each tool and turn, by turn. A tool search's output counts
        as a call when its turn has no tool search call."""
        found = await self._path(branch_id)
        calls: dict[tuple[int, str | None], int] = {}
        searches, outputs = set(), []
        for turn, m in _turns(found[1] if found is not None else []):
            kind, name = _item_type(m.content), _tool_name(m.content)
            if kind in _TOOL_CALLS:
                key = (turn, name if name is not None else kind if kind in ("shell_call", "apply_patch_call") else None)
                calls[key] = calls.get(key, 0) + 1
                if kind == "tool_search_call":
                    searches.add((turn, name))
            elif kind == "tool_search_output":
                outputs.append((turn, name))
        for key in outputs:
            if key not in searches:
                calls[key] = calls.get(key, 0) + 1
        ordered = sorted(calls.items(), key=lambda entry: (entry[0][0], entry[0][1] is not None, entry[0][1] or ""))
        return [(cast(str, name), count, turn) for (turn, name), count in ordered]

    # -- branches ---------------------------------------------------------------------

    async def create_branch_from_turn(self, turn_number: int, branch_name: str | None = None) -> str:
        """A new branch holding the current branch's turns before ``turn_number``, made
        current; returns its name (``branch_name``, default
        ``"branch_from_turn_<n>_<unix time>"``). The next :meth:`add_items` (the turn
        asked again) continues it; the old branch keeps its turns.

        The branch is one of the session's named branches, pointing at the message
        before that turn's user message: O(1), nothing is copied
        (:meth:`~session_store.SessionStore.create_branch`, then
        :meth:`~session_store.SessionStore.switch_to_branch`; from turn 1 with nothing
        before it, the branch is created there and moved to empty in between).
        :class:`~session_store.InvalidInput` (a ``ValueError``), with
        ``AdvancedSQLiteSession``'s messages: no such turn, a blank name, a name a
        branch has."""
        if branch_name is not None and not branch_name.strip():
            raise InvalidInput("Branch name cannot be empty")

        async def create(sid: str) -> str:
            async with self._write_scope():
                source = await self.store.get_current_branch(sid)
                path = await self.store.get_linear_history(sid)
                starts = [i for i, m in enumerate(path) if _starts_turn(m)]
                at = starts[turn_number - 1] if isinstance(turn_number, int) and 0 < turn_number <= len(starts) \
                    else None
                if at is None:
                    raise InvalidInput(f"Turn {turn_number} does not contain a user message in branch '{source}'")
                head = path[at - 1].id if at > 0 else None
                name = await self._new_branch(sid, branch_name, turn_number, path[at].id if head is None else head)
                if head is None:
                    await self.store.move_head(sid, None, branch=name)
                await self.store.switch_to_branch(sid, name)
                return name
        return await self._on_session(create)

    async def _new_branch(self, sid: str, name: str | None, turn_number: int, leaf_id: str) -> str:
        """Create the branch ``name`` at ``leaf_id``, or one named as AdvancedSQLiteSession names them."""
        if name is not None:
            try:
                await self.store.create_branch(sid, name, leaf_id)
            except BranchExists:
                raise InvalidInput(f"Branch ID '{name}' has already been used. Choose a new branch ID.") from None
            return name
        base = f"branch_from_turn_{turn_number}_{int(time.time())}"
        name, suffix = base, 1
        while True:
            try:
                await self.store.create_branch(sid, name, leaf_id)
                return name
            except BranchExists:
                suffix += 1
                name = f"{base}_{suffix}"

    async def create_branch_from_content(self, search_term: str, branch_name: str | None = None) -> str:
        """:meth:`create_branch_from_turn` from the first user turn of the current branch
        whose text holds ``search_term`` (:meth:`find_turns_by_content`);
        :class:`~session_store.InvalidInput` when there is none."""
        async with self._write_scope():
            turns = await self.find_turns_by_content(search_term)
            if not turns:
                raise InvalidInput(f"No user turns found containing '{search_term}'")
            return await self.create_branch_from_turn(turns[0]["turn"], branch_name)

    async def switch_to_branch(self, branch_id: str) -> None:
        """Make ``branch_id`` the session's current branch: the next reads and writes go
        there, in every process (the store keeps it, across restarts).
        :class:`~session_store.InvalidInput` when there is no such branch."""
        async def switch(sid: str) -> None:
            async with self._write_scope():
                await self._switch(sid, branch_id)
        await self._on_session(switch)

    async def _switch(self, sid: str, branch_id: str) -> None:
        try:
            await self.store.switch_to_branch(sid, branch_id)
        except (BranchNotFound, InvalidInput):
            raise InvalidInput(f"Branch '{branch_id}' does not exist") from None

    async def delete_branch(self, branch_id: str, force: bool = False) -> None:
        """Delete the branch ``branch_id``: the name, never its messages, which stay in
        the tree (``store.create_branch`` or ``store.move_head`` brings them back); its
        usage is no longer counted. ``main`` cannot be deleted, nor the current branch
        unless ``force`` (then ``main`` becomes current first).
        :class:`~session_store.InvalidInput` with ``AdvancedSQLiteSession``'s messages."""
        if not isinstance(branch_id, str) or not branch_id.strip():
            raise InvalidInput("Branch ID cannot be empty")
        if branch_id == "main":
            raise InvalidInput("Cannot delete the 'main' branch")

        async def delete(sid: str) -> None:
            async with self._write_scope():
                if branch_id == await self.store.get_current_branch(sid):
                    if not force:
                        raise InvalidInput(f"Cannot delete current branch '{branch_id}'. "
                                           "Use force=True or switch branches first")
                    await self._switch(sid, "main")
                try:
                    await self.store.delete_branch(sid, branch_id)
                except (BranchNotFound, InvalidInput):
                    raise InvalidInput(f"Branch '{branch_id}' does not exist") from None
        await self._on_session(delete)

    async def list_branches(self) -> list[dict[str, Any]]:
        """Every branch of the session, ``main`` first, then as they were made. Each is a
        dict: ``branch_id``; ``message_count``, the items on its path; ``user_turns``;
        ``is_current``; ``created_at`` (UTC, ``"YYYY-MM-DD HH:MM:SS"``). A branch without
        messages is listed too. Reads every branch's path."""
        async def listing(sid: str) -> list[dict[str, Any]]:
            branches = await self.store.get_branches(sid)
            current = await self.store.get_current_branch(sid)
            listed = []
            for branch in branches:
                path = [] if branch.head_id is None else await self.store.get_linear_history(sid, branch.head_id)
                listed.append({"branch_id": branch.name, "message_count": sum(map(_is_item, path)),
                               "user_turns": sum(map(_starts_turn, path)), "is_current": branch.name == current,
                               "created_at": _when(branch.created_at)})
            return listed
        return await self._on_session(listing)

    # -- usage ------------------------------------------------------------------------

    async def store_run_usage(self, result: RunResult) -> None:
        """Keep ``result.context_wrapper.usage`` (a ``Runner.run`` result's, call it
        after the run) as the usage of the current branch's last turn: a usage record
        appended after the turn's items (:meth:`get_items` leaves it out, contexts too),
        so it lives in the session, across restarts and processes. Storing again for
        the same turn replaces it. Nothing is stored before the branch has an item.

        As in ``AdvancedSQLiteSession``, a failure is logged, not raised: usage never
        fails a run. A write fenced out by the lease (``owner=``) raises
        :class:`~session_store.SessionLocked` / :class:`~session_store.LeaseLost`, as
        every write does."""
        try:
            usage = result.context_wrapper.usage
            if usage is None:
                return
            record: dict[str, Any] = {name: int(getattr(usage, name) or 0) for name in _USAGE_FIELDS}
            record.update({name: _details(getattr(usage, name, None), name) for name in _DETAILS})
        except Exception as e:
            _log.error("session %r: usage not stored: %s", self.key, e)
            return

        async def keep(sid: str) -> None:
            async with self._write_scope():
                if not any(map(_is_item, await self._tail(sid, None, lambda path: any(map(_is_item, path))))):
                    return  # no turn yet
                branch = await self.store.get_current_branch(sid)
                await self.store.append(sid, role="usage", type=_USAGE, content={"branch": branch, **record})
        try:
            await self._on_session(keep)
        except SessionLocked:
            raise
        except Exception as e:
            _log.error("session %r: usage not stored: %s", self.key, e)

    async def get_turn_usage(self, user_turn_number: int | None = None,
                             branch_id: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """The usage stored on the current branch (or on ``branch_id``) by turn:
        ``[{"user_turn_number", "requests", "input_tokens", "output_tokens",
        "total_tokens", "input_tokens_details", "output_tokens_details"}, ...]`` by
        turn; with ``user_turn_number``, that turn's dict without the number (``{}``
        when none was stored). A branch made from a turn starts with no usage: what
        was used before it stays its source branch's."""
        found = await self._path(branch_id)
        by_turn = _usage_by_turn(found[1], found[0]) if found is not None else {}
        if user_turn_number is not None:
            return _usage_row(by_turn[user_turn_number]) if user_turn_number in by_turn else {}
        return [{"user_turn_number": turn, **_usage_row(record)} for turn, record in by_turn.items()]

    async def get_session_usage(self, branch_id: str | None = None) -> dict[str, int] | None:
        """The usage stored on every branch (or on ``branch_id``), summed:
        ``{"requests", "input_tokens", "output_tokens", "total_tokens",
        "total_turns"}``, or ``None`` when there is none. Reads every branch's path."""
        async def usage(sid: str) -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = []
            for branch in await self.store.get_branches(sid):
                if branch.head_id is not None and (not branch_id or branch.name == branch_id):
                    path = await self.store.get_linear_history(sid, branch.head_id)
                    records += _usage_by_turn(path, branch.name).values()
            return records
        records = await self._on_session(usage)
        if not records:
            return None
        total = {name: sum(int(record.get(name, 0)) for record in records) for name in _USAGE_FIELDS}
        return {**total, "total_turns": len(records)}
