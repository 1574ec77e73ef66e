"""session_store_langchain: a session store as a LangChain chat message history.

Two lines give a chain a history that survives crashes and never loses what was
cleared::

    from session_store_langchain import SessionStoreChatMessageHistory

    history = SessionStoreChatMessageHistory("user:alice", store)   # a SessionStore or an AsyncSessionStore
    chain = RunnableWithMessageHistory(runnable, lambda session_id: SessionStoreChatMessageHistory(session_id, store))

Each LangChain message is one message of the key's session, on the current branch:
its content is the message as ``langchain_core.messages.message_to_dict`` writes it, so
it comes back equal (tool calls, ``tool_call_id``, ``additional_kwargs``, ids, response
metadata), and ``store.build_context(sid, format="openai" | "anthropic")`` reads it
(this module registers the reader: a record whose content is a LangChain message, from
any session, is read as one once it is imported).
``clear`` empties the branch by moving its head; the old messages stay in the tree.

Imports ``session_store`` and ``langchain-core`` (``pip install "session-store[langchain]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreChatMessageHistory"]

import asyncio
import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    message_to_dict,
    messages_from_dict,
)

from session_store import (
    AsyncSessionStore,
    InvalidInput,
    InvalidMessage,
    Message,
    SessionNotFound,
    SessionStore,
    register_context_reader,
)

# The role of the record holding each LangChain message type (a chat message's own role
# is in the record's content); build_context reads the content, whatever the role.
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
# For records other software wrote (plain text content): the message each role becomes.
_PLAIN = {"user": HumanMessage, "human": HumanMessage, "assistant": AIMessage, "ai": AIMessage,
          "system": SystemMessage}


# -- reading records as build_context does ---------------------------------------------

# LangChain's message types (``message_to_dict()["type"]``) and the roles they play
# (a chat message's role is ``data["role"]``).
_TYPE_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool",
               "chat": "", "HumanMessageChunk": "user", "AIMessageChunk": "assistant",
               "SystemMessageChunk": "system", "ToolMessageChunk": "tool", "FunctionMessageChunk": "tool",
               "ChatMessageChunk": ""}


def _is_langchain_record(message: Message) -> bool:
    """Whether the record holds a LangChain message as ``message_to_dict`` writes it."""
    content = message.content
    return (isinstance(content, dict) and isinstance(content.get("type"), str) and content["type"] in _TYPE_ROLES
            and isinstance(content.get("data"), dict))


def _native_block(block: Any) -> Any:
    """A LangChain content block in a shape build_context reads: reasoning as thinking,
    a standard image block (``base64``, ``mime_type``) as an image."""
    if isinstance(block, dict) and block.get("type") == "reasoning" and isinstance(block.get("reasoning"), str):
        return {"type": "thinking", "thinking": block["reasoning"]}
    if isinstance(block, dict) and block.get("type") == "image" and isinstance(block.get("base64"), str):
        return {"type": "image", "media_type": block.get("mime_type"), "data": block["base64"]}
    return block


def _read_langchain(path: list[Message], children: Any) -> list[Message]:
    """The context reader of LangChain messages (see ``register_context_reader``): each
    becomes a native record with its role, its content (``tool_call`` blocks left out:
    ``tool_calls`` says them), ``tool_calls`` as ``{id, name, input}``, and a tool
    message's ``tool_call_id``, ``name`` and ``is_error`` (``status == "error"``)."""
    out: list[Message] = []
    for record in path:
        if not _is_langchain_record(record):
            out.append(record)
            continue
        data = record.content["data"]
        role = _TYPE_ROLES[record.content["type"]] or data.get("role")
        role = role if isinstance(role, str) else ""
        content = data.get("content")
        if isinstance(content, list):
            content = [_native_block(b) for b in content
                       if not (isinstance(b, dict) and b.get("type") in ("tool_call", "tool_call_chunk"))]
        calls = data.get("tool_calls")
        fields = {"tool_call_id": data.get("tool_call_id"), "name": data.get("name"),
                  "is_error": data.get("status") == "error",
                  "tool_calls": [{"id": c.get("id"), "name": c.get("name"), "input": c.get("args")}
                                 for c in calls if isinstance(c, dict)] if isinstance(calls, list) else None}
        out.append(dataclasses.replace(record, type=role, role=role, content=content, fields=fields))
    return out


register_context_reader("langchain", _read_langchain, recognizes=_is_langchain_record)


def _record_of(message: BaseMessage) -> tuple[str, dict[str, Any]]:
    """The role and content of the record holding ``message``; refuses what is not JSON."""
    if not isinstance(message, BaseMessage):
        raise InvalidMessage(f"a chat message history holds LangChain messages, not {type(message).__name__}")
    try:
        record = message_to_dict(message)
        same = json.loads(json.dumps(record, allow_nan=False)) == record
    except (TypeError, ValueError, RecursionError):
        same = False
    if not same:
        raise InvalidMessage(f"a {type(message).__name__} whose fields are not all JSON cannot be stored: "
                             f"{message!r:.200}")
    kind = record["type"].removesuffix("MessageChunk").lower()
    return _ROLES.get(kind, "chat"), record


def _message_of(record: Message) -> BaseMessage:
    """The LangChain message a record holds (a record other software wrote: by its role)."""
    content = copy.deepcopy(record.content)
    if isinstance(content, dict) and isinstance(content.get("type"), str) and isinstance(content.get("data"), dict):
        return messages_from_dict([content])[0]
    text = content if isinstance(content, (str, list)) else json.dumps(content)
    plain = _PLAIN.get(record.role)
    return plain(content=text, id=record.id) if plain is not None else ChatMessage(
        role=record.role, content=text, id=record.id)


# ============================================================================
# The history
# ============================================================================


class SessionStoreChatMessageHistory(BaseChatMessageHistory):
    """A ``langchain_core.chat_history.BaseChatMessageHistory`` kept in a session store.

    ``SessionStoreChatMessageHistory(key, store)``: ``key`` is the store's key of the
    conversation (``"user:alice"``; the session is created on first use), ``store`` a
    :class:`~session_store.SessionStore` or an :class:`~session_store.AsyncSessionStore`
    (whose ``sync`` store is used). The async methods run the sync ones in a thread
    (``asyncio.to_thread``), never blocking the event loop.

    :attr:`messages` reads the current branch, root first (reset markers left out);
    :meth:`add_messages` appends after its head; :meth:`clear` empties it. Nothing is
    ever deleted: a cleared history stays in the session's tree
    (``store.get_tree``), and ``store.move_head`` brings it back.
    """

    def __init__(self, key: str, store: SessionStore | AsyncSessionStore) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"key must be a non-empty string, not {key!r}")
        if isinstance(store, AsyncSessionStore):
            store = store.sync
        if not isinstance(store, SessionStore):
            raise InvalidInput(f"store must be a SessionStore or an AsyncSessionStore, not {type(store).__name__}")
        self.store = store
        self.key = key
        self._sid: str | None = None

    def __repr__(self) -> str:
        return f"SessionStoreChatMessageHistory({self.key!r}, {self.store!r})"

    @property
    def session_id(self) -> str:
        """The store's id of this key's session (creating the session on first use)."""
        if self._sid is None:
            self._sid = self.store.resolve(self.key)
        return self._sid

    def _retrying(self, fn: Any) -> Any:
        """``fn(session id)``; once more if the session was deleted meanwhile (the key
        then names a new, empty one)."""
        try:
            return fn(self.session_id)
        except SessionNotFound:
            self._sid = None
            return fn(self.session_id)

    # -- reading ------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:
        """The messages on the current branch, root first, as new LangChain messages."""
        path: list[Message] = self._retrying(self.store.get_linear_history)
        return [_message_of(m) for m in path if m.type != "reset"]

    @messages.setter
    def messages(self, messages: Sequence[BaseMessage]) -> None:
        """``history.messages = [...]``: :meth:`clear`, then :meth:`add_messages`."""
        self.clear()
        self.add_messages(messages)

    async def aget_messages(self) -> list[BaseMessage]:
        """See :attr:`messages`."""
        return await asyncio.to_thread(lambda: self.messages)

    # -- writing ------------------------------------------------------------------

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order after the head, one record each, durable when
        this returns (with the store's ``durable``: one sync for them all). A message
        that is not JSON (an ``artifact`` object, say) raises
        :class:`~session_store.InvalidMessage` before anything is written; they are
        written all or none (:meth:`~session_store.SessionStore.append_many`)."""
        records = [{"role": role, "content": content} for role, content in (_record_of(m) for m in messages)]
        if records:
            self._retrying(lambda sid: self.store.append_many(sid, records))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """See :meth:`add_messages`."""
        await asyncio.to_thread(self.add_messages, messages)

    def clear(self) -> None:
        """Empty the current branch: :attr:`messages` is ``[]`` and the next message
        starts a new root. Nothing is deleted and no text is added."""
        self._retrying(lambda sid: self.store.move_head(sid, None))

    async def aclear(self) -> None:
        """See :meth:`clear`."""
        await asyncio.to_thread(self.clear)
