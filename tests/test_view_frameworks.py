"""What each agent framework's adapter stores reads as a conversation in the browser view
(real headless Chromium) and in ``session-store history``: user and assistant text as
text, each tool call one card with the result it got, leaves named by their text; never the
framework's JSON. One real framework per test; each skips without its package unless
``SESSION_STORE_REQUIRE_FRAMEWORKS=1`` (CI), and the browser as in tests/test_view.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from frameworks import require
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_view import browser, conversation, page_data, write_page  # noqa: F401 - browser: the fixture

import session_store as ss
from session_store import InMemoryFileSystem, SessionStore
from session_store_view import render_session

QUESTION, ANSWER, RESULT = "Weather in Paris?", "It is sunny in Paris.", "Sunny, 21 degrees"


def langchain(store: SessionStore) -> str:
    require("langchain_core", "langchain")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from session_store_langchain import SessionStoreChatMessageHistory

    SessionStoreChatMessageHistory("user:lc", store).add_messages([
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[{"id": "call_1", "name": "weather", "args": {"city": "Paris"}}]),
        ToolMessage(RESULT, tool_call_id="call_1"), AIMessage(ANSWER)])
    return "user:lc"


def pydantic_ai(store: SessionStore) -> str:
    require("pydantic_ai", "pydantic-ai")
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from session_store_pydantic_ai import save_messages

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("weather", {"city": "Paris"}, tool_call_id="call_1")])
        return ModelResponse(parts=[TextPart(ANSWER)])

    agent = Agent(FunctionModel(model))

    @agent.tool_plain
    def weather(city: str) -> str:
        return RESULT

    save_messages(store, "user:pyd", agent.run_sync(QUESTION).all_messages())
    return "user:pyd"


def llama_index(store: SessionStore) -> str:
    require("llama_index.core", "llama-index")
    from llama_index.core.llms import ChatMessage

    from session_store_llama_index import SessionStoreChatStore

    chat = SessionStoreChatStore(store)
    chat.set_messages("user:li", [
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}),
        ChatMessage(role="tool", content=RESULT, additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(role="assistant", content=ANSWER)])
    return "user:li"


def openai_agents(store: SessionStore) -> str:
    require("agents", "openai-agents")
    from session_store_openai_agents import SessionStoreSession

    items: list[Any] = [
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": RESULT},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ANSWER}]}]
    asyncio.run(SessionStoreSession("user:oa", store).add_items(items))
    return "user:oa"


def claude_agent_sdk(store: SessionStore) -> str:
    require("claude_agent_sdk", "claude-agent-sdk")
    from session_store_claude_agent_sdk import ClaudeSessionStore

    def line(kind: str, uuid: str, parent: str | None, content: object) -> Any:
        return {"type": kind, "uuid": uuid, "parentUuid": parent, "sessionId": "s", "isSidechain": False,
                "timestamp": "2026-12-01T10:00:00.000Z", "message": {"role": kind, "content": content}}

    asyncio.run(ClaudeSessionStore(store).append({"project_key": "p", "session_id": "s"}, [
        line("user", "u1", None, QUESTION),
        line("assistant", "a1", "u1", [{"type": "tool_use", "id": "call_1", "name": "weather",
                                        "input": {"city": "Paris"}}]),
        line("user", "u2", "a1", [{"type": "tool_result", "tool_use_id": "call_1", "content": RESULT}]),
        line("assistant", "a2", "u2", [{"type": "text", "text": ANSWER}])]))
    return "claude:p/s"


def langgraph(store: SessionStore) -> str:
    require("langgraph", "langgraph")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition
    from session_store_langgraph import SessionStoreSaver

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return RESULT

    def model(state: MessagesState) -> dict[str, Any]:
        if isinstance(state["messages"][-1], ToolMessage):
            return {"messages": [AIMessage(ANSWER)]}
        call = {"id": "call_1", "name": "weather", "args": {"city": "Paris"}}
        return {"messages": [AIMessage("", tool_calls=[call])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", ToolNode([weather]))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    builder.compile(checkpointer=SessionStoreSaver(store)).invoke({"messages": [HumanMessage(QUESTION)]},
                                                                   {"configurable": {"thread_id": "lg"}})
    return "langgraph:lg"


FRAMEWORKS: dict[str, Callable[[SessionStore], str]] = {
    "langchain": langchain, "langgraph": langgraph, "pydantic-ai": pydantic_ai, "llama-index": llama_index,
    "openai-agents": openai_agents, "claude-agent-sdk": claude_agent_sdk}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_framework_s_session_reads_as_a_conversation_in_the_browser(browser: WebDriver,  # noqa: F811
                                                                     framework: str, tmp_path: Path) -> None:
    store = SessionStore(InMemoryFileSystem())
    sid = store.resolve(FRAMEWORKS[framework](store))
    browser.get(write_page(store, sid, tmp_path))
    text = conversation(browser)
    assert QUESTION in text and ANSWER in text and "weather" in text
    assert "no result" not in text  # the call found its result, the message after it
    calls = browser.find_elements(By.CSS_SELECTOR, "#conversation .call")
    assert len(calls) == 1 and calls[0].text.endswith(f"result\n{RESULT}")  # short: shown in the call's card
    assert text.count(RESULT) == 1  # one card for the call and its result: the result's message has none
    heading = browser.find_element(By.ID, "title").text
    assert heading == QUESTION  # the page is named by what the user asked, not by the framework's key
    assert '"type"' not in text and '"data"' not in text and '"parts"' not in text  # no framework JSON
    jump = browser.find_element(By.CSS_SELECTOR, "nav.jump").text
    assert ANSWER[:20] in jump  # the leaf is named by its text, not "assistant"
    store.close()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_framework_s_session_reads_as_a_conversation_in_history(framework: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        key = FRAMEWORKS[framework](store)
    assert ss.main(["--dir", str(tmp_path), "history", key]) == 0
    out = capsys.readouterr().out
    assert f"user: {QUESTION}" in out and f"assistant: {ANSWER}" in out
    assert "weather" in out and RESULT in out
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())  # no record printed as JSON


def test_a_langgraph_thread_s_values_and_writes_are_notes_off_the_conversation(browser: WebDriver,  # noqa: F811
                                                                                tmp_path: Path) -> None:
    """LangGraph's channel values and pending writes hold its serializer's bytes: each
    is a one-line note, kept out of the conversation and its leaves; a checkpoint that
    added no message is a note too."""
    store = SessionStore(InMemoryFileSystem())
    sid = store.resolve(langgraph(store))
    shown = page_data(render_session(store, sid))["m"]
    bookkeeping = [m for m in shown if m["y"] in ("langgraph.value", "langgraph.write")]
    assert bookkeeping and all(m["c"] == [] and m["n"] and m.get("bk") == 1 for m in bookkeeping)
    assert any(m["n"].startswith("messages (msgpack, ") for m in bookkeeping)
    assert any(m["y"] == "langgraph.checkpoint" and m["c"] == [] and m["n"] for m in shown)  # the input's
    browser.get(write_page(store, sid, tmp_path))
    text = conversation(browser)
    assert text.count(QUESTION) == 1 and text.count(ANSWER) == 1 and "msgpack" not in text and '"b"' not in text
    jump = browser.find_element(By.CSS_SELECTOR, "nav.jump").text
    assert "leaves (1)" in jump.lower() and ANSWER[:20] in jump and "msgpack" not in jump
    store.close()
