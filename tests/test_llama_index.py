"""session_store_llama_index with the real llama-index-core: every BaseChatStore method,
deletions that lose nothing, ChatMemoryBuffer and a chat engine over MockLLM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import FakeClock
from frameworks import require

require("llama_index.core", "llama-index")

from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.chat_engine import SimpleChatEngine  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.memory import ChatMemoryBuffer  # noqa: E402
from llama_index.core.storage.chat_store import SimpleChatStore  # noqa: E402
from test_interop import assert_anthropic_accepts, assert_openai_accepts  # noqa: E402

from session_store import AsyncSessionStore, InMemoryFileSystem, InvalidInput, InvalidMessage, SessionStore  # noqa: E402
from session_store_llama_index import SessionStoreChatStore, SessionStoreDBChatStore  # noqa: E402

CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", blocks=[TextBlock(text="Weather here?"), ImageBlock(url="https://example.com/sky.png")]),
    ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}),
    ChatMessage(role="tool", content="Sunny", additional_kwargs={"tool_call_id": "call_1", "name": "weather"}),
    ChatMessage(role="assistant", blocks=[ThinkingBlock(content="Also Lyon."), TextBlock(text="Sunny."),
                                          ToolCallBlock(tool_call_id="call_2", tool_name="weather",
                                                        tool_kwargs={"city": "Lyon"})]),
    ChatMessage(role="tool", content="Rain", additional_kwargs={"tool_call_id": "call_2"}),
    ChatMessage(role="assistant", content="Sunny in Paris, rain in Lyon."),
]


@pytest.fixture
def mem() -> Iterator[SessionStore]:
    with SessionStore(InMemoryFileSystem(), clock=FakeClock()) as store:
        yield store


def texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def test_messages_come_back_equal(store: SessionStore) -> None:
    chat_store = SessionStoreChatStore(store)
    for message in CONVERSATION:
        chat_store.add_message("user:alice", message)
    assert SessionStoreChatStore(store).get_messages("user:alice") == CONVERSATION
    assert chat_store.get_keys() == ["user:alice"]


def test_what_llama_index_wrote_gives_valid_requests_for_both_apis(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", CONVERSATION)
    sid = mem.resolve("k")
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert openai[4]["tool_calls"][0]["id"] == "call_2"
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)


def test_unknown_keys_read_empty_and_create_nothing(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    assert chat_store.get_messages("nobody") == []
    assert chat_store.delete_messages("nobody") is None
    assert chat_store.delete_last_message("nobody") is None
    assert chat_store.delete_message("nobody", 0) is None
    assert chat_store.get_keys() == [] and mem.get_all_session_ids() == []


def test_delete_last_message_moves_the_head_back(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", CONVERSATION[:3])
    assert chat_store.delete_last_message("k") == CONVERSATION[2]
    assert chat_store.get_messages("k") == CONVERSATION[:2]
    assert len(mem.get_messages(mem.resolve("k"))) == 3


def test_delete_messages_empties_the_key_and_keeps_every_message(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", CONVERSATION[:2])
    assert chat_store.delete_messages("k") == CONVERSATION[:2]
    assert chat_store.get_messages("k") == [] and chat_store.get_keys() == []
    assert mem.build_context(mem.resolve("k")) == []
    assert len(mem.get_messages(mem.resolve("k"))) == 2


def test_delete_message_in_the_middle_writes_the_rest_again(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", [ChatMessage(role="user", content=t) for t in "abcd"])
    assert texts([m for m in [chat_store.delete_message("k", 1)] if m is not None]) == ["b"]
    assert texts(chat_store.get_messages("k")) == ["a", "c", "d"]
    assert texts([m for m in [chat_store.delete_message("k", -1)] if m is not None]) == ["d"]
    assert texts([m for m in [chat_store.delete_message("k", 0)] if m is not None]) == ["a"]
    assert texts(chat_store.get_messages("k")) == ["c"]
    assert chat_store.delete_message("k", 5) is None
    assert sorted(m.content["blocks"][0]["text"] for m in mem.get_messages(mem.resolve("k"))) == [
        "a", "b", "c", "c", "c", "d", "d"]  # every version is kept


def test_set_messages_replaces_the_branch_and_keeps_the_old_one(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", CONVERSATION[:2])
    chat_store.set_messages("k", CONVERSATION[5:])
    assert chat_store.get_messages("k") == CONVERSATION[5:]
    chat_store.set_messages("k", [])
    assert chat_store.get_messages("k") == []
    assert len(mem.get_messages(mem.resolve("k"))) == 4


def test_add_message_at_an_index_inserts(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_store.set_messages("k", [ChatMessage(role="user", content=t) for t in "ac"])
    chat_store.add_message("k", ChatMessage(role="user", content="b"), idx=1)
    chat_store.add_message("k", ChatMessage(role="user", content="0"), idx=0)
    assert texts(chat_store.get_messages("k")) == ["0", "a", "b", "c"]


def test_bad_input_raises_and_writes_nothing(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    with pytest.raises(InvalidMessage):
        chat_store.set_messages("k", [ChatMessage(role="user", content="fine"), "no"])  # type: ignore[list-item]
    assert mem.get_messages(mem.resolve("k")) == []
    with pytest.raises(InvalidInput):
        SessionStoreChatStore("not a store")  # type: ignore[arg-type]


def test_async_twins(mem: SessionStore) -> None:
    async def twins() -> list[ChatMessage]:
        chat_store = SessionStoreChatStore(AsyncSessionStore(mem))
        await chat_store.aset_messages("k", CONVERSATION[:2])
        await chat_store.async_add_message("k", CONVERSATION[2])
        assert await chat_store.adelete_last_message("k") == CONVERSATION[2]
        assert await chat_store.aget_keys() == ["k"]
        return await chat_store.aget_messages("k")
    assert asyncio.run(twins()) == CONVERSATION[:2]


def test_llama_indexs_documented_memory_and_chat_engine_keep_the_chat(mem: SessionStore) -> None:
    chat_store = SessionStoreChatStore(mem)
    chat_memory = ChatMemoryBuffer.from_defaults(token_limit=3000, chat_store=chat_store, chat_store_key="user1")
    chat_engine = SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=5), memory=chat_memory)
    chat_engine.chat("Hello!")
    chat_engine.chat("And again?")
    stored = chat_store.get_messages("user1")
    assert [m.role.value for m in stored] == ["user", "assistant", "user", "assistant"]
    assert [stored[0].content, stored[2].content] == ["Hello!", "And again?"]
    chat_engine.reset()  # the engine's "forget": our chat store keeps it in the tree
    assert chat_store.get_messages("user1") == [] and len(mem.get_messages(mem.resolve("user1"))) == 4
    assert_openai_accepts(mem.build_context(mem.resolve("user1")))


def test_simple_chat_store_deletes_where_ours_keeps(mem: SessionStore) -> None:
    theirs, ours = SimpleChatStore(), SessionStoreChatStore(mem)
    for chat_store in (theirs, ours):
        chat_store.set_messages("k", CONVERSATION[:2])
        assert chat_store.delete_messages("k") == CONVERSATION[:2]
        assert chat_store.get_messages("k") == []
    assert theirs.store == {} and len(mem.get_messages(mem.resolve("k"))) == 2


# -- build_context reads the records this module writes (its reader, registered on import) --


def test_llama_index_chat_messages_as_model_dump_gives_them(mem: SessionStore) -> None:
    sid = mem.resolve("llama-index")
    messages: list[dict[str, Any]] = [
        {"role": "user", "additional_kwargs": {}, "blocks": [
            {"block_type": "text", "text": "Weather?"},
            {"block_type": "image", "image": "iVBORw==", "image_mimetype": "image/png", "url": None}]},
        {"role": "assistant", "additional_kwargs": {"tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
         "blocks": [{"block_type": "text", "text": ""}]},
        {"role": "tool", "additional_kwargs": {"tool_call_id": "call_1"}, "blocks": [{"block_type": "text",
                                                                                       "text": "Sunny"}]},
        {"role": "chatbot", "additional_kwargs": {}, "blocks": [
            {"block_type": "thinking", "content": "Lyon too."},
            {"block_type": "tool_call", "tool_call_id": "call_2", "tool_name": "weather", "tool_kwargs": {"c": 1}}]},
        {"role": "tool", "additional_kwargs": {"tool_call_id": "call_2"}, "blocks": [{"block_type": "text",
                                                                                       "text": "Rain"}]},
    ]
    for message in messages:
        mem.append(sid, role=message["role"], content=message)
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool", "assistant", "tool"]
    assert openai[0]["content"][1]["type"] == "image_url"
    assert openai[3]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"c":1}'}
    assert_anthropic_accepts(mem.build_context(sid, format="anthropic", strict=True))
    mem.append(sid, role="user", content={"role": "user", "blocks": [{"block_type": "audio", "audio": "x"}]})
    with pytest.raises(InvalidMessage, match="audio"):
        mem.build_context(sid, strict=True)


# -- Memory (LlamaIndex's current memory) over SessionStoreDBChatStore ------------------------------


def test_llama_index_memory_takes_the_store_archives_and_keeps_every_message(store: SessionStore) -> None:
    """``Memory.from_defaults(chat_store=...)`` refused the chat store ("Input should be a
    valid dictionary or instance of AsyncDBChatStore"); with a small token limit Memory
    archives the oldest messages, and nothing leaves the session's tree."""
    from llama_index.core.memory import Memory
    from llama_index.core.storage.chat_store.base_db import MessageStatus

    chat_store = SessionStoreDBChatStore(store)
    memory = Memory.from_defaults(session_id="user:alice", chat_store=chat_store, token_limit=60,
                                  token_flush_size=20, chat_history_token_ratio=0.5)
    said = [ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"message number {i} " + "word " * 8)
            for i in range(12)]
    for message in said:
        memory.put(message)
    everything = memory.get_all()
    assert texts(everything) == texts(said)  # archived then active: every message, in order
    active = asyncio.run(chat_store.get_messages("user:alice", status=MessageStatus.ACTIVE))
    archived = asyncio.run(chat_store.get_messages("user:alice", status=MessageStatus.ARCHIVED))
    assert archived and active and texts(archived + active) == texts(said)  # Memory flushed the oldest
    assert asyncio.run(chat_store.count_messages("user:alice", status=None)) == len(said)
    assert texts(memory.get())[-1] == said[-1].content  # the context ends with the newest message

    reopened = Memory.from_defaults(session_id="user:alice", chat_store=SessionStoreDBChatStore(store),
                                    token_limit=60, token_flush_size=20, chat_history_token_ratio=0.5)
    assert texts(reopened.get_all()) == texts(said)  # another Memory on the same store reads it back
    sid = store.resolve("user:alice")
    before = len(store.get_messages(sid))
    memory.reset()
    assert memory.get_all() == [] and asyncio.run(chat_store.get_keys()) == []
    assert len(store.get_messages(sid)) == before  # the reset moved the head: every message is kept


def test_the_db_chat_store_s_operations_follow_llama_index_s_sql_store(mem: SessionStore) -> None:
    from llama_index.core.storage.chat_store.base_db import MessageStatus

    chat = SessionStoreDBChatStore(mem)
    said = [ChatMessage(role="user", content=str(i)) for i in range(6)]

    async def run() -> None:
        assert await chat.get_messages("k") == [] and mem.get_all_session_ids() == []  # nothing made
        await chat.add_messages("k", said)
        assert texts(await chat.archive_oldest_messages("k", 2)) == ["0", "1"]
        assert texts(await chat.get_messages("k", status=MessageStatus.ARCHIVED)) == ["0", "1"]
        assert texts(await chat.get_messages("k", limit=2, offset=1)) == ["3", "4"]
        assert texts(await chat.delete_oldest_messages("k", 1)) == ["2"]
        assert texts(await chat.get_messages("k", status=None)) == ["0", "1", "3", "4", "5"]
        assert (await chat.delete_message("k", 0)).content == "0"  # type: ignore[union-attr]
        assert texts(await chat.get_messages("k", status=MessageStatus.ARCHIVED)) == ["1"]
        await chat.add_message("k", ChatMessage(role="user", content="old"), status=MessageStatus.ARCHIVED)
        assert texts(await chat.get_messages("k", status=None)) == ["1", "old", "3", "4", "5"]
        await chat.delete_messages("k", status=MessageStatus.ARCHIVED)
        assert texts(await chat.get_messages("k", status=None)) == ["3", "4", "5"]
        assert await chat.count_messages("k", status=MessageStatus.ARCHIVED) == 0
        await chat.set_messages("k", said[:2], status=MessageStatus.ARCHIVED)
        assert await chat.count_messages("k") == 0 and await chat.count_messages("k", status=None) == 2
        await chat.delete_messages("k", status=MessageStatus.ACTIVE)
        assert await chat.count_messages("k", status=None) == 2
        await chat.delete_messages("k")
        assert await chat.get_keys() == []
        with pytest.raises(InvalidMessage):
            await chat.add_messages("k", ["not a ChatMessage"])  # type: ignore[list-item]
        assert await chat.count_messages("k", status=None) == 0

    asyncio.run(run())


def test_refused_messages_make_no_session_for_their_key(mem: SessionStore) -> None:
    from llama_index.core.storage.chat_store.base_db import MessageStatus

    chat, memory_store = SessionStoreChatStore(mem), SessionStoreDBChatStore(mem)
    bad: list[Any] = [ChatMessage(role="user", content="fine"), "no"]
    writes: list[Callable[[], object]] = [
        lambda: chat.set_messages("a", bad), lambda: chat.add_message("b", bad[1]),
        lambda: asyncio.run(memory_store.add_messages("c", bad)),
        lambda: asyncio.run(memory_store.add_messages("d", bad, status=MessageStatus.ARCHIVED)),
        lambda: asyncio.run(memory_store.set_messages("e", bad))]
    for write in writes:
        with pytest.raises(InvalidMessage):
            write()
    assert mem.get_all_session_ids() == []
