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
    assert cli("history", sid, "--last", "1", "--dir", str(tmp_path)).stdout.splitlines() == text.splitlines()[-1:]
    last = json.loads(cli("history", sid, "--last", "2", "--format", "openai", "--dir", str(tmp_path)).stdout)
    assert last == openai[-2:]
    records = json.loads(cli("history", sid, "--branch", "alt", "--last", "1", "--format", "json", "--dir",
                             str(tmp_path)).stdout)
    assert [r["id"] for r in records] == [ids[3]]
    bad = cli("history", sid, "--last", "-1", "--dir", str(tmp_path))
    assert bad.returncode != 0 and "limit must be an integer >= 0" in bad.stderr


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


# -- transcripts, format detection, short ids, progress ------------------------------------


def pi_file(path: Path, entries: int) -> Path:
    """A linear pi session of ``entries`` entries (what a long pi session looks like)."""
    lines = [{"type": "session", "version": 3, "id": "0196f000-0000-7000-8000-00000000c0de",
              "timestamp": "2026-05-01T10:00:00.000Z", "cwd": "/w"}]
    for i in range(entries):
        role = ("user", "assistant")[i % 2]
        content: Any = f"question {i}" if role == "user" else [{"type": "text", "text": f"answer {i} " * 30}]
        lines.append({"type": "message", "id": f"{i:08x}", "parentId": f"{i - 1:08x}" if i else None,
                      "timestamp": "2026-05-01T10:00:01.000Z", "message": {"role": role, "content": content}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_import_finds_the_format_from_the_first_lines(tmp_path: Path) -> None:
    from test_interop import claude_session
    sid, _ = make_store(tmp_path / "a")
    native = tmp_path / "native.jsonl"
    assert cli("export", sid, "-o", str(native), "--dir", str(tmp_path / "a")).returncode == 0
    cc_file = tmp_path / "cc.jsonl"
    cc_file.write_text("".join(json.dumps(line) + "\n" for line in claude_session()), encoding="utf-8")
    store = str(tmp_path / "b")
    pi = pi_file(tmp_path / "pi.jsonl", 4)
    for path, key in ((native, "user:alice"), (pi, "pi:0196f000-0000-7000-8000-00000000c0de"),
                      (cc_file, "claude-code:cc-1")):
        run = cli("import", str(path), "--dir", store)
        assert run.returncode == 0, run.stderr
        rows = json.loads(cli("ls", "--json", "--dir", store).stdout)
        assert {r["key"]: r["sessionId"] for r in rows}[key] == run.stdout.strip()


def test_import_of_a_file_that_is_neither_says_so_and_creates_nothing(tmp_path: Path) -> None:
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"hello": "world"}\n', encoding="utf-8")
    run = cli("import", str(odd), "--dir", str(tmp_path / "store"))
    assert run.returncode == 2 and "neither a session-store export, a pi session nor a Claude Code" in run.stderr
    assert not (tmp_path / "store").exists()


def test_transcripts_without_their_module_name_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "session_store.py").write_bytes((ROOT / "session_store.py").read_bytes())  # vendored alone
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-S", str(tmp_path / "app" / "session_store.py"), "import",  # -S: alone
                          str(pi_file(tmp_path / "pi.jsonl", 2)), "--format", "pi", "--dir", str(tmp_path / "s")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and "session_store_transcripts.py" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "s").exists()


def test_tree_of_a_1000_entry_linear_pi_session_is_flat_and_fits_120_columns(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    assert cli("import", str(pi_file(tmp_path / "pi.jsonl", 1000)), "--dir", store).returncode == 0
    tree = cli("tree", "pi:0196f000-0000-7000-8000-00000000c0de", "--dir", store).stdout.splitlines()
    assert len(tree) == 1001 and max(len(line) for line in tree) <= 120
    assert all(line.startswith(("session ", "user ", "assistant ")) for line in tree)  # one column: a chain
    assert tree[-1].endswith("[main*]")


def test_tree_stays_narrow_on_a_chain_with_a_side_line_at_every_step() -> None:
    from session_store import InMemoryFileSystem, draw_tree
    with SessionStore(InMemoryFileSystem()) as store:
        sid = store.resolve("comb")
        parent = None
        for i in range(500):  # Claude Code's progress lines and parallel results hang beside the chain
            main = store.append(sid, role="assistant", content=f"step {i}", parent_id=parent)
            store.append(sid, role="tool", content=f"beside {i}", parent_id=main.id)
            parent = main.id
        lines = draw_tree(store, sid, width=120)
    assert len(lines) == 1000 and max(len(line) for line in lines) <= 120
    assert max(len(line) - len(line.lstrip("│├─ ")) for line in lines) <= 3


def test_every_command_takes_the_short_ids_tree_prints(tmp_path: Path) -> None:
    sid, ids = make_store(tmp_path)
    tree = cli("tree", "user:alice", "--dir", str(tmp_path)).stdout
    short = [mid[:8] for mid in ids]
    assert all(s in tree for s in short)
    history = cli("history", sid[:8], "--leaf", short[3], "--format", "json", "--dir", str(tmp_path))
    assert history.returncode == 0, history.stderr
    assert [r["id"] for r in json.loads(history.stdout)] == [ids[0], ids[3]]
    assert cli("branches", sid[:6], "--dir", str(tmp_path)).returncode == 0
    with SessionStore(storage_dir=tmp_path) as store:
        store.append(sid, role="user", content="a", id="abcd1111-x")
        store.append(sid, role="user", content="b", id="abcd2222-y")
    ambiguous = cli("history", sid, "--leaf", "abcd", "--dir", str(tmp_path))
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr and "abcd1111-x" in ambiguous.stderr
    assert "abcd1111" in cli("tree", sid, "--dir", str(tmp_path)).stdout  # unique at 8 characters


def run_on_a_terminal(*args: str) -> str:
    """The command with stdout and stderr on a pseudo-terminal: what the terminal received."""
    import pty
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "session_store", *args], stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
    os.close(child)
    received = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        received += chunk
    proc.wait(timeout=120)
    os.close(main)
    return received.decode("utf-8")


def screen(received: str) -> list[str]:
    """The lines a terminal shows for ``received`` (carriage return, erase to end of line)."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    i = 0
    while i < len(received):
        if received.startswith("\x1b[K", i):
            del line[column:]
            i += 3
            continue
        char = received[i]
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
        i += 1
    return lines + (["".join(line)] if line else [])


def test_stats_progress_on_a_terminal_never_overwrites_its_rows(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sids = [store.resolve(f"user:{i}") for i in range(3)]
        for sid in sids:
            store.append(sid, role="user", content="hi")
    received = run_on_a_terminal("stats", "--dir", str(tmp_path))
    assert "sessions 1/3" in received  # progress was shown
    shown = screen(received)
    assert sorted(line.split()[0] for line in shown[:-1]) == sorted(sids)
    assert all("1 messages" in line and line.endswith("bytes") for line in shown[:-1])
    assert shown[-1].startswith("total: 3 sessions, 3 messages")


def test_a_transcript_import_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    received = run_on_a_terminal("import", str(pi_file(tmp_path / "pi.jsonl", 600)), "--dir", str(tmp_path / "s"))
    assert "reading pi 256/601" in received
    shown = [line for line in screen(received) if line]
    assert len(shown) == 1 and len(shown[0]) == 36  # the session id alone: progress erased


def test_branch_commands_move_create_switch_rename_and_delete_losing_no_message(tmp_path: Path) -> None:
    sid, (q, a, t, alt) = make_store(tmp_path)
    d = str(tmp_path)
    assert cli("--dir", d, "branch", "move", "user:alice", q[:8]).stdout.strip() == f"main: head {q}"  # undo
    assert cli("--dir", d, "branch", "move", "user:alice", t[:8]).returncode == 0  # redo
    assert cli("--dir", d, "branch", "move", "user:alice", "--empty", "--branch", "alt").stdout.strip() == \
        "alt: head (empty)"
    assert cli("--dir", d, "branch", "create", "user:alice", "again", a[:8]).returncode == 0
    assert cli("--dir", d, "branch", "rename", "user:alice", "again", "second").stdout.strip() == "again -> second"
    assert cli("--dir", d, "branch", "switch", "user:alice", "second").returncode == 0
    refused = cli("--dir", d, "branch", "delete", "user:alice", "second")
    assert refused.returncode == 2 and "current branch" in refused.stderr
    assert cli("--dir", d, "branch", "delete", "user:alice", "alt").stdout.strip() == "alt: deleted (its messages stay)"
    unknown = cli("--dir", d, "branch", "move", "user:alice", "zzzzzz")
    assert unknown.returncode == 2 and "zzzzzz" in unknown.stderr
    with SessionStore(storage_dir=tmp_path) as store:
        assert [b.name for b in store.get_branches(sid)] == ["main", "second"]
        assert store.get_current_branch(sid) == "second" and store.get_head(sid) == a
        assert {m.id for m in store.get_messages(sid)} == {q, a, t, alt}  # nothing deleted


def test_fork_makes_a_session_of_the_path_and_prints_its_id(tmp_path: Path) -> None:
    sid, (q, a, _, _) = make_store(tmp_path)
    done = cli("--dir", str(tmp_path), "fork", "user:alice", "--at", a[:8], "--key", "copy")
    assert done.returncode == 0
    new = done.stdout.strip()
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.resolve("copy") == new and [m.id for m in store.get_linear_history(new)] == [q, a]
        meta = store.get_metadata(new)
        assert meta is not None and meta.forked_from == (sid, a)
    taken = cli("--dir", str(tmp_path), "fork", "user:alice", "--key", "copy")
    assert taken.returncode == 2 and "already has a session" in taken.stderr
