"""What is particular to the SQLite backend (the shared contract is in test_conformance)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import session_store_sqlite
from session_store import DuplicateMessage, JsonlStorage, SessionStore, StorageError
from session_store_conformance import FaultyStorage
from session_store_sqlite import _RETRY, SCHEMA_VERSION, SqliteStorage


def open_db(path: Path, **options: object) -> SessionStore:
    store = SessionStore(SqliteStorage(path), **options)  # type: ignore[arg-type]
    store.init()
    return store


def test_schema_is_created_once_with_its_version(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    for _ in range(2):  # opening again changes nothing
        with open_db(db) as store:
            store.append(store.resolve("k"), role="user", content="hi")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM session_store_meta WHERE name = 'schema_version'").fetchall() == [
        (str(SCHEMA_VERSION),)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with open_db(db) as store:
        store.resolve("k")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE session_store_meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    before = db.read_bytes()
    with pytest.raises(StorageError, match="schema version"):
        open_db(db)
    assert db.read_bytes() == before


class SyncSpy:
    """Stands in for the backend's ``fdatasync`` of the files under ``root`` (others'
    pass through: threads a test before left behind may still sync): records what each
    sync found in the file it synced (its name and its bytes), and can hold syncs until
    released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, *, fail: OSError | None = None) -> None:
        self.root = f"{root}/"
        self.calls: list[tuple[str, bytes]] = []
        self.fail = fail
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Semaphore(0)  # released once per sync begun
        self._real = session_store_sqlite._fdatasync
        monkeypatch.setattr(session_store_sqlite, "_fdatasync", self)

    def __call__(self, fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if not name.startswith(self.root):
            return self._real(fd)
        self.calls.append((name, os.pread(fd, os.fstat(fd).st_size, 0)))
        self.inside.release()
        self.hold.wait()
        if self.fail is not None:
            raise self.fail
        self._real(fd)


def test_a_durable_write_returns_after_a_sync_of_the_wal_that_holds_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SyncSpy(monkeypatch, tmp_path)
    storage = SqliteStorage(tmp_path / "s.db")
    with SessionStore(storage) as store:
        sid = store.resolve("k")
        for text in ("first words", "second words"):
            spy.calls.clear()
            store.append(sid, role="user", content=text)
            assert [name for name, _ in spy.calls] == [f"{tmp_path}/s.db-wal"]  # one sync, of the WAL
            assert text.encode() in spy.calls[0][1]  # begun after the commit: what it synced holds the record
            with storage._using("test") as conn:  # the commit itself synced nothing
                assert conn.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_a_store_opened_not_durable_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SyncSpy(monkeypatch, tmp_path)
    with SessionStore(SqliteStorage(tmp_path / "s.db"), durable=False) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="x")
        with store.lock(sid, "w"):
            store.append(sid, role="assistant", content="y")
    assert spy.calls == []


def test_writers_waiting_for_a_sync_share_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: while one writer syncs, others commit (the write lock is free) and
    wait; one sync then covers them all, and none returns before a sync covering it."""
    storage = SqliteStorage(tmp_path / "s.db")
    store = SessionStore(storage)
    sids = [store.resolve(f"k{i}") for i in range(3)]
    spy = SyncSpy(monkeypatch, tmp_path)
    spy.hold.clear()
    done: list[int] = []

    def append(i: int) -> None:
        store.append(sids[i], role="user", content=f"text {i}")
        done.append(i)

    base = storage._wal.written  # transactions committed so far (the schema, the sessions)
    first = threading.Thread(target=append, args=(0,))
    first.start()
    assert spy.inside.acquire(timeout=60)  # the first writer is syncing, its sync held
    others = [threading.Thread(target=append, args=(i,)) for i in (1, 2)]
    for t in others:
        t.start()
    while storage._wal.written < base + 3:  # both committed while the first sync is held
        time.sleep(0.001)
    assert done == [] and len(spy.calls) == 1
    spy.hold.set()
    for t in (first, *others):
        t.join()
    assert sorted(done) == [0, 1, 2]
    assert len(spy.calls) == 2  # the second sync covered both late writers
    assert b"text 1" in spy.calls[1][1] and b"text 2" in spy.calls[1][1]
    store.close()


def test_a_failed_sync_fails_the_write_and_every_later_one_until_reopened(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "s.db"
    store = SessionStore(SqliteStorage(db))
    sid = store.resolve("k")
    store.append(sid, role="user", content="kept")
    spy = SyncSpy(monkeypatch, tmp_path, fail=OSError(errno.EIO, "Input/output error"))
    with pytest.raises(StorageError, match="could not sync"):
        store.append(sid, role="user", content="unknown fate")
    spy.fail = None
    calls = len(spy.calls)
    with pytest.raises(StorageError, match="writes nothing more until it is opened again"):
        store.append(sid, role="user", content="refused")
    with pytest.raises(StorageError, match="writes nothing more"):
        store.resolve("another key")
    assert len(spy.calls) == calls  # refused before writing anything
    store.close()
    with SessionStore(SqliteStorage(db)) as again:
        texts = [m.content for m in again.get_messages(sid)]
        assert texts[0] == "kept" and "refused" not in texts
        assert again.resolve("another key", create=False) is None
        again.append(sid, role="user", content="after")  # a new storage writes again
        assert again.get_messages(sid)[-1].content == "after"


def test_the_kit_injects_no_failed_sync_around_a_storage_that_cannot_take_records_back(tmp_path: Path) -> None:
    """A failed sync of SQLite leaves what it covered (committed, maybe read by others,
    never acknowledged) and refuses writes until reopened (the test above, with a real
    failing fdatasync). A failure raised around it by the conformance kit's
    FaultyStorage left the records and went on writing, which no SQLite storage does:
    its state machine then found an append that raised yet stood. The kit injects
    failed syncs only where they take back what they covered."""
    faulty = FaultyStorage(SqliteStorage(tmp_path / "s.db"))
    assert not SqliteStorage(tmp_path / "t.db").sync_takes_back and not faulty.sync_takes_back
    assert "sync" not in faulty.OPS and "commit" in faulty.OPS
    with pytest.raises(ValueError, match="unknown write operation 'sync'"):
        faulty.fail_next("sync")
    files = FaultyStorage(JsonlStorage(directory=str(tmp_path / "files")))
    assert files.sync_takes_back and "sync" in files.OPS  # files cut a failed sync's records off


def test_a_reserved_range_of_fencing_tokens_is_synced_before_the_lease_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(SqliteStorage(tmp_path / "s.db"))
    sid = store.resolve("k")
    spy = SyncSpy(monkeypatch, tmp_path)
    first = store.acquire_lock(sid, "a")
    assert first.acquired and len(spy.calls) == 1  # a new range of tokens: synced
    assert b'"reserved"' in spy.calls[0][1]
    store.release_lock(sid, "a")
    spy.calls.clear()
    second = store.acquire_lock(sid, "b")  # a token from the range: no sync
    assert second.acquired and second.token == (first.token or 0) + 1 and spy.calls == []
    store.close()


def test_an_acquire_whose_sync_failed_leaves_the_lease_free_for_other_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new range of tokens is synced when the scope ends, after the record was
    committed: the failed acquire gives up its proof of life, so the record's holder
    is seen gone."""
    db = tmp_path / "s.db"
    store = SessionStore(SqliteStorage(db), lock_timeout_ms=3_600_000)
    sid = store.resolve("k")
    SyncSpy(monkeypatch, tmp_path, fail=OSError(errno.EIO, "Input/output error"))
    with pytest.raises(StorageError, match="could not sync"):
        store.acquire_lock(sid, "told-no")
    other = subprocess.run([sys.executable, "-c", (
        "import sys; from session_store import SessionStore; from session_store_sqlite import SqliteStorage\n"
        "with SessionStore(SqliteStorage(sys.argv[1])) as s:\n"
        "    r = s.acquire_lock(sys.argv[2], 'another')\n"
        "    print(r.acquired, r.holder_id)\n"), str(db), sid], capture_output=True, text=True, check=True)
    assert other.stdout.split() == ["True", "another"]
    store.close()


def test_a_storage_opened_again_after_a_failed_sync_writes_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SqliteStorage(tmp_path / "s.db")
    store = SessionStore(storage)
    sid = store.resolve("k")
    spy = SyncSpy(monkeypatch, tmp_path, fail=OSError(errno.EIO, "Input/output error"))
    with pytest.raises(StorageError):
        store.append(sid, role="user", content="unknown fate")
    store.close()
    spy.fail = None
    with SessionStore(storage) as again:  # the same storage object, opened again
        again.append(sid, role="user", content="after")
        assert again.get_messages(sid)[-1].content == "after"


def test_a_new_wal_file_has_its_directory_entry_synced_before_a_write_is_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_fsync = os.fsync
    spy = SyncSpy(monkeypatch, tmp_path)

    def fsync(fd: int) -> None:
        order.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def datasync(fd: int) -> None:
        order.append("fdatasync " + os.readlink(f"/proc/self/fd/{fd}"))
        spy(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(session_store_sqlite, "_fdatasync", datasync)
    with SessionStore(SqliteStorage(tmp_path / "s.db")) as store:
        store.resolve("k")
    assert order[:2] == [f"fsync {tmp_path}", f"fdatasync {tmp_path}/s.db-wal"]


def test_a_database_link_moved_under_an_open_storage_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    storage = SqliteStorage(link / "s.db")
    with SessionStore(storage) as store:
        store.append(store.resolve("k"), role="user", content="in a")
        link.unlink()
        link.symlink_to(tmp_path / "b")
        with pytest.raises(StorageError, match="now names"):
            storage._connect()  # a connection opened later (another thread's): the WAL synced would be a's


@contextlib.contextmanager
def write_lock_held(db: Path, seconds: float) -> Iterator[None]:
    """Another connection holds the database's write lock for ``seconds`` (from the block's start)."""
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    ready.wait()
    try:
        yield
    finally:
        holder.join()


def test_a_busy_database_is_waited_for_within_the_timeout(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with SessionStore(SqliteStorage(db, timeout=10)) as store:
        sid = store.resolve("k")
        with write_lock_held(db, 0.3):
            store.append(sid, role="user", content="after the wait")
        assert [m.content for m in store.get_messages(sid)] == ["after the wait"]


def test_a_database_busy_past_the_timeout_is_a_storage_error_and_nothing_is_written(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with SessionStore(SqliteStorage(db, timeout=0.1)) as store:
        sid = store.resolve("k")
        with write_lock_held(db, 1.0), pytest.raises(StorageError, match="locked"):
            store.append(sid, role="user", content="lost?")
        assert store.get_messages(sid) == []
        store.append(sid, role="user", content="later")
        assert [m.content for m in store.get_messages(sid)] == ["later"]


def test_a_writer_waiting_for_the_database_looks_again_at_a_short_fixed_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's busy handler backs off to 100 ms sleeps, so a process writing back to
    # back kept the write lock (and its session's lease) while the others slept: 75-88%
    # of the turns among 4 processes. A waiter now looks again every _RETRY seconds.
    db = tmp_path / "s.db"
    with SessionStore(SqliteStorage(db, timeout=2)) as store:
        sid = store.resolve("k")
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another connection writes
        naps: list[float] = []

        def nap(seconds: float) -> None:
            naps.append(seconds)
            if len(naps) == 50:
                other.execute("COMMIT")  # ... and is done: the waiter gets in at its next look

        monkeypatch.setattr(time, "sleep", nap)
        store.append(sid, role="user", content="after 50 looks")
        other.close()
        assert naps == [_RETRY] * 50
        assert [m.content for m in store.get_messages(sid)] == ["after 50 looks"]


def test_bad_rows_are_reported_and_quarantined(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with open_db(db) as store:
        sid = store.resolve("k")
        a = store.append(sid, role="user", content="a")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO messages VALUES (?, 1, 'bad', 'not json')", (sid,))
    conn.execute("INSERT INTO messages VALUES (?, 2, 'orphan', ?)",
                 (sid, '{"id":"orphan","parentId":"nope","type":"user","role":"user","content":"o","timestamp":1}'))
    conn.commit()
    with open_db(db) as store:
        got = store.get_messages(sid)  # bad rows are never fatal: a placeholder keeps a damaged one's place
        assert got[0] == a and (got[1].id, got[1].type) == ("damaged-1", "damaged") and got[2].id == "orphan"
        reasons = [p.reason for p in store.check().problems]
        assert any("not JSON" in r for r in reasons) and any("nope" in r for r in reasons)
        report = store.repair()
        assert len(report.fixed) == 1  # the damaged row: copied aside, its placeholder written in its place
        assert [p.reason for p in report.problems] == [  # the intact orphan is kept (as a root), and said
            "parent 'nope' of 'orphan' is missing (its record was lost): kept as a root"]
        b = store.append(sid, role="assistant", content="b")
        assert store.get_linear_history(sid) == [a, b]
        assert [m.id for m in store.get_messages(sid)] == [a.id, "damaged-1", "orphan", b.id]
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1


def test_a_reader_reloads_after_another_store_repaired(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with open_db(db) as writer, open_db(db) as reader:
        sid = writer.resolve("k")
        writer.append(sid, role="user", content="a")
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO messages VALUES (?, 1, 'bad', 'not json')", (sid,))
        conn.commit()
        assert len(reader.get_messages(sid)) == 2  # the bad row: a placeholder
        writer.repair(sid)
        writer.append(sid, role="user", content="b")
        assert [(m.type, m.content) for m in reader.get_messages(sid)] == [
            ("user", "a"), ("damaged", None), ("user", "b")]


def test_a_tally_of_rows_read_before_a_repair_elsewhere_is_not_saved_as_the_repaired_ones(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with open_db(db) as stale, open_db(db) as repairer:
        sid = stale.resolve("k")
        stale.append(sid, role="user", content="a")  # its tally is not saved yet
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO messages VALUES (?, 1, 'bad', 'not json')", (sid,))
        conn.commit()
        repairer.repair(sid)  # a new generation of the session's rows
        stale.flush()
        assert SqliteStorage(str(db)).read_tally(sid) is None  # nothing saved under the new generation
        conn.close()


def test_a_store_that_appended_then_dropped_its_tree_reads_what_it_appended(tmp_path: Path) -> None:
    """A connection's own commits leave its ``PRAGMA data_version`` as it was: the
    position it last read a session to must not say "nothing new" after it wrote."""
    with open_db(tmp_path / "s.db") as store:
        sid = store.resolve("k")
        for i in range(3):
            store.append(sid, role="user", content=f"m{i}")
        store.flush()  # a tally at 3 messages
        store.get_messages(sid)  # the connection has read the session to there
        last = store.append(sid, role="user", content="m3")
        with pytest.raises(DuplicateMessage):  # refused whole: the cached tree is dropped
            store.append_many(sid, [{"role": "user", "content": "x"}, {"role": "user", "content": "y", "id": last.id}])
        found = store.get_metadata(sid)
        assert found is not None and found.message_count == 4
        assert [m.content for m in store.get_linear_history(sid, limit=2)] == ["m2", "m3"]
        assert [m["content"] for m in store.build_context(sid, limit=2)] == ["m2", "m3"]


def test_message_rows_with_a_gap_keep_their_seq_and_appends_go_after_the_last(tmp_path: Path) -> None:
    # A load reads messages without their seq when they run on without a gap; a row
    # removed by hand must not shift the seqs after it (reports, the append position).
    db = tmp_path / "s.db"
    with open_db(db) as store:
        sid = store.resolve("k")
        ids = [store.append(sid, role="user", content=str(i)).id for i in range(4)]
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE session_id = ? AND seq = 1", (sid,))
    conn.commit()
    with open_db(db) as store:
        assert [m.id for m in store.get_messages(sid)] == [ids[0], ids[2], ids[3]]
        [problem] = store.check().problems
        assert problem.offset == 2 and ids[1] in problem.reason  # the orphan's own row
        e = store.append(sid, role="user", content="e", parent_id=ids[0])
        assert store.get_linear_history(sid) == [store.get_messages(sid)[0], e]
    rows = conn.execute("SELECT seq, id FROM messages WHERE session_id = ? ORDER BY seq", (sid,)).fetchall()
    assert rows == [(0, ids[0]), (2, ids[2]), (3, ids[3]), (4, e.id)]
    conn.close()


def test_a_database_in_memory_is_refused() -> None:
    with pytest.raises(ValueError, match="database file"):
        SqliteStorage(":memory:")


def test_a_digit_of_a_rows_id_that_became_another_is_seen_and_cuts_nothing(tmp_path: Path) -> None:
    """A row's text carries the record's check too: a digit of an id changed in the
    database is seen, and the messages after it stay on the path."""
    db = tmp_path / "s.db"
    with open_db(db) as store:
        sid = store.resolve("k")
        ids = [m.id for m in store.append_many(sid, [{"role": "user", "content": f"m{i}"} for i in range(20)])]
    conn = sqlite3.connect(db)
    text = conn.execute("SELECT record FROM messages WHERE session_id = ? AND seq = 6", (sid,)).fetchone()[0]
    at = next(i for i in range(7, 23) if text[i] in "0123")
    conn.execute("UPDATE messages SET record = ? WHERE session_id = ? AND seq = 6",
                 (text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1:], sid))
    conn.commit()
    conn.close()
    with open_db(db) as store:
        assert not store.check().ok
        path = store.get_linear_history(sid)
        assert len(path) == 20 and path[6].type == "damaged" and store.get_head(sid) == ids[-1]
        assert store.repair().ok and store.check().ok and len(store.get_linear_history(sid)) == 20


def test_opening_a_new_database_while_another_process_creates_it_waits_for_it(tmp_path: Path) -> None:
    # SQLite answers "PRAGMA journal_mode=WAL" busy at once, without its busy handler,
    # while another connection holds the write lock of a database not yet in WAL mode
    # (another process creating the schema): processes opening one new store at once
    # failed with "database is locked".
    path = str(tmp_path / "new.db")
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE elsewhere (x)")
    releases = threading.Timer(0.2, lambda: creator.execute("COMMIT"))
    releases.start()
    try:
        with SessionStore(SqliteStorage(path, timeout=60)) as store:
            sid = store.resolve("k")
            assert store.append(sid, role="user", content="x").content == "x"
    finally:
        releases.join()
        creator.close()


# -- finding sessions and searching (the behaviour on every SQL backend: test_search_backends) --


def tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


@pytest.mark.parametrize("fts5", [True, False], ids=["fts5", "plain"])
def test_the_search_index_is_fts5_when_sqlite_has_it_else_a_plain_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fts5: bool) -> None:
    if fts5 and not session_store_sqlite._FTS5:
        pytest.skip("this sqlite3 has no FTS5")
    monkeypatch.setattr(session_store_sqlite, "_FTS5", fts5)
    db = tmp_path / "s.db"
    with open_db(db) as store:
        sid = store.resolve("k")
        hit = store.append(sid, role="user", content="needle in a haystack")
        store.append(sid, role="user", content="haystack only")
        assert store._storage.search_messages(["needle", "haystack"], "", 10, 0) == [(sid, hit.id)]
    assert {"message_words", "message_words_fts"} & tables(db) == {"message_words"} | (
        {"message_words_fts"} if fts5 else set())


def test_an_fts5_index_searched_without_fts5_is_read_as_the_plain_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "s.db"
    with open_db(db) as store:
        sid = store.resolve("k")
        hit = store.append(sid, role="user", content="needle")
    monkeypatch.setattr(session_store_sqlite, "_FTS5", False)
    with open_db(db) as store:
        assert store._storage.search_messages(["needle"], "", 10, 0) == [(sid, hit.id)]


def traced(storage: SqliteStorage) -> list[str]:
    """The statements (parameters filled in) the storage's connection of this thread runs from now on."""
    seen: list[str] = []
    with storage._using("trace") as conn:
        conn.db.set_trace_callback(seen.append)
    return seen


@pytest.mark.parametrize("fts5", [True, False], ids=["fts5", "plain"])
def test_finding_and_searching_read_through_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fts5: bool) -> None:
    monkeypatch.setattr(session_store_sqlite, "_FTS5", fts5)
    db = tmp_path / "s.db"
    with open_db(db) as store:
        for n in range(20):
            store.append(store.resolve(f"t{n % 2}:{n}"), role="user", content=f"message {n}")
        storage = store._storage
        assert isinstance(storage, SqliteStorage)
        seen = traced(storage)
        assert len(storage.find_sessions("t1:")) == 10
        # (a prefix of a few sessions is read row by row, whatever the engine: the whole store through FTS5)
        assert len(storage.search_messages(["message"], "" if fts5 else "t1:", 5, 0)) == 5
        conn = sqlite3.connect(db)
        plans = [" / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
                 for statement in seen if statement.startswith("SELECT") and "sqlite_master" not in statement
                 and "session_store_meta" not in statement and "count(*)" not in statement]
        conn.close()
    find, search = plans
    assert "SCAN" not in find and "USING INDEX sqlite_autoindex_sessions_2 (key>? AND key<?)" in find
    steps = search.split(" / ")
    if fts5 and session_store_sqlite._FTS5:  # the words' FTS5 index, then each match's row and session;
        # and the rows not fed to FTS5 yet, by their ids
        assert "VIRTUAL TABLE INDEX 0:M" in search, search
        assert "SEARCH w USING INTEGER PRIMARY KEY (rowid=?)" in search, search
        assert "SEARCH w USING INTEGER PRIMARY KEY (rowid>?)" in search, search
        assert [step for step in steps if step.startswith("SCAN")] == ["SCAN f VIRTUAL TABLE INDEX 0:M1",
                                                                       "SCAN (subquery-2)"], search
    else:  # the sessions of the key range, then each one's rows
        assert "SEARCH s USING INDEX sqlite_autoindex_sessions_2 (key>? AND key<?)" in steps[0], search
        assert "SEARCH w USING INDEX sqlite_autoindex_message_words_1 (session_id=?)" in steps[1], search


def downgrade_to_version_2(db: Path) -> None:
    """What version 2 had: no search index (its tables and triggers dropped), version 2."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TABLE IF EXISTS message_words_fts")  # (and its shadow tables)
    conn.execute("DROP TABLE message_words")  # (and its triggers)
    conn.execute("UPDATE session_store_meta SET value = '2' WHERE name = 'schema_version'")
    conn.close()
    assert not {name for name in tables(db) if name.startswith("message_words")}


@pytest.mark.parametrize("fts5", [True, False], ids=["fts5", "plain"])
def test_a_version_2_database_is_migrated_and_its_messages_indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   fts5: bool) -> None:
    monkeypatch.setattr(session_store_sqlite, "_FTS5", fts5)
    db = tmp_path / "s.db"
    with open_db(db) as store:
        a, b = store.resolve("t1:a"), store.resolve("t2:b")
        old = [m.id for m in store.append_many(a, [{"role": "user", "content": f"old words {n}"}
                                                   for n in range(1500)])]  # indexed in two parts
        other = store.append(b, role="user", content="old words elsewhere").id
    downgrade_to_version_2(db)
    storage = SqliteStorage(db)
    with SessionStore(storage) as store:
        found = storage.search_messages(["old", "words"], "t1:", 2000, 0)
        assert sorted(found) == sorted((a, i) for i in old)
        assert storage.search_messages(["elsewhere"], "", 10, 0) == [(b, other)]
        new = store.append(a, role="user", content="new words").id
        assert storage.search_messages(["words", "new"], "", 10, 0) == [(a, new)]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM session_store_meta WHERE name = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    assert conn.execute("SELECT count(*) FROM message_words").fetchone() == (1502,)
    conn.close()
    assert ("message_words_fts" in tables(db)) == fts5
