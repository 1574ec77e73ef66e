"""session_store_pydantic_ai: a pydantic-ai agent's message history in a session store.

Two lines around each run keep an agent's conversation per key::

    from session_store_pydantic_ai import load_messages, save_messages

    result = agent.run_sync("Hello!", message_history=load_messages(store, "user:alice"))
    save_messages(store, "user:alice", result.new_messages())

Each ``ModelMessage`` (a ``ModelRequest`` or a ``ModelResponse``) is one message of the
key's session, appended after the head of its current branch: its content is the
message as ``ModelMessagesTypeAdapter`` dumps it to JSON, so it loads back equal, and
``store.build_context(sid, format="openai" | "anthropic")`` reads it (see
:meth:`session_store.SessionStore.build_context`). ``aload_messages`` and
``asave_messages`` are the same for asyncio code.

Imports ``session_store`` and ``pydantic-ai`` (``pip install "session-store[pydantic-ai]"``).
"""

from __future__ import annotations

__all__ = ["load_messages", "save_messages", "aload_messages", "asave_messages"]

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)

from session_store import (
    AsyncSessionStore,
    InvalidInput,
    InvalidMessage,
    Message,
    SessionStore,
)


def _sync(store: SessionStore | AsyncSessionStore) -> SessionStore:
    if isinstance(store, AsyncSessionStore):
        return store.sync
    if not isinstance(store, SessionStore):
        raise InvalidInput(f"store must be a SessionStore or an AsyncSessionStore, not {type(store).__name__}")
    return store


def _message_of(record: Message) -> ModelMessage | None:
    """The ``ModelMessage`` a record holds; a plain text record other software wrote
    becomes a request (user or system) or a response (assistant); others ``None``."""
    content = record.content
    if isinstance(content, dict) and content.get("kind") in ("request", "response"):
        return ModelMessagesTypeAdapter.validate_python([content])[0]
    if isinstance(content, str):
        if record.role in ("user", "human"):
            return ModelRequest(parts=[UserPromptPart(content)])
        if record.role in ("system", "developer"):
            return ModelRequest(parts=[SystemPromptPart(content)])
        if record.role in ("assistant", "ai"):
            return ModelResponse(parts=[TextPart(content)])
    return None


def load_messages(store: SessionStore | AsyncSessionStore, key: str, *, limit: int | None = None
                  ) -> list[ModelMessage]:
    """The key's messages on the current branch, oldest first, for ``message_history=``
    (``[]`` for a new key, which is then created).

    ``limit``: only the last ``limit`` messages, read back from the head in O(limit)
    (the window may begin with a tool result whose call it left out: pydantic-ai
    repairs such a history before sending it). Reset markers are left out, and so
    are records other software wrote that are neither pydantic-ai messages nor plain
    text.
    """
    store = _sync(store)
    path = store.get_linear_history(store.resolve(key), limit=limit)
    return [m for m in (_message_of(r) for r in path if r.type != "reset") if m is not None]


def save_messages(store: SessionStore | AsyncSessionStore, key: str, messages: Sequence[ModelMessage]) -> list[str]:
    """Append ``messages`` (``result.new_messages()``) in order after the key's head,
    one record each; returns their ids. Durable when this returns (with the store's
    ``durable``: one sync for them all). What pydantic-ai cannot dump to JSON raises
    :class:`~session_store.InvalidMessage` before anything is written; they are
    written all or none (:meth:`~session_store.SessionStore.append_many`).

    Save only what a run added: ``result.all_messages()`` would store the history a
    second time.
    """
    store = _sync(store)
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidInput(f"messages must be a list of pydantic-ai ModelMessages, not {type(messages).__name__}")
    for message in messages:
        if not isinstance(message, (ModelRequest, ModelResponse)):
            raise InvalidMessage(f"a ModelRequest or a ModelResponse is expected, not {type(message).__name__}")
    try:
        dumped: list[dict[str, Any]] = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    except Exception as e:  # pydantic's errors for what is not a ModelMessage or not serializable
        raise InvalidMessage(f"cannot store these messages: {e}") from None
    sid = store.resolve(key)
    written = store.append_many(sid, [{"role": "user" if content["kind"] == "request" else "assistant",
                                       "content": content} for content in dumped])
    return [m.id for m in written]


async def aload_messages(store: SessionStore | AsyncSessionStore, key: str, *, limit: int | None = None
                         ) -> list[ModelMessage]:
    """:func:`load_messages` in a thread, never blocking the event loop."""
    return await asyncio.to_thread(load_messages, store, key, limit=limit)


async def asave_messages(store: SessionStore | AsyncSessionStore, key: str,
                         messages: Sequence[ModelMessage]) -> list[str]:
    """:func:`save_messages` in a thread, never blocking the event loop."""
    return await asyncio.to_thread(save_messages, store, key, messages)
