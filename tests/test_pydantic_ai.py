"""session_store_pydantic_ai with the real pydantic-ai: an Agent over TestModel and
FunctionModel for several runs, message_history loaded from the store each time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock
from frameworks import require

require("pydantic_ai", "pydantic-ai")

from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel  # noqa: E402
from pydantic_ai.models.test import TestModel  # noqa: E402
from test_interop import assert_anthropic_accepts, assert_openai_accepts  # noqa: E402

from session_store import AsyncSessionStore, InMemoryFileSystem, InvalidInput, InvalidMessage, SessionStore  # noqa: E402
from session_store_pydantic_ai import aload_messages, asave_messages, load_messages, save_messages  # noqa: E402


@pytest.fixture
def mem() -> Iterator[SessionStore]:
    with SessionStore(InMemoryFileSystem(), clock=FakeClock()) as store:
        yield store


def weather_agent() -> Agent[None, str]:
    agent = Agent(TestModel(), system_prompt="Be brief.", instructions="Answer in English.")

    @agent.tool_plain
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"
    return agent


def test_runs_continue_from_the_history_the_store_kept(store: SessionStore) -> None:
    agent = weather_agent()
    first = agent.run_sync("Weather in Paris?", message_history=load_messages(store, "user:alice"))
    save_messages(store, "user:alice", first.new_messages())
    second = agent.run_sync("And tomorrow?", message_history=load_messages(store, "user:alice"))
    save_messages(store, "user:alice", second.new_messages())
    loaded = load_messages(store, "user:alice")
    assert loaded == second.all_messages()  # equal, part for part, timestamps included
    assert [m.kind for m in loaded] == ["request", "response", "request", "response", "request", "response"]
    sid = store.resolve("user:alice")
    assert [m.role for m in store.get_linear_history(sid)] == ["user", "assistant"] * 3
    assert [m.content for m in store.get_linear_history(sid)] == ModelMessagesTypeAdapter.dump_python(
        loaded, mode="json")


def test_saving_all_messages_after_every_run_stores_each_message_once(store: SessionStore) -> None:
    """pydantic-ai's persistence docs save ``result.all_messages()`` after each run: the
    stored history must equal the run's (it doubled: 6 messages became 14)."""
    agent = weather_agent()
    result = None
    for prompt in ("Weather in Paris?", "And tomorrow?", "And in Rome?"):
        result = agent.run_sync(prompt, message_history=load_messages(store, "user:alice"))
        save_messages(store, "user:alice", result.all_messages())
    assert result is not None
    assert load_messages(store, "user:alice") == result.all_messages()
    assert save_messages(store, "user:alice", result.all_messages()) == []  # saved again: nothing written
    sid = store.resolve("user:alice")
    assert len(store.get_messages(sid)) == len(result.all_messages())


def test_the_model_sees_every_earlier_run(mem: SessionStore) -> None:
    seen: list[list[ModelMessage]] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(list(messages))
        return ModelResponse(parts=[TextPart(f"answer {len(seen)}")])
    agent = Agent(FunctionModel(answer))
    for question in ("one", "two", "three"):
        result = agent.run_sync(question, message_history=load_messages(mem, "k"))
        save_messages(mem, "k", result.new_messages())
    prompts = [p.content for m in seen[-1] if isinstance(m, ModelRequest) for p in m.parts
               if isinstance(p, UserPromptPart)]
    assert prompts == ["one", "two", "three"]
    assert load_messages(mem, "k", limit=2)[-1].parts[0] == TextPart("answer 3")


def test_what_pydantic_ai_wrote_gives_valid_requests_for_both_apis(mem: SessionStore) -> None:
    agent = weather_agent()
    for question in ("Weather in Paris?", "And Lyon?"):
        result = agent.run_sync(question, message_history=load_messages(mem, "k"))
        save_messages(mem, "k", result.new_messages())
    sid = mem.resolve("k")
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert openai[0] == {"role": "system", "content": "Be brief."}
    assert any(m.get("tool_calls") for m in openai) and any(m["role"] == "tool" for m in openai)
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["system"] == "Be brief."


def test_limit_loads_the_last_messages(mem: SessionStore) -> None:
    agent = Agent(TestModel(custom_output_text="ok"))
    for question in ("a", "b", "c"):
        save_messages(mem, "k", agent.run_sync(question, message_history=load_messages(mem, "k")).new_messages())
    assert load_messages(mem, "k", limit=2) == load_messages(mem, "k")[-2:]
    assert load_messages(mem, "k", limit=0) == []


def test_pydantic_ais_documented_json_round_trip_holds_through_the_store(mem: SessionStore) -> None:
    agent = Agent(TestModel(custom_output_text="a joke"), system_prompt="Be a helpful assistant.")
    result1 = agent.run_sync("Tell me a joke.")
    history_step_1 = result1.all_messages()
    save_messages(mem, "jokes", history_step_1)
    same_history_as_step_1 = load_messages(mem, "jokes")
    assert same_history_as_step_1 == history_step_1
    result2 = agent.run_sync("Tell me a different joke.", message_history=same_history_as_step_1)
    save_messages(mem, "jokes", result2.new_messages())
    assert load_messages(mem, "jokes") == result2.all_messages()


def test_bad_input_raises_and_writes_nothing(mem: SessionStore) -> None:
    with pytest.raises(InvalidMessage):
        save_messages(mem, "k", [ModelRequest(parts=[UserPromptPart("fine")]), "not a message"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        save_messages(mem, "k", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        load_messages("not a store", "k")  # type: ignore[arg-type]
    assert mem.get_messages(mem.resolve("k")) == []


def test_plain_records_other_software_wrote_load_as_messages(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="system", content="Be brief.")
    mem.append(sid, role="user", content="hi")
    mem.append(sid, role="assistant", content="hello")
    mem.append(sid, role="critic", content={"score": 3})  # not a message pydantic-ai has
    loaded = load_messages(mem, "k")
    assert [m.kind for m in loaded] == ["request", "request", "response"]
    reply = Agent(TestModel(custom_output_text="again")).run_sync("more", message_history=loaded)
    assert reply.output == "again"


def test_async_twins_around_agent_run(mem: SessionStore) -> None:
    async def runs() -> list[ModelMessage]:
        store: Any = AsyncSessionStore(mem)
        agent = Agent(TestModel(custom_output_text="ok"))
        for question in ("one", "two"):
            result = await agent.run(question, message_history=await aload_messages(store, "k"))
            await asave_messages(store, "k", result.new_messages())
        return await aload_messages(store, "k")
    assert len(asyncio.run(runs())) == 4


def test_undo_a_run_by_moving_the_head_back(mem: SessionStore) -> None:
    agent = Agent(TestModel(custom_output_text="ok"))
    ids = save_messages(mem, "k", agent.run_sync("keep").new_messages())
    save_messages(mem, "k", agent.run_sync("regret", message_history=load_messages(mem, "k")).new_messages())
    mem.move_head(mem.resolve("k"), ids[-1])
    assert len(load_messages(mem, "k")) == 2


# -- build_context reads the records this module writes (its reader, registered on import) --


# What pydantic-ai's ModelMessagesTypeAdapter.dump_python(messages, mode="json") writes (trimmed of nulls).
PYDANTIC_AI_MESSAGES: list[dict[str, Any]] = [
    {"kind": "request", "instructions": "Answer in English.", "parts": [
        {"part_kind": "system-prompt", "content": "Be brief.", "timestamp": "2026-01-01T00:00:00Z"},
        {"part_kind": "user-prompt", "content": ["Weather in Paris?", {"kind": "image-url", "url": "https://x/y.png"},
                                                 {"kind": "binary", "data": "iVBORw==", "media_type": "image/png"},
                                                 {"kind": "cache-point"}]}]},
    {"kind": "response", "model_name": "claude", "parts": [
        {"part_kind": "thinking", "content": "Use the tool.", "signature": "sig", "provider_name": "anthropic"},
        {"part_kind": "tool-call", "tool_name": "weather", "args": {"city": "Paris"}, "tool_call_id": "call_1"},
        {"part_kind": "tool-call", "tool_name": "weather", "args": '{"city": "Lyon"}', "tool_call_id": "call_2"}]},
    {"kind": "request", "parts": [
        {"part_kind": "tool-return", "tool_name": "weather", "content": {"sky": "sunny"}, "tool_call_id": "call_1",
         "outcome": "success"},
        {"part_kind": "tool-return", "tool_name": "weather", "content": "unknown city", "tool_call_id": "call_2",
         "outcome": "retried"},
        {"part_kind": "instruction-delta", "content": "changed"}]},
    {"kind": "response", "parts": [{"part_kind": "thinking", "content": "Done.", "signature": "x",
                                    "provider_name": "openai"},
                                   {"part_kind": "text", "content": "Sunny in Paris."}]},
    {"kind": "request", "parts": [{"part_kind": "retry-feedback", "content": "Answer in one word."}]},
    {"kind": "response", "parts": [{"part_kind": "text", "content": "Sunny."}]},
]


def test_pydantic_ai_messages_as_its_type_adapter_writes_them(mem: SessionStore) -> None:
    sid = mem.resolve("pydantic-ai")
    for message in PYDANTIC_AI_MESSAGES:
        mem.append(sid, role="user" if message["kind"] == "request" else "assistant", content=message)
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["system", "user", "assistant", "tool", "tool", "assistant", "user",
                                           "assistant"]
    assert [p["type"] for p in openai[1]["content"]] == ["text", "image_url", "image_url"]
    assert [c["function"]["arguments"] for c in openai[2]["tool_calls"]] == ['{"city":"Paris"}', '{"city": "Lyon"}']
    assert openai[3]["content"] == '{"sky":"sunny"}'
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["system"] == "Be brief."  # instructions are the caller's to send, as pydantic-ai does
    thinking = [b for m in anthropic["messages"] if isinstance(m["content"], list)
                for b in m["content"] if b["type"] == "thinking"]
    assert thinking == [{"type": "thinking", "thinking": "Use the tool.", "signature": "sig"}]  # OpenAI's: not sent
    results = anthropic["messages"][2]["content"]
    assert [r.get("is_error", False) for r in results] == [False, True]


def test_pydantic_ai_hosted_tool_parts_have_no_equivalent(mem: SessionStore) -> None:
    sid = mem.resolve("pydantic-ai")
    mem.append(sid, role="user", content={"kind": "request", "parts": [{"part_kind": "user-prompt", "content": "?"}]})
    mem.append(sid, role="assistant", content={"kind": "response", "parts": [
        {"part_kind": "builtin-tool-call", "tool_name": "web_search", "args": {}, "tool_call_id": "ws_1"},
        {"part_kind": "text", "content": "Found it."}]})
    with pytest.raises(InvalidMessage, match="builtin-tool-call"):
        mem.build_context(sid, strict=True)
    assert mem.build_context(sid)[-1] == {"role": "assistant", "content": "Found it."}
