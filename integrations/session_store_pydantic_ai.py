"""session_store_pydantic_ai: a pydantic-ai agent's message history in a session store.

Two lines around each run keep an agent's conversation per key::

    from session_store_pydantic_ai import load_messages, save_messages

    result = agent.run_sync("Hello!", message_history=load_messages(store, "user:alice"))
    save_messages(store, "user:alice", result.new_messages())

Each ``ModelMessage`` (a ``ModelRequest`` or a ``ModelResponse``) is one message of the
key's session, appended after the head of its current branch: its content is the
message as ``ModelMessagesTypeAdapter`` dumps it to JSON, so it loads back equal, and
``store.build_context(sid, format="openai" | "anthropic")`` reads it (this module
registers the reader when imported: see :func:`session_store.register_context_reader`). ``aload_messages`` and
``asave_messages`` are the same for asyncio code.

Imports ``session_store`` and ``pydantic-ai`` (``pip install "session-store[pydantic-ai]"``).
"""

from __future__ import annotations

__all__ = ["load_messages", "save_messages", "aload_messages", "asave_messages"]

import asyncio
import dataclasses
import json
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
    register_context_reader,
)

# -- reading records as build_context does ---------------------------------------------

# Parts that configure a run (instructions, tools, settings): the caller sends its own
# with each request, as pydantic-ai does; they are not conversation.
_SETTINGS = frozenset({"instruction", "instruction-delta", "instruction-digest", "instruction-baseline",
                       "tool-availability-delta", "capability-load-delta", "model-settings-delta"})
_CALLS = frozenset({"tool-call", "tool-search-call", "capability-load-call"})
_RESULTS = frozenset({"tool-return", "tool-search-return", "capability-load-return", "retry-prompt"})


def _is_model_message(record: Message) -> bool:
    """Whether the record holds a ``ModelRequest`` or ``ModelResponse`` as JSON."""
    content = record.content
    return (isinstance(content, dict) and content.get("kind") in ("request", "response")
            and isinstance(content.get("parts"), list))


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    """A ``UserPromptPart``'s content as blocks: text, and images by URL or as binary
    content; what else it holds as a block of its own type, which build_context reports."""
    blocks: list[dict[str, Any]] = []
    for item in content if isinstance(content, list) else [content]:
        kind = item.get("kind") if isinstance(item, dict) else None
        if isinstance(item, str):
            blocks.append({"type": "text", "text": item})
        elif kind == "image-url" and isinstance(item.get("url"), str):
            blocks.append({"type": "image", "url": item["url"]})
        elif kind == "binary" and str(item.get("media_type")).startswith("image/") \
                and isinstance(item.get("data"), str):
            blocks.append({"type": "image", "media_type": item["media_type"], "data": item["data"]})
        elif kind == "text-content" and isinstance(item.get("content"), str):
            blocks.append({"type": "text", "text": item["content"]})
        elif kind != "cache-point":
            blocks.append({"type": f"pydantic-ai user content of kind {kind!r}"})
    return blocks


def _native(record: Message) -> list[Message]:
    """The native records of one ``ModelMessage``: one per part. A request's
    ``instructions`` are left out (pydantic-ai itself sends the current agent's, never
    those of the history); thinking keeps its signature only when Anthropic made it;
    a part of a hosted tool becomes a block of its own type, which build_context
    reports as having no equivalent."""
    message = record.content
    response = message["kind"] == "response"
    out: list[Message] = []

    def add(role: str, content: Any, **fields: Any) -> None:
        out.append(dataclasses.replace(record, type=role, role=role, content=content, fields=fields))
    for i, part in enumerate(message["parts"]):
        kind = part.get("part_kind") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind in _SETTINGS:
            continue
        content, call_id = part.get("content"), part.get("tool_call_id")
        if kind == "system-prompt":
            add("system", _text_of(content))
        elif kind == "user-prompt":
            add("user", _user_blocks(content))
        elif kind == "retry-feedback" or (kind == "retry-prompt" and not isinstance(call_id, str)):
            add("user", _text_of(content))
        elif kind in _RESULTS and not response and isinstance(call_id, str):
            name = part.get("tool_name")
            add("tool", _text_of(content), tool_call_id=call_id, name=name if isinstance(name, str) else "",
                is_error=kind == "retry-prompt" or part.get("outcome") in ("failed", "retried"))
        elif kind == "text" and response:
            add("assistant", [{"type": "text", "text": _text_of(content)}])
        elif kind == "thinking" and response:
            signature = part.get("signature") if part.get("provider_name") == "anthropic" else None
            add("assistant", [{"type": "thinking", "thinking": _text_of(content),
                               "signature": signature if isinstance(signature, str) else None}])
        elif kind in _CALLS and response:
            add("assistant", [{"type": "tool_use", "name": str(part.get("tool_name")), "input": part.get("args"),
                               "id": call_id if isinstance(call_id, str) and call_id else f"{record.id}-call-{i}"}])
        else:
            add("assistant" if response else "user", [{"type": f"pydantic-ai {kind!r} part"}])
    return out


def _read_pydantic_ai(path: list[Message], children: Any) -> list[Message]:
    """The context reader of pydantic-ai messages (see ``register_context_reader``)."""
    out: list[Message] = []
    for record in path:
        out += _native(record) if _is_model_message(record) else [record]
    return out


register_context_reader("pydantic_ai", _read_pydantic_ai, recognizes=_is_model_message)


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
    """Append ``messages`` in order after the key's head, one record each; returns
    the ids of the records written. Durable when this returns (with the store's
    ``durable``: one sync for them all). What pydantic-ai cannot dump to JSON raises
    :class:`~session_store.InvalidMessage` before anything is written; they are
    written all or none (:meth:`~session_store.SessionStore.append_many`).

    Either ``result.new_messages()`` or ``result.all_messages()`` (as pydantic-ai's
    persistence docs save it): when ``messages`` begins with the whole history on the
    key's current branch, only the rest is written, so saving the full history after
    every run stores each message once (saving it twice writes nothing). The check
    and the write are two steps: writers that may save the same key at once should
    hold its lease (``with store.lock(sid, owner):``).
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
    stored = store.get_linear_history(sid, limit=len(dumped) + 1)
    if len(stored) <= len(dumped) and [m.content for m in stored] == dumped[:len(stored)]:
        dumped = dumped[len(stored):]  # the history the run started from is stored: only the rest is new
    if not dumped:
        return []
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
