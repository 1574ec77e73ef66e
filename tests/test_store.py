"""The store's API contract: tree, head rule, branches, errors, events (both file systems)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conftest import FakeClock, StoreFactory

import session_store as ss
from session_store import SessionStore


def snapshot(store: SessionStore, sid: str) -> tuple[Any, ...]:
    return (store.get_messages(sid), store.get_branches(sid), store.get_current_branch(sid), store.get_head(sid))


# -- sessions ----------------------------------------------------------------------


def test_resolve_creates_once_and_returns_the_same_id(store: SessionStore) -> None:
    sid = store.resolve("user:alice")
    assert store.resolve("user:alice") == sid
    assert store.has_key("user:alice") and store.has_session(sid)
    assert store.get_all_session_ids() == [sid]
    assert store.resolve("user:bob") != sid


def test_has_key_never_creates(store: SessionStore) -> None:
    assert not store.has_key("nobody")
    assert store.get_all_session_ids() == []


def test_resolve_without_create_only_looks(store: SessionStore) -> None:
    assert store.resolve("user:alcie", create=False) is None  # a mistyped key makes no session
    assert store.get_all_session_ids() == []
    sid = store.resolve("user:alice")
    assert store.resolve("user:alice", create=False) == sid
    store.delete_session(sid)
    assert store.resolve("user:alice", create=False) is None
    with pytest.raises(ss.InvalidKey):
        store.resolve("", create=False)


def test_get_keys_lists_the_keys_under_a_prefix_and_nothing_else(store: SessionStore) -> None:
    ids = {key: store.resolve(key) for key in ("tenant-a:1", "tenant-a:2", "tenant-ab:3", "tenant-b:1")}
    assert store.get_keys("tenant-a:") == {k: ids[k] for k in ("tenant-a:1", "tenant-a:2")}
    assert store.get_keys() == ids
    assert store.get_keys("tenant-c") == {}
    assert store.get_keys("%") == {} and store.get_keys("*") == {}  # a prefix is text, never a pattern
    with pytest.raises(ss.InvalidKey):
        store.get_keys(3)  # type: ignore[arg-type]


def test_metadata_counts_and_times(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    created = round(clock() * 1000)
    clock.advance(5)
    store.append(sid, role="user", content="a")
    meta = store.get_metadata(sid)
    assert meta == ss.SessionMetadata(session_id=sid, key="k", created_at=created,
                                      updated_at=created + 5000, message_count=1, title="a", preview="a")
    assert store.get_metadata("no-such-session") is None


def test_delete_session_removes_everything(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="a")
    store.delete_session(sid)
    assert not store.has_session(sid) and not store.has_key("k")
    with pytest.raises(ss.SessionNotFound):
        store.get_messages(sid)
    with pytest.raises(ss.SessionNotFound):
        store.delete_session(sid)
    assert store.resolve("k") != sid  # the key is free again


def test_unknown_session_is_a_key_error_carrying_its_id(store: SessionStore) -> None:
    with pytest.raises(KeyError) as info:
        store.append("nope", role="user", content="x")
    assert isinstance(info.value, ss.SessionNotFound) and info.value.session_id == "nope"


# -- append and the head rule ---------------------------------------------------------


def test_omitted_parent_is_the_head_and_none_is_a_root(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    b = store.append(sid, role="assistant", content="b")
    assert (a.parent_id, b.parent_id) == (None, a.id)
    root2 = store.append(sid, role="user", content="other root", parent_id=None)
    assert root2.parent_id is None
    assert store.get_head(sid) == b.id  # a new root in a non-empty session leaves the head


def test_naming_the_head_as_parent_advances_it(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    b = store.append(sid, role="assistant", content="b", parent_id=a.id)
    assert store.get_head(sid) == b.id


def test_sibling_leaves_the_head(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    b = store.append(sid, role="assistant", content="b")
    sibling = store.append(sid, role="assistant", content="b2", parent_id=a.id)
    assert store.get_head(sid) == b.id
    assert store.get_children(sid, a.id) == [b, sibling]


def test_type_defaults_to_role_and_timestamp_is_ms(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    m = store.append(sid, role="user", content="a")
    assert m.type == "user" and m.timestamp == round(clock() * 1000)


def test_extra_fields_round_trip_unchanged(open_store: StoreFactory) -> None:
    store = open_store()
    sid = store.resolve("k")
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    m = store.append(sid, role="assistant", content=[{"type": "text", "text": "hi"}], tool_calls=calls,
                     metadata={"model": "x", "n": [1, 2.5, None, True]}, custom_field="kept")
    assert m.tool_calls == calls
    assert m.fields["metadata"] == {"model": "x", "n": [1, 2.5, None, True]}
    assert m.fields["custom_field"] == "kept"
    calls[0]["id"] = "mutated by caller"  # the store kept its own copy
    assert store.get_message(sid, m.id).tool_calls[0]["id"] == "c1"
    store.close()
    assert open_store().get_message(sid, m.id) == m


def test_seed_fields_are_camel_case_on_disk(store: SessionStore) -> None:
    sid = store.resolve("k")
    m = store.append(sid, role="tool", content="out", tool_call_id="c1", my_field=1)
    assert m.to_record() == {"id": m.id, "parentId": None, "type": "tool", "role": "tool", "content": "out",
                             "timestamp": m.timestamp, "toolCallId": "c1", "my_field": 1}


def test_given_id_is_used_and_a_duplicate_is_refused(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="a", id="m-1")
    before = snapshot(store, sid)
    with pytest.raises(ss.DuplicateMessage) as info:
        store.append(sid, role="user", content="b", id="m-1")
    assert info.value.message_id == "m-1"
    assert snapshot(store, sid) == before


@pytest.mark.parametrize("bad", [
    {"content": object()},
    {"content": math.nan},
    {"content": "\ud800"},
    {"content": "ok", "metadata": {1, 2}},
    {"content": "ok", "role": ""},
    {"content": "ok", "role": 5},
    {"content": "ok", "type": "bad\ntype"},
    {"content": "ok", "id": ""},
    {"content": "ok", "id": "x" * 300},
    {"content": "ok", "parentId": "a"},
    {"content": "ok", "toolCalls": []},
    {"content": "ok", "timestamp": 5},
    {"content": "ok", "parent_id": 7},
])
def test_bad_message_raises_invalid_message_and_writes_nothing(store: SessionStore, bad: dict[str, Any]) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="first")
    before = snapshot(store, sid)
    kwargs: dict[str, Any] = {"role": "user", **bad}
    with pytest.raises(ss.InvalidMessage):
        store.append(sid, **kwargs)
    assert isinstance(ss.InvalidMessage("x"), ValueError)
    assert snapshot(store, sid) == before


def test_unknown_parent_raises_and_writes_nothing(store: SessionStore) -> None:
    sid = store.resolve("k")
    with pytest.raises(ss.MessageNotFound) as info:
        store.append(sid, role="user", content="x", parent_id="ghost")
    assert (info.value.session_id, info.value.message_id) == (sid, "ghost")
    assert store.get_messages(sid) == []


def test_parent_must_be_in_the_same_session(store: SessionStore) -> None:
    a, b = store.resolve("a"), store.resolve("b")
    m = store.append(a, role="user", content="x")
    with pytest.raises(ss.MessageNotFound):
        store.append(b, role="user", content="y", parent_id=m.id)


# -- reads ----------------------------------------------------------------------------


def test_tree_is_preorder_with_siblings_in_append_order(store: SessionStore) -> None:
    sid = store.resolve("k")
    r1 = store.append(sid, role="user", content="r1")
    a = store.append(sid, role="assistant", content="a", parent_id=r1.id)
    r2 = store.append(sid, role="user", content="r2", parent_id=None)
    b = store.append(sid, role="assistant", content="b", parent_id=r1.id)
    a1 = store.append(sid, role="user", content="a1", parent_id=a.id)
    assert store.get_tree(sid) == [r1, a, a1, b, r2]
    assert store.get_tree(sid, a.id) == [a, a1]
    assert store.get_leaves(sid) == [r2, b, a1]
    assert store.has_children(sid, a.id) and not store.has_children(sid, b.id)
    with pytest.raises(ss.MessageNotFound):
        store.get_tree(sid, "ghost")


def test_history_of_empty_session_and_unknown_leaf(store: SessionStore) -> None:
    sid = store.resolve("k")
    assert store.get_linear_history(sid) == []
    assert store.build_context(sid) == []
    with pytest.raises(ss.MessageNotFound):
        store.get_linear_history(sid, "ghost")
    with pytest.raises(ss.MessageNotFound):
        store.get_message(sid, "ghost")


def test_history_limit_gives_the_last_messages_root_first(store: SessionStore) -> None:
    sid = store.resolve("k")
    chain = [store.append(sid, role="user", content=str(i)) for i in range(5)]
    assert store.get_linear_history(sid, limit=2) == chain[3:]
    assert store.get_linear_history(sid, limit=9) == chain
    assert store.get_linear_history(sid, chain[2].id, limit=2) == chain[1:3]
    assert store.get_linear_history(sid, limit=0) == []
    with pytest.raises(ss.MessageNotFound):
        store.get_linear_history(sid, "nope", limit=0)
    bad: Any
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ss.InvalidInput):
            store.get_linear_history(sid, limit=bad)


def refuse_to_load(self: SessionStore, state: Any, **_: Any) -> None:
    raise AssertionError(f"session {state.session_id} was loaded")


def test_a_path_end_is_read_from_the_end_of_the_records_without_loading_the_session(
        open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_store(durable=False)
    sid = writer.resolve("k")
    chain = [writer.append(sid, role="user", content=f"m{i}") for i in range(300)]
    writer.flush()  # the tally, with the head, up to here
    chain += [writer.append(sid, role="assistant", content=f"after {i}") for i in range(3)]
    sibling = writer.append(sid, role="user", content="again", parent_id=chain[-2].id)  # off the head's path
    fresh = open_store()
    monkeypatch.setattr(SessionStore, "_catch_up", refuse_to_load)
    assert fresh.get_linear_history(sid, limit=5) == chain[-5:]
    assert fresh.get_linear_history(sid, sibling.id, limit=2) == [chain[-2], sibling]
    assert fresh.get_linear_history(sid, chain[100].id, limit=3) == chain[98:101]
    assert fresh.get_linear_history(sid, chain[1].id, limit=9) == chain[:2]
    monkeypatch.undo()
    assert fresh.get_linear_history(sid, limit=5) == chain[-5:]  # loaded now: the same
    assert fresh.get_linear_history(sid, limit=500) == chain


def test_a_path_end_is_read_by_loading_when_the_end_of_the_records_cannot_tell(open_store: StoreFactory) -> None:
    writer = open_store(durable=False)
    sid = writer.resolve("k")
    chain = [writer.append(sid, role="user", content=f"m{i}") for i in range(20)]
    writer.flush()
    writer.create_branch(sid, "alt", chain[4].id)  # branch events after the tally move the head
    writer.switch_to_branch(sid, "alt")
    alt = writer.append(sid, role="user", content="on alt")
    expected = [*chain[3:5], alt]
    loads: list[str] = []
    fresh = open_store()
    catch_up = SessionStore._catch_up

    def counted(self: SessionStore, state: Any, **options: Any) -> None:
        loads.append(state.session_id)
        catch_up(self, state, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SessionStore, "_catch_up", counted)
        assert fresh.get_linear_history(sid, limit=3) == expected
        assert loads == [sid]
        with pytest.raises(ss.MessageNotFound):  # a leaf that is nowhere: the load says so
            open_store().get_linear_history(sid, "ghost", limit=3)
    assert writer.get_linear_history(sid, limit=3) == expected


def test_a_path_end_of_a_session_deleted_elsewhere_is_not_found(open_store: StoreFactory) -> None:
    writer, reader = open_store(), open_store()
    sid = writer.resolve("k")
    chain = [writer.append(sid, role="user", content=str(i)) for i in range(3)]
    writer.flush()
    assert reader.get_linear_history(sid, limit=2) == chain[1:]
    writer.delete_session(sid)
    for _ in range(2):
        with pytest.raises(ss.SessionNotFound):
            reader.get_linear_history(sid, limit=2)
    assert not reader.has_session(sid)


def test_history_limit_stops_at_the_root_of_a_reset_segment(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="old")
    store.reset(sid, keep_count=0)
    new = store.append(sid, role="user", content="new")
    assert [m.content for m in store.get_linear_history(sid, limit=5)][-1] == "new"
    assert store.get_linear_history(sid, limit=5) == store.get_linear_history(sid)
    assert new in store.get_linear_history(sid, limit=1)


def test_returned_lists_are_copies(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="a")
    store.get_messages(sid).clear()
    assert len(store.get_messages(sid)) == 1


# -- branches ------------------------------------------------------------------------


def test_new_session_has_an_empty_main_branch(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    now = round(clock() * 1000)
    assert store.get_branches(sid) == [ss.Branch(name="main", head_id=None, created_at=now, updated_at=now)]
    assert store.get_current_branch(sid) == "main" and store.get_head(sid) is None


def test_appends_advance_only_the_current_branch(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    store.create_branch(sid, "alt", a.id)
    b = store.append(sid, role="assistant", content="b")
    assert store.get_branch(sid, "main").head_id == b.id  # type: ignore[union-attr]
    assert store.get_branch(sid, "alt").head_id == a.id  # type: ignore[union-attr]
    store.switch_to_branch(sid, "alt")
    c = store.append(sid, role="assistant", content="c")
    assert c.parent_id == a.id
    assert store.get_branch(sid, "alt").head_id == c.id  # type: ignore[union-attr]
    assert store.get_branch(sid, "main").head_id == b.id  # type: ignore[union-attr]
    assert store.switch_to_branch(sid, "main") == b.id


def test_branch_errors_write_nothing(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    store.create_branch(sid, "alt", a.id)
    before = snapshot(store, sid)
    with pytest.raises(ss.BranchExists):
        store.create_branch(sid, "alt", a.id)
    with pytest.raises(ss.BranchExists):
        store.create_branch(sid, "main", a.id)
    with pytest.raises(ss.MessageNotFound):
        store.create_branch(sid, "new", "ghost")
    with pytest.raises(ss.BranchNotFound) as info:
        store.switch_to_branch(sid, "ghost")
    assert isinstance(info.value, KeyError) and info.value.name == "ghost"
    for bad in ("", " ", "a\nb", "x" * 257, 5):
        with pytest.raises(ss.InvalidInput):
            store.create_branch(sid, bad, a.id)  # type: ignore[arg-type]
    assert snapshot(store, sid) == before


def test_branch_names_are_data(store: SessionStore) -> None:
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    for name in ("../../etc/passwd", "/abs", "ветка", "a b", "main/feature"):
        store.create_branch(sid, name, a.id)
    assert len(store.get_branches(sid)) == 6


# -- events --------------------------------------------------------------------------


def test_events_fire_after_each_change(store: SessionStore) -> None:
    events: list[ss.Event] = []
    unsubscribe = store.subscribe(events.append)
    sid = store.resolve("k")
    m = store.append(sid, role="user", content="a")
    branch = store.create_branch(sid, "alt", m.id)
    store.switch_to_branch(sid, "alt")
    store.delete_session(sid)
    assert [e.type for e in events] == ["session.created", "message.added", "branch.created",
                                        "branch.switched", "session.deleted"]
    assert events[1].data == m and events[2].data == branch and all(e.session_id == sid for e in events)
    unsubscribe()
    store.resolve("other")
    assert len(events) == 5


def test_a_failing_subscriber_never_breaks_the_store(store: SessionStore, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def bad(event: ss.Event) -> None:
        raise RuntimeError("boom")

    store.subscribe(bad)
    store.subscribe(lambda e: seen.append(e.type))
    sid = store.resolve("k")
    store.append(sid, role="user", content="a")
    assert seen == ["session.created", "message.added"]
    assert "boom" in caplog.text


def test_subscriber_may_call_the_store(store: SessionStore) -> None:
    """Callbacks run outside internal locks, so re-entering the store cannot deadlock."""
    counts: list[int] = []
    store.subscribe(lambda e: counts.append(len(store.get_messages(e.session_id)))
                    if e.type == "message.added" else None)
    sid = store.resolve("k")
    store.append(sid, role="user", content="a")
    assert counts == [1]


# -- lifecycle -----------------------------------------------------------------------


def test_reopen_sees_everything(open_store: StoreFactory) -> None:
    store = open_store()
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    store.append(sid, role="assistant", content="b")
    store.create_branch(sid, "alt", a.id)
    store.switch_to_branch(sid, "alt")
    c = store.append(sid, role="assistant", content="c")
    before = snapshot(store, sid)
    meta = store.get_metadata(sid)
    store.close()
    again = open_store()
    assert snapshot(again, sid) == before
    assert again.get_metadata(sid) == meta
    assert again.get_head(sid) == c.id


def test_closed_store_refuses_work(store: SessionStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(ss.StoreClosed):
        store.resolve("k")


def test_two_stores_on_one_storage_see_each_other(open_store: StoreFactory) -> None:
    one, two = open_store(), open_store()
    sid = one.resolve("k")
    assert two.resolve("k") == sid
    m = two.append(sid, role="user", content="from two")
    n = one.append(sid, role="assistant", content="from one")
    assert n.parent_id == m.id
    assert two.get_messages(sid) == [m, n]
    one.create_branch(sid, "alt", m.id)
    assert two.get_branch(sid, "alt") is not None
    two.delete_session(sid)
    assert not one.has_session(sid)
    with pytest.raises(ss.SessionNotFound):
        one.append(sid, role="user", content="too late")


def test_bad_keys_are_refused(store: SessionStore) -> None:
    for bad in ("", 5, None, "x" * 5000, "\ud800"):
        with pytest.raises(ss.InvalidKey):
            store.resolve(bad)  # type: ignore[arg-type]
    assert store.get_all_session_ids() == []


def test_constructor_validates_settings() -> None:
    with pytest.raises(ValueError):
        SessionStore(ss.InMemoryFileSystem(), index_save_delay_ms=-1)
    with pytest.raises(ValueError):
        SessionStore(ss.InMemoryFileSystem(), lock_timeout_ms=0)


def test_repeating_an_append_with_its_id_returns_the_stored_message(store: SessionStore) -> None:
    sid = store.resolve("k")
    first = store.append(sid, role="assistant", content=[{"type": "text", "text": "hi"}], id="m-1", metadata={"a": 1})
    before = snapshot(store, sid)
    again = store.append(sid, role="assistant", content=[{"type": "text", "text": "hi"}], id="m-1", metadata={"a": 1})
    assert again == first
    assert snapshot(store, sid) == before  # nothing written twice
    store.append(sid, role="user", content="next", id="m-2")
    with pytest.raises(ss.DuplicateMessage):  # same id, another parent: not a repeat
        store.append(sid, role="assistant", content=[{"type": "text", "text": "hi"}], id="m-1", metadata={"a": 1},
                     parent_id="m-2")


@pytest.mark.parametrize("bad", [
    {"messages": [ss.Message(id="a", parent_id="later", type="user", role="user", content="x", timestamp=1)]},
    {"messages": [ss.Message(id="a", parent_id=None, type="user", role="user", content=object(), timestamp=1)]},
    {"messages": [ss.Message(id="a", parent_id=None, type="", role="user", content="x", timestamp=1)]},
    {"messages": [ss.Message(id="a", parent_id=None, type="user", role="user", content="x", timestamp=1,
                             fields={"parentId": "b"})]},
    {"branches": [ss.Branch(name="b", head_id="ghost", created_at=1, updated_at=1)]},
    {"branches": [ss.Branch(name="b", head_id=None, created_at="soon", updated_at=1)]},  # type: ignore[arg-type]
    {"branches": [ss.Branch(name="b", head_id=None, created_at=1, updated_at=1)] * 2},  # a name given twice
    {"current": "nowhere"},
])
def test_import_session_refuses_bad_input_and_writes_nothing(store: SessionStore, bad: dict[str, Any]) -> None:
    options: dict[str, Any] = {"messages": [], **bad}
    with pytest.raises(ss.InvalidInput):
        store.import_session("imported", options.pop("messages"), **options)
    assert not store.has_key("imported") and store.get_all_session_ids() == []


def test_import_messages_adds_new_records_and_skips_identical_ones(store: SessionStore) -> None:
    m1 = ss.Message(id="a", parent_id=None, type="user", role="user", content="hi", timestamp=5)
    m2 = ss.Message(id="b", parent_id="a", type="assistant", role="assistant",
                    content=[{"type": "text", "text": "yo"}], timestamp=6)
    sid = store.import_session("k", [m1])
    assert [m.id for m in store.import_messages(sid, [m1, m2])] == ["b"]
    assert store.get_head(sid) == "b"
    assert store.import_messages(sid, [m1, m2]) == []
    changed = ss.Message(id="b", parent_id="a", type="assistant", role="assistant", content="other", timestamp=6)
    with pytest.raises(ss.DuplicateMessage):
        store.import_messages(sid, [changed])
    m3 = ss.Message(id="c", parent_id="a", type="user", role="user", content="x", timestamp=7)
    store.import_messages(sid, [m3], branches=[ss.Branch(name="main", head_id="c", created_at=1, updated_at=7),
                                               ss.Branch(name="alt", head_id="b", created_at=1, updated_at=1)])
    alt = store.get_branch(sid, "alt")
    assert store.get_head(sid) == "c" and alt is not None and alt.head_id == "b"
    with pytest.raises(ss.InvalidMessage):
        store.import_messages(sid, [ss.Message(id="d", parent_id="zz", type="u", role="u", content=1, timestamp=1)])
    before = snapshot(store, sid)
    with pytest.raises(ss.InvalidInput):  # a name given twice: the second would move what the first created
        store.import_messages(sid, [m1], branches=[ss.Branch(name="x", head_id="a", created_at=1, updated_at=1),
                                                   ss.Branch(name="x", head_id="b", created_at=1, updated_at=1)])
    assert snapshot(store, sid) == before


# -- edit and regenerate as chat products do ------------------------------------------------


def test_edit_makes_the_new_version_current_and_keeps_the_old(store: SessionStore) -> None:
    sid = store.resolve("k")
    q = store.append(sid, role="user", content="Waht is 2+2?")
    a = store.append(sid, role="assistant", content="4")
    edited = store.edit(sid, q.id, content="What is 2+2?")
    assert (edited.parent_id, edited.role, edited.content) == (None, "user", "What is 2+2?")
    assert store.get_head(sid) == edited.id
    answer = store.append(sid, role="assistant", content="Four.")  # no parent_id: after the edit
    assert store.get_linear_history(sid) == [edited, answer]
    assert store.get_children(sid, q.id) == [a]  # the old version and its answer stay
    assert {m.id for m in store.get_messages(sid)} == {q.id, a.id, edited.id, answer.id}
    again = store.edit(sid, answer.id, content="4, of course.", metadata={"v": 2})
    assert again.parent_id == edited.id and again.fields == {"metadata": {"v": 2}}
    assert store.get_linear_history(sid)[-1] == again


def test_regenerate_moves_the_head_to_the_prompt_so_the_next_answer_is_a_sibling(store: SessionStore) -> None:
    sid = store.resolve("k")
    q = store.append(sid, role="user", content="Name a cat")
    a = store.append(sid, role="assistant", content="Miso")
    branch = store.regenerate(sid, a.id)
    assert branch.head_id == q.id
    b = store.append(sid, role="assistant", content="Pixel")
    assert b.parent_id == q.id and store.get_linear_history(sid) == [q, b]
    assert store.get_children(sid, q.id) == [a, b]


def test_edit_and_regenerate_refuse_bad_input_and_write_nothing(store: SessionStore) -> None:
    sid = store.resolve("k")
    q = store.append(sid, role="user", content="x")
    before = snapshot(store, sid)
    with pytest.raises(ss.MessageNotFound):
        store.edit(sid, "nope", content="y")
    with pytest.raises(ss.MessageNotFound):
        store.regenerate(sid, "nope")
    with pytest.raises(ss.InvalidInput):
        store.edit(sid, 3, content="y")  # type: ignore[arg-type]
    with pytest.raises(ss.InvalidMessage):
        store.edit(sid, q.id, content={1: "not JSON"})
    assert snapshot(store, sid) == before
