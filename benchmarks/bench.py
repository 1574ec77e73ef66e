"""Benchmarks: the seed's latency targets, our goals, floors, scale curves and peers.

    python3 benchmarks/bench.py            # full run (several minutes), writes benchmarks/RESULTS.md
    python3 benchmarks/bench.py --quick    # tiny sizes: proves the harness works (CI); no file written

Standard library only. Peers (openai-agents, langchain-community, llama-index-core) and
matplotlib are used when installed (``pip install -e ".[bench]"``). Every metric is timed
per operation with ``perf_counter_ns``; tables show the median and p99 of all samples.
Floors are measured in the same run, on the same disk: ``json.dumps`` + ``os.write`` of the
same record, ``os.write`` + ``os.fsync``, a bare ``threading.Lock`` acquire+release.
Nothing here asserts a time: verdicts are reported, never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "integrations")]

import session_store_transcripts  # noqa: E402
from session_store import InMemoryFileSystem, SessionStore, Storage  # noqa: E402
from session_store_sqlite import SqliteStorage  # noqa: E402

CONTENT = "Hello! Could you summarise the three main points of the attached report?"
RECORD = {"id": "5f2c0e8d9a7b6c1d", "parentId": "0a1b2c3d4e5f6071", "type": "user", "role": "user",
          "content": CONTENT, "timestamp": 1_763_700_000_000}


# ============================================================================
# Measuring
# ============================================================================


@dataclass
class Stat:
    """Per-operation samples in microseconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(op: Callable[[], object], n: int, *, setup: Callable[[], object] | None = None) -> Stat:
    """Run ``op`` n times (after ``setup`` each time, untimed); µs per call."""
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    samples = []
    clock = time.perf_counter_ns
    try:
        for _ in range(n):
            if setup is not None:
                setup()
            t0 = clock()
            op()
            samples.append((clock() - t0) / 1000)
    finally:
        if gc_was:
            gc.enable()
    return Stat(samples)


def profile(op: Callable[[], object], n: int) -> str:
    """cProfile of ``n`` calls: the functions with the most own time, and their share."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        op()
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values()) or 1.0
    rows = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
    lines = ["| function | calls per op | own µs per op | share |", "|---|---|---|---|"]
    for (file, line, name), (_cc, calls, own, _cum, _callers) in rows:
        where = f"{os.path.basename(file)}:{line} {name}" if line else name
        lines.append(f"| `{where}` | {calls / n:.1f} | {own / n * 1e6:.2f} | {own / total:.0%} |")
    return "\n".join(lines)


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A temporary directory on the same disk as the project (not tmpfs)."""
    base = os.environ.get("SESSION_STORE_BENCH_DIR", str(ROOT / ".bench-tmp"))
    os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Row:
    metric: str
    seed: str
    goal: str
    stat: Stat | None = None
    value: str = ""  # for throughput rows
    floor: str = ""
    ratio: str = ""
    verdict: str = ""
    op: Callable[[], object] | None = None  # profiled when the goal is missed


@dataclass
class Report:
    quick: bool
    rows: list[Row] = field(default_factory=list)
    curves: list[tuple[str, list[tuple[int, float]], str, str]] = field(default_factory=list)
    peers: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)
    backends: list[tuple[str, dict[str, Stat]]] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if row.op is not None and "missed" in row.verdict:
            self.profiles.append((row.metric, profile(row.op, 300 if self.quick else 3000)))
        s = f"{row.stat.median:.2f} µs" if row.stat else row.value
        print(f"  {row.metric}: {s} {row.verdict}", flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


# ============================================================================
# Floors
# ============================================================================


def floors(n: int) -> dict[str, Stat]:
    with scratch_dir() as d:
        fd = os.open(os.path.join(d, "floor.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            dumps_write = timed(lambda: os.write(fd, (json.dumps(RECORD) + "\n").encode()), n)
            line = (json.dumps(RECORD) + "\n").encode()

            def write_fsync() -> None:
                os.write(fd, line)
                os.fsync(fd)

            fsync = timed(write_fsync, max(50, n // 20))
        finally:
            os.close(fd)
    lock = threading.Lock()

    def bare_lock() -> None:
        lock.acquire()
        lock.release()

    return {"dumps+write": dumps_write, "write+fsync": fsync, "lock": timed(bare_lock, n),
            "dumps": timed(lambda: json.dumps(RECORD), n)}


# ============================================================================
# Metrics
# ============================================================================


def fill(store: SessionStore, sid: str, count: int) -> list[str]:
    return [store.append(sid, role="user" if i % 2 == 0 else "assistant", content=f"{CONTENT} {i}").id
            for i in range(count)]


def run_metrics(report: Report, n: int) -> dict[str, float]:
    """The headline table; returns medians used for peer ratios."""
    f = floors(n)
    out: dict[str, float] = {}
    fsync_floor = f["write+fsync"].median

    # append, in memory
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("bench")
    stat = timed(lambda: store.append(sid, role="user", content=CONTENT), n)
    report.add(Row("append, InMemoryFileSystem", "~100 µs", "≤ 10 µs", stat,
                   floor=f"json.dumps {f['dumps'].median:.2f} µs", ratio=f"{stat.median / f['dumps'].median:.1f}×",
                   verdict=verdict(stat.median <= 10)))
    out["append_memory"] = stat.median

    with scratch_dir() as d:
        durable = SessionStore(storage_dir=d)
        sid = durable.resolve("durable")
        fill(durable, sid, 20)
        stat = timed(lambda: durable.append(sid, role="user", content=CONTENT), max(50, n // 20))
        ratio = stat.median / fsync_floor
        report.add(Row("append, disk, durable", "1–5 ms", "≤ 1.3× write+fsync", stat,
                       floor=f"write+fsync {fsync_floor:.1f} µs", ratio=f"{ratio:.2f}×", verdict=verdict(ratio <= 1.3),
                       op=lambda: durable.append(sid, role="user", content=CONTENT)))
        out["append_durable"] = stat.median
        durable.close()

        fast = SessionStore(storage_dir=d, durable=False)
        sid = fast.resolve("fast")
        fill(fast, sid, 20)
        stat = timed(lambda: fast.append(sid, role="user", content=CONTENT), n)
        floor = f["dumps+write"].median
        report.add(Row("append, disk, non-durable", "1–5 ms", "≤ 20 µs", stat,
                       floor=f"dumps+write {floor:.1f} µs", ratio=f"{stat.median / floor:.1f}×",
                       verdict=verdict(stat.median <= 20)))
        out["append_fast"] = stat.median

        # reads
        rsid = fast.resolve("read100")
        ids = fill(fast, rsid, 100)
        stat = timed(lambda: fast.get_messages(rsid), n)
        report.add(Row("read all of 100 messages, warm", "~1 ms", "≤ 50 µs", stat, verdict=verdict(stat.median <= 50)))
        out["read100"] = stat.median
        fast.close()

        def cold() -> None:
            s = SessionStore(storage_dir=d)
            s.get_messages(rsid)
            s.close()

        stat = timed(cold, max(20, n // 50))
        report.add(Row("cold open + read of 100 messages", "—", "≤ 1 ms", stat, verdict=verdict(stat.median <= 1000)))

        # durable from 8 threads
        report_threads(report, d, n)

    # history
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("deep")
    ids = fill(store, sid, 10_000 if not report.quick else 1000)
    stat = timed(lambda: store.get_linear_history(sid, ids[9]), n)
    report.add(Row("linear history, depth 10", "~0.5 ms", "≤ 10 µs", stat, verdict=verdict(stat.median <= 10)))
    deep = len(ids)
    stat = timed(lambda: store.get_linear_history(sid, ids[-1]), max(20, n // 100))
    report.add(Row(f"linear history, depth {deep:,}", "—", "≤ 5 ms", stat, verdict=verdict(stat.median <= 5000)))
    stat = timed(lambda: store.build_context(sid, ids[99]), max(100, n // 10))
    report.add(Row("build_context, depth 100", "—", "—", stat, verdict="n/a"))
    stat = timed(lambda: store.build_context(sid, ids[99], format="anthropic"), max(100, n // 10))
    report.add(Row("build_context anthropic, depth 100", "—", "—", stat, verdict="n/a"))
    report_interop(report, n)

    # locks
    def lock_round(s: SessionStore, lsid: str) -> Callable[[], None]:
        def op() -> None:
            s.acquire_lock(lsid, "worker-1")
            s.release_lock(lsid, "worker-1")
        return op

    stat = timed(lock_round(store, sid), n)
    lock_floor = f["lock"].median
    report.add(Row("lock acquire+release, InMemoryFileSystem", "~10 µs", "≤ 2 µs", stat,
                   floor=f"threading.Lock {lock_floor:.2f} µs", ratio=f"{stat.median / lock_floor:.0f}×",
                   verdict=verdict(stat.median <= 2), op=lock_round(store, sid)))
    with scratch_dir() as d:
        disk = SessionStore(storage_dir=d)
        lsid = disk.resolve("locks")
        stat = timed(lock_round(disk, lsid), n)
        report.add(Row("lock acquire+release, RealFileSystem (cross-process)", "~10 µs", "≤ 30 µs", stat,
                       floor=f"threading.Lock {lock_floor:.2f} µs", ratio=f"{stat.median / lock_floor:.0f}×",
                       verdict=verdict(stat.median <= 30), op=lock_round(disk, lsid)))
        disk.close()
    report.notes.append(f"Floors: json.dumps+os.write {f['dumps+write'].median:.2f} µs, os.write+os.fsync "
                        f"{fsync_floor:.1f} µs, threading.Lock acquire+release {lock_floor:.3f} µs (medians).")
    return out


# ============================================================================
# Backends side by side
# ============================================================================

BACKEND_METRICS = ["append", "read 100, warm", "history, depth 100", "lock acquire+release", "cold open + read 100"]


def measure_backend(report: Report, name: str, make: Callable[[], Storage | None], n: int, *,
                    durable: bool = True) -> None:
    """The same five operations on one backend (``make()``: a fresh storage on the same data)."""
    def open_store() -> SessionStore:
        storage = make()
        return SessionStore(storage, durable=durable) if storage is not None else SessionStore(InMemoryFileSystem())

    store = open_store()
    stats: dict[str, Stat] = {}
    sid = store.resolve("bench")
    fill(store, sid, 20)
    slow = durable and name != "JSONL, in memory"  # fsync per append
    reps = max(50, n // 20) if slow else n
    stats["append"] = timed(lambda: store.append(sid, role="user", content=CONTENT), reps)
    rsid = store.resolve("read100")
    ids = fill(store, rsid, 100)
    stats["read 100, warm"] = timed(lambda: store.get_messages(rsid), n)
    stats["history, depth 100"] = timed(lambda: store.get_linear_history(rsid, ids[-1]), n)

    def lock_round() -> None:
        store.acquire_lock(rsid, "worker-1")
        store.release_lock(rsid, "worker-1")

    stats["lock acquire+release"] = timed(lock_round, reps)
    store.close()
    if name != "JSONL, in memory":
        def cold() -> None:
            s = open_store()
            s.get_messages(rsid)
            s.close()

        stats["cold open + read 100"] = timed(cold, max(20, n // 50))
    report.backends.append((name, stats))
    print(f"  {name}: " + ", ".join(f"{k} {v.median:.1f} µs" for k, v in stats.items()), flush=True)


def run_backends(report: Report, n: int) -> None:
    from session_store import JsonlStorage, RealFileSystem

    measure_backend(report, "JSONL, in memory", lambda: None, n)
    for durable in (True, False):
        label = "durable" if durable else "non-durable"
        with scratch_dir() as d:
            measure_backend(report, f"JSONL files, {label}", lambda: JsonlStorage(RealFileSystem(), d), n,
                            durable=durable)
        with scratch_dir() as d:
            measure_backend(report, f"SQLite, {label}", lambda: SqliteStorage(os.path.join(d, "s.db")), n,
                            durable=durable)
    with postgres_dsn(report) as dsn:
        if dsn is not None:
            from session_store_postgres import PostgresStorage

            for durable in (True, False):
                label = "durable" if durable else "non-durable"
                schema = f"bench_{os.getpid()}_{int(durable)}"
                measure_backend(report, f"PostgreSQL on loopback, {label}",
                                lambda schema=schema: PostgresStorage(dsn, schema=schema),  # type: ignore[misc]
                                max(200, n // 10), durable=durable)
                import psycopg

                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def postgres_dsn(report: Report) -> Iterator[str | None]:
    """``SESSION_STORE_POSTGRES_DSN``, or a throwaway server started like the tests do."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        report.notes.append("PostgreSQL not measured: psycopg is not installed (pip install -e '.[postgres]').")
        yield None
        return
    dsn = os.environ.get("SESSION_STORE_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import postgres_server

    if postgres_server.find_binaries() is None:
        report.notes.append("PostgreSQL not measured: no server (set SESSION_STORE_POSTGRES_DSN).")
        yield None
        return
    server = postgres_server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


def threaded_rate(work: Callable[[int], None], threads: int, ops_per_thread: int) -> float:
    """Start ``threads`` threads running ``work(i)`` together; operations per second."""
    barrier = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        barrier.wait()
        work(i)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return threads * ops_per_thread / (time.perf_counter() - t0)


def raw_thread_floor(d: str, files: int, per: int) -> float:
    """Bare os.write + os.fdatasync from 8 threads on ``files`` files, as a multiple of 1 thread."""
    line = (json.dumps(RECORD) + "\n").encode()

    def rate(threads: int, nfiles: int, count: int) -> float:
        fds = [os.open(os.path.join(d, f"raw-{nfiles}-{i}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
               for i in range(nfiles)]

        def work(i: int) -> None:
            fd = fds[i % nfiles]
            for _ in range(count):
                os.write(fd, line)
                os.fdatasync(fd)

        rate = threaded_rate(work, threads, count)
        for fd in fds:
            os.close(fd)
        return rate

    return rate(8, files, per) / rate(1, 1, per * 2)


def report_threads(report: Report, d: str, n: int) -> None:
    """Durable appends from 8 threads vs one thread's durable rate (group commit)."""
    per_thread = max(20, n // 60)
    store = SessionStore(storage_dir=d)
    single = store.resolve("single-thread")
    t0 = time.perf_counter()
    for _ in range(per_thread * 2):
        store.append(single, role="user", content=CONTENT)
    one_rate = per_thread * 2 / (time.perf_counter() - t0)

    for label, sessions in (("8 sessions", [store.resolve(f"t{i}") for i in range(8)]),
                            ("1 session", [store.resolve("shared")] * 8)):
        def work(i: int, sessions: list[str] = sessions) -> None:
            for _ in range(per_thread):
                store.append(sessions[i], role="user", content=CONTENT)

        rate = threaded_rate(work, 8, per_thread)
        raw = raw_thread_floor(d, len(set(sessions)), per_thread)
        report.add(Row(f"durable appends, 8 threads, {label}", "—", "≥ 5× one thread", None,
                       value=f"{rate:,.0f}/s",
                       floor=f"1 thread {one_rate:,.0f}/s; bare write+fdatasync ×8 threads: {raw:.1f}× 1 thread",
                       ratio=f"{rate / one_rate:.1f}×", verdict=verdict(rate / one_rate >= 5)))
    store.close()


# ============================================================================
# Scale curves
# ============================================================================


def curve(report: Report, name: str, points: list[tuple[int, float]], unit: str, goal: str) -> None:
    lo, hi = points[0][1], points[-1][1]
    report.curves.append((name, points, unit, goal))
    print(f"  {name}: " + ", ".join(f"{x:,}→{y:.2f}" for x, y in points) + f" (largest/smallest {hi / lo:.2f}×)",
          flush=True)


def run_curves(report: Report) -> None:
    quick = report.quick
    sizes = [100, 1000] if quick else [100, 1_000, 10_000, 100_000, 1_000_000]
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("grow")
    points, have = [], 0
    for size in sizes:
        fill(store, sid, size - have)
        have = size
        points.append((size, timed(lambda: store.append(sid, role="user", content=CONTENT), 2000).median))
        have += 2000
    curve(report, "append cost vs session size (messages, InMemoryFileSystem)", points, "µs", "≤ 1.5×")
    del store

    depths = [10, 100] if quick else [10, 100, 1_000, 10_000, 100_000]
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("deep")
    chain = fill(store, sid, depths[-1])
    points = []
    for depth in depths:
        leaf = chain[depth - 1]
        points.append((depth, timed(lambda leaf=leaf: store.get_linear_history(sid, leaf),  # type: ignore[misc]
                                    max(5, 20_000 // depth)).median))
    curve(report, "linear history cost vs depth", points, "µs", "O(depth)")
    del store, chain

    counts = [10, 100] if quick else [10, 100, 1_000, 10_000, 100_000]
    with scratch_dir() as d:
        store = SessionStore(storage_dir=d, durable=False, index_save_delay_ms=100)
        keys: list[str] = []
        points = []
        for count in counts:
            while len(keys) < count:
                keys.append(f"user:{len(keys)}")
                store.resolve(keys[-1])
            rotation = iter(range(10**9))

            def resolve_append(rotation: Iterator[int] = rotation) -> None:
                key = keys[(next(rotation) * 7919) % len(keys)]
                store.append(store.resolve(key), role="user", content=CONTENT)

            points.append((count, timed(resolve_append, 2000).median))
        curve(report, "resolve + append vs sessions in one store (RealFileSystem, non-durable)", points, "µs", "≤ 2×")
        store.close()

    sizes = [100, 1000] if quick else [100, 1_000, 10_000, 100_000]
    with scratch_dir() as d:
        store = SessionStore(storage_dir=d, durable=False)
        points = []
        for size in sizes:
            sid = store.resolve(f"size-{size}")
            fill(store, sid, size)
            store.flush()

            def cold(sid: str = sid) -> None:
                s = SessionStore(storage_dir=d)
                s.get_messages(sid)
                s.close()

            points.append((size, timed(cold, 5 if size >= 100_000 else 20).median / 1000))
        curve(report, "cold open + read vs session size", points, "ms", "O(size)")
        store.close()

    n = 1000 if quick else 10_000
    tracemalloc.start()
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("mem")
    before = tracemalloc.get_traced_memory()[0]
    fill(store, sid, n)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per = used / n
    report.notes.append(f"Memory per message (cache plus InMemoryFileSystem bytes, {n:,} messages of "
                        f"~{len(CONTENT) + 5} characters, tracemalloc): {per:,.0f} bytes.")
    print(f"  memory per message: {per:,.0f} bytes", flush=True)


# ============================================================================
# Peers
# ============================================================================


def run_peers(report: Report, ours: dict[str, float], n: int) -> None:
    """Each peer on the same workload; a peer that fails is reported, not fatal."""
    for peer in (peer_openai_agents, peer_langchain, peer_llama_index):
        try:
            peer(report, ours, max(50, n // 10))
        except Exception as e:
            report.notes.append(f"{peer.__name__[5:]} failed in its own code; rows after the failure are missing: "
                                f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")


def peer_openai_agents(report: Report, ours: dict[str, float], n: int) -> None:
    try:
        from agents import SQLiteSession  # type: ignore[import-not-found]
    except ImportError:
        report.notes.append("openai-agents not installed: SQLiteSession not measured.")
    else:
        loop = asyncio.new_event_loop()
        item = {"role": "user", "content": CONTENT}
        with scratch_dir() as d:
            for label, path in (("file", os.path.join(d, "agents.db")), ("memory", ":memory:")):
                session = SQLiteSession("bench", path)
                stat = timed(lambda s=session: loop.run_until_complete(s.add_items([item])), n)  # type: ignore[misc]
                ref = ours["append_fast"] if label == "file" else ours["append_memory"]
                goal = " (goal ≥ 15×)" if label == "file" else ""
                report.peers.append((f"openai-agents SQLiteSession ({label}), append", f"{stat.median:.1f} µs",
                                     f"{stat.median / ref:.1f}× ours{goal}",
                                     verdict(stat.median / ref >= 15) if label == "file" else ""))
                if label == "file":  # SQLite's defaults sync each commit: compare with our durable append too
                    report.peers.append(("openai-agents SQLiteSession (file), append, vs our durable append",
                                         f"{stat.median:.1f} µs",
                                         f"{stat.median / ours['append_durable']:.1f}× ours (durable)", ""))
                session.close()
        loop.close()


def peer_langchain(report: Report, ours: dict[str, float], n: int) -> None:
    try:
        from langchain_community.chat_message_histories import (  # type: ignore[import-not-found]
            FileChatMessageHistory,
        )
        from langchain_core.messages import HumanMessage  # type: ignore[import-not-found]
    except ImportError:
        report.notes.append("langchain-community not installed: FileChatMessageHistory not measured.")
    else:
        with scratch_dir() as d:
            history = FileChatMessageHistory(os.path.join(d, "history.json"))
            for size in (10, 100, 1000):
                while len(history.messages) < size:
                    history.add_message(HumanMessage(content=CONTENT))
                stat = timed(lambda h=history: h.add_message(HumanMessage(content=CONTENT)), 30)  # type: ignore[misc]
                report.peers.append((f"langchain FileChatMessageHistory, append at {size:,} messages",
                                     f"{stat.median:.1f} µs", f"{stat.median / ours['append_fast']:.1f}× ours", ""))


def peer_llama_index(report: Report, ours: dict[str, float], n: int) -> None:
    try:
        from llama_index.core.base.llms.types import ChatMessage  # type: ignore[import-not-found]
        from llama_index.core.storage.chat_store import SimpleChatStore  # type: ignore[import-not-found]
    except ImportError:
        report.notes.append("llama-index-core not installed: SimpleChatStore not measured.")
    else:
        with scratch_dir() as d:
            chat = SimpleChatStore()
            path = os.path.join(d, "chat.json")

            def add_and_persist() -> None:  # persisting is how it reaches disk
                chat.add_message("bench", ChatMessage(role="user", content=CONTENT))
                chat.persist(path)

            for _ in range(100):
                chat.add_message("bench", ChatMessage(role="user", content=CONTENT))
            stat = timed(lambda: chat.add_message("bench", ChatMessage(role="user", content=CONTENT)), n)
            report.peers.append(("llama-index SimpleChatStore, append (memory only)", f"{stat.median:.1f} µs",
                                 f"{stat.median / ours['append_memory']:.1f}× ours (in memory)", ""))
            stat = timed(add_and_persist, 30)
            report.peers.append(("llama-index SimpleChatStore, append + persist", f"{stat.median:.1f} µs",
                                 f"{stat.median / ours['append_fast']:.1f}× ours (disk)", ""))


# ============================================================================
# Output
# ============================================================================


def render(report: Report, command: str) -> str:
    lines = ["# Benchmark results", ""]
    lines.append(f"Command: `{command}`  ")
    lines.append(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
                 f"Python {platform.python_version()} ({platform.python_implementation()}); "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ")
    lines.append("Times are per operation, median and p99 of all samples; the machine is shared and noisy.")
    lines.append("")
    lines.append("| metric | seed target | our goal | median | p99 | floor (same run) | ratio | verdict |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in report.rows:
        med = f"{r.stat.median:,.2f} µs" if r.stat else r.value
        p99 = f"{r.stat.p99:,.2f} µs" if r.stat else ""
        lines.append(f"| {r.metric} | {r.seed} | {r.goal} | {med} | {p99} | {r.floor} | {r.ratio} | {r.verdict} |")
    lines += ["", "## Scale curves", "", "| curve | points (size → median) | largest/smallest | goal |",
              "|---|---|---|---|"]
    for name, points, unit, goal in report.curves:
        pts = ", ".join(f"{x:,} → {y:,.2f} {unit}" for x, y in points)
        lines.append(f"| {name} | {pts} | {points[-1][1] / points[0][1]:.2f}× | {goal} |")
    if report.backends:
        lines += ["", "## Backends side by side", "",
                  "Same operations on every backend: median (p99) per operation, on this machine's disk.", "",
                  "| backend | " + " | ".join(BACKEND_METRICS) + " |", "|---" * (len(BACKEND_METRICS) + 1) + "|"]
        for name, stats in report.backends:
            cells = [f"{stats[m].median:,.1f} µs ({stats[m].p99:,.0f})" if m in stats else "—"
                     for m in BACKEND_METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.peers:
        lines += ["", "## Peers (same workload, same run)", "", "| peer | median | vs ours | verdict |",
                  "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in report.peers]
    if report.profiles:
        lines += ["", "## Profiles of the goals not met", "",
                  "cProfile over the same operation (its overhead inflates every entry alike); "
                  "own time per operation, most first."]
        for metric, table in report.profiles:
            lines += ["", f"### {metric}", "", table]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def plot(report: Report, path: Path) -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(report.curves), figsize=(4.2 * len(report.curves), 3.6))
    for ax, (name, points, unit, _goal) in zip(axes, report.curves, strict=True):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log")
        if _goal.startswith("O("):  # growth curves: log-log shows the slope
            ax.set_yscale("log")
        else:  # "should stay flat" curves: a linear axis from zero shows how flat
            ax.set_ylim(bottom=0, top=max(ys) * 1.2)
        ax.set_title(name.split(" (")[0], fontsize=8)
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report_interop(report: Report, n: int) -> None:
    """Contexts of tool-heavy paths, and importing a pi session of 1,000 entries."""
    store = SessionStore(InMemoryFileSystem(), storage_dir="/interop")
    sid = store.resolve("tools")
    for i in range(50):
        store.append(sid, role="user", content=f"question {i}")
        store.append(sid, role="assistant", content="Looking.", tool_calls=[
            {"id": f"call_{i}", "type": "function", "function": {"name": "read", "arguments": '{"path":"a"}'}}])
        store.append(sid, role="tool", content="result", tool_call_id=f"call_{i}")
    for fmt in ("openai", "anthropic"):
        stat = timed(lambda fmt=fmt: store.build_context(sid, format=fmt), max(50, n // 50))  # type: ignore[misc]
        report.add(Row(f"build_context {fmt}, 50 tool rounds (150 msgs)", "—", "—", stat, verdict="n/a"))
    lines = [json.dumps({"type": "session", "version": 3, "id": "bench", "timestamp": "2026-01-01T00:00:00.000Z",
                         "cwd": "/"})]
    for i in range(1000):
        role = ("user", "assistant", "toolResult")[i % 3]
        message = {"role": role, "content": [{"type": "text", "text": f"entry {i} " * 20}], "timestamp": i}
        lines.append(json.dumps({"type": "message", "id": f"{i:08x}", "parentId": f"{i - 1:08x}" if i else None,
                                 "timestamp": "2026-01-01T00:00:01.000Z", "message": message}))
    count = iter(range(10**9))
    stat = timed(lambda: session_store_transcripts.import_pi(store, lines, key=f"pi-{next(count)}"),
                 5 if report.quick else 20)
    report.add(Row("import_pi, 1,000 entries, in memory", "—", "—", stat, verdict="n/a"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no file written (CI)")
    parser.add_argument("--out", help="where to write the markdown (default: benchmarks/RESULTS.md, full run only)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers even when installed")
    args = parser.parse_args()
    n = 300 if args.quick else 20_000
    report = Report(quick=args.quick)
    print("metrics", flush=True)
    ours = run_metrics(report, n)
    print("backends", flush=True)
    run_backends(report, n)
    print("scale curves", flush=True)
    run_curves(report)
    if not args.no_peers:
        print("peers", flush=True)
        run_peers(report, ours, n)
    command = "python3 benchmarks/bench.py" + (" --quick" if args.quick else "")
    text = render(report, command)
    out = args.out or (None if args.quick else str(ROOT / "benchmarks" / "RESULTS.md"))
    if out and not args.quick and plot(report, Path(out).with_name("scale.png")):
        report.notes.append("Scale curves plotted in [scale.png](scale.png).")
        text = render(report, command)
    print()
    print(text)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
