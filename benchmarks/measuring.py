"""How the benchmarks measure, and the report they fill (used by bench.py and peers.py).

Every timing follows the same rules, so that no row is measured more kindly than another:

- warm-up: each operation runs untimed first (a tenth of its samples, at least two);
- the garbage collector stays enabled while timing, as in production (one ``gc.collect()``
  before the timed loop so that the previous measurement's garbage is not billed here);
- every median states its number of samples ``n``; p99 is shown only from 100 samples on
  (below that the table shows the maximum);
- a floor and the operation it bounds are measured *paired*: samples alternate between
  the two, so both see the same machine (a shared, noisy one) at the same time.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ============================================================================
# Samples
# ============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """Per-operation samples in microseconds."""

    samples: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def tail(self) -> tuple[str, float]:
        """``("p99", value)`` from 100 samples on, else ``("max", value)``."""
        ordered = sorted(self.samples)
        if len(ordered) >= 100:
            return "p99", ordered[int(len(ordered) * 0.99) - 1]
        return "max", ordered[-1]


def warmups(n: int) -> int:
    return max(2, n // 10)


def timed(op: Callable[[], object], n: int, *, setup: Callable[[], object] | None = None,
          warmup: int | None = None) -> Stat:
    """Run ``op`` ``n`` times after a warm-up (``setup`` before each call, untimed); µs per call."""
    for _ in range(warmups(n) if warmup is None else warmup):
        if setup is not None:
            setup()
        op()
    gc.collect()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        if setup is not None:
            setup()
        t0 = clock()
        op()
        samples.append((clock() - t0) / 1000)
    return Stat(samples=tuple(samples))


def paired(first: Callable[[], object], second: Callable[[], object], n: int, *,
           warmup: int | None = None) -> tuple[Stat, Stat]:
    """Time two operations with their samples interleaved (a floor and what it bounds).

    The order alternates (first-second, second-first, ...) so neither always runs on the
    other's warm caches.
    """
    a, b = interleaved([first, second], n, warmup=warmup)
    return a, b


def interleaved(ops: Sequence[Callable[[], object]], n: int, *, warmup: int | None = None) -> list[Stat]:
    """Time several operations with their samples interleaved, so that a ratio between any
    two of them is not the machine's speed changing between them. Each round runs every
    op once; the order rotates and alternates direction, so no op always follows another."""
    for _ in range(warmups(n) if warmup is None else warmup):
        for op in ops:
            op()
    gc.collect()
    samples: list[list[float]] = [[] for _ in ops]
    clock = time.perf_counter_ns
    k = len(ops)
    for i in range(n):
        order = [(i // 2 + j) % k for j in range(k)]
        if i % 2:
            order.reverse()
        for j in order:
            t0 = clock()
            ops[j]()
            samples[j].append((clock() - t0) / 1000)
    return [Stat(samples=tuple(s)) for s in samples]


def threaded_rate(work: Callable[[int], None], threads: int, ops_per_thread: int) -> float:
    """Operations per second of ``threads`` threads running ``work(i)`` (each
    ``ops_per_thread`` operations) started together."""
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


def gc_cost(ops: Sequence[Callable[[], object]], n: int) -> list[float]:
    """Mean microseconds per call that the cyclic garbage collector ran inside each op
    (``gc.callbacks``), the ops interleaved as in :func:`interleaved`. A separate pass
    from the timed one: what a row's time is made of, not the time."""
    spent = [0.0] * len(ops)
    current = [0]
    started = [0.0]

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[current[0]] += time.perf_counter() - started[0]

    gc.collect()
    gc.callbacks.append(note)
    try:
        for i in range(n):
            for j in (range(len(ops)) if i % 2 == 0 else reversed(range(len(ops)))):
                current[0] = j
                ops[j]()
    finally:
        gc.callbacks.remove(note)
    return [s / n * 1e6 for s in spent]


_STATM: tuple[int, int] | None = None  # (pid, descriptor of its /proc/self/statm)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``), read through a
    descriptor opened once per process. Opening a file per sample allocates buffers
    among the memory being measured: with twenty samples taken while a cache grew,
    the C heap kept 15 MB of the freed cache from the OS after close() (54% of the
    growth released instead of 90%)."""
    global _STATM
    if _STATM is None or _STATM[0] != os.getpid():  # (a forked child reads its own)
        _STATM = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    return int(os.pread(_STATM[1], 128, 0).split()[1]) * _PAGE


def tree_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (a directory or one file): what a store holds on disk."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A temporary directory on the project's disk (not tmpfs): ``SESSION_STORE_BENCH_DIR`` or .bench-tmp/."""
    base = os.environ.get("SESSION_STORE_BENCH_DIR", str(ROOT / ".bench-tmp"))
    os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def in_child(target: Callable[..., Any], *args: Any, timeout: float = 3600) -> Any:
    """``target(*args)`` in a fresh spawned process (its RSS is its own); returns what it returns."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply_async(target, args).get(timeout)


def git_state() -> str:
    """``<commit> (<date>)``, plus ``+ uncommitted changes`` when the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    date = git("log", "-1", "--format=%cd", "--date=format:%Y-%m-%d")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "session_store.py", "backends")
    return f"{commit} ({date})" + (", with uncommitted changes to the measured code" if dirty else "")


# ============================================================================
# The report
# ============================================================================


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def us(value: float) -> str:
    """A duration given in µs, in the unit that reads best."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:,.2f} s"
    if value >= 1000:
        return f"{value / 1000:,.2f} ms"
    return f"{value:,.1f} µs" if value >= 10 else f"{value:,.2f} µs"


def med(stat: Stat) -> str:
    return f"{us(stat.median)} (n={stat.n})"


@dataclass(slots=True, kw_only=True)
class Goal:
    """One goal of issue 17: what was measured against what, and the verdict of this run."""

    goal: str  # "1", "3", ...
    metric: str
    measured: str
    compared: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass(slots=True, kw_only=True)
class Row:
    """A per-operation row of the main table."""

    metric: str
    goal: str
    stat: Stat | None = None
    value: str = ""  # for rows that are not one timed operation (throughput)
    floor: str = ""
    ratio: str = ""
    verdict: str = ""
    op: Callable[[], object] | None = None  # profiled when its goal is missed


@dataclass(slots=True, kw_only=True)
class PeerRow:
    """One operation, like with like: a peer and our store at the same durability."""

    operation: str
    durability: str  # "durable", "not durable", "in memory"
    peer: str
    peer_value: str
    ours: str
    ours_value: str
    ratio: str  # peer / ours


@dataclass(slots=True, kw_only=True)
class Curve:
    """A scale curve: several series over the same x axis, plotted into ``figure``."""

    name: str
    x_label: str
    unit: str
    figure: str  # file name under benchmarks/
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    log_y: bool = True


@dataclass(slots=True, kw_only=True)
class Report:
    quick: bool
    goals: list[Goal] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    peers: list[PeerRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)
    backends: list[tuple[str, dict[str, Stat]]] = field(default_factory=list)
    speed: list[Any] = field(default_factory=list)  # hot_paths.SpeedRow: the hot paths against the commit before
    then: list[Any] = field(default_factory=list)  # hot_paths.ThenRow: against issue 34's "two weeks ago"

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if row.op is not None and "missed" in row.verdict and row.stat is not None and not self.quick:
            calls = max(20, min(3000, int(2_000_000 / max(row.stat.median, 1.0))))  # about 2 s of work
            self.profiles.append((row.metric, profile(row.op, calls)))
        s = med(row.stat) if row.stat else row.value
        print(f"  {row.metric}: {s} {row.verdict}", flush=True)

    def goal(self, goal: Goal) -> None:
        self.goals.append(goal)
        print(f"  goal {goal.goal}: {goal.metric}: {goal.measured}; {goal.compared} {goal.ratio} "
              f"{goal.verdict}", flush=True)

    def peer(self, row: PeerRow) -> None:
        self.peers.append(row)
        print(f"  {row.operation} [{row.durability}]: {row.peer} {row.peer_value} vs {row.ours} "
              f"{row.ours_value} = {row.ratio}", flush=True)

    def point(self, curve: Curve, series: str, x: int, y: float) -> None:
        """Add ``(x, y)`` to ``series`` of the curve (registered on first use)."""
        self.curves.setdefault(curve.name, curve).series.setdefault(series, []).append((x, y))
        print(f"  {curve.name} [{series}] {x:,}: {y:,.2f} {curve.unit}", flush=True)


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
    ranked = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
    lines = ["| function | calls per op | own µs per op | share |", "|---|---|---|---|"]
    for (file, line, name), (_cc, calls, own, _cum, _callers) in ranked:
        where = f"{os.path.basename(file)}:{line} {name}" if line else name
        lines.append(f"| `{where}` | {calls / n:.1f} | {own / n * 1e6:.2f} | {own / total:.0%} |")
    return "\n".join(lines)


@contextlib.contextmanager
def postgres_dsn(notes: list[str]) -> Iterator[str | None]:
    """``SESSION_STORE_POSTGRES_DSN``, or a throwaway server started like the tests do;
    ``None`` (and why, in ``notes``) when neither can be had."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        notes.append("PostgreSQL not measured: psycopg is not installed (pip install -e '.[postgres]').")
        yield None
        return
    dsn = os.environ.get("SESSION_STORE_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import postgres_server

    if postgres_server.find_binaries() is None:
        notes.append("PostgreSQL not measured: no server (set SESSION_STORE_POSTGRES_DSN).")
        yield None
        return
    server = postgres_server.start()
    try:
        yield server.dsn
    finally:
        server.stop()
