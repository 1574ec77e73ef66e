"""build_context never drops a turn silently: OpenAI Responses items as the OpenAI Agents
SDK stores them, developer messages, content held as a dict, other software's roles;
what has no equivalent raises with strict=True and is logged once per session otherwise."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_interop import assert_anthropic_accepts, assert_openai_accepts

import session_store as ss
from session_store import InvalidMessage, SessionStore

# Items exactly as openai-agents stores them (SQLiteSession: json.dumps of each input item):
# the user's input, a reasoning item, a function call, its output, the final message.
AGENT_ITEMS: list[dict[str, Any]] = [
    {"content": "What's the weather in Paris?", "role": "user"},
    {"id": "rs_68a1", "summary": [{"text": "Use the weather tool.", "type": "summary_text"}], "type": "reasoning"},
    {"arguments": '{"city":"Paris"}', "call_id": "call_W1x", "name": "get_weather", "type": "function_call",
     "id": "fc_68a1", "status": "completed"},
    {"call_id": "call_W1x", "output": "Sunny, 21°C", "type": "function_call_output"},
    {"id": "msg_68a1", "content": [{"annotations": [], "text": "It is sunny in Paris.", "type": "output_text",
                                    "logprobs": []}], "role": "assistant", "status": "completed", "type": "message"},
]


@pytest.fixture
def mem() -> Any:
    with SessionStore(ss.InMemoryFileSystem()) as store:
        yield store


def test_openai_agents_sdk_items_each_held_as_a_record_give_the_whole_exchange(mem: SessionStore) -> None:
    sid = mem.resolve("agent")
    for item in AGENT_ITEMS:
        mem.append(sid, role=str(item.get("role", item.get("type"))), content=item)
    openai = mem.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert openai == [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_W1x", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_W1x", "content": "Sunny, 21°C"},
        {"role": "assistant", "content": "It is sunny in Paris."}]
    anthropic = mem.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_W1x", "name": "get_weather", "input": {"city": "Paris"}}]
    assert anthropic["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_W1x", "content": "Sunny, 21°C"}]


def test_responses_content_parts_are_text(mem: SessionStore) -> None:
    sid = mem.resolve("parts")
    mem.append(sid, role="user", content=[{"type": "input_text", "text": "Hi"},
                                          {"type": "input_image", "image_url": "https://x.test/a.png"}])
    mem.append(sid, role="assistant", content=[{"type": "output_text", "text": "Hello", "annotations": []},
                                               {"type": "refusal", "refusal": "but not that."}])
    assert mem.build_context(sid, strict=True) == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"},
                                          {"type": "text", "text": "but not that."}]}]


def test_developer_messages_stay_developer_for_openai_and_become_system_for_anthropic(mem: SessionStore) -> None:
    sid = mem.resolve("dev")
    mem.append(sid, role="developer", content="Answer in French.")
    mem.append(sid, role="user", content="Hello")
    assert mem.build_context(sid) == [{"role": "developer", "content": "Answer in French."},
                                      {"role": "user", "content": "Hello"}]
    assert mem.build_context(sid, format="anthropic") == {"system": "Answer in French.",
                                                          "messages": [{"role": "user", "content": "Hello"}]}


def test_content_held_as_one_dict_is_read(mem: SessionStore) -> None:
    sid = mem.resolve("dict")
    mem.append(sid, role="user", content={"type": "text", "text": "One block."})
    mem.append(sid, role="assistant", content={"role": "assistant", "content": "A whole message.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    mem.append(sid, role="tool", content={"role": "tool", "tool_call_id": "c1", "content": "done"})
    assert mem.build_context(sid, strict=True) == [
        {"role": "user", "content": "One block."},
        {"role": "assistant", "content": "A whole message.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]


def test_other_softwares_roles_map_to_the_apis(mem: SessionStore) -> None:
    sid = mem.resolve("roles")
    mem.append(sid, role="human", content="Hi")
    mem.append(sid, role="ai", content="Hello")
    mem.append(sid, role="model", content="And welcome.")
    assert mem.build_context(sid, strict=True) == [  # two assistant records: one response
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "And welcome."}]}]


@pytest.mark.parametrize("record, what", [
    ({"role": "narrator", "content": "Meanwhile, in Paris..."}, "role of"),
    ({"role": "assistant", "content": {"type": "web_search_call", "id": "ws_1", "status": "completed"}},
     "'web_search_call' item"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]},
     "block of type 'input_audio'"),
])
def test_what_has_no_equivalent_raises_when_strict_and_is_logged_once_per_session_otherwise(
        mem: SessionStore, caplog: pytest.LogCaptureFixture, record: dict[str, Any], what: str) -> None:
    sid = mem.resolve("odd")
    mem.append(sid, role="user", content="Before.")
    odd = mem.append(sid, **record)
    with pytest.raises(InvalidMessage, match=what) as raised:
        mem.build_context(sid, strict=True)
    assert odd.id in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="session_store"):
        assert mem.build_context(sid) == [{"role": "user", "content": "Before."}]
        mem.build_context(sid, format="anthropic")
    warnings = [r for r in caplog.records if sid in r.getMessage()]
    assert len(warnings) == 1 and odd.id in warnings[0].getMessage()


def test_read_turns_gives_one_canonical_shape(mem: SessionStore) -> None:
    sid = mem.resolve("turns")
    m = mem.append(sid, role="assistant", content="Calling.", tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}])
    r = mem.append(sid, role="tool", content="ok", tool_call_id="c1")
    [turn] = ss.read_turns(m)
    assert (turn.role, turn.content) == ("assistant", [
        {"type": "text", "text": "Calling."}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}])
    [result] = ss.read_turns(r)
    assert (result.role, result.content, dict(result.fields)) == (
        "tool", [{"type": "text", "text": "ok"}], {"tool_call_id": "c1", "is_error": False, "name": ""})
    with pytest.raises(InvalidMessage):
        ss.read_turns(mem.append(sid, role="narrator", content="?"), strict=True)
