"""Injected faults, a corruption corpus, hostile input, check() and repair()."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import session_store as ss
from session_store import FileSystem, InMemoryFileSystem, RealFileSystem, SessionStore
from session_store_conformance import FaultyFileSystem, SimulatedCrash


@pytest.fixture(params=["memory", "files"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[FileSystem, str]:
    if request.param == "memory":
        return InMemoryFileSystem(), "/s"
    return RealFileSystem(), str(tmp_path / "s")


def reopen(inner: tuple[FileSystem, str]) -> SessionStore:
    fs, directory = inner
    store = SessionStore(fs if isinstance(fs, InMemoryFileSystem) else RealFileSystem(), storage_dir=directory)
    store.init()
    return store


# -- injected faults ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["enospc", "eio", "short", "sync"])
def test_a_failed_append_raises_storage_error_and_leaves_state_equal_to_disk(
        inner: tuple[FileSystem, str], fault: str) -> None:
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1])
    sid = store.resolve("k")
    acknowledged = [store.append(sid, role="user", content=f"ok {i}") for i in range(3)]
    if fault == "enospc":
        faulty.fail_next_append(errno.ENOSPC)
    elif fault == "eio":
        faulty.fail_next_append(errno.EIO)
    elif fault == "short":
        faulty.short_next_append(10)
    else:
        faulty.fail_next_sync()
    with pytest.raises(ss.StorageError) as info:
        store.append(sid, role="user", content="unlucky")
    assert isinstance(info.value, OSError) and isinstance(info.value, ss.SessionStoreError)
    in_memory = store.get_messages(sid)
    after = store.append(sid, role="assistant", content="the store still works")
    store.close()
    again = reopen(inner)
    on_disk = again.get_messages(sid)
    assert on_disk == [*in_memory, after]  # what the failed store believed is what is on disk
    assert on_disk[:3] == acknowledged
    if fault != "sync":  # the record never fully reached the file: it must not appear
        assert [m.content for m in on_disk] == ["ok 0", "ok 1", "ok 2", "the store still works"]
    assert again.check().ok
    again.close()


@pytest.mark.parametrize("crash_at", [0, 1, 30, 90, 150, 333, 1000])
def test_crash_after_n_bytes_loses_nothing_acknowledged(inner: tuple[FileSystem, str], crash_at: int) -> None:
    faulty = FaultyFileSystem(inner[0])
    # no checkpoint timer may fire in the "dead" process before the test stops it
    store = SessionStore(faulty, storage_dir=inner[1], index_save_delay_ms=600_000)
    store.init()
    sid = store.resolve("k")
    faulty.crash_after(crash_at)
    acknowledged: list[ss.Message] = []
    with pytest.raises(SimulatedCrash):
        for i in range(100):
            acknowledged.append(store.append(sid, role="user", content=f"message {i} " + "x" * i))
            if i % 7 == 3:
                store.create_branch(sid, f"b{i}", acknowledged[-1].id)
    faulty.close()
    again = reopen(inner)
    messages = again.get_messages(sid)
    assert messages[: len(acknowledged)] == acknowledged
    assert len(messages) <= len(acknowledged) + 1  # at most the one in flight, complete or absent
    again.append(sid, role="user", content="writable after the crash")
    assert again.check().ok  # the next writer cut the torn tail
    again.close()


# -- corruption corpus ----------------------------------------------------------------


def make_session(directory: Path) -> tuple[str, list[ss.Message]]:
    with SessionStore(storage_dir=directory) as store:
        sid = store.resolve("k")
        msgs = [store.append(sid, role="user", content=f"m{i}") for i in range(3)]
        store.create_branch(sid, "alt", msgs[0].id)
    return sid, msgs


def test_corpus_parent_cycle_written_by_hand(tmp_path: Path) -> None:
    sid, msgs = make_session(tmp_path)
    with open(tmp_path / sid / "messages.jsonl", "a") as f:
        f.write(json.dumps({"id": "x", "parentId": "y", "role": "user", "content": "", "timestamp": 1}) + "\n")
        f.write(json.dumps({"id": "y", "parentId": "x", "role": "user", "content": "", "timestamp": 1}) + "\n")
    with SessionStore(storage_dir=tmp_path) as store:
        got = store.get_messages(sid)
        assert got[:3] == msgs and [m.id for m in got[3:]] == ["x", "y"]  # kept: nothing is hidden
        assert store.get_linear_history(sid, "y") == got[3:]  # x is a root: no path loops
        assert [m.id for m in store.get_tree(sid, "x")] == ["x", "y"]
        report = store.check()
        assert [p.reason for p in report.problems] == [
            "parent 'y' of 'x' is missing (its record was lost): kept as a root"]
        assert all(p.session_id == sid and p.offset is not None for p in report.problems)


def test_corpus_garbage_in_the_branch_log(tmp_path: Path) -> None:
    sid, msgs = make_session(tmp_path)
    with open(tmp_path / sid / "branches.jsonl", "ab") as f:
        f.write(b"\x00\x01garbage\n")
        f.write(json.dumps({"op": "create", "name": "ghost", "headId": "nope", "at": 1, "seq": 1}).encode() + b"\n")
    with SessionStore(storage_dir=tmp_path) as store:
        assert [b.name for b in store.get_branches(sid)] == ["main", "alt"]
        assert store.get_head(sid) == msgs[-1].id
        reasons = [p.reason for p in store.check(sid).problems]
        assert len(reasons) == 2 and "not JSON" in reasons[0] and "unknown message 'nope'" in reasons[1]


def test_corpus_garbage_in_the_key_index(tmp_path: Path) -> None:
    sid, _ = make_session(tmp_path)
    (tmp_path / "keys" / "00").mkdir(exist_ok=True)
    (tmp_path / "keys" / "00" / "not-a-link").write_text("{broken")
    os.symlink("../../../etc", tmp_path / "keys" / "00" / ("0" * 64))
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.resolve("k") == sid and store.get_all_session_ids() == [sid]
        reasons = [p.reason for p in store.check().problems]
        assert len(reasons) == 2 and all("a key link to no session" in r for r in reasons)
        assert store.repair().ok
    assert [n for n in os.listdir(tmp_path / "keys" / "00") if n != ".lock"] == []  # .lock: the shard's lock


def test_corpus_unusable_session_json_is_reported(tmp_path: Path) -> None:
    sid, _ = make_session(tmp_path)
    (tmp_path / sid / "session.json").write_text("{")
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.get_messages(sid)  # still reachable by its id and its key
        assert store.resolve("k") == sid and store.get_all_session_ids() == [sid]
        assert any("session.json is unusable" in p.reason for p in store.check().problems)


def test_corpus_corrupt_lease_is_a_free_lease(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sid, _ = make_session(tmp_path)
    (tmp_path / sid / "lock.json").write_bytes(b"\xff\xfe")
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.get_lock(sid) is None
        assert store.acquire_lock(sid, "a").acquired
    assert "corrupt" in caplog.text and "as free" in caplog.text


def test_check_changes_nothing(tmp_path: Path) -> None:
    sid, _ = make_session(tmp_path)
    log = tmp_path / sid / "messages.jsonl"
    with open(log, "ab") as f:
        f.write(b"garbage\n{\"torn")
    lost, _ = make_session(tmp_path / "other")
    os.rename(tmp_path / "other" / lost, tmp_path / lost)  # a session the index does not know
    before = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    with SessionStore(storage_dir=tmp_path) as store:
        report = store.check()
        store.get_metadata(sid)
        store.get_all_session_ids()
    after = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before  # opening, checking and reading wrote nothing, not even at close
    assert sorted(p.reason.split(":")[0] for p in report.problems) == [
        "incomplete last line (6 bytes, torn write)", "not JSON",
        "session folder is not in the index (repair adopts it, or sets it aside if its key belongs to another "
        "session)"]


def test_check_and_repair_quarantine_bad_lines_byte_for_byte(tmp_path: Path) -> None:
    sid, msgs = make_session(tmp_path)
    log = tmp_path / sid / "messages.jsonl"
    bad = [b"not json at all", b"\xff\xfe invalid utf-8", json.dumps(
        {"id": msgs[0].id, "parentId": None, "role": "user", "content": "dup", "timestamp": 1}).encode()]
    with open(log, "ab") as f:
        for line in bad:
            f.write(line + b"\n")
        f.write(b'{"id":"torn"')
    with SessionStore(storage_dir=tmp_path) as store:
        report = store.check()
        assert not report.ok and len(report.problems) == 4  # three bad lines and the torn tail
        assert (log.read_bytes().count(b"\n")) == 6  # check wrote nothing
        repaired = store.repair()
        assert repaired.ok, repaired.problems
        assert repaired.fixed == [f"{log}: moved 4 unusable line(s) to {log}.quarantine, 3 of them replaced by a "
                                  "placeholder keeping its place in the tree"]
        got = store.get_messages(sid)
        assert got[:3] == msgs and [m.type for m in got[3:]] == ["damaged"] * 3  # each record's place is kept
        new = store.append(sid, role="user", content="after repair")
    quarantine = (tmp_path / sid / "messages.jsonl.quarantine").read_bytes()
    assert quarantine == b"".join(line + b"\n" for line in bad) + b'{"id":"torn"\n'  # nothing deleted
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.get_messages(sid) == [*got, new] and store.check().ok


def _link_of(root: Path, key: str) -> tuple[str, str]:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest[:2], digest


def test_repair_adopts_an_unindexed_folder_and_rewrites_the_index(tmp_path: Path) -> None:
    sid, msgs = make_session(tmp_path)
    os.unlink(os.path.join(tmp_path, "keys", *_link_of(tmp_path, "k")))  # the key index lost it
    with SessionStore(storage_dir=tmp_path) as store:
        assert not store.has_key("k") and store.get_all_session_ids() == []
        assert any(p.session_id == sid for p in store.check().problems)
        report = store.repair()
        assert report.ok and report.fixed == [f"{tmp_path}/{sid}: adopted into the index (key 'k')"]
        assert store.resolve("k") == sid and store.get_messages(sid) == msgs
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.resolve("k") == sid  # the adoption is durable


# -- hostile input ----------------------------------------------------------------------

hostile_text = st.one_of(
    st.sampled_from(["../", "../../etc/passwd", "/etc/passwd", "/", "..", ".", "a/../../b", "\x00", "nul\x00",
                     "\x1b[2J", "\r\n", "~root", "sessions.json", "keys.jsonl", "C:\\Windows", "\\\\server\\share",
                     "x" * 100_000, "\udc80", "🙂" * 50, "ключ", "main"]),
    st.text(min_size=0, max_size=40),
    st.builds(lambda a, b: a + "/" + b, st.text(max_size=10), st.text(max_size=10)),
)


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=hostile_text, message_id=hostile_text, branch=hostile_text, owner=hostile_text, other_sid=hostile_text)
def test_hostile_strings_never_escape_the_storage_dir(key: str, message_id: str, branch: str, owner: str,
                                                      other_sid: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp)
        root = outside / "store"
        with SessionStore(storage_dir=root) as store:
            def attempt(call: Any) -> None:
                try:
                    call()
                except ss.SessionStoreError:
                    pass  # a clear refusal is fine; anything else propagates and fails the test

            sid_holder: list[str] = []
            attempt(lambda: sid_holder.append(store.resolve(key)))
            sid = sid_holder[0] if sid_holder else store.resolve("fallback")
            first = store.append(sid, role="user", content="first")
            attempt(lambda: store.append(sid, role="user", content="x", id=message_id))
            attempt(lambda: store.append(sid, role="user", content="x", parent_id=message_id))
            attempt(lambda: store.create_branch(sid, branch, first.id))
            attempt(lambda: store.switch_to_branch(sid, branch))
            attempt(lambda: store.acquire_lock(sid, owner))
            attempt(lambda: store.append(sid, role="user", content="x", owner_id=owner))
            attempt(lambda: store.append(other_sid, role="user", content="x"))
            attempt(lambda: store.acquire_lock(other_sid, owner))
            attempt(lambda: store.get_messages(other_sid))
            attempt(lambda: store.delete_session(other_sid))
            attempt(lambda: store.reset(other_sid))
        files = all_files(outside)
        assert all(p == root or root in p.parents for p in files)  # nothing outside storage_dir
        allowed_top = {"session-store.json", "keys", "names", sid}
        assert {p.name for p in root.iterdir()} <= allowed_top
        assert {p.name for p in (root / sid).iterdir()} <= {
            "session.json", "messages.jsonl", "branches.jsonl", "lock.json", "lease.lock", "stats.json"}
        with SessionStore(storage_dir=root) as again:
            assert again.get_messages(sid)[0] == first
            assert again.check().ok


def test_symlinked_storage_dir_is_used_as_given(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with SessionStore(storage_dir=tmp_path / "link") as store:
        store.append(store.resolve("k"), role="user", content="x")
    assert (real / "session-store.json").exists() and (real / "keys").is_dir()


def test_repair_sets_aside_a_session_whose_key_was_taken(tmp_path: Path) -> None:
    """Both sessions of the key hold messages: the key stays with the one in use, the
    other is kept aside whole. (When the new one is empty, the key goes back instead:
    tests/test_storage.py.)"""
    sid, _ = make_session(tmp_path)
    os.unlink(os.path.join(tmp_path, "keys", *_link_of(tmp_path, "k")))  # the index lost it...
    with SessionStore(storage_dir=tmp_path) as store:
        new_sid = store.resolve("k")  # ...and "k" was resolved again, and used, before a repair
        store.append(new_sid, role="user", content="in use")
        assert new_sid != sid
        report = store.repair()
        assert report.ok
        assert report.fixed == [f"{tmp_path}/{sid}: its key 'k' belongs to another session; "
                                f"kept aside as {tmp_path}/.orphan-{sid}"]
        assert store.repair().fixed == [f"{tmp_path}/.orphan-{sid}: kept (messages of a session whose key another "
                                        "session has)"]
    assert (tmp_path / f".orphan-{sid}" / "messages.jsonl").exists()  # nothing deleted


@pytest.mark.parametrize("fault", ["append", "sync"])
def test_storage_failures_outside_append_are_storage_errors(inner: tuple[FileSystem, str], fault: str) -> None:
    """resolve, create_branch, delete and leases translate OS errors like append does."""
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1])
    sid = store.resolve("k")
    first = store.append(sid, role="user", content="a")

    def arm() -> None:
        if fault == "append":
            faulty.fail_next_append(errno.ENOSPC)
        else:
            faulty.fail_next_sync()

    for call in (lambda: store.resolve("new key"), lambda: store.create_branch(sid, "alt", first.id),
                 lambda: store.reset(sid)):
        arm()
        with pytest.raises(ss.StorageError):
            call()
    store.close()


def test_a_reader_sees_branch_events_written_after_another_store_repaired_only_the_events(tmp_path: Path) -> None:
    """A reader's unchanged check is an fstat of the log and the events' size by lseek on
    its open descriptor: a repair that rewrote only the events file would leave that
    size unchanged, and the reader would miss every later branch event."""
    sid, msgs = make_session(tmp_path)
    reader = SessionStore(storage_dir=tmp_path)
    with SessionStore(storage_dir=tmp_path) as writer:
        writer.create_branch(sid, "side", msgs[0].id)
        assert reader.get_head(sid) == msgs[-1].id  # the reader holds both files open
        with open(tmp_path / sid / "branches.jsonl", "ab") as f:
            f.write(b"not an event\n")
        assert reader.get_branch(sid, "side") is not None  # read past the damaged line too
        repaired = writer.repair()
        assert any("branches.jsonl" in line for line in repaired.fixed), repaired.fixed
        writer.switch_to_branch(sid, "side")
        assert reader.get_head(sid) == msgs[0].id
        assert reader.get_messages(sid) == writer.get_messages(sid)
    reader.close()


# (Writes that land and then report failure: CrashTests in the conformance kit, on the memory and file storages.)
