"""The adapters' turn cost against each framework's own default store, in one run.

    python3 benchmarks/adapters.py            # 200 turns per store, writes benchmarks/ADAPTERS.md
    python3 benchmarks/adapters.py --turns 20 --no-write

A turn is what a framework asks of its store around one model call, without the model:
read the history, then add the user's message and the answer. Every store keeps its
data on the same disk (a temporary directory); ours is a durable ``SessionStore``
(JSONL files, fsync'd) unless ``--backend sqlite``. Each turn is timed with
``perf_counter_ns``; the table shows the median and p99 of all turns of a session
growing from empty to ``--turns`` turns. Needs the frameworks (``pip install -e
".[openai-agents,langchain,pydantic-ai,llama-index,langgraph]"``, ``langchain-community`` for
LangChain's ``FileChatMessageHistory`` and ``langgraph-checkpoint-sqlite`` for LangGraph's
``SqliteSaver``: the ``bench`` extra); a framework that is missing is reported, not
measured. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "integrations")]

from session_store import SessionStore  # noqa: E402

QUESTION = "Could you summarise the three main points of the attached report in two sentences?"
ANSWER = ("The report finds that costs fell by a fifth, that the new process halved delays, and that "
          "customers noticed both; it recommends rolling the process out to every site next year.")


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed_turns(turn: Callable[[int], object], turns: int) -> tuple[float, float]:
    """Run ``turn(i)`` ``turns`` times; (median, p99) in µs."""
    gc.collect()
    samples = []
    for i in range(turns):
        t0 = time.perf_counter_ns()
        turn(i)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return summary(samples)


def timed_async_turns(turn: Callable[[int], Awaitable[object]], turns: int) -> tuple[float, float]:
    async def all_turns() -> list[float]:
        samples = []
        for i in range(turns):
            t0 = time.perf_counter_ns()
            await turn(i)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples
    gc.collect()
    return summary(asyncio.run(all_turns()))


def our_store(directory: str, backend: str) -> SessionStore:
    if backend == "sqlite":
        from session_store_sqlite import SqliteStorage
        return SessionStore(SqliteStorage(os.path.join(directory, "sessions.db")))
    return SessionStore(storage_dir=os.path.join(directory, "sessions"))


# ============================================================================
# Workloads
# ============================================================================

Row = tuple[str, str, tuple[float, float], tuple[float, float]]
NOTES: list[str] = []


def openai_agents(directory: str, backend: str, turns: int) -> Row:
    from agents import SQLiteSession

    from session_store_openai_agents import SessionStoreSession

    def items(i: int) -> list[Any]:
        return [{"role": "user", "content": f"{QUESTION} ({i})"},
                {"type": "message", "role": "assistant", "id": f"msg_{i}", "status": "completed",
                 "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}]

    def measure(session: Any) -> tuple[float, float]:
        async def turn(i: int) -> None:
            await session.get_items()
            await session.add_items(items(i))
        return timed_async_turns(turn, turns)
    with our_store(directory, backend) as store:
        ours = measure(SessionStoreSession("bench", store))
    theirs_session = SQLiteSession("bench", os.path.join(directory, "agents.db"))
    theirs = measure(theirs_session)
    theirs_session.close()
    return ("OpenAI Agents SDK", "get_items() + add_items(2 items)  vs SQLiteSession (file)", ours, theirs)


def langchain(directory: str, backend: str, turns: int) -> Row:
    from langchain_community.chat_message_histories import FileChatMessageHistory  # type: ignore[import-not-found]
    from langchain_core.messages import AIMessage, HumanMessage

    from session_store_langchain import SessionStoreChatMessageHistory

    def measure(history: Any) -> tuple[float, float]:
        def turn(i: int) -> None:
            history.messages  # noqa: B018 - reading is half the turn
            history.add_messages([HumanMessage(f"{QUESTION} ({i})"), AIMessage(ANSWER)])
        return timed_turns(turn, turns)
    with our_store(directory, backend) as store:
        ours = measure(SessionStoreChatMessageHistory("bench", store))
    theirs = measure(FileChatMessageHistory(os.path.join(directory, "langchain.json")))
    return ("LangChain", "messages + add_messages(2)  vs FileChatMessageHistory", ours, theirs)


def pydantic_ai(directory: str, backend: str, turns: int) -> Row:
    from pydantic_ai.messages import (
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        TextPart,
        UserPromptPart,
    )

    from session_store_pydantic_ai import load_messages, save_messages

    def new(i: int) -> list[ModelMessage]:
        return [ModelRequest(parts=[UserPromptPart(f"{QUESTION} ({i})")]), ModelResponse(parts=[TextPart(ANSWER)])]
    with our_store(directory, backend) as store:
        def ours_turn(i: int) -> None:
            load_messages(store, "bench")
            save_messages(store, "bench", new(i))
        ours = timed_turns(ours_turn, turns)
    path = Path(directory, "pydantic-ai.json")

    def theirs_turn(i: int) -> None:  # pydantic-ai's documented way: the whole history as JSON, in a file
        history = ModelMessagesTypeAdapter.validate_json(path.read_bytes()) if path.exists() else []
        data = ModelMessagesTypeAdapter.dump_json([*history, *new(i)])
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    theirs = timed_turns(theirs_turn, turns)
    return ("pydantic-ai", "load + save(2 messages)  vs the history as one JSON file (fsync'd)", ours, theirs)


def llama_index(directory: str, backend: str, turns: int) -> Row:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.storage.chat_store import SimpleChatStore

    from session_store_llama_index import SessionStoreChatStore

    path = os.path.join(directory, "llama-index.json")

    def measure(chat_store: Any, persist: bool) -> tuple[float, float]:
        def turn(i: int) -> None:
            chat_store.get_messages("bench")
            chat_store.add_message("bench", ChatMessage(role="user", content=f"{QUESTION} ({i})"))
            chat_store.add_message("bench", ChatMessage(role="assistant", content=ANSWER))
            if persist:
                chat_store.persist(path)
        return timed_turns(turn, turns)
    with our_store(directory, backend) as store:
        ours = measure(SessionStoreChatStore(store), False)
    try:
        theirs = measure(SimpleChatStore(), True)
        what = "get_messages + add_message ×2  vs SimpleChatStore + persist()"
    except Exception as e:  # persist() fails in some llama-index-core/pydantic pairs: measure it in memory
        NOTES.append(f"LlamaIndex: SimpleChatStore.persist() failed ({type(e).__name__}: {str(e)[:120]}...), so "
                     "SimpleChatStore is measured in memory only: it keeps nothing across a restart.")
        theirs = measure(SimpleChatStore(), False)
        what = "get_messages + add_message ×2  vs SimpleChatStore, in memory (no persist)"
    return ("LlamaIndex", what, ours, theirs)


def langgraph(directory: str, backend: str, turns: int) -> Row:
    import operator
    import sqlite3
    from typing import Annotated, TypedDict

    from langgraph.checkpoint.sqlite import SqliteSaver  # type: ignore[import-not-found]
    from langgraph.graph import END, START, StateGraph
    from session_store_langgraph import SessionStoreSaver

    chat = TypedDict("chat", {"messages": Annotated[list[str], operator.add]})  # type: ignore[misc]  # noqa: UP013
    # (functional: a class here would carry its annotations as strings, which LangGraph
    # resolves in this module's globals)

    builder = StateGraph(chat)
    builder.add_node("model", lambda state: {"messages": [ANSWER]})
    builder.add_edge(START, "model")
    builder.add_edge("model", END)

    def measure(checkpointer: Any) -> tuple[float, float]:
        graph: Any = builder.compile(checkpointer=checkpointer)
        thread = {"configurable": {"thread_id": "bench"}}
        return timed_turns(lambda i: graph.invoke({"messages": [f"{QUESTION} ({i})"]}, thread), turns)

    with our_store(directory, backend) as store:
        ours = measure(SessionStoreSaver(store))
    ours_bytes = _bytes_under(directory)
    path = os.path.join(directory, "langgraph.db")
    connection = sqlite3.connect(path, check_same_thread=False)
    theirs = measure(SqliteSaver(connection))
    connection.close()
    theirs_bytes = sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))
    NOTES.append(f"LangGraph: after {turns} turns, ours holds {ours_bytes:,} bytes on disk, SqliteSaver "
                 f"{theirs_bytes:,} ({theirs_bytes / max(ours_bytes, 1):.2f}× ours): each keeps every checkpoint; "
                 "ours keeps a channel value once per version.")
    return ("LangGraph", "graph.invoke (one node, a checkpoint per step)  vs SqliteSaver (file)", ours, theirs)


def _bytes_under(directory: str) -> int:
    return sum(os.lstat(os.path.join(top, name)).st_size for top, _, names in os.walk(directory) for name in names
               if not name.startswith("langgraph.db"))  # (a key's link counts as itself, not followed)


# ============================================================================
# Report
# ============================================================================


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--backend", choices=["jsonl", "sqlite"], default="jsonl")
    parser.add_argument("--no-write", action="store_true", help="print the report, do not write ADAPTERS.md")
    args = parser.parse_args()
    rows: list[Row] = []
    notes = NOTES
    for workload in (openai_agents, langchain, pydantic_ai, llama_index, langgraph):
        with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as directory:
            try:
                rows.append(workload(directory, args.backend, args.turns))
            except ImportError as e:
                notes.append(f"{workload.__name__}: not measured ({e}).")
            print(f"{workload.__name__} done", file=sys.stderr, flush=True)
    lines = [
        "# Adapters: a turn against each framework's own store",
        "",
        f"`python3 benchmarks/adapters.py --turns {args.turns}` on {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} cores (shared, "
        "noisy); ours: a durable `SessionStore` "
        + ("on SQLite" if args.backend == "sqlite" else "(JSONL files, fsync'd)") + ", on the same disk.",
        "",
        f"A turn: read the history, add the question and the answer; the session grows from 0 to {args.turns} "
        "turns. Median and p99 of every turn, in µs.",
        "",
        "| framework | turn (ours vs theirs) | ours median | ours p99 | theirs median | theirs p99 | theirs / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, what, (ours_med, ours_p99), (theirs_med, theirs_p99) in rows:
        lines.append(f"| {name} | {what} | {ours_med:,.0f} | {ours_p99:,.0f} | {theirs_med:,.0f} | "
                     f"{theirs_p99:,.0f} | {theirs_med / ours_med:.2f}× |")
    lines += ["", *notes] if notes else []
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_write:
        (ROOT / "benchmarks" / "ADAPTERS.md").write_text(report)


if __name__ == "__main__":
    main()
