"""session_store_transcripts on the transcripts agents write today: each numbered
conversion defect of issue 18 from a minimal file, mirroring a transcript that grows,
and the context reader hook across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_interop import assert_anthropic_accepts, assert_openai_accepts, read_jsonl

import session_store as ss
import session_store_transcripts as tt
from session_store import SessionStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def mem() -> Any:
    with SessionStore(ss.InMemoryFileSystem()) as store:
        yield store


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def cc(kind: str, uuid: str, parent: str | None, content: Any = None, **more: Any) -> dict[str, Any]:
    """A Claude Code 2.1 line."""
    line: dict[str, Any] = {"parentUuid": parent, "isSidechain": False, "userType": "external", "cwd": "/w",
                            "sessionId": "s-21", "version": "2.1.205", "type": kind, "uuid": uuid, "timestamp": None}
    if kind in ("user", "assistant"):
        line["message"] = {"role": kind, "content": content}
    line.update(more)
    return line


def stamp(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lines whose timestamp is None get one a second apart, in file order."""
    for n, line in enumerate(lines):
        if "timestamp" in line and line["timestamp"] is None:
            line["timestamp"] = f"2026-05-01T10:{n // 60:02d}:{n % 60:02d}.000Z"
    return lines


def answer(uuid: str, parent: str, text: str, msg: str) -> dict[str, Any]:
    line = cc("assistant", uuid, parent, [{"type": "text", "text": text}])
    line["message"].update(id=msg, type="message", model="claude-opus-4-6")
    return line


def tool_use(uuid: str, parent: str, call: str, msg: str) -> dict[str, Any]:
    line = cc("assistant", uuid, parent, [{"type": "tool_use", "id": call, "name": "Read", "input": {"f": call}}])
    line["message"].update(id=msg, type="message", model="claude-opus-4-6")
    return line


def result(uuid: str, parent: str, call: str, text: str) -> dict[str, Any]:
    return cc("user", uuid, parent, [{"type": "tool_result", "tool_use_id": call, "content": text}],
              sourceToolAssistantUUID=parent)


def pi_header(sid: str = "0196f000-0000-7000-8000-000000000018") -> dict[str, Any]:
    return {"type": "session", "version": 3, "id": sid, "timestamp": "2026-05-01T10:00:00.000Z", "cwd": "/w"}


def pi_entry(kind: str, eid: str, parent: str | None, **body: Any) -> dict[str, Any]:
    return {"type": kind, "id": eid, "parentId": parent, "timestamp": f"2026-05-01T10:00:{int(eid, 16) % 60:02d}.000Z",
            **body}


def pi_message(eid: str, parent: str | None, role: str, content: Any, **more: Any) -> dict[str, Any]:
    return pi_entry("message", eid, parent, message={"role": role, "content": content, "timestamp": 1, **more})


def texts(context: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m.get("content")) for m in context]


# -- 1. a parent written after its child ------------------------------------------------


def test_1_a_line_written_before_its_parent_keeps_its_place_in_the_tree_and_the_file(tmp_path: Path,
                                                                                    mem: SessionStore) -> None:
    """Claude Code 2.1 writes hook attachments before their parents."""
    lines = stamp([cc("user", "u1", None, "Fix the bug."), answer("a1", "u1", "Which one?", "msg_1"),
                   cc("attachment", "x2", "x1", attachment={"type": "hook_success", "content": "ok"}),
                   cc("attachment", "x1", "a1", attachment={"type": "hook_success", "content": "ok"}),
                   cc("user", "u2", "x2", "The parser one.")])
    path = write_jsonl(tmp_path / "s-21.jsonl", lines)
    sid = tt.import_claude_code(mem, path)
    assert [m.id for m in mem.get_linear_history(sid)] == ["u1", "a1", "x1", "x2", "u2"]
    assert texts(mem.build_context(sid)) == [("user", "Fix the bug."), ("assistant", "Which one?"),
                                             ("user", "The parser one.")]
    tt.export_claude_code(mem, sid, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines  # in the file's order, line for line


# -- 2. parallel tool calls stored as sibling lines ---------------------------------------


def parallel_calls() -> list[dict[str, Any]]:
    """One response with two tool calls: each result hangs under its own tool_use line."""
    return stamp([cc("user", "u1", None, "Read both."),
                  tool_use("aX", "u1", "toolu_X", "msg_P"), tool_use("aY", "aX", "toolu_Y", "msg_P"),
                  result("rY", "aY", "toolu_Y", "y = 2"), result("rX", "aX", "toolu_X", "x = 1"),
                  answer("a2", "rY", "Both read.", "msg_Q")])


def test_2_parallel_tool_calls_on_sibling_lines_keep_every_call_and_real_result(tmp_path: Path,
                                                                               mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", parallel_calls()))
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    assert [c["id"] for c in openai[1]["tool_calls"]] == ["toolu_X", "toolu_Y"]
    results = {m["tool_call_id"]: m["content"] for m in openai if m["role"] == "tool"}
    assert results == {"toolu_X": "x = 1", "toolu_Y": "y = 2"}  # real results, none synthetic
    assert openai[-1] == {"role": "assistant", "content": "Both read."}
    anthropic = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(anthropic)
    assert ss._SYNTHETIC_RESULT not in json.dumps(anthropic)


def test_2_a_path_through_one_result_still_holds_the_sibling_call_and_its_result(tmp_path: Path,
                                                                                mem: SessionStore) -> None:
    lines = parallel_calls()
    lines[-1]["parentUuid"] = "rX"  # the next answer follows the other result
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", lines))
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    assert [c["id"] for c in openai[1]["tool_calls"]] == ["toolu_X", "toolu_Y"]
    assert {m["tool_call_id"]: m["content"] for m in openai if m["role"] == "tool"} == {
        "toolu_X": "x = 1", "toolu_Y": "y = 2"}


# -- 3. a pi compaction written as Claude Code ----------------------------------------------


def pi_compacted() -> list[dict[str, Any]]:
    return [pi_header(),
            pi_message("a0000001", None, "user", "Plan the release."),
            pi_message("a0000002", "a0000001", "assistant", [{"type": "text", "text": "Step one: tests."}],
                       api="anthropic-messages", provider="anthropic", stopReason="stop"),
            pi_message("a0000003", "a0000002", "user", "And then?"),
            pi_message("a0000004", "a0000003", "assistant", [{"type": "text", "text": "Step two: tag."}],
                       api="anthropic-messages", provider="anthropic", stopReason="stop"),
            pi_entry("compaction", "a0000005", "a0000004", summary="Planned tests, then a tag.",
                     firstKeptEntryId="a0000003", tokensBefore=5000),
            pi_message("a0000006", "a0000005", "user", "Ship it.")]


def test_3_a_pi_compaction_exported_to_claude_code_keeps_what_the_model_is_sent(tmp_path: Path,
                                                                               mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_compacted()])
    expected = mem.build_context(sid)
    assert [m["content"] for m in expected][1:] == ["And then?", "Step two: tag.", "Ship it."]
    assert "Planned tests, then a tag." in expected[0]["content"]
    tt.export_claude_code(mem, sid, tmp_path / "as-claude.jsonl")
    again = tt.import_claude_code(mem, tmp_path / "as-claude.jsonl", key="via claude")
    assert mem.build_context(again) == expected
    assert mem.build_context(again, format="anthropic") == mem.build_context(sid, format="anthropic")


# -- 4. OpenAI tool call ids over OpenAI's length limit ------------------------------------

LONG_ID = "call_Vd3kQ8rX2mP7nB4sT6wY1zA9|fc_68a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60712"


def test_4_long_tool_call_ids_are_shortened_the_same_way_for_the_call_and_its_result(mem: SessionStore) -> None:
    assert len(LONG_ID) == 83  # an OpenAI Responses id as pi records it: call_id|item id
    lines = [pi_header(), pi_message("b0000001", None, "user", "Look."),
             pi_message("b0000002", "b0000001", "assistant", [
                 {"type": "toolCall", "id": LONG_ID, "name": "read", "arguments": {"path": "a"}}],
                 api="openai-responses", provider="openai", stopReason="toolUse"),
             pi_message("b0000003", "b0000002", "toolResult", [{"type": "text", "text": "A"}], toolCallId=LONG_ID,
                        toolName="read", isError=False)]
    sid = tt.import_pi(mem, [json.dumps(line) for line in lines])
    openai = mem.build_context(sid)
    assert_openai_accepts(openai)
    call_id = openai[1]["tool_calls"][0]["id"]
    assert len(call_id) <= 40 and openai[2] == {"role": "tool", "tool_call_id": call_id, "content": "A"}
    assert mem.build_context(sid)[1]["tool_calls"][0]["id"] == call_id  # deterministic


# -- 5. thinking signed by another provider ------------------------------------------------


def test_5_thinking_signed_by_another_provider_is_not_sent_to_anthropic(mem: SessionStore) -> None:
    encrypted = json.dumps({"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAAB..."})
    lines = [pi_header(), pi_message("c0000001", None, "user", "Why?"),
             pi_message("c0000002", "c0000001", "assistant", [
                 {"type": "thinking", "thinking": "Because.", "thinkingSignature": encrypted},
                 {"type": "text", "text": "Because it is."}], api="openai-responses", provider="openai",
                 model="gpt-5", stopReason="stop"),
             pi_message("c0000003", "c0000002", "user", "And Claude?"),
             pi_message("c0000004", "c0000003", "assistant", [
                 {"type": "thinking", "thinking": "Think.", "thinkingSignature": "EqQBCkYIBxgCKkD"},
                 {"type": "text", "text": "Also."}], api="anthropic-messages", provider="anthropic",
                 model="claude-opus-4-6", stopReason="stop"),
             pi_message("c0000005", "c0000004", "user", "And Kimi?"),
             pi_message("c0000006", "c0000005", "assistant", [  # Anthropic's API shape, another provider's key
                 {"type": "thinking", "thinking": "Hmm.", "thinkingSignature": "Ke645z2q35BwXCi+oEt"},
                 {"type": "text", "text": "Likewise."}], api="anthropic-messages", provider="damoxing-kimi",
                 model="K2.6-code-preview", stopReason="stop")]
    sid = tt.import_pi(mem, [json.dumps(line) for line in lines])
    request = mem.build_context(sid, format="anthropic")
    assert_anthropic_accepts(request)
    assert request["messages"][1]["content"] == "Because it is."  # OpenAI's encrypted reasoning left out
    assert request["messages"][3]["content"][0] == {"type": "thinking", "thinking": "Think.",
                                                    "signature": "EqQBCkYIBxgCKkD"}
    assert request["messages"][5]["content"] == "Likewise."


# -- 6. Claude Code 2.1.2xx ------------------------------------------------------------------


def claude_21() -> list[dict[str, Any]]:
    """State rows first, attachment/progress/system rows, a rewind, and a last-prompt row
    naming where Claude Code resumes (not the last line)."""
    return stamp([{"type": "queue-operation", "operation": "enqueue", "timestamp": "2026-05-01T09:59:00.000Z",
             "sessionId": "s-21", "content": "Fix the bug."},
            {"type": "queue-operation", "operation": "dequeue", "timestamp": "2026-05-01T09:59:00.100Z",
             "sessionId": "s-21"},
            {"type": "mode", "mode": "default", "sessionId": "s-21"},
            {"type": "file-history-snapshot", "messageId": "u1", "isSnapshotUpdate": False,
             "snapshot": {"messageId": "u1", "trackedFileBackups": {}, "timestamp": "2026-05-01T10:00:01.000Z"}},
            cc("user", "u1", None, "Fix the bug."),
            cc("attachment", "t1", "u1", attachment={"type": "todo_reminder", "content": []}),
            answer("a1", "t1", "Which bug?", "msg_1"),
            cc("user", "u2", "a1", "The parser one."),
            cc("progress", "p2", "u2", data={"type": "hook_progress", "hookEvent": "UserPromptSubmit"}),
            answer("a2", "p2", "Fixed the parser.", "msg_2"),
            cc("user", "u3", "a1", "No, the lexer one."),  # a rewind: re-sent from a1
            answer("a3", "u3", "Fixed the lexer.", "msg_3"),
            cc("system", "y3", "a3", subtype="turn_duration", durationMs=1200, isMeta=False),
            {"type": "ai-title", "aiTitle": "Fix the lexer", "sessionId": "s-21"},
            {"type": "custom-title", "customTitle": "lexer", "sessionId": "s-21"},
            {"type": "last-prompt", "lastPrompt": "No, the lexer one.", "leafUuid": "a3", "sessionId": "s-21"}])


def test_6_claude_code_2_1_files_resume_at_last_prompt_and_round_trip(tmp_path: Path, mem: SessionStore) -> None:
    lines = claude_21()
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", lines))
    assert mem.get_head(sid) == "a3"  # last-prompt.leafUuid, not the system row after it
    assert texts(mem.build_context(sid)) == [("user", "Fix the bug."), ("assistant", "Which bug?"),
                                             ("user", "No, the lexer one."), ("assistant", "Fixed the lexer.")]
    tt.export_claude_code(mem, sid, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines


def test_6_an_export_adds_no_last_prompt_row_where_the_transcript_resumes_as_it_did(tmp_path: Path,
                                                                                   mem: SessionStore) -> None:
    """A last-prompt row whose leafUuid is not a line of the main file (Claude Code wrote
    one for a message it never kept): Claude Code, and the import, resume at the last
    line instead; the export wrote one more last-prompt row (1 of 108 real files)."""
    lines = claude_21()
    lines[-1] = {**lines[-1], "leafUuid": "gone-1"}
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", lines))
    assert mem.get_head(sid) == "y3"
    tt.export_claude_code(mem, sid, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines


def claude_fork(lines: list[dict[str, Any]], source: str, fork: str) -> list[dict[str, Any]]:
    """A fork as Claude Code's and the Agent SDK's ``fork_session`` write it: every row
    renamed, stamped with ``forkedFrom``, then a ``content-replacement`` row."""
    def new(uuid: str | None) -> str | None:
        return None if uuid is None else "f-" + uuid
    out: list[dict[str, Any]] = [{**line, "uuid": new(line["uuid"]), "parentUuid": new(line.get("parentUuid")),
                                  "sessionId": fork, "forkedFrom": {"sessionId": source, "messageUuid": line["uuid"]}}
                                 for line in lines if "uuid" in line]
    return [*out, {"type": "content-replacement", "sessionId": fork, "replacements": [{"toolUseId": "t"}],
                   "uuid": "cr-1", "timestamp": "2026-05-01T11:00:00.000Z"}]


def test_6_a_fork_knows_where_it_came_from_and_keeps_every_row(tmp_path: Path, mem: SessionStore) -> None:
    source = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", claude_21()))
    lines = claude_fork(claude_21(), "s-21", "s-fork")
    fork = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-fork.jsonl", lines))
    meta = mem.get_metadata(fork)
    assert meta is not None and meta.forked_from == (source, "y3")  # the source's session and message
    tt.export_claude_code(mem, fork, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines  # the content-replacement row too
    alone = tt.import_claude_code(SessionStore(ss.InMemoryFileSystem()), tmp_path / "s-fork.jsonl")
    assert alone  # without the source imported, forked_from names the source's Claude Code session


def test_6_rewinds_are_named_branches(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", claude_21()))
    assert {b.name: b.head_id for b in mem.get_branches(sid)} == {"main": "a3", "rewind-u2": "a2"}
    assert mem.get_current_branch(sid) == "main"
    assert texts(mem.build_context(sid, "a2"))[-2:] == [("user", "The parser one."),
                                                         ("assistant", "Fixed the parser.")]


def test_6_a_head_moved_here_is_where_the_exported_transcript_resumes(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_claude_code(mem, write_jsonl(tmp_path / "s-21.jsonl", claude_21()))
    mem.switch_to_branch(sid, "rewind-u2")
    tt.export_claude_code(mem, sid, tmp_path / "out.jsonl")
    written = read_jsonl(tmp_path / "out.jsonl")
    assert written[:-1] == claude_21()  # every line in place, and one more last-prompt row
    assert written[-1] == {"type": "last-prompt", "lastPrompt": "The parser one.", "leafUuid": "a2",
                           "sessionId": "s-21"}
    assert mem.get_head(tt.import_claude_code(mem, tmp_path / "out.jsonl", key="again")) == "a2"


def test_6_old_layout_subagent_files_beside_the_transcript_attach_and_go_back(tmp_path: Path,
                                                                             mem: SessionStore) -> None:
    main = stamp([cc("user", "u1", None, "Survey src."), answer("a1", "u1", "Asking an agent.", "msg_1")])
    agent = stamp([cc("user", "s1", None, "Survey src/jobs.", isSidechain=True, agentId="7f3a"),
                   answer("s2", "s1", "Two jobs.", "msg_s") | {"isSidechain": True, "agentId": "7f3a"}])
    other = stamp([cc("user", "o1", None, "Another session.", isSidechain=True, agentId="99", sessionId="s-other")])
    write_jsonl(tmp_path / "in" / "s-21.jsonl", main)
    write_jsonl(tmp_path / "in" / "agent-7f3a.jsonl", agent)
    write_jsonl(tmp_path / "in" / "agent-99.jsonl", other)  # another session's agent: not this one's
    sid = tt.import_claude_code(mem, tmp_path / "in" / "s-21.jsonl")
    assert {b.name: b.head_id for b in mem.get_branches(sid)} == {"main": "a1", "agent-7f3a": "s2"}
    assert texts(mem.build_context(sid, "s2")) == [("user", "Survey src/jobs."), ("assistant", "Two jobs.")]
    written = tt.export_claude_code(mem, sid, tmp_path / "out" / "s-21.jsonl")
    assert written == [str(tmp_path / "out" / "s-21.jsonl"), str(tmp_path / "out" / "agent-7f3a.jsonl")]
    assert read_jsonl(Path(written[0])) == main and read_jsonl(Path(written[1])) == agent


# -- 7. pi's retainedTail ------------------------------------------------------------------


def test_7_a_compaction_with_retained_tail_keeps_that_tail_as_pi_does(mem: SessionStore) -> None:
    lines = pi_compacted()
    lines[5]["retainedTail"] = [{"role": "user", "content": "Kept: the tag name.", "timestamp": 2},
                                {"role": "assistant", "content": [{"type": "text", "text": "v1.2.0"}],
                                 "api": "anthropic-messages", "provider": "anthropic", "stopReason": "stop",
                                 "timestamp": 3}]
    sid = tt.import_pi(mem, [json.dumps(line) for line in lines])
    context = mem.build_context(sid)
    assert_openai_accepts(context)
    assert "Planned tests, then a tag." in context[0]["content"]
    assert texts(context)[1:] == [("user", "Kept: the tag name."), ("assistant", "v1.2.0"), ("user", "Ship it.")]


# -- 8. a transcript that grew ---------------------------------------------------------------


def test_8_a_pi_file_imported_again_adds_only_new_entries_and_moves_the_head(tmp_path: Path,
                                                                            mem: SessionStore) -> None:
    lines = pi_compacted()
    path = write_jsonl(tmp_path / "pi.jsonl", lines[:5])
    sid = tt.import_pi(mem, path)
    before = mem.get_messages(sid)
    write_jsonl(path, lines)  # pi appended two entries
    assert tt.import_pi(mem, path) == sid
    after = mem.get_messages(sid)
    assert after[:len(before)] == before and [m.id for m in after[len(before):]] == ["a0000005", "a0000006"]
    assert mem.get_head(sid) == "a0000006" and mem.get_branch(sid, "main").head_id == "a0000006"  # type: ignore[union-attr]
    assert tt.import_pi(mem, path) == sid and mem.get_messages(sid) == after  # nothing new: nothing written


def test_8_a_claude_code_file_imported_again_follows_its_branches(tmp_path: Path, mem: SessionStore) -> None:
    lines = claude_21()
    path = write_jsonl(tmp_path / "s-21.jsonl", lines[:10])
    sid = tt.import_claude_code(mem, path)
    assert mem.get_head(sid) == "a2"
    write_jsonl(path, lines)
    assert tt.import_claude_code(mem, path) == sid
    assert mem.get_head(sid) == "a3"
    assert {b.name: b.head_id for b in mem.get_branches(sid)} == {"main": "a3", "rewind-u2": "a2"}
    tt.export_claude_code(mem, sid, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines


def test_8_a_line_changed_in_place_is_reported_and_nothing_is_written(tmp_path: Path, mem: SessionStore) -> None:
    lines = pi_compacted()
    path = write_jsonl(tmp_path / "pi.jsonl", lines[:5])
    sid = tt.import_pi(mem, path)
    before = mem.get_messages(sid)
    lines[2]["message"]["content"] = [{"type": "text", "text": "Step one: rewritten."}]
    write_jsonl(path, lines)
    with pytest.raises(tt.TranscriptChanged, match=r"line 3 .*a0000002") as raised:
        tt.import_pi(mem, path)
    assert isinstance(raised.value, ss.DuplicateMessage)
    assert mem.get_messages(sid) == before


def test_8_a_key_holding_another_session_is_refused(tmp_path: Path, mem: SessionStore) -> None:
    sid = tt.import_pi(mem, [json.dumps(line) for line in pi_compacted()], key="k")
    other = pi_compacted()
    other[0] = pi_header("0196f000-0000-7000-8000-0000000000ff")
    with pytest.raises(ss.InvalidKey, match="not one of this transcript"):
        tt.import_pi(mem, [json.dumps(line) for line in other], key="k")
    assert len(mem.get_messages(sid)) == len(other)


def test_a_line_holding_two_entries_back_to_back_reads_as_both(tmp_path: Path, mem: SessionStore) -> None:
    """Real pi files hold such lines (a writer appended after a line without its newline);
    pi itself skips them, losing both entries."""
    lines = pi_compacted()
    text = "".join(json.dumps(line) + ("" if n == 3 else "\n") for n, line in enumerate(lines))
    (tmp_path / "joined.jsonl").write_text(text, encoding="utf-8")
    sid = tt.import_pi(mem, tmp_path / "joined.jsonl")
    assert [m.id for m in mem.get_messages(sid)][1:] == [line["id"] for line in lines[1:]]
    tt.export_pi(mem, sid, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == lines  # one entry per line again


# -- the context reader hook -------------------------------------------------------------------


def test_a_fresh_process_builds_contexts_of_imported_sessions_once_the_module_is_imported(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path / "store") as store:
        pi_sid = tt.import_pi(store, [json.dumps(line) for line in pi_compacted()])
        cc_sid = tt.import_claude_code(store, write_jsonl(tmp_path / "s-21.jsonl", parallel_calls()))
        expected = [store.build_context(pi_sid), store.build_context(cc_sid, format="anthropic")]
    script = textwrap.dedent(f"""
        import json, sys
        import session_store
        store = session_store.SessionStore(storage_dir={str(tmp_path / "store")!r})
        try:
            store.build_context({pi_sid!r})
        except session_store.SessionStoreError as e:
            print("without:", e)
        import session_store_transcripts
        print(json.dumps([store.build_context({pi_sid!r}), store.build_context({cc_sid!r}, format="anthropic")]))
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "integrations")])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    without, with_module = run.stdout.splitlines()
    assert "session_store_transcripts" in without and "'pi'" in without
    assert json.loads(with_module) == expected


def test_readers_see_the_whole_path_and_the_tree(mem: SessionStore) -> None:
    seen: list[tuple[list[str], list[str]]] = []

    def reader(path: list[ss.Message], children: Any) -> list[ss.Message]:
        seen.append(([m.id for m in path], [c.id for c in children(path[0].id)]))
        return [ss.Message(id=m.id, parent_id=m.parent_id, type="user", role="user", content=str(m.content),
                           timestamp=m.timestamp) if m.type.startswith("demo") else m for m in path]

    ss.register_context_reader("demo", reader)
    sid = mem.resolve("k")
    q = mem.append(sid, role="user", content="native")
    mem.append(sid, role="note", type="demo.note", content="from demo", parent_id=q.id)
    mem.append(sid, role="assistant", content="sibling", parent_id=q.id)
    assert mem.build_context(sid, mem.get_leaves(sid)[0].id) == [{"role": "user", "content": "native"},
                                                                 {"role": "user", "content": "from demo"}]
    assert seen == [([q.id, mem.get_leaves(sid)[0].id], [m.id for m in mem.get_children(sid, q.id)])]
    with pytest.raises(ss.InvalidInput):
        ss.register_context_reader("demo.x", reader)


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "docs" / "adapters.md").read_text(encoding="utf-8")
    start = readme.index("import json, os, tempfile\nimport session_store_transcripts")
    code = readme[start:readme.index("```", start)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "integrations")])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "'content': 'One: a.py.'" in run.stdout


def test_a_lane_based_pi_file_is_refused_by_name_and_nothing_is_written(mem: SessionStore) -> None:
    """No published pi writes the lane-based format (the newest on npm writes version 3):
    such a file is refused with a message that names it, not guessed at."""
    lines = [json.dumps({"kind": "header", "version": 4, "id": "s1"}),
             json.dumps({"kind": "entry", "id": "e1", "lane": "main", "record": {"role": "user", "content": "hi"}})]
    with pytest.raises(ss.InvalidInput, match="lane-based pi session"):
        tt.import_pi(mem, lines)
    assert mem.get_all_session_ids() == []
