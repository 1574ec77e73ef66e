"""A user's conversations, titles, search and retention, on every embedded backend.

The conformance kit's state machine holds every backend to the model of these
(listing order and paging, titles, search hits and places, prune); these are the
named cases: prefix isolation, reset-archived history, queries made of operators,
bad input refused with nothing written, leased and freshly written sessions kept,
a dry run that changes nothing, an archive that comes back whole.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from conftest import FakeClock, StoreFactory

import session_store as ss
from session_store import SessionStore


def chat(store: SessionStore, key: str, *texts: str) -> str:
    sid = store.resolve(key)
    for i, text in enumerate(texts):
        store.append(sid, role="user" if i % 2 == 0 else "assistant", content=text)
    return sid


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- a user's conversations -------------------------------------------------------------


def test_a_user_s_conversations_newest_first_with_titles_and_paging(store: SessionStore, clock: FakeClock) -> None:
    first = chat(store, "user:alice:1", "How do I bake bread?", "Flour, water, yeast.")
    clock.advance(1)
    second = chat(store, "user:alice:2", "  Plan a\ntrip   to Paris  ")
    clock.advance(1)
    chat(store, "user:alicea:1", "not alice")
    clock.advance(1)
    chat(store, "user:bob:1", "bob's")
    listed = store.list_sessions(key_prefix="user:alice:")
    assert [m.session_id for m in listed] == [second, first]
    assert [m.title for m in listed] == ["Plan a trip to Paris", "How do I bake bread?"]  # one line
    assert listed[1].preview == "How do I bake bread?" and listed[1].message_count == 2
    clock.advance(1)
    store.set_title(first, "Bread")  # a write: the session is the newest now
    assert [(m.session_id, m.title) for m in store.list_sessions(key_prefix="user:alice:")] == [
        (first, "Bread"), (second, "Plan a trip to Paris")]
    assert [m.session_id for m in store.list_sessions(key_prefix="user:alice:", limit=1, offset=1)] == [second]
    assert len(store.list_sessions()) == 4 and store.list_sessions(key_prefix="%") == []
    store.set_title(first, None)  # derived again
    assert store.get_metadata(first).title == "How do I bake bread?"  # type: ignore[union-attr]


def test_a_long_first_message_makes_a_short_title_and_a_one_line_preview(store: SessionStore) -> None:
    sid = chat(store, "k", "word " * 100)
    meta = store.get_metadata(sid)
    assert meta is not None and meta.title is not None and meta.preview is not None
    assert len(meta.title) <= 60 and meta.title.endswith("…") and "\n" not in meta.title
    assert len(meta.preview) <= 200
    empty = store.resolve("empty")
    store.append(empty, role="assistant", content="hello")  # no user message yet: no title
    assert store.get_metadata(empty).title is None  # type: ignore[union-attr]
    store.append(empty, role="user", content=[{"type": "text", "text": "blocks count"}])
    assert store.get_metadata(empty).title == "blocks count"  # type: ignore[union-attr]


def test_titles_are_writes_checked_like_any_other(open_store: StoreFactory) -> None:
    store = open_store(require_lock=True)
    sid = store.resolve("k")
    lease = store.acquire_lock(sid, "worker-1")
    with pytest.raises(ss.SessionLocked):
        store.set_title(sid, "mine")
    with pytest.raises(ss.LeaseLost):
        store.set_title(sid, "mine", owner_id="worker-1", fencing_token=(lease.token or 0) + 1)
    store.set_title(sid, "mine", owner_id="worker-1", fencing_token=lease.token)
    assert store.get_metadata(sid).title == "mine"  # type: ignore[union-attr]


@pytest.mark.parametrize("title", ["", "   ", "two\nlines", "tab\there", "x" * 201, 3, b"bytes", "\ud800"])
def test_a_bad_title_is_refused_and_nothing_written(store: SessionStore, title: object) -> None:
    sid = chat(store, "k", "hello")
    before = store.get_metadata(sid)
    with pytest.raises(ss.InvalidInput):
        store.set_title(sid, title)  # type: ignore[arg-type]
    assert store.get_metadata(sid) == before


def test_titles_are_kept_verbatim_as_data(store: SessionStore) -> None:
    sid = store.resolve("k")
    for title in ('<script>alert("x")</script>', "' OR 1=1 --", "../../etc/passwd", "ключ 🙂"):
        store.set_title(sid, title)
        assert store.get_metadata(sid).title == title  # type: ignore[union-attr]


def test_a_store_opened_again_reads_titles_without_loading_the_sessions(open_store: StoreFactory) -> None:
    store = open_store()
    sid = chat(store, "k", "first question", "an answer")
    store.set_title(sid, "Named")
    store.close()
    again = open_store()
    assert again.list_sessions()[0].title == "Named"
    assert again.get_metadata(sid).preview == "first question"  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs", [{"key_prefix": 3}, {"limit": 0}, {"limit": -1}, {"limit": True},
                                    {"limit": 1001}, {"offset": -1}, {"offset": 1.5}])
def test_bad_listing_arguments_are_refused(store: SessionStore, kwargs: dict[str, object]) -> None:
    with pytest.raises(ss.InvalidInput):
        store.list_sessions(**kwargs)  # type: ignore[arg-type]


# -- search ---------------------------------------------------------------------------------


def test_search_finds_every_word_in_any_session_of_the_prefix_only(store: SessionStore) -> None:
    alice = chat(store, "t1:alice", "The quick brown fox", "jumps over the lazy dog")
    chat(store, "t2:mallory", "a quick brown fox too")
    hits = store.search("QUICK fox", key_prefix="t1:")
    assert [(h.session_id, h.key, h.role, h.snippet, h.place) for h in hits] == [
        (alice, "t1:alice", "user", "The quick brown fox", "current")]
    assert {h.key for h in store.search("quick fox")} == {"t1:alice", "t2:mallory"}
    for _ in range(30):  # one tenant's many hits never crowd the other out of its own search
        chat(store, f"t2:{_}", "quick fox")
    assert [h.key for h in store.search("quick fox", key_prefix="t1:", limit=1)] == ["t1:alice"]
    assert store.search("quick cat") == [] and store.search("   ") == [] and store.search("qui") == []


@pytest.mark.parametrize("query", ['"fox"', "fox OR cat", "NOT cat fox", "fox*", "NEAR(fox dog)", "-fox",
                                   "fox:1", "fox%", "f_x", "fox'", "fox\\", "fox & !cat | dog", "^fox",
                                   "fox) OR (1=1", "fox; DROP TABLE messages; --"])
def test_a_query_made_of_the_engine_s_operators_is_words(store: SessionStore, query: str) -> None:
    sid = chat(store, "k", "a fox and a dog")
    chat(store, "other", "only a cat")
    expected = set(ss.search_words(query))
    hits = store.search(query)
    found = {h.session_id for h in hits}
    holds = expected <= {"a", "fox", "and", "dog"}
    assert found == ({sid} if holds else set())


def test_search_finds_history_a_reset_archived(store: SessionStore) -> None:
    sid = chat(store, "k", "my passport number is in the drawer", "noted")
    store.reset(sid)
    store.append(sid, role="user", content="where is my passport?")
    hits = {h.snippet: h.place for h in store.search("passport")}
    assert hits == {"my passport number is in the drawer": "archived", "where is my passport?": "current"}
    assert [h.place for h in store.search("passport", include_archived=False)] == ["current"]
    assert all(h.archived == (h.place == "archived") for h in store.search("passport"))


def test_search_finds_other_branches_and_edited_turns(store: SessionStore) -> None:
    sid = store.resolve("k")
    q = store.append(sid, role="user", content="tell me about lions")
    store.append(sid, role="user", content="tell me about tigers", parent_id=q.parent_id)  # an edit: a sibling
    assert {h.snippet: h.place for h in store.search("tell me")} == {
        "tell me about lions": "current", "tell me about tigers": "branch"}


def test_a_snippet_is_one_line_around_the_word(store: SessionStore) -> None:
    chat(store, "k", "filler " * 50 + "needle\nin the haystack " + "more " * 50)
    (hit,) = store.search("needle")
    assert "needle" in hit.snippet and "\n" not in hit.snippet and len(hit.snippet) <= 162
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")


def test_search_reads_framework_shapes_and_ignores_ids_and_arguments(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=None, tool_calls=[
        {"id": "call_zebra", "type": "function", "function": {"name": "f", "arguments": '{"q": "zebra"}'}}])
    store.append(sid, role="user", content=[{"type": "input_text", "text": "a giraffe"},
                                            {"type": "image_url", "image_url": {"url": "http://x/okapi.png"}}])
    assert store.search("zebra") == [] and store.search("okapi") == []
    assert len(store.search("giraffe")) == 1


def test_deleting_or_pruning_a_session_removes_it_from_search(store: SessionStore, clock: FakeClock) -> None:
    a = chat(store, "a", "unique words here")
    chat(store, "b", "unique words there")
    store.delete_session(a)
    assert [h.key for h in store.search("unique")] == ["b"]
    clock.advance(100)
    store.prune(older_than=10)
    assert store.search("unique") == []


@pytest.mark.parametrize("kwargs", [{"query": 3}, {"query": None}, {"query": "x", "limit": 0},
                                    {"query": "x", "key_prefix": b"k"}, {"query": "x", "include_archived": 1}])
def test_bad_search_arguments_are_refused(store: SessionStore, kwargs: dict[str, object]) -> None:
    rest = dict(kwargs)
    query = rest.pop("query")
    with pytest.raises(ss.InvalidInput):
        store.search(query, **rest)  # type: ignore[arg-type]


# -- retention ----------------------------------------------------------------------------------


def test_prune_deletes_what_is_old_and_keeps_what_is_leased_or_recent(store: SessionStore, clock: FakeClock) -> None:
    old, leased = chat(store, "u:old", "a"), chat(store, "u:leased", "b")
    other_tenant = chat(store, "v:old", "c")
    clock.advance(3600)
    recent = chat(store, "u:recent", "d")
    store.acquire_lock(leased, "worker-1", timeout=0)
    store.get_messages(old)  # reading never refreshes the clock of retention
    report = store.prune(older_than=datetime.timedelta(minutes=30), key_prefix="u:")
    assert report.deleted == (old,) and report.kept_leased == (leased,) and report.kept_written == ()
    assert report.bytes_freed > 0 and not report.dry_run
    assert sorted(store.get_all_session_ids()) == sorted([leased, other_tenant, recent])
    assert store.resolve("u:old", create=False) is None


def test_a_dry_run_changes_nothing_and_names_what_a_run_deletes(tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "store"
    with SessionStore(storage_dir=str(folder), clock=clock, lock_timeout_ms=3_600_000) as holder, \
            SessionStore(storage_dir=str(folder), clock=clock) as store:
        ids = [chat(holder, f"k{i}", "hello") for i in range(3)]
        holder.acquire_lock(ids[2], "w", timeout=0)
        clock.advance(100)
        keep = chat(holder, "fresh", "hi")
        before = files_of(folder)
        dry = store.prune(older_than=50, dry_run=True, archive_to=tmp_path / "archive")
        assert files_of(folder) == before and not (tmp_path / "archive").exists()
        assert dry.dry_run and sorted(dry.deleted) == sorted(ids[:2]) and dry.kept_leased == (ids[2],)
        real = store.prune(older_than=50)
        assert (real.deleted, real.kept_leased) == (dry.deleted, dry.kept_leased)
        assert real.bytes_freed == dry.bytes_freed
        assert sorted(store.get_all_session_ids()) == sorted([ids[2], keep])


def test_an_archived_session_comes_back_whole(store: SessionStore, clock: FakeClock, tmp_path: Path) -> None:
    sid = chat(store, "user:alice:7", "first", "second", "third")
    messages = store.get_messages(sid)
    store.create_branch(sid, "alt", messages[0].id)
    store.append(sid, role="user", content="edited", parent_id=messages[0].id)
    store.reset(sid)
    store.set_title(sid, "Kept <title>")
    def whole(sid: str) -> tuple[object, ...]:  # (main's creation is the session's: the restore's)
        branches = [(b.name, b.head_id, b.updated_at) + ((b.created_at,) if b.name != "main" else ())
                    for b in store.get_branches(sid)]
        return store.get_messages(sid), branches, store.get_current_branch(sid), store.get_head(sid)
    before = whole(sid)
    clock.advance(1000)
    report = store.prune(older_than=10, archive_to=tmp_path / "archive")
    assert report.archived == (str(tmp_path / "archive" / f"{sid}.jsonl"),)
    assert os.listdir(tmp_path / "archive") == [f"{sid}.jsonl"]  # no temporary file left
    lines = (tmp_path / "archive" / f"{sid}.jsonl").read_text(encoding="utf-8").splitlines()
    back = store.restore_session(lines)
    assert whole(back) == before
    meta = store.get_metadata(back)
    assert meta is not None and (meta.key, meta.title) == ("user:alice:7", "Kept <title>")


def test_a_session_written_while_prune_runs_is_kept(store: SessionStore, clock: FakeClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sid = chat(store, "k", "old")
    clock.advance(100)
    listing = SessionStore.list_sessions

    def list_then_write(self: SessionStore, **kwargs: object) -> list[ss.SessionMetadata]:
        found = listing(self, **kwargs)  # type: ignore[arg-type]
        self.append(sid, role="user", content="written meanwhile")
        return found
    monkeypatch.setattr(SessionStore, "list_sessions", list_then_write)
    report = store.prune(older_than=10)
    assert report.deleted == () and report.kept_written == (sid,)
    assert len(store.get_messages(sid)) == 2


def test_prune_with_now_is_deterministic_and_strictly_older(store: SessionStore, clock: FakeClock) -> None:
    sid = chat(store, "k", "x")
    written = store.get_metadata(sid).updated_at / 1000  # type: ignore[union-attr]
    assert store.prune(older_than=10, now=written + 10, dry_run=True).deleted == ()  # exactly the age: kept
    assert store.prune(older_than=10, now=written + 10.001, dry_run=True).deleted == (sid,)
    moment = datetime.datetime.fromtimestamp(written + 11, tz=datetime.timezone.utc)
    assert store.prune(older_than=datetime.timedelta(seconds=10), now=moment, dry_run=True).deleted == (sid,)


@pytest.mark.parametrize("kwargs", [{"older_than": -1}, {"older_than": "30d"}, {"older_than": float("nan")},
                                    {"older_than": True}, {"older_than": 1, "now": "today"},
                                    {"older_than": 1, "now": datetime.datetime(2026, 1, 1)},
                                    {"older_than": 1, "dry_run": "yes"}, {"older_than": 1, "archive_to": 3},
                                    {"older_than": 1, "key_prefix": 3}])
def test_bad_prune_arguments_are_refused_and_nothing_deleted(store: SessionStore, clock: FakeClock,
                                                             kwargs: dict[str, object]) -> None:
    sid = chat(store, "k", "x")
    clock.advance(100)
    with pytest.raises(ss.InvalidInput):
        store.prune(**kwargs)  # type: ignore[arg-type]
    assert store.has_session(sid)


def test_an_archive_that_cannot_be_written_deletes_nothing(store: SessionStore, clock: FakeClock,
                                                           tmp_path: Path) -> None:
    sid = chat(store, "k", "x")
    clock.advance(100)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ss.StorageError):
        store.prune(older_than=10, archive_to=blocker)
    with pytest.raises(ss.StorageError):
        store.prune(older_than=10, archive_to=blocker / "below")
    assert store.get_messages(sid)[0].content == "x"


@pytest.mark.parametrize("lines", [["not json"], ['{"message": {}}'], ['{"session": {"key": "k"}}', "[1]"], [],
                                   ['{"branch": {"name": "main"}}']])
def test_restoring_something_that_is_not_an_export_is_refused(store: SessionStore, lines: list[str]) -> None:
    with pytest.raises(ss.InvalidInput):
        store.restore_session(lines)
    assert store.get_all_session_ids() == []


def test_a_tally_saved_before_titles_existed_is_counted_again(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    with SessionStore(storage_dir=str(folder)) as store:
        sid = chat(store, "k", *[f"message {i}" for i in range(80)])  # enough writes to save a tally
        store.set_title(sid, "Named")
    stats = folder / sid / "stats.json"
    assert stats.exists()
    doc = ss._decode_lease(stats.read_bytes())
    assert doc is not None
    for name in ("title", "preview"):
        del doc["tally"][name]
    stats.write_text(json.dumps(doc))  # as tallies were written then: plain JSON, no check
    with SessionStore(storage_dir=str(folder)) as store:
        meta = store.get_metadata(sid)
        assert meta is not None and (meta.title, meta.preview, meta.message_count) == ("Named", "message 0", 80)
