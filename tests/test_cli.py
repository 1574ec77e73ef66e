"""The command line, run as a subprocess on real stores (healthy and broken)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from session_store import SessionStore
from session_store_conformance import FakeClock

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "session_store", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def imported_session(stdout: str) -> str:
    """The session id in what ``import`` prints ("imported N messages as key K (session ID)")."""
    found = re.fullmatch(r"imported [\d,]+ messages? as key .* \(session ([\w-]+)\)\n", stdout)
    assert found is not None, stdout
    return found[1]


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
                     "updatedAt": rows[0]["updatedAt"], "title": "Question? second line",
                     "preview": "Question? second line"}]


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
    sid = imported_session(imported.stdout)
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
        assert {r["key"]: r["sessionId"] for r in rows}[key] == imported_session(run.stdout)


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
    assert len(shown) == 1 and imported_session(shown[0] + "\n")  # what was imported, alone: progress erased
    assert shown[0].startswith("imported 601 messages as key pi:0196f000-0000-7000-8000-00000000c0de (session ")


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


# ============================================================================
# A user's conversations: ls --prefix, title, search, prune
# ============================================================================

DAY = 86400


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``directory``: size and modification time."""
    found = {}
    for path in [directory, *directory.rglob("*")]:
        st = path.lstat()  # the key index is made of links: never follow them
        found[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns)
    return found


def conversations(directory: Path, clock: FakeClock) -> dict[str, str]:
    """Two users' sessions, a day apart (oldest first: alice:1, bob:1, alice:2), 100 days ago."""
    clock.now = 1_700_000_000.0
    ids = {}
    with SessionStore(storage_dir=directory, clock=clock) as store:
        for key, said in (("user:alice:1", "How do I bake bread?"), ("user:bob:1", "Tell me about dogs"),
                          ("user:alice:2", "Plan a trip to Lisbon")):
            ids[key] = sid = store.resolve(key)
            store.append(sid, role="user", content=said)
            store.append(sid, role="assistant", content=f"Sure: {said.lower()}")
            clock.advance(DAY)
    return ids


def test_ls_prefix_lists_one_users_sessions_newest_first_with_titles(tmp_path: Path) -> None:
    ids = conversations(tmp_path, FakeClock())
    out = cli("ls", "--prefix", "user:alice:", "--dir", str(tmp_path)).stdout.splitlines()
    assert [line.split()[0] for line in out] == [ids["user:alice:2"], ids["user:alice:1"]]
    assert out[0].endswith("user:alice:2  Plan a trip to Lisbon") and "2 msgs" in out[0]
    assert "user:bob" not in "".join(out)
    newest = cli("ls", "--prefix", "user:alice:", "--limit", "1", "--dir", str(tmp_path)).stdout.splitlines()
    assert newest == out[:1]
    rows = json.loads(cli("ls", "--prefix", "user:bob:", "--json", "--dir", str(tmp_path)).stdout)
    assert [(r["key"], r["title"], r["preview"]) for r in rows] == [("user:bob:1", "Tell me about dogs",
                                                                     "Tell me about dogs")]
    assert cli("ls", "--prefix", "nobody:", "--dir", str(tmp_path)).stdout == ""


def test_ls_shows_control_characters_of_a_first_message_as_escapes_on_one_line(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        store.append(store.resolve("k"), role="user", content="\x1b[2J\x1b]0;pwned\x07hi\u202eevil")
    out = cli("ls", "--dir", str(tmp_path)).stdout
    assert len(out.splitlines()) == 1 and "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert out.rstrip().endswith("k  \\x1b[2J\\x1b]0;pwned\\x07hi\\u202eevil")


def test_title_sets_prints_and_clears_a_title(tmp_path: Path) -> None:
    ids = conversations(tmp_path, FakeClock())
    assert cli("title", "user:bob:1", "--dir", str(tmp_path)).stdout == "Tell me about dogs\n"  # from the message
    done = cli("title", "user:bob:1", "Dogs <b>& more</b>", "--dir", str(tmp_path))
    assert (done.returncode, done.stdout) == (0, "user:bob:1: title Dogs <b>& more</b>\n")
    assert cli("title", ids["user:bob:1"][:6], "--dir", str(tmp_path)).stdout == "Dogs <b>& more</b>\n"
    assert "Dogs <b>& more</b>" in cli("ls", "--dir", str(tmp_path)).stdout
    cleared = cli("title", "user:bob:1", "--clear", "--dir", str(tmp_path))
    assert cleared.returncode == 0 and "title cleared" in cleared.stdout
    assert cli("title", "user:bob:1", "--dir", str(tmp_path)).stdout == "Tell me about dogs\n"


def test_a_bad_title_is_refused_with_exit_2_and_nothing_is_written(tmp_path: Path) -> None:
    conversations(tmp_path, FakeClock())
    before = snapshot(tmp_path)
    for bad, why in (("two\nlines", "one line"), ("", "1 to 200 characters"), ("x" * 201, "1 to 200 characters"),
                     ("   ", "not only blanks"), ("bell\x07", "no control characters")):
        done = cli("title", "user:bob:1", bad, "--dir", str(tmp_path))
        assert done.returncode == 2 and why in done.stderr, (bad, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    both = cli("title", "user:bob:1", "New", "--clear", "--dir", str(tmp_path))
    assert both.returncode == 2 and "not both" in both.stderr
    assert cli("title", "nobody", "x", "--dir", str(tmp_path)).returncode == 2
    assert snapshot(tmp_path) == before
    assert cli("title", "user:bob:1", "--dir", str(tmp_path)).stdout == "Tell me about dogs\n"


def test_search_prints_one_line_per_hit_and_reads_operators_as_words(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("user:alice")
        store.append(sid, role="user", content="Is it a or b? Say a OR b.")
        store.append(sid, role="assistant", content="b* is not a word here")
    out = cli("search", '"a" OR b*', "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1  # a, or and b: only the first message holds all three
    assert lines[0].split()[:4] == ["user:alice", lines[0].split()[1], "user", "current"]
    assert lines[0].endswith("Is it a or b? Say a OR b.")
    assert cli("search", "WORD", "--dir", str(tmp_path)).stdout.split()[2] == "assistant"  # any case
    hits = json.loads(cli("search", "word", "--json", "--dir", str(tmp_path)).stdout)
    assert [(h["session_id"], h["role"], h["place"]) for h in hits] == [(sid, "assistant", "current")]


def test_search_marks_history_a_reset_archived_and_can_leave_it_out(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("user:alice")
        store.append(sid, role="user", content="the penguin question")
        store.reset(sid)
        store.append(sid, role="user", content="a new penguin question")
    lines = cli("search", "penguin", "--dir", str(tmp_path)).stdout.splitlines()
    assert sorted(line.split()[3] for line in lines) == ["[archived]", "current"]
    assert any(line.endswith("the penguin question") and "[archived]" in line for line in lines)
    current = cli("search", "penguin", "--no-archived", "--dir", str(tmp_path)).stdout.splitlines()
    assert len(current) == 1 and current[0].endswith("a new penguin question")


def test_search_without_a_match_says_no_matches_and_exits_0(tmp_path: Path) -> None:
    conversations(tmp_path, FakeClock())
    for query in ("zebra", "bread dogs", "***"):
        done = cli("search", query, "--dir", str(tmp_path))
        assert done.returncode == 0 and done.stdout.startswith("no matches"), (query, done.stdout)
    prefix = cli("search", "dogs", "--prefix", "user:alice:", "--dir", str(tmp_path))
    assert prefix.stdout == "no matches\n"  # bob's session is not alice's to search
    assert cli("search", "dogs", "--dir", str(tmp_path)).stdout.startswith("user:bob:1 ")


def test_prune_dry_run_names_what_it_would_delete_and_writes_nothing(tmp_path: Path) -> None:
    ids = conversations(tmp_path, FakeClock())
    before = snapshot(tmp_path)
    done = cli("prune", "--older-than", "30d", "--dry-run", "--archive", str(tmp_path / "archive"),
               "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == [ids["user:alice:1"], ids["user:bob:1"], ids["user:alice:2"]]
    assert all(line.startswith("would delete  ") for line in lines[:-1])
    assert lines[-1].startswith("dry run: would delete 3 session(s)") and lines[-1].endswith("nothing was deleted")
    assert snapshot(tmp_path) == before and not (tmp_path / "archive").exists()


def test_prune_keeps_recent_and_leased_sessions_and_says_why(tmp_path: Path) -> None:
    clock = FakeClock()
    ids = conversations(tmp_path, clock)
    with SessionStore(storage_dir=tmp_path, lock_timeout_ms=600_000) as store:  # the real clock: now
        store.acquire_lock(ids["user:alice:1"], "worker-1")  # held while prune runs (close releases it)
        store.append(ids["user:alice:2"], role="user", content="and back again")
        done = cli("prune", "--older-than", "2w", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"deleted  {ids['user:bob:1']}  user:bob:1  last written ")
    assert f"kept (leased)  {ids['user:alice:1']}  user:alice:1" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("deleted 1 session(s), freed ")
    left = [line.split()[-1] for line in cli("ls", "--dir", str(tmp_path)).stdout.splitlines()]
    assert left == ["Lisbon", "bread?"]  # alice:2, written since; alice:1, leased


def test_prune_archive_then_import_brings_a_session_back_with_its_title(tmp_path: Path) -> None:
    store_dir, archive = tmp_path / "s", tmp_path / "archive"
    ids = conversations(store_dir, FakeClock())
    assert cli("title", "user:bob:1", "All about dogs", "--dir", str(store_dir)).returncode == 0  # written now
    done = cli("prune", "--older-than", "7d", "--dir", str(store_dir), "--archive", str(archive))
    assert done.returncode == 0, done.stderr
    files = sorted(archive.iterdir())
    assert {f.name for f in files} == {ids["user:alice:1"] + ".jsonl", ids["user:alice:2"] + ".jsonl"}
    assert sorted(line.split()[1] for line in done.stdout.splitlines() if line.startswith("archived  ")) == [
        str(f) for f in files]
    assert cli("ls", "--prefix", "user:alice", "--dir", str(store_dir)).stdout == ""
    assert cli("title", "user:alice:2", "Lisbon trip", "--dir", str(store_dir)).returncode == 2  # gone
    # a title set before the archive is written comes back with the session
    with SessionStore(storage_dir=tmp_path / "other") as other:
        sid = other.resolve("user:carol")
        other.append(sid, role="user", content="Hello")
        other.set_title(sid, "Carol's <first> chat")
    assert cli("prune", "--older-than", "0s", "--archive", str(archive), "--dir", str(tmp_path / "other")
               ).returncode == 0
    for f in [*files, archive / f"{sid}.jsonl"]:
        back = cli("import", str(f), "--dir", str(store_dir))
        assert back.returncode == 0, back.stderr
    assert cli("title", "user:carol", "--dir", str(store_dir)).stdout == "Carol's <first> chat\n"
    assert cli("title", "user:alice:2", "--dir", str(store_dir)).stdout == "Plan a trip to Lisbon\n"
    history = cli("history", "user:alice:1", "--dir", str(store_dir)).stdout
    assert history == "user: How do I bake bread?\nassistant: Sure: how do i bake bread?\n"


def test_prune_refuses_a_duration_it_cannot_read_and_deletes_nothing(tmp_path: Path) -> None:
    conversations(tmp_path, FakeClock())
    before = snapshot(tmp_path)
    for bad in ("30", "30x", "-1d", "1.5d", "d", "30 d", "", "1d12h", "30D", "thirty days"):
        done = cli("prune", f"--older-than={bad}", "--dir", str(tmp_path))
        assert done.returncode == 2 and "invalid duration" in done.stderr, (bad, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and "45s, 90m, 12h, 30d or 2w" in done.stderr
    missing = cli("prune", "--dir", str(tmp_path))
    assert missing.returncode == 2 and "--older-than" in missing.stderr
    assert snapshot(tmp_path) == before


def test_each_new_command_explains_itself(tmp_path: Path) -> None:
    for command, words in (("ls", "--prefix"), ("search", "[archived]"), ("prune", "45s, 90m, 12h, 30d or 2w"),
                           ("title", "--clear")):
        done = cli(command, "--help")
        assert done.returncode == 0 and words in done.stdout, (command, done.stdout)


# -- what tree, history, import, --version and --help say ------------------------------------


def run(capsys: Any, *args: str) -> str:
    """The command line in this process (faster than a subprocess): what it printed."""
    import session_store as ss

    assert ss.main(list(args)) == 0
    return str(capsys.readouterr().out)


def tool_calls_of_every_shape(directory: Path) -> None:
    with SessionStore(storage_dir=directory) as store:
        sid = store.resolve("calls")
        store.append(sid, role="user", content="What is 1 + 2, and the weather in Rome?")
        store.append(sid, role="assistant", content=None, tool_calls=[  # OpenAI Chat: no content at all
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}])
        store.append(sid, role="tool", tool_call_id="c1", content="3")
        store.append(sid, role="assistant", content=[  # OpenAI Responses items
            {"type": "function_call", "call_id": "fc1", "name": "weather", "arguments": '{"city": "Rome"}'}])
        store.append(sid, role="user", content=[{"type": "function_call_output", "call_id": "fc1", "output": "sunny"}])
        store.append(sid, role="assistant", content=[  # Anthropic blocks
            {"type": "thinking", "thinking": "Read the notes.", "signature": "s"},
            {"type": "tool_use", "id": "tu1", "name": "read", "input": {"path": "notes.md"}}])
        store.append(sid, role="user", content=[{"type": "tool_result", "tool_use_id": "tu1", "is_error": True,
                                                 "content": [{"type": "text", "text": "no such file"}]}])
        store.append(sid, role="assistant", content="", function_call={"name": "legacy", "arguments": "{}"})


def test_tree_and_history_show_tool_calls_by_name_and_arguments_never_a_blank_row(tmp_path: Path,
                                                                                 capsys: Any) -> None:
    tool_calls_of_every_shape(tmp_path)
    history = run(capsys, "--dir", str(tmp_path), "history", "calls").splitlines()
    assert history == [
        "user: What is 1 + 2, and the weather in Rome?",
        'assistant: [call add {"a":1,"b":2}]',
        "tool: 3",
        'assistant: [call weather {"city":"Rome"}]',
        "user: [result of weather: sunny]",
        'assistant: [call read {"path":"notes.md"}]',
        "user: [error of read: no such file]",
        "assistant: [call legacy {}]"]
    tree = run(capsys, "--dir", str(tmp_path), "tree", "calls").splitlines()
    assert [line.split("  ", 1)[1] for line in tree] == [line.split(": ", 1)[1] for line in history[:-1]] + [
        "[call legacy {}]  [main*]"]


def test_tree_marks_a_claude_code_subagent_s_lines(tmp_path: Path, capsys: Any) -> None:
    showcase = ROOT / "tests" / "fixtures" / "claude-code" / "minimal_showcase"
    run(capsys, "--dir", str(tmp_path), "import", str(showcase / "55550000-0000-4000-8000-000000000001.jsonl"))
    tree = run(capsys, "--dir", str(tmp_path), "tree", "claude-code:55550000-0000-4000-8000-000000000001")
    agent = [line for line in tree.splitlines() if "showcol2-" in line]
    assert len(agent) == 4 and all("  [subagent showcol2] " in line for line in agent)
    assert not [line for line in tree.splitlines() if "sc-" in line and "subagent" in line]  # the main conversation
    history = run(capsys, "--dir", str(tmp_path), "history", "claude-code:55550000-0000-4000-8000-000000000001",
                  "--branch", "agent-showcol2")
    assert history.startswith("user [subagent showcol2]: Survey src/jobs and list its scheduled jobs.\n")


def test_history_of_an_empty_branch_or_a_cleared_session_says_so(tmp_path: Path, capsys: Any) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("cleared")
        store.append(sid, role="user", content="Forget me.")
        store.move_head(sid, None)  # what a framework's clear() does: the messages stay in the tree
        store.resolve("fresh")
    assert run(capsys, "--dir", str(tmp_path), "history", "cleared") == (
        f"(branch main is empty; the session's 1 message is in its tree: session-store tree {sid})\n")
    assert run(capsys, "--dir", str(tmp_path), "history", "cleared", "--branch", "main") == (
        f"(branch main is empty; the session's 1 message is in its tree: session-store tree {sid})\n")
    assert run(capsys, "--dir", str(tmp_path), "history", "fresh") == (
        "(branch main is empty: the session has no messages)\n")
    assert run(capsys, "--dir", str(tmp_path), "history", "cleared", "--format", "json") == "[]\n"  # JSON stays JSON


def test_import_says_what_it_imported_and_again_what_was_new(tmp_path: Path, capsys: Any) -> None:
    transcript = pi_file(tmp_path / "pi.jsonl", 4)
    key = "pi:0196f000-0000-7000-8000-00000000c0de"
    first = run(capsys, "--dir", str(tmp_path / "s"), "import", str(transcript))
    sid = imported_session(first)
    assert first == f"imported 5 messages as key {key} (session {sid})\n"
    assert run(capsys, "--dir", str(tmp_path / "s"), "import", str(transcript)) == (
        f"nothing new in {transcript}: key {key} (session {sid}) has its 5 messages\n")
    pi_file(transcript, 7)  # the session went on
    assert run(capsys, "--dir", str(tmp_path / "s"), "import", str(transcript)) == (
        f"imported 3 new messages into key {key} (session {sid}; 8 in all)\n")


def test_version_is_the_package_s_one_version(capsys: Any) -> None:
    import session_store as ss

    try:
        ss.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out == f"session-store {ss.__version__}\n"
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib: Python 3.11+)
    table = project.partition("[project]\n")[2].partition("\n[")[0]
    assert re.search(r'^dynamic = \["version"\]', table, re.M) and not re.search(r"^version =", table, re.M)
    assert re.search(r'^version = \{ attr = "session_store.__version__" \}', project, re.M)  # packaging reads it
    assert re.fullmatch(r"\d+\.\d+\.\d+", ss.__version__)


COMMANDS = ["demo", "ls", "search", "prune", "title", "tree", "branches", "history", "export", "branch", "fork",
            "import", "check", "stats", "view", "serve"]


def test_help_lists_every_command_with_a_line_saying_what_it_does(capsys: Any) -> None:
    import session_store as ss

    try:
        ss.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    shown = capsys.readouterr().out
    described = dict(re.findall(r"^    (\w+) +(\S.*)$", shown, re.M))
    assert list(described) == COMMANDS and all(len(what) > 10 for what in described.values())
    assert "--version" in shown
