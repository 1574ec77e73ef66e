"""build_context never drops a turn silently: OpenAI Responses items as the OpenAI Agents
SDK stores them, developer messages, content held as a dict, other software's roles;
what has no equivalent raises with strict=True and is logged once per session otherwise."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from test_interop import assert_anthropic_accepts, assert_openai_accepts
from test_store import refuse_to_load

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


# -- contexts built on from the last one -------------------------------------------------
#
# The store keeps, per session and format, the context of the path it built last and
# extends it (or rewinds it a little) for the next one. Whatever happened in between,
# a context must equal the one a fresh store builds from scratch.

CALL_IDS = ["c1", "c2", "call_" + "x" * 40]


def record_of(kind: int, text: str, call: str) -> dict[str, Any]:
    """One record of the shapes contexts read, picked by ``kind``."""
    shapes: list[dict[str, Any]] = [
        {"role": "user", "content": text},
        {"role": "assistant", "content": text},
        {"role": "assistant", "content": text, "tool_calls": [
            {"id": call, "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}}]},
        {"role": "tool", "content": text, "tool_call_id": call},
        {"role": "assistant", "content": [{"type": "text", "text": text},
                                          {"type": "tool_use", "id": call, "name": "g", "input": {"q": text}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call, "content": text},
                                     {"type": "text", "text": text}]},
        {"role": "system", "content": text},
        {"role": "developer", "content": text},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": text, "signature": "sig"}]},
        {"role": "narrator", "content": text},  # no equivalent: left out and reported
    ]
    return shapes[kind % len(shapes)]


def built(store: SessionStore, sid: str, leaf: str | None, fmt: str, markers: bool = False) -> tuple[Any, str]:
    """The context, and what ``strict=True`` says was left out ("" when nothing)."""
    try:
        store.build_context(sid, leaf, format=fmt, strict=True,  # type: ignore[call-overload]
                            include_reset_markers=markers)
        left_out = ""
    except InvalidMessage as e:
        left_out = str(e)
    return store.build_context(sid, leaf, format=fmt, include_reset_markers=markers), left_out  # type: ignore[call-overload]


def fresh_context(fs: ss.InMemoryFileSystem, sid: str, leaf: str | None, fmt: str,
                  markers: bool = False) -> tuple[Any, str]:
    with SessionStore(fs) as fresh:
        return built(fresh, sid, leaf, fmt, markers)


def unfolded(store: SessionStore, sid: str, leaf: str | None, fmt: str, markers: bool) -> Any:
    """The context by its definition: the path's turns put together at once, no fold."""
    path = [m for m in store.get_linear_history(sid, leaf) if markers or m.type != "reset"]
    return ss._context(ss._path_turns(path, lambda _: [], []), fmt)


# (operation, a number picking a message and a record shape, a text, a call id)
OPS = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 30), st.sampled_from(["", " ", "a", "ab"]),
                         st.integers(0, 2)), max_size=40)


@given(OPS, st.sampled_from([256, 2]))
@settings(max_examples=200, deadline=None)
def test_a_context_built_on_from_the_last_one_equals_one_built_from_scratch(ops: list[Any], marks: int) -> None:
    kept, ss._CONTEXT_MARKS = ss._CONTEXT_MARKS, marks  # 2: how far back a fold rewinds is short
    try:
        check_contexts_along(ops)
    finally:
        ss._CONTEXT_MARKS = kept


def check_contexts_along(ops: list[Any]) -> None:
    fs = ss.InMemoryFileSystem()
    with SessionStore(fs) as mem:
        sid = mem.resolve("k")
        ids: list[str] = []
        for op, n, text, call in ops:
            pick = ids[n % len(ids)] if ids else None
            if op <= 2:  # append on the head, or a sibling somewhere
                parent = ss._HEAD if op < 2 or pick is None else pick
                ids.append(mem.append(sid, parent_id=parent, **record_of(n, text, CALL_IDS[call])).id)
            elif op == 3 and pick is not None:
                mem.move_head(sid, pick)
            elif op == 8 and ids:  # a reset: a marker (left out unless asked for) and a kept copy
                mem.reset(sid, keep_strategy="last", keep_count=n % 3)
                ids = [m.id for m in mem.get_messages(sid)]
            elif op == 4 and pick is not None:
                name = f"b{n}"
                if mem.get_branch(sid, name) is None:
                    mem.create_branch(sid, name, pick)
                mem.switch_to_branch(sid, name)
            else:  # build a context: of the head, or of any message
                leaf = None if op < 6 or pick is None else pick
                for fmt in ("openai", "anthropic"):
                    for markers in (False, True):
                        context = built(mem, sid, leaf, fmt, markers)
                        assert context == fresh_context(fs, sid, leaf, fmt, markers)
                        assert context[0] == unfolded(mem, sid, leaf, fmt, markers)


def test_a_context_after_another_store_appended_equals_one_built_from_scratch(open_store: Any) -> None:
    one, other = open_store(), open_store()
    sid = one.resolve("k")
    for i in range(6):
        one.append(sid, **record_of(i, f"t{i}", "c1"))
    before = one.build_context(sid)
    one.build_context(sid, format="anthropic")
    other.append(sid, role="assistant", content="more", tool_calls=[
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    other.append(sid, role="tool", content="done", tool_call_id="c2")
    third = open_store()
    assert one.build_context(sid) == third.build_context(sid) != before
    assert one.build_context(sid, format="anthropic") == third.build_context(sid, format="anthropic")


def test_a_context_after_a_repair_equals_one_built_from_scratch() -> None:
    fs = ss.InMemoryFileSystem()
    with SessionStore(fs) as one, SessionStore(fs) as other:
        sid = one.resolve("k")
        for i in range(5):
            one.append(sid, role="user" if i % 2 == 0 else "assistant", content=f"t{i}")
        one.build_context(sid)
        fs.append(f"{one.storage_dir}/{sid}/messages.jsonl", b'{"id":"broken",\n')  # a damaged record
        one.append(sid, role="user", content="after")
        assert other.repair().fixed
        one.append(sid, role="assistant", content="again")
        for fmt in ("openai", "anthropic"):
            assert built(one, sid, None, fmt) == fresh_context(fs, sid, None, fmt)


def test_registering_a_reader_rebuilds_contexts_built_before() -> None:
    with SessionStore(ss.InMemoryFileSystem()) as mem:
        sid = mem.resolve("k")
        mem.append(sid, role="user", content="Hi")
        mem.append(sid, role="assistant", type="ctxtest.note", content="native until read")
        assert mem.build_context(sid)[-1] == {"role": "assistant", "content": "native until read"}

        def reader(path: list[ss.Message], children: Any) -> list[ss.Message]:
            return [m for m in path if not m.type.startswith("ctxtest")]
        ss.register_context_reader("ctxtest", reader)
        try:
            assert mem.build_context(sid) == [{"role": "user", "content": "Hi"}]
        finally:
            del ss._CONTEXT_READERS["ctxtest"]


def test_contexts_are_fresh_lists_of_read_only_entries(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="user", content=[{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}])
    mem.append(sid, role="assistant", content="Calling.", tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    openai = mem.build_context(sid)
    openai.append({"role": "user", "content": "mine"})  # the list is the caller's
    with pytest.raises(TypeError):
        openai[0]["content"][0]["text"] = "changed"
    with pytest.raises(TypeError):
        openai[1]["tool_calls"].append({})
    openai[0].__init__(content="changed")  # type: ignore[misc]  # entries are shared with the kept context:
    openai[0]["content"].__init__(["changed"])  # a second __init__ (dict's and list's refill) changes nothing
    assert json.loads(json.dumps(openai)) == openai
    mutable = copy.deepcopy(openai)
    mutable[0]["content"][0]["text"] = "changed"
    anthropic = mem.build_context(sid, format="anthropic")
    anthropic["messages"].append({"role": "user", "content": "mine"})
    anthropic["system"] = "mine"
    with pytest.raises(TypeError):
        anthropic["messages"][0]["content"].clear()
    assert mem.build_context(sid) == openai[:-1] and openai[0]["content"][0]["text"] == "Hi"
    assert "system" not in mem.build_context(sid, format="anthropic")
    assert len(mem.build_context(sid, format="anthropic")["messages"]) == 3


def test_a_type_that_is_not_a_string_names_no_format(mem: SessionStore) -> None:
    sid = mem.resolve("odd")  # these raised TypeError (unhashable type) before
    mem.append(sid, role="user", content={"type": ["human"], "data": {"content": "x"}, "role": "user",
                                          "content": "held whole"})
    mem.append(sid, role="assistant", content=[{"type": ["text"], "text": "x"}, {"type": "text", "text": "ok"}])
    assert mem.build_context(sid) == [{"role": "user", "content": "held whole"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(InvalidMessage, match="without a type"):
        mem.build_context(sid, strict=True)


def test_a_context_of_the_last_messages_is_built_from_the_end_of_the_records_without_loading(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with SessionStore(storage_dir=str(tmp_path), durable=False) as writer:
        sid = writer.resolve("k")
        writer.append(sid, role="system", content="Be brief.")
        for i in range(200):
            writer.append(sid, role="user", content=f"q{i}")
            writer.append(sid, role="assistant", content="Looking.", tool_calls=[
                {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
            writer.append(sid, role="tool", content=f"r{i}", tool_call_id=f"call_{i}")
            writer.append(sid, role="assistant", content=f"a{i}")
        whole = writer.build_context(sid)
        whole_anthropic = writer.build_context(sid, format="anthropic")
    with SessionStore(storage_dir=str(tmp_path)) as fresh:
        monkeypatch.setattr(SessionStore, "_catch_up", refuse_to_load)
        assert fresh.build_context(sid, limit=4) == whole[-4:]  # q199's round whole
        assert fresh.build_context(sid, limit=3) == whole[-3:]  # from the call: the round without its question
        assert fresh.build_context(sid, limit=2) == whole[-1:]  # a result whose call is not in it: dropped
        anthropic = fresh.build_context(sid, format="anthropic", limit=4)
        assert_anthropic_accepts(anthropic)
        assert anthropic["messages"] == whole_anthropic["messages"][-4:] and "system" not in anthropic
        assert fresh.build_context(sid, limit=0) == []
        with pytest.raises(ss.InvalidInput):
            fresh.build_context(sid, limit=-1)
        monkeypatch.undo()
        with pytest.raises(ss.MessageNotFound):
            fresh.build_context(sid, "ghost", limit=3)
        assert fresh.build_context(sid, limit=10**6) == whole


def test_a_reader_that_recognizes_content_reads_those_records_wherever_they_are(mem: SessionStore) -> None:
    """A format known by its content (as the framework integrations register theirs)
    is read record by record: in a kept context extended message by message, in a
    fresh one, and by read_turns; registering again without ``recognizes`` stops it."""
    def recognizes(m: ss.Message) -> bool:
        return isinstance(m.content, dict) and m.content.get("toy") is True

    def reader(path: list[ss.Message], children: Any) -> list[ss.Message]:
        assert len(path) == 1  # one record at a time
        return [ss.Message(id=m.id, parent_id=m.parent_id, type="user", role="user", content=m.content["said"],
                           timestamp=m.timestamp) if recognizes(m) else m for m in path]

    sid = mem.resolve("toy")
    mem.append(sid, role="user", content={"toy": True, "said": "hello"})
    try:
        ss.register_context_reader("toy", reader, recognizes=recognizes)
        assert mem.build_context(sid) == [{"role": "user", "content": "hello"}]
        mem.append(sid, role="assistant", content="hi")
        mem.append(sid, role="user", content={"toy": True, "said": "again"})
        assert mem.build_context(sid) == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                                          {"role": "user", "content": "again"}]
        record = mem.get_linear_history(sid)[0]
        assert [t.content for t in ss.read_turns(record)] == [[{"type": "text", "text": "hello"}]]
        ss.register_context_reader("toy", reader)
        with pytest.raises(InvalidMessage, match="content block"):  # a dict of no known shape: reported
            mem.build_context(sid, strict=True)
    finally:
        ss._RECOGNIZERS.pop("toy", None)
        ss._CONTEXT_READERS.pop("toy", None)


def test_the_core_reads_no_framework_shape_without_its_integration(mem: SessionStore) -> None:
    """LangChain, pydantic-ai and LlamaIndex messages are read by the readers their
    integrations register (tests/test_langchain.py and the others); without one, such a
    record is not guessed at: what has no equivalent is reported."""
    assert not ss._RECOGNIZERS or set(ss._RECOGNIZERS) <= {"langchain", "pydantic_ai", "llama_index"}
    saved = dict(ss._RECOGNIZERS)
    ss._RECOGNIZERS.clear()
    try:
        sid = mem.resolve("langchain, unread")
        mem.append(sid, role="user", content={"type": "human", "data": {"content": "hi"}})
        with pytest.raises(InvalidMessage):
            mem.build_context(sid, strict=True)
    finally:
        ss._RECOGNIZERS.update(saved)
