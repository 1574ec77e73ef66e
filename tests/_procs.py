"""Worker functions run in child processes by the multi-process tests (spawn-safe)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from session_store import SessionStore
from session_store_sqlite import SqliteStorage


def store_at(place: str, **options: Any) -> SessionStore:
    """A store on ``place``: ``postgres:SCHEMA`` (on ``SESSION_STORE_POSTGRES_DSN``), a
    SQLite database when it ends in ``.db``, else a directory."""
    if place.startswith("postgres:"):
        from session_store_postgres import PostgresStorage

        return SessionStore(PostgresStorage(os.environ["SESSION_STORE_POSTGRES_DSN"], schema=place[9:]), **options)
    if place.endswith(".db"):
        return SessionStore(SqliteStorage(place), **options)
    return SessionStore(storage_dir=place, **options)


def append_many(directory: str, key: str, worker: str, count: int, use_lock: bool, durable: bool) -> None:
    """Append ``count`` messages to ``key``'s session, each under the lease when asked.

    Bounded by work, not by time: a waiter waits as long as the others take (on a
    loaded machine, seven turns ahead of it can take over a minute), and a lease
    outlives any pause of its holder (a dead holder's lease is freed by its proof of
    life, not by expiry)."""
    with store_at(directory, durable=durable, lock_timeout_ms=3_600_000) as store:
        sid = store.resolve(key)
        for i in range(count):
            if use_lock:
                with store.lock(sid, worker, timeout=None):
                    store.append(sid, role="user", content=f"{worker}:{i}")
            else:
                store.append(sid, role="user", content=f"{worker}:{i}")


def resolve_key(directory: str, key: str, out: Any) -> None:
    with store_at(directory) as store:
        out.put(store.resolve(key))


def hold_lock_forever(directory: str, sid: str, ready: Any) -> None:
    """Take the lease, say so, then hang until killed."""
    store = store_at(directory, lock_timeout_ms=60_000)
    result = store.acquire_lock(sid, "doomed")
    ready.put(result.token)
    while True:
        time.sleep(1)


def critical_section_counter(directory: str, sid: str, worker: str, rounds: int, errors: Any) -> None:
    """Each round: lock, check the shared marker file is ours alone, unlock."""
    marker = os.path.join(os.path.dirname(directory) if directory.endswith(".db") else directory, "inside")
    with store_at(directory, lock_timeout_ms=3_600_000) as store:  # bounded by work, not time (see above)
        for _ in range(rounds):
            with store.lock(sid, worker, timeout=None):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    errors.put(f"{worker}: two holders at once")
                    continue
                os.close(fd)
                time.sleep(0.001)
                os.unlink(marker)


if __name__ == "__main__":  # pragma: no cover - manual use
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(0)
