"""Nothing acknowledged is ever lost, at the edges too (issue 15): fork, interrupted and
failing deletes, creations and imports, failed syncs, damaged and deeply nested records,
interrupted resets, logs rewritten under a running handle, and what killed operations
leave behind. Each test is named for the scenario it covers."""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import itertools
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import session_store as ss
from session_store import FileSystem, InMemoryFileSystem, RealFileSystem, SessionStore
from session_store_conformance import FakeClock, FaultyFileSystem, SimulatedCrash

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["memory", "files"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[FileSystem, str]:
    if request.param == "memory":
        return InMemoryFileSystem(), "/s"
    return RealFileSystem(), str(tmp_path / "s")


def reopen(inner: tuple[FileSystem, str], **options: Any) -> SessionStore:
    """A fresh store (a new process, as far as the store can tell) on the same data."""
    fs, directory = inner
    store = SessionStore(fs if isinstance(fs, InMemoryFileSystem) else RealFileSystem(), storage_dir=directory,
                         clock=FakeClock(), **options)
    store.init()
    return store


def at_every_step(inner: tuple[FileSystem, str], setup: Callable[[SessionStore], Any],
                  operation: Callable[[SessionStore, Any], Any],
                  verify: Callable[[SessionStore, Any, bool], None]) -> int:
    """Crash ``operation`` at its first write, then at its second, ... until it runs
    through; after each crash, ``verify(fresh store, setup's result, completed=False)``.
    Each round starts from a fresh copy of the data. Returns the number of steps."""
    step = 0
    while True:
        fs, directory = inner
        if isinstance(fs, InMemoryFileSystem):
            fs = InMemoryFileSystem()
        round_dir = directory if isinstance(fs, InMemoryFileSystem) else f"{directory}-{step}"
        data = (fs, round_dir)
        faulty = FaultyFileSystem(fs)
        store = SessionStore(faulty, storage_dir=round_dir, clock=FakeClock())
        state = setup(store)
        faulty.crash_at(step)
        try:
            operation(store, state)
        except SimulatedCrash:
            completed = False
        else:
            completed = True
        with contextlib_closing(reopen(data)) as fresh:
            verify(fresh, state, completed)
        if completed:
            return step
        step += 1
        assert step < 200, "the operation never completed"


def storage_of(backend: str, tmp_path: Path) -> Any:
    """A fresh storage of ``backend`` (memory, files, sqlite, postgres) under ``tmp_path``."""
    if backend == "postgres":
        import pg

        pg.require_server()
        from session_store_postgres import PostgresStorage
        return PostgresStorage(pg.DSN, schema=pg.new_schema())
    if backend == "sqlite":
        from session_store_sqlite import SqliteStorage
        return SqliteStorage(tmp_path / "s.db")
    return ss.JsonlStorage(InMemoryFileSystem() if backend == "memory" else RealFileSystem(), tmp_path / "s")


class contextlib_closing:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def __enter__(self) -> SessionStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


# -- 1. fork --------------------------------------------------------------------------------

CHILDREN, APPENDS, BIG = 4, 45, 1_000_000


def _fork_workers(store: SessionStore, sid: str, out: Path) -> list[int]:
    pids = []
    for c in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # the child uses the parent's store object, as gunicorn --preload or celery prefork do
            code = 0
            try:
                with open(out / f"acked-{c}", "w") as acked:
                    for i in range(APPENDS):
                        content = f"c{c}-{i}" + ("x" * BIG if i % 3 == 0 else "")
                        m = store.append(sid, role="user", content=content)
                        acked.write(m.id + "\n")
                        acked.flush()
            except BaseException:  # pragma: no cover - reported through the exit code
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


@pytest.mark.parametrize("backend", ["files", "sqlite", "postgres"])
def test_a_store_made_before_fork_serves_forked_children_without_losing_or_cutting_appends(
        tmp_path: Path, backend: str) -> None:
    storage = storage_of(backend, tmp_path)
    store = SessionStore(storage, lock_timeout_ms=60_000)
    sid = store.resolve("shared")
    first = store.append(sid, role="user", content="before the fork")  # descriptors and connections are open
    pids = _fork_workers(store, sid, tmp_path)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    acked = {line for c in range(CHILDREN) for line in (tmp_path / f"acked-{c}").read_text().split()}
    assert len(acked) == CHILDREN * APPENDS
    store.append(sid, role="user", content="the parent still works")
    store.close()
    if backend == "postgres":  # the same schema again
        import pg

        again = SessionStore(type(storage)(pg.DSN, schema=storage.schema))
    else:  # the same path again
        again = SessionStore(storage_of(backend, tmp_path))
    with again:
        messages = again.get_messages(sid)
        assert acked <= {m.id for m in messages}  # nothing acknowledged lost
        assert len(messages) == 2 + CHILDREN * APPENDS and messages[0] == first
        assert len(again.get_linear_history(sid)) == len(messages)  # one chain: writers never interleaved
        assert again.check().ok


# -- 2. delete -----------------------------------------------------------------------------


def test_a_delete_crashing_at_any_step_leaves_the_session_whole_or_gone(inner: tuple[FileSystem, str]) -> None:
    def setup(store: SessionStore) -> tuple[str, list[str]]:
        sid = store.resolve("doomed")
        return sid, [store.append(sid, role="user", content=f"m{i}").id for i in range(3)]

    def verify(fresh: SessionStore, state: tuple[str, list[str]], completed: bool) -> None:
        sid, ids = state
        if fresh.has_session(sid):
            assert not completed
            assert fresh.resolve("doomed") == sid and [m.id for m in fresh.get_messages(sid)] == ids
        else:
            assert not fresh.has_key("doomed") and fresh.get_metadata(sid) is None
            with pytest.raises(ss.SessionNotFound):
                fresh.append(sid, role="user", content="x")
            assert fresh.resolve("doomed") != sid  # the key works again: a new session
        assert fresh.repair().ok and fresh.check().ok

    steps = at_every_step(inner, setup, lambda store, state: store.delete_session(state[0]), verify)
    assert steps >= 2


@pytest.mark.parametrize(("op", "after"), [("remove", 0), ("remove", 1), ("remove_tree", 0), ("symlink", 0)])
def test_a_delete_failing_with_enospc_or_eio_leaves_the_session_whole_or_gone_and_says_which(
        inner: tuple[FileSystem, str], op: str, after: int) -> None:
    # ("remove", 1) fails removing the key link, after the commit: the delete is done,
    # so it must not raise (it did: the caller was told "failed" of a deleted session).
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1])
    sid = store.resolve("doomed")
    m = store.append(sid, role="user", content="m")
    faulty.fail_next(op, errno.EIO, after=after)
    try:
        store.delete_session(sid)
    except ss.StorageError:
        assert store.has_session(sid) and store.get_messages(sid) == [m]
    else:
        assert not store.has_session(sid)
    with contextlib_closing(reopen(inner)) as fresh:
        assert fresh.has_session(sid) == store.has_session(sid)
        assert fresh.repair().ok
        sid2 = fresh.resolve("doomed")
        assert (sid2 == sid) == store.has_session(sid)


# -- 3. creation -------------------------------------------------------------------------------


def test_a_creation_crashing_at_any_step_is_invisible_or_whole_and_never_hides_another(
        inner: tuple[FileSystem, str]) -> None:
    def setup(store: SessionStore) -> str:
        other = store.resolve("someone else's")
        store.append(other, role="user", content="acknowledged")
        return other

    def verify(fresh: SessionStore, other: str, completed: bool) -> None:
        assert fresh.resolve("someone else's") == other and len(fresh.get_messages(other)) == 1
        assert fresh.has_key("new") == completed or not completed
        assert fresh.repair().ok
        assert fresh.resolve("someone else's") == other  # repair never sets aside an acknowledged session
        fresh.resolve("new")  # a retry works
        assert fresh.check().ok

    at_every_step(inner, setup, lambda store, _: store.resolve("new"), verify)


def test_a_failed_creation_never_makes_another_stores_session_forgotten(inner: tuple[FileSystem, str]) -> None:
    faulty = FaultyFileSystem(inner[0])
    a = SessionStore(faulty, storage_dir=inner[1])
    b = SessionStore(faulty, storage_dir=inner[1])
    theirs = a.resolve("theirs")
    faulty.fail_next("symlink", errno.ENOSPC)
    with pytest.raises(ss.StorageError):
        b.resolve("mine")
    b.close()
    a.close()
    with contextlib_closing(reopen(inner)) as fresh:
        assert fresh.resolve("theirs") == theirs
        report = fresh.repair()
        assert report.ok and fresh.resolve("theirs") == theirs


# -- 4. deep JSON --------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_content_nested_past_the_bound_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content=nested(ss.MAX_NESTING))  # at the bound: fine
        before = (tmp_path / sid / "messages.jsonl").read_bytes()
        for bad in (nested(ss.MAX_NESTING + 1), nested(5000)):
            with pytest.raises(ss.InvalidMessage, match="nests deeper"):
                store.append(sid, role="user", content=bad)
            with pytest.raises(ss.InvalidMessage, match="nests deeper"):
                store.append(sid, role="user", content="x", metadata={"deep": bad})
        cycle: list[Any] = []
        cycle.append(cycle)
        with pytest.raises(ss.InvalidMessage):
            store.append(sid, role="user", content=cycle)
        assert (tmp_path / sid / "messages.jsonl").read_bytes() == before


# 100,000: past what json decodes; 600: json decodes it, freezing it for the cache does
# not (the fast way of a cold load let that RecursionError out: the session unreadable).
@pytest.mark.parametrize("depth", [100_000, 600])
def test_a_record_nested_deeper_than_any_reader_can_decode_is_never_fatal_to_its_session(
        tmp_path: Path, depth: int) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="before")
    opening, closing = "[" * depth, "]" * depth
    deep = f'{{"id":"deep","parentId":"{a.id}","type":"user","role":"user","content":{opening}"leaf"{closing},' \
           '"timestamp":1}'

    with open(tmp_path / sid / "messages.jsonl", "a") as f:  # written by an older version, or by hand
        f.write(deep + "\n")
    with SessionStore(storage_dir=tmp_path) as store:
        def from_a_deep_stack(n: int) -> list[ss.Message]:  # as in any web framework
            return from_a_deep_stack(n - 1) if n else store.get_messages(sid)

        got = from_a_deep_stack(sys.getrecursionlimit() - 150)
        assert got[0] == a and (got[1].id, got[1].type) == ("deep", "damaged")
        after = store.append(sid, role="user", content="after")
        assert after.parent_id == "deep"  # the chain goes on through the placeholder
        # a context leaves the placeholder out (it raised "no context reader for 'damaged'")
        assert [m["content"] for m in store.build_context(sid)] == ["before", "after"]
        with pytest.raises(ss.InvalidMessage, match="damaged"):
            store.build_context(sid, strict=True)
        assert any("too deeply" in p.reason for p in store.check().problems)
        assert store.repair().ok
    result = subprocess.run([sys.executable, str(ROOT / "session_store.py"), "--dir", str(tmp_path), "history", "k"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "after" in result.stdout


def test_a_reload_from_a_deep_stack_reads_content_at_the_nesting_bound(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content=nested(ss.MAX_NESTING))
    with SessionStore(storage_dir=tmp_path) as store:
        def deep_call(n: int) -> list[ss.Message]:
            return deep_call(n - 1) if n else store.get_messages(sid)

        assert deep_call(sys.getrecursionlimit() - 3 * ss.MAX_NESTING)[0].content == nested(ss.MAX_NESTING)


# -- 5. one damaged record -----------------------------------------------------------------


# where: in the content; in the record's first byte ("{"); in the "id" key ("kd": still
# JSON, no id). The last two detached the 994 records after it (the head stayed at 5).
@pytest.mark.parametrize("where", ["content", "brace", "key"])
@pytest.mark.parametrize("backend", ["files", "sqlite"])
def test_one_flipped_bit_in_one_record_keeps_every_later_message_of_its_chain(
        tmp_path: Path, backend: str, where: str) -> None:
    def flip(record: bytearray) -> None:
        at = {"content": record.index(b"message number 5 ") + 3, "brace": 0, "key": 2}[where]
        record[at] ^= {"content": 0x80, "brace": 0x02, "key": 0x02}[where]

    if backend == "sqlite":
        from session_store_sqlite import SqliteStorage

        def make() -> SessionStore:
            return SessionStore(SqliteStorage(tmp_path / "s.db"), durable=False)
    else:
        def make() -> SessionStore:
            return SessionStore(storage_dir=tmp_path / "s", durable=False)
    with make() as store:
        sid = store.resolve("k")
        ids = [store.append(sid, role="user", content=f"message number {i} " + "y" * 40).id for i in range(1000)]
    if backend == "files":
        log = tmp_path / "s" / sid / "messages.jsonl"
        lines = log.read_bytes().split(b"\n")
        record = bytearray(lines[5])  # record 6
        flip(record)
        lines[5] = bytes(record)
        log.write_bytes(b"\n".join(lines))
    else:
        import sqlite3

        conn = sqlite3.connect(tmp_path / "s.db")
        text = conn.execute("SELECT record FROM messages WHERE seq = 5").fetchone()[0]
        if where == "content":
            damaged = text[:-1]  # a byte lost
        else:
            record = bytearray(text.encode())
            flip(record)
            damaged = record.decode()
        conn.execute("UPDATE messages SET record = ? WHERE seq = 5", (damaged,))
        conn.commit()
    with make() as store:
        history = store.get_linear_history(sid)
        assert [m.id for m in history] == ids  # the damaged one's id is read back: the chain is whole
        assert history[5].type == "damaged" and all(m.type == "user" for m in history[6:])
        assert store.get_head(sid) == ids[-1]
        report = store.check()
        assert len(report.problems) == 1 and report.problems[0].offset is not None
        repaired = store.repair()
        assert repaired.ok and len(repaired.fixed) == 1
        assert [m.id for m in store.get_linear_history(sid)] == ids  # no intact record moved aside
        store.append(sid, role="user", content="after the repair")
    with make() as store:
        assert len(store.get_linear_history(sid)) == 1001 and store.check().ok


# -- 6. reset ---------------------------------------------------------------------------------


def test_a_reset_crashing_at_any_step_never_moves_the_head_onto_a_marker_without_its_kept_messages(
        inner: tuple[FileSystem, str]) -> None:
    def setup(store: SessionStore) -> tuple[str, str]:
        sid = store.resolve("k")
        store.append(sid, role="system", content="You are kind.")
        for i in range(4):
            store.append(sid, role="user", content=f"m{i}")
        return sid, store.get_head(sid) or ""

    def verify(fresh: SessionStore, state: tuple[str, str], completed: bool) -> None:
        sid, old_head = state
        history = fresh.get_linear_history(sid)
        if fresh.get_head(sid) == old_head:
            assert not completed
            return
        assert [m.type for m in history] == ["reset", "system"]  # the marker and its kept system prompt
        assert history[1].content == "You are kind."

    at_every_step(inner, setup, lambda store, state: store.reset(state[0], keep_strategy="system", keep_count=1),
                  verify)


def test_an_auto_reset_crashing_at_any_step_acknowledges_nothing_half_done(inner: tuple[FileSystem, str]) -> None:
    config = ss.AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=1)

    def setup(store: SessionStore) -> tuple[str, list[str]]:
        store = SessionStore(store.storage, clock=FakeClock(), auto_reset=config)  # the same faulty storage
        sid = store.resolve("k")
        return sid, [store.append(sid, role="user", content=f"m{i}").content for i in range(3)]

    def operation(store: SessionStore, state: tuple[str, list[str]]) -> None:
        again = SessionStore(store.storage, clock=FakeClock(), auto_reset=config)
        again.append(state[0], role="user", content="over the limit")

    def verify(fresh: SessionStore, state: tuple[str, list[str]], completed: bool) -> None:
        contents = [m.content for m in fresh.get_linear_history(state[0])]
        if completed or contents[-1] == "over the limit":
            assert [c for c in contents if c is not None and not str(c).startswith("Session reset")] == [
                "m2", "over the limit"]
        else:
            assert contents == state[1]

    at_every_step(inner, setup, operation, verify)


# -- 7. imports ----------------------------------------------------------------------------------


def test_an_import_crashing_at_any_step_is_invisible_and_a_retry_succeeds(inner: tuple[FileSystem, str]) -> None:
    messages = [ss.Message(id=f"m{i}", parent_id=f"m{i - 1}" if i else None, type="user", role="user",
                           content=f"line {i}", timestamp=1000 + i) for i in range(20)]
    branches = [ss.Branch(name="main", head_id="m19", created_at=1, updated_at=2),
                ss.Branch(name="alt", head_id="m3", created_at=1, updated_at=1)]

    def verify(fresh: SessionStore, _: Any, completed: bool) -> None:
        if fresh.has_key("imported"):
            sid = fresh.resolve("imported")
            assert fresh.get_messages(sid) == messages and fresh.get_head(sid) == "m19"
            assert fresh.get_branch(sid, "alt") is not None
        else:
            assert not completed
            sid = fresh.import_session("imported", messages, branches=branches)  # the retry
            assert len(fresh.get_messages(sid)) == 20
        assert fresh.repair().ok

    at_every_step(inner, lambda store: None,
                  lambda store, _: store.import_session("imported", messages, branches=branches), verify)


# -- 8. a failed fdatasync ---------------------------------------------------------------------------


def test_after_a_failed_sync_its_record_is_not_in_the_tree_and_no_later_sync_acknowledges_it(
        inner: tuple[FileSystem, str]) -> None:
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1])
    sid = store.resolve("k")
    ok = store.append(sid, role="user", content="synced")
    faulty.fail_next_sync()
    with pytest.raises(ss.StorageError, match="were removed"):
        store.append(sid, role="user", content="lost to the disk")
    assert store.get_messages(sid) == [ok]  # the failed record is not silently part of the tree
    after = store.append(sid, role="user", content="after")
    assert after.parent_id == ok.id
    store.close()
    with contextlib_closing(reopen(inner)) as fresh:
        assert [m.content for m in fresh.get_messages(sid)] == ["synced", "after"]


class _WriterBetween(FaultyFileSystem):
    """Before the armed sync fails, another store appends: records of another writer
    then follow the failed ones, so they cannot be cut off."""

    other: SessionStore | None = None
    sid = ""

    def sync(self, path: str) -> None:
        if self._failures.get("sync") and self.other is not None and path.endswith("messages.jsonl"):
            other, self.other = self.other, None
            other.append(self.sid, role="user", content="another writer's")
        super().sync(path)


def test_after_a_failed_sync_that_cannot_be_undone_the_log_refuses_writes_until_reopened(
        inner: tuple[FileSystem, str]) -> None:
    faulty = _WriterBetween(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1])
    sid = store.resolve("k")
    store.append(sid, role="user", content="synced")
    faulty.sid, faulty.other = sid, SessionStore(faulty, storage_dir=inner[1], durable=False)
    faulty.fail_next_sync()
    with pytest.raises(ss.StorageError, match="refuses"):
        store.append(sid, role="user", content="in doubt")
    with pytest.raises(ss.StorageError, match="refuses"):
        store.append(sid, role="user", content="refused")
    store.close()
    with contextlib_closing(reopen(inner)) as fresh:
        fresh.append(sid, role="user", content="a reopened store writes again")
        assert "refused" not in [m.content for m in fresh.get_messages(sid)]


def test_concurrent_appends_waiting_on_a_failed_group_sync_all_fail(tmp_path: Path) -> None:
    class SlowFailingSync(RealFileSystem):
        armed = False
        started = threading.Event()

        def sync(self, path: str) -> None:
            if self.armed and path.endswith("messages.jsonl"):
                self.armed = False
                self.started.set()
                threading.Event().wait(0.2)  # others write and queue behind this sync meanwhile
                raise OSError(errno.EIO, "injected")
            super().sync(path)

    fs = SlowFailingSync()
    store = SessionStore(fs, storage_dir=tmp_path)
    sid = store.resolve("k")
    store.append(sid, role="user", content="before")
    fs.armed = True
    outcomes: list[str] = []

    def append(i: int) -> None:
        try:
            store.append(sid, role="user", content=f"t{i}")
            outcomes.append("ok")
        except ss.StorageError:
            outcomes.append("failed")

    first = threading.Thread(target=append, args=(0,))
    first.start()
    fs.started.wait(10)
    others = [threading.Thread(target=append, args=(i,)) for i in range(1, 4)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join()
    acknowledged = outcomes.count("ok")
    store.close()
    with SessionStore(storage_dir=tmp_path) as fresh:
        assert len(fresh.get_messages(sid)) == 1 + acknowledged  # nothing acknowledged over the failed sync


# -- 9 and 10. a log rewritten under a running handle ------------------------------------------------


class _CountingSyncs(RealFileSystem):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def sync(self, path: str) -> None:
        if path.endswith("messages.jsonl"):
            self.syncs += 1
        super().sync(path)


def _damage_a_line(log: Path) -> None:
    with open(log, "ab") as f:
        f.write(b"damaged line\n")


def test_every_durable_append_is_synced_after_another_handle_repaired_the_log(tmp_path: Path) -> None:
    fs = _CountingSyncs()
    a = SessionStore(fs, storage_dir=tmp_path)
    sid = a.resolve("k")
    for i in range(40):
        a.append(sid, role="user", content=f"before {i} " + "x" * 2000)
    log = tmp_path / sid / "messages.jsonl"
    data = bytearray(log.read_bytes())
    for line_start in [0, *[i + 1 for i, c in enumerate(data) if c == 10][:-1]][5:]:
        data[line_start + 1] = ord("X")  # 35 records damaged: the repair shrinks the log a lot
    log.write_bytes(bytes(data))
    with SessionStore(storage_dir=tmp_path) as b:
        assert b.repair().ok  # rewrites the log: a new, much shorter file
    fs.syncs = 0
    for i in range(40):
        a.append(sid, role="user", content=f"after {i}")  # ends below where a's last sync reached
    assert fs.syncs == 40  # each one synced: a stale "synced up to byte N" would skip them
    a.close()


def test_a_running_handle_notices_a_log_another_handle_rewrote_and_never_forks_the_chain(tmp_path: Path) -> None:
    a = SessionStore(storage_dir=tmp_path)
    sid = a.resolve("k")
    for i in range(5):
        a.append(sid, role="user", content=f"m{i}")
    _damage_a_line(tmp_path / sid / "messages.jsonl")
    a.get_messages(sid)  # a has read the damaged line too
    with SessionStore(storage_dir=tmp_path) as b:
        assert b.repair().ok  # same size or larger: "the file shrank" cannot tell
        for i in range(5):
            b.append(sid, role="user", content=f"b{i}")
        expected, history = b.get_messages(sid), b.get_linear_history(sid)
    assert a.get_messages(sid) == expected
    last = a.append(sid, role="user", content="a again")
    assert last.parent_id == expected[-1].id
    assert a.get_linear_history(sid) == [*history, last]
    a.close()


# -- 11. opening -----------------------------------------------------------------------------------


def test_a_store_folder_may_hold_unrelated_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("notes")
    (tmp_path / "Makefile").write_text("all:")
    (tmp_path / "data").mkdir()
    (tmp_path / "0123abcd").mkdir()  # named like a session id, but not one of ours
    (tmp_path / "0123abcd" / "mine.txt").write_text("keep me")
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="x")
        assert store.get_all_session_ids() == [sid]
        assert store.check().ok and store.repair().ok
    assert (tmp_path / "0123abcd" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("command", ["ls", "check", "stats", "tree k", "history k"])
def test_reading_commands_refuse_a_folder_that_is_not_a_store_and_write_nothing(tmp_path: Path, command: str) -> None:
    (tmp_path / "README").write_text("not a store")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, str(ROOT / "session_store.py"), "--dir", str(tmp_path), *command.split()],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not a session store" in result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_reading_an_empty_or_missing_folder_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        with SessionStore(storage_dir=folder) as store:
            assert store.get_all_session_ids() == [] and not store.has_key("k") and store.check().ok
    assert list(empty.iterdir()) == [] and not (tmp_path / "missing").exists()


# -- 12. leftovers ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, for real ENOSPC (needs root; skipped with a message otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_loses_nothing_acknowledged_and_leaves_no_temp_file(tiny_disk: Path) -> None:
    store = SessionStore(storage_dir=tiny_disk / "s")
    acknowledged: dict[str, list[str]] = {}
    failures = 0
    for n in range(400):
        try:
            sid = store.resolve(f"k{n % 7}")
            acknowledged.setdefault(sid, []).append(store.append(sid, role="user", content="x" * 20_000).id)
            if n % 5 == 0:
                store.create_branch(sid, f"b{n}", acknowledged[sid][-1])
            if n % 11 == 0:
                store.acquire_lock(sid, "w")
                store.release_lock(sid, "w")
        except ss.StorageError as e:
            assert e.errno == errno.ENOSPC, e  # "free space and retry", never EIO ("the disk is failing")
            failures += 1
            if failures > 30:
                break
    assert failures > 0, "the disk never filled"
    try:
        store.close()
    except ss.StorageError:
        pass  # closing on a full disk may fail to save a cache: never a raw OSError
    leftovers = [p for p in (tiny_disk / "s").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []  # a failed atomic write removes its temp file, even on ENOSPC
    with SessionStore(storage_dir=tiny_disk / "s") as fresh:
        for sid, ids in acknowledged.items():
            assert set(ids) <= {m.id for m in fresh.get_messages(sid)}
        assert fresh.repair().ok


def test_creations_on_a_real_full_disk_fail_with_enospc_and_leave_no_folder_behind(tiny_disk: Path) -> None:
    """A session's folder is built under a temporary name and renamed into place: on a
    full disk a creation fails with ENOSPC, leaves no staging folder, and every session
    acknowledged before is found by its key afterwards."""
    store = SessionStore(storage_dir=tiny_disk / "s")
    ballast = tiny_disk / "ballast"
    with contextlib.suppress(OSError), open(ballast, "wb") as f:  # most of the disk, so keys fill the rest
        f.write(b"\0" * (1536 * 1024))
    acknowledged: dict[str, str] = {}
    failures = 0
    for n in range(5000):
        try:
            acknowledged[f"k{n}"] = store.resolve(f"k{n}")
        except ss.StorageError as e:
            assert e.errno == errno.ENOSPC, e
            failures += 1
            if failures > 20:
                break
    assert failures > 0, "the disk never filled"
    assert [p for p in (tiny_disk / "s").iterdir() if p.name.startswith(".new-")] == []
    with contextlib.suppress(ss.StorageError):
        store.close()
    ballast.unlink()
    with SessionStore(storage_dir=tiny_disk / "s") as fresh:
        assert {k: fresh.resolve(k, create=False) for k in acknowledged} == acknowledged
        assert fresh.repair().ok


def test_a_full_disk_under_sqlite_is_enospc_and_loses_nothing_acknowledged(tiny_disk: Path) -> None:
    from session_store_sqlite import SqliteStorage

    store = SessionStore(SqliteStorage(str(tiny_disk / "s.db")))
    sid = store.resolve("k")
    acknowledged: list[str] = []
    errnos: set[int | None] = set()
    for _ in range(400):
        try:
            acknowledged.append(store.append(sid, role="user", content="x" * 20_000).id)
        except ss.StorageError as e:
            errnos.add(e.errno)
            if len(errnos) and len(acknowledged) > 10:
                break
    assert errnos == {errno.ENOSPC}, errnos
    store.close()
    with SessionStore(SqliteStorage(str(tiny_disk / "s.db"))) as fresh:
        assert [m.id for m in fresh.get_messages(sid)][:len(acknowledged)] == acknowledged


def test_a_killed_atomic_write_leaves_a_temp_file_repair_removes_but_not_one_being_written(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
    killed = tmp_path / sid / ".stats.json.tmp-00112233aabbccdd"
    killed.write_text("{")
    live = tmp_path / sid / ".lock.json.tmp-0f0f0f0f0f0f0f0f"
    live.write_text("")
    import fcntl
    with open(live, "rb") as held:  # another process writing it right now holds its flock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with SessionStore(storage_dir=tmp_path) as store:
            fixed = store.repair().fixed
    assert fixed == [f"{killed}: the temp file of an interrupted write; removed"]
    assert not killed.exists() and live.exists()


def test_no_lock_or_descriptor_outlives_its_file(inner: tuple[FileSystem, str]) -> None:
    fs, directory = inner
    with SessionStore(fs, storage_dir=directory, durable=False) as store:
        for i in range(300):
            sid = store.resolve(f"k{i}")
            store.append(sid, role="user", content="x")
            store.acquire_lock(sid, "o")
            store.release_lock(sid, "o")
            store.delete_session(sid)
        held = fs._locks if isinstance(fs, InMemoryFileSystem) else fs._fds  # type: ignore[attr-defined]
        assert held and not [p for p in held if p.endswith(".jsonl")]  # the store's own files are still there
        if isinstance(fs, InMemoryFileSystem):
            assert set(fs._locks) <= set(fs._files)
        assert len(store._sessions) == 0


def test_the_cache_keeps_to_its_budget_and_close_releases_everything(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path, durable=False, cache_sessions=10, cache_bytes=10_000) as store:
        ids = [store.resolve(f"k{i}") for i in range(50)]
        for sid in ids:
            store.append(sid, role="user", content="x" * 500)
            store.get_messages(sid)
            assert len(store._sessions) <= 10 and store._cached_bytes <= 10_000 + 1_000
        with store.lock(ids[0], "me"):  # a leased session stays cached while others come and go
            for sid in ids[1:]:
                store.get_messages(sid)
            assert ids[0] in store._sessions
        assert [len(store.get_messages(sid)) for sid in ids] == [1] * 50  # evicted ones reload
    assert len(store._sessions) == 0 and store._cached_bytes == 0


def test_close_gives_the_freed_memory_back_after_a_large_cache(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # (glibc keeps freed heap memory unless told: after reading 100,000 sessions, close()
    # let 12-38% of the growth go back to the OS; malloc_trim lets it all go)
    assert ss._find_malloc_trim() == (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    trims: list[int] = []
    monkeypatch.setattr(ss, "_malloc_trim", trims.append)
    monkeypatch.setattr(ss, "_TRIM_AFTER", 20_000)
    monkeypatch.setitem(ss._TUNED, "trim_memory", True)  # what tune_process() turns on
    with SessionStore(storage_dir=tmp_path, durable=False) as writer:
        ids = [writer.resolve(f"k{i}") for i in range(30)]
        for sid in ids:
            writer.append_many(sid, [{"role": "user", "content": "x" * 100}] * 10)
    trims.clear()  # (the writer cached what it wrote: not what this test counts)
    small = SessionStore(storage_dir=tmp_path)
    small.get_messages(ids[0])
    small.close()
    assert trims == []  # a store opened per request never pays for it
    large = SessionStore(storage_dir=tmp_path)
    for sid in ids:
        large.get_messages(sid)
    large.close()
    assert trims == [0]


def test_by_default_close_leaves_the_allocator_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """malloc_trim is process-wide: only tune_process() lets a store call it."""
    trims: list[int] = []
    monkeypatch.setattr(ss, "_malloc_trim", trims.append)
    monkeypatch.setattr(ss, "_TRIM_AFTER", 0)
    with SessionStore(storage_dir=tmp_path, durable=False) as store:
        store.get_messages(store.resolve("k"))
    assert trims == [] and ss._TUNED == {"pause_gc": False, "trim_memory": False}


class _CountingSessions(collections.OrderedDict):  # type: ignore[type-arg]
    """The store's cache, counting the entries its walks visit."""

    visited = 0

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        for pair in super().items():
            type(self).visited += 1
            yield pair


def test_a_full_cache_evicts_without_walking_everything_it_holds() -> None:
    # (the eviction copied the whole cache into a list for each session it let in: with
    # the default 4,096 sessions cached, reading a new session cost 5 ms instead of 0.5)
    with SessionStore(InMemoryFileSystem(), storage_dir="/s", durable=False, cache_sessions=500) as store:
        ids = [store.resolve(f"k{i}") for i in range(700)]
        for sid in ids[:500]:
            store.get_messages(sid)
        store._sessions = _CountingSessions(store._sessions)
        _CountingSessions.visited = 0
        for sid in ids[500:]:
            store.get_messages(sid)
        assert len(store._sessions) == 500 and set(store._sessions) == set(ids[200:])
        assert _CountingSessions.visited <= 5 * 200, _CountingSessions.visited  # 100,200 before


@pytest.mark.parametrize("backend", ["files", "sqlite", "postgres"])
def test_close_releases_what_the_store_and_its_storage_held_per_session(backend: str, tmp_path: Path) -> None:
    # (RSS only falls when whole allocator arenas empty: a few bytes kept per session,
    # scattered among the freed ones, keep them all. The storages kept what they had
    # last read of each session, file identities or generations, until the process ended.)
    # (A fresh storage object reads: one that wrote the sessions already knew them.)
    storage = storage_of(backend, tmp_path)
    with SessionStore(storage, durable=False) as store:
        for i in range(300):
            store.append(store.resolve(f"k{i}"), role="user", content=f"message {i}")
    store = SessionStore(_same_place(storage), durable=False)
    ids = [store.resolve(f"k{i}") for i in range(300)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for sid in ids:
            store.get_messages(sid)
        grown = tracemalloc.get_traced_memory()[0] - base
        store.close()
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert left < grown * 0.02 and left < 300 * 20, (left, grown)  # under 20 bytes a session


def _same_place(storage: Any) -> Any:
    """A new storage object on the data of ``storage``."""
    if isinstance(storage, ss.JsonlStorage):
        return ss.JsonlStorage(RealFileSystem(), storage.directory)
    if type(storage).__name__ == "SqliteStorage":
        return type(storage)(storage.path)
    import pg

    return type(storage)(pg.DSN, schema=storage.schema)


# -- append_many: a chain in one call, all or none, one sync --------------------------------

CHAIN: list[dict[str, Any]] = [
    {"role": "user", "content": "question"}, {"role": "assistant", "content": "answer", "metadata": {"n": 1}},
    {"role": "tool", "content": "result", "tool_call_id": "c1"}]


def test_a_chain_appended_crashing_at_any_step_leaves_all_of_it_or_none(inner: tuple[FileSystem, str]) -> None:
    # (files: the chain is one write, its records but the last marked; SQLite and
    # PostgreSQL commit it at once). Before: each record was a write, a prefix survived.
    def setup(store: SessionStore) -> tuple[str, list[ss.Message]]:
        sid = store.resolve("k")
        store.append(sid, role="system", content="first")
        return sid, store.get_messages(sid)

    def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], completed: bool) -> None:
        sid, before = state
        assert fresh.get_messages(sid) == fresh.get_linear_history(sid)  # before any repair too
        assert len(fresh.get_messages(sid)) in (1, 1 + len(CHAIN))
        assert fresh.repair().ok and fresh.check().ok  # (an unfinished chain goes to the quarantine)
        history = fresh.get_linear_history(sid)
        assert history[:1] == before and fresh.get_messages(sid) == history
        assert [(m.role, m.content) for m in history[1:]] in ([], [(x["role"], x["content"]) for x in CHAIN])
        assert len(history) == 1 + len(CHAIN) or not completed

    assert at_every_step(inner, setup, lambda store, state: store.append_many(state[0], CHAIN), verify) >= 1


def test_a_chain_cut_at_any_byte_is_never_seen_and_the_next_writer_sets_it_aside(
        inner: tuple[FileSystem, str]) -> None:
    fs, directory = inner
    unfinished = 0
    for cut in itertools.count():
        data = (InMemoryFileSystem() if isinstance(fs, InMemoryFileSystem) else fs, f"{directory}-{cut}")
        faulty = FaultyFileSystem(data[0])
        store = SessionStore(faulty, storage_dir=data[1], clock=FakeClock())
        sid = store.resolve("k")
        first = store.append(sid, role="system", content="first")
        reader = reopen(data)
        assert reader.get_messages(sid) == [first]
        faulty.crash_after(cut)
        whole = None
        with contextlib.suppress(SimulatedCrash):
            whole = store.append_many(sid, CHAIN)
        # Readers of the files as the crash left them (one that had read before, one
        # new): the first message alone, or the whole chain after it.
        for fresh in (reader, reopen(data)):
            got = fresh.get_messages(sid)
            assert got == ([first] if whole is None else [first, *whole])
            meta = fresh.get_metadata(sid)
            assert meta is not None and meta.message_count == len(got)
        if whole is not None:
            reader.close()
            assert unfinished >= 2  # cuts after the first record, and after the second
            return
        found = [p for p in reader.check().problems if p.reason.startswith("unfinished chain")]
        if found:
            unfinished += 1
            log = found[0].file
            # The next writer cuts the chain off, into the quarantine: never acknowledged,
            # and never dropped unseen.
            with contextlib_closing(reopen(data)) as writer:
                again = writer.append(sid, role="user", content="again")
                assert writer.get_messages(sid) == [first, again] == reader.get_messages(sid)
                assert b'"question"' in data[0].read(log + ".quarantine") and writer.check().ok
        reader.close()
        assert cut < 2000


def test_a_chain_that_auto_resets_part_way_crashing_at_any_step_leaves_whole_parts(
        inner: tuple[FileSystem, str]) -> None:
    # The reset's move event is written after the records it names: the chain is
    # written in two, [a, the reset's marker and copy, b] then [c]; a crash leaves
    # nothing, the first part, or both, never some records of a part.
    config = ss.AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=1)
    seen: set[tuple[int, tuple[str, ...]]] = set()

    def setup(store: SessionStore) -> str:
        store = SessionStore(store.storage, clock=FakeClock(), auto_reset=config)  # the same faulty storage
        sid = store.resolve("k")
        for i in range(2):
            store.append(sid, role="user", content=f"m{i}")
        return sid

    def operation(store: SessionStore, sid: str) -> None:
        again = SessionStore(store.storage, clock=FakeClock(), auto_reset=config)
        assert again.append_many(sid, [{"role": "user", "content": x} for x in "abc"])[-1].content == "c"

    def verify(fresh: SessionStore, sid: str, completed: bool) -> None:
        count = len(fresh.get_messages(sid))
        history = tuple(str(m.content) for m in fresh.get_linear_history(sid)
                        if not str(m.content).startswith("Session reset"))
        seen.add((count, history))
        assert (count, history) in {(2, ("m0", "m1")), (6, ("m0", "m1", "a")), (6, ("a", "b")),
                                    (7, ("a", "b", "c"))}
        assert count == 7 or not completed

    at_every_step(inner, setup, operation, verify)
    assert {count for count, _ in seen} == {2, 6, 7}


@pytest.mark.parametrize("landed", [None, 0, 40, 150])
def test_a_chain_whose_write_fails_part_way_leaves_nothing(inner: tuple[FileSystem, str], landed: int | None) -> None:
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(faulty, storage_dir=inner[1], clock=FakeClock())
    sid = store.resolve("k")
    first = store.append(sid, role="system", content="first")
    if landed is None:
        faulty.fail_next("append", errno.ENOSPC)
    else:  # a prefix of the chain's write lands, then the write fails
        faulty.short_next_append(landed)
    with pytest.raises(ss.StorageError):
        store.append_many(sid, CHAIN)
    assert store.get_messages(sid) == [first] and store.get_head(sid) == first.id
    with contextlib_closing(reopen(inner)) as fresh:
        assert fresh.get_messages(sid) == [first] and fresh.check().ok
    written = store.append_many(sid, CHAIN)  # and the store goes on
    assert [m.parent_id for m in written] == [first.id, written[0].id, written[1].id]
    assert store.get_head(sid) == written[-1].id and written[1].fields == {"metadata": {"n": 1}}


class _RecordByRecord(ss.JsonlStorage):
    """A storage without transactions that keeps Storage's default append_messages
    (one append_message per record) and undoes failed writes with its rollback."""

    append_messages = ss.Storage.append_messages


@pytest.mark.parametrize("before", [0, 1])
def test_a_chain_failing_part_way_on_a_storage_that_rolls_back_leaves_nothing(
        inner: tuple[FileSystem, str], before: int) -> None:
    # Before: with nothing written before the chain, the failed scope's position had
    # not moved (the default loop's positions were lost with its error), so nothing
    # was rolled back and the chain's first record stayed.
    faulty = FaultyFileSystem(inner[0])
    store = SessionStore(_RecordByRecord(faulty, inner[1]), clock=FakeClock())
    sid = store.resolve("k")
    kept = [store.append(sid, role="system", content=f"kept {i}") for i in range(before)]
    faulty.fail_next("append", errno.ENOSPC, after=1)
    with pytest.raises(ss.StorageError):
        store.append_many(sid, CHAIN)
    assert store.get_messages(sid) == kept
    with contextlib_closing(reopen(inner)) as fresh:
        assert fresh.get_messages(sid) == kept and fresh.check().ok


def test_a_chain_that_auto_resets_and_then_fails_leaves_none_of_its_parts(inner: tuple[FileSystem, str]) -> None:
    faulty = FaultyFileSystem(inner[0])
    config = ss.AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=1)
    store = SessionStore(faulty, storage_dir=inner[1], clock=FakeClock(), auto_reset=config)
    sid = store.resolve("k")
    faulty.fail_next("append", errno.ENOSPC, after=2)  # the first part and the move land; the last part fails
    with pytest.raises(ss.StorageError):
        store.append_many(sid, [{"role": "user", "content": x} for x in "abcde"])
    assert faulty.ops and store.get_messages(sid) == []
    with contextlib_closing(reopen(inner)) as fresh:
        assert fresh.get_messages(sid) == [] and fresh.check().ok


def test_a_bad_message_anywhere_in_a_chain_writes_nothing(inner: tuple[FileSystem, str]) -> None:
    with SessionStore(inner[0], storage_dir=inner[1]) as store:
        sid = store.resolve("k")
        for bad in ([*CHAIN, {"role": "user"}], [*CHAIN, {"role": 3, "content": "x"}], [*CHAIN, "text"],
                    [*CHAIN, {"role": "user", "content": {1: "non-str key"}}],
                    [*CHAIN, {"role": "user", "content": "x", "parent_id": None}]):
            with pytest.raises(ss.InvalidMessage):
                store.append_many(sid, bad)  # type: ignore[arg-type]
        with pytest.raises(ss.MessageNotFound):
            store.append_many(sid, CHAIN, parent_id="nowhere")
        assert store.get_messages(sid) == [] and store.append_many(sid, []) == []


@pytest.mark.parametrize("backend", ["memory", "files", "sqlite", "postgres"])
def test_a_chain_refused_part_way_leaves_nothing_on_every_backend(tmp_path: Path, backend: str) -> None:
    # The third message's id is taken (checked as it is written): the two before it go too.
    with SessionStore(storage_of(backend, tmp_path)) as store:
        sid = store.resolve("k")
        taken = store.append(sid, role="user", content="taken", id="taken")
        events: list[Any] = []
        store.subscribe(lambda event: events.append(event.data) if event.type == "message.added" else None)
        with pytest.raises(ss.DuplicateMessage):
            store.append_many(sid, [*CHAIN[:2], {"role": "user", "content": "other", "id": "taken"}])
        assert store.get_messages(sid) == [taken] and store.get_head(sid) == "taken" and events == []
        assert store.get_metadata(sid).message_count == 1  # type: ignore[union-attr]
        written = store.append_many(sid, CHAIN[:2])
        assert [m.content for m in store.get_linear_history(sid)] == ["taken", "question", "answer"]
        assert events == written and store.check().ok
