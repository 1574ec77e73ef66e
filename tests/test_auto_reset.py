"""Auto-reset: the pure manager (properties, edges) and lossless resets in the store."""

from __future__ import annotations

import dataclasses
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import FakeClock, StoreFactory
from hypothesis import given

import session_store as ss
from session_store import AutoResetConfig, AutoResetManager, Message

# -- the manager --------------------------------------------------------------------


def msg(i: int, role: str = "user", content: Any = None, ts: int = 0, type: str | None = None) -> Message:
    return Message(id=f"m{i}", parent_id=f"m{i - 1}" if i else None, type=type or role, role=role,
                   content=f"message {i}" if content is None else content, timestamp=ts)


messages_st = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), st.text(max_size=30), st.integers(0, 10_000)),
    max_size=40,
).map(lambda rows: [msg(i, role, content, ts) for i, (role, content, ts) in enumerate(rows)])

configs_st = st.builds(
    lambda strategy, keep, mm, mt, age, marker: AutoResetConfig(
        max_messages=mm, max_tokens=mt, max_age_ms=age, keep_strategy=strategy,
        keep_count=min(keep, mm - 1) if mm is not None else keep, insert_reset_marker=marker),
    st.sampled_from(["none", "first", "last", "system"]), st.integers(0, 8),
    st.one_of(st.none(), st.integers(1, 30)), st.one_of(st.none(), st.integers(1, 300)),
    st.one_of(st.none(), st.integers(1, 20_000)), st.booleans())


@given(configs_st, messages_st, st.integers(0, 30_000))
def test_manager_properties(config: AutoResetConfig, messages: list[Message], now_ms: int) -> None:
    manager = AutoResetManager(config, clock=lambda: now_ms / 1000)
    result = manager.check_and_reset(messages)
    if not result.reset:
        assert result.reason is None and result.messages == messages
        assert manager.over_limit(len(messages), sum(config.count_tokens(m) for m in messages),
                                  messages[0].timestamp if messages else None, now_ms) is None
        return
    kept = result.messages[1:] if config.insert_reset_marker else result.messages
    assert len(result.messages) <= len(messages) + 1
    originals = iter(messages)
    for copy in kept:  # copies of a subsequence, in order, chained after the marker: what a store writes
        original = next(o for o in originals if o.id == copy.fields["reset_from"])
        assert (copy.role, copy.type, copy.content) == (original.role, original.type, original.content)
        assert copy.id != original.id and copy.timestamp == now_ms
    assert [m.parent_id for m in result.messages] == [None, *[m.id for m in result.messages]][:len(result.messages)]
    if config.keep_strategy == "none":
        assert kept == []
    if config.keep_strategy == "system":
        assert all(m.role == "system" for m in kept)
    assert len(kept) <= config.keep_count
    if config.insert_reset_marker:
        marker = result.messages[0]
        assert (marker.type, marker.role, marker.parent_id) == ("reset", "system", None)
        assert result.reason in marker.content
    assert not manager.check_and_reset(result.messages).reset  # a reset result never resets again


@pytest.mark.parametrize("limit,count,reset", [(3, 3, False), (3, 4, True)])
def test_max_messages_edge(limit: int, count: int, reset: bool) -> None:
    manager = AutoResetManager(AutoResetConfig(max_messages=limit))
    result = manager.check_and_reset([msg(i) for i in range(count)])
    assert result.reset is reset and result.reason == ("max_messages" if reset else None)


@pytest.mark.parametrize("age_ms,reset", [(1000, False), (1001, True)])
def test_max_age_edge(age_ms: int, reset: bool) -> None:
    manager = AutoResetManager(AutoResetConfig(max_age_ms=1000), clock=lambda: age_ms / 1000)
    assert manager.check_and_reset([msg(0, ts=0)]).reset is reset


@pytest.mark.parametrize("chars,reset", [(10, False), (11, True)])
def test_max_tokens_edge_with_the_default_counter(chars: int, reset: bool) -> None:
    manager = AutoResetManager(AutoResetConfig(max_tokens=10))
    assert manager.check_and_reset([msg(0, content="x" * chars)]).reset is reset


def test_limits_count_only_the_segment_after_the_last_marker() -> None:
    manager = AutoResetManager(AutoResetConfig(max_messages=2))
    history = [msg(0), msg(1), msg(2, role="system", type="reset"), msg(3), msg(4)]
    assert not manager.check_and_reset(history).reset
    assert manager.check_and_reset([*history, msg(5)]).reset


def test_strategies_keep_what_they_say() -> None:
    history = [msg(0, "system"), msg(1), msg(2, "system"), msg(3), msg(4)]

    def kept(strategy: str, n: int) -> list[str]:
        config = AutoResetConfig(max_messages=4, keep_strategy=strategy, keep_count=n, insert_reset_marker=False)
        return [m.fields["reset_from"] for m in AutoResetManager(config).check_and_reset(history).messages]

    assert kept("none", 3) == []
    assert kept("first", 2) == ["m0", "m1"]
    assert kept("last", 2) == ["m3", "m4"]
    assert kept("system", 3) == ["m0", "m2"]
    assert kept("system", 1) == ["m0"]


def test_kept_messages_are_trimmed_to_fit_the_token_limit() -> None:
    history = [msg(0, content="x" * 40), msg(1, content="y" * 40), msg(2, content="z" * 40)]
    config = AutoResetConfig(max_tokens=100, keep_strategy="last", keep_count=3)
    result = AutoResetManager(config).check_and_reset(history)
    assert [m.fields["reset_from"] for m in result.messages[1:]] == ["m1", "m2"]  # the oldest went first


def test_custom_strategy_and_token_counter() -> None:
    seen: list[Message] = []

    def counter(m: Message) -> int:
        seen.append(m)
        return 1

    config = AutoResetConfig(max_tokens=2, token_counter=counter, keep_count=1,
                             keep_strategy=lambda ms, n: [m for m in ms if m.id == "m1"][:n])
    result = AutoResetManager(config).check_and_reset([msg(0), msg(1), msg(2)])
    assert result.reason == "max_tokens" and [m.fields["reset_from"] for m in result.messages[1:]] == ["m1"]
    assert all(isinstance(m, Message) for m in seen)


@pytest.mark.parametrize("bad", [
    {"max_messages": -1}, {"max_messages": 0}, {"max_age_ms": -5}, {"max_tokens": -1}, {"keep_count": -1},
    {"keep_strategy": "middle"}, {"keep_strategy": 5}, {"max_messages": 5, "keep_strategy": "last", "keep_count": 5},
    {"max_messages": 1.5}, {"token_counter": "len"},
])
def test_invalid_configs_fail_at_construction(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AutoResetConfig(**bad)


def test_disabled_config_never_resets() -> None:
    manager = AutoResetManager(AutoResetConfig(enabled=False, max_messages=1))
    assert not manager.check_and_reset([msg(0), msg(1), msg(2)]).reset


# -- in the store --------------------------------------------------------------------


def test_reset_by_count_happens_before_the_append_that_would_overflow(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=1))
    sid = store.resolve("k")
    first = [store.append(sid, role="user", content=f"m{i}") for i in range(3)]  # exactly at the limit
    assert store.get_metadata(sid).reset_count == 0  # type: ignore[union-attr]
    fourth = store.append(sid, role="user", content="m3")  # one over: reset first
    history = store.get_linear_history(sid)
    assert [m.type for m in history] == ["reset", "user", "user"]
    marker, copy, new = history
    assert marker.parent_id is None and marker.role == "system" and "max_messages" in marker.content
    assert copy.content == "m2" and copy.fields["reset_from"] == first[2].id and copy.id != first[2].id
    assert new == fourth and fourth.parent_id == copy.id
    assert store.get_head(sid) == fourth.id
    # nothing lost: the old history is still in the tree
    assert [m.id for m in store.get_messages(sid)][:3] == [m.id for m in first]
    assert store.get_linear_history(sid, first[2].id) == first
    assert len(store.get_tree(sid)) == 6


def test_reset_by_age_uses_the_injected_clock(open_store: StoreFactory, clock: FakeClock) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_age_ms=60_000))
    sid = store.resolve("k")
    store.append(sid, role="user", content="old")
    clock.advance(60)
    store.append(sid, role="user", content="exactly at the limit")
    assert store.get_metadata(sid).reset_count == 0  # type: ignore[union-attr]
    clock.advance(0.001)
    new = store.append(sid, role="user", content="one ms over")
    assert [m.content for m in store.get_linear_history(sid)][1:] == ["one ms over"]
    meta = store.get_metadata(sid)
    assert meta.reset_count == 1 and meta.last_reset_at == new.timestamp  # type: ignore[union-attr]


def test_reset_by_tokens_keeps_system_messages(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_tokens=20, keep_strategy="system", keep_count=2))
    sid = store.resolve("k")
    store.append(sid, role="system", content="be brief")  # 8
    store.append(sid, role="user", content="0123456789")  # 18
    store.append(sid, role="assistant", content="ok")  # 20: at the limit
    store.append(sid, role="user", content="next")  # 24: over
    assert [(m.type, m.content) for m in store.get_linear_history(sid)][1:] == [
        ("system", "be brief"), ("user", "next")]


def test_appends_off_the_head_never_reset(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_messages=2))
    sid = store.resolve("k")
    a = store.append(sid, role="user", content="a")
    store.append(sid, role="assistant", content="b")
    for i in range(3):
        store.append(sid, role="assistant", content=f"sibling {i}", parent_id=a.id)
    store.append(sid, role="user", content="root", parent_id=None)
    assert store.get_metadata(sid).reset_count == 0  # type: ignore[union-attr]


def test_nothing_kept_and_no_marker_makes_the_new_message_a_root(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_messages=2, insert_reset_marker=False))
    sid = store.resolve("k")
    for i in range(2):
        store.append(sid, role="user", content=f"m{i}")
    third = store.append(sid, role="user", content="fresh start")
    assert third.parent_id is None and store.get_head(sid) == third.id
    assert store.get_linear_history(sid) == [third]
    fourth = store.append(sid, role="user", content="continues")
    assert fourth.parent_id == third.id


def test_manual_reset_and_overrides(open_store: StoreFactory) -> None:
    store = open_store()
    sid = store.resolve("k")
    for i in range(4):
        store.append(sid, role="user", content=f"m{i}")
    events: list[ss.Event] = []
    store.subscribe(events.append)
    result = store.reset(sid, keep_strategy="last", keep_count=2)
    assert result.reset and result.reason == "manual"
    assert [m.content for m in result.messages] == [result.messages[0].content, "m2", "m3"]
    assert store.get_linear_history(sid) == result.messages
    assert [e.type for e in events] == ["session.reset"] + ["message.added"] * 3 and events[0].data == result
    assert [e.data for e in events[1:]] == result.messages  # a subscriber mirroring the session misses nothing
    with pytest.raises(ss.InvalidInput):
        store.reset(sid, keep_strategy="bogus")
    with pytest.raises(ss.InvalidInput):
        store.reset(sid, no_such_setting=1)
    assert store.get_linear_history(sid) == result.messages  # refused resets wrote nothing


def test_reset_of_an_empty_session_is_a_lone_marker(store: ss.SessionStore) -> None:
    sid = store.resolve("k")
    result = store.reset(sid)
    assert [m.type for m in result.messages] == ["reset"]
    assert store.get_head(sid) == result.messages[0].id


def test_resets_survive_reopening(open_store: StoreFactory, clock: FakeClock) -> None:
    config = AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=2)
    store = open_store(auto_reset=config)
    sid = store.resolve("k")
    for i in range(10):
        store.append(sid, role="user", content=f"m{i}")
        clock.advance(1)
    before = (store.get_messages(sid), store.get_branches(sid), store.get_head(sid), store.get_metadata(sid))
    store.close()
    again = open_store(auto_reset=config)
    assert (again.get_messages(sid), again.get_branches(sid), again.get_head(sid), again.get_metadata(sid)) == before
    # and the running counts were rebuilt: the next append resets exactly when it should
    again.append(sid, role="user", content="m10")
    assert [m.content for m in again.get_linear_history(sid)][1:] == ["m8", "m9", "m10"]


def test_contexts_leave_the_reset_marker_out_unless_asked(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_messages=2, keep_strategy="system", keep_count=1))
    sid = store.resolve("k")
    store.append(sid, role="system", content="Be kind.")
    store.append(sid, role="user", content="a")
    store.append(sid, role="user", content="b")  # over the limit: reset, the system prompt kept
    assert store.get_linear_history(sid)[0].type == "reset"  # the marker stays in the tree
    assert store.build_context(sid) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "b"}]
    context = store.build_context(sid, include_reset_markers=True)
    assert [c["role"] for c in context] == ["system", "system", "user"] and "reset" in context[0]["content"].lower()


def test_auto_reset_must_be_a_config() -> None:
    with pytest.raises(ss.InvalidInput):
        ss.SessionStore(ss.InMemoryFileSystem(), auto_reset={"max_messages": 3})  # type: ignore[arg-type]


def test_the_pure_manager_and_the_store_reset_alike(open_store: StoreFactory, clock: FakeClock) -> None:
    config = AutoResetConfig(keep_strategy="last", keep_count=2)
    store = open_store(auto_reset=config)
    sid = store.resolve("k")
    for i in range(4):
        store.append(sid, role="user", content=f"m{i}", metadata={"i": i})
    before = store.get_linear_history(sid)
    predicted = AutoResetManager(config, clock=clock).reset(before, "manual", round(clock() * 1000))
    written = store.reset(sid).messages
    assert written == store.get_linear_history(sid)

    def shape(m: Message) -> tuple[Any, ...]:
        return m.type, m.role, m.content, m.timestamp, dict(m.fields)
    assert [shape(m) for m in written] == [shape(m) for m in predicted.messages]  # the same segment, ids aside
    assert [m.fields["reset_from"] for m in written[1:]] == [m.id for m in before[-2:]]


def test_the_seed_s_dict_messages_are_accepted_and_given_back_as_dicts() -> None:
    manager = AutoResetManager(AutoResetConfig(max_messages=2, keep_strategy="first", keep_count=1,
                                               token_counter=lambda m: len(m.content or "")))
    messages = [{"id": f"msg-{i}", "parentId": f"msg-{i - 1}" if i else None, "type": "user", "role": "user",
                 "content": f"hello {i}", "timestamp": 1234567890 + i} for i in range(3)]
    result = manager.check_and_reset(messages)
    assert result.reset and result.reason == "max_messages"
    marker, kept = result.messages
    assert isinstance(marker, dict) and marker["type"] == "reset" and marker["parentId"] is None
    assert kept["content"] == "hello 0" and kept["resetFrom"] == "msg-0" and kept["parentId"] == marker["id"]
    assert manager.check_and_reset(messages[:2]) == ss.ResetResult(reset=False, reason=None, messages=messages[:2])
    with pytest.raises(ss.InvalidMessage):
        manager.check_and_reset([{"role": "user"}])


# -- tokens, not characters ---------------------------------------------------------------


def test_the_default_counter_counts_characters_and_the_estimate_counts_tokens() -> None:
    hi = Message(id="a", parent_id=None, type="user", role="user", content="hi", timestamp=0, fields={})
    assert ss.default_token_counter(hi) == 2  # the seed's: characters
    assert ss.estimate_tokens(hi) == 1 + 4  # a word, and the message's framing
    prose = dataclasses.replace(hi, content="word " * 100)
    assert ss.estimate_tokens(prose) == 125 + 4
    call = dataclasses.replace(hi, role="assistant", type="assistant", content=None, fields={
        "tool_calls": [{"id": "c", "function": {"name": "lookup", "arguments": '{"q": "weather"}'}}]})
    assert ss.estimate_tokens(call) > 4  # a tool call is read too (the seed's counter says 0)


def test_a_chat_of_short_messages_does_not_reset_early_with_the_estimate(open_store: StoreFactory) -> None:
    store = open_store(auto_reset=AutoResetConfig(max_tokens=100, token_counter=ss.estimate_tokens))
    sid = store.resolve("k")
    for _ in range(16):
        store.append(sid, role="user", content="ok")
    assert store.get_metadata(sid).reset_count == 0  # type: ignore[union-attr]  # 16 x (1 + 4) = 80 tokens


def test_tiktoken_counts_with_an_encoding_and_refuses_one_it_cannot_load() -> None:
    import tiktoken  # the real package (the test extra), with an encoding that needs no download
    one_per_byte = tiktoken.Encoding(name="bytes", pat_str=r"\S+|\s+",
                                     mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    count = ss.tiktoken_counter(one_per_byte)
    hello = Message(id="a", parent_id=None, type="user", role="user", content="héllo", timestamp=0, fields={})
    assert count(hello) == len("héllo".encode()) + 4
    with pytest.raises(ss.InvalidInput):
        ss.tiktoken_counter("no-such-encoding")
