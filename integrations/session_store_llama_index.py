"""session_store_llama_index: a session store as a LlamaIndex chat store.

Two lines give a LlamaIndex memory a chat store whose deletions lose nothing::

    from session_store_llama_index import SessionStoreChatStore

    chat_store = SessionStoreChatStore(store)   # a SessionStore or an AsyncSessionStore
    memory = ChatMemoryBuffer.from_defaults(chat_store=chat_store, chat_store_key="user:alice")

A chat store key is a key of the store's index; each ``ChatMessage`` is one message of
that key's session, on its current branch, its content the message as ``model_dump``
gives it (so it comes back equal, and ``store.build_context`` reads it).

Deletions are head moves and resets, never data loss: ``delete_last_message`` moves
the head back one message; ``delete_messages`` empties the branch; ``delete_message``
(any index) and ``set_messages`` write a new segment holding the messages that remain
(or the new ones) and move the head to it, as :meth:`session_store.SessionStore.reset`
does. Every message deleted stays in the session's tree (``store.get_tree``), and
``store.move_head`` brings a branch back. ``get_keys`` lists the keys whose branch is
not empty.

LlamaIndex's current ``Memory`` takes an ``AsyncDBChatStore``, which keeps each message
active or archived (``Memory`` archives the oldest when the history outgrows its token
limit, into its memory blocks); :class:`SessionStoreDBChatStore` is one::

    from llama_index.core.memory import Memory
    from session_store_llama_index import SessionStoreDBChatStore

    memory = Memory.from_defaults(session_id="user:alice", chat_store=SessionStoreDBChatStore(store))

The same sessions: a key's messages are its current branch, the archived ones first;
where the archived ones end is the head of the branch ``llama-index-archived``, so that
archiving moves a branch and copies nothing.

Imports ``session_store`` and ``llama-index-core`` (``pip install "session-store[llama-index]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreChatStore", "SessionStoreDBChatStore"]

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.storage.chat_store.base import BaseChatStore
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus

from session_store import (
    AsyncSessionStore,
    InvalidInput,
    InvalidMessage,
    Message,
    SessionStore,
    SessionStoreError,
    register_context_reader,
)

# -- reading records as build_context does ---------------------------------------------


def _is_chat_message(record: Message) -> bool:
    """Whether the record holds a LlamaIndex ``ChatMessage`` as ``model_dump()`` gives it."""
    content = record.content
    return (isinstance(content, dict) and "content" not in content and isinstance(content.get("blocks"), list)
            and isinstance(content.get("role"), str))


def _native_blocks(blocks: list[Any]) -> list[Any]:
    """LlamaIndex content blocks (``block_type``) as blocks build_context reads; a
    block of another type keeps its type, for build_context to report."""
    out: list[Any] = []
    for b in blocks:
        kind = b.get("block_type") if isinstance(b, dict) else None
        if not isinstance(b, dict) or (kind == "text" and not b.get("text")):
            continue
        if kind == "image" and isinstance(b.get("image"), str):
            out.append({"type": "image", "data": b["image"], "media_type": b.get("image_mimetype")})
        elif kind == "thinking":
            out.append({"type": "thinking", "thinking": b.get("content")})
        elif kind == "tool_call":
            out.append({"type": "tool_use", "id": b.get("tool_call_id"), "name": b.get("tool_name"),
                        "input": b.get("tool_kwargs")})
        else:
            out.append({**b, "type": kind})
    return out


def _read_llama_index(path: list[Message], children: Any) -> list[Message]:
    """The context reader of LlamaIndex chat messages (see ``register_context_reader``):
    each becomes a native record with its role, its blocks, and its
    ``additional_kwargs`` (``tool_calls``, ``tool_call_id``) as fields."""
    out: list[Message] = []
    for record in path:
        if not _is_chat_message(record):
            out.append(record)
            continue
        extra = record.content.get("additional_kwargs")
        role = record.content["role"]
        out.append(dataclasses.replace(record, type=role, role=role, content=_native_blocks(record.content["blocks"]),
                                       fields=extra if isinstance(extra, dict) else {}))
    return out


register_context_reader("llama_index", _read_llama_index, recognizes=_is_chat_message)


def _message_of(record: Message) -> ChatMessage:
    """The ``ChatMessage`` a record holds (plain content other software wrote: by its role)."""
    content = copy.deepcopy(record.content)
    if isinstance(content, dict) and isinstance(content.get("blocks"), list):
        return ChatMessage.model_validate(content)
    role = record.role if record.role in ("system", "developer", "user", "assistant", "tool") else "user"
    return ChatMessage(role=role, content=content if isinstance(content, str) else str(content))


class SessionStoreChatStore(BaseChatStore):
    """A ``llama_index.core.storage.chat_store.BaseChatStore`` kept in a session store.

    ``SessionStoreChatStore(store)``: ``store`` is a :class:`~session_store.SessionStore`
    or an :class:`~session_store.AsyncSessionStore` (whose ``sync`` store is used; the
    async methods are LlamaIndex's defaults, which call the sync ones). Reading a key
    that has no session yet returns ``[]`` and creates nothing. See the module's
    docstring for what each deletion does: none removes a message from storage.
    """

    _store: SessionStore = PrivateAttr()

    def __init__(self, store: SessionStore | AsyncSessionStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = _sync_store(store)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this class under."""
        return "SessionStoreChatStore"

    @property
    def store(self) -> SessionStore:
        """The session store."""
        return self._store

    def _existing(self, key: str) -> str | None:
        """The key's session id, or ``None`` when it has none (nothing is created)."""
        return self._store.resolve(key, create=False)

    def _path(self, key: str) -> tuple[str | None, list[Message]]:
        sid = self._existing(key)
        if sid is None:
            return None, []
        return sid, [m for m in self._store.get_linear_history(sid) if m.type != "reset"]

    def _append(self, sid: str, messages: list[ChatMessage], parent_id: str | None) -> None:
        """Append ``messages`` as a chain from ``parent_id`` (see :func:`_chat_records`)."""
        _chat_records(self._store, sid, _records(messages), parent_id)

    # -- BaseChatStore ------------------------------------------------------------

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Make ``messages`` the key's whole history: a new root chain (the old one stays
        in the tree), the head moved to its end once written."""
        records = _records(list(messages))
        sid = self._store.resolve(key)
        if not records:
            self._store.move_head(sid, None)
            return
        _chat_records(self._store, sid, records, None)

    def get_messages(self, key: str) -> list[ChatMessage]:
        """The key's messages on its current branch, root first (``[]`` for an unknown key)."""
        return [_message_of(m) for m in self._path(key)[1]]

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` after the head; with ``idx``, insert it there: the messages
        from ``idx`` on are written again after it, as a new chain from the message
        before ``idx`` (the old chain stays in the tree)."""
        record = _records([message])
        sid = self._store.resolve(key)
        if idx is None:
            _chat_records(self._store, sid, record, self._store.get_head(sid))
            return
        _, path = self._path(key)
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise InvalidInput(f"idx must be an integer or None, not {idx!r}")
        idx = max(0, min(len(path), idx if idx >= 0 else len(path) + idx))
        self._append(sid, [message, *(_message_of(m) for m in path[idx:])], path[idx - 1].id if idx else None)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Empty the key's branch and return what it held (``None`` for an unknown key).
        The messages stay in the tree."""
        sid, path = self._path(key)
        if sid is None:
            return None
        self._store.move_head(sid, None)
        return [_message_of(m) for m in path]

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Take message ``idx`` off the branch and return it (``None`` when there is no
        such message). The last one: the head moves back; any other: the messages after
        it are written again after the one before it, and the head moves to them."""
        sid, path = self._path(key)
        if sid is None or not isinstance(idx, int) or isinstance(idx, bool) or not -len(path) <= idx < len(path):
            return None
        idx %= len(path)
        gone = path[idx]
        if idx == len(path) - 1:
            self._store.move_head(sid, gone.parent_id if idx else None)
        else:
            self._append(sid, [_message_of(m) for m in path[idx + 1:]], path[idx - 1].id if idx else None)
        return _message_of(gone)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Move the head back over the last message and return it (``None`` when empty)."""
        sid, path = self._path(key)
        if sid is None or not path:
            return None
        self._store.move_head(sid, path[-2].id if len(path) > 1 else None)
        return _message_of(path[-1])

    def get_keys(self) -> list[str]:
        """Every key whose current branch holds a message, oldest session first."""
        return _keys_with_messages(self._store)


# ============================================================================
# Memory's store: AsyncDBChatStore
# ============================================================================

_T = TypeVar("_T")
ARCHIVED_BRANCH = "llama-index-archived"  # its head: the last archived message of the current branch


class SessionStoreDBChatStore(AsyncDBChatStore):
    """A ``llama_index.core.storage.chat_store.base_db.AsyncDBChatStore`` (what
    ``Memory`` takes) kept in a session store; the store's calls run in a worker
    thread, never on the event loop.

    A key's messages are the messages of its session's current branch, oldest first:
    the archived ones (up to the head of the branch ``llama-index-archived``, when it
    is on the current branch), then the active ones. Deletions and archiving write new
    segments and move heads as :class:`SessionStoreChatStore` does: nothing is removed
    from the tree. ``delete_message(key, idx)`` takes ``idx`` as a position in the
    key's messages (archived first; LlamaIndex's SQL store takes a row id). A message
    added as archived goes after the archived ones (the SQL store orders by time only).
    """

    _store: SessionStore = PrivateAttr()

    def __init__(self, store: SessionStore | AsyncSessionStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store = _sync_store(store)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this class under."""
        return "SessionStoreDBChatStore"

    @property
    def store(self) -> SessionStore:
        """The session store."""
        return self._store

    # -- the key's messages ----------------------------------------------------------

    def _read(self, key: str) -> tuple[str | None, list[Message], int]:
        """The session id (``None``: the key has none), the current branch's messages,
        and how many of them are archived."""
        sid = self._store.resolve(key, create=False)
        if sid is None:
            return None, [], 0
        path = [m for m in self._store.get_linear_history(sid) if m.type != "reset"]
        branch = self._store.get_branch(sid, ARCHIVED_BRANCH)
        at = next((i for i, m in enumerate(path) if branch is not None and m.id == branch.head_id), -1)
        return sid, path, at + 1

    def _rewrite(self, sid: str, keep: list[Message], records: list[dict[str, Any]], archived: int) -> None:
        """Make the current branch ``keep`` (a prefix of it) followed by ``records``
        (see :func:`_records`), the first ``archived`` of them all archived."""
        parent = keep[-1].id if keep else None
        written = _chat_records(self._store, sid, records, parent) if records else []
        head = written[-1].id if written else parent
        if self._store.get_head(sid) != head:
            self._store.move_head(sid, head)
        everything = [*keep, *written]
        if archived:
            last = everything[archived - 1].id
            if self._store.get_branch(sid, ARCHIVED_BRANCH) is None:
                self._store.create_branch(sid, ARCHIVED_BRANCH, last)
            else:
                self._store.move_head(sid, last, branch=ARCHIVED_BRANCH)
        elif self._store.get_branch(sid, ARCHIVED_BRANCH) is not None:
            self._store.delete_branch(sid, ARCHIVED_BRANCH)

    def _select(self, key: str, status: MessageStatus | None) -> list[Message]:
        _, path, archived = self._read(key)
        if status is None:
            return path
        return path[archived:] if status == MessageStatus.ACTIVE else path[:archived]

    # -- AsyncDBChatStore ---------------------------------------------------------------

    async def get_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE,
                           limit: int | None = None, offset: int | None = None) -> list[ChatMessage]:
        """The key's messages of ``status`` (``None``: all), oldest first, from ``offset``, at most ``limit``."""
        def get() -> list[ChatMessage]:
            chosen = self._select(key, status)[offset or 0:]
            return [_message_of(m) for m in (chosen if limit is None else chosen[:limit])]
        return await _off_loop(get)

    async def count_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE) -> int:
        """How many of the key's messages have ``status`` (``None``: all)."""
        return await _off_loop(lambda: len(self._select(key, status)))

    async def add_message(self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE) -> None:
        """Add one message (see :meth:`add_messages`)."""
        await self.add_messages(key, [message], status)

    async def add_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        """Append active messages after the head (all or none, one sync); archived ones
        go after the archived ones, the active ones written again after them."""
        def add() -> None:
            records = _records(list(messages))
            if not records:
                return
            sid = self._store.resolve(key)
            _, path, archived = self._read(key)
            if status == MessageStatus.ACTIVE:
                _chat_records(self._store, sid, records, path[-1].id if path else None)
            else:
                self._rewrite(sid, path[:archived], [*records, *_records([_message_of(m) for m in path[archived:]])],
                              archived + len(records))
        await _off_loop(add)

    async def set_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        """Make ``messages`` (all of ``status``) the key's messages: a new root chain."""
        def put() -> None:
            records = _records(list(messages))  # refused before the key's session is made
            sid = self._store.resolve(key)
            self._rewrite(sid, [], records, len(records) if status == MessageStatus.ARCHIVED else 0)
        await _off_loop(put)

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Take the message at position ``idx`` of the key's messages off the branch and
        return it (``None`` when there is none)."""
        def take() -> ChatMessage | None:
            sid, path, archived = self._read(key)
            if sid is None or not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(path):
                return None
            self._rewrite(sid, path[:idx], _records([_message_of(m) for m in path[idx + 1:]]),
                          archived - 1 if idx < archived else archived)
            return _message_of(path[idx])
        return await _off_loop(take)

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        """Take the key's messages of ``status`` (``None``: all) off the branch."""
        def clear() -> None:
            sid, path, archived = self._read(key)
            if sid is None:
                return
            if status is None:
                self._rewrite(sid, [], [], 0)
            elif status == MessageStatus.ACTIVE:
                self._rewrite(sid, path[:archived], [], archived)
            else:
                self._rewrite(sid, [], _records([_message_of(m) for m in path[archived:]]), 0)
        await _off_loop(clear)

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Take the oldest ``n`` active messages off the branch and return them."""
        def take() -> list[ChatMessage]:
            sid, path, archived = self._read(key)
            gone = path[archived:archived + max(n, 0)]
            if sid is None or not gone:
                return []
            self._rewrite(sid, path[:archived], _records([_message_of(m) for m in path[archived + len(gone):]]),
                          archived)
            return [_message_of(m) for m in gone]
        return await _off_loop(take)

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Archive the oldest ``n`` active messages (the archive branch's head moves
        over them) and return them."""
        def archive() -> list[ChatMessage]:
            sid, path, archived = self._read(key)
            moved = path[archived:archived + max(n, 0)]
            if sid is None or not moved:
                return []
            self._rewrite(sid, path, [], archived + len(moved))
            return [_message_of(m) for m in moved]
        return await _off_loop(archive)

    async def get_keys(self) -> list[str]:
        """Every key whose current branch holds a message."""
        return await _off_loop(lambda: _keys_with_messages(self._store))


def _sync_store(store: SessionStore | AsyncSessionStore) -> SessionStore:
    """The :class:`SessionStore` of ``store`` (an AsyncSessionStore's ``sync`` one)."""
    if isinstance(store, AsyncSessionStore):
        store = store.sync
    if not isinstance(store, SessionStore):
        raise InvalidInput(f"store must be a SessionStore or an AsyncSessionStore, not {type(store).__name__}")
    return store


def _records(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The records of ``messages`` (role, and the message as ``model_dump`` gives it);
    :class:`InvalidMessage` for what is not a ChatMessage, before anything is written
    (a key's session made for refused messages included)."""
    records = []
    for message in messages:
        if not isinstance(message, ChatMessage):
            raise InvalidMessage(f"a chat store holds LlamaIndex ChatMessages, not {type(message).__name__}")
        try:
            records.append({"role": str(message.role.value), "content": message.model_dump(mode="json")})
        except (TypeError, ValueError) as e:
            raise InvalidMessage(f"cannot store {message!r:.200}: {e}") from None
    return records


def _chat_records(store: SessionStore, sid: str, records: list[dict[str, Any]], parent_id: str | None
                  ) -> list[Message]:
    """Append ``records`` (see :func:`_records`) as a chain from ``parent_id`` (all or
    none, one sync) and move the head to its end unless the chain already advanced it."""
    written = store.append_many(sid, records, parent_id=parent_id)
    if written and store.get_head(sid) != written[-1].id:
        store.move_head(sid, written[-1].id)
    return written


def _keys_with_messages(store: SessionStore) -> list[str]:
    """Every key whose current branch holds a message, oldest session first."""
    keys = []
    for key, sid in store.get_keys().items():
        with contextlib.suppress(SessionStoreError):
            if store.get_head(sid) is not None:
                keys.append(key)
    return keys


async def _off_loop(fn: Callable[[], _T]) -> _T:
    return await asyncio.to_thread(fn)
