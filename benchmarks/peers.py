"""The peers, driven through their public APIs on the same work as our store (used by bench.py).

Read from each peer's source before measuring it, so that the comparison is like with like:

- openai-agents ``SQLiteSession`` (file): WAL journal, SQLite's default ``synchronous=FULL``
  (checked at run time), one transaction per ``add_items``: *durable*. Every call hops to
  a worker thread (``asyncio.to_thread``). Opening one runs ``CREATE TABLE IF NOT EXISTS``
  and commits. ``":memory:"``: in memory. ``AdvancedSQLiteSession`` adds a
  ``message_structure`` row per item; ``create_branch_from_turn`` copies the structure
  rows of the turns before the branch point (O(path)).
- LangGraph: a ``StateGraph`` over ``MessagesState`` (the ``add_messages`` reducer) with one
  node that answers; one ``invoke`` per turn (user message in, assistant message out).
  ``SqliteSaver``: WAL, default ``synchronous=FULL``, a commit per checkpoint write:
  *durable*. ``InMemorySaver``: in memory.
- LangChain ``FileChatMessageHistory``: reads the whole JSON file, appends, rewrites it
  with ``write_text`` (no fsync): *not durable*, O(history) per message.
- LlamaIndex ``SimpleChatStore``: a dict in memory; ``persist`` rewrites one JSON file.
- pi ``SessionManager`` (node; pi_session.mjs): ``appendFileSync`` per entry, no fsync:
  *not durable*; see pi_session.mjs.

Our side of each row is measured in the same section, paired with the peer where both
run in this process (samples interleaved).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from measuring import ROOT, PeerRow, Report, Stat, in_child, med, paired, rss_bytes, scratch_dir, timed

from session_store import InMemoryFileSystem, SessionStore
from session_store_sqlite import SqliteStorage

PI_PACKAGE = "@mariozechner/pi-coding-agent"
PI_VERSION = "0.73.1"  # pinned: the source read for pi_session.mjs is this version's
PI_PREFIX = ROOT / ".bench-node"  # outside git (.gitignore)
MB = 1024 * 1024

_loop: asyncio.AbstractEventLoop | None = None


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on one long-lived event loop (as a server would)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


def peer_api(module: str) -> Any:
    """A peer's module, typed ``Any``: the peers are optional (CI type-checks without them)."""
    return importlib.import_module(module)


def versions() -> str:
    """The peers' installed versions, as RESULTS.md records them."""
    from importlib import metadata

    found = []
    for name in ("openai-agents", "langgraph", "langgraph-checkpoint-sqlite", "langchain-community",
                 "llama-index-core"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    node = shutil.which("node")
    if node:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        found.append(f"{PI_PACKAGE} {PI_VERSION} under node {version}")
    return ", ".join(found)


def ratio(peer: Stat | float, ours: Stat | float) -> str:
    p = peer.median if isinstance(peer, Stat) else peer
    o = ours.median if isinstance(ours, Stat) else ours
    return f"{p / o:.2f}×"


# ============================================================================
# openai-agents
# ============================================================================


def has_openai_agents() -> bool:
    try:
        peer_api("agents")
    except ImportError:
        return False
    return True


def agents_item(i: int, content: str) -> dict[str, Any]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"{content} {i}"}


class AgentsStore:
    """An openai-agents SQLite database grown like our stores: the same keys, the same message counts."""

    def __init__(self, path: str, targets: int, messages_per_session: int) -> None:
        self.path, self.targets, self.per_session = path, targets, messages_per_session
        self.have = 0
        self.turn = 0
        self.content = "Hello! Could you summarise the three main points of the attached report?"

    def key(self, i: int) -> str:
        return f"chat:{i}" if i < self.targets else f"user:{i}"

    def grow(self, count: int) -> None:
        SQLiteSession = peer_api("agents").SQLiteSession

        session = SQLiteSession(self.key(self.have), self.path)
        for i in range(self.have, count):
            session.session_id = self.key(i)  # one connection for the build (untimed)
            size = 50 if i < self.targets else self.per_session
            run(session.add_items([agents_item(j, self.content) for j in range(size)]))
        session.close()
        self.have = count

    def next_key(self) -> str:
        self.turn += 1
        return self.key(self.turn % self.targets)

    def fresh_read(self) -> Stat:
        """A fresh SQLiteSession, get_items of a 50-item session, close."""
        SQLiteSession = peer_api("agents").SQLiteSession

        def op() -> None:
            session = SQLiteSession(self.next_key(), self.path)
            run(session.get_items())
            session.close()

        return timed(op, 200)

    def stateless_request(self) -> Stat:
        """Open, read, two durable add_items, read again (the next call's input), close."""
        SQLiteSession = peer_api("agents").SQLiteSession

        async def request() -> None:
            session = SQLiteSession(self.next_key(), self.path)
            await session.get_items()
            await session.add_items([{"role": "user", "content": self.content}])
            await session.add_items([{"role": "assistant", "content": self.content}])
            await session.get_items()
            session.close()

        return timed(lambda: run(request()), 200)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def agents_session(items: list[dict[str, Any]]) -> Iterator[str]:
    """The path of an openai-agents SQLite database holding ``items`` as session "long"."""
    SQLiteSession = peer_api("agents").SQLiteSession

    with scratch_dir() as d:
        path = os.path.join(d, "agents.db")
        session = SQLiteSession("long", path)
        run(session.add_items(items))
        session.close()
        yield path


@contextlib.contextmanager
def agents_cold_reader(items: list[dict[str, Any]]) -> Iterator[Callable[[], None]]:
    """Goal 6: ``items`` stored by an openai-agents SQLiteSession; yields the operation
    timed against ours (a fresh SQLiteSession + get_items), so the bench can interleave it."""
    SQLiteSession = peer_api("agents").SQLiteSession

    with agents_session(items) as path:
        def op() -> None:
            s = SQLiteSession("long", path)
            run(s.get_items())
            s.close()

        yield op


@contextlib.contextmanager
def agents_cold_request(items: list[dict[str, Any]], content: str) -> Iterator[Callable[[], None]]:
    """A stateless request on a long session stored by an openai-agents SQLiteSession: a
    fresh session, get_items, one durable add_items, get_items again (the next call's
    input), close. The session grows by one item a request, as ours does."""
    SQLiteSession = peer_api("agents").SQLiteSession

    with agents_session(items) as path:
        async def request() -> None:
            s = SQLiteSession("long", path)
            await s.get_items()
            await s.add_items([{"role": "user", "content": content}])
            await s.get_items()
            s.close()

        yield lambda: run(request())


def agents_huge_worker(path: str) -> dict[str, float]:
    """In a child: one fresh SQLiteSession + get_items of the huge session; seconds and RSS growth."""
    import time

    SQLiteSession = peer_api("agents").SQLiteSession

    before = rss_bytes()
    t0 = time.perf_counter()
    session = SQLiteSession("huge", path)
    items = run(session.get_items())
    seconds = time.perf_counter() - t0
    after = rss_bytes()
    session.close()
    del items
    return {"seconds": seconds, "rss": after - before}


def sqlite_synchronous(path: str) -> str:
    """What a fresh ``sqlite3`` connection uses, as the peers open theirs (0 off, 1 normal, 2 full)."""
    db = sqlite3.connect(path)
    try:
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[db.execute("PRAGMA synchronous").fetchone()[0]]
    finally:
        db.close()


# ============================================================================
# pi (node)
# ============================================================================


def pi_module(report: Report) -> str | None:
    """The installed pi's session-manager.js (installing the pinned version once), or None with a note."""
    module = PI_PREFIX / "node_modules" / PI_PACKAGE / "dist" / "core" / "session-manager.js"
    package = PI_PREFIX / "node_modules" / PI_PACKAGE / "package.json"
    if package.exists() and json.loads(package.read_text())["version"] == PI_VERSION and module.exists():
        return str(module)
    if shutil.which("node") is None or shutil.which("npm") is None:
        report.notes.append("pi not measured: node and npm are not installed.")
        return None
    print(f"  installing {PI_PACKAGE}@{PI_VERSION} into {PI_PREFIX}", flush=True)
    done = subprocess.run(["npm", "install", "--prefix", str(PI_PREFIX), "--no-audit", "--no-fund",
                           "--ignore-scripts", "--no-save", f"{PI_PACKAGE}@{PI_VERSION}"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not module.exists():
        report.notes.append(f"pi not measured: npm install failed: {done.stderr.strip()[-300:]}")
        return None
    return str(module)


def pi(module: str, command: dict[str, Any], timeout: float = 3600) -> Any:
    """Run one pi_session.mjs command; its JSON answer."""
    done = subprocess.run(["node", "--expose-gc", "--max-old-space-size=16000",
                           str(Path(__file__).with_name("pi_session.mjs")), module, json.dumps(command)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pi_session.mjs failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def stats(samples: dict[str, Any]) -> dict[str, Any]:
    return {k: Stat(samples=tuple(v)) if isinstance(v, list) else v for k, v in samples.items()}


def run_pi(report: Report, sizes: tuple[int, ...], content: str, budget: float, least: int) -> dict[str, Any] | None:
    """pi's append, open and context at each session size; Stats by size (as a string) and op."""
    module = pi_module(report)
    if module is None:
        return None
    print("  pi SessionManager", flush=True)
    with scratch_dir() as d:
        raw = pi(module, {"op": "scale", "dir": d, "sizes": list(sizes), "content": content, "budget": budget,
                          "least": least, "most": 2000})
        memory = pi(module, {"op": "memory_append", "content": content, "most": 20_000})
    out: dict[str, Any] = {size: stats(row) for size, row in raw.items()}
    out["memory"] = stats(memory)
    return out


def report_pi(report: Report, ours: dict[str, dict[int, Stat]], pi_stats: dict[str, Any], content: str) -> None:
    """pi against our file store (not durable: pi does not fsync) at each size."""
    for size in sorted(int(k) for k in pi_stats if k.isdigit()):
        theirs = pi_stats[str(size)]
        rows = (("append", "append", "appendMessage", "append (not durable)"),
                ("open", "open", "SessionManager.open", "fresh store + resolve + get_messages"),
                ("context", "context", "buildSessionContext", "build_context (OpenAI format)"),
                ("append_context", "append_context", "appendMessage + buildSessionContext",
                 "append + build_context"),
                ("fork", "fork", "branch + appendMessage + buildSessionContext",
                 "append(parent_id=head's parent) + build_context"))
        for key, our_key, what, ours_what in rows:
            if size not in ours[our_key]:
                continue
            report.peer(PeerRow(operation=f"{key.replace('_', ' + ')}, {size:,} entries", durability="not durable",
                                peer=f"pi {what}", peer_value=med(theirs[key]), ours=f"files: {ours_what}",
                                ours_value=med(ours[our_key][size]), ratio=ratio(theirs[key], ours[our_key][size])))


    if "memory" in pi_stats:
        store = SessionStore(InMemoryFileSystem(), storage_dir="/pi")
        sid = store.resolve("pi")
        for _ in range(100):
            store.append(sid, role="user", content=content)
        theirs = pi_stats["memory"]["append"]
        mine = timed(lambda: store.append(sid, role="user", content=content), theirs.n)
        report.peer(PeerRow(operation="append one message", durability="in memory",
                            peer="pi SessionManager.inMemory appendMessage", peer_value=med(theirs),
                            ours="InMemoryFileSystem", ours_value=med(mine), ratio=ratio(theirs, mine)))


def pi_huge(module: str, count: int, content: str) -> dict[str, Any]:
    with scratch_dir() as d:
        path = pi(module, {"op": "build", "dir": d, "size": count, "content": content})["path"]
        found = pi(module, {"op": "open", "path": path, "n": 3})
    return stats(found)


# ============================================================================
# The 10⁶-message session (goal 7): peers
# ============================================================================


def run_huge_peers(report: Report, count: int, content: str, ours: dict[str, Stat]) -> None:
    module = pi_module(report)
    if module is not None:
        try:
            found = pi_huge(module, count, content)
            report.peer(PeerRow(operation=f"open a {count:,}-entry session", durability="—",
                                peer="pi SessionManager.open (3 opens in one node process)",
                                peer_value=f"{med(found['open'])}, RSS +"
                                f"{(found['rss_after'] - found['rss_before']) / MB:,.0f} MB",
                                ours="files: fresh store + get_messages (a fresh process each)",
                                ours_value=med(ours["full"]), ratio=ratio(found["open"], ours["full"])))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            report.notes.append(f"pi at {count:,} entries failed: {e}")
    if has_openai_agents():
        SQLiteSession = peer_api("agents").SQLiteSession

        with scratch_dir() as d:
            path = os.path.join(d, "agents.db")
            session = SQLiteSession("huge", path)
            for start in range(0, count, 10_000):
                run(session.add_items([agents_item(i, content) for i in range(start, min(count, start + 10_000))]))
            session.close()
            runs = [in_child(agents_huge_worker, path) for _ in range(3)]
        stat = Stat(samples=tuple(r["seconds"] * 1e6 for r in runs))
        rss = sorted(r["rss"] for r in runs)[1] / MB
        report.peer(PeerRow(operation=f"open a {count:,}-item session (a fresh process each)", durability="—",
                            peer="openai-agents SQLiteSession + get_items",
                            peer_value=f"{med(stat)}, RSS +{rss:,.0f} MB",
                            ours="files: fresh store + get_messages", ours_value=med(ours["full"]),
                            ratio=ratio(stat, ours["full"])))


# ============================================================================
# Appends, reads and branching, like with like
# ============================================================================


@contextlib.contextmanager
def our_stores(d: str, content: str) -> Iterator[dict[str, Callable[[], object]]]:
    """Our appends at each durability, ready to time (each on a session of 20 messages)."""
    stores = {"durable files": SessionStore(storage_dir=os.path.join(d, "ours-durable")),
              "durable SQLite": SessionStore(SqliteStorage(os.path.join(d, "ours.db"))),
              "not durable files": SessionStore(storage_dir=os.path.join(d, "ours-fast"), durable=False),
              "in memory": SessionStore(InMemoryFileSystem(), storage_dir="/peers")}
    ops: dict[str, Callable[[], object]] = {}
    for name, store in stores.items():
        sid = store.resolve("peer")
        for i in range(20):
            store.append(sid, role="user" if i % 2 == 0 else "assistant", content=content)
        ops[name] = lambda store=store, sid=sid: store.append(sid, role="user", content=content)  # type: ignore[misc]
        ops[name + " turn"] = lambda store=store, sid=sid: (  # type: ignore[misc]
            store.append(sid, role="user", content=content), store.append(sid, role="assistant", content=content))
    try:
        yield ops
    finally:
        for store in stores.values():
            store.close()


def run_peers(report: Report, content: str, n: int) -> None:
    """Each peer on the same workload; a peer that fails is reported, not fatal."""
    with scratch_dir() as d, our_stores(d, content) as ours:
        for peer in (peer_openai_agents, peer_advanced_branching, peer_langgraph, peer_langchain, peer_llama_index):
            try:
                peer(report, ours, content, d, n)
            except ImportError as e:
                report.notes.append(f"{peer.__name__[5:]} not measured: {e} (pip install -e '.[bench]').")
            except Exception as e:
                report.notes.append(f"{peer.__name__[5:]} failed in its own code; its rows after the failure are "
                                    f"missing: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def peer_openai_agents(report: Report, ours: dict[str, Callable[[], object]], content: str, d: str, n: int) -> None:
    SQLiteSession = peer_api("agents").SQLiteSession

    item = [{"role": "user", "content": content}]
    path = os.path.join(d, "agents.db")
    sync = sqlite_synchronous(path)
    file_session = SQLiteSession("bench", path)
    run(file_session.add_items([agents_item(i, content) for i in range(20)]))
    reps = max(200, n // 20)
    for our in ("durable files", "durable SQLite"):
        theirs, mine = paired(lambda: run(file_session.add_items(item)), ours[our], reps)
        report.peer(PeerRow(operation="append one message", durability="durable",
                            peer=f"openai-agents SQLiteSession (WAL, synchronous={sync})", peer_value=med(theirs),
                            ours=our, ours_value=med(mine), ratio=ratio(theirs, mine)))
    file_session.close()
    memory_session = SQLiteSession("bench", ":memory:")
    theirs, mine = paired(lambda: run(memory_session.add_items(item)), ours["in memory"], max(1000, n // 5))
    report.peer(PeerRow(operation="append one message", durability="in memory",
                        peer="openai-agents SQLiteSession(':memory:')", peer_value=med(theirs),
                        ours="InMemoryFileSystem", ours_value=med(mine), ratio=ratio(theirs, mine)))
    memory_session.close()


def peer_advanced_branching(report: Report, ours: dict[str, Callable[[], object]], content: str, d: str,
                            n: int) -> None:
    """Branch at the last user turn of a 200-message conversation, append there, read the branch."""
    AdvancedSQLiteSession = peer_api("agents.extensions.memory").AdvancedSQLiteSession

    turns = 100
    session = AdvancedSQLiteSession(session_id="branching", db_path=os.path.join(d, "advanced.db"),
                                    create_tables=True)
    for i in range(turns):
        run(session.add_items([{"role": "user", "content": f"{content} {i}"}]))
        run(session.add_items([{"role": "assistant", "content": f"{content} {i}"}]))
    names = iter(range(10**9))

    async def fork() -> None:
        await session.create_branch_from_turn(turns, f"b{next(names)}")
        await session.add_items([{"role": "user", "content": content}])
        await session.get_items()

    store = SessionStore(storage_dir=os.path.join(d, "ours-branching"))
    sid = store.resolve("branching")
    last_user = ""
    for i in range(turns):
        last_user = store.append(sid, role="user", content=f"{content} {i}").id
        store.append(sid, role="assistant", content=f"{content} {i}")
    parent = store.get_message(sid, last_user).parent_id

    def our_fork() -> None:
        sibling = store.append(sid, role="user", content=content, parent_id=parent)
        store.build_context(sid, sibling.id)

    theirs, mine = paired(lambda: run(fork()), our_fork, 100)
    report.peer(PeerRow(operation=f"fork at the last user turn of {2 * turns} messages + read the branch",
                        durability="durable", peer="openai-agents AdvancedSQLiteSession create_branch_from_turn + "
                        "add_items + get_items", peer_value=med(theirs),
                        ours="durable files: append(parent_id=...) + build_context", ours_value=med(mine),
                        ratio=ratio(theirs, mine)))
    theirs, mine = paired(lambda: run(session.add_items([{"role": "user", "content": content}])),
                          ours["durable files"], max(200, n // 20))
    report.peer(PeerRow(operation="append one message", durability="durable",
                        peer="openai-agents AdvancedSQLiteSession (WAL, synchronous=FULL)", peer_value=med(theirs),
                        ours="durable files", ours_value=med(mine), ratio=ratio(theirs, mine)))
    session.close()
    store.close()


def langgraph_app(checkpointer: Any) -> Any:
    """A minimal chat: MessagesState (the add_messages reducer) and one node that answers."""
    messages, graphs = peer_api("langchain_core.messages"), peer_api("langgraph.graph")

    def answer(state: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [messages.AIMessage(content=state["messages"][-1].content)]}

    graph = graphs.StateGraph(graphs.MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(graphs.START, "answer")
    graph.add_edge("answer", graphs.END)
    return graph.compile(checkpointer=checkpointer)


def peer_langgraph(report: Report, ours: dict[str, Callable[[], object]], content: str, d: str, n: int) -> None:
    HumanMessage = peer_api("langchain_core.messages").HumanMessage
    InMemorySaver = peer_api("langgraph.checkpoint.memory").InMemorySaver
    SqliteSaver = peer_api("langgraph.checkpoint.sqlite").SqliteSaver

    path = os.path.join(d, "langgraph.db")
    connection = sqlite3.connect(path, check_same_thread=False)
    savers = (("SqliteSaver", SqliteSaver(connection), "durable", "durable files turn"),
              ("InMemorySaver", InMemorySaver(), "in memory", "in memory turn"))
    for name, saver, durability, our in savers:
        app = langgraph_app(saver)
        config = {"configurable": {"thread_id": "chat"}}
        for history in (10, 100):
            while len(app.get_state(config).values.get("messages", [])) < 2 * history:
                app.invoke({"messages": [HumanMessage(content=content)]}, config)

            def turn(app: Any = app, config: Any = config) -> None:
                app.invoke({"messages": [HumanMessage(content=content)]}, config)

            reps = 60 if durability == "durable" else 300
            theirs, mine = paired(turn, ours[our], reps)
            sync = f", WAL, synchronous={sqlite_synchronous(path)}" if name == "SqliteSaver" else ""
            report.peer(PeerRow(operation=f"a turn (user + assistant message) at {2 * history} messages",
                                durability=durability, peer=f"LangGraph StateGraph + {name}{sync} (invoke)",
                                peer_value=med(theirs), ours=f"{our.removesuffix(' turn')}: 2 appends",
                                ours_value=med(mine), ratio=ratio(theirs, mine)))
    connection.close()

    def fresh_read() -> None:
        with contextlib.closing(sqlite3.connect(path, check_same_thread=False)) as conn:
            langgraph_app(SqliteSaver(conn)).get_state({"configurable": {"thread_id": "chat"}})

    store_dir = os.path.join(d, "ours-langgraph")
    with contextlib.closing(SessionStore(storage_dir=store_dir)) as store:
        sid = store.resolve("chat")
        for i in range(2 * 100 + 2 * 60 + 2 * 6):
            store.append(sid, role="user" if i % 2 == 0 else "assistant", content=content)

    def our_read() -> None:
        with contextlib.closing(SessionStore(storage_dir=store_dir)) as store:
            store.get_messages(store.resolve("chat"))

    theirs, mine = paired(fresh_read, our_read, 100)
    report.peer(PeerRow(operation="fresh open + read a chat of ~330 messages", durability="—",
                        peer="LangGraph SqliteSaver: new connection, compile, get_state", peer_value=med(theirs),
                        ours="files: fresh store + resolve + get_messages", ours_value=med(mine),
                        ratio=ratio(theirs, mine)))


def peer_langchain(report: Report, ours: dict[str, Callable[[], object]], content: str, d: str, n: int) -> None:
    FileChatMessageHistory = peer_api("langchain_community.chat_message_histories").FileChatMessageHistory
    HumanMessage = peer_api("langchain_core.messages").HumanMessage

    history = FileChatMessageHistory(os.path.join(d, "history.json"))
    for size in (10, 100, 1000):
        while len(history.messages) < size:
            history.add_message(HumanMessage(content=content))
        theirs, mine = paired(lambda: history.add_message(HumanMessage(content=content)), ours["not durable files"],
                              100 if size < 1000 else 30)
        report.peer(PeerRow(operation=f"append one message at {size:,} messages", durability="not durable",
                            peer="LangChain FileChatMessageHistory (rewrites the file)", peer_value=med(theirs),
                            ours="not durable files", ours_value=med(mine), ratio=ratio(theirs, mine)))


def peer_llama_index(report: Report, ours: dict[str, Callable[[], object]], content: str, d: str, n: int) -> None:
    ChatMessage = peer_api("llama_index.core.base.llms.types").ChatMessage
    SimpleChatStore = peer_api("llama_index.core.storage.chat_store").SimpleChatStore

    chat = SimpleChatStore()
    for _ in range(100):
        chat.add_message("bench", ChatMessage(role="user", content=content))
    theirs, mine = paired(lambda: chat.add_message("bench", ChatMessage(role="user", content=content)),
                          ours["in memory"], max(1000, n // 5))
    report.peer(PeerRow(operation="append one message", durability="in memory",
                        peer="LlamaIndex SimpleChatStore.add_message", peer_value=med(theirs),
                        ours="InMemoryFileSystem", ours_value=med(mine), ratio=ratio(theirs, mine)))
    path = os.path.join(d, "chat.json")

    def add_and_persist() -> None:  # persisting is how it reaches disk
        chat.add_message("bench", ChatMessage(role="user", content=content))
        chat.persist(path)

    theirs, mine = paired(add_and_persist, ours["not durable files"], 100)
    report.peer(PeerRow(operation="append one message at ~100 messages", durability="not durable",
                        peer="LlamaIndex SimpleChatStore add_message + persist (rewrites the file)",
                        peer_value=med(theirs), ours="not durable files", ours_value=med(mine),
                        ratio=ratio(theirs, mine)))


if __name__ == "__main__":  # pragma: no cover - imported by bench.py
    sys.exit("run benchmarks/bench.py")
