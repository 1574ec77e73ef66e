"""session_store_langchain with the real langchain-core: exact round trips of every
message type, RunnableWithMessageHistory over a fake chat model, clear, async twins."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock
from frameworks import require

require("langchain_core", "langchain")

from langchain_core.chat_history import BaseChatMessageHistory, InMemoryChatMessageHistory  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
    messages_to_dict,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from langchain_core.runnables.history import RunnableWithMessageHistory  # noqa: E402
from test_interop import assert_anthropic_accepts, assert_openai_accepts  # noqa: E402

from session_store import AsyncSessionStore, InMemoryFileSystem, InvalidInput, InvalidMessage, SessionStore  # noqa: E402
from session_store_langchain import SessionStoreChatMessageHistory  # noqa: E402

CONVERSATION: list[BaseMessage] = [
    SystemMessage("You are terse.", id="sys-1"),
    HumanMessage("Weather in Paris?", id="h-1", additional_kwargs={"client": {"lang": "en"}}),
    AIMessage("", id="a-1", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}],
              additional_kwargs={"refusal": None}, response_metadata={"model_name": "fake", "finish_reason": "tool"},
              usage_metadata={"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}),
    ToolMessage("Sunny, 21°C", tool_call_id="call_1", name="weather", id="t-1"),
    AIMessage([{"type": "text", "text": "Sunny in Paris."}], id="a-2", name="assistant"),
    ChatMessage(role="developer", content="Keep it short."),
    FunctionMessage(name="legacy", content="42"),
    AIMessageChunk(content="streamed", id="a-3"),
]


@pytest.fixture
def mem() -> Iterator[SessionStore]:
    with SessionStore(InMemoryFileSystem(), clock=FakeClock()) as store:
        yield store


def test_every_message_type_comes_back_equal(store: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("user:alice", store)
    history.add_messages(CONVERSATION)
    again = SessionStoreChatMessageHistory("user:alice", store).messages
    assert again == CONVERSATION
    assert [type(m) for m in again] == [type(m) for m in CONVERSATION]
    assert messages_to_dict(again) == messages_to_dict(CONVERSATION)
    ai = again[2]
    assert isinstance(ai, AIMessage) and ai.tool_calls[0]["args"] == {"city": "Paris"}
    assert isinstance(again[3], ToolMessage) and again[3].tool_call_id == "call_1"
    assert [m.content for m in store.get_linear_history(history.session_id)] == messages_to_dict(CONVERSATION)


def test_what_langchain_wrote_gives_valid_requests_for_both_apis(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    history.add_messages(CONVERSATION)
    sid = history.session_id
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    # the legacy FunctionMessage answers no call: the APIs have no place for it, so it is dropped
    assert [m["role"] for m in openai] == ["system", "user", "assistant", "tool", "assistant", "developer", "assistant"]
    assert openai[2]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["system"] == "You are terse.\n\nKeep it short."


def test_records_are_one_per_message_with_the_roles_of_the_apis(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    history.add_messages(CONVERSATION)
    assert [m.role for m in mem.get_linear_history(history.session_id)] == [
        "system", "user", "assistant", "tool", "assistant", "chat", "tool", "assistant"]


def test_clear_empties_the_history_and_keeps_every_message(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    history.add_messages(CONVERSATION[:2])
    history.clear()
    assert history.messages == [] and mem.build_context(history.session_id) == []
    history.add_user_message("again")
    assert [m.content for m in history.messages] == ["again"]
    assert len(mem.get_messages(history.session_id)) == 3
    mem.move_head(history.session_id, mem.get_messages(history.session_id)[1].id)
    assert history.messages == CONVERSATION[:2]  # undo the clear


def test_assigning_messages_replaces_the_branch(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    history.add_messages(CONVERSATION[:2])
    history.messages = CONVERSATION[2:4]
    assert history.messages == CONVERSATION[2:4]


def test_what_is_not_json_is_refused_and_nothing_is_written(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    with pytest.raises(InvalidMessage):
        history.add_messages([HumanMessage("fine"), ToolMessage("x", tool_call_id="c", artifact=object())])
    with pytest.raises(InvalidMessage):
        history.add_messages(["not a message"])  # type: ignore[list-item]
    assert mem.get_messages(history.session_id) == []
    with pytest.raises(InvalidInput):
        SessionStoreChatMessageHistory("", mem)


def test_records_other_software_wrote_read_as_messages(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="user", content="plain text")
    mem.append(sid, role="assistant", content=[{"type": "text", "text": "blocks"}])
    mem.append(sid, role="critic", content={"score": 3})
    got = SessionStoreChatMessageHistory("k", mem).messages
    assert [type(m) for m in got] == [HumanMessage, AIMessage, ChatMessage]
    assert got[2].content == '{"score": 3}'


def test_async_twins(mem: SessionStore) -> None:
    async def twins() -> list[BaseMessage]:
        history = SessionStoreChatMessageHistory("k", AsyncSessionStore(mem))
        await history.aadd_messages(CONVERSATION[:3])
        assert await history.aget_messages() == CONVERSATION[:3]
        await history.aclear()
        return await history.aget_messages()
    assert asyncio.run(twins()) == []


# ============================================================================
# LangChain's documented use: RunnableWithMessageHistory
# ============================================================================


def chain_with_history(store: SessionStore, answers: list[str]) -> tuple[Any, GenericFakeChatModel]:
    model = GenericFakeChatModel(messages=iter(AIMessage(a) for a in answers))
    prompt = ChatPromptTemplate.from_messages([("system", "You're an assistant who's good at {ability}."),
                                               MessagesPlaceholder(variable_name="history"), ("human", "{question}")])

    def get_session_history(session_id: str) -> BaseChatMessageHistory:
        return SessionStoreChatMessageHistory(session_id, store)
    return RunnableWithMessageHistory(prompt | model, get_session_history, input_messages_key="question",
                                      history_messages_key="history"), model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # LangChain 1.x points to LangGraph; this still works
def test_runnable_with_message_history_keeps_the_conversation(store: SessionStore) -> None:
    chain, _ = chain_with_history(store, ["Cosine is adjacent over hypotenuse.", "Sine is opposite over hypotenuse."])
    config: Any = {"configurable": {"session_id": "abc123"}}
    chain.invoke({"ability": "math", "question": "What does cosine mean?"}, config=config)
    second = chain.invoke({"ability": "math", "question": "What's its inverse?"}, config=config)
    assert second.content == "Sine is opposite over hypotenuse."
    history = SessionStoreChatMessageHistory("abc123", store).messages
    assert [type(m) for m in history] == [HumanMessage, AIMessage, HumanMessage, AIMessage]
    assert [m.content for m in history] == ["What does cosine mean?", "Cosine is adjacent over hypotenuse.",
                                            "What's its inverse?", "Sine is opposite over hypotenuse."]
    sid = store.resolve("abc123")
    assert_openai_accepts(store.build_context(sid, strict=True))
    assert_anthropic_accepts(store.build_context(sid, format="anthropic", strict=True))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_model_sees_the_history_the_store_kept(mem: SessionStore) -> None:
    seen: list[list[BaseMessage]] = []
    chain, model = chain_with_history(mem, ["one", "two"])
    original = model._generate

    def recording(messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        seen.append(list(messages))
        return original(messages, *args, **kwargs)
    object.__setattr__(model, "_generate", recording)
    config: Any = {"configurable": {"session_id": "s"}}
    chain.invoke({"ability": "x", "question": "first"}, config=config)
    asyncio.run(chain.ainvoke({"ability": "x", "question": "second"}, config=config))
    assert [m.content for m in seen[-1]][1:] == ["first", "one", "second"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_langchains_own_clear_deletes_where_ours_keeps(mem: SessionStore) -> None:
    theirs, ours = InMemoryChatMessageHistory(), SessionStoreChatMessageHistory("k", mem)
    for history in (theirs, ours):
        history.add_messages(CONVERSATION[:2])
        history.clear()
        assert history.messages == []
    assert len(mem.get_messages(ours.session_id)) == 2


def test_messages_from_dict_reads_what_the_store_holds(mem: SessionStore) -> None:
    history = SessionStoreChatMessageHistory("k", mem)
    history.add_messages(CONVERSATION)
    stored = [m.content for m in mem.get_linear_history(history.session_id)]
    assert messages_from_dict(stored) == CONVERSATION


# -- build_context reads the records this module writes (its reader, registered on import) --


# What langchain_core.messages.messages_to_dict writes (langchain-core 1.x), one message per record.
LANGCHAIN_MESSAGES: list[dict[str, Any]] = [
    {"type": "system", "data": {"content": "Be brief.", "additional_kwargs": {}, "response_metadata": {},
                                "type": "system", "name": None, "id": None}},
    {"type": "human", "data": {"content": [{"type": "text", "text": "Weather in Paris? See:"},
                                           {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"}],
                               "additional_kwargs": {}, "response_metadata": {}, "type": "human", "name": None,
                               "id": "h1"}},
    {"type": "ai", "data": {"content": [{"type": "reasoning", "reasoning": "Use the tool."},
                                        {"type": "tool_call", "id": "call_1", "name": "weather",
                                         "args": {"city": "Paris"}}],
                            "additional_kwargs": {}, "response_metadata": {}, "type": "ai", "name": None, "id": "a1",
                            "tool_calls": [{"name": "weather", "args": {"city": "Paris"}, "id": "call_1",
                                            "type": "tool_call"}],
                            "invalid_tool_calls": [], "usage_metadata": None}},
    {"type": "tool", "data": {"content": "no data for Paris", "additional_kwargs": {}, "response_metadata": {},
                              "type": "tool", "name": "weather", "id": None, "tool_call_id": "call_1",
                              "artifact": None, "status": "error"}},
    {"type": "chat", "data": {"content": "Say it plainly.", "additional_kwargs": {}, "response_metadata": {},
                              "type": "chat", "name": None, "id": None, "role": "developer"}},
    {"type": "AIMessageChunk", "data": {"content": "I could not find it.", "additional_kwargs": {},
                                        "response_metadata": {}, "type": "AIMessageChunk", "name": None, "id": None,
                                        "tool_calls": [], "invalid_tool_calls": [], "usage_metadata": None,
                                        "tool_call_chunks": [], "chunk_position": None}},
]


def test_langchain_messages_as_messages_to_dict_writes_them(mem: SessionStore) -> None:
    sid = mem.resolve("langchain")
    for message in LANGCHAIN_MESSAGES:
        mem.append(sid, role="user", content=message)  # the role of the record does not matter: the dict says it
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["system", "user", "assistant", "tool", "developer", "assistant"]
    assert openai[1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert openai[2]["tool_calls"] == [{"id": "call_1", "type": "function",
                                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]
    assert openai[3] == {"role": "tool", "tool_call_id": "call_1", "content": "no data for Paris"}
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["system"] == "Be brief.\n\nSay it plainly."
    assert anthropic["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_1",
                                                      "content": "no data for Paris", "is_error": True}


def test_the_command_line_shows_what_langchain_said_not_its_json(tmp_path: Any) -> None:
    """history and tree, in a process that never imported this module, load it (its
    reader) for a session that holds objects, and show the messages' text and calls."""
    import os
    import subprocess
    import sys

    with SessionStore(storage_dir=str(tmp_path)) as store:
        SessionStoreChatMessageHistory("user:alice", store).add_messages(CONVERSATION[:5])
    run = subprocess.run([sys.executable, "-m", "session_store", "--dir", str(tmp_path), "history", "user:alice"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "system: You are terse.", "user: Weather in Paris?", 'assistant: [call weather {"city":"Paris"}]',
        "tool: Sunny, 21°C", "assistant: Sunny in Paris."]
    tree = subprocess.run([sys.executable, "-m", "session_store", "--dir", str(tmp_path), "tree", "user:alice"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert tree.returncode == 0 and "Weather in Paris?" in tree.stdout and '"data"' not in tree.stdout, tree
