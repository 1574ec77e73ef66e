"""On-disk format, crash recovery, the index, hostile input and threads."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

import session_store as ss
from session_store import InMemoryFileSystem, RealFileSystem, SessionStore


class CountingFS(RealFileSystem):
    """A real file system that counts syncs and index checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.atomic_writes: list[str] = []

    def sync(self, path: str) -> None:
        self.syncs.append(os.path.basename(path))
        super().sync(path)

    def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        self.atomic_writes.append(os.path.basename(path))
        super().write_atomic(path, data, durable=durable)


def open_files(directory: Path, clock: FakeClock | None = None, **options: Any) -> SessionStore:
    store = SessionStore(storage_dir=directory, clock=clock or FakeClock(), **options)
    store.init()
    return store


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- format -------------------------------------------------------------------------


def test_layout_and_records_follow_the_documented_format(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("user:alice")
        a = store.append(sid, role="user", content="Hello")
        b = store.append(sid, role="assistant", content="Hi", tool_calls=[{"id": "c"}])
        store.create_branch(sid, "alt", a.id)
    folder = tmp_path / sid
    assert sorted(p.name for p in folder.iterdir()) == ["branches.jsonl", "messages.jsonl", "session.json"]
    assert lines(folder / "messages.jsonl") == [
        {"id": a.id, "parentId": None, "type": "user", "role": "user", "content": "Hello", "timestamp": a.timestamp},
        {"id": b.id, "parentId": a.id, "type": "assistant", "role": "assistant", "content": "Hi",
         "timestamp": b.timestamp, "toolCalls": [{"id": "c"}]},
    ]
    assert lines(folder / "branches.jsonl") == [
        {"op": "create", "name": "alt", "headId": a.id, "at": a.timestamp, "seq": 2}]
    meta = json.loads((folder / "session.json").read_text())
    assert meta == {"version": 1, "sessionId": sid, "key": "user:alice", "createdAt": a.timestamp}
    index = json.loads((tmp_path / "sessions.json").read_text())
    assert index["keys"] == {"user:alice": sid}
    assert index["sessions"][sid]["messageCount"] == 2
    assert lines(tmp_path / "keys.jsonl") == [
        {"op": "create", "key": "user:alice", "sessionId": sid, "createdAt": a.timestamp}]


def test_seed_written_messages_file_loads(tmp_path: Path) -> None:
    """A log written by the seed (no extra fields) is read as is."""
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
    (tmp_path / sid / "messages.jsonl").write_text(
        '{"id":"msg-1","parentId":null,"type":"user","role":"user","content":"Hello","timestamp":1234567890}\n'
        '{"id":"msg-2","parentId":"msg-1","type":"assistant","role":"assistant","content":"Hi","timestamp":1234567891}\n')
    with open_files(tmp_path) as store:
        assert [m.id for m in store.get_linear_history(sid)] == ["msg-1", "msg-2"]


# -- durability ---------------------------------------------------------------------


def test_durable_append_syncs_before_returning_and_never_rewrites_the_index(tmp_path: Path) -> None:
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path, index_save_delay_ms=60_000) as store:
        sid = store.resolve("k")
        fs.syncs.clear()
        fs.atomic_writes.clear()
        for i in range(50):
            store.append(sid, role="user", content=str(i))
        assert fs.syncs == ["messages.jsonl"] * 50
        assert fs.atomic_writes == []  # the index is debounced, never written per append
    assert fs.atomic_writes == ["sessions.json"]  # once, at close


def test_non_durable_append_never_syncs(tmp_path: Path) -> None:
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path, durable=False) as store:
        sid = store.resolve("k")
        fs.syncs.clear()
        store.append(sid, role="user", content="x")
        assert fs.syncs == []


def test_index_checkpoint_is_debounced(tmp_path: Path) -> None:
    fs = CountingFS()
    store = SessionStore(fs, storage_dir=tmp_path, index_save_delay_ms=50)
    store.init()
    for i in range(20):
        store.resolve(f"k{i}")
    deadline = threading.Event()
    for _ in range(100):
        if "sessions.json" in fs.atomic_writes:
            break
        deadline.wait(0.02)
    assert 1 <= fs.atomic_writes.count("sessions.json") <= 2
    store.close()


def test_crash_before_the_checkpoint_loses_no_session(tmp_path: Path) -> None:
    store = open_files(tmp_path, index_save_delay_ms=60_000)
    sid = store.resolve("user:alice")
    m = store.append(sid, role="user", content="acknowledged")
    # simulate a crash: no close(), no checkpoint written
    assert not (tmp_path / "sessions.json").exists()
    again = open_files(tmp_path)
    assert again.resolve("user:alice") == sid
    assert again.get_messages(sid) == [m]
    store.close()
    again.close()


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated", "wrong-shape"])
def test_damaged_index_is_rebuilt_with_nothing_lost(tmp_path: Path, damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with open_files(tmp_path) as store:
        ids = {k: store.resolve(k) for k in ("a", "b", "c")}
        store.append(ids["b"], role="user", content="kept")
    index = tmp_path / "sessions.json"
    text = index.read_text()
    if damage == "missing":
        index.unlink()
    elif damage == "empty":
        index.write_bytes(b"")
    elif damage == "garbage":
        index.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        index.write_text(text[: len(text) // 2])
    else:
        index.write_text('{"keys": [1, 2]}')
    with open_files(tmp_path) as store:
        assert {k: store.resolve(k) for k in ("a", "b", "c")} == ids
        assert [m.content for m in store.get_messages(ids["b"])] == ["kept"]
    assert json.loads(index.read_text())["keys"] == ids


def test_index_is_rebuilt_from_folders_when_journal_is_lost_too(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        ids = {k: store.resolve(k) for k in ("a", "b")}
    (tmp_path / "sessions.json").unlink()
    (tmp_path / "keys.jsonl").unlink()
    with open_files(tmp_path) as store:
        assert {k: store.resolve(k) for k in ("a", "b")} == ids


def test_torn_last_line_is_ignored_then_cut_by_the_next_writer(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="complete")
    log = tmp_path / sid / "messages.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"id":"torn","parentId":null,"ty')
    with open_files(tmp_path) as store:
        assert store.get_messages(sid) == [a]
        b = store.append(sid, role="assistant", content="after")
        assert store.get_messages(sid) == [a, b]
    assert [r["id"] for r in lines(log)] == [a.id, b.id]
    assert "torn last line" in caplog.text


def test_bad_lines_mid_file_are_reported_kept_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="a")
    log = tmp_path / sid / "messages.jsonl"
    with open(log, "ab") as f:
        f.write(b"this is not json\n")
        f.write(b"\xff\xfe invalid utf-8\n")
        f.write(b"[1, 2]\n")
        f.write(json.dumps({"id": a.id, "parentId": None, "role": "user", "content": "dup",
                            "timestamp": 1}).encode() + b"\n")
        f.write(json.dumps({"id": "orphan", "parentId": "later", "role": "user", "content": "o",
                            "timestamp": 1}).encode() + b"\n")
    garbage = log.read_bytes()
    with caplog.at_level(logging.WARNING), open_files(tmp_path) as store:
        assert store.get_messages(sid) == [a]
        b = store.append(sid, role="assistant", content="b")
        assert b.parent_id == a.id
    assert log.read_bytes().startswith(garbage)  # nothing dropped from disk
    for reason in ("not JSON", "not a JSON object", "duplicate id", "not an earlier message"):
        assert reason in caplog.text


def test_missing_branches_file_means_only_main(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="a")
        store.create_branch(sid, "alt", a.id)
    (tmp_path / sid / "branches.jsonl").unlink()
    with open_files(tmp_path) as store:
        assert [b.name for b in store.get_branches(sid)] == ["main"]
        assert store.get_head(sid) == a.id


# -- hostile input ---------------------------------------------------------------------


HOSTILE = ["../../escape", "/etc/passwd", "..", ".", "a/b", "C:\\x", "nul\x00byte", "\x1b[31mred",
           "sessions.json", "keys.jsonl", "~", "$HOME", "x" * 4096, "ключ", "🙂", " ", "\n"]


@pytest.mark.parametrize("key", HOSTILE)
def test_keys_are_data_never_paths(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    with open_files(root) as store:
        sid = store.resolve(key)
        store.append(sid, role="user", content=key)
        assert store.resolve(key) == sid
    with open_files(root) as store:
        assert store.resolve(key) == sid
    outside = [p for p in tmp_path.rglob("*") if root not in p.parents and p != root]
    assert outside == []
    assert {p.name for p in root.iterdir()} == {"sessions.json", "keys.jsonl", sid}


def test_hostile_session_ids_never_reach_the_file_system(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with open_files(root) as store:
        for sid in HOSTILE:
            with pytest.raises(ss.SessionNotFound):
                store.append(sid, role="user", content="x")
            with pytest.raises(ss.SessionNotFound):
                store.get_messages(sid)
            assert store.get_metadata(sid) is None
    assert {p.name for p in root.iterdir()} <= {"keys.jsonl", "sessions.json"}


# -- threads ------------------------------------------------------------------------


@pytest.mark.parametrize("fs_kind", ["memory", "files"])
def test_eight_threads_appending_to_one_session_lose_nothing(tmp_path: Path, fs_kind: str) -> None:
    fs = InMemoryFileSystem() if fs_kind == "memory" else RealFileSystem()
    directory = "/s" if fs_kind == "memory" else str(tmp_path)
    per_thread = 200
    with SessionStore(fs, storage_dir=directory) as store:
        sid = store.resolve("shared")
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    store.append(sid, role="user", content=f"{t}:{i}")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        contents = [m.content for m in store.get_messages(sid)]
        history = store.get_linear_history(sid)
    assert sorted(contents) == sorted(f"{t}:{i}" for t in range(8) for i in range(per_thread))
    assert len(history) == 8 * per_thread  # every append went onto the head: one chain
    if fs_kind == "files":
        assert len(lines(tmp_path / sid / "messages.jsonl")) == 8 * per_thread
        with SessionStore(storage_dir=directory) as again:
            assert len(again.get_linear_history(sid)) == 8 * per_thread


def test_readers_never_cut_a_line_another_process_may_be_writing(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="a")
        log = tmp_path / sid / "messages.jsonl"
        partial = b'{"id":"in-flight","parentId":null,"role":"user"'
        with open(log, "ab") as f:
            f.write(partial)
        with open_files(tmp_path) as reader:
            assert reader.get_messages(sid) == [a]
            assert reader.get_tree(sid) == [a]
        assert log.read_bytes().endswith(partial)  # untouched by readers
        with open(log, "ab") as f:  # the other writer finishes its line
            f.write(b',"content":"done","timestamp":1}\n')
        assert [m.id for m in store.get_messages(sid)] == [a.id, "in-flight"]


def test_checkpoint_keeps_counts_of_sessions_it_did_not_load(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="a")
    with open_files(tmp_path) as store:
        store.resolve("other")  # dirties the index without loading "k"
    assert json.loads((tmp_path / "sessions.json").read_text())["sessions"][sid]["messageCount"] == 1


def test_opening_and_reading_does_not_rewrite_the_checkpoint(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="hi")
    before = os.stat(tmp_path / "sessions.json").st_ino
    with SessionStore(storage_dir=tmp_path) as store:
        assert len(store.get_messages(sid)) == 1
    assert os.stat(tmp_path / "sessions.json").st_ino == before  # not replaced


def test_a_folder_from_a_creation_killed_before_its_log_is_not_adopted(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        store.resolve("kept")
    ghost = "0f0f0f0f-0000-4000-8000-000000000000"
    (tmp_path / ghost).mkdir()
    (tmp_path / ghost / "session.json").write_text(
        json.dumps({"version": 1, "sessionId": ghost, "key": "ghost", "createdAt": 1}))
    (tmp_path / "sessions.json").unlink()  # force a rebuild from the journal and the folders
    with SessionStore(storage_dir=tmp_path) as store:
        assert not store.has_key("ghost") and store.has_key("kept")
        assert any("interrupted creation" in p.reason for p in store.check().problems)
        fixed = store.repair().fixed
        assert any("no messages.jsonl" in line for line in fixed)
        assert store.check().ok
