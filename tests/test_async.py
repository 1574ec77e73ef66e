"""AsyncSessionStore: the store's API as coroutines, lease waits that occupy no thread."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FakeClock

import session_store as ss
from session_store import AsyncSessionStore, SessionStore, Storage


def test_every_public_method_of_the_store_is_there_with_the_same_arguments() -> None:
    public = [name for name, _ in inspect.getmembers(SessionStore, inspect.isfunction) if not name.startswith("_")]
    for name in public:
        sync, wrapped = getattr(SessionStore, name), getattr(AsyncSessionStore, name)
        assert name == "subscribe" or name == "lock" or inspect.iscoroutinefunction(wrapped), name
        if name not in ("lock", "with_lock", "build_context"):
            assert list(inspect.signature(sync).parameters) == list(inspect.signature(wrapped).parameters), name
    assert hasattr(AsyncSessionStore, "__aenter__") and hasattr(AsyncSessionStore, "__aexit__")


def test_the_same_calls_give_the_same_results_and_errors(make_storage: Callable[[], Storage],
                                                         clock: FakeClock) -> None:
    async def main() -> None:
        async with AsyncSessionStore(make_storage(), clock=clock) as store:
            sid = await store.resolve("user:alice")
            q = await store.append(sid, role="user", content="Hello")
            a = await store.append(sid, role="assistant", content="Hi")
            assert await store.get_linear_history(sid) == [q, a]
            alt = await store.append(sid, role="assistant", content="Hey", parent_id=q.id)
            await store.create_branch(sid, "alt", alt.id)
            assert await store.switch_to_branch(sid, "alt") == alt.id
            assert (await store.move_head(sid, q.id)).head_id == q.id
            assert await store.build_context(sid) == [{"role": "user", "content": "Hello"}]
            fork = await store.fork_session(sid, a.id)
            assert [m.id for m in await store.get_messages(fork)] == [q.id, a.id]
            with pytest.raises(ss.SessionNotFound):
                await store.append("nope", role="user", content="x")
            with pytest.raises(ss.InvalidMessage):
                await store.append(sid, role="user", content={1, 2})
            meta = await store.get_metadata(fork)
            assert meta is not None and meta.forked_from == (sid, a.id)
            assert (await store.check()).ok
    asyncio.run(main())


def test_a_store_can_be_wrapped_or_built_and_is_refused_closed(tmp_path: Any) -> None:
    async def main() -> None:
        sync = SessionStore(storage_dir=tmp_path)
        wrapped = AsyncSessionStore(sync)
        assert wrapped.sync is sync
        await wrapped.resolve("k")
        await wrapped.close()
        await wrapped.close()  # idempotent
        with pytest.raises(ss.StoreClosed):
            await wrapped.resolve("k")
        with pytest.raises(ss.InvalidInput):
            AsyncSessionStore(sync, durable=False)
        with pytest.raises(ss.InvalidInput):
            AsyncSessionStore(max_workers=0)
    asyncio.run(main())


def test_two_hundred_tasks_contending_for_ten_leases_wait_on_the_loop_never_two_holders(tmp_path: Any) -> None:
    """The scenario of issue 19: every waiter gets the lease or LockTimeout within its
    timeout (and a margin), never two holders, and the loop keeps running meanwhile."""
    async def main() -> tuple[list[str], int, float]:
        async with AsyncSessionStore(storage_dir=tmp_path, durable=False, max_workers=4) as store:
            sids = [await store.resolve(f"s{i}") for i in range(10)]
            holders: dict[str, str] = {}
            outcomes: list[str] = []
            overlaps = 0

            async def worker(n: int) -> None:
                nonlocal overlaps
                sid, timeout = sids[n % 10], 1.0 + (n % 4)
                start = time.monotonic()
                try:
                    async with store.lock(sid, f"w{n}", timeout=timeout):
                        if sid in holders:
                            overlaps += 1
                        holders[sid] = f"w{n}"
                        await store.append(sid, role="user", content=f"w{n}")
                        await asyncio.sleep(0.002)
                        del holders[sid]
                    outcomes.append("held")
                except ss.LockTimeout:
                    assert time.monotonic() - start >= timeout  # it waited its whole timeout, no less
                    outcomes.append("timeout")
                assert time.monotonic() - start < timeout + 10  # within its timeout (a generous margin)

            ticks, gaps = 0, [0.0]

            async def ticker() -> None:
                nonlocal ticks
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last, ticks = now, ticks + 1

            tick = asyncio.create_task(ticker())
            await asyncio.gather(*(worker(n) for n in range(200)))
            tick.cancel()
            assert overlaps == 0
            for sid in sids:
                assert await store.get_lock(sid) is None
            appended = sum([len(await store.get_messages(sid)) for sid in sids])
            assert appended == outcomes.count("held")
            return outcomes, ticks, max(gaps)

    outcomes, ticks, worst_gap = asyncio.run(main())
    assert len(outcomes) == 200 and outcomes.count("held") > 0
    assert ticks > 5  # the loop kept running other tasks while 200 waited (worst gap reported below)
    print(f"held {outcomes.count('held')}, timed out {outcomes.count('timeout')}, loop ticks {ticks}, "
          f"worst loop gap {worst_gap * 1000:.0f} ms")


def test_waiting_tasks_never_starve_the_thread_pool(tmp_path: Any) -> None:
    """30 tasks waiting for one lease (timeout 3 s each, one at a time holding it
    briefly): with waits on threads, 24 of 30 timed out; here every one gets it."""
    async def main() -> list[bool]:
        async with AsyncSessionStore(storage_dir=tmp_path, max_workers=2) as store:
            sid = await store.resolve("k")

            async def worker(n: int) -> bool:
                result = await store.acquire_lock(sid, f"w{n}", timeout=30)
                if result.acquired:
                    await store.release_lock(sid, f"w{n}")
                return result.acquired
            return await asyncio.gather(*(worker(n) for n in range(30)))
    assert asyncio.run(main()) == [True] * 30


def test_a_cancelled_waiter_leaves_no_lease_and_no_place_in_the_queue(tmp_path: Any) -> None:
    async def main() -> None:
        async with AsyncSessionStore(storage_dir=tmp_path) as store:
            sid = await store.resolve("k")
            assert (await store.acquire_lock(sid, "holder")).acquired
            waiters = [asyncio.create_task(store.acquire_lock(sid, f"w{n}", timeout=None)) for n in range(20)]
            await asyncio.sleep(0.2)
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            await store.release_lock(sid, "holder")
            await asyncio.sleep(0.2)  # the cancelled waiters' last attempts, if any, have given back
            assert await store.get_lock(sid) is None
            raw = await asyncio.to_thread(store.storage.peek_lease, sid)
            assert raw is not None and [w for w in raw.get("queue", [])] == []
            assert (await store.acquire_lock(sid, "next")).acquired  # timeout 0: nobody queued ahead
    asyncio.run(main())


def test_event_loops_in_several_threads_share_one_store(tmp_path: Any) -> None:
    store = AsyncSessionStore(storage_dir=tmp_path)
    errors: list[BaseException] = []

    def thread(n: int) -> None:
        async def main() -> None:
            sid = await store.resolve("shared")
            for i in range(20):
                async with store.lock(sid, f"t{n}", timeout=30):
                    await store.append(sid, role="user", content=f"{n}:{i}")
        try:
            asyncio.run(main())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    sync = store.sync
    sid = sync.resolve("shared")
    assert len(sync.get_linear_history(sid)) == 80  # one chain: the holders never interleaved
    asyncio.run(store.close())


def test_writes_of_a_task_inside_its_lock_block_are_fenced_and_other_tasks_are_not_the_holder(
        make_storage: Callable[[], Storage], clock: FakeClock) -> None:
    async def main() -> None:
        async with AsyncSessionStore(make_storage(), clock=clock, lock_timeout_ms=1000, require_lock=True) as store:
            sid = await store.resolve("k")
            inside, tried = asyncio.Event(), asyncio.Event()

            async def other_task() -> None:  # not in A's block (tasks made inside it would share its holds)
                await inside.wait()
                with pytest.raises(ss.SessionLocked):
                    await store.append(sid, role="user", content="intruder")
                tried.set()
            other = asyncio.create_task(other_task())
            async with store.lock(sid, "A"):
                await store.append(sid, role="user", content="A-1")
                inside.set()
                await tried.wait()
                await other
                clock.advance(2)  # A's lease expires...
                assert (await store.acquire_lock(sid, "B")).acquired  # ...and B takes it
                await store.release_lock(sid, "B")
                with pytest.raises(ss.LeaseLost):
                    await store.append(sid, role="user", content="A-2")
            assert [m.content for m in await store.get_messages(sid)] == ["A-1"]
    asyncio.run(main())


def test_with_lock_awaits_an_async_function(tmp_path: Any) -> None:
    async def main() -> None:
        async with AsyncSessionStore(storage_dir=tmp_path) as store:
            sid = await store.resolve("k")

            async def turn() -> str:
                return (await store.append(sid, role="user", content="in turn")).content  # type: ignore[no-any-return]
            assert await store.with_lock(sid, "me", turn) == "in turn"
            assert await store.with_lock(sid, "me", lambda: 42) == 42
            assert await store.get_lock(sid) is None
    asyncio.run(main())


def test_an_async_reset_passes_its_fencing_token_on(make_storage: Callable[[], Storage], clock: FakeClock) -> None:
    async def main() -> None:
        async with AsyncSessionStore(SessionStore(make_storage(), clock=clock)) as store:
            sid = await store.resolve("k")
            lease = await store.acquire_lock(sid, "A")
            await store.append(sid, role="user", content="one", fencing_token=lease.token)
            with pytest.raises(ss.LeaseLost):
                await store.reset(sid, owner_id="A", fencing_token=(lease.token or 0) + 1)
            assert (await store.reset(sid, owner_id="A", fencing_token=lease.token)).reset

    asyncio.run(main())
