"""Finding sessions by key prefix: the names/ index of JsonlStorage (see "Layout of names/").

``find_sessions(prefix)`` must be exactly the key index filtered by the prefix, whatever
the keys, the crashes and the age of the store, and cost what the matches cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import session_store as ss
from session_store import FileSystem, IndexEntry, InMemoryFileSystem, RealFileSystem, SessionStore
from session_store_conformance import FakeClock, FaultyFileSystem, SimulatedCrash


class Watched(FaultyFileSystem):
    """A file system that counts every call (and the names each ``listdir`` returns),
    records the write operations in order, and can crash the creation of a key link."""

    def __init__(self, inner: FileSystem) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.listed: list[tuple[str, int]] = []
        self.writes: list[tuple[str, str, bool]] = []
        self.crash_on_key_link = False

    def reset(self) -> None:
        self.calls.clear()
        self.listed.clear()
        self.writes.clear()

    def listdir(self, path: str) -> list[str]:
        names = super().listdir(path)
        self.calls["listdir"] += 1
        self.listed.append((path, len(names)))
        return names

    def read(self, path: str) -> bytes:
        self.calls["read"] += 1
        return super().read(path)

    def stat(self, path: str) -> tuple[int, Any]:
        self.calls["stat"] += 1
        return super().stat(path)

    def exists(self, path: str) -> bool:
        self.calls["exists"] += 1
        return super().exists(path)

    def is_dir(self, path: str) -> bool:
        self.calls["is_dir"] += 1
        return super().is_dir(path)

    def readlink(self, path: str) -> str | None:
        self.calls["readlink"] += 1
        return super().readlink(path)

    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
        self.calls["locked"] += 1
        return super().locked(path, create=create)

    def makedirs(self, path: str, *, durable: bool = True) -> None:
        self.calls["makedirs"] += 1
        self.writes.append(("makedirs", path, durable))
        super().makedirs(path, durable=durable)

    def symlink(self, target: str, path: str, *, durable: bool = True) -> bool:
        self.calls["symlink"] += 1
        if self.crash_on_key_link and "/keys/" in path:
            self.crashed = True
            raise SimulatedCrash(f"crashed linking {path}")
        made = super().symlink(target, path, durable=durable)
        self.writes.append(("symlink", path, durable))  # (once made: a link whose folder is missing raises)
        return made


class Ticking(FakeClock):
    """A clock one millisecond later at every reading: sessions sort by creation."""

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture(params=["memory", "files"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[FileSystem, str]:
    """Where a store lives: an in-memory file system, or a directory on disk."""
    if request.param == "memory":
        return InMemoryFileSystem(), "/s"
    return RealFileSystem(), str(tmp_path / "s")


def open_at(place: tuple[FileSystem, str], fs: FileSystem | None = None, **options: Any) -> SessionStore:
    """A store on ``place`` (through ``fs`` when given: a wrapper of its file system)."""
    inner, directory = place
    if fs is None:
        fs = inner if isinstance(inner, InMemoryFileSystem) else RealFileSystem()
    options.setdefault("clock", Ticking())
    store = SessionStore(fs, storage_dir=directory, **options)
    store.init()
    return store


def find(store: SessionStore, prefix: str) -> list[IndexEntry]:
    return store.storage.find_sessions(prefix)


def filtered(store: SessionStore, prefix: str) -> list[IndexEntry]:
    """What find_sessions must return: the key index, filtered."""
    return [e for e in store.storage.list_sessions() if e.key.startswith(prefix)]


def remove_names(place: tuple[FileSystem, str]) -> None:
    """Make the store one written before names/ existed."""
    inner, directory = place
    if isinstance(inner, InMemoryFileSystem):
        inner.remove_tree(f"{directory}/names")
    else:
        shutil.rmtree(f"{directory}/names")


# Keys made of what breaks naive layouts: every separator, escapes, "..", "/", case,
# NUL, non-ASCII of 2 and 4 UTF-8 bytes, pieces of exactly 16 characters, and enough
# of them to go past the deepest folder.
ATOMS = ["a", "b", "A", "ab:", ":", "/", ".", "..", "%", "%2F", "%3a", "@", "#", "=", "+", "~", " ", "\x00", "é",
         "😀", "x" * 7, "y" * 16, "user:", "alice:", "bob/", "chat.", "z" * 15]
KEYS = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=24).map("".join)
LONG_KEYS = st.builds(lambda head, n, tail: (head + "w" * n + tail)[:4096], KEYS, st.integers(3900, 4096), KEYS)


@settings(max_examples=60)
@given(keys=st.lists(KEYS | LONG_KEYS, min_size=1, max_size=14), data=st.data())
def test_find_sessions_is_the_key_index_filtered_by_prefix(keys: list[str], data: st.DataObject) -> None:
    with SessionStore(InMemoryFileSystem(), storage_dir="/s", clock=Ticking(), durable=False) as store:
        sids = {key: store.resolve(key) for key in keys}
        for key in data.draw(st.lists(st.sampled_from(sorted(sids)), max_size=3, unique=True), label="deleted"):
            store.delete_session(sids.pop(key))
        cuts = data.draw(st.lists(st.tuples(st.sampled_from(keys), st.integers(0, 4096)), max_size=12), label="cuts")
        prefixes = {"", *keys, *(key[:n] for key, n in cuts), *(k + "x" for k in keys),
                    *data.draw(st.lists(KEYS, max_size=4), label="other prefixes")}
        for prefix in sorted(prefixes):
            assert find(store, prefix) == filtered(store, prefix), prefix
        assert {e.key for e in find(store, "")} == set(sids)


TRICKY = ["user:alice:chat-1", "user:alice:chat-2", "user:alice:", "user:alice", "user:alicia:x", "user:al",
          "User:Alice:chat-1", "user/alice/chat", "..", ".", "../x", "a/../b", "%2e%2E", "100%", "k=v+w",
          "bot@host#42", "ключ:значение", "🙂:🙂🙂", "\x00:\x00", "p" * 16, "p" * 16 + "q", "p" * 15 + ":",
          "a.b.c.d.e.f.g.h.i.j.k", "a.b.c.d.e.f.g.h", "a.b.c.d.e.f.g.h.", "a.b.c.d.e.f.g.hh", "s" * 4096,
          "s" * 4095, "😀" * 4096, "t:" * 2048]


def test_tricky_keys_on_both_file_systems(place: tuple[FileSystem, str]) -> None:
    with open_at(place) as store:
        sids = {key: store.resolve(key) for key in TRICKY}
        prefixes = {key[:n] for key in TRICKY for n in {*range(0, min(len(key), 40) + 1), len(key) - 1, len(key)}}
        for prefix in sorted(prefixes):
            assert find(store, prefix) == filtered(store, prefix), prefix
        assert {e.session_id for e in find(store, "user:alice:")} == {sids[k] for k in TRICKY[:3]}
        assert {e.key for e in find(store, "user:al")} == {"user:alice:chat-1", "user:alice:chat-2", "user:alice:",
                                                          "user:alice", "user:alicia:x", "user:al"}
        assert {e.key for e in find(store, "a.b.c.d.e.f.g.h")} == {k for k in TRICKY if k.startswith("a.b.c.d.e.f.g.h")}
        assert {e.key for e in find(store, "s" * 4000)} == {"s" * 4096, "s" * 4095}
        assert find(store, "nobody") == [] and find(store, "user:alice:chat-3") == []


def test_a_deleted_session_is_not_found_and_leaves_no_name(place: tuple[FileSystem, str]) -> None:
    with open_at(place) as store:
        kept, gone = store.resolve("user:bob:1"), store.resolve("user:bob:2")
        store.delete_session(gone)
        assert [e.session_id for e in find(store, "user:bob:")] == [kept]
        again = store.resolve("user:bob:2")  # the key again, a new session
        assert [e.session_id for e in find(store, "user:bob:")] == [kept, again]
        assert store.check().ok  # no stale name left behind
    fs, directory = place
    assert fs.listdir(f"{directory}/names/user%3A/bob%3A") == sorted([f"1={kept}", f"2={again}"])


def test_imported_and_forked_sessions_are_found(place: tuple[FileSystem, str]) -> None:
    with open_at(place) as store:
        source = store.resolve("team:a:source")
        m = store.append(source, role="user", content="hi")
        fork = store.fork_session(source, key="team:a:fork")
        message = ss.Message(id="i1", parent_id=None, type="user", role="user", content="x", timestamp=1)
        imported = store.import_session("team:b:import", [message])
        assert [(e.session_id, e.forked_from) for e in find(store, "team:a:")] == [(source, None),
                                                                                 (fork, (source, m.id))]
        assert [e.session_id for e in find(store, "team:")] == [source, fork, imported]


def test_a_crash_between_the_name_and_the_key_link_leaves_a_name_no_one_finds(
        place: tuple[FileSystem, str]) -> None:
    watched = Watched(place[0])
    store = open_at(place, watched)
    first = store.resolve("user:carol:1")
    watched.crash_on_key_link = True
    with pytest.raises(SimulatedCrash):
        store.resolve("user:carol:2")  # killed: its folder and its name are there, its key link is not
    watched.close()
    with open_at(place) as again:
        assert [e.session_id for e in find(again, "user:carol:")] == [first]
        assert again.resolve("user:carol:2", create=False) is None
        second = again.resolve("user:carol:2")  # the key is free: a new session takes it
        assert {e.session_id for e in find(again, "user:carol:")} == {first, second}
        assert find(again, "user:carol:") == filtered(again, "user:carol:")
        assert not again.check().ok  # the killed creation's folder and name...
        assert again.repair().ok  # ...are put away by a repair (an empty session whose key another has)
        assert again.check().ok
        assert {e.session_id for e in find(again, "user:carol:")} == {first, second}


def test_a_crash_before_the_key_link_then_a_repair_finds_the_adopted_session(place: tuple[FileSystem, str]) -> None:
    watched = Watched(place[0])
    store = open_at(place, watched)
    watched.crash_on_key_link = True
    with pytest.raises(SimulatedCrash):
        store.resolve("user:dan:1")
    watched.close()
    with open_at(place) as again:
        assert find(again, "user:dan:") == []
        assert again.repair().ok  # the folder is adopted: its key is linked, its name was already there
        assert [e.key for e in find(again, "user:dan:")] == ["user:dan:1"]
        assert again.check().ok


def test_the_name_is_durable_before_the_key_link_commits(tmp_path: Path) -> None:
    watched = Watched(RealFileSystem())
    with SessionStore(watched, storage_dir=tmp_path) as store:
        store.resolve("first")
        watched.reset()
        sid = store.resolve("user:erin:1")
        store.delete_session(sid)
    links = [(path, durable) for op, path, durable in watched.writes if op == "symlink"]
    assert links[0] == (f"{tmp_path}/names/user%3A/erin%3A/1={sid}", True)  # the name, durably...
    assert "/keys/" in links[1][0] and links[1][1] is True and len(links) == 2  # ...then the key link
    made = [(path, durable) for op, path, durable in watched.writes if op == "makedirs" and "/names/" in path]
    assert made == [(f"{tmp_path}/names/user%3A/erin%3A", True)]


def test_a_store_without_names_is_indexed_by_the_first_find(place: tuple[FileSystem, str]) -> None:
    fs, directory = place
    with open_at(place) as store:
        sids = [store.resolve(f"user:{who}:{i}") for who in ("fay", "gus") for i in range(3)]
    remove_names(place)  # a store written before names/ existed
    with open_at(place) as store:
        store.resolve("user:fay:new")  # a creation writes its own name, and builds nothing
        assert len(store.get_all_session_ids()) == 7 and not fs.exists(f"{directory}/names/.complete")
        found = find(store, "user:fay:")
        assert fs.exists(f"{directory}/names/.complete")
        assert {e.session_id for e in found} > set(sids[:3]) and found == filtered(store, "user:fay:")
        assert find(store, "user:gus:") == filtered(store, "user:gus:") and store.check().ok


def test_a_build_cut_short_by_a_crash_is_done_again(place: tuple[FileSystem, str]) -> None:
    with open_at(place) as store:
        for i in range(6):
            store.resolve(f"user:hal:{i}")
    for n in range(0, 30, 3):
        remove_names(place)
        watched = Watched(place[0])
        store = open_at(place, watched)
        watched.crash_at(n)
        try:
            find(store, "user:hal:")
        except SimulatedCrash:
            pass
        watched.close()
        with open_at(place) as again:
            assert len(find(again, "user:hal:")) == 6 and again.check().ok


def test_names_laid_out_by_other_rules_are_built_again_and_repair_clears_the_old_ones(
        place: tuple[FileSystem, str]) -> None:
    fs, directory = place
    with open_at(place) as store:
        sid = store.resolve("user:ivy:1")
    fs.remove(f"{directory}/names/user%3A/ivy%3A/1={sid}")
    fs.makedirs(f"{directory}/names/old")
    fs.symlink(sid, f"{directory}/names/old/={sid}")  # where another version put it
    fs.write_atomic(f"{directory}/names/.complete", json.dumps({"names": 0}).encode())
    with open_at(place) as store:
        assert [e.session_id for e in find(store, "user:ivy:")] == [sid]
        assert find(store, "old") == []
        assert [p.reason for p in store.check().problems] == [
            f"a key name that is not the key of session {sid} (repair removes it)"]
        assert store.repair().ok and store.check().ok and not fs.exists(f"{directory}/names/old/={sid}")


def test_check_reports_and_repair_clears_stale_and_missing_names(place: tuple[FileSystem, str]) -> None:
    fs, directory = place
    with open_at(place) as store:
        a, b = store.resolve("user:jo:a"), store.resolve("user:jo:b")
    ghost = "0f0f0f0f-0000-4000-8000-000000000000"
    fs.symlink(ghost, f"{directory}/names/user%3A/jo%3A/a={ghost}")  # of no session
    fs.symlink(a, f"{directory}/names/user%3A/jo%3A/b={a}")  # not where a's key is
    fs.remove(f"{directory}/names/user%3A/jo%3A/b={b}")  # lost
    with open_at(place) as store:
        assert [e.session_id for e in find(store, "user:jo:")] == [a]  # b's name is lost: not found
        reasons = sorted(p.reason for p in store.check().problems)
        assert len(reasons) == 3 and "a key name of no session" in reasons[0]
        assert "not the key of session" in reasons[1] and "missing from names/" in reasons[2]
        assert len(store.repair().fixed) == 3
        assert store.check().ok and [e.session_id for e in find(store, "user:jo:")] == [a, b]


def test_a_key_another_store_created_first_leaves_no_name_of_the_loser(tmp_path: Path) -> None:
    stores = [SessionStore(storage_dir=tmp_path, durable=False) for _ in range(4)]
    keys = [f"race:{i}" for i in range(15)]
    errors: list[BaseException] = []

    def resolve_all(store: SessionStore) -> None:
        try:
            for key in keys:
                store.resolve(key)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=resolve_all, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(e.key for e in find(stores[0], "race:")) == sorted(keys)
    assert stores[0].check().ok  # every loser took its name back
    for s in stores:
        s.close()


# -- cost: work, never wall time ----------------------------------------------------------


def counted_find(sessions: int, prefix: str) -> tuple[Counter[str], list[tuple[str, int]], int]:
    """The file system calls of finding ``prefix`` in a store of ``sessions`` sessions
    (five per user): calls by method, the folders listed with their sizes, matches."""
    watched = Watched(InMemoryFileSystem())
    with SessionStore(watched, storage_dir="/s", durable=False, clock=FakeClock()) as store:
        for i in range(sessions):
            store.resolve(f"user:u{i // 5}:chat-{i % 5}")
        find(store, prefix)  # (nothing to build: a new store's names/ is whole from the start)
        watched.reset()
        found = find(store, prefix)
        return Counter(watched.calls), list(watched.listed), len(found)


def test_finding_five_sessions_among_2000_costs_what_it_costs_among_10() -> None:
    small, small_listed, small_found = counted_find(10, "user:u1:")
    large, large_listed, large_found = counted_find(2000, "user:u1:")
    assert small_found == large_found == 5
    assert large == small  # the same calls, whatever the store holds
    assert sum(large.values()) <= 6 + 5 * 4  # a few to start, then about four per session found
    assert sum(n for _, n in large_listed) == sum(n for _, n in small_listed) <= 5 + 5  # entries seen


def test_a_prefix_ending_inside_a_piece_lists_one_folder_more() -> None:
    calls, listed, found = counted_find(2000, "user:u39")  # u39, u390 ... u399: 11 users
    assert found == 55
    assert [n for _, n in listed if n > 5] == [400]  # the users' folder, once; then only the matches' folders
    assert sum(calls.values()) <= 6 + 1 + 11 + 55 * 4


# -- session_bytes ---------------------------------------------------------------------------


def test_session_bytes_is_what_the_session_folder_holds(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        empty = store.storage.session_bytes(sid)
        last = [store.append(sid, role="user", content="x" * 100 + str(i)) for i in range(20)][-1]
        with store.lock(sid, "me"):
            store.create_branch(sid, "alt", last.id)
            grown = store.storage.session_bytes(sid)
        on_disk = sum(p.stat().st_size for p in (tmp_path / sid).iterdir() if not p.name.startswith("."))
        assert grown == on_disk and empty is not None and grown > empty + 20 * 100
        lease = (tmp_path / sid / "lock.json").stat().st_size
        with store.lock(sid, "me"):  # the lease record is still written in place after it was measured
            store.append(sid, role="user", content="under the lease")
        assert (tmp_path / sid / "lock.json").stat().st_size == lease
        store.delete_session(sid)
        assert store.storage.session_bytes(sid) is None
        assert store.storage.session_bytes("no-such-session") is None


def test_session_bytes_in_memory() -> None:
    fs = InMemoryFileSystem()
    with SessionStore(fs, storage_dir="/s") as store:
        sid = store.resolve("k")
        before, log = store.storage.session_bytes(sid), fs.size(f"/s/{sid}/messages.jsonl")
        store.append(sid, role="user", content="hello")
        after = store.storage.session_bytes(sid)
        assert before is not None and after is not None
        assert after - before == fs.size(f"/s/{sid}/messages.jsonl") - log > 0


# -- real crashes --------------------------------------------------------------------------

CHILD = r"""
import json, sys
from session_store import SessionStore
store = SessionStore(storage_dir=sys.argv[1])
n = int(sys.argv[2])
print(json.dumps(["ready"]), flush=True)
while True:
    n += 1
    sid = store.resolve("crash:user%d:s%d" % (n % 7, n))
    print(json.dumps(["created", sid, n % 3 == 0]), flush=True)
    if n % 3 == 0:
        store.delete_session(sid)
        print(json.dumps(["deleted", sid]), flush=True)
"""


def test_sigkill_never_loses_an_acknowledged_session_from_its_prefix(tmp_path: Path) -> None:
    rng = random.Random(11)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / d) for d in (".", "backends", "tests"))}
    created: set[str] = set()
    doomed: set[str] = set()  # to be deleted: gone even when the kill came before its deletion was acknowledged
    deleted: set[str] = set()
    n = 0
    for _ in range(int(os.environ.get("SESSION_STORE_CRASH_CYCLES", "6"))):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(n)], stdout=subprocess.PIPE,
                                 env=env)
        assert child.stdout is not None
        # Killed after a number of acknowledged steps (work, not time: a loaded machine
        # runs fewer in a given time), then a moment later, somewhere inside the next.
        first = b"".join(child.stdout.readline() for _ in range(rng.randint(7, 16)))
        time.sleep(rng.uniform(0.0, 0.01))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
        for line in (first + rest).splitlines():
            what = json.loads(line)
            if what[0] == "created":
                (doomed if what[2] else created).add(what[1])
            elif what[0] == "deleted":
                deleted.add(what[1])
        n += 100_000
        with SessionStore(storage_dir=tmp_path) as store:
            for prefix in ("crash:", "crash:user3:", "crash:user3"):
                found = {e.session_id for e in find(store, prefix)}
                assert found == {e.session_id for e in filtered(store, prefix)}
            live = {e.session_id for e in find(store, "crash:")}
            assert created <= live, "an acknowledged session is missing from its prefix"
            assert not live & deleted
    with SessionStore(storage_dir=tmp_path) as store:
        assert store.repair().ok and store.check().ok
        assert created <= {e.session_id for e in find(store, "crash:")}
    assert len(created) > 10 and deleted
