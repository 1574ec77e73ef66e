"""Benchmarks: issue 17's goals with verdicts, per-operation costs against floors, scale curves, peers.

    python3 benchmarks/bench.py            # full run (about an hour), writes benchmarks/RESULTS.md and *.png
    python3 benchmarks/bench.py --quick    # tiny sizes, no peers: proves the harness works (CI); writes nothing

The full run is the one command that regenerates RESULTS.md and the plots; run it after
any change to a measured path. RESULTS.md records the commit and date it measured.
Peers and plots need ``pip install -e ".[bench]"``; pi needs node and npm (peers.py
installs a pinned pi into .bench-node/, outside git). Only the public API of
session_store is used: a row whose measurement needs an API that does not exist says
"n/a (needs ...)" instead of failing.

How things are measured (see measuring.py): warm-up before timing, GC enabled, n stated
for every median, floors paired with what they bound (samples interleaved). Floors are
the work the store itself must do: ``json.dumps`` + ``os.write`` on an ``O_APPEND`` file
kept open (a non-durable append), the same + ``os.fdatasync`` (a durable append: the
store syncs with ``fdatasync``), ``read`` + ``json.loads`` per line (a cold load), and
for SQLite a bare ``INSERT`` + ``COMMIT`` in WAL mode with ``synchronous=FULL`` (what
our durable SQLite append commits with). "Fresh store" means a new ``SessionStore`` in a
warm process with a warm OS page cache: the cost a stateless worker pays per request.
Nothing here asserts a time: verdicts are reported, never enforced.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import gc
import inspect
import json
import os
import platform
import sqlite3
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "integrations"), str(HERE)]

import hot_paths  # noqa: E402
import peers  # noqa: E402
from measuring import (  # noqa: E402
    Curve,
    Goal,
    Report,
    Row,
    Stat,
    gc_cost,
    git_state,
    in_child,
    interleaved,
    med,
    paired,
    postgres_dsn,
    rss_bytes,
    scratch_dir,
    threaded_rate,
    timed,
    tree_bytes,
    us,
    verdict,
)

from session_store import InMemoryFileSystem, SessionStore, Storage, _give_back_freed_memory, tune_process  # noqa: E402
from session_store_sqlite import SqliteStorage  # noqa: E402

CONTENT = "Hello! Could you summarise the three main points of the attached report?"
RECORD = {"id": "5f2c0e8d9a7b6c1d", "parentId": "0a1b2c3d4e5f6071", "type": "user", "role": "user",
          "content": CONTENT, "timestamp": 1_763_700_000_000}
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How big the full run and the quick run go."""

    n: int  # samples of a cheap operation
    session_counts: tuple[int, ...]  # stores of this many sessions (goal 1, curves)
    request_at: int  # the stateless request's store size
    messages_per_session: int
    targets: int  # sessions of 50 messages that requests read
    huge: int  # messages in the one huge session (goal 7)
    fairness_seconds: float
    context_sizes: tuple[int, ...]  # path lengths for contexts and the peers' scale rows
    budget: float  # scales the seconds spent sampling a slow operation
    least: int  # the fewest samples behind a median of a slow operation


FULL = Sizes(n=20_000, session_counts=(10, 100, 1_000, 10_000, 100_000), request_at=10_000,
             messages_per_session=20, targets=10, huge=1_000_000, fairness_seconds=6.0,
             context_sizes=(100, 2_000, 100_000), budget=1.0, least=21)
QUICK = Sizes(n=200, session_counts=(10, 100), request_at=100, messages_per_session=4, targets=3,
              huge=2_000, fairness_seconds=0.5, context_sizes=(100, 500), budget=0.02, least=5)


def fill(store: SessionStore, sid: str, count: int, start: int = 0) -> list[str]:
    """Append ``count`` alternating user/assistant messages; their ids."""
    return [store.append(sid, role="user" if i % 2 == 0 else "assistant", content=f"{CONTENT} {i}").id
            for i in range(start, start + count)]


def files_store(place: str, **options: Any) -> SessionStore:
    """A store on ``place``: a SQLite database when it ends in ``.db``, else a JSONL directory."""
    if place.endswith(".db"):
        return SessionStore(SqliteStorage(place), **options)
    return SessionStore(storage_dir=place, **options)


def backend_name(place: str) -> str:
    return "SQLite" if place.endswith(".db") else "files"


def storage_bytes(place: str) -> int:
    """What the store holds on disk: its directory, or the database with its WAL."""
    if place.endswith(".db"):
        return sum(tree_bytes(place + suffix) for suffix in ("", "-wal", "-shm") if os.path.exists(place + suffix))
    return tree_bytes(place)


# ============================================================================
# Per-operation costs against floors
# ============================================================================


def append_floor(fd: int) -> Callable[[], None]:
    """``json.dumps`` + ``os.write`` of one record on an open ``O_APPEND`` file."""
    def op() -> None:
        os.write(fd, (json.dumps(RECORD) + "\n").encode())
    return op


def durable_floor(fd: int) -> Callable[[], None]:
    """The same + ``os.fdatasync``: what a durable append of the JSONL store must do."""
    def op() -> None:
        os.write(fd, (json.dumps(RECORD) + "\n").encode())
        os.fdatasync(fd)
    return op


@contextlib.contextmanager
def floor_file(directory: str) -> Iterator[int]:
    """An ``O_APPEND`` file in ``directory`` already holding some lines, kept open as the store does."""
    fd = os.open(os.path.join(directory, "floor.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for _ in range(20):
            os.write(fd, (json.dumps(RECORD) + "\n").encode())
        os.fdatasync(fd)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def sqlite_floor(directory: str, *, durable: bool) -> Iterator[Callable[[], None]]:
    """A bare ``INSERT`` + ``COMMIT`` in WAL mode, ``synchronous`` as our SQLite backend sets it."""
    db = sqlite3.connect(os.path.join(directory, "floor.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, line TEXT)")

    def op() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO m (line) VALUES (?)", (json.dumps(RECORD),))
        db.execute("COMMIT")

    try:
        yield op
    finally:
        db.close()


def run_operations(report: Report, sizes: Sizes) -> None:
    """The per-operation table: appends, reads, history, contexts, locks, threads."""
    n = sizes.n
    slow = max(200, n // 20)  # operations that fsync
    memory = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = memory.resolve("bench")
    fill(memory, sid, 20)
    floor, stat = paired(lambda: json.dumps(RECORD), lambda: memory.append(sid, role="user", content=CONTENT), n)
    report.add(Row(metric="append, InMemoryFileSystem", goal="≤ 10 µs", stat=stat,
                   floor=f"json.dumps {med(floor)}", ratio=f"{stat.median / floor.median:.1f}×",
                   verdict=verdict(stat.median <= 10)))

    with scratch_dir() as d, floor_file(d) as fd:
        durable = SessionStore(storage_dir=os.path.join(d, "durable"))
        dsid = durable.resolve("durable")
        fill(durable, dsid, 20)
        floor, stat = paired(durable_floor(fd), lambda: durable.append(dsid, role="user", content=CONTENT), slow)
        ratio = stat.median / floor.median
        report.add(Row(metric="append, files, durable", goal="≤ 1.3× write+fdatasync", stat=stat,
                       floor=f"write+fdatasync {med(floor)}", ratio=f"{ratio:.2f}×", verdict=verdict(ratio <= 1.3),
                       op=lambda: durable.append(dsid, role="user", content=CONTENT)))
        durable.close()

        fast = SessionStore(storage_dir=os.path.join(d, "fast"), durable=False)
        fsid = fast.resolve("fast")
        fill(fast, fsid, 20)
        floor, stat = paired(append_floor(fd), lambda: fast.append(fsid, role="user", content=CONTENT), n)
        report.add(Row(metric="append, files, not durable", goal="≤ 20 µs", stat=stat,
                       floor=f"dumps+write {med(floor)}", ratio=f"{stat.median / floor.median:.1f}×",
                       verdict=verdict(stat.median <= 20)))
        rsid = fast.resolve("read100")
        fill(fast, rsid, 100)
        stat = timed(lambda: fast.get_messages(rsid), n)
        report.add(Row(metric="read all of 100 messages, warm", goal="≤ 50 µs", stat=stat,
                       verdict=verdict(stat.median <= 50)))
        fast.close()

        with sqlite_floor(d, durable=True) as floor_op:
            lite = SessionStore(SqliteStorage(os.path.join(d, "s.db")))
            lsid = lite.resolve("durable")
            fill(lite, lsid, 20)
            floor, stat = paired(floor_op, lambda: lite.append(lsid, role="user", content=CONTENT), slow)
            ratio = stat.median / floor.median
            report.add(Row(metric="append, SQLite, durable", goal="≤ 1.3× INSERT+COMMIT", stat=stat,
                           floor=f"INSERT+COMMIT (WAL, synchronous=FULL) {med(floor)}", ratio=f"{ratio:.2f}×",
                           verdict=verdict(ratio <= 1.3)))
            lite.close()
        report_threads(report, d, n)

    deep = 10_000 if not report.quick else 1_000
    hsid = memory.resolve("history")
    hids = fill(memory, hsid, deep)
    stat = timed(lambda: memory.get_linear_history(hsid, hids[9]), n)
    report.add(Row(metric="linear history, depth 10", goal="≤ 10 µs", stat=stat, verdict=verdict(stat.median <= 10)))
    stat = timed(lambda: memory.get_linear_history(hsid, hids[-1]), max(50, n // 100))
    report.add(Row(metric=f"linear history, depth {deep:,}", goal="≤ 5 ms", stat=stat,
                   verdict=verdict(stat.median <= 5000)))
    for fmt in ("openai", "anthropic"):
        stat = timed(lambda fmt=fmt: memory.build_context(hsid, hids[99], format=fmt),  # type: ignore[misc]
                     max(200, n // 10))
        report.add(Row(metric=f"build_context {fmt}, depth 100", goal="—", stat=stat, verdict="n/a"))
    report_interop(report, n)

    def lock_round(store: SessionStore, lock_sid: str) -> Callable[[], None]:
        def op() -> None:
            store.acquire_lock(lock_sid, "worker-1")
            store.release_lock(lock_sid, "worker-1")
        return op

    lock = threading.Lock()

    def bare_lock() -> None:
        lock.acquire()
        lock.release()

    floor, stat = paired(bare_lock, lock_round(memory, hsid), n)
    report.add(Row(metric="lock acquire+release, InMemoryFileSystem", goal="≤ 2 µs", stat=stat,
                   floor=f"threading.Lock {med(floor)}", ratio=f"{stat.median / floor.median:.0f}×",
                   verdict=verdict(stat.median <= 2), op=lock_round(memory, hsid)))
    with scratch_dir() as d:
        disk = SessionStore(storage_dir=d)
        lsid = disk.resolve("locks")
        floor, stat = paired(bare_lock, lock_round(disk, lsid), n)
        report.add(Row(metric="lock acquire+release, files (cross-process)", goal="≤ 30 µs", stat=stat,
                       floor=f"threading.Lock {med(floor)}", ratio=f"{stat.median / floor.median:.0f}×",
                       verdict=verdict(stat.median <= 30), op=lock_round(disk, lsid)))
        disk.close()


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
        stat = timed(lambda fmt=fmt: store.build_context(sid, format=fmt), max(100, n // 50))  # type: ignore[misc]
        report.add(Row(metric=f"build_context {fmt}, 50 tool rounds (150 messages)", goal="—", stat=stat,
                       verdict="n/a"))
    lines = [json.dumps({"type": "session", "version": 3, "id": "bench", "timestamp": "2026-01-01T00:00:00.000Z",
                         "cwd": "/"})]
    for i in range(1000):
        role = ("user", "assistant", "toolResult")[i % 3]
        message = {"role": role, "content": [{"type": "text", "text": f"entry {i} " * 20}], "timestamp": i}
        lines.append(json.dumps({"type": "message", "id": f"{i:08x}", "parentId": f"{i - 1:08x}" if i else None,
                                 "timestamp": "2026-01-01T00:00:01.000Z", "message": message}))
    count = iter(range(10**9))
    import_pi: Callable[..., str] | None
    try:  # integrations/session_store_transcripts.py; before it existed, a method of the store
        from session_store_transcripts import import_pi
    except ImportError:
        import_pi = getattr(SessionStore, "import_pi", None)
    if import_pi is None:
        report.add(Row(metric="import_pi, 1,000 entries, in memory", goal="—",
                       value="n/a (needs session_store_transcripts.import_pi)", verdict="n/a"))
        return
    stat = timed(lambda: import_pi(store, lines, key=f"pi-{next(count)}"), 5 if report.quick else 21)
    report.add(Row(metric="import_pi, 1,000 entries, in memory", goal="—", stat=stat, verdict="n/a"))


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

        result = threaded_rate(work, threads, count)
        for fd in fds:
            os.close(fd)
        return result

    return rate(8, files, per) / rate(1, 1, per * 2)


def report_threads(report: Report, d: str, n: int) -> None:
    """Durable appends from 8 threads vs one thread's durable rate (group commit)."""
    per_thread = max(25, n // 60)
    store = SessionStore(storage_dir=os.path.join(d, "threads"))
    single = store.resolve("single-thread")
    fill(store, single, 10)  # warm-up
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
        report.add(Row(metric=f"durable appends, 8 threads, {label}", goal="≥ 5× one thread",
                       value=f"{rate:,.0f}/s ({8 * per_thread} appends)",
                       floor=f"1 thread {one_rate:,.0f}/s; bare write+fdatasync ×8 threads: {raw:.1f}× 1 thread",
                       ratio=f"{rate / one_rate:.1f}×", verdict=verdict(rate / one_rate >= 5)))
    store.close()


# ============================================================================
# Backends side by side
# ============================================================================

BACKEND_METRICS = ["append", "read 100, warm", "history, depth 100", "lock acquire+release",
                   "fresh store + read 100 (3-session store)"]


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
    reps = max(200, n // 20) if durable and name != "JSONL, in memory" else n
    stats["append"] = timed(lambda: store.append(sid, role="user", content=CONTENT), reps)
    rsid = store.resolve("read100")
    ids = fill(store, rsid, 100)
    stats["read 100, warm"] = timed(lambda: store.get_messages(rsid), n)
    stats["history, depth 100"] = timed(lambda: store.get_linear_history(rsid, ids[-1]), n)

    def lock_round() -> None:
        store.acquire_lock(rsid, "worker-1")
        store.release_lock(rsid, "worker-1")

    stats["lock acquire+release"] = timed(lock_round, reps)
    store.resolve("third")
    store.close()
    if name != "JSONL, in memory":
        def cold() -> None:
            s = open_store()
            s.get_messages(rsid)
            s.close()

        stats[BACKEND_METRICS[-1]] = timed(cold, max(100, n // 50))
    report.backends.append((name, stats))
    print(f"  {name}: " + ", ".join(f"{k} {v.median:.1f} µs (n={v.n})" for k, v in stats.items()), flush=True)


def run_backends(report: Report, sizes: Sizes) -> None:
    from session_store import JsonlStorage, RealFileSystem

    n = sizes.n
    measure_backend(report, "JSONL, in memory", lambda: None, n)
    for durable in (True, False):
        label = "durable" if durable else "not durable"
        with scratch_dir() as d:
            measure_backend(report, f"JSONL files, {label}", lambda: JsonlStorage(RealFileSystem(), d), n,
                            durable=durable)
        with scratch_dir() as d:
            measure_backend(report, f"SQLite, {label}", lambda: SqliteStorage(os.path.join(d, "s.db")), n,
                            durable=durable)
    if report.quick:  # no server to start for a smoke run
        return
    with postgres_dsn(report.notes) as dsn:
        if dsn is None:
            return
        for durable in (True, False):
            label = "durable" if durable else "not durable"
            schema = f"bench_{os.getpid()}_{int(durable)}"
            measure_backend(report, f"PostgreSQL on loopback, {label}", postgres_storage(dsn, schema),
                            max(200, n // 10), durable=durable)
            drop_schema(dsn, schema)


def postgres_storage(dsn: str, schema: str) -> Callable[[], Storage]:
    from session_store_postgres import PostgresStorage

    return lambda: PostgresStorage(dsn, schema=schema)


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ============================================================================
# Goal 1 and 2: stores of many sessions (open, resolve, read; the stateless request; creating)
# ============================================================================

OPEN_CURVE = Curve(name="open + resolve + read 50 messages vs sessions in the store", x_label="sessions in the store",
                   unit="ms", figure="open_vs_sessions.png")


def target_key(i: int) -> str:
    return f"chat:{i}"


def store_keys(have: int, want: int, targets: int) -> list[str]:
    """Keys of sessions ``have`` .. ``want-1`` of a grown store: the first ``targets`` are ``chat:i``."""
    return [target_key(i) if i < targets else f"user:{i}" for i in range(have, want)]


def grow_store(place: str, have: int, want: int, sizes: Sizes, *, durable_create: bool,
               messages: bool = True) -> float:
    """Create sessions ``have`` .. ``want-1`` (``store_keys``); seconds spent creating them (resolve only).

    With ``messages``, they are added afterwards by a second, non-durable store
    (untimed): every session gets ``messages_per_session`` messages, the ``targets``
    sessions ``chat:i`` 50 (created with the first batch).
    """
    keys = store_keys(have, want, sizes.targets)
    store = files_store(place, durable=durable_create)
    t0 = time.perf_counter()
    for key in keys:
        store.resolve(key)
    store.close()
    seconds = time.perf_counter() - t0
    if not messages:
        return seconds
    filler = files_store(place, durable=False)
    for key in keys:
        sid = filler.resolve(key)
        fill(filler, sid, 50 if key.startswith("chat:") else sizes.messages_per_session)
    filler.close()
    del filler
    gc.collect()
    return seconds


def fresh_read(place: str, key: str) -> Callable[[], None]:
    """Open a new store, resolve an existing key, read its messages, close."""
    def op() -> None:
        store = files_store(place)
        store.get_messages(store.resolve(key))
        store.close()
    return op


def rotating_targets(sizes: Sizes) -> Callable[[], str]:
    turn = iter(range(10**9))
    return lambda: target_key(next(turn) % sizes.targets)


def stateless_request(place: str, next_key: Callable[[], str]) -> Callable[[], None]:
    """Open, resolve, read 50 messages, two durable appends, build_context, close."""
    def op() -> None:
        store = files_store(place)
        sid = store.resolve(next_key())
        store.get_messages(sid)
        store.append(sid, role="user", content=CONTENT)
        store.append(sid, role="assistant", content=CONTENT)
        store.build_context(sid)
        store.close()
    return op


def samples_for(sizes: Sizes, seconds_each: float, *, budget: float = 30.0, most: int = 500) -> int:
    """How many samples fit ``budget`` seconds (scaled by the run's size), within [sizes.least, most]."""
    return max(sizes.least, min(most, int(budget * sizes.budget / max(seconds_each, 1e-6))))


def probe(op: Callable[[], object]) -> float:
    """Seconds of one call (also a first warm-up)."""
    t0 = time.perf_counter()
    op()
    return time.perf_counter() - t0


def run_store_scale(report: Report, sizes: Sizes, peers_on: bool) -> dict[str, Any]:
    """Goals 1 and 2 on files and SQLite, growing one store through every size; also the peer curve."""

    found: dict[str, Any] = {}
    with scratch_dir() as d:
        agents = peers.AgentsStore(os.path.join(d, "agents.db"), sizes.targets, sizes.messages_per_session) \
            if peers_on and peers.has_openai_agents() else None
        if peers_on and agents is None:
            report.notes.append("openai-agents not installed: its open curve and the stateless request's "
                                "comparison are missing.")
        for place in (os.path.join(d, "files"), os.path.join(d, "sessions.db")):
            name = backend_name(place)
            small = sizes.session_counts[0]
            baseline = os.path.join(d, f"baseline-{small}-" + os.path.basename(place))
            grow_store(baseline, 0, small, sizes, durable_create=False)
            have = 0
            creating = 0.0
            for count in sizes.session_counts:
                creating += grow_store(place, have, count, sizes, durable_create=name == "SQLite")
                found[f"{name} create {count}"] = creating
                have = count
                fresh, warm, base = open_costs(place, baseline, sizes, 2000 if not report.quick else 200)
                found[f"{name} fresh {count}"] = fresh
                found[f"{name} baseline {count}"] = base
                report.point(OPEN_CURVE, f"ours, {name}, fresh store per request", count, fresh.median / 1000)
                report.point(OPEN_CURVE, f"ours, {name}, long-lived store", count, warm.median / 1000)
                if count == sizes.request_at:
                    request = stateless_request(place, rotating_targets(sizes))
                    found[f"{name} request"] = timed(request, samples_for(sizes, probe(request)))
                if agents is not None and name == "files":
                    agents.grow(count)
                    found[f"agents fresh {count}"] = agents.fresh_read()
                    report.point(OPEN_CURVE, "openai-agents SQLiteSession, fresh per request", count,
                                 found[f"agents fresh {count}"].median / 1000)
                    if count == sizes.request_at:
                        found["agents request"] = agents.stateless_request()
            found[f"{name} create"] = creating
            found[f"{name} bytes"] = storage_bytes(place)
            found[f"{name} place"] = place
            if name == "files":
                found["memory"] = memory_touch(place, have, sizes, report)
            else:
                found["memory sqlite"] = memory_touch(place, have, sizes, report)
            found[f"{name} create pair"] = creation_costs(place, baseline, durable=name == "SQLite",
                                                          n=2000 if not report.quick else 100)
        if agents is not None:
            agents.close()
    report_goal_1(report, sizes, found)
    run_creation(report, sizes, found)
    return found


def open_costs(place: str, baseline: str, sizes: Sizes, warm_samples: int) -> tuple[Stat, Stat, Stat]:
    """Resolve + read 50 messages: through a fresh store per request, and through one long-lived store;
    and the fresh-store request on ``baseline`` (a store of the smallest size), interleaved with the
    first so that their ratio is not the machine's load changing between sizes."""
    key = rotating_targets(sizes)
    fresh, base = paired(lambda: fresh_read(place, key())(), lambda: fresh_read(baseline, key())(),
                         samples_for(sizes, 2 * probe(fresh_read(place, target_key(0)))))
    with contextlib.closing(files_store(place)) as store:
        warm = timed(lambda: store.get_messages(store.resolve(key())), warm_samples)
    return fresh, warm, base


def report_goal_1(report: Report, sizes: Sizes, found: dict[str, Any]) -> None:
    small, big = sizes.session_counts[0], sizes.session_counts[-1]
    for name in ("files", "SQLite"):
        lo: Stat = found[f"{name} baseline {big}"]
        hi: Stat = found[f"{name} fresh {big}"]
        mid = found.get(f"{name} fresh {sizes.request_at}")
        growth = hi.median / lo.median
        report.goal(Goal(goal="1", metric=f"open + resolve + read 50 messages, {name}, {big:,} sessions",
                         measured=med(hi), compared=f"a {small}-session store, interleaved: {med(lo)} "
                         f"(alone, when the store had {small}: {med(found[f'{name} fresh {small}'])})"
                         + (f"; {sizes.request_at:,}: {med(mid)}" if mid else ""),
                         ratio=f"{growth:.1f}×", target="≤ 2 ms and ≤ 2× the 10-session cost",
                         verdict=verdict(hi.median <= 2000 and growth <= 2)))
    agents = found.get("agents request")
    for name in ("files", "SQLite"):
        ours: Stat = found[f"{name} request"]
        if agents is None:
            report.goal(Goal(goal="1", metric=f"stateless request, {name}, {sizes.request_at:,} sessions",
                             measured=med(ours), compared="openai-agents not installed", target="≤ 1.5×",
                             verdict="n/a"))
            continue
        ratio = ours.median / agents.median
        report.goal(Goal(goal="1", metric=f"stateless request, {name}, {sizes.request_at:,} sessions "
                         "(open, resolve, read 50, 2 durable appends, build_context)",
                         measured=med(ours), compared=f"openai-agents SQLiteSession {med(agents)}",
                         ratio=f"{ratio:.1f}×", target="≤ 1.5×", verdict=verdict(ratio <= 1.5)))


def creation_costs(place: str, baseline: str, *, durable: bool, n: int) -> tuple[Stat, Stat]:
    """Creating a session (resolve of a new key, one long-lived store per place) in the
    grown store and in the small ``baseline`` store, their samples interleaved."""
    turn = iter(range(10**9))
    with contextlib.closing(files_store(place, durable=durable)) as big, \
            contextlib.closing(files_store(baseline, durable=durable)) as small:
        return paired(lambda: big.resolve(f"new:{next(turn)}"), lambda: small.resolve(f"new:{next(turn)}"), n)


def run_creation(report: Report, sizes: Sizes, found: dict[str, Any]) -> None:
    """Goal 2: creating every session of the big store, and how much of it is index upkeep.

    Neither storage keeps an index that is rewritten: a key is one link file (files)
    or one row (SQLite), written with its session. What upkeep could still cost is
    what a bigger index adds to each creation: the share is 1 - (a creation in a
    10-session store) / (a creation in the grown store), their samples interleaved.
    (Batches of the growth run, minutes apart, differed by the machine's speed: 388
    and 446 µs a session in one run. ``index_save_delay_ms``, which once deferred a
    checkpoint of the whole index, is ignored since the checkpoint went: comparing
    runs with and without it measured only noise.)
    """
    big, small = sizes.session_counts[-1], sizes.session_counts[0]
    for name in ("files", "SQLite"):
        total: float = found[f"{name} create"]
        durability = "durable" if name == "SQLite" else "not durable"
        grown, base = found[f"{name} create pair"]
        share = max(0.0, 1 - base.median / grown.median)
        written = "a session folder and one key link" if name == "files" else "two rows in one transaction"
        report.goal(Goal(goal="2", metric=f"create {big:,} sessions, {name} ({durability}; resolve of new keys)",
                         measured=f"{total:,.1f} s in all; then one more: {med(grown)}",
                         compared=f"one more in a {small}-session store, interleaved: {med(base)}; a creation "
                         f"writes {written}, nothing else", ratio=f"upkeep {share:.0%}",
                         target="< 10% on index upkeep", verdict=verdict(share < 0.10)))
    if not report.quick:
        with scratch_dir() as d:
            seconds = grow_store(os.path.join(d, "files"), 0, sizes.request_at, sizes, durable_create=True,
                                 messages=False)
        report.notes.append(f"Creating {sizes.request_at:,} sessions on files *durably* (the default) took "
                            f"{seconds:,.1f} s ({seconds / sizes.request_at * 1e3:,.2f} ms a session); the "
                            f"{big:,}-session file store is created not durably to keep the run within the hour.")


# ============================================================================
# Goal 3: memory
# ============================================================================

MEMORY_CURVE = Curve(name="RSS vs sessions touched (one long-lived store)", x_label="sessions touched",
                     unit="MB", figure="memory_vs_sessions.png", log_y=False)


def touch_worker(place: str, keys: list[str], marks: list[int]) -> dict[str, Any]:
    """In a child: read every session once through one store; RSS at ``marks`` and after ``close()``."""
    gc.collect()
    # Every figure goes into an array made beforehand: a Python object made during the
    # run and kept (a tuple, an int, a float) pins the allocator arena it lands in, and
    # the twenty samples kept as tuples held most of the freed memory from the OS
    # (12% released instead of 90%); so did the loop's own counters, made last and kept
    # (89% instead of 94%). The array: the marks' RSS, then the messages read, peak, RSS
    # after close, RSS once the store is dropped, and the run's nanoseconds.
    out = array.array("q", bytes(8 * (len(marks) + 5)))
    taken = 0
    tune_process()  # goal 3 measures what close() gives back with malloc_trim, which is opt-in
    _give_back_freed_memory()  # the baseline: what the process holds (close() trims too; untrimmed, it ran 14 MB high)
    before = rss_bytes()
    store = files_store(place)
    t0 = time.perf_counter_ns()
    for i, key in enumerate(keys, 1):
        out[-5] += len(store.get_messages(store.resolve(key)))
        if taken < len(marks) and i == marks[taken]:
            out[taken] = rss_bytes()
            taken += 1
    out[-1] = time.perf_counter_ns() - t0
    del i, key
    out[-4] = rss_bytes()
    store.close()
    gc.collect()
    out[-3] = rss_bytes()  # the store is still referenced, as a long-lived process may keep it
    del store
    gc.collect()
    out[-2] = rss_bytes()
    return {"before": before, "marks": list(zip(marks, out[:len(marks)], strict=True)), "peak": out[-4],
            "after_close": out[-3], "dropped": out[-2], "messages": out[-5], "seconds": out[-1] / 1e9}


def cached_bytes_worker(place: str, keys: list[str]) -> dict[str, Any]:
    """In a child: Python memory (tracemalloc) held after reading the sessions of ``keys``, per message read."""
    store = files_store(place)
    sids = [store.resolve(k) for k in keys]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    read = 0
    payload = 0
    objects = 0  # the objects a Message is made of (its id, content and timestamp too): no cache holds less
    for sid in sids:
        messages = store.get_messages(sid)
        read += len(messages)
        payload += sum(len(json.dumps(m.to_record())) + 1 for m in messages)
        objects += sum(sys.getsizeof(m) + sys.getsizeof(m.id) + sys.getsizeof(m.content) + sys.getsizeof(m.timestamp)
                       for m in messages)
        del messages
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    store.close()
    return {"held": held, "messages": read, "payload": payload, "objects": objects}


def released_share(run: dict[str, Any]) -> float:
    """The share of a touch run's RSS growth that ``close()`` gave back."""
    grown: int = max(1, run["peak"] - run["before"])
    return float(run["peak"] - run["after_close"]) / grown


def memory_touch(place: str, count: int, sizes: Sizes, report: Report) -> dict[str, Any]:
    """Goal 3's measurements on one backend's big store (each in a fresh process)."""
    name = backend_name(place)
    marks = sorted({max(1, count * k // 20) for k in range(1, 21)})
    keys = store_keys(0, count, sizes.targets)
    # Three fresh processes (one when quick): the row reports the run releasing the median
    # share, since where the allocator's pages land moves a single run's share by ± 3%.
    runs = [in_child(touch_worker, place, keys, marks) for _ in range(1 if report.quick else 3)]
    runs.sort(key=released_share)
    touched: dict[str, Any] = runs[len(runs) // 2]
    touched["shares"] = [released_share(r) for r in runs]
    for x, rss in touched["marks"]:
        report.point(MEMORY_CURVE, f"ours, {name}", x, rss / MB)
    cached = in_child(cached_bytes_worker, place, keys[-min(500, len(keys) // 2):])
    touched["cached"] = cached
    touched["disk"] = storage_bytes(place)
    return touched


def report_goal_3(report: Report, sizes: Sizes, found: dict[str, Any]) -> None:
    for name, key in (("files", "memory"), ("SQLite", "memory sqlite")):
        m = found[key]
        marks = m["marks"]
        half = next(r for x, r in marks if x >= marks[-1][0] // 2)
        end = marks[-1][1]
        growth = end / half
        report.goal(Goal(goal="3", metric=f"RSS across touching {marks[-1][0]:,} sessions × "
                         f"{sizes.messages_per_session} messages once, {name}",
                         measured=f"{m['before'] / MB:,.0f} MB before open → {half / MB:,.0f} MB at half → "
                         f"{end / MB:,.0f} MB at the end ({m['seconds']:,.1f} s)",
                         compared="second half vs first", ratio=f"{growth:.2f}×",
                         target="flat ± 10% (≤ 1.10×)", verdict=verdict(growth <= 1.10)))
        released = released_share(m)
        report.goal(Goal(goal="3", metric=f"RSS after close(), the store still referenced, {name}",
                         measured=f"{m['after_close'] / MB:,.0f} MB (peak {m['peak'] / MB:,.0f} MB, "
                         f"before open {m['before'] / MB:,.0f} MB; once the store is dropped too: "
                         f"{m['dropped'] / MB:,.0f} MB)", compared="share of the growth close() released ("
                         + (f"median of {len(m['shares'])} fresh processes: " if len(m["shares"]) > 1 else "one run: ")
                         + ", ".join(f"{x:.0%}" for x in m["shares"]) + ")",
                         ratio=f"{released:.0%}", target="close() releases everything (≥ 90%)",
                         verdict=verdict(released >= 0.9)))
        c = m["cached"]
        per = c["held"] / max(1, c["messages"])
        disk = m["disk"] / max(1, m["messages"])
        report.goal(Goal(goal="3", metric=f"memory per cached message, {name} ({c['messages']:,} messages read, "
                         "tracemalloc)", measured=f"{per:,.0f} bytes",
                         compared=f"on disk {disk:,.0f} bytes a message (whole store / messages); "
                         f"JSON record {c['payload'] / max(1, c['messages']):,.0f} bytes; the Message objects "
                         f"alone (object, id, content, timestamp: sys.getsizeof) "
                         f"{c['objects'] / max(1, c['messages']):,.0f} bytes",
                         ratio=f"{per / disk:.2f}×", target="≤ 1.5× its bytes on disk",
                         verdict=verdict(per / disk <= 1.5)))
    if sizes.session_counts[-1] < 1_000_000:
        report.notes.append(f"Goal 3 asks for 10⁶ sessions; this run touches {sizes.session_counts[-1]:,} "
                            "(the largest store it builds: creating 10⁶ sessions on today's code takes hours). "
                            "`--sessions 1000000` measures 10⁶.")


def metadata_worker(place: str, sessions: int) -> dict[str, Any]:
    """In a child: ``get_metadata`` of every session through a fresh store; time and Python memory held."""
    store = files_store(place)
    sids = [store.resolve(f"m:{i}") for i in range(sessions)]
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    for sid in sids:
        store.get_metadata(sid)
    seconds = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    store.close()
    return {"seconds": seconds, "held": held}


def run_metadata(report: Report, sizes: Sizes) -> None:
    """Goal 3: get_metadata never loads a log (100 sessions of 1,000 messages)."""
    sessions, each = (100, 1000) if not report.quick else (10, 100)
    with scratch_dir() as d:
        place = os.path.join(d, "files")
        with contextlib.closing(files_store(place, durable=False)) as store:
            for i in range(sessions):
                fill(store, store.resolve(f"m:{i}"), each)
        found = in_child(metadata_worker, place, sessions)
        logs = storage_bytes(place)
    report.goal(Goal(goal="3", metric=f"get_metadata of {sessions} sessions × {each:,} messages, fresh store",
                     measured=f"{found['seconds'] * 1000:,.1f} ms, {found['held'] / MB:,.1f} MB held",
                     compared=f"the logs: {logs / MB:,.1f} MB on disk",
                     ratio=f"{found['held'] / logs:.2f}× the logs", target="never loads a log (≤ 0.05× the logs)",
                     verdict=verdict(found["held"] <= 0.05 * logs)))


# ============================================================================
# Goal 4: contexts (ours here; pi's in peers.py)
# ============================================================================

CONTEXT_CURVE = Curve(name="build_context vs path length (warm)", x_label="messages on the path", unit="µs",
                      figure="context_vs_path.png")


def run_contexts(report: Report, sizes: Sizes) -> dict[str, dict[int, Stat]]:
    """Fresh open, build_context, append + build_context, a fork and an append at each path length."""
    out: dict[str, dict[int, Stat]] = {"context": {}, "append_context": {}, "fork": {}, "append": {}, "open": {}}
    with scratch_dir() as d:
        for size in sizes.context_sizes:
            for op, stat in contexts_at(os.path.join(d, f"ctx-{size}"), size, sizes).items():
                out[op][size] = stat
            report.point(CONTEXT_CURVE, "ours, build_context (OpenAI format)", size, out["context"][size].median)
            report.point(CONTEXT_CURVE, "ours, append + build_context", size, out["append_context"][size].median)
            gc.collect()
    return out


def contexts_at(place: str, size: int, sizes: Sizes) -> dict[str, Stat]:
    """One session of ``size`` messages on a non-durable file store (pi does not fsync either).

    The fresh open is measured first, on exactly ``size`` messages. "Append + build the
    head's context" starts every sample from a head of ``size`` messages whose context
    was built (an agent's previous turn): a branch at the same message, untimed. A fork
    appends another sibling of the head. So neither grows the path it measures.
    """
    out: dict[str, Stat] = {}
    store = files_store(place, durable=False)
    sid = store.resolve("ctx")
    fill(store, sid, size)
    store.close()
    opener = fresh_read(place, "ctx")
    out["open"] = timed(opener, samples_for(sizes, probe(opener), budget=10, most=2000))
    store = files_store(place, durable=False)
    store.get_messages(sid)
    n = samples_for(sizes, probe(lambda: store.build_context(sid)), budget=10, most=2000)
    out["context"] = timed(lambda: store.build_context(sid), n)
    base = store.get_head(sid) or ""
    branches = iter(range(10**9))

    def previous_turn() -> None:  # untimed: back to a head of ``size`` messages, its context built
        name = f"turn-{next(branches)}"
        store.create_branch(sid, name, base)
        store.switch_to_branch(sid, name)
        store.build_context(sid)

    out["append_context"] = timed(
        lambda: (store.append(sid, role="user", content=CONTENT), store.build_context(sid)), min(n, 300),
        setup=previous_turn)

    def fork() -> None:
        head = store.get_message(sid, store.get_head(sid) or "")
        sibling = store.append(sid, role="user", content=CONTENT, parent_id=head.parent_id)
        store.build_context(sid, sibling.id)

    out["fork"] = timed(fork, n)
    out["append"] = timed(lambda: store.append(sid, role="user", content=CONTENT), n)
    store.close()
    return out


def report_goal_4(report: Report, sizes: Sizes, ours: dict[str, dict[int, Stat]], pi: dict[str, Any] | None) -> None:
    small, mid = sizes.context_sizes[0], sizes.context_sizes[1]
    for size in (small, mid):
        stat = ours["context"][size]
        if pi is None:
            report.goal(Goal(goal="4", metric=f"build_context, {size:,} messages, warm", measured=med(stat),
                             compared="pi not measured", target="≤ pi's per message", verdict="n/a"))
            continue
        theirs: Stat = pi[str(size)]["context"]
        ratio = stat.median / theirs.median
        report.goal(Goal(goal="4", metric=f"build_context, {size:,} messages, warm", measured=med(stat),
                         compared=f"pi buildSessionContext {med(theirs)}", ratio=f"{ratio:.1f}×",
                         target="≤ pi's (≤ 1.0×)", verdict=verdict(ratio <= 1.0)))
    grow = ours["append_context"][mid].median / ours["append_context"][small].median
    extra = ""
    if pi is not None:
        extra = f"; pi at {mid:,}: {med(pi[str(mid)]['append_context'])}"
    report.goal(Goal(goal="4", metric=f"append one message + build the head's context, {mid:,} messages",
                     measured=med(ours["append_context"][mid]),
                     compared=f"at {small}: {med(ours['append_context'][small])}{extra}",
                     ratio=f"{grow:.1f}×", target="O(new messages): ≤ 1.5× the cost at 100",
                     verdict=verdict(grow <= 1.5)))
    if pi is not None:
        ratio = ours["fork"][mid].median / pi[str(mid)]["fork"].median
        report.goal(Goal(goal="4", metric=f"fork: append a sibling of the head + build its context, {mid:,}",
                         measured=med(ours["fork"][mid]), compared=f"pi (branch, append, build) "
                         f"{med(pi[str(mid)]['fork'])}", ratio=f"{ratio:.1f}×", target="(issue 17: 10× slower)",
                         verdict="—"))


# ============================================================================
# Goal 5: fair leases
# ============================================================================


def fairness_worker(place: str, key: str, worker: str, seconds: float, start: Any, dsn: str | None) -> int:
    """In a child: take the lease, append one message, release; until ``seconds`` after ``start``."""
    if dsn is not None:
        from session_store_postgres import PostgresStorage

        store = SessionStore(PostgresStorage(dsn, schema=place), lock_timeout_ms=60_000)
    else:
        store = files_store(place, lock_timeout_ms=60_000)
    sid = store.resolve(key)
    start.wait()  # a barrier: every worker has opened its store
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        with store.lock(sid, worker, timeout=None):
            store.append(sid, role="user", content=f"{worker} {turns}")
        turns += 1
    store.close()
    return turns


def fairness(place: str, seconds: float, dsn: str | None = None) -> list[int]:
    """Turns taken by each of 4 processes contending for one session's lease."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    if dsn is not None:
        from session_store_postgres import PostgresStorage

        with contextlib.closing(SessionStore(PostgresStorage(dsn, schema=place))) as store:
            store.resolve("contended")
    else:
        with contextlib.closing(files_store(place)) as store:
            store.resolve("contended")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        start = manager.Barrier(5)
        results = [pool.apply_async(fairness_worker, (place, "contended", f"worker-{i}", seconds, start, dsn))
                   for i in range(4)]
        start.wait()
        return [r.get(seconds + 120) for r in results]


def run_fairness(report: Report, sizes: Sizes) -> None:
    places: list[tuple[str, str | None]] = []
    with scratch_dir() as d, contextlib.ExitStack() as stack:
        places = [(os.path.join(d, "files"), None), (os.path.join(d, "s.db"), None)]
        if not report.quick:
            dsn = stack.enter_context(postgres_dsn(report.notes))
            if dsn is not None:
                places.append((f"bench_fair_{os.getpid()}", dsn))
        for place, dsn in places:
            name = "PostgreSQL" if dsn else backend_name(place)
            turns = fairness(place, sizes.fairness_seconds, dsn)
            if dsn is not None:
                drop_schema(dsn, place)
            total = sum(turns) or 1
            shares = sorted(t / total for t in turns)
            report.goal(Goal(goal="5", metric=f"4 processes, one session's lease, a durable append per turn, {name}",
                             measured=f"{sum(turns):,} turns in {sizes.fairness_seconds:g} s; shares "
                             + ", ".join(f"{s:.0%}" for s in shares),
                             compared="ideal 25% each", ratio=f"smallest {shares[0]:.0%}", target="each ≥ 15%",
                             verdict=verdict(shares[0] >= 0.15)))


# ============================================================================
# Goal 6 and 7: cold loads of one long session
# ============================================================================


def write_floor_file(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def floor_load(path: str) -> Callable[[], list[Any]]:
    """The floor of a cold load: read the file, ``json.loads`` every line."""
    def op() -> list[Any]:
        with open(path, "rb") as f:
            return [json.loads(line) for line in f.read().splitlines()]
    return op


def run_cold_load(report: Report, sizes: Sizes,
                  agents_reader: Callable[[list[dict[str, Any]]], contextlib.AbstractContextManager[Callable[[], None]]]
                  | None) -> None:
    """Goal 6: a fresh store loading a 2,000-message session vs the floor and openai-agents,
    the three interleaved (their ratios are not the machine's load changing between them)."""
    count = 2000 if not report.quick else 200
    n = 100 if not report.quick else 10
    with scratch_dir() as d:
        for place in (os.path.join(d, "files"), os.path.join(d, "s.db")):
            with contextlib.closing(files_store(place, durable=False)) as store:
                sid = store.resolve("long")
                fill(store, sid, count)
                records = [m.to_record() for m in store.get_messages(sid)]
            floor_path = os.path.join(d, "floor.jsonl")
            lines = [json.dumps(r) for r in records]
            write_floor_file(floor_path, lines)

            def cold(place: str = place, sid: str = sid) -> None:
                store = files_store(place)
                store.get_messages(sid)
                store.close()

            items = [{"role": r["role"], "content": r["content"]} for r in records]
            with contextlib.ExitStack() as stack:
                ops: list[Callable[[], object]] = [floor_load(floor_path), cold]
                if agents_reader is not None:
                    ops.append(stack.enter_context(agents_reader(items)))
                stats = interleaved(ops, n)
                collected = gc_cost(ops[1:], max(10, n // 3))
            floor, ours = stats[0], stats[1]
            ratio = ours.median / floor.median
            name = backend_name(place)
            report.goal(Goal(goal="6", metric=f"cold load of a {count:,}-message session, {name} "
                             "(fresh store + get_messages)", measured=med(ours),
                             compared=f"floor read + json.loads per line {med(floor)}", ratio=f"{ratio:.1f}×",
                             target="≤ 1.5× the floor", verdict=verdict(ratio <= 1.5)))
            if agents_reader is not None:
                theirs = stats[2]
                ratio = ours.median / theirs.median
                ours_size = sum(map(len, lines)) / len(lines)
                their_size = sum(len(json.dumps(i)) for i in items) / len(items)
                report.goal(Goal(goal="6", metric=f"cold load of a {count:,}-message session, {name}, "
                                 "vs openai-agents", measured=med(ours),
                                 compared=f"SQLiteSession (fresh) + get_items {med(theirs)}, which is "
                                 f"{theirs.median / floor.median:.2f}× our floor: it stores {their_size:,.0f} "
                                 f"bytes a message (role, content), we {ours_size:,.0f} (the tree's id, "
                                 "parentId, type, timestamp too). Of each load, the garbage collector ran "
                                 f"{us(collected[0])} in ours, {us(collected[1])} in theirs (mean): we return "
                                 "Message objects, which it tracks; they return dicts of strings, which it does not",
                                 ratio=f"{ratio:.1f}×", target="≤ openai-agents (≤ 1.0×)",
                                 verdict=verdict(ratio <= 1.0)))


def huge_build_worker(place: str, count: int, floor_path: str) -> str:
    """In a child: one session of ``count`` messages (not durable), and the floor file of its records."""
    store = files_store(place, durable=False)
    sid = store.resolve("huge")
    batch = 10_000
    for start in range(0, count, batch):
        fill(store, sid, min(batch, count - start), start)
    with open(floor_path, "w", encoding="utf-8") as f:
        for m in store.get_messages(sid):
            f.write(json.dumps(m.to_record()) + "\n")
    store.close()
    return sid


def huge_load_worker(place: str, sid: str, how: str) -> dict[str, float]:
    """In a child: one cold load (``how``: full, tail or floor); seconds and RSS growth."""
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    if how == "floor":
        kept: object = floor_load(place)()
    else:
        store = files_store(place)
        kept = (store.get_linear_history(sid, limit=50) if how == "tail"
                else store.build_context(sid, limit=50) if how == "context" else store.get_messages(sid))
    seconds = time.perf_counter() - t0
    after = rss_bytes()
    del kept
    return {"seconds": seconds, "rss": after - before}


def run_huge(report: Report, sizes: Sizes) -> dict[str, Any]:
    """Goal 7: a 10⁶-message session opened cold, vs the floor; each load in a fresh process."""
    count = sizes.huge
    reps = 5 if not report.quick else 2
    with scratch_dir() as d:
        place, floor_path = os.path.join(d, "files"), os.path.join(d, "floor.jsonl")
        t0 = time.perf_counter()
        sid = in_child(huge_build_worker, place, count, floor_path)
        built = time.perf_counter() - t0
        runs: dict[str, list[dict[str, float]]] = {"floor": [], "full": []}
        for _ in range(reps):  # interleaved, each in its own process
            runs["floor"].append(in_child(huge_load_worker, floor_path, sid, "floor"))
            runs["full"].append(in_child(huge_load_worker, place, sid, "full"))
        disk = storage_bytes(place)
        partial = "limit" in inspect.signature(SessionStore.build_context).parameters
        if partial:
            for _ in range(reps):
                runs.setdefault("tail", []).append(in_child(huge_load_worker, place, sid, "tail"))
                runs.setdefault("context", []).append(in_child(huge_load_worker, place, sid, "context"))

    def stat(how: str) -> Stat:
        return Stat(samples=tuple(r["seconds"] * 1e6 for r in runs[how]))

    def rss(how: str) -> float:
        return sorted(r["rss"] for r in runs[how])[len(runs[how]) // 2] / MB

    floor, full = stat("floor"), stat("full")
    ratio = full.median / floor.median
    memory = rss("full") * MB / disk
    report.goal(Goal(goal="7", metric=f"a {count:,}-message session: fresh store + get_messages "
                     "(each load in a fresh process)", measured=f"{med(full)}, RSS +{rss('full'):,.0f} MB "
                     f"({memory:.1f}× the file: goal 3 asks ≤ 1.5×)",
                     compared=f"floor {med(floor)}, RSS +{rss('floor'):,.0f} MB (file {disk / MB:,.0f} MB)",
                     ratio=f"{ratio:.1f}×", target="≤ 1.5× the floor and within the memory goal",
                     verdict=verdict(ratio <= 1.5 and memory <= 1.5)))
    if partial:
        for how, what in (("tail", "get_linear_history(sid, limit=50)"), ("context", "build_context(sid, limit=50)")):
            part = stat(how)
            report.goal(Goal(goal="7", metric=f"a {count:,}-message session: fresh store + {what}",
                             measured=f"{med(part)}, RSS +{rss(how):,.0f} MB", compared=f"floor {med(floor)}",
                             ratio=f"{part.median / floor.median:.4f}×", target="without loading it all",
                             verdict=verdict(part.median < floor.median / 10 and rss(how) < 0.05 * disk / MB)))
    else:
        report.goal(Goal(goal="7", metric=f"a {count:,}-message session: fresh store + last 50 messages",
                         measured="n/a (needs a partial read, e.g. get_linear_history(sid, limit=50))",
                         target="without loading it all", verdict="n/a"))
    report.notes.append(f"Goal 7's session was built with {count:,} non-durable appends in {built:,.0f} s.")
    return {"full": full, "floor": floor}


# ============================================================================
# Scale curves
# ============================================================================

SIZE_CURVE = Curve(name="fresh store + read vs session size (files)", x_label="messages in the session", unit="ms",
                   figure="session_size.png")
APPEND_CURVE = Curve(name="append vs session size (InMemoryFileSystem)", x_label="messages in the session",
                     unit="µs", figure="session_size.png", log_y=False)


def run_curves(report: Report, sizes: Sizes) -> None:
    points = [100, 1000] if report.quick else [100, 1_000, 10_000, 100_000, 1_000_000]
    store = SessionStore(InMemoryFileSystem(), storage_dir="/bench")
    sid = store.resolve("grow")
    have = 0
    for size in points:
        fill(store, sid, size - have)
        have = size
        report.point(APPEND_CURVE, "ours", size,
                     timed(lambda: store.append(sid, role="user", content=CONTENT), 2000).median)
        have += 2000 + warmup_count(2000)
    del store
    gc.collect()
    with scratch_dir() as d:
        for size in points[:-1] if not report.quick else points:
            place = os.path.join(d, f"s{size}")
            with contextlib.closing(files_store(place, durable=False)) as store:
                fill(store, store.resolve("s"), size)
            op = fresh_read(place, "s")
            stat = timed(op, samples_for(sizes, probe(op), budget=10))
            report.point(SIZE_CURVE, "ours", size, stat.median / 1000)


def warmup_count(n: int) -> int:
    return max(2, n // 10)


# ============================================================================
# Output
# ============================================================================


def render(report: Report, command: str, started: float, elapsed: float | None,
           load: tuple[float, float], before: str = hot_paths.BEFORE) -> str:
    took = f"{elapsed / 60:,.0f} min" if elapsed is not None else "—"
    lines = ["# Benchmark results", "",
             f"Command: `{command}`  ",
             f"Measured code: commit {git_state()}; measured "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; the run took {took}.  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
             f"Python {platform.python_version()} ({platform.python_implementation()}); shared and noisy: "
             f"load average {load[0]:.1f} when the run started, {load[1]:.1f} when it ended.  ",
             f"Peers: {peers.versions()}.  ",
             "Every median states its samples (n); warm-up before timing; GC enabled; floors paired with what "
             "they bound (samples interleaved). See benchmarks/README.md for how each row is measured.", ""]
    if report.goals:
        lines += ["## Goals of issue 17", "",
                  "| goal | metric | measured | compared with | ratio | target | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {g.goal} | {g.metric} | {g.measured} | {g.compared} | {g.ratio} | {g.target} | {g.verdict} |"
                  for g in sorted(report.goals, key=lambda g: g.goal)]
    if report.rows:
        lines += ["", "## Per operation", "",
                  "| metric | our goal | median (n) | tail | floor (same run, paired) | ratio | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for r in report.rows:
            tail = f"{r.stat.tail[0]} {us(r.stat.tail[1])}" if r.stat else ""
            value = med(r.stat) if r.stat else r.value
            lines.append(f"| {r.metric} | {r.goal} | {value} | {tail} | {r.floor} | {r.ratio} | {r.verdict} |")
    lines += hot_paths.render(report.speed, before)
    lines += hot_paths.render_then(report.then)
    if report.backends:
        lines += ["", "## Backends side by side", "",
                  "Same operations on every backend: median (tail) per operation, on this machine's disk.", "",
                  "| backend | " + " | ".join(BACKEND_METRICS) + " |", "|---" * (len(BACKEND_METRICS) + 1) + "|"]
        for name, stats in report.backends:
            cells = [f"{us(stats[m].median)} ({stats[m].tail[0]} {us(stats[m].tail[1])}, n={stats[m].n})"
                     if m in stats else "—" for m in BACKEND_METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.peers:
        lines += ["", "## Peers, like with like", "",
                  "Each row compares a peer with our store doing the same work at the same durability "
                  "(durable: synced to disk before returning; not durable: written to the OS; in memory). "
                  "Ratio: peer / ours (> 1: we are faster).", "",
                  "| operation | durability | peer | peer median | ours | our median | peer / ours |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p.operation} | {p.durability} | {p.peer} | {p.peer_value} | {p.ours} | {p.ours_value} | "
                  f"{p.ratio} |" for p in report.peers]
    if report.curves:
        lines += ["", "## Scale curves", "", "| curve | series | points (x → median) |", "|---|---|---|"]
        for c in report.curves.values():
            for series, points in c.series.items():
                pts = ", ".join(f"{x:,} → {y:,.2f} {c.unit}" for x, y in points)
                lines.append(f"| {c.name} | {series} | {pts} |")
        figures = sorted({c.figure for c in report.curves.values()})
        lines += ["", "Plots: " + ", ".join(f"[{f}]({f})" for f in figures) + "."]
    if report.profiles:
        lines += ["", "## Profiles of the per-operation goals not met", "",
                  "cProfile over the same operation (its overhead inflates every entry alike); "
                  "own time per operation, most first."]
        for metric, table in report.profiles:
            lines += ["", f"### {metric}", "", table]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def plot(report: Report, directory: Path) -> list[str]:
    """One PNG per figure (curves sharing a figure are side by side); the files written."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        report.notes.append("matplotlib not installed: no plots (pip install -e '.[bench]').")
        return []
    written = []
    figures: dict[str, list[Curve]] = {}
    for c in report.curves.values():
        figures.setdefault(c.figure, []).append(c)
    for figure, curves in figures.items():
        fig, axes = plt.subplots(1, len(curves), figsize=(6.4 * len(curves), 4.4), squeeze=False)
        for ax, c in zip(axes[0], curves, strict=True):
            for series, points in c.series.items():
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=series)
            ax.set_xscale("log")
            if c.log_y:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set_title(c.name, fontsize=9)
            ax.set_xlabel(c.x_label)
            ax.set_ylabel(c.unit)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(directory / figure, dpi=100)
        plt.close(fig)
        written.append(figure)
    return written


# ============================================================================
# Main
# ============================================================================

SECTIONS = ("operations", "backends", "stores", "metadata", "contexts", "hot", "fairness", "cold", "huge",
            "curves", "peers")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no peers, no file written (CI)")
    parser.add_argument("--out", help="where to write the markdown (default: benchmarks/RESULTS.md, full run only)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers even when installed")
    parser.add_argument("--sessions", type=int, help="largest store measured (default 100,000)")
    parser.add_argument("--only", help=f"comma-separated sections, for development: {', '.join(SECTIONS)}")
    parser.add_argument("--before", default=hot_paths.BEFORE,
                        help=f"the commit the hot paths are compared with (default {hot_paths.BEFORE})")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.sessions:
        counts = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
        sizes = dataclasses.replace(sizes, session_counts=(*(c for c in counts if c < args.sessions), args.sessions),
                                    request_at=min(sizes.request_at, args.sessions))
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    peers_on = not (args.quick or args.no_peers)
    report = Report(quick=args.quick)
    started = time.time()
    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()

    def section(name: str) -> bool:
        if name in only:
            print(f"{name} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
            return True
        return False

    if section("operations"):
        run_operations(report, sizes)
    if section("backends"):
        run_backends(report, sizes)
    if section("stores"):
        found = run_store_scale(report, sizes, peers_on)
        report_goal_3(report, sizes, found)
    if section("metadata"):
        run_metadata(report, sizes)
    pi = None
    if peers_on and "contexts" in only:
        pi = peers.run_pi(report, sizes.context_sizes, CONTENT, 10 * sizes.budget, sizes.least)
    if section("contexts"):
        ours = run_contexts(report, sizes)
        for size, stat in ((k, v) for k, v in (pi or {}).items() if k.isdigit()):
            report.point(CONTEXT_CURVE, "pi buildSessionContext", int(size), stat["context"].median)
        report_goal_4(report, sizes, ours, pi)
        if pi is not None:
            peers.report_pi(report, ours, pi, CONTENT)
    if section("hot"):
        hot_paths.run_hot_paths(report, CONTENT, RECORD, pi, args.before)
    if section("fairness"):
        run_fairness(report, sizes)
    if section("cold"):
        run_cold_load(report, sizes, peers.agents_cold_reader if peers_on and peers.has_openai_agents() else None)
    if section("huge"):
        huge = run_huge(report, sizes)
        if peers_on:
            peers.run_huge_peers(report, sizes.huge, CONTENT, huge)
    if section("curves"):
        run_curves(report, sizes)
    if peers_on and section("peers"):
        peers.run_peers(report, CONTENT, sizes.n)
    elapsed = time.perf_counter() - t0
    command = "python3 benchmarks/bench.py" + (" --quick" if args.quick else "")
    out = args.out or (None if args.quick or args.only else str(HERE / "RESULTS.md"))
    if out and not args.quick:
        plot(report, Path(out).parent)
    text = render(report, command, started, elapsed, (load_at_start, os.getloadavg()[0]), args.before)
    print()
    print(text)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"written to {out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
