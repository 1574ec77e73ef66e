"""Leases: the model, threads, processes, crashes, guarded writes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import _procs
import hypothesis.strategies as st
import pytest
from conftest import FakeClock, StoreFactory
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import session_store as ss
from session_store import InMemoryFileSystem, SessionStore

SPAWN = multiprocessing.get_context("spawn")
LEASE_MS = 1_000

# -- the lease model, checked by hypothesis -----------------------------------------------


@dataclass
class Lease:
    holder: str | None = None
    count: int = 0
    expires: int = 0
    token: int = 0


class LeaseMachine(RuleBasedStateMachine):
    """Two store handles on one storage, an injected clock, random owners."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.fs = InMemoryFileSystem()
        self.model = Lease()
        self.tokens: list[int] = []

    @initialize()
    def start(self) -> None:
        self.stores = [SessionStore(self.fs, storage_dir="/s", clock=self.clock, lock_timeout_ms=LEASE_MS)
                       for _ in range(2)]
        self.sid = self.stores[0].resolve("k")

    def teardown(self) -> None:
        for s in getattr(self, "stores", []):
            s.close()

    def now(self) -> int:
        return round(self.clock() * 1000)

    def live(self) -> bool:
        return self.model.holder is not None and self.model.expires > self.now()

    @rule(owner=st.sampled_from(["a", "b", "c"]), handle=st.integers(0, 1))
    def acquire(self, owner: str, handle: int) -> None:
        result = self.stores[handle].acquire_lock(self.sid, owner)
        m = self.model
        if self.live() and m.holder != owner:
            assert not result.acquired and result.holder_id == m.holder and result.token is None
            return
        assert result.acquired and result.holder_id == owner
        if self.live():
            m.count += 1
            assert result.token == m.token  # re-entry keeps the token
        else:
            m.holder, m.count, m.token = owner, 1, m.token + 1
            assert result.token == m.token  # a new holder: the next token, strictly greater
            assert all(t < m.token for t in self.tokens)
            self.tokens.append(m.token)
        m.expires = self.now() + LEASE_MS
        assert result.expires_at == m.expires

    @rule(owner=st.sampled_from(["a", "b", "c"]), handle=st.integers(0, 1))
    def release(self, owner: str, handle: int) -> None:
        released = self.stores[handle].release_lock(self.sid, owner)
        m = self.model
        if not (self.live() and m.holder == owner):
            assert released is False
            return
        assert released is True
        m.count -= 1
        if m.count == 0:
            m.holder = None

    @rule(owner=st.sampled_from(["a", "b", "c"]), handle=st.integers(0, 1))
    def renew(self, owner: str, handle: int) -> None:
        result = self.stores[handle].renew_lock(self.sid, owner)
        if self.live() and self.model.holder == owner:
            assert result.acquired and result.token == self.model.token
            self.model.expires = self.now() + LEASE_MS
        else:
            assert not result.acquired

    @rule(ms=st.sampled_from([1, 300, 999, 1000, 1001, 5000]))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)

    @rule(owner=st.sampled_from(["a", "b"]), handle=st.integers(0, 1))
    def guarded_append(self, owner: str, handle: int) -> None:
        store = self.stores[handle]
        before = len(store.get_messages(self.sid))
        if self.live() and self.model.holder != owner:
            with pytest.raises(ss.SessionLocked):
                store.append(self.sid, role="user", content="x", owner_id=owner)
            assert len(store.get_messages(self.sid)) == before
        else:
            store.append(self.sid, role="user", content="x", owner_id=owner)

    @invariant()
    def matches_model(self) -> None:
        for store in self.stores:
            info = store.get_lock(self.sid)
            if self.live():
                assert info == ss.LockInfo(holder_id=self.model.holder, expires_at=self.model.expires,  # type: ignore[arg-type]
                                           token=self.model.token, count=self.model.count)
                assert store.is_locked(self.sid)
            else:
                assert info is None and not store.is_locked(self.sid)


TestLeaseModel = LeaseMachine.TestCase
TestLeaseModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


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
                with store.lock(sid, f"w{n}", timeout=10):
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


@pytest.mark.parametrize("use_lock", [False, True], ids=["unlocked", "locked"])
def test_four_processes_append_to_one_session(tmp_path: Path, use_lock: bool) -> None:
    n = 1000
    run_all([SPAWN.Process(target=_procs.append_many, args=(str(tmp_path), "shared", f"p{i}", n, use_lock, True))
             for i in range(4)])
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("shared")
        contents = [m.content for m in store.get_messages(sid)]
        history = store.get_linear_history(sid)
        assert len(store.get_all_session_ids()) == 1
    assert sorted(contents) == sorted(f"p{i}:{j}" for i in range(4) for j in range(n))
    assert len(history) == 4 * n  # every append landed on the head: one chain, no forks
    for path in (tmp_path / sid).glob("*.jsonl"):
        assert path.read_bytes().endswith(b"\n")


def test_processes_resolving_one_new_key_get_one_session(tmp_path: Path) -> None:
    out = SPAWN.Queue()
    run_all([SPAWN.Process(target=_procs.resolve_key, args=(str(tmp_path), "new:key", out)) for _ in range(6)])
    ids = {out.get(timeout=10) for _ in range(6)}
    assert len(ids) == 1


def test_processes_exclude_each_other(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
    errors = SPAWN.Queue()
    run_all([SPAWN.Process(target=_procs.critical_section_counter, args=(str(tmp_path), sid, f"p{i}", 50, errors))
             for i in range(4)])
    assert errors.empty()


def test_killed_holder_does_not_block_others(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
    ready = SPAWN.Queue()
    holder = SPAWN.Process(target=_procs.hold_lock_forever, args=(str(tmp_path), sid, ready))
    holder.start()
    dead_token = ready.get(timeout=30)
    with SessionStore(storage_dir=tmp_path, lock_timeout_ms=60_000) as store:
        assert not store.acquire_lock(sid, "me").acquired  # alive: it holds
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(10)
        result = store.acquire_lock(sid, "me", timeout=5)  # free at once, not after 60 s
        assert result.acquired and result.token > dead_token
