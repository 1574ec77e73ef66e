"""Finding sessions by key prefix and searching messages, on the SQL backends: SQLite
with FTS5, SQLite with its plain word table (what a sqlite3 without FTS5 gets), and
PostgreSQL (skipped without a server, like test_postgres). What is particular to one
backend (its schema migration, its query plans) is in test_sqlite and test_postgres.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg
import pytest

import session_store_sqlite
from session_store import Message, SessionStore, StorageError, search_words
from session_store_conformance import FakeClock
from session_store_sqlite import SqliteStorage


@dataclasses.dataclass
class Backend:
    """A store on one backend, its storage, and raw SQL on its database."""

    name: str
    store: SessionStore
    storage: Any  # SqliteStorage or PostgresStorage
    path: str  # the SQLite file, or the PostgreSQL schema
    clock: FakeClock

    def rows(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run ``statement`` (``?`` parameters, ``{s}.`` before a table name) on the
        database, committed."""
        if self.name == "postgres":
            import psycopg

            with psycopg.connect(pg.DSN, autocommit=True) as conn:
                cur = conn.execute(statement.replace("{s}.", f'"{self.path}".').replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        import sqlite3

        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            return db.execute(statement.replace("{s}.", ""), params).fetchall()
        finally:
            db.close()

    def refuse_words(self, word: str) -> None:
        """From now on, writing a search index row holding ``word`` fails."""
        if self.name == "postgres":
            self.rows(f"""CREATE FUNCTION "{self.path}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                          BEGIN IF NEW.words @@ '{word}'::tsquery THEN RAISE EXCEPTION 'refused'; END IF;
                          RETURN NEW; END $$""")
            self.rows('CREATE TRIGGER refuse BEFORE INSERT ON {s}.message_words '
                      f'FOR EACH ROW EXECUTE FUNCTION "{self.path}".refuse()')
        else:
            self.rows(f"CREATE TRIGGER refuse BEFORE INSERT ON message_words WHEN ' ' || new.words || ' ' "
                      f"LIKE '% {word} %' BEGIN SELECT RAISE(ABORT, 'refused'); END")

    def read_only_storage(self) -> Any:
        """Another storage on the same data whose every write fails."""
        if self.name == "postgres":
            import psycopg

            from session_store_postgres import PostgresStorage

            conn = psycopg.connect(pg.DSN, autocommit=True, options="-c default_transaction_read_only=on")
            return PostgresStorage(connection=conn, schema=self.path)

        class ReadOnly(SqliteStorage):
            def _connect(self) -> Any:
                conn = super()._connect()
                conn.db.execute("PRAGMA query_only = 1")
                return conn

        return ReadOnly(self.path)


@pytest.fixture(params=["sqlite", "sqlite-plain", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    clock = FakeClock()
    if request.param == "postgres":
        if not pg.DSN:
            if pg.REQUIRED:
                pytest.fail(pg.SKIP_REASON, pytrace=False)
            pytest.skip(pg.SKIP_REASON)
        from session_store_postgres import PostgresStorage

        schema = pg.new_schema()
        storage: Any = PostgresStorage(pg.DSN, schema=schema)
        store = SessionStore(storage, clock=clock)
        try:
            store.init()
            yield Backend("postgres", store, storage, schema, clock)
        finally:
            store.close()
            pg.drop_schema(schema)
        return
    if request.param == "sqlite-plain":
        monkeypatch.setattr(session_store_sqlite, "_FTS5", False)
    else:  # every row fed to FTS5 at once (its batches: test_rows_not_yet_in_fts5_are_found_too)
        monkeypatch.setattr(session_store_sqlite, "_FTS_BATCH", 1)
    path = str(tmp_path / "s.db")
    storage = SqliteStorage(path)
    with SessionStore(storage, clock=clock) as store:
        store.init()
        yield Backend(request.param, store, storage, path, clock)


def say(b: Backend, key: str, *contents: Any) -> tuple[str, list[str]]:
    """The session of ``key`` (made when new) with these messages appended, a second apart."""
    sid = b.store.resolve(key)
    ids = []
    for content in contents:
        b.clock.advance(1)
        ids.append(b.store.append(sid, role="user", content=content).id)
    return sid, ids


# -- finding sessions -------------------------------------------------------------------

KEYS = ["t1:a", "t1:b", "t1", "t10:a", "t2:a", "T1:a", "a%b", "a_b", "axb", "a%", "a\\b", "a\\%", "o'neil",
        "o''neil", 'say "hi"', "ümlaut:1", "ü", "u", "日本:1", "日本語", "emoji:😀", "x\U0010ffff", "x\U0010ffffy",
        "\U0010ffff", "z\ud7ffa", "z\ue000", "*?[", "a b"]


def test_find_sessions_is_every_session_whose_key_starts_with_the_prefix(backend: Backend) -> None:
    sids = {key: backend.store.resolve(key) for key in KEYS}
    prefixes = {key[:n] for key in KEYS for n in range(len(key) + 1)} | {"%", "_", "\\", "'", "A", "t1%", "nothing"}
    for prefix in sorted(prefixes):
        found = backend.storage.find_sessions(prefix)
        assert sorted(e.key for e in found) == sorted(k for k in KEYS if k.startswith(prefix)), prefix
        assert all(e.session_id == sids[e.key] for e in found)
    [entry] = backend.storage.find_sessions("o'n")
    assert entry == backend.storage.session_info(sids["o'neil"])


def test_find_sessions_leaves_out_deleted_sessions(backend: Backend) -> None:
    a, b = backend.store.resolve("user:a:1"), backend.store.resolve("user:a:2")
    backend.store.delete_session(a)
    assert [e.session_id for e in backend.storage.find_sessions("user:a:")] == [b]


def test_a_prefix_that_no_key_can_start_with_finds_nothing(backend: Backend) -> None:
    backend.store.resolve("k")
    assert backend.storage.find_sessions("k\ud800") == []
    assert backend.storage.search_messages(["k"], "k\ud800", 10, 0) == []


# -- what the index holds -----------------------------------------------------------------


def test_search_finds_the_messages_holding_every_word(backend: Backend) -> None:
    sid, (fox, thinking, bears, cafe) = say(
        backend, "k", "The QUICK brown fox", "quick thinking", [{"type": "text", "text": "Brown bears, quick"}],
        "Café crème")
    search = backend.storage.search_messages
    assert sorted(search(["quick", "brown"], "", 10, 0)) == sorted([(sid, fox), (sid, bears)])
    assert search(["thinking", "quick"], "", 10, 0) == [(sid, thinking)]
    assert search(["café"], "", 10, 0) == [(sid, cafe)]
    assert search(["quick", "absent"], "", 10, 0) == []
    assert search(["qui"], "", 10, 0) == []  # words, not prefixes of words


def test_every_word_search_words_makes_is_found_as_it_is(backend: Backend) -> None:
    # Words an engine's own tokenizer reads otherwise: PostgreSQL's parser drops "²"
    # and splits "x²"; a word longer than a tsvector lexeme can be (2,046 bytes).
    long = "w" * 3000
    sid, (sup, cjk, big, _) = say(backend, "k", "x ² y x²", "日本語のテキスト", f"short {long}", "other")
    search = backend.storage.search_messages
    assert search_words("x ² y x²") == ["x", "²", "y", "x²"]
    assert search(["²"], "", 10, 0) == [(sid, sup)] and search(["x²"], "", 10, 0) == [(sid, sup)]
    assert search(search_words("日本語のテキスト"), "", 10, 0) == [(sid, cjk)]
    assert (sid, big) in search([long], "", 10, 0)  # (PostgreSQL: among every message, which the store checks)
    assert search([long, "short"], "", 10, 0) == [(sid, big)]


def test_query_words_that_are_engine_operators_are_plain_words(backend: Backend) -> None:
    sid, (ops, _) = say(backend, "k", 'this AND that OR NOT near: (x) * ^ - "q" NEAR/2 col:umn', "neither")
    search = backend.storage.search_messages
    words = search_words('and OR not NEAR * ^ : - ( ) "')
    assert words == ["and", "or", "not", "near"]
    assert search(words, "", 10, 0) == [(sid, ops)]
    for word in ("and", "or", "not", "near", "col", "umn", "2", "q"):
        assert search([word], "", 10, 0) == [(sid, ops)], word
    # What no message's words can hold (search_words never makes it) matches nothing, and is no syntax error.
    for word in ("*", "(", ")", '"', "^", ":", "-", "a*", "-x", "x:y", "NEAR(a b)", "AND", "'", "a b", "", "_"):
        assert search([word], "", 10, 0) == [], word
        assert search(["this", word], "", 10, 0) == [], word


def test_no_words_find_every_message_of_the_prefix_newest_first(backend: Backend) -> None:
    sid, ids = say(backend, "t1:a", "one", "two", "three")
    say(backend, "t2:a", "other")
    assert backend.storage.search_messages([], "t1:", 10, 0) == [(sid, i) for i in reversed(ids)]


def test_deleting_a_session_deletes_its_index_rows(backend: Backend) -> None:
    sid, _ = say(backend, "k", "gone soon", "gone too")
    keep, kept = say(backend, "j", "gone? no")
    assert backend.rows("SELECT count(*) FROM {s}.message_words WHERE session_id = ?", sid) == [(2,)]
    backend.store.delete_session(sid)
    assert backend.rows("SELECT count(*) FROM {s}.message_words WHERE session_id = ?", sid) == [(0,)]
    assert backend.storage.search_messages(["gone"], "", 10, 0) == [(keep, kept[0])]


def test_imported_and_forked_sessions_are_indexed(backend: Backend) -> None:
    sid, ids = say(backend, "source", "imported words", "forked words", "later words")
    copy = backend.store.import_session("copy", backend.store.get_messages(sid))
    fork = backend.store.fork_session(sid, ids[1], key="fork")
    found = set(backend.storage.search_messages(["words"], "", 20, 0))
    assert found == {(s, i) for s in (sid, copy) for i in ids} | {(fork, ids[0]), (fork, ids[1])}
    assert set(backend.storage.search_messages(["later"], "", 20, 0)) == {(sid, ids[2]), (copy, ids[2])}


def test_every_message_row_has_its_index_row(backend: Backend) -> None:
    sid, _ = say(backend, "k", "one")
    backend.store.append_many(sid, [{"role": "user", "content": f"batch {i}"} for i in range(5)])
    other, _ = say(backend, "other", "imported one", "imported two")
    backend.store.import_messages(sid, backend.store.get_messages(other))
    messages = backend.rows("SELECT session_id, seq, id FROM {s}.messages ORDER BY session_id, seq")
    index = backend.rows("SELECT session_id, seq, message_id FROM {s}.message_words ORDER BY session_id, seq")
    assert index == messages
    assert len(messages) == 10
    assert len(backend.storage.search_messages(["batch"], "", 10, 0)) == 5
    assert len(backend.storage.search_messages(["imported"], "k", 10, 0)) == 2


def test_a_failed_append_leaves_neither_its_message_nor_its_index_row(backend: Backend) -> None:
    sid, _ = say(backend, "k", "fine")
    backend.refuse_words("boom")
    with pytest.raises(StorageError, match="refused"):
        backend.store.append(sid, role="user", content="boom")
    with pytest.raises(StorageError, match="refused"):
        backend.store.append_many(sid, [{"role": "user", "content": "first"}, {"role": "user", "content": "boom"}])
    assert backend.rows("SELECT count(*) FROM {s}.messages") == [(1,)]
    assert backend.rows("SELECT count(*) FROM {s}.message_words") == [(1,)]
    assert backend.storage.search_messages(["first"], "", 10, 0) == []
    last = backend.store.get_messages(sid)[-1]
    boom = Message(id="boom-1", parent_id=last.id, type="user", role="user", content="boom", timestamp=1)
    with pytest.raises(StorageError, match="refused"):  # a creation with records: whole or nothing
        backend.store.import_session("copy", [last, boom])
    assert backend.store.resolve("copy", create=False) is None
    assert backend.rows("SELECT count(*) FROM {s}.message_words") == [(1,)]


def test_repair_gives_a_damaged_message_its_placeholders_index_row(backend: Backend) -> None:
    sid, (alpha, beta) = say(backend, "k", "alpha words", "beta words")
    backend.rows("UPDATE {s}.messages SET record = 'not json' WHERE session_id = ? AND seq = 0", sid)
    assert backend.storage.search_messages(["alpha"], "", 10, 0) == [(sid, alpha)]  # stale: the store checks
    report = backend.store.repair()
    assert report.fixed
    placeholder = backend.store.get_messages(sid)[0]
    assert placeholder.type == "damaged"
    assert backend.rows("SELECT seq, message_id FROM {s}.message_words WHERE session_id = ? ORDER BY seq", sid) == [
        (0, placeholder.id), (1, beta)]
    assert backend.storage.search_messages(["alpha"], "", 10, 0) == []
    assert backend.storage.search_messages(["words"], "", 10, 0) == [(sid, beta)]


# -- ranking, prefixes, pages ----------------------------------------------------------------


def test_the_key_prefix_applies_before_the_limit(backend: Backend) -> None:
    mine = {say(backend, f"t1:{n}", "quarterly report")[0] for n in range(3)}
    for n in range(10):  # another tenant: newer, and more relevant
        say(backend, f"t2:{n}", "report report report", "quarterly report report")
        say(backend, f"t10:{n}", "quarterly report")
    search = backend.storage.search_messages
    first, second = search(["report"], "t1:", 2, 0), search(["report"], "t1:", 2, 2)
    assert len(first) == 2 and len(second) == 1
    assert {sid for sid, _ in first + second} == mine
    assert search(["report"], "t1:", 10, 3) == [] and search(["report"], "t1:", 0, 0) == []
    assert len(search(["report"], "t1", 100, 0)) == 13  # t1: and t10:


def test_the_best_match_comes_first_then_the_newest(backend: Backend) -> None:
    sid, (old_same, triple, pie, new_same) = say(backend, "k", "apple tart", "apple apple apple", "apple pie",
                                                  "apple tart")
    found = backend.storage.search_messages(["apple"], "", 10, 0)
    if backend.name == "sqlite-plain":  # without FTS5: the most occurrences first, then the newest
        assert found == [(sid, triple), (sid, new_same), (sid, pie), (sid, old_same)]
    else:
        assert found[0] == (sid, triple)
        assert found.index((sid, new_same)) < found.index((sid, old_same))  # a tie: the newest first
    assert backend.storage.search_messages(["apple"], "", 2, 1) == found[1:3]


# -- reads ---------------------------------------------------------------------------------------


def test_finding_and_searching_write_nothing(backend: Backend) -> None:
    sid, ids = say(backend, "user:1", "hello there")
    reader = backend.read_only_storage()
    try:
        assert [e.session_id for e in reader.find_sessions("user:")] == [sid]
        assert reader.search_messages(["hello"], "user:", 10, 0) == [(sid, ids[0])]
        assert reader.search_messages([], "", 10, 0) == [(sid, ids[0])]
        assert reader.session_bytes(sid) > 0
    finally:
        reader.close()
        if backend.name == "postgres":
            reader._connection.close()


def test_session_bytes_is_the_size_of_its_records(backend: Backend) -> None:
    assert backend.storage.session_bytes("no-such-session") is None
    sid, _ = say(backend, "k")
    empty = backend.storage.session_bytes(sid)
    _, ids = say(backend, "k", "some words", "ünïcödé")
    backend.store.create_branch(sid, "side", ids[0])
    records = [r for (r,) in backend.rows("SELECT record FROM {s}.messages WHERE session_id = ?", sid)]
    records += [r for (r,) in backend.rows("SELECT record FROM {s}.branch_events WHERE session_id = ?", sid)]
    assert backend.storage.session_bytes(sid) == sum(len(r.encode()) for r in records) > (empty or 0)



def test_rows_not_yet_in_fts5_are_found_too(tmp_path: Path) -> None:
    """FTS5 is fed a batch of rows at a time: a search finds the rows fed and those
    waiting, and a deletion takes rows out of both."""
    if not session_store_sqlite._FTS5:
        pytest.skip("this sqlite3 has no FTS5")  # pragma: no cover - CI's Python has it
    storage = SqliteStorage(str(tmp_path / "s.db"))
    with SessionStore(storage) as store:
        sid = store.resolve("k")
        other = store.resolve("other")
        batch = session_store_sqlite._FTS_BATCH
        ids = [store.append(sid, role="user", content=f"needle {i}").id for i in range(batch + batch // 2)]
        store.append(other, role="user", content="needle elsewhere")
        fed = sqlite3.connect(str(tmp_path / "s.db")).execute(session_store_sqlite._FTS_UPTO).fetchone()[0]
        assert 0 < fed < batch + batch // 2 + 1  # some rows fed, some waiting
        found = storage.search_messages(["needle"], "", 1000, 0)
        assert sorted(found) == sorted([(sid, m) for m in ids] + [(other, store.get_head(other))])
        assert [h.message_id for h in store.search("needle", key_prefix="k", limit=1000)] != []
        store.delete_session(sid)
        assert storage.search_messages(["needle"], "", 1000, 0) == [(other, store.get_head(other))]
