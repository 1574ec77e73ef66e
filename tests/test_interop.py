"""pi and Claude Code transcripts in and out; contexts for OpenAI and Anthropic.

The real files are in tests/fixtures (public transcripts, MIT; sources and licences in
its README); pi's current format (version 3) is built here from its description, since
no small public v3 file exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import session_store as ss
import session_store_transcripts as tt
from session_store import InvalidInput, InvalidKey, SessionStore

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PI_V1 = FIXTURES / "pi" / "large-session.v1.jsonl"
CLAUDE_FILES = sorted((FIXTURES / "claude-code").glob("*.jsonl")) + sorted(
    (FIXTURES / "claude-code" / "minimal_showcase").glob("*.jsonl"))


@pytest.fixture
def mem() -> Iterator[SessionStore]:
    with SessionStore(ss.InMemoryFileSystem()) as store:
        yield store


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- what each API accepts ----------------------------------------------------------------


def assert_openai_accepts(messages: list[dict[str, Any]]) -> None:
    """Chat Completions' rules: every assistant tool call is answered by exactly one
    ``tool`` message right after it, and no ``tool`` message answers anything else;
    call ids of at most 40 characters."""
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        assert m["role"] in ("system", "developer", "user", "assistant", "tool"), m
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_calls, f"message {i} answers no open call"
            open_calls.remove(m["tool_call_id"])
            assert isinstance(m["content"], str)
            continue
        assert not open_calls, f"message {i} ({m['role']}) comes before results for {open_calls}"
        if m["role"] == "assistant":
            assert m.get("content") or m.get("tool_calls"), f"empty assistant message {i}"
            for call in m.get("tool_calls", []):
                assert call["type"] == "function" and isinstance(call["function"]["name"], str)
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                assert 0 < len(call["id"]) <= 40, call["id"]
                open_calls.add(call["id"])
    assert not open_calls


def blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def assert_anthropic_accepts(request: dict[str, Any]) -> None:
    """Messages API rules: user first, roles alternate, every ``tool_use`` answered by a
    ``tool_result`` at the start of the next (user) message, nothing else answered,
    no empty text, tool ids of ``[A-Za-z0-9_-]``."""
    assert set(request) <= {"system", "messages"}
    assert isinstance(request.get("system", ""), str)
    messages = request["messages"]
    if not messages:
        return
    assert messages[0]["role"] == "user"
    asked: list[str] = []
    for i, m in enumerate(messages):
        assert m["role"] == ("user" if i % 2 == 0 else "assistant"), f"roles do not alternate at {i}"
        content = blocks(m["content"])
        assert content, f"message {i} is empty"
        results = [b for b in content if b["type"] == "tool_result"]
        assert sorted(b["tool_use_id"] for b in results) == sorted(asked), f"message {i} does not answer {asked}"
        assert content[:len(results)] == results
        for b in content:
            if b["type"] == "text":
                assert b["text"].strip(), f"empty text in message {i}"
        asked = [b["id"] for b in content if b["type"] == "tool_use"]
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", a) for a in asked)
        assert not asked or m["role"] == "assistant"
    assert not asked, "unanswered tool use at the end"


def assert_every_leaf_gives_valid_contexts(store: SessionStore, sid: str) -> None:
    for leaf in store.get_leaves(sid):
        assert_openai_accepts(store.build_context(sid, leaf.id))
        assert_anthropic_accepts(store.build_context(sid, leaf.id, format="anthropic"))


# -- pi: the real version-1 file -----------------------------------------------------------


def test_pi_v1_file_imports_every_line_on_every_backend(store: SessionStore) -> None:
    lines = read_jsonl(PI_V1)
    sid = tt.import_pi(store, PI_V1)
    messages = store.get_messages(sid)
    assert len(messages) == len(lines)  # header + 1,018 entries, one message each
    assert store.get_metadata(sid).key == f"pi:{lines[0]['id']}"  # type: ignore[union-attr]
    history = store.get_linear_history(sid)
    assert len(history) == len(lines) and history[-1].id == messages[-1].id  # v1 chains: the last line is the leaf
    assert [m.role for m in history[1:4]] == ["user", "assistant", "model_change"]
    assert history[1].content == [{"type": "text", "text": "/mode"}]


def test_pi_v1_exports_as_version_3_with_ids_and_every_field_kept(tmp_path: Path, mem: SessionStore) -> None:
    lines = read_jsonl(PI_V1)
    sid = tt.import_pi(mem, PI_V1)
    out = tmp_path / "out.jsonl"
    tt.export_pi(mem, sid, out)
    back = read_jsonl(out)
    assert back[0] == {**lines[0], "version": 3}
    for before, after in zip(lines[1:], back[1:], strict=True):
        assert {k: v for k, v in after.items() if k not in ("id", "parentId")} == before
        assert re.fullmatch(r"[0-9a-f]{8}", after["id"])
    assert [e["parentId"] for e in back[1:]] == [None] + [e["id"] for e in back[1:-1]]
    # importing the same file again gives the same ids; the v3 file round-trips exactly
    again = SessionStore(ss.InMemoryFileSystem())
    assert [m.id for m in again.get_messages(tt.import_pi(again, PI_V1))] == [m.id for m in mem.get_messages(sid)]
    third = tmp_path / "again.jsonl"
    tt.export_pi(again, tt.import_pi(again, out, key="v3"), third)
    assert read_jsonl(third) == back


def test_pi_v1_contexts_are_valid_for_both_apis(mem: SessionStore) -> None:
    sid = tt.import_pi(mem, PI_V1)
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    anthropic = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(anthropic)
    assert "system" not in anthropic  # pi stores no system prompt
    # the 22 aborted or failed responses are left out; every call of the others appears once
    assistants = [m for m in mem.get_messages(sid) if m.role == "assistant"]
    replayed = [m for m in assistants if m.fields["pi"]["message"]["stopReason"] not in ("error", "aborted")]
    assert len(assistants) - len(replayed) == 22
    calls = [b["id"] for m in replayed for b in m.content if b["type"] == "toolCall"]
    assert [c["id"] for m in openai for c in m.get("tool_calls", [])] == calls
    first_call = next(m for m in openai if m.get("tool_calls"))["tool_calls"][0]
    assert first_call["function"] == {"name": "read",
                                      "arguments": '{"path":"packages/coding-agent/docs/theme.md"}'}


# -- pi: version 3 built from the format description ---------------------------------------


def pi_v3_session() -> list[dict[str, Any]]:
    """Every entry type of pi's format version 3, a branch, and fields pi does not know."""
    def entry(kind: str, eid: str, parent: str | None, **body: Any) -> dict[str, Any]:
        return {"type": kind, "id": eid, "parentId": parent, "timestamp": f"2026-01-02T03:04:{len(eid):02d}.000Z",
                **body}

    def message(role: str, content: Any, **more: Any) -> dict[str, Any]:
        return {"role": role, "content": content, "timestamp": 1767323040000, **more}

    usage = {"input": 1, "output": 2, "cacheRead": 0, "cacheWrite": 0, "cost": {"total": 0.001}}
    return [
        {"type": "session", "version": 3, "id": "7f0e2b9c-0000-4000-8000-000000000001",
         "timestamp": "2026-01-02T03:04:00.000Z", "cwd": "/work/app", "parentSession": "/old.jsonl"},
        entry("model_change", "a0000001", None, provider="anthropic", modelId="claude-sonnet-4-5"),
        entry("thinking_level_change", "a0000002", "a0000001", thinkingLevel="high"),
        entry("message", "a0000003", "a0000002", message=message("user", "List the files.")),
        entry("message", "a0000004", "a0000003", message=message("assistant", [
            {"type": "thinking", "thinking": "Use ls.", "thinkingSignature": "sig-1"},
            {"type": "text", "text": "Listing."},
            {"type": "toolCall", "id": "call_1", "name": "bash", "arguments": {"command": "ls"}}],
            api="anthropic-messages", provider="anthropic", model="claude-sonnet-4-5", usage=usage,
            stopReason="toolUse")),
        entry("message", "a0000005", "a0000004", message=message("toolResult", [{"type": "text", "text": "a.py"}],
                                                                 toolCallId="call_1", toolName="bash", isError=False)),
        entry("message", "a0000006", "a0000005", message=message("assistant", [{"type": "text", "text": "One file."}],
                                                                 stopReason="stop", futureField={"x": 1})),
        entry("label", "a0000007", "a0000006", targetId="a0000004", label="listing"),
        entry("session_info", "a0000008", "a0000007", name="file tour"),
        entry("custom", "a0000009", "a0000008", customType="my-ext", data={"state": [1, 2]}),
        entry("custom_message", "a000000a", "a0000009", customType="my-ext", content="Injected note.",
              display=True, details={"n": 1}),
        entry("message", "a000000b", "a000000a", message=message("bashExecution", None, command="pwd",
                                                                 output="/work/app", exitCode=0, cancelled=False,
                                                                 truncated=False)),
        entry("compaction", "a000000c", "a000000b", summary="User listed files; one file, a.py.",
              firstKeptEntryId="a000000a", tokensBefore=1234, details={"v": 2}, fromHook=False),
        entry("message", "a000000d", "a000000c", message=message("user", "And now?")),
        # a branch back to a0000006, with a summary of the branch left
        entry("branch_summary", "a000000e", "a0000006", fromId="a000000d", summary="Tried a compaction."),
        entry("future_entry", "a000000f", "a000000e", whatever=[1, {"deep": True}]),
        entry("message", "a0000010", "a000000f", message=message("user", [{"type": "text", "text": "Again:"},
                                                                          {"type": "image", "data": "aGk=",
                                                                           "mimeType": "image/png"}])),
        entry("message", "a0000011", "a0000010", message=message("assistant", [
            {"type": "toolCall", "id": "call|2", "name": "read", "arguments": {"path": "a.py"}}],
            stopReason="toolUse")),
    ]


def test_pi_v3_round_trip_is_exact_line_by_line(tmp_path: Path, store: SessionStore) -> None:
    lines = pi_v3_session()
    sid = tt.import_pi(store, [json.dumps(line) for line in lines])
    assert store.get_linear_history(sid)[-1].id == "a0000011"  # the last line is the leaf
    assert [m.id for m in store.get_children(sid, "a0000006")] == ["a0000007", "a000000e"]
    out = tmp_path / "pi.jsonl"
    tt.export_pi(store, sid, out)
    assert read_jsonl(out) == lines


def test_pi_v3_records_read_naturally(mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_v3_session()])
    by_id = {m.id: m for m in mem.get_messages(sid)}
    header = mem.get_messages(sid)[0]
    assert (header.type, header.parent_id, by_id["a0000001"].parent_id) == ("pi.session", None, header.id)
    assert (by_id["a0000003"].type, by_id["a0000003"].role, by_id["a0000003"].content) == (
        "pi.message", "user", "List the files.")
    assert (by_id["a000000c"].role, by_id["a000000c"].content) == ("compaction", "User listed files; one file, a.py.")
    assert by_id["a0000004"].timestamp == 1767323048000  # the entry's ISO time, in ms


def test_pi_compaction_context_is_summary_then_kept_entries_then_the_rest(mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_v3_session()])
    context = mem.build_context(sid, "a000000d")
    assert_openai_accepts(context)
    assert [m["role"] for m in context] == ["user", "user", "user", "user"]
    assert context[0]["content"].startswith("The conversation history before this point was compacted")
    assert "User listed files; one file, a.py." in context[0]["content"]
    assert context[1]["content"] == "Injected note."  # custom_message, kept by firstKeptEntryId
    assert context[2]["content"] == "Ran `pwd`\n```\n/work/app\n```"  # bashExecution, as pi words it
    assert context[3]["content"] == "And now?"
    anthropic = mem.build_context(sid, "a000000d", format="anthropic")
    assert_anthropic_accepts(anthropic)
    assert len(anthropic["messages"]) == 1  # four user turns merged: roles must alternate


def test_pi_branch_context_has_the_branch_summary_and_answers_the_open_call(mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_v3_session()])
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool", "assistant", "user", "user",
                                           "assistant", "tool"]
    assert openai[1] == {"role": "assistant", "content": "Listing.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"command":"ls"}'}}]}
    assert "Tried a compaction." in openai[4]["content"]
    assert openai[5]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    assert openai[7]["tool_call_id"] == "call|2" and openai[7]["content"].startswith("Error:")  # synthetic
    anthropic = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(anthropic)
    first = anthropic["messages"][1]["content"]
    assert first[0] == {"type": "thinking", "thinking": "Use ls.", "signature": "sig-1"}
    assert first[2] == {"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls"}}
    last = anthropic["messages"][-1]["content"][0]
    assert last["type"] == "tool_result" and last["is_error"] is True
    assert last["tool_use_id"] == anthropic["messages"][-2]["content"][0]["id"] != "call|2"  # made acceptable


def test_pi_v2_hook_messages_become_custom_and_export_as_v3(tmp_path: Path, mem: SessionStore) -> None:
    lines = [{"type": "session", "version": 2, "id": "s2", "timestamp": "2025-12-01T00:00:00.000Z", "cwd": "/"},
             {"type": "message", "id": "b1", "parentId": None, "timestamp": "2025-12-01T00:00:01.000Z",
              "message": {"role": "hookMessage", "customType": "hook", "content": "from a hook", "display": True,
                          "timestamp": 1}}]
    sid = tt.import_pi(mem, [json.dumps(line) for line in lines])
    assert mem.build_context(sid) == [{"role": "user", "content": "from a hook"}]
    tt.export_pi(mem, sid, tmp_path / "v3.jsonl")
    header, entry = read_jsonl(tmp_path / "v3.jsonl")
    assert header["version"] == 3 and entry["message"]["role"] == "custom"


def test_pi_v1_compaction_index_becomes_an_entry_id(mem: SessionStore) -> None:
    lines = [{"type": "session", "id": "s1", "timestamp": "2025-10-01T00:00:00.000Z", "cwd": "/"},
             {"type": "message", "timestamp": "2025-10-01T00:00:01.000Z", "message": {"role": "user", "content": "a"}},
             {"type": "message", "timestamp": "2025-10-01T00:00:02.000Z", "message": {"role": "user", "content": "b"}},
             {"type": "compaction", "timestamp": "2025-10-01T00:00:03.000Z", "summary": "S", "firstKeptEntryIndex": 2,
              "tokensBefore": 9}]
    sid = tt.import_pi(mem, [json.dumps(line) for line in lines])
    messages = mem.get_messages(sid)
    compaction = messages[-1].fields["pi"]
    assert compaction["firstKeptEntryId"] == messages[2].id and "firstKeptEntryIndex" not in compaction
    assert [m["content"] for m in mem.build_context(sid)][1:] == ["b"]


def test_native_messages_added_after_a_pi_import_export_as_pi_entries(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_v3_session()[:7]])
    mem.append(sid, role="user", content="Read it.")
    mem.append(sid, role="assistant", content="Reading.", tool_calls=[
        {"id": "c9", "type": "function", "function": {"name": "read", "arguments": '{"path":"a.py"}'}}])
    mem.append(sid, role="tool", content="print(1)", tool_call_id="c9")
    mem.append(sid, role="system", content="Be brief.")
    out = tmp_path / "more.jsonl"
    tt.export_pi(mem, sid, out)
    lines = read_jsonl(out)
    assert lines[:7] == pi_v3_session()[:7]
    added = lines[7:]
    assert [e["parentId"] for e in added] == ["a0000006"] + [e["id"] for e in added[:-1]]
    assert added[1]["message"]["content"][1] == {"type": "toolCall", "id": "c9", "name": "read",
                                                 "arguments": {"path": "a.py"}}
    assert added[2]["message"] | {"timestamp": 0} == {
        "role": "toolResult", "toolCallId": "c9", "toolName": "read", "content": [{"type": "text", "text": "print(1)"}],
        "isError": False, "timestamp": 0}
    assert added[3]["type"] == "custom_message" and added[3]["content"] == "Be brief."
    # pi reads it back to the same conversation
    again = tt.import_pi(mem, out, key="again")
    assert mem.build_context(again) == [*mem.build_context(sid)[:-1], {"role": "user", "content": "Be brief."}]


def test_export_pi_of_a_native_session_writes_a_header_and_resumes_at_the_head(tmp_path: Path,
                                                                              mem: SessionStore) -> None:
    sid = mem.resolve("user:alice")
    q = mem.append(sid, role="user", content="Hi")
    mem.append(sid, role="assistant", content="Hello")
    alt = mem.append(sid, role="assistant", content="Hey", parent_id=q.id)
    mem.create_branch(sid, "alt", alt.id)
    mem.switch_to_branch(sid, "main")  # main's head was appended before alt: it must still come last
    tt.export_pi(mem, sid, tmp_path / "n.jsonl")
    lines = read_jsonl(tmp_path / "n.jsonl")
    assert lines[0] | {"timestamp": ""} == {"type": "session", "version": 3, "id": sid, "timestamp": "", "cwd": ""}
    assert lines[-1]["message"]["content"] == [{"type": "text", "text": "Hello"}]
    again = tt.import_pi(mem, tmp_path / "n.jsonl", key="copy")
    assert mem.build_context(again) == mem.build_context(sid)


# -- pi: bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("lines, error", [
    ([], "not a pi session"),
    (['{"type":"message","id":"x","parentId":null}'], "not a pi session"),
    (['{"type":"session","id":"s","version":4}'], "newer"),
    (['{"type":"session","id":"s","version":"3"}'], "version"),
    (['{"type":"session","id":"","version":3}'], "id"),
    (['{"type":"session","id":"s","version":3}', '{"type":"message", oops}', '{"type":"custom","id":"c"}'],
     "line 2: not JSON"),
    (['{"type":"session","id":"s","version":3}', "[1, 2]"], "line 2: not a JSON object"),
    (['{"type":"session","id":"s","version":3}', '{"type":"custom","id":"c","n":NaN}'], "not JSON"),
])
def test_bad_pi_input_raises_and_writes_nothing(mem: SessionStore, lines: list[str], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        tt.import_pi(mem, lines, key="k")
    assert mem.get_all_session_ids() == [] and not mem.has_key("k")


@pytest.mark.parametrize("source", [42, None, [b"{}"], ["{}", 7]])
def test_importers_refuse_what_is_neither_a_path_nor_lines(mem: SessionStore, source: Any) -> None:
    with pytest.raises(InvalidInput):
        tt.import_pi(mem, source)
    with pytest.raises(InvalidInput, match="give a path"):
        tt.import_claude_code(mem, source)
    assert mem.get_all_session_ids() == []


def test_pi_import_of_a_missing_file_or_a_taken_key(tmp_path: Path, mem: SessionStore) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        tt.import_pi(mem, tmp_path / "missing.jsonl")
    mem.resolve("taken")
    with pytest.raises(InvalidKey):
        tt.import_pi(mem, [json.dumps(line) for line in pi_v3_session()], key="taken")


def test_a_torn_last_line_is_skipped_but_only_at_the_end_of_a_file(tmp_path: Path, mem: SessionStore) -> None:
    text = "\n".join(json.dumps(line) for line in pi_v3_session()[:4])
    (tmp_path / "torn.jsonl").write_text(text + '\n{"type":"message","id":"a00', encoding="utf-8")
    sid = tt.import_pi(mem, tmp_path / "torn.jsonl")
    assert len(mem.get_messages(sid)) == 4
    (tmp_path / "bad.jsonl").write_text('{"type":"message","id":"a00\n' + text + "\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="line 1"):
        tt.import_pi(mem, tmp_path / "bad.jsonl")


def test_lone_surrogates_become_replacement_characters(tmp_path: Path, mem: SessionStore) -> None:
    lines = pi_v3_session()[:4]
    text = "\n".join(json.dumps(line) for line in lines).replace("List the files.", "List \\ud83d the files.")
    sid = tt.import_pi(mem, text.splitlines())
    assert mem.get_messages(sid)[-1].content == "List \ufffd the files."


# -- Claude Code ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", CLAUDE_FILES, ids=lambda p: p.name)
def test_claude_code_files_round_trip_line_by_line(tmp_path: Path, store: SessionStore, path: Path) -> None:
    sid = tt.import_claude_code(store, path)
    out = tmp_path / "out.jsonl"
    written = tt.export_claude_code(store, sid, out)
    assert written[0] == str(out)
    assert read_jsonl(out) == read_jsonl(path)
    subagents = sorted((path.parent / path.stem / "subagents").glob("*.jsonl"))
    assert [Path(w).name for w in written[1:]] == [s.name for s in subagents]
    for source, copy in zip(subagents, written[1:], strict=True):
        assert read_jsonl(Path(copy)) == read_jsonl(source)


@pytest.mark.parametrize("path", CLAUDE_FILES, ids=lambda p: p.name)
def test_claude_code_contexts_are_valid_for_both_apis_at_every_leaf(mem: SessionStore, path: Path) -> None:
    sid = tt.import_claude_code(mem, path)
    assert_every_leaf_gives_valid_contexts(mem, sid)


def test_claude_code_subagent_sidechain_is_kept_apart_on_its_own_branch(mem: SessionStore) -> None:
    path = FIXTURES / "claude-code" / "minimal_showcase" / "55550000-0000-4000-8000-000000000001.jsonl"
    sid = tt.import_claude_code(mem, path)
    assert mem.get_metadata(sid).key == "claude-code:55550000-0000-4000-8000-000000000001"  # type: ignore[union-attr]
    assert {b.name: b.head_id for b in mem.get_branches(sid)} == {"main": "sc-a5", "agent-showcol2": "showcol2-a2"}
    assert mem.get_current_branch(sid) == "main"
    main = mem.build_context(sid, format="anthropic")
    assert {"role": "user", "content": "Survey src/jobs and list its scheduled jobs."} not in main["messages"]
    assert main["messages"][-1]["content"].startswith("Both modules are surveyed")
    side = mem.build_context(sid, "showcol2-a2")
    assert side[0] == {"role": "user", "content": "Survey src/jobs and list its scheduled jobs."}


def test_claude_code_odd_lines_are_kept_and_written_back(mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, FIXTURES / "claude-code" / "edge_cases.jsonl")
    messages = mem.get_messages(sid)
    kept = [m for m in messages if "claude_code_line" in m.fields]
    assert [m.fields["claude_code_line"] for m in kept if not isinstance(m.fields["claude_code_line"], dict)] == [
        "massive error", 42, [1]]
    assert {"silly": "this"} in [m.fields["claude_code_line"] for m in kept]
    assert all(m.parent_id is None for m in kept)  # kept as roots, off the conversation
    summary = next(m for m in messages if m.type == "claude_code.summary")
    assert summary.content.startswith("Tested various edge cases")


def claude_line(kind: str, uuid: str, parent: str | None, message: Any = None, **more: Any) -> dict[str, Any]:
    line = {"type": kind, "uuid": uuid, "parentUuid": parent, "isSidechain": False, "sessionId": "cc-1",
            "timestamp": f"2026-03-01T10:00:{len(uuid):02d}.000Z", "cwd": "/w", "version": "2.1.0", **more}
    if message is not None:
        line["message"] = message
    return line


def claude_session() -> list[dict[str, Any]]:
    """A response split over three lines by message.id, a compaction, a sidechain and an API error."""
    def assistant(block: dict[str, Any]) -> dict[str, Any]:
        return {"id": "msg_A", "type": "message", "role": "assistant", "model": "claude-opus-4",
                "content": [block], "usage": {"output_tokens": 5}}

    return [
        claude_line("user", "u1", None, {"role": "user", "content": "Fix the bug."}),
        claude_line("assistant", "a1", "u1", assistant({"type": "thinking", "thinking": "Hm.", "signature": "s"})),
        claude_line("assistant", "a2", "a1", assistant({"type": "text", "text": "Looking."})),
        claude_line("assistant", "a3", "a2", assistant({"type": "tool_use", "id": "toolu_1", "name": "Read",
                                                        "input": {"file_path": "x.py"}})),
        claude_line("user", "sc1", "a3", {"role": "user", "content": "side work"}, isSidechain=True),
        claude_line("user", "r1", "a3", {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "x = 1"}]}]},
            toolUseResult={"file": "x.py"}),
        claude_line("assistant", "e1", "r1", {"role": "assistant", "content": [{"type": "text", "text": "API Error"}]},
                    isApiErrorMessage=True),
        claude_line("system", "b1", None, None, subtype="compact_boundary", content="Conversation compacted",
                    logicalParentUuid="e1", compactMetadata={"trigger": "auto", "preTokens": 9000}),
        claude_line("user", "s1", "b1", {"role": "user", "content": "Summary: the user asked to fix a bug."},
                    isCompactSummary=True),
        claude_line("assistant", "a4", "s1", {"id": "msg_B", "role": "assistant", "content": [
            {"type": "text", "text": "Continuing."}]}),
        {"type": "summary", "summary": "Bug fixing", "leafUuid": "a4"},
    ]


def write_claude(tmp_path: Path, lines: list[Any]) -> Path:
    path = tmp_path / "cc-1.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_claude_code_split_response_merges_into_one_assistant_turn(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_claude(tmp_path, claude_session()))
    assert len(mem.get_messages(sid)) == 11  # one message per line
    request = mem.build_context(sid, "r1", format="anthropic")
    assert_anthropic_accepts(request)
    assert request["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Hm.", "signature": "s"}, {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "x.py"}}]
    openai = mem.build_context(sid, "e1")  # the API error notice is not replayed
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool"]
    assert openai[1]["tool_calls"][0]["function"] == {"name": "Read", "arguments": '{"file_path":"x.py"}'}
    assert openai[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "x = 1"}


def test_claude_code_compaction_boundary_starts_the_context(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_claude(tmp_path, claude_session()))
    boundary = mem.get_message(sid, "b1")
    assert boundary.parent_id is None and boundary.fields["claude_code"]["logicalParentUuid"] == "e1"
    assert mem.get_branch(sid, "main").head_id == "a4"  # type: ignore[union-attr]
    assert mem.build_context(sid) == [{"role": "user", "content": "Summary: the user asked to fix a bug."},
                                      {"role": "assistant", "content": "Continuing."}]
    assert {b.name for b in mem.get_branches(sid)} == {"main", "sidechain-sc1"}
    out = tmp_path / "back.jsonl"
    tt.export_claude_code(mem, sid, out)
    assert read_jsonl(out) == claude_session()


def test_claude_code_export_of_native_messages_is_anthropic_shaped(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_claude(tmp_path, claude_session()))
    mem.append(sid, role="user", content="Thanks")
    out = tmp_path / "more" / "x.jsonl"
    tt.export_claude_code(mem, sid, out)
    lines = read_jsonl(out)
    assert lines[:-1] == claude_session()
    assert lines[-1] | {"uuid": "", "timestamp": ""} == {
        "type": "user", "uuid": "", "parentUuid": "a4", "isSidechain": False, "sessionId": "cc-1", "timestamp": "",
        "message": {"role": "user", "content": "Thanks"}}
    again = tt.import_claude_code(mem, out, key="again")
    assert mem.build_context(again) == mem.build_context(sid)


def test_claude_code_import_errors_write_nothing(tmp_path: Path, mem: SessionStore) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type":"user","uuid":"u"}\nnot json\n{"type":"user","uuid":"v"}\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="line 2"):
        tt.import_claude_code(mem, path)
    assert mem.get_all_session_ids() == []


# -- contexts of native sessions --------------------------------------------------------------


def test_a_branch_that_leaves_a_tool_call_unanswered_gets_a_synthetic_result(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="system", content="You are terse.")
    q = mem.append(sid, role="user", content="Weather?")
    a = mem.append(sid, role="assistant", content=None, tool_calls=[{"id": "w1", "name": "weather", "params": {}}])
    mem.append(sid, role="tool", type="tool_result", content=None, output="sunny", tool_call_id="w1")
    branch = mem.append(sid, role="user", content="Never mind.", parent_id=a.id)  # w1 never answered there
    mem.create_branch(sid, "other", branch.id)
    mem.switch_to_branch(sid, "other")
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    assert openai[3] == {"role": "tool", "tool_call_id": "w1", "content": ss._SYNTHETIC_RESULT}
    request = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(request)
    assert request["system"] == "You are terse."
    assert request["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "w1", "content": ss._SYNTHETIC_RESULT, "is_error": True},
        {"type": "text", "text": "Never mind."}]
    assert mem.build_context(sid, q.id, format="anthropic") == {
        "system": "You are terse.", "messages": [{"role": "user", "content": "Weather?"}]}


def test_anthropic_contexts_start_with_a_user_turn(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="assistant", content="Welcome back.")
    request = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(request)
    assert request["messages"][1] == {"role": "assistant", "content": "Welcome back."}


def test_a_reset_marker_asked_for_is_system_text_in_both_formats(mem: SessionStore) -> None:
    sid = mem.resolve("k")
    mem.append(sid, role="user", content="a")
    mem.reset(sid)
    mem.append(sid, role="user", content="b")
    assert [m["role"] for m in mem.build_context(sid, include_reset_markers=True)] == ["system", "user"]
    request = mem.build_context(sid, format="anthropic", include_reset_markers=True)
    assert "reset" in request["system"].lower() and request["messages"] == [{"role": "user", "content": "b"}]
    assert mem.build_context(sid) == [{"role": "user", "content": "b"}]  # by default: not sent


def test_unknown_context_format_is_refused(mem: SessionStore) -> None:
    with pytest.raises(InvalidInput, match="gemini"):
        mem.build_context(mem.resolve("k"), format="gemini")  # type: ignore[call-overload]


def test_claude_code_export_with_subagents_needs_a_jsonl_path(tmp_path: Path, mem: SessionStore) -> None:
    path = FIXTURES / "claude-code" / "minimal_showcase" / "55550000-0000-4000-8000-000000000001.jsonl"
    sid = tt.import_claude_code(mem, path)
    with pytest.raises(InvalidInput, match=r"ending in \.jsonl"):
        tt.export_claude_code(mem, sid, tmp_path / "transcript")
    assert list(tmp_path.iterdir()) == []


# -- any tree, any leaf: both APIs accept the context -------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

record = st.one_of(
    st.tuples(st.just("user"), st.sampled_from(["hi", "", " ", "[x]"])),
    st.tuples(st.just("system"), st.sampled_from(["be brief", ""])),
    st.tuples(st.just("assistant"), st.lists(st.sampled_from(["c1", "c2", "c3", "bad id|x"]), max_size=3)),
    st.tuples(st.just("assistant_text"), st.sampled_from(["ok", ""])),
    st.tuples(st.just("tool"), st.sampled_from(["c1", "c2", "c3", "bad id|x", "nobody"])),
    st.tuples(st.just("blocks"), st.sampled_from(["c1", "c2"])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(record, st.integers(min_value=0, max_value=30)), min_size=1, max_size=25))
def test_every_leaf_of_any_tree_gives_contexts_both_apis_accept(steps: list[tuple[tuple[str, Any], int]]) -> None:
    """Random trees of native records in every shape build_context reads (tutorial, OpenAI,
    Anthropic blocks), with calls left open, answered twice, answered by nobody, ids the
    Anthropic API refuses, empty texts and system text anywhere."""
    with SessionStore(ss.InMemoryFileSystem()) as store:
        sid = store.resolve("k")
        ids: list[str] = []
        for (kind, value), pick in steps:
            parent = ids[pick % len(ids)] if ids and pick % 4 else None
            if kind == "assistant":
                calls = [{"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}} for c in value]
                m = store.append(sid, role="assistant", content="calling", tool_calls=calls, parent_id=parent)
            elif kind == "assistant_text":
                m = store.append(sid, role="assistant", content=value, parent_id=parent)
            elif kind == "tool":
                m = store.append(sid, role="tool", content="result", tool_call_id=value, parent_id=parent)
            elif kind == "blocks":  # Anthropic shapes stored as they are
                m = store.append(sid, role="assistant", content=[{"type": "tool_use", "id": value, "name": "g",
                                                                   "input": {}}], parent_id=parent)
                m = store.append(sid, role="user", content=[{"type": "tool_result", "tool_use_id": value,
                                                              "content": "r"}], parent_id=m.id)
            else:
                m = store.append(sid, role=kind, content=value, parent_id=parent)
            ids.append(m.id)
        assert_every_leaf_gives_valid_contexts(store, sid)


@pytest.mark.parametrize("path", [*CLAUDE_FILES, PI_V1], ids=lambda p: p.name)
def test_contexts_survive_conversion_between_formats(tmp_path: Path, mem: SessionStore, path: Path) -> None:
    """pi -> Claude Code and Claude Code -> pi: what a model is sent does not change."""
    sid = tt.import_pi(mem, path) if path == PI_V1 else tt.import_claude_code(mem, path)
    tt.export_pi(mem, sid, tmp_path / "as-pi.jsonl")
    via_pi = tt.import_pi(mem, tmp_path / "as-pi.jsonl", key="via pi")
    tt.export_claude_code(mem, via_pi, tmp_path / "as-claude.jsonl")
    via_both = tt.import_claude_code(mem, tmp_path / "as-claude.jsonl", key="via both")
    for fmt in ("openai", "anthropic"):
        expected = mem.build_context(sid, format=fmt)
        assert mem.build_context(via_pi, format=fmt) == expected
        assert mem.build_context(via_both, format=fmt) == expected
