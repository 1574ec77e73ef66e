"""Finding and forgetting at scale: listing one user's sessions, search, and what the search index costs.

    python3 benchmarks/catalog.py            # full sizes (10-20 min), writes benchmarks/CATALOG.md
    python3 benchmarks/catalog.py --quick    # tiny sizes: proves the harness works (CI); writes nothing

Rows, on every backend (files, SQLite, PostgreSQL when a server can be started):

- listing the 50 sessions of one prefix (``list_sessions(key_prefix=...)``) in a store
  of 100,000 sessions, against the same in a store of 60 (the 50 and 10 others);
- search (``search(query, limit=20)``) in a store of 10,000 sessions x 50 messages, for a
  rare word, a common word and two words;
- what the search index costs an append: this commit against the commit before the
  index existed (loaded from git, samples interleaved), on SQLite;
- for the files, the alternative that was not built: an index beside the logs (a
  per-session file of each message's words, appended with the message). Its search
  and its cost per append are measured on a prototype here, next to the scan.

Medians of interleaved samples, n stated; nothing asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "integrations"), str(HERE)]

import hot_paths  # noqa: E402
from measuring import Stat, git_state, interleaved, postgres_dsn, scratch_dir, timed, us  # noqa: E402

from session_store import SessionStore, Storage, record_words, search_words  # noqa: E402
from session_store_sqlite import SqliteStorage  # noqa: E402

BEFORE = "a39eaa8"  # the last commit before the search index: what an append cost without it
VOCABULARY = [f"w{i:04d}" for i in range(5000)]
RARE, COMMON = "w4999", "w0000"
NOTES: list[str] = []  # what could not be measured, and why (printed with the report)


def sentence(rng: random.Random, words: int = 14) -> str:
    """Words drawn with Zipf-like weights: w0000 is in most messages, w4999 in a few."""
    picks = [VOCABULARY[min(int(rng.paretovariate(1.1)) - 1, len(VOCABULARY) - 1)] for _ in range(words)]
    return " ".join(picks).capitalize() + "."


Place = Callable[[str], Callable[[], "Storage | str"]]  # a scratch directory -> a maker of storages on one place


@contextlib.contextmanager
def backends() -> Iterator[list[tuple[str, Place]]]:
    """(name, place): ``place(directory)`` gives a maker of fresh Storage objects on
    one place (the files: its directory)."""
    found: list[tuple[str, Place]] = [
        ("files", lambda d: lambda: os.path.join(d, "files")),
        ("SQLite", lambda d: lambda: SqliteStorage(os.path.join(d, "store.db"))),
    ]
    with postgres_dsn(NOTES) as dsn:
        if dsn is not None:
            from session_store_postgres import PostgresStorage
            counter = iter(range(1_000_000))

            def pg(d: str) -> Callable[[], Storage | str]:
                schema = f"bench_{os.getpid()}_{next(counter)}"
                return lambda: PostgresStorage(dsn, schema=schema)
            found.append(("PostgreSQL", pg))
        yield found


def open_store(made: Storage | str) -> SessionStore:
    if isinstance(made, str):
        return SessionStore(storage_dir=made, durable=False)
    return SessionStore(made, durable=False)


# -- listing ------------------------------------------------------------------------------


def listing(name: str, place: Place, total: int, samples: int) -> tuple[Stat, Stat]:
    """List the 50 sessions of one prefix: in a store of 60 sessions and of ``total``,
    both made first, then timed with their samples interleaved."""
    with scratch_dir() as small_dir, scratch_dir() as big_dir:
        stores = []
        for size, d in ((60, small_dir), (total, big_dir)):
            make = place(d)
            store = open_store(make())
            t0 = time.perf_counter()
            for i in range(size - 50):
                store.resolve(f"user:{i:07d}:chat")
            for i in range(50):
                sid = store.resolve(f"user:target:{i:03d}")
                store.append(sid, role="user", content=f"Question {i} about the weather")
            print(f"  {name}: {size:,} sessions made in {time.perf_counter() - t0:.0f} s", flush=True)
            store.close()
            stores.append(open_store(make()))  # a fresh store: nothing cached

        def op(store: SessionStore) -> None:
            found = store.list_sessions(key_prefix="user:target:", limit=50)
            assert len(found) == 50
        small, big = interleaved([functools.partial(op, stores[0]), functools.partial(op, stores[1])], samples)
        for store in stores:
            store.close()
    return small, big


# -- search --------------------------------------------------------------------------------


def fill(store: SessionStore, sessions: int, per: int, rng: random.Random) -> None:
    t0 = time.perf_counter()
    for i in range(sessions):
        sid = store.resolve(f"user:{i % 500:03d}:chat:{i}")
        store.append_many(sid, [{"role": "user" if j % 2 == 0 else "assistant", "content": sentence(rng)}
                                for j in range(per)])
        if i and i % 2000 == 0:
            print(f"    {i:,} sessions ({time.perf_counter() - t0:.0f} s)", flush=True)


QUERIES = {"a rare word": RARE, "a common word": COMMON, "two words": "w0001 w0002",
           "one user's sessions (prefix), a common word": COMMON}


def search_rows(name: str, place: Place, sessions: int, per: int,
                samples: int) -> tuple[dict[str, tuple[Stat, int]], dict[str, Stat] | None]:
    rng = random.Random(7)
    out: dict[str, tuple[Stat, int]] = {}
    sidecar: dict[str, Stat] | None = None
    with scratch_dir() as d:
        made = place(d)()
        store = open_store(made)
        fill(store, sessions, per, rng)
        for label, query in QUERIES.items():
            prefix = "user:007:" if "prefix" in label else None
            hits = len(store.search(query, key_prefix=prefix, limit=20))
            out[label] = (timed(functools.partial(store.search, query, key_prefix=prefix, limit=20), samples,
                                warmup=1), hits)
        if name == "files":
            assert isinstance(made, str)
            sidecar = sidecar_alternative(store, made, samples)
        store.close()
    return out, sidecar


def sidecar_alternative(store: SessionStore, directory: str, samples: int) -> dict[str, Stat]:
    """The index beside the logs that was not built: per session, a file of
    ``<message id> <words>`` lines. Built here from the store (as appends would have
    written it), then searched like the scan is (every sidecar of the prefix read)."""
    paths = []
    for sid in store.get_keys().values():
        path = os.path.join(directory, sid, "words.txt")
        with open(path, "w", encoding="utf-8") as f:
            for m in store.get_messages(sid):
                f.write(f"{m.id} {record_words({'content': m.content})}\n")
        paths.append(path)

    def search(query: str) -> int:
        words = search_words(query)
        found = 0
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if all(w in line for w in words):
                        have = set(line.split()[1:])
                        found += all(w in have for w in words)
        return found
    rows = {label: timed(functools.partial(search, query), samples, warmup=1) for label, query in QUERIES.items()
            if "prefix" not in label}
    return rows


# -- the index's cost per append --------------------------------------------------------------


def append_cost(samples: int, *, durable: bool) -> tuple[Stat, Stat | None, Stat, Stat]:
    """An append to SQLite, this commit and the commit before the index; and the files'
    append with and without writing a sidecar line (the rejected alternative)."""
    before = hot_paths.load_before(BEFORE)
    rng = random.Random(3)
    with scratch_dir() as d:
        ours = SessionStore(SqliteStorage(os.path.join(d, "ours.db")), durable=durable)
        sid = ours.resolve("k")
        ops: list[Callable[[], object]] = [lambda: ours.append(sid, role="user", content=sentence(rng))]
        old = None
        if before is not None:
            old = before.core.SessionStore(before.sqlite.SqliteStorage(os.path.join(d, "before.db")), durable=durable)
            old_sid = old.resolve("k")
            ops.append(lambda: old.append(old_sid, role="user", content=sentence(rng)))
        files = SessionStore(storage_dir=os.path.join(d, "files"), durable=durable)
        fsid = files.resolve("k")
        side = os.open(os.path.join(d, "files", fsid, "words.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def with_sidecar() -> None:
            m = files.append(fsid, role="user", content=sentence(rng))
            os.write(side, f"{m.id} {record_words({'content': m.content})}\n".encode())
            if durable:
                os.fdatasync(side)
        ops += [lambda: files.append(fsid, role="user", content=sentence(rng)), with_sidecar]
        stats = interleaved(ops, samples)
        os.close(side)
        for s in (ours, files, *([old] if old is not None else [])):
            s.close()
    if before is None:
        return stats[0], None, stats[1], stats[2]
    return stats[0], stats[1], stats[2], stats[3]


# -- the report -----------------------------------------------------------------------------------


def ms(stat: Stat) -> str:
    return f"{stat.median / 1000:,.2f} ms (n={stat.n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; writes nothing (CI)")
    parser.add_argument("--out", default=str(HERE / "CATALOG.md"))
    args = parser.parse_args()
    total, sessions, per = (300, 40, 10) if args.quick else (100_000, 10_000, 50)
    list_n, search_n, append_n = (5, 2, 20) if args.quick else (50, 5, 2000)
    started = time.time()
    lines = ["# Finding and forgetting: listing, search, and the index's cost", "",
             "Command: `python3 benchmarks/catalog.py`  ", f"Commit: {git_state()}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
             f"Machine: {os.cpu_count()} cores; medians of n samples (interleaved where two rows are compared).", ""]
    listing_rows = ["## One user's conversations", "",
                    f"`list_sessions(key_prefix=\"user:target:\", limit=50)`: the 50 sessions of one prefix, "
                    f"in a store of 60 sessions and in one of {total:,} (samples interleaved).", "",
                    "| backend | 60 sessions | " + f"{total:,} sessions | ratio |", "|---|---|---|---|"]
    search_lines = ["", "## Search", "",
                    f"`search(query, limit=20)` in a store of {sessions:,} sessions × {per} messages "
                    f"(14 words each, Zipf-distributed over 5,000 words). Hits: of at most 20.", "",
                    "| backend | query | median | hits |", "|---|---|---|---|"]
    scan: dict[str, Stat] = {}
    words_files: dict[str, Stat] = {}
    with backends() as found:
        for name, place in found:
            print(f"{name}: listing", flush=True)
            small, big = listing(name, place, total, list_n)
            listing_rows.append(f"| {name} | {ms(small)} | {ms(big)} | {big.median / small.median:.2f}× |")
            print(f"{name}: search", flush=True)
            rows, sidecar = search_rows(name, place, sessions, per, search_n)
            for label, (stat, hits) in rows.items():
                search_lines.append(f"| {name} | {label} | {ms(stat)} | {hits} |")
            if sidecar is not None:
                scan, words_files = {label: stat for label, (stat, _) in rows.items()}, sidecar
    search_lines += ["", "The files keep no index: a search reads every message of the prefix's sessions "
                     "(through the store's cache). The alternative, an index beside the logs (per session, "
                     "a file of each message's words, written with the message), measured on a prototype "
                     "over the same store:", "", "| query | scan of the logs | words files beside them |",
                     "|---|---|---|"]
    search_lines += [f"| {label} | {ms(scan[label])} | {ms(stat)} |" for label, stat in words_files.items()]
    lines += listing_rows + search_lines
    print("append cost", flush=True)
    cost_lines = ["", "## What the index costs an append", "",
                  f"One `append` (a 14-word message), this commit against {BEFORE} (before the search index), "
                  "samples interleaved; and the files' append with the rejected words file beside the log.", "",
                  "| store | this commit | without | ratio |", "|---|---|---|---|"]
    for durable in (False, True):
        ours, before, plain, side = append_cost(append_n if not durable else append_n // 4, durable=durable)
        mode = "durable" if durable else "not durable"
        if before is not None:
            cost_lines.append(f"| SQLite, {mode} | {us(ours.median)} (n={ours.n}) | {us(before.median)} "
                              f"({BEFORE}) | {ours.median / before.median:.2f}× |")
        cost_lines.append(f"| files + words file, {mode} | {us(side.median)} (n={side.n}) | {us(plain.median)} "
                          f"(the files alone) | {side.median / plain.median:.2f}× |")
    lines += cost_lines
    lines += [f"Not measured: {note}" for note in NOTES]
    lines += ["", f"Took {(time.time() - started) / 60:,.0f} min."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
