"""session_store_langgraph with the real LangGraph: its own checkpointer conformance
suite (langgraph-checkpoint-conformance: all eight capabilities detected and passed) on
memory, files, SQLite and PostgreSQL; a StateGraph with a scripted model running on
it, resumed by a fresh store, forked from an earlier checkpoint (time travel); each
channel value kept once per version."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pg
import pytest
from frameworks import require

require("langgraph.checkpoint.conformance", "langgraph")

from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from session_store_langgraph import SessionStoreSaver  # noqa: E402

from session_store import InMemoryFileSystem, InvalidInput, SessionStore  # noqa: E402


@pytest.mark.parametrize("backend", ["memory", "files", "sqlite", "postgres"])
def test_langgraph_s_own_conformance_suite_passes_every_capability(backend: str, tmp_path: Path) -> None:
    with pg.fresh_stores(backend, tmp_path) as make:
        @checkpointer_test(name=f"SessionStoreSaver[{backend}]")
        async def saver() -> AsyncIterator[SessionStoreSaver]:
            yield SessionStoreSaver(make())

        report = asyncio.run(validate(saver))
    results = report.results
    assert {cap.value for cap in ALL_CAPABILITIES} <= set(results)
    for name, result in results.items():
        assert result.detected, f"{name} not detected"
        assert result.passed and not result.failures and not result.tests_skipped, (name, result.failures)


class State(TypedDict):
    messages: Annotated[list[str], operator.add]
    turns: int


def chat_graph(saver: SessionStoreSaver) -> Any:
    """A graph with a scripted model: it answers each question with its number."""
    def model(state: State) -> dict[str, Any]:
        return {"messages": [f"answer {state['turns'] + 1} to {state['messages'][-1]}"], "turns": state["turns"] + 1}

    builder = StateGraph(State)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=saver)


def test_a_graph_runs_resumes_in_another_store_and_forks_from_an_earlier_checkpoint(tmp_path: Path) -> None:
    config: Any = {"configurable": {"thread_id": "user:alice"}}
    with SessionStore(storage_dir=tmp_path) as store:
        graph = chat_graph(SessionStoreSaver(store))
        graph.invoke({"messages": ["hi"], "turns": 0}, config)
        graph.invoke({"messages": ["and then?"]}, config)
    with SessionStore(storage_dir=tmp_path) as store:  # another process, later: the thread goes on
        saver = SessionStoreSaver(store)
        graph = chat_graph(saver)
        state = graph.get_state(config)
        assert state.values["messages"] == ["hi", "answer 1 to hi", "and then?", "answer 2 to and then?"]
        history = list(graph.get_state_history(config))
        after_first = next(s for s in history if s.values.get("turns") == 1 and not s.next)
        forked = graph.invoke({"messages": ["instead?"]}, after_first.config)  # time travel: a fork
        assert forked["messages"] == ["hi", "answer 1 to hi", "instead?", "answer 2 to instead?"]
        assert graph.get_state(config).values["messages"][-1] == "answer 2 to instead?"

        sid = store.resolve("langgraph:user%3Aalice", create=False)
        assert sid is not None
        checkpoints = {m.content["id"]: m for m in store.get_messages(sid) if m.type == "langgraph.checkpoint"}
        for m in checkpoints.values():  # a checkpoint's parent config is its parent message
            parent = m.content["parent"]
            assert (m.parent_id is None) == (parent is None)
            if parent is not None:
                assert checkpoints[parent].id == m.parent_id
        fork_point = checkpoints[after_first.config["configurable"]["checkpoint_id"]]
        assert len([m for m in checkpoints.values() if m.parent_id == fork_point.id]) == 2  # two branches
        assert len(store.get_leaves(sid)) >= 2


def test_a_channel_value_is_kept_once_per_version(tmp_path: Path) -> None:
    with SessionStore(InMemoryFileSystem()) as store:
        graph = chat_graph(SessionStoreSaver(store))
        config: Any = {"configurable": {"thread_id": "t"}}
        for i in range(5):
            graph.invoke({"messages": [f"q{i}"], "turns": i}, config)
        sid = store.resolve("langgraph:t")
        records = store.get_messages(sid)
        values = [m.content for m in records if m.type == "langgraph.value"]
        versions = {(v["ns"], v["channel"], str(v["version"])) for v in values}
        assert len(values) == len(versions)  # never the same channel version twice
        checkpoints = [m for m in records if m.type == "langgraph.checkpoint"]
        assert len(values) < 3 * len(checkpoints)  # a checkpoint refers to values, it does not copy them


def test_bad_thread_ids_and_strategies_are_refused_and_write_nothing() -> None:
    with SessionStore(InMemoryFileSystem()) as store:
        saver = SessionStoreSaver(store)
        for bad in ("", None, 1.5, ["t"]):
            with pytest.raises(InvalidInput):
                saver.get_tuple({"configurable": {"thread_id": bad}})
        with pytest.raises(InvalidInput):
            saver.prune(["t"], strategy="some")
        assert store.get_all_session_ids() == []
