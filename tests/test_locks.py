"""Leases: the API, threads, processes, crashes, guarded writes.

The lease model itself (random acquire/renew/release/expiry on two handles) is in
the conformance kit's state machine, run by test_conformance.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import _procs
import pytest
from conftest import FakeClock, StoreFactory

import session_store as ss
from session_store import SessionStore

SPAWN = multiprocessing.get_context("spawn")

# -- the API on both file systems -----------------------------------------------------------


def test_timeout_follows_the_queue_convention(store: SessionStore) -> None:
    sid = store.resolve("k")
    assert store.acquire_lock(sid, "a").acquired
    t0 = time.monotonic()
    assert not store.acquire_lock(sid, "b", timeout=0).acquired
    assert not store.acquire_lock(sid, "b", timeout=0.2).acquired
    assert time.monotonic() - t0 >= 0.2
    with pytest.raises(ValueError):
        store.acquire_lock(sid, "b", timeout=-1)


def test_waiting_acquire_gets_the_lock_when_released(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.acquire_lock(sid, "a")
    threading.Timer(0.1, store.release_lock, args=(sid, "a")).start()
    result = store.acquire_lock(sid, "b", timeout=None)
    assert result.acquired and result.holder_id == "b"


def test_expired_lease_can_be_taken_with_a_higher_token(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    first = store.acquire_lock(sid, "crashed-worker")
    clock.advance(store.lock_timeout_ms / 1000)
    assert not store.is_locked(sid)
    second = store.acquire_lock(sid, "b")
    assert second.acquired and second.token > first.token  # type: ignore[operator]
    assert store.release_lock(sid, "crashed-worker") is False


def test_reentrant_acquire_counts_and_keeps_the_token(store: SessionStore) -> None:
    sid = store.resolve("k")
    one = store.acquire_lock(sid, "a")
    two = store.acquire_lock(sid, "a")
    assert one.token == two.token
    assert store.get_lock(sid).count == 2  # type: ignore[union-attr]
    assert store.release_lock(sid, "a") and store.is_locked(sid)
    assert store.release_lock(sid, "a") and not store.is_locked(sid)
    assert store.release_lock(sid, "a") is False


def test_tokens_survive_reopening(open_store: StoreFactory) -> None:
    store = open_store()
    sid = store.resolve("k")
    t1 = store.acquire_lock(sid, "a").token
    store.release_lock(sid, "a")
    store.close()
    again = open_store()
    t2 = again.acquire_lock(sid, "b").token
    assert t2 is not None and t1 is not None and t2 > t1


def test_with_lock_returns_the_result_and_always_releases(store: SessionStore) -> None:
    sid = store.resolve("k")
    assert store.with_lock(sid, "a", lambda: 42) == 42
    assert not store.is_locked(sid)
    with pytest.raises(ZeroDivisionError):
        store.with_lock(sid, "a", lambda: 1 // 0)
    assert not store.is_locked(sid)


def test_keyboard_interrupt_inside_the_block_releases(store: SessionStore) -> None:
    sid = store.resolve("k")

    def interrupted() -> None:
        store.append(sid, role="user", content="partial work is fine")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.with_lock(sid, "a", interrupted)
    assert not store.is_locked(sid)
    store.append(sid, role="user", content="no implied owner left behind", owner_id="b")


def test_lock_timeout_is_a_timeout_error_with_the_holder(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.acquire_lock(sid, "a")
    with pytest.raises(TimeoutError) as info:
        with store.lock(sid, "b", timeout=0.05):
            pass  # pragma: no cover
    err = info.value
    assert isinstance(err, ss.LockTimeout) and err.holder_id == "a" and err.owner_id == "b"


def test_appends_inside_the_block_count_as_the_owner(open_store: StoreFactory) -> None:
    store = open_store(require_lock=True)
    sid = store.resolve("k")
    with store.lock(sid, "a"):
        store.append(sid, role="user", content="implied owner a")  # allowed under require_lock

        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                store.append(sid, role="user", content="no owner")
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and isinstance(errors[0], ss.SessionLocked)
    store.append(sid, role="user", content="free again")
    assert [m.content for m in store.get_messages(sid)] == ["implied owner a", "free again"]


def test_unowned_append_is_advisory_by_default(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.acquire_lock(sid, "a")
    store.append(sid, role="user", content="seed behaviour: allowed")
    with pytest.raises(ss.SessionLocked) as info:
        store.append(sid, role="user", content="refused", owner_id="b")
    assert info.value.holder_id == "a"
    assert len(store.get_messages(sid)) == 1


def test_lock_calls_on_unknown_sessions_and_bad_owners(store: SessionStore) -> None:
    with pytest.raises(ss.SessionNotFound):
        store.acquire_lock("nope", "a")
    sid = store.resolve("k")
    for bad in ("", "a\x00b", 5, "x" * 300):
        with pytest.raises(ss.InvalidInput):
            store.acquire_lock(sid, bad)  # type: ignore[arg-type]
    assert store.get_lock(sid) is None


def test_sixteen_threads_contending_are_never_two(store: SessionStore) -> None:
    sid = store.resolve("k")
    inside = 0
    overlaps = 0
    done = 0
    guard = threading.Lock()

    def worker(n: int) -> None:
        nonlocal inside, overlaps, done
        for _ in range(10):
            try:
                with store.lock(sid, f"w{n}", timeout=None):  # waits as long as the others take
                    with guard:
                        inside += 1
                        overlaps += inside > 1
                    time.sleep(0.0005)
                    with guard:
                        inside -= 1
                        done += 1
            except ss.LockTimeout:  # pragma: no cover - reported by the count below
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == 0 and done == 160


# -- across processes (RealFileSystem) ----------------------------------------------------------


def run_all(procs: list[multiprocessing.process.BaseProcess], timeout: float = 120) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


@pytest.fixture(params=["files", "sqlite"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the processes meet: a directory of JSONL files or a SQLite database."""
    return str(tmp_path / "sessions.db") if request.param == "sqlite" else str(tmp_path)


@pytest.mark.parametrize("use_lock", [False, True], ids=["unlocked", "locked"])
def test_four_processes_append_to_one_session(place: str, use_lock: bool) -> None:
    n = 1000
    run_all([SPAWN.Process(target=_procs.append_many, args=(place, "shared", f"p{i}", n, use_lock, True))
             for i in range(4)])
    with _procs.store_at(place) as store:
        sid = store.resolve("shared")
        contents = [m.content for m in store.get_messages(sid)]
        history = store.get_linear_history(sid)
        assert len(store.get_all_session_ids()) == 1
        assert store.check().ok
    assert sorted(contents) == sorted(f"p{i}:{j}" for i in range(4) for j in range(n))
    assert len(history) == 4 * n  # every append landed on the head: one chain, no forks


def test_processes_resolving_one_new_key_get_one_session(place: str) -> None:
    out = SPAWN.Queue()
    run_all([SPAWN.Process(target=_procs.resolve_key, args=(place, "new:key", out)) for _ in range(6)])
    ids = {out.get(timeout=10) for _ in range(6)}
    assert len(ids) == 1


def test_processes_exclude_each_other(place: str) -> None:
    with _procs.store_at(place) as store:
        sid = store.resolve("k")
    errors = SPAWN.Queue()
    run_all([SPAWN.Process(target=_procs.critical_section_counter, args=(place, sid, f"p{i}", 50, errors))
             for i in range(4)])
    assert errors.empty()


def test_killed_holder_does_not_block_others(place: str) -> None:
    with _procs.store_at(place) as store:
        sid = store.resolve("k")
    ready = SPAWN.Queue()
    holder = SPAWN.Process(target=_procs.hold_lock_forever, args=(place, sid, ready))
    holder.start()
    dead_token = ready.get(timeout=30)
    with _procs.store_at(place, lock_timeout_ms=60_000) as store:
        assert not store.acquire_lock(sid, "me").acquired  # alive: it holds
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(10)
        result = store.acquire_lock(sid, "me", timeout=5)  # free at once, not after 60 s
        assert result.acquired and result.token > dead_token
