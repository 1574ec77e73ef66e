"""The seed documents' examples, as specifications (both file systems)."""

from __future__ import annotations

import threading
from typing import Any

from session_store import SessionStore


def test_quick_start_resolve_append_history(store: SessionStore) -> None:
    session_id = store.resolve("user:alice")
    msg1 = store.append(session_id, type="user", role="user", content="Hello!", parent_id=None)
    msg2 = store.append(session_id, type="assistant", role="assistant", content="Hi there!", parent_id=msg1.id)

    assert store.get_messages(session_id) == [msg1, msg2]
    assert store.get_linear_history(session_id, msg2.id) == [msg1, msg2]
    assert msg2.parent_id == msg1.id


def test_quick_start_branching(store: SessionStore) -> None:
    session_id = store.resolve("user:alice")
    msg1 = store.append(session_id, role="user", content="Hello!", parent_id=None)
    store.append(session_id, role="assistant", content="Hi there!", parent_id=msg1.id)
    alt = store.append(session_id, role="assistant", content="Hello! How can I help?", parent_id=msg1.id)

    store.create_branch(session_id, "alternative", alt.id)
    leaf_id = store.switch_to_branch(session_id, "alternative")

    assert leaf_id == alt.id
    assert [b.name for b in store.get_branches(session_id)] == ["main", "alternative"]
    assert [m.content for m in store.get_linear_history(session_id)] == ["Hello!", "Hello! How can I help?"]


def test_quick_start_with_lock(store: SessionStore) -> None:
    session_id = store.resolve("user:alice")

    def critical() -> None:
        store.append(session_id, type="user", role="user", content="Critical update", parent_id=None)

    store.with_lock(session_id, "worker-1", critical)
    assert [m.content for m in store.get_messages(session_id)] == ["Critical update"]
    assert not store.is_locked(session_id)

    result = store.acquire_lock(session_id, "worker-1")
    assert result.acquired
    try:
        assert store.is_locked(session_id)
    finally:
        assert store.release_lock(session_id, "worker-1")


def test_example_1_simple_dialogue(store: SessionStore) -> None:
    session_id = store.resolve("user:alice")
    q1 = store.append(session_id, type="user", role="user", content="What is TypeScript?", parent_id=None)
    a1 = store.append(session_id, type="assistant", role="assistant",
                      content="TypeScript is a typed superset of JavaScript.", parent_id=q1.id)
    assert [m.id for m in store.get_linear_history(session_id, a1.id)] == [q1.id, a1.id]


def test_example_2_answer_variants(store: SessionStore) -> None:
    session_id = store.resolve("user:bob")
    question = store.append(session_id, role="user", content="Tell me a joke", parent_id=None)
    answer1 = store.append(session_id, role="assistant", content="Why did the chicken cross the road?",
                           parent_id=question.id)
    store.create_branch(session_id, "joke-1", answer1.id)
    answer2 = store.append(session_id, role="assistant", content="Knock knock!", parent_id=question.id)
    store.create_branch(session_id, "joke-2", answer2.id)

    variants = store.get_children(session_id, question.id)
    assert [v.id for v in variants] == [answer1.id, answer2.id]
    assert store.get_branch(session_id, "joke-2").head_id == answer2.id  # type: ignore[union-attr]
    assert store.get_branch_points(session_id) == [question]


def test_example_3_concurrent_workers_one_gets_the_lock(store: SessionStore) -> None:
    session_id = store.resolve("shared:session")
    barrier = threading.Barrier(3)
    holding = threading.Event()
    outcome: dict[str, bool] = {}

    def worker(worker_id: str) -> None:
        barrier.wait()
        result = store.acquire_lock(session_id, worker_id)
        outcome[worker_id] = result.acquired
        if not result.acquired:
            return
        try:
            store.append(session_id, type="system", role="system", content=f"Processed by {worker_id}",
                         parent_id=None)
            holding.wait(0.5)  # keep holding while the others try
        finally:
            store.release_lock(session_id, worker_id)

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [w for w, got in outcome.items() if got]
    assert len(winners) == 1
    assert [m.content for m in store.get_messages(session_id)] == [f"Processed by {winners[0]}"]


def test_tutorial_branch_example(store: SessionStore) -> None:
    sid = store.resolve("tutorial:branch")
    msg1 = store.append(sid, role="user", content="创建文件")
    msg2 = store.append(sid, role="assistant", content="文件已创建", parent_id=msg1.id)
    msg3 = store.append(sid, role="user", content="修改文件", parent_id=msg2.id)
    msg4 = store.append(sid, role="assistant", content="文件已修改", parent_id=msg3.id)
    msg5 = store.append(sid, role="user", content="改用 TypeScript", parent_id=msg2.id)
    msg6 = store.append(sid, role="assistant", content="TypeScript 文件已创建", parent_id=msg5.id)

    assert len(store.get_messages(sid)) == 6
    assert store.get_leaves(sid) == [msg4, msg6]
    assert store.get_branch_points(sid) == [msg2]
    assert store.get_linear_history(sid, msg4.id) == [msg1, msg2, msg3, msg4]
    assert store.get_linear_history(sid, msg6.id) == [msg1, msg2, msg5, msg6]
    assert len(store.build_context(sid, msg4.id)) == 4
    assert len(store.build_context(sid, msg6.id)) == 4
    assert store.get_tree(sid) == [msg1, msg2, msg3, msg4, msg5, msg6]


def test_tutorial_agent_loop_context(store: SessionStore) -> None:
    """The tutorial's agent: assistant tool calls, tool call records, tool results."""
    sid = store.resolve("tutorial:agent")
    current = store.append(sid, role="user", content="测试状态管理").id
    for i in range(3):
        calls = [{"id": f"call-{i}", "name": "test", "params": {}}] if i < 2 else None
        extra: dict[str, Any] = {"tool_calls": calls} if calls else {}
        assistant = store.append(sid, role="assistant", content=f"这是第 {i + 1} 轮回应", parent_id=current, **extra)
        current = assistant.id
        if i < 2:
            tool = store.append(sid, role="assistant", type="tool", content='{"name":"test","params":{}}',
                                tool_call_id=f"call-{i}", parent_id=current)
            result = store.append(sid, role="tool", type="tool_result", content=None, output=f"工具执行结果 {i + 1}",
                                  details={"iteration": i + 1}, tool_call_id=f"call-{i}", parent_id=tool.id)
            current = result.id

    context = store.build_context(sid)
    assert [m["role"] for m in context] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert context[1]["tool_calls"] == [
        {"id": "call-0", "type": "function", "function": {"name": "test", "arguments": "{}"}}]
    assert context[2] == {"role": "tool", "tool_call_id": "call-0", "content": "工具执行结果 1"}
    assert store.get_leaves(sid)[0].id == current
    assert store.get_branch_points(sid) == []
