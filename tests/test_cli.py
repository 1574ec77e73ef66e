"""The command line, run as a subprocess on real stores (healthy and broken)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from session_store import SessionStore

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "session_store", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def make_store(directory: Path) -> tuple[str, list[str]]:
    with SessionStore(storage_dir=directory) as store:
        sid = store.resolve("user:alice")
        q = store.append(sid, role="user", content="Question?\nsecond line")
        a = store.append(sid, role="assistant", content="Answer.", tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
        t = store.append(sid, role="tool", content="42", tool_call_id="c1")
        alt = store.append(sid, role="assistant", content="Other answer.", parent_id=q.id)
        store.create_branch(sid, "alt", alt.id)
        return sid, [q.id, a.id, t.id, alt.id]


def test_ls_lists_sessions_as_text_and_json(tmp_path: Path) -> None:
    sid, _ = make_store(tmp_path)
    text = cli("--dir", str(tmp_path), "ls")
    assert text.returncode == 0 and sid in text.stdout and "user:alice" in text.stdout
    rows = json.loads(cli("ls", "--dir", str(tmp_path), "--json").stdout)  # --dir after the command too
    assert rows == [{"sessionId": sid, "key": "user:alice", "messages": 4, "branches": 2,
                     "updatedAt": rows[0]["updatedAt"]}]


def test_tree_marks_branches_and_the_current_head_plainly_into_a_pipe(tmp_path: Path) -> None:
    _, ids = make_store(tmp_path)
    out = cli("tree", "user:alice", "--dir", str(tmp_path)).stdout.splitlines()
    assert out[0].startswith(f"user {ids[0][:8]}  Question?") and "second line" not in out[0]
    assert any(line.endswith("[main*]") for line in out) and any(line.endswith("[alt]") for line in out)
    assert "\033[" not in "".join(out)  # no colour into a pipe


def test_history_in_each_format(tmp_path: Path) -> None:
    sid, ids = make_store(tmp_path)
    text = cli("history", sid, "--dir", str(tmp_path)).stdout
    assert text.splitlines()[0] == "user: Question?"
    records = json.loads(cli("history", sid, "--branch", "alt", "--format", "json", "--dir", str(tmp_path)).stdout)
    assert [r["id"] for r in records] == [ids[0], ids[3]]
    openai = json.loads(cli("history", sid, "--format", "openai", "--dir", str(tmp_path)).stdout)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool"]
    assert cli("history", sid, "--leaf", ids[0], "--dir", str(tmp_path)).stdout.startswith("user: Question?")


def test_branches_mark_the_current_one(tmp_path: Path) -> None:
    sid, ids = make_store(tmp_path)
    assert cli("branches", sid, "--dir", str(tmp_path)).stdout.splitlines() == [
        f"* main  {ids[2][:8]}", f"  alt  {ids[3][:8]}"]


def test_export_then_import_round_trips_messages_and_branches(tmp_path: Path) -> None:
    sid, _ = make_store(tmp_path)
    first = tmp_path / "first.jsonl"
    assert cli("export", sid, "-o", str(first), "--dir", str(tmp_path)).returncode == 0
    imported = cli("import", str(first), "--key", "copy", "--dir", str(tmp_path))
    assert imported.returncode == 0, imported.stderr
    second = cli("export", "copy", "--dir", str(tmp_path)).stdout
    body = [json.loads(line) for line in first.read_text().splitlines()[1:]]
    again = [json.loads(line) for line in second.splitlines()[1:]]
    assert [b for b in body if "message" in b] == [b for b in again if "message" in b]  # exactly, timestamps too
    def heads(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(b["branch"]["name"], b["branch"]["headId"]) for b in lines if "branch" in b]

    assert heads(body) == heads(again)
    taken = cli("import", str(first), "--dir", str(tmp_path))  # the original key is taken
    assert taken.returncode == 2 and "already has a session" in taken.stderr


def test_check_is_0_when_healthy_1_with_a_report_when_broken_and_repair_fixes(tmp_path: Path) -> None:
    sid, _ = make_store(tmp_path)
    assert cli("check", "--dir", str(tmp_path)).returncode == 0
    with open(tmp_path / sid / "messages.jsonl", "ab") as f:
        f.write(b"{not json}\n")
    broken = cli("check", "--dir", str(tmp_path))
    assert broken.returncode == 1 and "not JSON" in broken.stdout and "messages.jsonl" in broken.stdout
    repaired = cli("check", "--repair", "--dir", str(tmp_path))
    assert repaired.returncode == 0 and "fixed:" in repaired.stdout
    assert cli("check", "--dir", str(tmp_path)).returncode == 0


def test_stats_counts_and_sizes(tmp_path: Path) -> None:
    make_store(tmp_path)
    out = cli("stats", "--dir", str(tmp_path)).stdout.splitlines()
    assert out[-1].startswith("total: 1 sessions, 4 messages, ")


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    make_store(tmp_path)
    for args in (["tree", "nobody", "--dir", str(tmp_path)], ["ls", "--dir", str(tmp_path / "missing")],
                 ["frobnicate"], ["import", str(tmp_path / "missing.jsonl"), "--dir", str(tmp_path)],
                 ["history", "user:alice", "--branch", "nope", "--dir", str(tmp_path)]):
        result = cli(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "missing").exists()  # reading commands create nothing


def test_demo_is_the_readme_command(tmp_path: Path) -> None:
    result = cli("--dir", str(tmp_path), "demo")
    assert result.returncode == 0 and "[alternative*]" in result.stdout


def test_pi_and_claude_code_files_in_and_out(tmp_path: Path) -> None:
    from test_interop import claude_session, pi_v3_session
    pi_file = tmp_path / "pi.jsonl"
    pi_file.write_text("".join(json.dumps(line) + "\n" for line in pi_v3_session()), encoding="utf-8")
    store_dir = str(tmp_path / "store")
    imported = cli("import", str(pi_file), "--format", "pi", "--key", "from-pi", "--dir", store_dir)
    assert imported.returncode == 0, imported.stderr
    sid = imported.stdout.strip()
    exported = cli("export", "from-pi", "--format", "pi", "--dir", store_dir)
    assert [json.loads(line) for line in exported.stdout.splitlines()] == pi_v3_session()
    request = json.loads(cli("history", sid, "--format", "anthropic", "--dir", store_dir).stdout)
    assert request["messages"][0] == {"role": "user", "content": "List the files."}

    cc_file = tmp_path / "cc.jsonl"
    cc_file.write_text("".join(json.dumps(line) + "\n" for line in claude_session()), encoding="utf-8")
    assert cli("import", str(cc_file), "--format", "claude-code", "--dir", store_dir).returncode == 0
    refused = cli("export", "claude-code:cc-1", "--format", "claude-code", "--dir", store_dir)
    assert refused.returncode == 2 and "-o" in refused.stderr
    out = tmp_path / "back.jsonl"
    written = cli("export", "claude-code:cc-1", "--format", "claude-code", "-o", str(out), "--dir", store_dir)
    assert written.stdout.split() == [str(out)]
    assert [json.loads(line) for line in out.read_text().splitlines()] == claude_session()
    bad = cli("import", str(cc_file), "--format", "pi", "--dir", store_dir)
    assert bad.returncode == 2 and "not a pi session" in bad.stderr
