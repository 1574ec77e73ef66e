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

Imports ``session_store`` and ``llama-index-core`` (``pip install "session-store[llama-index]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreChatStore"]

import contextlib
import copy
import dataclasses
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.storage.chat_store.base import BaseChatStore

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
        if isinstance(store, AsyncSessionStore):
            store = store.sync
        if not isinstance(store, SessionStore):
            raise InvalidInput(f"store must be a SessionStore or an AsyncSessionStore, not {type(store).__name__}")
        self._store = store

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
        return self._store.resolve(key) if self._store.has_key(key) else None

    def _path(self, key: str) -> tuple[str | None, list[Message]]:
        sid = self._existing(key)
        if sid is None:
            return None, []
        return sid, [m for m in self._store.get_linear_history(sid) if m.type != "reset"]

    def _append(self, sid: str, messages: list[ChatMessage], parent_id: str | None) -> None:
        """Append ``messages`` as a chain from ``parent_id`` (all or none, one sync),
        then move the head to its end unless the chain already advanced it."""
        records = []
        for message in messages:
            if not isinstance(message, ChatMessage):
                raise InvalidMessage(f"a chat store holds LlamaIndex ChatMessages, not {type(message).__name__}")
            try:
                records.append((str(message.role.value), message.model_dump(mode="json")))
            except (TypeError, ValueError) as e:
                raise InvalidMessage(f"cannot store {message!r:.200}: {e}") from None
        written = self._store.append_many(sid, [{"role": role, "content": content} for role, content in records],
                                          parent_id=parent_id)
        if written and self._store.get_head(sid) != written[-1].id:
            self._store.move_head(sid, written[-1].id)

    # -- BaseChatStore ------------------------------------------------------------

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Make ``messages`` the key's whole history: a new root chain (the old one stays
        in the tree), the head moved to its end once written."""
        sid = self._store.resolve(key)
        if not messages:
            self._store.move_head(sid, None)
            return
        self._append(sid, list(messages), None)

    def get_messages(self, key: str) -> list[ChatMessage]:
        """The key's messages on its current branch, root first (``[]`` for an unknown key)."""
        return [_message_of(m) for m in self._path(key)[1]]

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append ``message`` after the head; with ``idx``, insert it there: the messages
        from ``idx`` on are written again after it, as a new chain from the message
        before ``idx`` (the old chain stays in the tree)."""
        sid = self._store.resolve(key)
        if idx is None:
            self._append(sid, [message], self._store.get_head(sid))
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
        keys = []
        for sid in self._store.get_all_session_ids():
            meta = self._store.get_metadata(sid)
            with contextlib.suppress(SessionStoreError):
                if meta is not None and self._store.get_head(sid) is not None:
                    keys.append(meta.key)
        return keys
