"""On-disk format, crash recovery, the index, hostile input and threads."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import gc
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import FakeClock
from hypothesis import given, settings
from test_store import refuse_to_load

import session_store as ss
from session_store import InMemoryFileSystem, RealFileSystem, SessionStore
from session_store_conformance import FaultyFileSystem


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
    assert sorted(p.name for p in folder.iterdir()) == ["branches.jsonl", "messages.jsonl", "session.json",
                                                        "stats.json"]
    for raw in (folder / "messages.jsonl").read_bytes().splitlines():  # each line ends with its check
        cut = raw.rindex(b',"#":')
        assert raw[cut:] == b',"#":%d}' % zlib.crc32(raw[:cut])
    assert [{k: v for k, v in r.items() if k != "#"} for r in lines(folder / "messages.jsonl")] == [
        {"id": a.id, "parentId": None, "type": "user", "role": "user", "content": "Hello", "timestamp": a.timestamp},
        {"id": b.id, "parentId": a.id, "type": "assistant", "role": "assistant", "content": "Hi",
         "timestamp": b.timestamp, "toolCalls": [{"id": "c"}]},
    ]
    assert lines(folder / "branches.jsonl") == [
        {"op": "create", "name": "alt", "headId": a.id, "at": a.timestamp, "seq": 2}]
    meta = json.loads((folder / "session.json").read_text())
    assert meta == {"version": 2, "sessionId": sid, "key": "user:alice", "createdAt": a.timestamp}
    assert json.loads((tmp_path / "session-store.json").read_text()) == {"format": 2}
    digest = hashlib.sha256(b"user:alice").hexdigest()
    assert os.readlink(tmp_path / "keys" / digest[:2] / digest) == sid  # the key index: one link per key
    # names/: the key cut into pieces after separators, a folder each, its session a link named by the rest
    assert os.readlink(tmp_path / "names" / "user%3A" / f"alice={sid}") == sid
    assert {p.name for p in tmp_path.iterdir()} == {"keys", "names", "session-store.json", sid}


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
    with SessionStore(fs, storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        fs.syncs.clear()
        fs.atomic_writes.clear()
        for i in range(50):
            store.append(sid, role="user", content=str(i))
        assert fs.syncs == ["messages.jsonl"] * 50
        assert fs.atomic_writes == []  # nothing but the record is written per append
    assert fs.atomic_writes == ["stats.json"]  # the session's tally, once, at close


def test_non_durable_append_never_syncs(tmp_path: Path) -> None:
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path, durable=False) as store:
        sid = store.resolve("k")
        fs.syncs.clear()
        store.append(sid, role="user", content="x")
        assert fs.syncs == []


def test_a_store_opened_not_durable_syncs_nothing_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one fsync or fdatasync, at the system call: creating sessions (the folder's
    rename into place synced its directory), appending, branching, leases, forks."""
    calls: list[str] = []
    real_fsync, real_fdatasync = os.fsync, ss._fdatasync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(ss, "_fdatasync", fdatasync)
    with SessionStore(storage_dir=tmp_path, durable=False) as store:
        sid = store.resolve("k")
        for key in ("a", "b", "c"):
            store.resolve(key)
        head = store.append(sid, role="user", content="x")
        store.create_branch(sid, "side", head.id)
        with store.lock(sid, "worker"):
            store.append(sid, role="assistant", content="y")
        store.fork_session(sid, key="copy")
    assert calls == []
    with SessionStore(storage_dir=tmp_path / "durable") as store:  # the same calls on a durable store do sync
        store.resolve("k")
    assert calls


def test_creating_sessions_writes_only_what_each_creation_needs(tmp_path: Path) -> None:
    """Index upkeep is O(changes): a creation writes its own folder and one link,
    never a file that grows with the store (no checkpoint rewritten whole)."""
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path) as store:
        store.resolve("first")
        fs.atomic_writes.clear()
        for i in range(20):
            store.resolve(f"k{i}")
        assert fs.atomic_writes == []
    assert fs.atomic_writes == []  # nothing to save at close: no session was written to


def test_crash_before_the_checkpoint_loses_no_session(tmp_path: Path) -> None:
    store = open_files(tmp_path, index_save_delay_ms=60_000)
    sid = store.resolve("user:alice")
    m = store.append(sid, role="user", content="acknowledged")
    # simulate a crash: no close()
    again = open_files(tmp_path)
    assert again.resolve("user:alice") == sid
    assert again.get_messages(sid) == [m]
    store.close()
    again.close()


@pytest.mark.parametrize("damage", ["missing", "wrong-target", "not-a-link", "all-links-lost"])
def test_damaged_index_is_rebuilt_with_nothing_lost(tmp_path: Path, damage: str) -> None:
    with open_files(tmp_path) as store:
        ids = {k: store.resolve(k) for k in ("a", "b", "c")}
        store.append(ids["b"], role="user", content="kept")
    digest = hashlib.sha256(b"b").hexdigest()
    link = tmp_path / "keys" / digest[:2] / digest
    if damage == "missing":
        link.unlink()
    elif damage == "wrong-target":
        link.unlink()
        os.symlink("../../not-a-session", link)
    elif damage == "not-a-link":
        link.unlink()
        link.write_text("garbage")
    else:
        shutil.rmtree(tmp_path / "keys")
    with open_files(tmp_path) as store:
        if damage == "all-links-lost":  # the whole index: rebuilt as the store opens, before any resolve
            assert store.check().ok
        else:  # one link: check() finds it, repair() puts it back
            assert not store.check().ok
            assert store.repair().ok  # rebuilt from the session folders, which name their keys
        assert {k: store.resolve(k) for k in ("a", "b", "c")} == ids
        assert [m.content for m in store.get_messages(ids["b"])] == ["kept"]


def _three_sessions(tmp_path: Path) -> dict[str, str]:
    with open_files(tmp_path) as store:
        ids = {k: store.resolve(k) for k in ("a", "b", "c")}
        for k, sid in ids.items():
            store.append(sid, role="user", content=f"kept {k}")
    return ids


def test_a_store_whose_key_index_was_removed_finds_every_key_before_any_resolve(tmp_path: Path) -> None:
    ids = _three_sessions(tmp_path)
    shutil.rmtree(tmp_path / "keys")
    with open_files(tmp_path) as store:
        assert all(store.has_key(k) for k in ids)  # (was False: and resolve made a second, empty session)
        assert {k: store.resolve(k) for k in ids} == ids
        assert sorted(store.get_all_session_ids()) == sorted(ids.values())
        assert [m.content for m in store.get_messages(ids["b"])] == ["kept b"]
        assert store.check().ok


def test_a_key_index_removed_under_open_stores_is_rebuilt_before_a_duplicate(tmp_path: Path) -> None:
    ids = _three_sessions(tmp_path)
    with open_files(tmp_path) as one, open_files(tmp_path) as two:
        assert one.resolve("a") == ids["a"]
        shutil.rmtree(tmp_path / "keys")
        assert two.resolve("b") == ids["b"]  # a lookup that finds no link sees the index is gone
        assert one.has_key("c") and one.resolve("new") not in ids.values()
        assert sorted(two.get_all_session_ids()) == sorted([*ids.values(), one.resolve("new")])


def test_opening_a_whole_key_index_reads_no_session_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _three_sessions(tmp_path)

    def refused(self: Any, session_id: str) -> None:
        raise AssertionError("a session folder was read")
    monkeypatch.setattr(ss.JsonlStorage, "_read_meta", refused)
    with open_files(tmp_path) as store:
        assert store.resolve("a") == ids["a"] and store.has_key("b") and not store.has_key("zzz")


def test_repair_gives_a_key_back_to_its_session_from_an_empty_duplicate(tmp_path: Path) -> None:
    """A link lost alone is not seen by a lookup: resolve() then made a new, empty
    session for the key. repair() gives the key back to the session that has the
    messages (it was setting that one aside) and removes the empty one."""
    ids = _three_sessions(tmp_path)
    digest = hashlib.sha256(b"b").hexdigest()
    (tmp_path / "keys" / digest[:2] / digest).unlink()
    with open_files(tmp_path) as store:
        duplicate = store.resolve("b")
        assert duplicate != ids["b"] and store.get_messages(duplicate) == []
        assert not store.check().ok
        report = store.repair()
        assert report.ok, report
        assert store.resolve("b") == ids["b"]
        assert [m.content for m in store.get_messages(ids["b"])] == ["kept b"]
        assert not store.has_session(duplicate) and not (tmp_path / duplicate).exists()
        assert store.check().ok


def write_format_1_store(root: Path, sessions: dict[str, list[str]]) -> dict[str, str]:
    """A store as format 1 wrote it (a keys.jsonl journal, a sessions.json checkpoint)."""
    root.mkdir()
    ids: dict[str, str] = {}
    journal = []
    for n, (key, contents) in enumerate(sessions.items()):
        sid = f"0000000{n}-0000-4000-8000-000000000000"
        ids[key] = sid
        (root / sid).mkdir()
        (root / sid / "session.json").write_text(json.dumps(
            {"version": 1, "sessionId": sid, "key": key, "createdAt": 1000 + n}) + "\n")
        (root / sid / "branches.jsonl").write_text("")
        parent = None
        with open(root / sid / "messages.jsonl", "w") as f:
            for i, content in enumerate(contents):
                mid = f"{n}-{i}"
                f.write(json.dumps({"id": mid, "parentId": parent, "type": "user", "role": "user",
                                    "content": content, "timestamp": 2000 + i}) + "\n")
                parent = mid
        journal.append(json.dumps({"op": "create", "key": key, "sessionId": sid, "createdAt": 1000 + n}))
    (root / "keys.jsonl").write_text("\n".join(journal) + "\n")
    (root / "sessions.json").write_text(json.dumps({"version": 1, "journalBytes": 0, "keys": {}, "sessions": {}}))
    return ids


def write_seed_store(root: Path) -> dict[str, str]:
    """A store in the layout the seed's README documents for its TypeScript SessionStore:
    ``sessions.json`` (``{"keys", "sessions"}``) and, per session, ``messages.jsonl``
    and ``branches.jsonl`` (its lines: a branch as it stood), no ``session.json``."""
    root.mkdir()
    ids = {"user:alice": "session-uuid-1", "user:bob": "session-uuid-2"}
    sessions: dict[str, Any] = {}
    for n, sid in enumerate(ids.values()):
        (root / sid).mkdir()
        records = [{"id": f"m{n}-1", "parentId": None, "type": "user", "role": "user", "content": "Hello",
                    "timestamp": 1234567890},
                   {"id": f"m{n}-2", "parentId": f"m{n}-1", "type": "assistant", "role": "assistant",
                    "content": "Hi", "timestamp": 1234567891},
                   {"id": f"m{n}-3", "parentId": f"m{n}-1", "type": "assistant", "role": "assistant",
                    "content": "Hey", "timestamp": 1234567892}]
        (root / sid / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (root / sid / "branches.jsonl").write_text(json.dumps(
            {"name": "alternative", "leafId": f"m{n}-3", "createdAt": 1234567893, "updatedAt": 1234567893}) + "\n")
        sessions[sid] = {"sessionId": sid, "createdAt": 1234567890 + n, "updatedAt": 1234567893, "messageCount": 3}
    (root / "sessions.json").write_text(json.dumps({"keys": ids, "sessions": sessions}))
    return ids


def test_a_store_in_the_seeds_layout_opens_with_every_key_session_and_branch(tmp_path: Path) -> None:
    root = tmp_path / "seed"
    ids = write_seed_store(root)
    before = sorted(str(p) for p in root.rglob("*"))

    def as_written(store: SessionStore, sid: str) -> tuple[Any, ...]:
        return ([m.content for m in store.get_linear_history(sid)],
                {b.name: b.head_id for b in store.get_branches(sid)}, store.get_current_branch(sid))
    with open_files(root) as store:
        assert all(store.has_key(k) for k in ids)  # (was False for both, and resolve made new sessions)
        assert {k: store.resolve(k) for k in ids} == ids
        assert as_written(store, ids["user:alice"]) == (["Hello", "Hi"], {"main": "m0-2", "alternative": "m0-3"},
                                                        "main")
        assert store.get_metadata(ids["user:bob"]).key == "user:bob"  # type: ignore[union-attr]
        assert [p.reason.split(":")[0] for p in store.check().problems] == [
            "format 1 (a keys.jsonl journal), or the seed's layout (sessions.json)"]  # nothing else
    assert sorted(str(p) for p in root.rglob("*")) == before  # reading wrote nothing
    with open_files(root) as store:
        store.append(ids["user:alice"], role="user", content="Again")  # the first write migrates
        store.switch_to_branch(ids["user:bob"], "alternative")
    assert (root / "session-store.json").exists() and (root / "sessions.json.format-1").exists()
    with open_files(root) as store:
        assert {k: store.resolve(k) for k in ids} == ids  # no migration drops a key
        assert as_written(store, ids["user:alice"]) == (["Hello", "Hi", "Again"],
                                                        {"main": store.get_head(ids["user:alice"]),
                                                         "alternative": "m0-3"}, "main")
        assert as_written(store, ids["user:bob"]) == (["Hello", "Hey"], {"main": "m1-2", "alternative": "m1-3"},
                                                      "alternative")
        assert store.get_metadata(ids["user:alice"]).created_at == 1234567890  # type: ignore[union-attr]
        assert store.check().ok
    shutil.rmtree(root / "keys")  # format 2 now: its own index, rebuilt from the folders it wrote
    with open_files(root) as store:
        assert {k: store.resolve(k) for k in ids} == ids


def test_a_format_1_store_is_read_as_is_and_migrated_by_the_first_write(tmp_path: Path) -> None:
    root = tmp_path / "old"
    ids = write_format_1_store(root, {"a": ["one", "two"], "b": ["three"]})
    before = sorted(str(p) for p in root.rglob("*"))
    with open_files(root) as store:
        assert {k: store.resolve(k) for k in ("a", "b")} == ids
        assert [m.content for m in store.get_linear_history(ids["a"])] == ["one", "two"]
        assert store.get_metadata(ids["b"]).message_count == 1  # type: ignore[union-attr]
    assert sorted(str(p) for p in root.rglob("*")) == before  # reading wrote nothing
    with open_files(root) as store:
        store.append(ids["a"], role="user", content="three")  # the first write migrates
        assert store.resolve("c") not in ids.values()
    assert (root / "session-store.json").exists() and not (root / "keys.jsonl").exists()
    with open_files(root) as store:
        assert {k: store.resolve(k) for k in ("a", "b")} == ids
        assert [m.content for m in store.get_linear_history(ids["a"])] == ["one", "two", "three"]
        assert store.check().ok


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


def test_a_branch_event_whose_messages_were_lost_holds_back_no_later_event(tmp_path: Path) -> None:
    """Unsynced pages reach the disk in any order: a crash can keep a branch event and
    lose the messages it counts (and a failed sync takes back another writer's message
    that an acknowledged event counted). Such an event waited, and every later branch
    event queued behind it: create_branch raised KeyError, a head moved by move_head
    stayed where it was, and a fresh store's metadata counted it where a load did not."""
    with open_files(tmp_path, durable=False) as store:
        sid = store.resolve("k")
        m = [store.append(sid, role="user", content=f"m{i}") for i in range(3)]
        store.create_branch(sid, "alt", m[1].id)  # counts 3 messages
    log = tmp_path / sid / "messages.jsonl"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:2]))  # the crash kept two
    found = metadata_unloaded_and_loaded(lambda: open_files(tmp_path), sid)
    assert found[0] == found[1] and found[0].branch_count == 1
    with open_files(tmp_path) as store:
        assert [p.reason for p in store.check(sid).problems] == [
            "branch event 'create' on 'alt' follows messages that are missing"]
        assert store.create_branch(sid, "x", m[0].id).head_id == m[0].id
        assert store.move_head(sid, m[0].id).head_id == m[0].id == store.get_head(sid)
        after = store.append(sid, role="user", content="after")  # the third record: "alt" applies now
        assert [b.name for b in store.get_branches(sid)] == ["main", "x", "alt"]
        assert store.check(sid).ok
    found = metadata_unloaded_and_loaded(lambda: open_files(tmp_path), sid)
    assert found[0] == found[1] and found[0].branch_count == 3
    with open_files(tmp_path) as fresh:
        assert fresh.get_head(sid) == after.id
        assert [x.content for x in fresh.get_linear_history(sid)] == ["m0", "after"]


def test_a_failed_sync_takes_back_no_record_another_writer_wrote_after(tmp_path: Path) -> None:
    """A store's append is written, its lock released, then its sync fails. Meanwhile
    another store (another process) created a branch, counting that message, and its
    sync succeeded. The failed sync cut the message off the log, as its own and last
    there: the acknowledged branch then named one record more than the log holds. It
    now refuses further writes instead, and keeps the message (never acknowledged)."""
    during: list[Callable[[], object]] = []

    class FailingSync(RealFileSystem):
        def sync(self, path: str) -> None:
            if during and path.endswith("messages.jsonl"):
                during.pop()()
                raise OSError(errno.EIO, "fsync failed")
            super().sync(path)

    with SessionStore(ss.JsonlStorage(FailingSync(), tmp_path)) as a, \
            SessionStore(ss.JsonlStorage(RealFileSystem(), tmp_path)) as b:
        sid = a.resolve("k")
        first = a.append(sid, role="user", content="m0")
        during.append(lambda: b.create_branch(sid, "alt", first.id))
        with pytest.raises(ss.StorageError, match="refuses further writes"):
            a.append(sid, role="user", content="m1")
    with open_files(tmp_path) as fresh:
        assert [x.name for x in fresh.get_branches(sid)] == ["main", "alt"]
        assert [m.content for m in fresh.get_messages(sid)] == ["m0", "m1"]
        assert fresh.check(sid).ok


def test_a_durable_branch_event_syncs_the_log_it_counts_first(tmp_path: Path) -> None:
    """A branch event counts every record of the log, another writer's unsynced ones
    too: synced alone, a crash could keep it and lose them."""
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        first = store.append(sid, role="user", content="m0")
        fs.syncs.clear()
        store.create_branch(sid, "alt", first.id)
    assert fs.syncs[:2] == ["messages.jsonl", "branches.jsonl"]


def test_bad_lines_mid_file_are_reported_kept_and_kept_in_place(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
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
        got = store.get_messages(sid)
        assert got[0] == a and [m.type for m in got[1:4]] == ["damaged"] * 3  # placeholders keep their places
        assert got[4].id == "orphan" and got[4] in store.get_leaves(sid)  # intact: kept, as a root
        assert store.get_head(sid) == a.id
        b = store.append(sid, role="assistant", content="b")
        assert b.parent_id == a.id
    assert log.read_bytes().startswith(garbage)  # nothing dropped from disk
    for reason in ("not JSON", "not a JSON object", "duplicate id", "kept as a root"):
        assert reason in caplog.text


class ReadCountingFS(RealFileSystem):
    """A real file system that counts the bytes read by range (what a load reads a log by)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_bytes = 0

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        data = super().read_range(path, offset, size)
        self.read_bytes += len(data)
        return data


def test_a_path_end_reads_one_part_of_a_long_log(tmp_path: Path) -> None:
    with open_files(tmp_path, durable=False) as writer:
        sid = writer.resolve("k")
        chain = [writer.append(sid, role="user", content=f"message {i} " + "x" * 100) for i in range(5_000)]
    fs = ReadCountingFS()
    with SessionStore(ss.JsonlStorage(fs, str(tmp_path))) as fresh:
        assert fresh.get_linear_history(sid, limit=50) == chain[-50:]
        log_size = (tmp_path / sid / "messages.jsonl").stat().st_size
        assert fs.read_bytes <= ss._BACK_PART + 1_000 < log_size / 10  # a part, and the tally's last line


_record_ids = ["t1", "t2", "t3", "t4"]  # never an id written before the tally (trusted)


@st.composite
def hand_written_lines(draw: st.DrawFn, before: list[str]) -> bytes:
    """Lines written after the tally by hand: children before their parents, cycles,
    orphans, maybe a duplicate id, maybe a damaged line or one that is no message."""
    ids = draw(st.permutations(_record_ids))[:draw(st.integers(1, 4))]
    if draw(st.integers(0, 3)) == 0:
        ids.append(draw(st.sampled_from(ids)))
    out = [json.dumps({"id": mid, "parentId": draw(st.sampled_from([None, *before, *_record_ids, "nowhere"])),
                       "type": "user", "role": "user", "content": "by hand", "timestamp": 5}).encode()
           for mid in ids]
    bad = draw(st.sampled_from([None, None, None, b'{"id":"t1","parentId":null,"content":\x01}', b'{"id":7}']))
    if bad is not None:
        out.insert(draw(st.integers(0, len(out))), bad)
    return b"\n".join(out) + b"\n"


def a_session_then(lines: Callable[[list[str]], bytes]) -> tuple[InMemoryFileSystem, str, list[str]]:
    """A session of three messages whose tally is saved, then ``lines(their ids)`` appended by hand."""
    fs = InMemoryFileSystem()
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=FakeClock()) as writer:
        sid = writer.resolve("k")
        ids = [writer.append(sid, role="user", content=f"m{i}").id for i in range(3)]
    fs.append(f"/s/{sid}/messages.jsonl", lines(ids))
    return fs, sid, ids


def history_read(fs: InMemoryFileSystem, sid: str, leaf: str | None, limit: int, *, load_first: bool) -> Any:
    """``get_linear_history`` by a fresh store, after loading the session or not."""
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=FakeClock()) as store:
        if load_first:
            store.get_messages(sid)
        try:
            return store.get_linear_history(sid, leaf, limit=limit)
        except ss.MessageNotFound:
            return "not found"


def by_hand(*records: tuple[str, str | None]) -> bytes:
    return b"".join(json.dumps({"id": mid, "parentId": parent, "type": "user", "role": "user", "content": "x",
                                "timestamp": 5}).encode() + b"\n" for mid, parent in records)


def fresh_reads(fs: ss.FileSystem, sid: str, clock: FakeClock) -> tuple[Any, ...]:
    """History (limit 2) and metadata by a fresh store, first without loading the session, then loaded."""
    reads = []
    for load_first in (False, True):
        with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as store:
            if load_first:
                store.get_messages(sid)
            reads.append(([m.content for m in store.get_linear_history(sid, limit=2)], store.get_metadata(sid)))
    return tuple(reads)


def metadata(store: SessionStore, sid: str) -> ss.SessionMetadata:
    found = store.get_metadata(sid)
    assert found is not None
    return found


def metadata_unloaded_and_loaded(open_store: Callable[[], SessionStore], sid: str) -> list[ss.SessionMetadata]:
    """``get_metadata`` by a fresh store that has not loaded the session, then by one that has."""
    found = []
    for load_first in (False, True):
        with open_store() as store:
            if load_first:
                store.get_messages(sid)
            found.append(metadata(store, sid))
    return found


def test_a_tally_saved_before_a_sync_that_failed_is_not_believed_once_the_log_grows_back() -> None:
    inner, clock = InMemoryFileSystem(), FakeClock()
    fs = FaultyFileSystem(inner)
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as writer:
        sid = writer.resolve("k")
        chain = [writer.append(sid, role="user", content=f"m{i:03}") for i in range(255)]
        fs.fail_next_sync()
        with pytest.raises(ss.StorageError):  # the 256th write saves the tally, then its sync fails: cut off
            writer.append(sid, role="user", content="sib", parent_id=chain[-2].id)
        writer.append(sid, role="user", content="new")  # the same length: the log is back at the tally's end
        partial, loaded = fresh_reads(inner, sid, clock)
        assert partial == loaded and loaded[0] == ["m254", "new"]


def test_a_tally_covering_a_write_taken_back_is_not_believed_once_the_log_grows_back() -> None:
    clock, during = FakeClock(), list[Callable[[], object]]()

    class LandsThenFails(InMemoryFileSystem):
        def append(self, path: str, data: bytes) -> None:
            super().append(path, data)
            if during and path.endswith("messages.jsonl"):
                during.pop()()  # another store reads the record meanwhile
                raise OSError(errno.EIO, "the write landed, then failed")

    fs = LandsThenFails()
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock, durable=False) as reader, \
            SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock, durable=False) as writer:
        sid = reader.resolve("k")
        chain = [reader.append(sid, role="user", content=f"m{i}") for i in range(3)]
        during.append(lambda: reader.get_messages(sid))
        with pytest.raises(ss.StorageError):  # taken back (cut off the log) after the reader read it
            writer.append(sid, role="user", content="sib", parent_id=chain[0].id)
        reader.flush()  # its tally counts the record taken back
        writer.append(sid, role="user", content="new")  # the same length: the log is back at the tally's end
        partial, loaded = fresh_reads(fs, sid, clock)
        assert partial == loaded and loaded[0] == ["m2", "new"] and loaded[1].message_count == 4


@pytest.mark.parametrize("checked", [False, True])
@pytest.mark.parametrize("fail", ["sync", "write"])
@pytest.mark.parametrize("fs_kind", ["memory", "files"])
def test_a_store_that_read_a_record_taken_back_reads_the_log_as_it_is_once_it_grows_again(
        tmp_path: Path, fs_kind: str, fail: str, checked: bool) -> None:
    """A record read by another store between its write and the failure that took it
    back (a failed sync, a write that landed and then failed) is cut off the log in
    place. That store once read on from its old position when the log grew past it:
    the taken-back message stayed, a line's middle read as a damaged record, and the
    acknowledged ones were missed.

    ``checked``: a check() by that store read the log through its storage, which then
    remembered the new end, and a line there, intact, was taken as proof that the
    store's older position still held what it had read: the same loss, and the
    store's next message written under the taken-back one."""
    during: list[Callable[[], object]] = []
    base: type[ss.FileSystem] = InMemoryFileSystem if fs_kind == "memory" else RealFileSystem

    class Failing(base):  # type: ignore[valid-type, misc]
        sync_is_noop = False  # in memory too: appends are synced, as on a disk

        def append(self, path: str, data: bytes) -> None:
            super().append(path, data)
            if fail == "write" and during and path.endswith("messages.jsonl"):
                during.pop()()  # the other store reads the record meanwhile
                raise OSError(errno.EIO, "the write landed, then failed")

        def sync(self, path: str) -> None:
            if fail == "sync" and during and path.endswith("messages.jsonl"):
                during.pop()()
                raise OSError(errno.EIO, "fsync failed")
            super().sync(path)

    fs, directory = Failing(), ("/s" if fs_kind == "memory" else str(tmp_path))
    with SessionStore(ss.JsonlStorage(fs, directory), durable=fail == "sync") as reader, \
            SessionStore(ss.JsonlStorage(fs, directory), durable=fail == "sync") as writer:
        sid = reader.resolve("k")
        for i in range(3):
            reader.append(sid, role="user", content=f"m{i}")
        during.append(lambda: reader.get_messages(sid))
        with pytest.raises(ss.StorageError):
            writer.append(sid, role="user", content="TAKEN BACK")
        acked = [writer.append(sid, role="user", content=f"acked-{i}") for i in range(3)]
        if checked:
            assert reader.check(sid).ok
        expected = ["m0", "m1", "m2", "acked-0", "acked-1", "acked-2"]
        assert [(m.content, m.type) for m in reader.get_messages(sid)] == [(c, "user") for c in expected]
        assert [m.content for m in reader.get_linear_history(sid)] == expected
        assert metadata(reader, sid).message_count == 6
        assert reader.append(sid, role="user", content="next").parent_id == acked[-1].id
    with SessionStore(ss.JsonlStorage(fs, directory)) as fresh:
        assert [m.content for m in fresh.get_linear_history(sid)] == [*expected, "next"]
        assert fresh.check(sid).ok


def test_no_tally_is_saved_while_a_branch_event_waits_for_its_message() -> None:
    """A load that measured the log before another store appended a message and a
    branch at it, and the events file after, holds the event until its message is
    read. A tally saved then was past the event without counting it: every fresh
    store's metadata missed the branch from then on."""
    hook: list[Callable[[], object]] = []

    class Racing(InMemoryFileSystem):
        def stat(self, path: str) -> tuple[int, Any]:
            found = super().stat(path)
            if path.endswith("messages.jsonl") and hook:
                hook.pop()()
            return found

    fs, clock = Racing(), FakeClock()
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as reader:
        with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as other:
            sid = reader.resolve("k")
            reader.append(sid, role="user", content="hi")  # the reader has a tally to save at close

            def race() -> None:
                clock.advance(10)
                other.create_branch(sid, "alt", other.append(sid, role="assistant", content="M").id)

            hook.append(race)
            reader.get_messages(sid)  # the log measured before the race, the events file after
    found = metadata_unloaded_and_loaded(lambda: SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock), sid)
    assert found[0] == found[1] and found[0].branch_count == 2


class _LandsThenFails(InMemoryFileSystem):
    """Appends to files ending in ``failing``: the write lands, ``during`` runs, then it fails."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing, self.during = failing, list[Callable[[], object]]()

    def append(self, path: str, data: bytes) -> None:
        super().append(path, data)
        if self.during and path.endswith(self.failing):
            self.during.pop()()
            raise OSError(errno.EIO, "the write landed, then failed")


def test_a_writer_never_writes_under_a_record_taken_back_after_it_read_it() -> None:
    """A retry of the append taken back puts the log back at exactly the size another
    store read it to: that store wrote its next message under the taken-back one (its
    parent then missing for every other store), and never saw the retry."""
    fs, clock = _LandsThenFails("messages.jsonl"), FakeClock()
    with SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as r, \
            SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as w:
        sid = r.resolve("k")
        r.append(sid, role="user", content="hello")
        w.get_messages(sid)
        fs.during.append(lambda: r.get_messages(sid))
        with pytest.raises(ss.StorageError):
            w.append(sid, role="assistant", content="answer")
        retry = w.append(sid, role="assistant", content="answer")  # the same length, same time
        after = r.append(sid, role="user", content="thanks")
        assert after.parent_id == retry.id
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as fresh:
        assert [m.content for m in fresh.get_linear_history(sid)] == ["hello", "answer", "thanks"]
        assert fresh.check(sid).ok


def test_a_store_that_read_a_branch_event_taken_back_sees_the_one_that_replaced_it() -> None:
    """The events file back at the size another store read it to (a branch of a name as
    long as the one taken back): that store, reading on as the log grew, kept the branch
    never created and missed the one created."""
    fs, clock = _LandsThenFails("branches.jsonl"), FakeClock()
    with SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as r, \
            SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as w:
        sid = r.resolve("k")
        first = r.append(sid, role="user", content="hello")
        fs.during.append(lambda: r.get_branches(sid))
        with pytest.raises(ss.StorageError):
            w.create_branch(sid, "draft", first.id)
        w.create_branch(sid, "final", first.id)
        w.append(sid, role="user", content="more")
        assert [b.name for b in r.get_branches(sid)] == ["main", "final"]


def test_a_check_by_the_same_store_does_not_make_it_reload_what_it_has() -> None:
    """check() scans through the same storage, which then remembers the files' end: the
    store's own older position was no longer recognised, and it reloaded the session."""
    fs = InMemoryFileSystem()
    with SessionStore(ss.JsonlStorage(fs, "/s"), durable=False) as a, \
            SessionStore(ss.JsonlStorage(fs, "/s"), durable=False) as b:
        sid = a.resolve("k")
        for i in range(50):
            a.append(sid, role="user", content=f"m{i}")
        a.get_messages(sid)
        b.append(sid, role="user", content="from b")
        assert a.check(sid).ok
        size = len(fs.read(f"/s/{sid}/messages.jsonl"))
        reads: list[int] = []
        read_range = fs.read_range

        def spy(path: str, offset: int, size: int) -> bytes:
            reads.append(offset)
            return read_range(path, offset, size)

        fs.read_range = spy  # type: ignore[method-assign]
        assert [m.content for m in a.get_messages(sid)][-2:] == ["m49", "from b"]
        assert min(reads) > size // 2  # read on from where it was, not from the start



class _ReadHook(_LandsThenFails):
    """Also runs ``on_read`` (once) when a whole file ending in ``hooked`` is read."""

    def __init__(self, failing: str, hooked: str) -> None:
        super().__init__(failing)
        self.hooked, self.on_read = hooked, list[Callable[[], object]]()

    def read(self, path: str) -> bytes:
        if self.on_read and path.endswith(self.hooked):
            self.on_read.pop()()
        return super().read(path)


def test_what_vouches_for_a_position_is_never_shared_by_two_readers() -> None:
    """Every reader of a session through one storage (the cached tree, a read of the
    metadata of a session not loaded, which another thread of the store may load
    meanwhile) once noted the last line it read in one place per session. The
    metadata read, made after another store's record had been taken back and one of
    the same length written in its place, noted that line as ending at the tree's
    position: the tree, still holding the taken-back record, was trusted and the
    next message written under it."""
    fs, clock = _ReadHook("messages.jsonl", "stats.json"), FakeClock()
    with SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as w:
        sid = w.resolve("k")
        w.append(sid, role="user", content="m0")
        with SessionStore(ss.JsonlStorage(fs, "/s"), durable=False, clock=clock) as r:
            replaced: list[ss.Message] = []

            def meanwhile() -> None:  # another thread of r, between its cache check and its read
                fs.during.append(lambda: r.get_messages(sid))  # the tree reads the record taken back
                with pytest.raises(ss.StorageError):
                    w.append(sid, role="user", content="TAKEN BACK")
                replaced.append(w.append(sid, role="user", content="REPLACED!!"))  # the same length

            fs.on_read.append(meanwhile)
            assert metadata(r, sid).message_count == 2
            assert r.append(sid, role="user", content="next").parent_id == replaced[0].id
            assert [m.content for m in r.get_messages(sid)] == ["m0", "REPLACED!!", "next"]
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as fresh:
        assert [m.content for m in fresh.get_linear_history(sid)] == ["m0", "REPLACED!!", "next"]
        assert fresh.check(sid).ok


@pytest.mark.parametrize(("records", "leaf"), [
    ([("t1", "t1")], "t1"),  # its own parent
    ([("t1", "t2"), ("t2", None)], "t1"),  # a child before its parent
    ([("t1", "t2"), ("t2", "t1")], "t2"),  # a cycle
    ([("t1", "nowhere")], "t1"),  # an orphan
    ([("t1", None), ("t1", None)], "t1"),  # read twice
])
def test_a_path_end_read_without_loading_gives_what_a_load_gives_over_records_written_by_hand(
        records: list[tuple[str, str | None]], leaf: str) -> None:
    fs, sid, _ = a_session_then(lambda ids: by_hand(*records))
    assert history_read(fs, sid, leaf, 5, load_first=False) == history_read(fs, sid, leaf, 5, load_first=True)


def test_a_path_end_over_a_record_damaged_in_place_reads_it_as_a_load_does(tmp_path: Path) -> None:
    with open_files(tmp_path) as writer:
        sid = writer.resolve("k")
        chain = [writer.append(sid, role="user", content=f"m{i}") for i in range(5)]
    log = tmp_path / sid / "messages.jsonl"
    data = log.read_bytes()
    at = data.index(b'"m3"')
    with open(log, "r+b") as f:  # one byte flipped before the tally's position: same file, same size
        f.seek(at)
        f.write(b"\x01")
    with open_files(tmp_path) as fresh:
        got = fresh.get_linear_history(sid, limit=3)
        assert [m.id for m in got] == [m.id for m in chain[2:]] and got[1].type == "damaged"
        assert fresh.get_linear_history(sid, limit=3) == got


@settings(max_examples=300, deadline=None)
@given(data=st.data(), limit=st.integers(1, 8))
def test_a_path_end_read_without_loading_is_what_a_load_gives_whatever_follows_the_tally(
        data: st.DataObject, limit: int) -> None:
    fs, sid, ids = a_session_then(lambda ids: data.draw(hand_written_lines(ids), label="lines"))
    leaf = data.draw(st.one_of(st.none(), st.sampled_from(_record_ids), st.sampled_from([*ids, "nowhere"])),
                     label="leaf")
    assert history_read(fs, sid, leaf, limit, load_first=False) == history_read(fs, sid, leaf, limit, load_first=True)


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
    assert {p.name for p in root.iterdir()} == {"session-store.json", "keys", "names", sid}
    assert {p.name for p in (root / "keys").iterdir()} == {hashlib.sha256(key.encode()).hexdigest()[:2], ".complete"}
    names = [p for p in (root / "names").rglob("*") if p.name != ".complete"]  # the key's folders, then its leaf
    leaves = [p.name for p in names if p.is_symlink()]
    assert len(leaves) == 1 and (leaves[0].endswith(f"={sid}") if len(key) < 128 else leaves[0] == f"+{sid}")
    assert re.fullmatch(r"[a-z0-9_~%A-F-]{0,180}", leaves[0].rpartition("=")[0])
    assert all(re.fullmatch(r"[a-z0-9_~%A-F-]{1,192}", p.name) for p in names if not p.is_symlink())


def test_hostile_session_ids_never_reach_the_file_system(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with open_files(root) as store:
        for sid in HOSTILE:
            with pytest.raises(ss.SessionNotFound):
                store.append(sid, role="user", content="x")
            with pytest.raises(ss.SessionNotFound):
                store.get_messages(sid)
            assert store.get_metadata(sid) is None
            assert not store.has_session(sid)
    assert not root.exists()  # a store that was only read holds nothing, not even its folder


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


@pytest.mark.parametrize("fs_kind", ["memory", "files"])
def test_threads_mixing_every_kind_of_write_on_many_sessions_all_finish(tmp_path: Path, fs_kind: str) -> None:
    """A store whose storage writes locally runs its write scopes one at a time (see
    Storage.local_writes), the turn taken before any other lock: appends, leases,
    branches, titles, resets, forks and deletions from 8 threads, on their own
    sessions and on one they share, all finish, and every acknowledged append is kept."""
    fs = InMemoryFileSystem() if fs_kind == "memory" else RealFileSystem()
    directory = "/s" if fs_kind == "memory" else str(tmp_path)
    with SessionStore(fs, storage_dir=directory) as store:
        shared = store.resolve("shared")
        errors: list[BaseException] = []
        kept: list[tuple[str, str]] = []

        def work(t: int) -> None:
            try:
                own = store.resolve(f"own-{t}")
                for i in range(30):
                    sid = shared if i % 3 == 0 else own
                    with store.lock(sid, f"worker-{t}", timeout=None):
                        m = store.append(sid, role="user", content=f"{t}:{i}")
                    kept.append((sid, m.id))
                    if i % 5 == 1 and sid == own:
                        store.create_branch(own, f"b{i}", m.id)
                        store.set_title(own, f"thread {t} at {i}")
                    if i % 7 == 2:
                        copy = store.fork_session(own)
                        store.append(copy, role="assistant", content="in the copy")
                        store.build_context(copy)
                        store.delete_session(copy)
                    if i == 20:
                        store.reset(own, keep_strategy="last", keep_count=1)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)  # bounds a deadlock, not the work: it takes a few seconds
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        for sid, mid in kept:
            assert store.get_message(sid, mid).id == mid


class _NotingLock:
    """A session's lock that tells when a thread has begun to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking and self._lock.locked():
            self.waited.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_write_waiting_for_its_session_does_not_hold_up_writes_to_others(tmp_path: Path) -> None:
    """A reader may hold a session long (a cold load): a write to it waits without the
    store's turn (see _WriteScope), so writes to other sessions go on meanwhile."""
    with SessionStore(storage_dir=str(tmp_path)) as store:
        busy, free = store.resolve("busy"), store.resolve("free")
        state = store._state(busy)
        noting = _NotingLock()
        state.lock = noting  # type: ignore[assignment]  # (duck-typed: what the store calls of it)
        noting.acquire()  # what a long read of the session holds
        waiting = threading.Thread(target=store.append, args=(busy,), kwargs={"role": "user", "content": "later"})
        waiting.start()
        assert noting.waited.wait(timeout=120)  # the write waits for the session now
        other = threading.Thread(target=store.append, args=(free,), kwargs={"role": "user", "content": "now"})
        other.start()
        other.join(timeout=120)  # bounds a hang (it took the turn for ever before), not the work
        done = not other.is_alive()
        noting.release()
        waiting.join()
        other.join()
        assert done
        assert [m.content for m in store.get_messages(busy)] == ["later"]


class _OwnedLock:
    """A mutex that knows which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def __enter__(self) -> None:
        self._lock.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self._lock.release()


def test_no_system_call_on_a_file_is_made_under_the_descriptor_map_mutex(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread in a system call lets the others run; had it the mutex of the file system's
    descriptor map meanwhile, each of their next file operations would wait until it is
    scheduled again (``fstat`` and ``lseek`` made under it held 8 threads appending
    durably to 8 sessions to one thread's rate)."""
    fs = RealFileSystem()
    mutex = _OwnedLock()
    fs._mutex = mutex  # type: ignore[assignment]
    under: list[str] = []

    def watched(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if mutex.owner == threading.get_ident():
                under.append(name)
            return call(*args, **kwargs)
        return run

    for name in ("fstat", "lseek", "write", "pread", "ftruncate"):
        monkeypatch.setattr(os, name, watched(name, getattr(os, name)))
    monkeypatch.setattr(ss, "_fdatasync", watched("fdatasync", ss._fdatasync))
    monkeypatch.setattr(ss, "_flock", watched("flock", ss._flock))
    with SessionStore(ss.JsonlStorage(fs, tmp_path)) as store:
        sid = store.resolve("k")
        first = store.append(sid, role="user", content="one")
        store.create_branch(sid, "side", first.id)
        store.append(sid, role="assistant", content="two")
        with SessionStore(ss.JsonlStorage(fs, tmp_path)) as other:
            other.append(sid, role="user", content="three")
            assert metadata(other, sid).message_count == 3
        assert [m.content for m in store.get_linear_history(sid)] == ["one", "two", "three"]
    with SessionStore(ss.JsonlStorage(fs, tmp_path)) as fresh:
        assert [m.content for m in fresh.get_linear_history(sid, limit=2)] == ["two", "three"]
        assert fresh.check().ok
    assert under == []


def test_a_descriptor_just_opened_is_never_the_one_evicted(tmp_path: Path) -> None:
    """With every older cached descriptor pinned, the eviction that follows an open
    closed the descriptor just opened, which was then used: EBADF, or, once its number
    was reused by another open, another file's size and bytes."""
    fs = RealFileSystem(max_open_files=4)
    paths = [str(tmp_path / f"f{i}") for i in range(5)]
    for i, path in enumerate(paths):
        Path(path).write_bytes(b"x" * (i + 1))
    with contextlib.ExitStack() as held:
        for path in paths[:4]:
            held.enter_context(fs.locked(path))  # each pins its descriptor
        assert fs.stat(paths[4])[0] == 5
        assert fs.read_range(paths[4], 0, 100) == b"x" * 5
        assert fs._size_as_open(paths[4]) == 5
    fs.close()


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


@pytest.mark.parametrize("damage", ["torn", "longer-one-under-it", "a-digit-changed"])
def test_a_tally_torn_or_changed_on_disk_is_not_believed(tmp_path: Path, damage: str) -> None:
    """The tally is saved with its CRC-32: one cut short, one with a longer one's
    bytes after it, or one whose bytes changed on disk is ignored, and the counts
    come from the log (a changed count was believed before the CRC)."""
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        for i in range(300):
            store.append(sid, role="user", content=f"m{i}")
    stats = tmp_path / sid / "stats.json"
    good = stats.read_bytes()
    assert b'"messages":300' in good and ss._decode_lease(good) is not None
    stats.write_bytes({"torn": good[:len(good) // 2],
                       "longer-one-under-it": good[:-1] + b" " + good[:-1] + b"\n",
                       "a-digit-changed": good.replace(b'"messages":300', b'"messages":900')}[damage])
    with open_files(tmp_path) as store:
        meta = store.get_metadata(sid)
        assert meta is not None and meta.message_count == 300


def test_metadata_of_a_session_not_loaded_reads_no_log(tmp_path: Path) -> None:
    """Counts come from the saved tally plus what was written after it."""
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        for i in range(300):  # a tally is saved every 256 records, and at close
            store.append(sid, role="user", content=f"m{i}")
        store.create_branch(sid, "alt", store.get_head(sid))  # type: ignore[arg-type]
    with open_files(tmp_path) as other:
        other.append(sid, role="user", content="after the tally")
        stale = ss._decode_lease((tmp_path / sid / "stats.json").read_bytes())
        assert stale is not None
        assert stale["tally"]["messages"] == 300
        other._sessions.clear()  # forget the cached tree: the next read must not build one
    reads: list[tuple[str, int, int]] = []

    class Spy(RealFileSystem):
        def read_from(self, path: str, offset: int) -> bytes:
            data = super().read_from(path, offset)
            reads.append((os.path.basename(path), offset, len(data)))
            return data

        def read_range(self, path: str, offset: int, size: int) -> bytes:
            data = super().read_range(path, offset, size)
            reads.append((os.path.basename(path), offset, len(data)))
            return data

    with SessionStore(Spy(), storage_dir=tmp_path) as store:
        meta = store.get_metadata(sid)
    assert meta is not None and meta.message_count == 301 and meta.branch_count == 2
    epos, mpos = stale["position"]
    size = os.path.getsize(tmp_path / sid / "messages.jsonl")
    # The last line before the tally's position in each file (still the one it was saved
    # of?); then, reading on, the same again: the events line (the file has not grown:
    # cut back and grown again to the same size?), and the log's line with what follows
    # it (still there?). Nothing else.
    assert [(name, offset + n) for name, offset, n in reads[:2]] == [("branches.jsonl", epos), ("messages.jsonl", mpos)]
    line = reads[1][2]
    assert all(n < 200 for _, _, n in reads[:2]) and reads[2:] == [
        reads[0], ("messages.jsonl", mpos - line, size - mpos + line)]


def test_metadata_read_on_from_a_tally_counts_a_damaged_record_as_a_load_does() -> None:
    """A record that is JSON but no message (a key damaged) loads as a placeholder: no
    time, no reset. Counted from the raw record, a fresh store's metadata had its time
    and a reset that a load does not have."""
    fs, clock = InMemoryFileSystem(), FakeClock()
    with SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="a")
        clock.advance(100)
        store.reset(sid)  # a marker, type "reset"
        clock.advance(100)
        store.append(sid, role="user", content="b")
    log = f"/s/{sid}/messages.jsonl"
    lines_ = fs.read(log).split(b"\n")
    for i in (1, 2):  # the marker and b: "role" becomes "rolE", in place
        lines_[i] = lines_[i].replace(b'"role"', b'"rolE"', 1)
    fs.write_in_place(log, b"\n".join(lines_))
    found = metadata_unloaded_and_loaded(lambda: SessionStore(ss.JsonlStorage(fs, "/s"), clock=clock), sid)
    assert found[0] == found[1] and found[0].reset_count == 0


def test_opening_and_reading_writes_nothing(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="hi")
    before = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")}
    with SessionStore(storage_dir=tmp_path) as store:
        assert len(store.get_messages(sid)) == 1
        store.get_metadata(sid)
        store.get_all_session_ids()
        store.check()
    assert {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in tmp_path.rglob("*")} == before


def test_remains_of_interrupted_creations_and_deletions_are_garbage_repair_removes(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        store.resolve("kept")
    ghost = "0f0f0f0f-0000-4000-8000-000000000000"  # a format-1 creation killed before its log
    (tmp_path / ghost).mkdir()
    (tmp_path / ghost / "session.json").write_text(
        json.dumps({"version": 1, "sessionId": ghost, "key": "ghost", "createdAt": 1}))
    staged = tmp_path / ".new-1f1f1f1f-0000-4000-8000-000000000000"  # a creation killed before its rename
    staged.mkdir()
    (staged / "messages.jsonl").write_text("")
    (tmp_path / ".session-store.json.tmp-0011223344556677").write_text("{")  # a killed atomic write
    (tmp_path / "notes").mkdir()  # the user's: never taken for garbage
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with SessionStore(storage_dir=tmp_path) as store:
        assert not store.has_key("ghost") and store.has_key("kept")
        reasons = sorted(p.reason for p in store.check().problems)
        assert len(reasons) == 3 and "interrupted creation" in reasons[0] and "temp file" in reasons[2]
        fixed = store.repair().fixed
        assert len(fixed) == 3 and all(line.endswith("removed") for line in fixed)
        assert store.check().ok
        kept = store.resolve("kept")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != kept) == ["keys", "names", "notes",
                                                                           "session-store.json"]


# -- reading fast, and in parts -------------------------------------------------------------


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@st.composite
def log_lines(draw: st.DrawFn) -> list[bytes]:
    """Lines as a log may hold them: a JSON value as written (or with whitespace, a BOM,
    a CR, \\u escapes, a chain's mark, over several lines, or twice on a line), or any bytes."""
    value = draw(JSON_VALUES)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([(",", ":"), None])),
                      indent=draw(st.sampled_from([None, None, None, 1])))
    shape = draw(st.sampled_from(["{}", " {} ", "\ufeff{}", "{}\r", "{}", "{},{}", "{} {}", "{} \t"]))
    line = shape.replace("{}", text).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # broken anywhere (also where a comma belongs) over two lines
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + b"\n" + line[cut:]
    return draw(st.sampled_from([line, line, draw(st.binary(max_size=12)).replace(b"\n", b"")])).split(b"\n")


def test_a_record_broken_over_two_lines_and_a_line_of_two_records_are_both_damage() -> None:
    # Read as one JSON array, the two faults made up for each other (as many values as
    # lines, all objects): the loader took the damage for four good records.
    def good(i: int, parent: str | None) -> str:
        return json.dumps({"id": f"m{i}", "parentId": parent, "type": "user", "role": "user", "content": f"t{i}",
                           "timestamp": i}, separators=(",", ":"))
    lines = [good(1, None), good(2, "m1")[:-1].replace(',"content"', '\n"content"', 1) + "}",
             good(3, "m2") + "," + good(4, "m3")]
    chunk = "".join(line + "\n" for line in lines).encode()
    problems: list[ss.Problem] = []
    found, _ = ss._parse_lines(chunk, 0, "log", "s", problems, message=True)
    assert [rec.get("content") for _, rec in found][:1] == ["t1"] and len(problems) == 3
    assert not any(rec.get("content") in ("t2", "t3", "t4") for _, rec in found)


@given(st.lists(log_lines(), max_size=12).map(lambda groups: [line for group in groups for line in group]))
@settings(max_examples=300)
def test_each_log_line_reads_as_json_loads_reads_it(raw_lines: list[bytes]) -> None:
    # An append_many chain's lines but the last end in the chain mark: the lines after
    # the last one that does not (nor is blank) are an unfinished chain, held back.
    whole = len(raw_lines)
    while whole and raw_lines[whole - 1].endswith(ss._CHAIN_MARK) and raw_lines[whole - 1].strip():
        whole -= 1
    chunk = b"".join(line + b"\n" for line in raw_lines) + b'{"id":"torn'
    for hold in (True, False):
        problems: list[ss.Problem] = []
        found, used = ss._parse_lines(chunk, 7, "log", "s", problems, message=True, hold=hold)
        read = raw_lines[:whole] if hold else raw_lines
        assert used == sum(len(line) + 1 for line in read)
        assert_read_as_json_loads(read, found, problems)


def assert_read_as_json_loads(raw_lines: list[bytes], found: list[tuple[int, Any]], problems: list[ss.Problem]) -> None:
    expected: list[tuple[int, Any]] = []
    offset = 7
    for line in raw_lines:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict) and type(value.get("#")) is int:  # a check: believed only when it matches
            cut = line.rfind(b',"#":')
            intact = cut > 0 and value["#"] == zlib.crc32(line[:cut])
            expected.append((offset, {k: v for k, v in value.items() if k != "#"} if intact else "damaged"))
        elif isinstance(value, dict):
            expected.append((offset, value))
        elif line.strip():
            expected.append((offset, "damaged"))
        offset += len(line) + 1
    got = [(where, rec if rec.get("type") != "damaged" or "damaged" not in rec else "damaged") for where, rec in found]
    assert repr(got) == repr(expected)  # repr: 1 and 1.0 and True differ
    assert len(problems) == sum(1 for _, rec in expected if rec == "damaged")


def test_a_message_is_built_with_the_layout_of_message() -> None:
    assert sorted(ss._NewMessage.__slots__) == sorted(ss.Message.__slots__)
    built = ss._new_message("b", "a", "user", "user", ss._freeze({"k": [1]}), 5, ss._FrozenDict(x=1))
    made = ss.Message(id="b", parent_id="a", type="user", role="user", content={"k": [1]}, timestamp=5,
                      fields={"x": 1})
    assert type(built) is ss.Message and built == made and hash(built.id) == hash(made.id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "c"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(built)) == made and copy.deepcopy(built) == made
    assert dataclasses.replace(built, id="c").id == "c"


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ss, "_LOAD_PART", 64)  # a record or two per part


def test_a_session_read_in_parts_is_the_session_read_whole(tmp_path: Path, small_parts: None) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
        ids = [store.append(sid, role="user", content=f"message {i}").id for i in range(12)]
        store.create_branch(sid, "alt", ids[3])
        store.switch_to_branch(sid, "alt")
        ids.append(store.append(sid, role="assistant", content="x" * 300).id)  # longer than a part
        store.switch_to_branch(sid, "main")
        store.move_head(sid, ids[7])
        ids.append(store.append(sid, role="assistant", content="on 7").id)
    with open_files(tmp_path) as parts:
        assert [m.id for m in parts.get_messages(sid)] == ids
        assert (parts.get_head(sid), parts.get_branch(sid, "alt").head_id) == (ids[-1], ids[-2])  # type: ignore[union-attr]
        meta = parts.get_metadata(sid)
        assert meta is not None and meta.message_count == len(ids) and meta.branch_count == 2
    with open(tmp_path / sid / "messages.jsonl", "ab") as f:
        f.write(b'{"id":"torn","parentId":null,"ty')
    with open_files(tmp_path) as parts:
        assert len(parts.get_messages(sid)) == len(ids)
        parts.append(sid, role="user", content="after the torn line")  # the writer cuts it off
        assert len(parts.get_messages(sid)) == len(ids) + 1
    assert b"\"torn\"" not in (tmp_path / sid / "messages.jsonl").read_bytes()


def test_the_cache_budget_counts_each_cached_session_once(tmp_path: Path) -> None:
    fs = InMemoryFileSystem()
    with SessionStore(fs) as one, SessionStore(fs) as other:
        sid = one.resolve("k")
        for i in range(5):
            one.append(sid, role="user", content=f"m{i}")
        one.build_context(sid)
        fs.append(f"{one.storage_dir}/{sid}/messages.jsonl", b"damaged\n")
        assert other.repair().fixed  # the log is rewritten: `one` reloads it whole
        one.get_messages(sid)
        with pytest.raises(ss.MessageNotFound):
            one.append(sid, role="user", content="x", parent_id="nowhere")
        one.build_context(sid)
        assert one._cached_bytes == sum(s.nbytes for s in one._sessions.values()) > 0


def test_records_missing_core_keys_or_with_extra_ones_load_as_before(tmp_path: Path) -> None:
    with open_files(tmp_path) as store:
        sid = store.resolve("k")
    log = tmp_path / sid / "messages.jsonl"
    records = [{"id": "a", "role": "user", "timestamp": 1},  # no parentId, type, content
               {"id": "b", "parentId": "a", "role": "assistant", "content": "x", "timestamp": 2, "note": 1},
               {"id": "c", "parentId": "b", "type": "tool", "role": "tool", "timestamp": 3, "toolCallId": "t"},
               {"id": "d", "parentId": "c", "type": "user", "role": "user", "content": None, "timestamp": 4}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with open_files(tmp_path) as store:
        got = store.get_messages(sid)
    assert [(m.id, m.parent_id, m.type, m.role, m.content, dict(m.fields)) for m in got] == [
        ("a", None, "user", "user", None, {}), ("b", "a", "assistant", "assistant", "x", {"note": 1}),
        ("c", "b", "tool", "tool", None, {"tool_call_id": "t"}), ("d", "c", "user", "user", None, {})]


def test_a_durable_chain_is_synced_once(tmp_path: Path) -> None:
    fs = CountingFS()
    with SessionStore(fs, storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        fs.syncs.clear()
        store.append_many(sid, [{"role": "user", "content": str(i)} for i in range(5)])
        assert fs.syncs == ["messages.jsonl"]
        assert [m.content for m in store.get_linear_history(sid)] == ["0", "1", "2", "3", "4"]


# -- collection paused during large loads, when tune_process() asked for it ---------------


@pytest.fixture
def tuned() -> Iterator[None]:
    """tune_process() for the test, off again afterwards (its default)."""
    ss.tune_process()
    try:
        yield
    finally:
        ss.tune_process(pause_gc=False, trim_memory=False)


def _collector_during_load(tmp_path: Path, sid: str) -> list[bool]:
    """Whether automatic collection was enabled as each part of the session loaded."""
    seen: list[bool] = []
    real_ingest = ss._Session.ingest

    def ingest(self: Any, found: Any) -> None:
        seen.append(gc.isenabled())
        real_ingest(self, found)

    try:
        ss._Session.ingest = ingest  # type: ignore[method-assign]
        with SessionStore(storage_dir=tmp_path) as store:
            assert len(store.get_messages(sid)) == 2_000
    finally:
        ss._Session.ingest = real_ingest  # type: ignore[method-assign]
    return seen


def test_by_default_a_large_load_leaves_the_collector_alone(tmp_path: Path) -> None:
    """The core changes no process-wide state unless the program asks (tune_process)."""
    sid = _big_session(tmp_path)
    assert gc.isenabled()
    seen = _collector_during_load(tmp_path, sid)
    assert seen and all(seen)


def _big_session(tmp_path: Path) -> str:
    with SessionStore(storage_dir=tmp_path, durable=False) as store:
        sid = store.resolve("big")
        store.append_many(sid, [{"role": "user", "content": "x" * 200} for _ in range(2_000)])  # > 256 KiB
    return sid


@pytest.mark.parametrize("enabled", [True, False])
def test_a_large_load_pauses_collection_and_leaves_it_as_it_found_it(tmp_path: Path, enabled: bool,
                                                                     tuned: None) -> None:
    sid = _big_session(tmp_path)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        seen = _collector_during_load(tmp_path, sid)
        assert seen and not any(seen)  # paused while the messages were built
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_concurrent_large_loads_reenable_collection_only_when_the_last_ends(tmp_path: Path, tuned: None) -> None:
    pause = ss._GcPause()
    assert gc.isenabled()
    pause.pause()
    pause.pause()
    pause.resume()
    assert not gc.isenabled()
    pause.resume()
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_during_a_large_load_has_collection_enabled(tuned: None) -> None:
    assert gc.isenabled()
    ss._GC_PAUSE.pause()
    try:
        pid = os.fork()
        if pid == 0:  # the loading thread does not exist in the child: nobody would resume
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        ss._GC_PAUSE.resume()
    assert os.waitstatus_to_exitcode(status) == 0 and gc.isenabled()


_json_texts = st.one_of(
    st.text(max_size=40),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(json.dumps),
).flatmap(lambda text: st.sampled_from([text, f" {text}", f"{text}\n", f"{text} x", text[:-1]]))


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_json_texts, min_size=1, max_size=6))
def test_sql_rows_decode_exactly_as_json_loads_reads_each(texts: list[str]) -> None:
    # (rows go through the JSON scanner directly, json.loads only when it refuses one)
    rows = [(2, seq, text) for seq, text in enumerate(texts)]
    found = ss.Records.from_rows("s", (0, 0), rows, events_label="e", messages_label="m")
    expected_problems: list[ss.Problem] = []
    expected = [(seq, ss._decode_record(text.encode("utf-8", "surrogatepass"), seq, "m", "s", expected_problems,
                                        message=True)) for seq, text in enumerate(texts)]
    assert found.messages == expected
    assert found.problems == expected_problems


def test_a_chain_longer_than_a_part_is_read_whole_forwards_and_backwards_and_never_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A load decodes a long log in parts, a read of a path's end reads backwards in
    # parts: a part may end inside an append_many chain, whose lines but the last are
    # marked. Neither may hold the chain back as unfinished, nor a writer cut it.
    monkeypatch.setattr(ss, "_LOAD_PART", 300)
    monkeypatch.setattr(ss, "_BACK_PART", 300)
    monkeypatch.setattr(ss, "_TALLY_EVERY", 1)  # a tally (with its head) after every write: reads from the end
    with SessionStore(storage_dir=str(tmp_path)) as store:
        sid = store.resolve("k")
        first = store.append(sid, role="system", content="first")
        chain = store.append_many(sid, [{"role": "user", "content": f"m{i} " + "z" * 100} for i in range(12)])
    log = tmp_path / sid / "messages.jsonl"
    assert log.read_bytes().count(ss._CHAIN_MARK + b"\n") == 11  # the chain's marks, one write
    with caplog.at_level(logging.WARNING), SessionStore(storage_dir=str(tmp_path)) as fresh, \
            monkeypatch.context() as m:
        m.setattr(SessionStore, "_catch_up", refuse_to_load)  # read from the end, not by a load
        assert fresh.get_linear_history(sid, limit=5) == chain[-5:]
        assert fresh.get_linear_history(sid, limit=13) == [first, *chain]
    with caplog.at_level(logging.WARNING), SessionStore(storage_dir=str(tmp_path)) as fresh:
        assert fresh.get_messages(sid) == [first, *chain]  # forwards, in parts
        last = fresh.append(sid, role="user", content="last")  # a writer's load, in parts
    with SessionStore(storage_dir=str(tmp_path)) as fresh:
        assert fresh.get_messages(sid) == [first, *chain, last] and fresh.check().ok
        more = [fresh.append(sid, role="user", content=f"more {i} " + "z" * 100) for i in range(20)]
    assert not caplog.records and not (tmp_path / sid / "messages.jsonl.quarantine").exists()
    # A part holding the chain reads on past its end at most twice as far, not to the log's end.
    parts = list(ss.JsonlStorage(RealFileSystem(), str(tmp_path)).load_parts(sid, (0, 0)))
    chain_bytes = sum(len(line) for line in log.read_bytes().splitlines(True) if line.endswith(ss._CHAIN_MARK + b"\n"))
    assert len(parts) > 10 and max(p.nbytes for p in parts) <= 2 * (chain_bytes + 300)  # (read on twice as far)
    assert [m for p in parts for _, m in p.messages][-len(more):] == [m.to_record() for m in more]


def test_a_rollback_of_nothing_never_hides_a_write_of_another_writer_from_the_sync_state() -> None:
    # A failed write scope that wrote nothing (append_many refused part way, its records
    # only queued) still rolls back to where it entered. Our record R1 is unsynced; another
    # process then wrote up to 30. "The sizes after our last record" must stay where R1
    # ended: moved forward to 30, our next record there would not count as crossed by
    # another writer. (A failed sync would still not cut: it also checks that our
    # records are adjacent. Each of its checks must hold on its own.)
    state = ss._SyncState()
    state.note_write(1, 0, 10, (0, 0))  # R1: [0, 10) of the log
    state.rolled_back(0, 0)
    state.rolled_back(1, 30)  # the scope entered at (0, 30), wrote nothing
    state.note_write(1, 30, 40, (0, 30))
    assert state.crossed and state.foreign[1]


def test_a_record_line_ending_in_a_space_is_a_record_not_an_unfinished_chain(tmp_path: Path) -> None:
    # Only the chain mark (a space and a tab) holds a line back: a line a hand or a
    # tool left with a trailing space is read, and no writer sets it aside.
    with SessionStore(storage_dir=str(tmp_path)) as store:
        sid = store.resolve("k")
        first = store.append(sid, role="user", content="hi")
    log = tmp_path / sid / "messages.jsonl"
    log.write_bytes(log.read_bytes()[:-1] + b" \n")
    with SessionStore(storage_dir=str(tmp_path)) as fresh:
        assert fresh.get_messages(sid) == [first] and fresh.check().ok
        after = fresh.append(sid, role="user", content="next")
    with SessionStore(storage_dir=str(tmp_path)) as fresh:
        assert fresh.get_messages(sid) == [first, after]
    assert not (tmp_path / sid / "messages.jsonl.quarantine").exists()


def test_a_load_in_parts_ends_when_the_log_is_cut_back_under_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Readers do not lock: a failed write scope or sync cuts a log back in place while
    # one reads. Reading on past a part that holds no whole line (a long record, a
    # chain) then got nothing back forever: the load looped (a review's reproducer).
    monkeypatch.setattr(ss, "_LOAD_PART", 1000)
    with SessionStore(storage_dir=str(tmp_path)) as store:
        sid = store.resolve("k")
        chain = store.append_many(sid, [{"role": "user", "content": f"m{i} " + "z" * 100} for i in range(20)])
    log = str(tmp_path / sid / "messages.jsonl")
    fs = RealFileSystem()
    reads = [0]
    real = fs.read_range

    def read_range(path: str, offset: int, size: int) -> bytes:
        if path == log:
            reads[0] += 1
            if reads[0] == 2:
                os.truncate(log, 1500)  # the chain's records cut off under the reader
            assert reads[0] < 100, "the load does not end"
        return real(path, offset, size)

    monkeypatch.setattr(fs, "read_range", read_range)
    found = [rec for part in ss.JsonlStorage(fs, str(tmp_path)).load_parts(sid, (0, 0)) for _, rec in part.messages]
    assert found == [] and len(chain) == 20  # a chain cut back is not seen, even in part


# -- a byte changed anywhere in a record: seen, and the conversation is not cut -------------


def _chat(tmp_path: Path, count: int) -> tuple[str, list[str], bytes]:
    with open_files(tmp_path, durable=False) as store:
        sid = store.resolve("k")
        ids = [m.id for m in store.append_many(sid, [{"role": "user" if i % 2 else "assistant",
                                                      "content": f"message {i}"} for i in range(count)])]
    return sid, ids, (tmp_path / sid / "messages.jsonl").read_bytes()


def _flipped(data: bytes, record: int, at: int, bit: int) -> bytes:
    start = sum(len(line) + 1 for line in data.split(b"\n")[:record])
    changed = bytearray(data)
    changed[start + at] ^= 1 << bit
    return bytes(changed)


def test_a_digit_of_an_id_that_became_another_is_seen_and_cuts_nothing(tmp_path: Path) -> None:
    """Issue 33's case: 1,000 messages, one bit of record 6's id flipped so that a
    digit becomes another digit. Before the per-record check it was not even seen as
    damage: a load's path stopped at message 5, the head stayed there, and a cold read
    of the path's end still showed the last messages."""
    sid, ids, data = _chat(tmp_path, 1000)
    line = data.split(b"\n")[6]
    at = next(i for i in range(7, 23) if line[i:i + 1] in b"0123" and chr(line[i] ^ 1).isdigit())
    (tmp_path / sid / "messages.jsonl").write_bytes(_flipped(data, 6, at, 0))
    with open_files(tmp_path) as cold:  # never loaded: reads the path's end
        end, context = cold.get_linear_history(sid, limit=3), cold.build_context(sid, limit=3)
    with open_files(tmp_path) as store:
        assert not store.check().ok  # seen
        path = store.get_linear_history(sid)
        assert len(path) == 1000 and path[6].type == "damaged" and [m.id for m in path[7:]] == ids[7:]
        assert store.get_head(sid) == ids[-1] and path[-3:] == end and store.build_context(sid, limit=3) == context
        assert store.append(sid, role="user", content="next").parent_id == ids[-1]
        assert store.repair().ok and store.check().ok
    with open_files(tmp_path) as store:
        assert len(store.get_linear_history(sid)) == 1001 and store.check().ok


def test_a_bit_flipped_anywhere_in_a_record_is_seen_and_never_cuts_the_path(tmp_path: Path) -> None:
    """Any one bit of a record flipped (a sample of 150, every part of the line): the
    record reads as damaged, its children stay attached (by their parent's near id, or
    by the log's order when no id could be read), the head stays at the last message.
    Only a flip in the check's own key can hide it (the record then reads whole)."""
    sid, ids, data = _chat(tmp_path / "source", 30)
    line = data.split(b"\n")[6]
    rnd = random.Random(33)
    unseen = 0
    for n in range(150):
        at, bit = rnd.randrange(len(line)), rnd.randrange(8)
        if line[at] ^ (1 << bit) == ord("\n"):
            continue
        folder = tmp_path / f"flip{n}"
        shutil.copytree(tmp_path / "source", folder, symlinks=True)
        (folder / sid / "messages.jsonl").write_bytes(_flipped(data, 6, at, bit))
        with open_files(folder) as store:
            path = store.get_linear_history(sid)
            assert len(path) == 30 and store.get_head(sid) == ids[-1], (at, bit, line[at:at + 1])
            if store.check().ok:
                unseen += 1
                assert line[at:at + 1] == b"#" or path[6].id == ids[6]
    assert unseen <= 3


def _blocked_in_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` waits in a file system's ``locked()`` (in its guard's entry)."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame is not None and frame.f_code.co_name == "__enter__" and "Guard" in frame.f_code.co_qualname


def _locker(fs: ss.FileSystem, path: str, create: bool) -> tuple[threading.Thread, threading.Event, list[str]]:
    """A thread taking ``fs.locked(path)``: its event is set once it holds it; the list
    gets "held" or "gone" (FileNotFoundError)."""
    entered, outcome = threading.Event(), []

    def run() -> None:
        try:
            with fs.locked(path, create=create):
                entered.set()
                outcome.append("held")
        except FileNotFoundError:
            outcome.append("gone")

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(120_000):  # bounded: it holds or waits long before this ends
        if entered.is_set() or _blocked_in_lock(thread) or outcome:
            break
        threading.Event().wait(0.001)
    return thread, entered, outcome



@pytest.mark.parametrize("kind", ["memory", "files"])
def test_a_locker_waiting_for_a_file_removed_meanwhile_never_holds_a_dead_lock(tmp_path: Path, kind: str) -> None:
    """A file's thread lock goes with the file once let go (in memory: the file's
    entry; on disk: the cached descriptor's): a locker that waited for it takes the
    path's lock again, and finds the file gone (``create=False``) or holds the lock of
    the new one."""
    fs: ss.FileSystem = InMemoryFileSystem() if kind == "memory" else RealFileSystem()
    directory = "/d" if kind == "memory" else str(tmp_path)
    fs.makedirs(directory)
    path = f"{directory}/f"
    for create in (False, True):
        fs.append(path, b"x")
        with fs.locked(path):
            waiter, _, outcome = _locker(fs, path, create)
            assert _blocked_in_lock(waiter)
            fs.remove(path)
        waiter.join(timeout=120)
        assert not waiter.is_alive()
        if not create:
            assert outcome == ["gone"] and not fs.exists(path)
        else:
            assert outcome == ["held"] and fs.exists(path)  # made anew, under its own lock
            with fs.locked(path, create=False):  # and that lock is free again
                pass
    if isinstance(fs, RealFileSystem):
        fs.close()


def test_a_lock_result_is_built_with_the_layout_of_lock_result() -> None:
    assert sorted(ss._NewLockResult.__slots__) == sorted(ss.LockResult.__slots__)
    built = ss._lock_result(True, "me", "me", 5, 7)
    made = ss.LockResult(acquired=True, owner_id="me", holder_id="me", expires_at=5, token=7)
    assert type(built) is ss.LockResult and built == made and repr(built) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.token = 8  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(built)) == made and copy.deepcopy(built) == made
    assert dataclasses.replace(built, token=9).token == 9


@pytest.mark.parametrize("kind", ["memory", "files"])
@pytest.mark.parametrize("change", ["replace", "remove"])
def test_a_file_replaced_or_removed_by_its_locker_stays_locked_until_let_go(tmp_path: Path, kind: str,
                                                                              change: str) -> None:
    """A repair renames a new log over the one it holds; a deletion removes it: another
    thread's locker of that path waits until the holder lets go (the thread lock is the
    path's while held, not the old file's). Found in review: both got in at once."""
    fs: ss.FileSystem = InMemoryFileSystem() if kind == "memory" else RealFileSystem()
    directory = "/d" if kind == "memory" else str(tmp_path)
    fs.makedirs(directory)
    path = f"{directory}/log"
    fs.append(path, b"old\n")
    with fs.locked(path, create=False):
        if change == "replace":
            fs.write_atomic(path, b"new\n")
        else:
            fs.remove(path)
        waiter, entered, outcome = _locker(fs, path, create=True)
        assert not entered.is_set() and _blocked_in_lock(waiter)
    waiter.join(timeout=120)
    assert outcome == ["held"] and fs.exists(path)
    with fs.locked(path, create=False):  # and free again
        pass
    if isinstance(fs, RealFileSystem):
        fs.close()


@pytest.mark.parametrize("kind", ["memory", "files"])
def test_a_locker_waiting_for_a_file_renamed_away_finds_it_gone(tmp_path: Path, kind: str) -> None:
    """A waiter pins the path's descriptor before it waits: the file renamed away
    meanwhile (its folder moved) must not be the one it locks. Found in review."""
    fs: ss.FileSystem = InMemoryFileSystem() if kind == "memory" else RealFileSystem()
    directory = "/d" if kind == "memory" else str(tmp_path)
    fs.makedirs(f"{directory}/a")
    path = f"{directory}/a/log"
    fs.append(path, b"x\n")
    with fs.locked(path, create=False):
        waiter, entered, outcome = _locker(fs, path, create=False)
        assert not entered.is_set() and _blocked_in_lock(waiter)
        fs.rename(f"{directory}/a", f"{directory}/b")
    waiter.join(timeout=120)
    assert outcome == ["gone"] and fs.exists(f"{directory}/b/log")
    if isinstance(fs, RealFileSystem):
        fs.close()


@pytest.mark.parametrize("durable", [True, False])
def test_a_folder_is_published_whole_its_log_locked_and_synced_until_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    """``RealFileSystem.publish_folder`` (a session's creation) does on descriptors what
    ``FileSystem.publish_folder`` does with one primitive each: at the rename, the first
    file is locked (a repair leaves the folder alone) and, durable, every file and the
    folder are synced; after it, the directory. The lock lasts until the block ends.
    Nothing is synced when not durable."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    staging, final = f"{tmp_path}/.new-x", f"{tmp_path}/x"
    files = [("messages.jsonl", b""), ("session.json", b'{"a":1}\n'), ("branches.jsonl", b"e\n" * 5000)]
    synced: list[str] = []
    at_rename: list[object] = []
    fsync_fd, fdatasync, rename = ss._fsync_fd, ss._fdatasync, os.rename

    def watched(sync: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            sync(fd)
        return call

    def renaming(*args: Any, **kwargs: Any) -> None:
        at_rename.extend([fs.is_held(f"{staging}/messages.jsonl"), sorted(synced)])
        rename(*args, **kwargs)
    monkeypatch.setattr(ss, "_fsync_fd", watched(fsync_fd))
    monkeypatch.setattr(ss, "_fdatasync", watched(fdatasync))
    monkeypatch.setattr(os, "rename", renaming)
    with fs.publish_folder(staging, final, files, durable=durable):
        held_in_block = fs.is_held(f"{final}/messages.jsonl")
    monkeypatch.undo()
    assert held_in_block is True  # until the block ends (a session's key link is made or taken back)
    in_order = ["messages.jsonl", "session.json", "branches.jsonl", ".new-x", tmp_path.name]
    assert at_rename == [True, sorted(in_order[:4]) if durable else []]
    assert synced == (in_order if durable else [])
    assert {p.name: p.read_bytes() for p in Path(final).iterdir()} == dict(files)
    assert not Path(staging).exists() and fs.is_held(f"{final}/messages.jsonl") is False
    fs.append(f"{final}/messages.jsonl", b"m\n")  # the path's descriptor is the new file's
    assert Path(final, "messages.jsonl").read_bytes() == b"m\n"
    fs.close()


@pytest.mark.parametrize("failing", ["write", "fdatasync", "rename"])
def test_a_folder_that_fails_to_publish_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        failing: str) -> None:
    """An error while the folder is built (a full disk on a write, a failed sync, a
    failed rename) removes the staging folder and is raised: no final folder, no
    staging folder, and the next creation of the same folder succeeds."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    staging, final = f"{tmp_path}/.new-x", f"{tmp_path}/x"
    files = [("messages.jsonl", b""), ("session.json", b'{"a":1}\n'), ("branches.jsonl", b"")]
    reals: dict[str, Callable[..., Any]] = {"write": os.write, "fdatasync": ss._fdatasync, "rename": os.rename}
    real = reals[failing]

    def fails(*args: Any, **kwargs: Any) -> Any:
        if failing != "write" or args[1] == b'{"a":1}\n':
            raise OSError(errno.ENOSPC, "injected")
        return real(*args, **kwargs)
    monkeypatch.setattr(ss if failing == "fdatasync" else os, "_fdatasync" if failing == "fdatasync" else failing,
                        fails)
    with pytest.raises(OSError) as raised, fs.publish_folder(staging, final, files, durable=True):
        pass
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    with fs.publish_folder(staging, final, files, durable=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    fs.close()


@contextlib.contextmanager
def _a_child_forked_at(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> Iterator[list[int]]:
    """The first call of ``module.name`` forks a child that lives until the block
    ends (it holds copies of every descriptor open then, as a worker forked by
    another thread would); the child's pid is in the list."""
    real = getattr(module, name)
    pids: list[int] = []

    def forking(*args: Any, **kwargs: Any) -> Any:
        if not pids:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child: wait for the end of the block
                os.close(w)
                os.read(r, 1)
                os._exit(0)
            os.close(r)
            pids.append(pid)
            pids.append(w)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, forking)
    try:
        yield pids
    finally:
        monkeypatch.setattr(module, name, real)
        if pids:
            os.close(pids[1])
            os.waitpid(pids[0], 0)


def test_a_child_forked_during_a_creation_does_not_hold_the_new_sessions_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A creation locks its new log until the folder is in place; a child forked
    meanwhile (by another thread) shares that lock's open file, so the lock is let go
    of explicitly: closing only left it held for as long as the child lived, and the
    parent's first write to the new session waited for the child to exit."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    with _a_child_forked_at(monkeypatch, ss, "_fdatasync") as child:
        with fs.publish_folder(f"{tmp_path}/.new-x", f"{tmp_path}/x",
                               [("messages.jsonl", b""), ("session.json", b"{}\n"), ("branches.jsonl", b"")],
                               durable=True):
            pass
        assert child, "no child was forked"
        assert fs.is_held(f"{tmp_path}/x/messages.jsonl") is False
    fs.close()


def test_a_child_forked_during_an_atomic_write_does_not_hold_the_files_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for write_atomic, whose temp file is locked while written and then
    renamed over the file (a log a repair rewrites, an index)."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    with _a_child_forked_at(monkeypatch, os, "fsync") as child:
        fs.write_atomic(f"{tmp_path}/f", b"data", durable=True)
        assert child, "no child was forked"
        assert fs.is_held(f"{tmp_path}/f") is False
    fs.close()


def test_a_folder_whose_descriptor_fails_to_close_leaves_nothing_open_or_locked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A close that reports an error (NFS and FUSE report write-back errors there)
    still closes every other descriptor and lets go of the lock."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))

    def open_here() -> list[str]:  # (only this test's: other descriptors of the process may come and go)
        found = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
                    found.append(fd)
        return found
    close = os.close
    failed: list[int] = []

    def failing_close(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        close(fd)  # (Linux frees the descriptor whatever close reports)
        if name == "branches.jsonl" and not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(os, "close", failing_close)
    with pytest.raises(OSError), fs.publish_folder(
            f"{tmp_path}/.new-x", f"{tmp_path}/x",
            [("messages.jsonl", b""), ("session.json", b"{}\n"), ("branches.jsonl", b"")], durable=False):
        pass
    monkeypatch.undo()
    assert failed and open_here() == []
    assert fs.is_held(f"{tmp_path}/x/messages.jsonl") is False
    fs.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_creation_failing_after_its_rename_never_takes_back_a_folder_another_store_adopted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """The folder is in place, its directory's sync fails: the creation fails, but
    the folder stays. Complete and unannounced, a repair in another process may
    adopt it for its key, and a client write to it (once the creation lets go of the
    log's lock): taking it back would lose an acknowledged message."""
    other: list[SessionStore] = []
    written: list[str] = []
    armed: list[bool] = []  # once the store's own files and folders are there
    threads: list[threading.Thread] = []

    def adopt_and_write() -> None:  # what another process does meanwhile
        report = other[0].repair()
        assert any("adopted" in fixed for fixed in report.fixed), report
        sid = other[0].resolve("key", create=False)
        assert sid is not None
        written.append(other[0].append(sid, role="user", content="acknowledged").id)

    def fail_once() -> None:
        thread = threading.Thread(target=adopt_and_write)
        threads.append(thread)
        thread.start()
        raise OSError(errno.EIO, "injected")

    if files == "real":
        fsync_fd = ss._fsync_fd

        def failing(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path) and armed and not threads:
                fail_once()
            fsync_fd(fd)
        store, other[:] = SessionStore(storage_dir=tmp_path), [SessionStore(storage_dir=tmp_path)]
        store.resolve("first")
        monkeypatch.setattr(ss, "_fsync_fd", failing)
    else:
        class AdoptedAtRename(FaultyFileSystem):
            def rename(self, src: str, dst: str, *, durable: bool = True) -> None:
                super().rename(src, dst, durable=durable)
                if ".new-" in src and armed and not threads:
                    fail_once()
        memory = InMemoryFileSystem()
        store = SessionStore(AdoptedAtRename(memory), storage_dir="/s")
        other[:] = [SessionStore(memory, storage_dir="/s")]
        store.resolve("first")
    armed.append(True)
    with pytest.raises(ss.StorageError):
        store.resolve("key")
    assert threads, "the failure was not injected after the rename"
    threads[0].join(60)
    monkeypatch.undo()
    assert written, "the other store did not write"
    sid = other[0].resolve("key", create=False)
    assert sid is not None and [m.id for m in other[0].get_messages(sid)] == written
    for s in (store, *other):
        s.close()


@pytest.mark.parametrize("files", ["real", "memory"])
@pytest.mark.parametrize("empty", [True, False])
def test_a_repair_leaves_alone_a_session_its_creation_links_while_the_repair_looks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str, empty: bool) -> None:
    """A repair lists the session folders no key link names, then deals with each.
    A creation in another process may link its new session in between. The repair
    took the key's session then for another one (it is, but itself): it removed it
    when empty and set it aside when not, after its creator had acknowledged it."""
    if files == "real":
        store = SessionStore(storage_dir=tmp_path)
    else:
        store = SessionStore(InMemoryFileSystem(), storage_dir="/s")
    sid = store.resolve("key")
    if not empty:
        store.append(sid, role="user", content="acknowledged")
    storage = store._storage
    assert isinstance(storage, ss.JsonlStorage)
    fs, link = storage.fs, storage._key_link("key")
    fs.remove(link)  # as it is while its creation makes the folder, before the link
    listed = storage._unindexed
    raced: list[bool] = []

    def racing() -> list[ss.IndexEntry]:
        found = listed()
        if not raced:
            raced.append(fs.symlink(sid, link))  # the creation links it now
        return found
    monkeypatch.setattr(storage, "_unindexed", racing)
    report = store.repair()
    monkeypatch.undo()
    assert raced == [True]
    assert not [f for f in report.fixed if sid in f], report.fixed
    assert store.resolve("key", create=False) == sid
    assert [m.content for m in store.get_messages(sid)] == ([] if empty else ["acknowledged"])
    assert store.check().ok
    store.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_creation_taken_back_after_its_link_loses_nothing_another_store_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """The key link is made, then its sync fails: the creation is taken back (link
    and folder removed) and fails. Another store may have found the link meanwhile
    and written to the session. The creation now holds the new log's lock until it is
    done, so that write waits and then finds no session; it used to be acknowledged,
    and then removed with the folder."""
    store, other = _two_stores(tmp_path, files)
    store.resolve("first")
    outcome: list[object] = []
    found, done = threading.Event(), threading.Event()

    def write() -> None:  # another process: finds the key's new session and writes to it
        try:
            sid = other.resolve("key", create=False)
            found.set()
            outcome.append(other.append(str(sid), role="user", content="acknowledged?").id)
        except ss.SessionStoreError as e:
            outcome.append(e)
        finally:
            found.set()
            done.set()
    thread = threading.Thread(target=write)
    link_in_folder = ss._link_in_folder
    assert isinstance(store._storage, ss.JsonlStorage)
    key_link = store._storage._key_link("key")

    def failing(fs: Any, target: str, path: str, *, durable: bool) -> bool:
        linked = link_in_folder(fs, target, path, durable=durable)
        if path == key_link and not thread.is_alive():
            thread.start()
            assert found.wait(60)
            done.wait(2)  # (it waits for the lock, now: then this only lets it try)
            raise OSError(errno.EIO, "injected: the link's sync")
        return linked
    monkeypatch.setattr(ss, "_link_in_folder", failing)
    with pytest.raises(ss.StorageError):
        store.resolve("key")
    monkeypatch.undo()
    thread.join(60)
    assert len(outcome) == 1
    if isinstance(outcome[0], str):  # acknowledged: then it must be there
        sid = other.resolve("key", create=False)
        assert sid is not None and [m.id for m in other.get_messages(sid)] == outcome
    assert store.check().ok
    for s in (store, other):
        s.close()


def _two_stores(tmp_path: Path, files: str) -> tuple[SessionStore, SessionStore]:
    """Two stores of one directory, as two processes have: on files (each its own
    descriptors, so their flocks exclude each other) or on one InMemoryFileSystem."""
    if files == "real":
        return SessionStore(storage_dir=tmp_path), SessionStore(storage_dir=tmp_path)
    memory = InMemoryFileSystem()
    return SessionStore(memory, storage_dir="/s"), SessionStore(memory, storage_dir="/s")


class _WriteMeanwhile:
    """A client's append to a session, in a thread of its own: :meth:`start` starts it
    (once) and lets it run for up to 2 s; a write that waits for a lock the caller
    holds goes on waiting, and then either finds its session or not."""

    def __init__(self, client: SessionStore, session_id: str) -> None:
        self._client, self._sid = client, session_id
        self._outcome: list[object] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._write)

    def _write(self) -> None:
        try:
            self._outcome.append(self._client.append(self._sid, role="user", content="acknowledged?").id)
        except ss.SessionStoreError as e:
            self._outcome.append(e)
        finally:
            self._done.set()

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()
            self._done.wait(2)

    def outcome(self) -> list[object]:
        """What the append returned or raised (empty when it was never started)."""
        if self._thread.ident is not None:
            self._thread.join(60)
        return self._outcome


def _two_sessions_of_one_key(store: SessionStore, client: SessionStore, *, older_empty: bool) -> tuple[str, str]:
    """The older session of ``key`` lost its link, and resolve() gave the key a new,
    empty one: (the older, unindexed; the new one, the key's). ``client`` read the
    older one before (it writes to it by its id)."""
    older = store.resolve("key")
    if not older_empty:
        store.append(older, role="user", content="older")
    client.get_messages(older)
    storage = store._storage
    assert isinstance(storage, ss.JsonlStorage)
    storage.fs.remove(storage._key_link("key"))
    newer = store.resolve("key")
    assert newer != older
    return older, newer


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_repair_never_deletes_an_empty_successor_a_client_wrote_to_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """A key's session lost its link and resolve() made the key a new, empty one: a
    repair gives the key back to the older session and deletes the new one, if it is
    still empty. It found it empty, then deleted it: a client's message written in
    between, acknowledged, went with it. Emptiness is now checked again while the
    session is held for its deletion: written to, it stays the key's."""
    store, client = _two_stores(tmp_path, files)
    older, newer = _two_sessions_of_one_key(store, client, older_empty=False)
    storage = store._storage
    assert isinstance(storage, ss.JsonlStorage)
    empty_successor = storage._empty_successor
    written: list[str] = []

    def then_written(holder: str, entry: ss.IndexEntry) -> bool:
        found = empty_successor(holder, entry)
        if not written:
            written.append(client.append(newer, role="user", content="acknowledged").id)
        return found
    monkeypatch.setattr(storage, "_empty_successor", then_written)
    report = store.repair()
    monkeypatch.undo()
    assert written and store.resolve("key", create=False) == newer, report.fixed
    assert [m.id for m in store.get_messages(newer)] == written
    assert any(f".orphan-{older}" in f for f in report.fixed), report.fixed  # kept aside, as reported
    for s in (store, client):
        s.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_repair_removing_an_empty_unindexed_session_loses_nothing_written_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """An empty session no key link names, whose key another session has, is
    removed by a repair. A client holding its id may write to it just then: the
    repair now holds the session while it looks and removes, so that write waits and
    then finds no session; it used to be acknowledged, then removed."""
    store, client = _two_stores(tmp_path, files)
    older, newer = _two_sessions_of_one_key(store, client, older_empty=True)
    fs = store._storage.fs  # type: ignore[attr-defined]
    remove_tree = fs.remove_tree
    meanwhile = _WriteMeanwhile(client, older)

    def writing_first(path: str) -> None:
        if path.endswith(older):
            meanwhile.start()
        remove_tree(path)
    monkeypatch.setattr(fs, "remove_tree", writing_first)
    report = store.repair()
    monkeypatch.undo()
    outcome = meanwhile.outcome()
    assert len(outcome) == 1, report.fixed
    assert isinstance(outcome[0], ss.SessionNotFound), outcome  # not acknowledged: it found no session
    assert store.resolve("key", create=False) == newer and store.check().ok
    for s in (store, client):
        s.close()


class _LockOrder(InMemoryFileSystem):
    """Records, per thread, which lock was taken while which other was held."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: set[tuple[str, str]] = set()
        self._stack = threading.local()

    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
        inner = super().locked(path, create=create)
        held: list[str] = self._stack.__dict__.setdefault("held", [])

        @contextlib.contextmanager
        def tracked() -> Iterator[None]:
            with inner:
                self.pairs.update((outer, path) for outer in held)
                held.append(path)
                try:
                    yield
                finally:
                    held.remove(path)
        return tracked()

    def kinds(self) -> set[tuple[str, str]]:
        def kind(path: str) -> str:
            return "shard" if "/keys/" in path else "log" if path.endswith("messages.jsonl") else path
        return {(kind(a), kind(b)) for a, b in self.pairs}


def test_no_path_takes_a_sessions_lock_while_it_holds_a_key_shards_lock() -> None:
    """A creation holds its new log's lock while it links the key, and takes the key's
    shard lock when it finds a stale link there: the log's, then the shard's. A
    deletion took them the other way round (the shard's, then the log's), so that a
    creation and the deletion of the session it was making (adopted by a repair
    meanwhile) waited for each other for good; flock detects no deadlock. Every path
    now takes them in one order."""
    fs = _LockOrder()
    store = SessionStore(fs, storage_dir="/s")
    sid = store.resolve("key")
    store.append(sid, role="user", content="m")
    store.delete_session(sid)  # (its link stays behind: stale)
    storage = store._storage
    assert isinstance(storage, ss.JsonlStorage)
    ss._link_in_folder(fs, sid, storage._key_link("key"), durable=False)
    sid = store.resolve("key")  # the stale link is replaced: the creation's order
    older = store.resolve("other")
    store.append(older, role="user", content="m")
    fs.remove(storage._key_link("other"))
    store.resolve("other")
    store.repair()  # an empty successor deleted, the older session adopted
    store.delete_session(sid)
    assert ("log", "shard") in fs.kinds()
    assert ("shard", "log") not in fs.kinds(), sorted(fs.pairs)
    store.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_repair_looks_again_once_it_holds_a_session_its_creation_then_linked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """A repair found a creation's folder unindexed while the key was another
    session's (X), and decided to remove it; X was then deleted and the creation
    linked its key and was acknowledged. The repair, let in once the creation was
    done, acted on what it had decided: the acknowledged session was removed. It now
    decides with the session held, the creation over."""
    if files == "real":
        creator, other, repairer = (SessionStore(storage_dir=tmp_path) for _ in range(3))
    else:
        memory = InMemoryFileSystem()
        creator, other, repairer = (SessionStore(memory, storage_dir="/s") for _ in range(3))
    creator.resolve("first")
    published, go, repairing = threading.Event(), threading.Event(), threading.Event()
    storage = creator._storage
    assert isinstance(storage, ss.JsonlStorage)
    names_add = ss._KeyNames.add

    def paused_add(names: Any, key: str, session_id: str, *, durable: bool = True) -> bool:
        if names is storage._names and key == "k" and not published.is_set():
            published.set()  # the folder in place, its log locked, the key not linked
            assert go.wait(60)
        return names_add(names, key, session_id, durable=durable)
    monkeypatch.setattr(ss._KeyNames, "add", paused_add)
    rstorage = repairer._storage
    assert isinstance(rstorage, ss.JsonlStorage)
    empty_successor = rstorage._empty_successor

    def deciding(holder: str, entry: ss.IndexEntry) -> bool:
        found = empty_successor(holder, entry)
        repairing.set()  # it found the folder, the key X's: next, it takes the folder's lock (or acts)
        return found
    monkeypatch.setattr(rstorage, "_empty_successor", deciding)
    out: dict[str, Any] = {}
    creation = threading.Thread(target=lambda: out.setdefault("created", creator.resolve("k")))
    creation.start()
    assert published.wait(60)
    x = other.resolve("k")
    other.append(x, role="user", content="x's")  # written to: no empty successor
    repair = threading.Thread(target=lambda: out.setdefault("report", repairer.repair()))
    repair.start()
    assert repairing.wait(60)
    other.delete_session(x)
    go.set()
    creation.join(60)
    repair.join(60)
    monkeypatch.undo()
    sid = out["created"]
    assert [f for f in out["report"].fixed if sid in f] == []
    assert other.resolve("k", create=False) == sid
    other.append(sid, role="user", content="after")
    for s in (creator, other, repairer):
        s.close()


def test_a_creator_killed_with_a_forked_child_leaves_no_lock_behind(tmp_path: Path) -> None:
    """A creation holds its new log's lock until its key is linked. A child forked
    meanwhile (by another thread) shares the lock's open file; when the creator is
    killed before it lets go, the child kept the lock for as long as it lived, and
    every write to the session (adopted by a repair) waited for it. A child now
    closes its copies of such descriptors at once."""
    script = f"""
import os, signal, sys
from session_store import SessionStore
store = SessionStore(storage_dir={str(tmp_path)!r})
store.resolve("first")
add = type(store._storage._names).add
def forking(names, key, sid, **kwargs):
    if key == "k":
        pid = os.fork()
        if pid == 0:  # the child lives on: until the test closes its stdin
            print(os.getpid(), flush=True)
            os.read(0, 1)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)  # the creator is killed, its lock held
    return add(names, key, sid, **kwargs)
type(store._storage._names).add = forking
store.resolve("k")
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdin is not None and child.stdout is not None
    grandchild = int(child.stdout.readline())
    try:
        assert child.wait(60) == -signal.SIGKILL
        store = SessionStore(storage_dir=tmp_path)
        done: list[object] = []

        def repair_and_write() -> None:
            store.repair()
            sid = store.resolve("k")
            done.append(store.append(sid, role="user", content="written").id)
        thread = threading.Thread(target=repair_and_write, daemon=True)
        thread.start()
        thread.join(60)
        assert done, "a write waited for the lock a forked child kept"
        store.close()
    finally:
        child.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


def test_a_creation_whose_lock_fails_to_be_let_go_of_after_its_link_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key link is the commit; letting go of the new log's lock and closing its
    descriptor come after it. An error there (a close reports write-back errors on
    NFS) made the creation fail although its session was linked, and stayed: a
    retried import then found the key taken. It is now logged, and the creation
    succeeds."""
    store = SessionStore(storage_dir=tmp_path)
    store.resolve("first")
    flock = ss._flock
    failed: list[bool] = []

    def failing(fd: int, op: str, **kwargs: Any) -> None:
        flock(fd, op, **kwargs)
        if op == "LOCK_UN" and not failed and os.readlink(f"/proc/self/fd/{fd}").endswith("/messages.jsonl"):
            failed.append(True)
            raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(ss, "_flock", failing)
    message = ss.Message(id="m1", parent_id=None, type="message", role="user", content="imported", timestamp=1)
    sid = store.import_session("k", [message])
    monkeypatch.undo()
    assert failed
    assert store.resolve("k", create=False) == sid and [m.content for m in store.get_messages(sid)] == ["imported"]
    store.close()


def test_memory_forgets_the_locks_of_creations_taken_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A held lock moves with its file when its folder is renamed; its holder names
    the old path. A creation taken back (its link's sync failed) removed the folder
    under the lock, and the lock stayed in the table for good: one per failure."""
    memory = InMemoryFileSystem()
    store = SessionStore(memory, storage_dir="/s")
    store.resolve("first")
    link_in_folder = ss._link_in_folder

    def failing(fs: Any, target: str, path: str, *, durable: bool) -> bool:
        link_in_folder(fs, target, path, durable=durable)
        raise OSError(errno.EIO, "injected: the key link's sync")
    monkeypatch.setattr(ss, "_link_in_folder", failing)
    for i in range(3):
        with pytest.raises(ss.StorageError):
            store.resolve(f"k{i}")
    monkeypatch.undo()
    assert [p for p in memory._locks if p not in memory._files] == []
    store.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_write_waiting_while_a_repair_sets_its_session_aside_finds_no_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """A repair sets aside a session whose key another has, holding it. A client
    that knows it by id and waits for its lock got, on files, the lock of the file
    renamed aside, and its message was acknowledged into what was set aside. What is
    set aside is now a copy, and the session removed, its log first: the file the
    client waited for is gone, and so is the session."""
    store, client = _two_stores(tmp_path, files)
    older, newer = _two_sessions_of_one_key(store, client, older_empty=False)
    store.append(newer, role="user", content="newer")  # written to: the key stays the newer one's
    fs = store._storage.fs  # type: ignore[attr-defined]
    write_atomic = fs.write_atomic
    meanwhile = _WriteMeanwhile(client, older)

    def copying(path: str, data: bytes, **kwargs: Any) -> None:
        if ".orphan-" in path:
            meanwhile.start()
        write_atomic(path, data, **kwargs)
    monkeypatch.setattr(fs, "write_atomic", copying)
    report = store.repair()
    monkeypatch.undo()
    outcome = meanwhile.outcome()
    assert any(".orphan-" in f for f in report.fixed), report.fixed
    assert len(outcome) == 1 and isinstance(outcome[0], ss.SessionNotFound), outcome
    aside = store._storage.directory + f"/.orphan-{older}/messages.jsonl"  # type: ignore[attr-defined]
    assert b"acknowledged?" not in fs.read(aside) and b"older" in fs.read(aside)
    for s in (store, client):
        s.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_repair_keeps_an_unindexed_session_that_holds_only_branch_events(
        tmp_path: Path, files: str) -> None:
    """An unindexed session whose key another has was removed when its log was
    empty, with its branch events (a title set, acknowledged). It is now kept aside
    like one holding messages."""
    if files == "real":
        store = SessionStore(storage_dir=tmp_path)
    else:
        store = SessionStore(InMemoryFileSystem(), storage_dir="/s")
    older, newer = _two_sessions_of_one_key(store, store, older_empty=True)
    store.set_title(older, "acknowledged title")
    store.append(newer, role="user", content="newer")
    report = store.repair()
    fs = store._storage.fs  # type: ignore[attr-defined]
    aside = store._storage.directory + f"/.orphan-{older}"  # type: ignore[attr-defined]
    assert any("kept aside" in f for f in report.fixed), report.fixed
    assert b"acknowledged title" in fs.read(f"{aside}/branches.jsonl")
    assert older in fs.read(f"{aside}/session.json").decode()  # its key and creation, with it
    report = store.repair()  # an earlier orphan with branch events is kept too
    assert fs.exists(f"{aside}/branches.jsonl") and any(aside in f and "kept" in f for f in report.fixed), report
    store.close()


@pytest.mark.parametrize("files", ["real", "memory"])
def test_a_session_that_fails_to_be_set_aside_stays_whole_where_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str) -> None:
    """Setting a session aside copies it, then removes it. A copy that fails (a full
    disk) leaves the session where it was, unindexed and whole, and no partial copy;
    a client may write to it meanwhile, and the next repair sets that aside too."""
    store, client = _two_stores(tmp_path, files)
    older, newer = _two_sessions_of_one_key(store, client, older_empty=False)
    store.append(newer, role="user", content="newer")
    fs = store._storage.fs  # type: ignore[attr-defined]
    write_atomic = fs.write_atomic

    def full(path: str, data: bytes, **kwargs: Any) -> None:
        if ".orphan-" in path and path.endswith("messages.jsonl"):
            raise OSError(errno.ENOSPC, "injected")
        write_atomic(path, data, **kwargs)
    monkeypatch.setattr(fs, "write_atomic", full)
    with pytest.raises(ss.StorageError):
        store.repair()
    monkeypatch.undo()
    directory = store._storage.directory  # type: ignore[attr-defined]
    assert not fs.exists(f"{directory}/.orphan-{older}")
    written = client.append(older, role="user", content="meanwhile").id
    report = store.repair()
    assert any("kept aside" in f for f in report.fixed), report.fixed
    assert written.encode() in fs.read(f"{directory}/.orphan-{older}/messages.jsonl")
    assert not fs.exists(f"{directory}/{older}") and store.check().ok
    for s in (store, client):
        s.close()


def test_a_child_closes_its_copies_of_descriptors_the_parent_locks_outside_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while it holds such a lock, a parent must not leave it to a child it
    forked: a file removed while locked (a deletion's commit, a log replaced) keeps
    its descriptor, out of the cache; the child closes its copy. And a file opened
    to be locked (a creation's log, a temp file) is opened with forks held off until
    its descriptor is noted, so no child has a copy it does not know of."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    path = f"{tmp_path}/log"
    fs.append(path, b"x\n")
    with fs.locked(path):
        fs.remove(path)  # the commit of a deletion, under the lock
        (fd,) = fs._locking
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.fstat(fd)
                os.write(w, b"open")
            except OSError:
                os.write(w, b"closed")
            os._exit(0)
        os.close(w)
        assert os.read(r, 16) == b"closed"
        os.close(r)
        os.waitpid(pid, 0)
    assert fs._locking == set()
    gated: list[bool] = []
    real_open = os.open

    def opening(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_EXCL and name == "messages.jsonl":
            gate = ss._FORK_GATE[0]
            other = threading.Thread(target=lambda: gated.append(gate.acquire(blocking=False)))
            other.start()
            other.join()  # a fork in another thread waits: it could not take the gate
            gated.append(gate.acquire(blocking=False))  # one in this very thread (a signal handler's)
            gate.release()  # does not wait for itself
        return real_open(name, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", opening)
    with fs.publish_folder(f"{tmp_path}/.new-x", f"{tmp_path}/x", [("messages.jsonl", b"")], durable=False):
        assert len(fs._locking) == 1
    monkeypatch.undo()
    assert gated == [False, True] and fs._locking == set()
    fs.close()


def test_a_child_forked_as_a_locked_descriptor_leaves_the_cache_closes_its_copy(tmp_path: Path) -> None:
    """A file removed while locked (a deletion's commit) leaves the cache, its
    descriptor still locked. It was noted for children only after it left the cache:
    a fork in between gave the child a locked copy it did not know of."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    path = f"{tmp_path}/log"
    fs.append(path, b"x\n")
    uncache = fs._uncache
    r, w = os.pipe()

    def uncache_then_fork(p: str) -> Any:  # another thread's fork, landing right after
        d = uncache(p)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (the store's at-fork hook has run)
            try:
                os.fstat(d.fd)
                os.write(w, b"open")
            except OSError:
                os.write(w, b"closed")
            os._exit(0)
        os.waitpid(pid, 0)
        return d
    fs._uncache = uncache_then_fork  # type: ignore[method-assign,assignment]
    with fs.locked(path):
        fs.remove(path)
    os.close(w)
    assert os.read(r, 16) == b"closed"
    os.close(r)
    fs.close()


def test_a_repair_never_removes_part_of_a_folder_a_creation_then_publishes(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair in another process finds a creation's folder before its log is
    locked (not held: garbage, by all it can tell) and removes it while the creation
    goes on. It used to remove the files in place, and the creation then published
    what was left (its log gone) and acknowledged a session its key did not find.
    The repair now renames the folder away first: the creation fails, unacknowledged."""
    creator, repairer = SessionStore(storage_dir=tmp_path), SessionStore(storage_dir=tmp_path)
    creator.resolve("first")
    locking, go = threading.Event(), threading.Event()
    flock, unlink = ss._flock, os.unlink
    outcome: list[object] = []

    def paused_flock(fd: int, op: str, **kwargs: Any) -> None:
        if threading.current_thread() is thread and op == "LOCK_EX" and not locking.is_set():
            locking.set()  # its log made, not locked yet
            go.wait(60)
        flock(fd, op, **kwargs)

    raced: list[bool] = []

    def racing_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        unlink(path, *args, **kwargs)
        if path == "messages.jsonl" and threading.current_thread() is threading.main_thread() and not go.is_set():
            raced.append(True)
            go.set()  # the repair is under way: the creation goes on to its end
            thread.join(60)

    def create() -> None:
        try:
            outcome.append(creator.resolve("key"))
        except ss.StorageError as e:
            outcome.append(e)
    thread = threading.Thread(target=create)
    monkeypatch.setattr(ss, "_flock", paused_flock)
    monkeypatch.setattr(os, "unlink", racing_unlink)
    thread.start()
    assert locking.wait(60)
    repairer.repair()
    go.set()
    thread.join(60)
    monkeypatch.undo()
    assert raced == [True] and len(outcome) == 1
    if not isinstance(outcome[0], ss.StorageError):  # acknowledged: then whole, and found by its key
        assert repairer.resolve("key", create=False) == outcome[0]
        assert creator.get_messages(str(outcome[0])) == []
    assert repairer.repair().ok and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    for store in (creator, repairer):
        store.close()


def test_makedirs_below_an_anchor_refuses_links_and_syncs_each_new_entry(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``RealFileSystem.makedirs`` below an anchor: only what is missing is made, one
    directory at a time, and with ``durable`` the parent of each new one is synced (a
    directory that was there is not); a link or a file where a directory should be is
    an error, also as the last component, and nothing is made through a link."""
    fs = RealFileSystem()
    anchor = tmp_path / "store"
    anchor.mkdir()
    fs.anchor(str(anchor))
    synced: list[str] = []
    fsync_fd = ss._fsync_fd

    def watched(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync_fd(fd)
    monkeypatch.setattr(ss, "_fsync_fd", watched)
    fs.makedirs(f"{anchor}/a/b/c")  # nothing below the anchor yet: the walk
    assert (anchor / "a" / "b" / "c").is_dir()
    assert synced == [str(anchor), str(anchor / "a"), str(anchor / "a" / "b")]
    synced.clear()
    fs.makedirs(f"{anchor}/a/b/d")  # only the last one missing
    assert synced == [str(anchor / "a" / "b")] and (anchor / "a" / "b" / "d").is_dir()
    synced.clear()
    fs.makedirs(f"{anchor}/a/b/d")  # there already: nothing made, nothing synced
    fs.makedirs(f"{anchor}/a/b/d", durable=False)
    fs.makedirs(f"{anchor}/a/e", durable=False)
    assert synced == [] and (anchor / "a" / "e").is_dir()

    outside = tmp_path / "outside"
    outside.mkdir()
    (anchor / "link").symlink_to(outside)
    (anchor / "a" / "leaf-link").symlink_to(outside)
    (anchor / "a" / "file").write_bytes(b"x")
    for path in ("link", "link/x", "link/x/y", "a/leaf-link", "a/leaf-link/x", "a/file", "a/file/x"):
        with pytest.raises(OSError):
            fs.makedirs(f"{anchor}/{path}")
    assert list(outside.iterdir()) == []


def test_a_new_files_directory_entry_is_synced_by_a_sync_that_succeeds(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file created by ``append`` has its directory synced by its first ``sync`` that
    succeeds: not forgotten when the directory's sync failed, nor when another file's
    sync of the same directory was under way as it was created (that sync may have
    begun before its entry existed)."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    synced: list[str] = []
    fsync_fd = ss._fsync_fd
    hooks: list[Callable[[], None]] = []

    def watched(fd: int) -> None:
        while hooks:
            hooks.pop()()
        fsync_fd(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    folder = tmp_path / "s"
    fs.makedirs(str(folder))
    first, second = f"{folder}/first", f"{folder}/second"
    fs.append(first, b"x\n")
    monkeypatch.setattr(ss, "_fsync_fd", failing)
    with pytest.raises(OSError):
        fs.sync(first)
    monkeypatch.setattr(ss, "_fsync_fd", watched)
    fs.sync(first)  # its entry was never synced: this sync syncs it
    assert synced == [str(folder)]

    synced.clear()
    fs.append(f"{folder}/third", b"x\n")
    hooks.append(lambda: fs.append(second, b"y\n"))  # made while third's directory sync is under way
    fs.sync(f"{folder}/third")
    assert synced == [str(folder)]
    fs.sync(second)
    assert synced == [str(folder), str(folder)]
    fs.sync(second)  # synced once: not again
    assert synced == [str(folder), str(folder)]

    synced.clear()  # removed and made again while the directory sync that covers it was under way
    fourth = f"{folder}/fourth"
    fs.append(fourth, b"x\n")

    def made_again() -> None:
        fs.remove(fourth)
        fs.append(fourth, b"z\n")
    hooks.append(made_again)
    fs.sync(fourth)
    fs.sync(fourth)  # the second creation may have missed that sync: this one syncs the directory again
    assert synced == [str(folder), str(folder)]


def test_the_work_of_a_creation_does_not_grow_with_the_sessions_that_took_a_lease(tmp_path: Path) -> None:
    """A store opened ``durable=False`` never syncs the lease files it creates, so
    their paths stay known as new; a rename or removal (each creation renames its
    folder into place) used to look through all of them: after 10,000 sessions had
    taken a lease a creation cost 5.3 ms against 0.7 ms. Counted in calls, not time:
    the C calls one creation makes are the same after 400 leased sessions as after 40."""
    store = SessionStore(storage_dir=str(tmp_path), durable=False)

    def calls_of_a_creation(key: str) -> int:
        count = 0

        def tracer(frame: Any, event: str, arg: Any) -> None:
            nonlocal count
            if event == "c_call":
                count += 1
        sys.setprofile(tracer)
        try:
            store.resolve(key)
        finally:
            sys.setprofile(None)
        return count

    def lease(first: int, last: int) -> None:
        for i in range(first, last):
            sid = store.resolve(f"leased-{i}")
            store.acquire_lock(sid, "w")
            store.release_lock(sid, "w")

    lease(0, 40)
    few = min(calls_of_a_creation(f"probe-a-{i}") for i in range(3))
    lease(40, 400)
    many = min(calls_of_a_creation(f"probe-b-{i}") for i in range(3))
    assert many <= few + 20, (few, many)
    store.close()


def test_a_file_renamed_over_a_cached_one_is_the_one_written_next(tmp_path: Path) -> None:
    """``rename`` over a file whose descriptor is cached drops that descriptor: the
    next append goes to the file now at the path, not to the one replaced (which an
    append through the old descriptor would lose)."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    log, new = f"{tmp_path}/log", f"{tmp_path}/new"
    fs.append(log, b"old\n")
    fs.append(new, b"new\n")
    fs.rename(new, log)
    fs.append(log, b"more\n")
    assert (tmp_path / "log").read_bytes() == b"new\nmore\n"
    assert fs.read(log) == b"new\nmore\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "append", "read", "remove", "remove_tree", "rename", "move",
                                           "close"]),
                          st.sampled_from(["a", "a/b", "d"]), st.sampled_from(["x", "y"]),
                          st.sampled_from(["a", "a/b", "d", "e"])), max_size=30))
def test_the_descriptor_cache_never_holds_a_file_no_longer_at_its_path(tmp_path_factory: pytest.TempPathFactory,
                                                                        ops: list[tuple[str, str, str, str]]) -> None:
    """Whatever files and folders are written, removed and renamed (also a file over
    another), and the cache
    evicting, with room for 4), every cached descriptor not marked stale is the file
    at its path, and the cache's index by folder counts exactly what it holds."""
    root = tmp_path_factory.mktemp("cache")
    fs = RealFileSystem(max_open_files=4)
    fs.anchor(str(root))
    for op, folder, name, other in ops:
        path = f"{root}/{folder}/{name}"
        try:
            if op == "append":
                fs.makedirs(f"{root}/{folder}")
                fs.append(path, b"x\n")
            elif op == "read":
                fs.read(path)
            elif op == "remove":
                fs.remove(path)
            elif op == "remove_tree":
                fs.remove_tree(f"{root}/{folder}")
            elif op == "rename":
                fs.rename(f"{root}/{folder}", f"{root}/{other}")
            elif op == "move":  # a file over its sibling
                fs.rename(path, f"{root}/{folder}/{'y' if name == 'x' else 'x'}")
            else:
                fs.close()
        except OSError:
            pass  # absent, a folder renamed into itself or over a non-empty one: what the OS refuses
        for p, d in fs._fds.items():
            assert not d.stale
            assert os.path.samestat(os.fstat(d.fd), os.lstat(p)), p
        dirs: dict[str, set[str]] = {}
        under: dict[str, int] = {}
        for p in fs._fds:
            dirs.setdefault(p.rpartition("/")[0] or "/", set()).add(p)
            for a in ss._ancestors(p):
                under[a] = under.get(a, 0) + 1
        assert fs._fd_dirs == dirs and fs._fd_under == under
    fs.close()


def test_a_descriptor_opened_while_its_file_is_replaced_is_not_kept(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A file replaced at its path (a rename over it) after a thread opened it and
    before that thread cached the descriptor: the rename's forgetting found nothing to
    drop, so the descriptor is checked before it is kept (and used), or every later
    append would go to the replaced file."""
    fs = RealFileSystem()
    fs.anchor(str(tmp_path))
    target, other = f"{tmp_path}/f", f"{tmp_path}/t"
    (tmp_path / "f").write_bytes(b"old\n")
    (tmp_path / "t").write_bytes(b"new\n")
    real_open = os.open
    armed = [True]

    def opening(name: Any, *args: Any, **kwargs: Any) -> int:
        fd = real_open(name, *args, **kwargs)
        if armed[0] and name == "f":  # opened, not cached yet: another thread renames over it
            armed[0] = False
            fs.rename(other, target, durable=False)
        return fd

    monkeypatch.setattr(os, "open", opening)
    fs.append(target, b"first\n")  # (the descriptor is checked before the write: it goes to the new file too)
    monkeypatch.setattr(os, "open", real_open)
    fs.append(target, b"second\n")
    assert not armed[0]
    assert (tmp_path / "f").read_bytes() == b"new\nfirst\nsecond\n"
