"""session_store_langgraph with the real LangGraph: its own checkpointer conformance
suite (langgraph-checkpoint-conformance: all eight capabilities detected and passed) on
memory, files, SQLite and PostgreSQL; a StateGraph with a scripted model running on
it, resumed by a fresh store, forked from an earlier checkpoint (time travel); each
channel value kept once per version; a thread read as the conversation its state holds
(build_context, read_turns, history)."""

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

from session_store import InMemoryFileSystem, InvalidInput, SessionStore, main, read_turns  # noqa: E402


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


def weather_agent(saver: SessionStoreSaver) -> Any:
    """A StateGraph of a scripted chat model and LangGraph's ToolNode: a question about
    the weather calls the tool, any other text is echoed."""
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.graph import MessagesState
    from langgraph.prebuilt import ToolNode, tools_condition

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    def model(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1]
        if isinstance(last, ToolMessage):
            return {"messages": [AIMessage(f"It says: {last.content}")]}
        if "weather" in str(last.content):
            return {"messages": [AIMessage("", tool_calls=[{"id": "call_1", "name": "weather",
                                                            "args": {"city": "Paris"}}])]}
        return {"messages": [AIMessage(f"You said: {last.content}")]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", ToolNode([weather]))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=saver)


CONVERSATION = [
    {"role": "user", "content": "What is the weather?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Paris"},
    {"role": "assistant", "content": "It says: Sunny in Paris"},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You said: Thanks"}]


def test_a_thread_s_context_is_the_conversation_its_state_holds(tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage

    config: Any = {"configurable": {"thread_id": "t"}}
    with SessionStore(storage_dir=tmp_path) as store:
        graph = weather_agent(SessionStoreSaver(store))
        graph.invoke({"messages": [HumanMessage("What is the weather?")]}, config)
        graph.invoke({"messages": [HumanMessage("Thanks")]}, config)
        sid = store.resolve("langgraph:t")
        assert len(graph.get_state(config).values["messages"]) == len(CONVERSATION)
        assert store.build_context(sid) == CONVERSATION
        assert store.get_metadata(sid).title == "What is the weather?"  # type: ignore[union-attr]
        assert [h.session_id for h in store.search("weather")] == [sid]


def test_each_checkpoint_reads_as_the_messages_it_added_so_a_path_says_each_once() -> None:
    from langchain_core.messages import HumanMessage

    with SessionStore(InMemoryFileSystem()) as store:
        graph = weather_agent(SessionStoreSaver(store))
        config: Any = {"configurable": {"thread_id": "t"}}
        graph.invoke({"messages": [HumanMessage("What is the weather?")]}, config)
        graph.invoke({"messages": [HumanMessage("Thanks")]}, config)
        sid = store.resolve("langgraph:t")
        said = [(t.role, t.content) for m in store.get_linear_history(sid) for t in read_turns(m)]
        assert [role for role, _ in said] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
        assert said[1][1] == [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]
        assert said[2][1] == [{"type": "text", "text": "Sunny in Paris"}]
        assert all(read_turns(m) == [] for m in store.get_messages(sid) if m.type != "langgraph.checkpoint")


def test_a_context_follows_the_state_when_messages_are_removed_and_after_a_fork() -> None:
    from langchain_core.messages import HumanMessage, RemoveMessage

    with SessionStore(InMemoryFileSystem()) as store:
        graph = weather_agent(SessionStoreSaver(store))
        config: Any = {"configurable": {"thread_id": "t"}}
        graph.invoke({"messages": [HumanMessage("hello")]}, config)
        first = graph.get_state(config)
        graph.invoke({"messages": [HumanMessage("again")]}, config)
        sid = store.resolve("langgraph:t")
        hello = first.values["messages"][0]
        graph.update_state(config, {"messages": [RemoveMessage(id=hello.id)]})
        assert [m["content"] for m in store.build_context(sid)] == ["You said: hello", "again", "You said: again"]
        graph.invoke({"messages": [HumanMessage("instead")]}, first.config)  # time travel: the head follows
        assert [m["content"] for m in store.build_context(sid)] == ["hello", "You said: hello", "instead",
                                                                     "You said: instead"]


def test_history_prints_a_thread_as_a_conversation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_core.messages import HumanMessage

    with SessionStore(storage_dir=tmp_path) as store:
        weather_agent(SessionStoreSaver(store)).invoke({"messages": [HumanMessage("What is the weather?")]},
                                                       {"configurable": {"thread_id": "t"}})
    assert main(["--dir", str(tmp_path), "history", "langgraph:t"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "user: What is the weather?", 'assistant: [call weather {"city":"Paris"}]', "tool: Sunny in Paris",
        "assistant: It says: Sunny in Paris"]
    assert main(["--dir", str(tmp_path), "history", "langgraph:t", "--format", "openai"]) == 0
    assert '"It says: Sunny in Paris"' in capsys.readouterr().out
