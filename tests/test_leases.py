"""Leases that cannot be stolen, fencing that is enforced, hostile input and hostile
storage refused, returned records that cannot change the store (issue 16)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import FakeClock, StoreFactory
from hypothesis import given, settings

import session_store as ss
from session_store import InMemoryFileSystem, RealFileSystem, SessionStore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in (".", "backends", "tests"))}


# -- 1. a live holder in another PID namespace --------------------------------------------

HOLDER = r"""
import os, sys, time
from _procs import store_at
store = store_at(sys.argv[1], lock_timeout_ms=60_000)
result = store.acquire_lock(sys.argv[2], "holder")
print(result.token, os.getpid(), flush=True)
time.sleep(3600)
"""


def _place(backend: str, tmp_path: Path) -> str:
    if backend == "postgres":
        import pg

        pg.require_server()
        return f"postgres:{pg.new_schema()}"
    return str(tmp_path / "s.db") if backend == "sqlite" else str(tmp_path / "s")


@pytest.mark.parametrize("backend", ["files", "sqlite", "postgres"])
def test_a_live_holder_in_another_pid_namespace_keeps_its_lease_until_it_dies(tmp_path: Path, backend: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    from _procs import store_at

    place = _place(backend, tmp_path)
    with store_at(place) as store:
        sid = store.resolve("k")
    # The holder runs in its own PID namespace, after a few processes, so its pid there
    # names nobody (or somebody else) here: "is pid alive?" cannot tell it is alive.
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sh", "-c",
                               "/bin/true; /bin/true; /bin/true; exec \"$0\" -c \"$1\" \"$2\" \"$3\"",
                               sys.executable, HOLDER, place, sid], stdout=subprocess.PIPE, env=ENV)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().split()
        if not line:
            pytest.skip("unshare --pid could not start a namespace here")
        token, inner_pid = int(line[0]), int(line[1])
        assert inner_pid != holder.pid
        with store_at(place, lock_timeout_ms=60_000) as store:
            assert not store.acquire_lock(sid, "thief").acquired  # alive: never stolen
            assert store.get_lock(sid).holder_id == "holder"  # type: ignore[union-attr]
            holder.send_signal(signal.SIGKILL)  # unshare --kill-child takes the holder down with it
            holder.wait(30)
            result = store.acquire_lock(sid, "next", timeout=30)  # proof of death: free before expiry
            assert result.acquired and result.token is not None and result.token > token
    finally:
        holder.kill()
        holder.wait(30)


# -- 2. fencing -----------------------------------------------------------------------------


def test_an_append_inside_a_lock_block_whose_lease_expired_and_was_taken_is_refused(
        store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    with store.lock(sid, "A"):
        store.append(sid, role="user", content="A-1")
        clock.advance(store.lock_timeout_ms / 1000 + 1)  # A stalls past its lease (a GC pause, a slow call)
        b = store.acquire_lock(sid, "B")
        assert b.acquired
        store.append(sid, role="user", content="B-1", owner_id="B")
        assert store.release_lock(sid, "B")
        with pytest.raises(ss.LeaseLost) as lost:
            store.append(sid, role="user", content="A-2")
        assert isinstance(lost.value, ss.SessionLocked) and lost.value.token == 1
        with pytest.raises(ss.LeaseLost):  # every write in the block is fenced, not only appends
            store.create_branch(sid, "a-branch", store.get_head(sid))  # type: ignore[arg-type]
    assert [m.content for m in store.get_messages(sid)] == ["A-1", "B-1"]


def test_an_explicit_fencing_token_is_checked_with_the_write(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    first = store.acquire_lock(sid, "A")
    store.append(sid, role="user", content="ok", owner_id="A", fencing_token=first.token)
    clock.advance(store.lock_timeout_ms / 1000 + 1)
    with pytest.raises(ss.LeaseLost):  # expired: refused even before anybody else took it
        store.append(sid, role="user", content="late", owner_id="A", fencing_token=first.token)
    second = store.acquire_lock(sid, "A")
    assert second.token is not None and first.token is not None and second.token > first.token
    with pytest.raises(ss.LeaseLost):  # the same owner, an old token: a zombie of an earlier hold
        store.append(sid, role="user", content="zombie", fencing_token=first.token)
    store.append(sid, role="user", content="fresh", fencing_token=second.token)
    store.release_lock(sid, "A")
    with pytest.raises(ss.LeaseLost):  # released: the token is spent
        store.append(sid, role="user", content="after release", fencing_token=second.token)
    for bad in (-1, "1", 1.5, True):
        with pytest.raises(ss.InvalidInput):
            store.append(sid, role="user", content="x", fencing_token=bad)  # type: ignore[arg-type]
    assert [m.content for m in store.get_messages(sid)] == ["ok", "fresh"]



def test_a_reset_is_fenced_like_an_append(store: SessionStore, clock: FakeClock) -> None:
    # (reset() took no owner or token: outside a lock block, a worker whose lease was
    # lost could still reset the session under the new holder)
    sid = store.resolve("k")
    first = store.acquire_lock(sid, "A")
    store.append(sid, role="user", content="one", fencing_token=first.token)
    clock.advance(store.lock_timeout_ms / 1000 + 1)
    assert store.acquire_lock(sid, "B").acquired
    before = store.get_messages(sid)
    with pytest.raises(ss.LeaseLost):
        store.reset(sid, owner_id="A", fencing_token=first.token)
    with pytest.raises(ss.SessionLocked):
        store.reset(sid, owner_id="A")
    with pytest.raises(ss.InvalidInput):
        store.reset(sid, fencing_token=-1)
    assert store.get_messages(sid) == before  # nothing written
    second = store.get_lock(sid)
    assert second is not None
    result = store.reset(sid, owner_id="B", fencing_token=second.token, keep_strategy="last", keep_count=1)
    assert result.reset and store.get_linear_history(sid)[-1].content == "one"


# -- 3. tokens across crashes ------------------------------------------------------------------


class SyncedLeases(RealFileSystem):
    """Records every lease write (its token, reserved range end, and whether it was
    synced before the call returned), and keeps each record's last synced bytes: what
    a power loss leaves on disk in the worst case."""

    def __init__(self) -> None:
        super().__init__()
        self.lease_writes: list[tuple[int, int, bool]] = []
        self.synced: dict[str, bytes] = {}

    def write_lease(self, path: str, lease: Any, *, durable: bool = False) -> None:
        super().write_lease(path, lease, durable=durable)
        self.lease_writes.append((int(lease["token"]), int(lease.get("reserved", 0)), durable))
        if durable:
            self.synced[path] = Path(path).read_bytes()

    def lose_power(self) -> None:
        """Every lease record back to its last synced bytes."""
        for path, raw in self.synced.items():
            Path(path).write_bytes(raw)


def test_a_new_token_is_covered_by_a_synced_reservation_before_it_is_handed_out(tmp_path: Path) -> None:
    fs = SyncedLeases()
    with SessionStore(fs, storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        tokens = []
        for owner in ("a", "b", "a"):
            result = store.acquire_lock(sid, owner)
            assert result.acquired and result.token is not None
            tokens.append(result.token)
            store.acquire_lock(sid, owner)  # re-entrant: same token
            store.release_lock(sid, owner)
            store.release_lock(sid, owner)
    assert tokens == [1, 2, 3]
    synced_ends = [reserved for _, reserved, durable in fs.lease_writes if durable]
    assert synced_ends == [ss._TOKEN_RANGE]  # one sync reserved all three
    for token in tokens:  # each within a range whose end was synced before it was issued
        first_use = next(i for i, (t, _, _) in enumerate(fs.lease_writes) if t == token)
        assert any(durable and reserved >= token for _, reserved, durable in fs.lease_writes[:first_use + 1])


NEXT_TOKEN = r"""
import sys
from session_store import SessionStore
with SessionStore(storage_dir=sys.argv[1]) as store:
    print(store.acquire_lock(sys.argv[2], "after").token)
"""


def test_tokens_issued_without_a_sync_are_never_issued_again_after_a_power_loss(tmp_path: Path) -> None:
    fs = SyncedLeases()
    issued = []
    with SessionStore(fs, storage_dir=tmp_path) as store:
        sid = store.resolve("k")
        for i in range(ss._TOKEN_RANGE + 20):  # past the end of the first range
            result = store.acquire_lock(sid, f"owner-{i % 2}")
            issued.append(result.token or 0)
            store.release_lock(sid, f"owner-{i % 2}")
    assert issued == sorted(set(issued))
    assert sum(durable for _, _, durable in fs.lease_writes) == 2  # two reservations, not 276 syncs
    fs.lose_power()  # the unsynced writes are gone: the record is the second reservation's
    assert json.loads(Path(tmp_path / sid / "lock.json").read_bytes().rsplit(b"\t", 1)[0])["token"] < max(issued)
    after = subprocess.run([sys.executable, "-c", NEXT_TOKEN, str(tmp_path), sid], capture_output=True,
                           text=True, env=ENV, timeout=60, check=True)
    assert int(after.stdout) > max(issued)  # the restarted machine's next holder


@pytest.mark.parametrize("damage", [b"", b"\xff\xfe", b'{"owner":"a","token":"soon"}',
                                    b'{"owner":"a","token":3,"count":1,"expiresAt":"soon"}\n', b"[1]",
                                    b'{"owner": "a", "token": 7}\tdeadbeef'])
@pytest.mark.parametrize("reopened", [True, False], ids=["another store", "the store that wrote it"])
def test_a_lost_or_corrupt_lease_record_never_restarts_the_tokens(tmp_path: Path, damage: bytes,
                                                                  reopened: bool) -> None:
    clock = FakeClock()
    writer = SessionStore(storage_dir=tmp_path, clock=clock)
    sid = writer.resolve("k")
    tokens = []
    for owner in "abcdefghij":
        tokens.append(writer.acquire_lock(sid, owner).token)
        writer.release_lock(sid, owner)
    (tmp_path / sid / "lock.json").write_bytes(damage)  # a rollback, a bit flip, a crafted record
    if reopened:
        writer.close()
    # (the writer remembers the record it wrote last, and its bytes: neither vouches for these)
    with SessionStore(storage_dir=tmp_path, clock=clock) if reopened else writer as store:
        assert store.get_lock(sid) is None  # unreadable: free (fencing keeps a former holder out)
        if damage:
            assert not store.check().ok
        result = store.acquire_lock(sid, "new")
        assert result.acquired and result.token is not None and result.token > max(t or 0 for t in tokens)
        store.release_lock(sid, "new")
        assert store.repair().ok and store.check().ok
        assert (store.acquire_lock(sid, "later").token or 0) > result.token


# -- 4. hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [[], {}, ["main"], None, 3, ("a",)])
def test_a_branch_name_that_is_not_a_string_is_refused(store: SessionStore, name: Any) -> None:
    sid = store.resolve("k")
    head = store.append(sid, role="user", content="x")
    calls: list[Callable[[], object]] = [lambda: store.switch_to_branch(sid, name), lambda: store.get_branch(sid, name),
                 lambda: store.create_branch(sid, name, head.id), lambda: store.delete_branch(sid, name),
                 lambda: store.rename_branch(sid, "main", name),
                 *([lambda: store.move_head(sid, head.id, branch=name)] if name is not None else [])]
    for call in calls:
        with pytest.raises(ss.InvalidInput):
            call()
    assert [b.name for b in store.get_branches(sid)] == ["main"]


def test_json_that_would_silently_change_is_refused(store: SessionStore) -> None:
    sid = store.resolve("k")
    for content in ({1: "a", "1": "b"}, {(1, 2): "x"}, [{"ok": {None: 1}}]):
        with pytest.raises(ss.InvalidMessage, match="keys must be strings"):
            store.append(sid, role="user", content=content)
    assert store.get_messages(sid) == []


@pytest.mark.parametrize("timestamp", [10**20, 10**30, -1, 2**63])
def test_an_import_with_a_timestamp_out_of_range_is_refused(open_store: StoreFactory, timestamp: int) -> None:
    store = open_store()
    m = ss.Message(id="a", parent_id=None, type="user", role="user", content="x", timestamp=timestamp)
    with pytest.raises(ss.InvalidMessage, match="year 9999"):
        store.import_session("k", [m])
    assert store.get_all_session_ids() == []


def test_one_storage_object_serves_one_store_at_a_time(tmp_path: Path) -> None:
    storage = ss.JsonlStorage(RealFileSystem(), tmp_path)
    first = SessionStore(storage)
    first.resolve("k")
    second = SessionStore(storage)
    with pytest.raises(ss.InvalidInput, match="already used by another SessionStore"):
        second.resolve("k")
    first.close()
    with SessionStore(storage) as third:  # free again once the first is closed
        assert third.has_key("k")


def test_closing_on_a_failing_disk_raises_only_the_store_s_errors(tmp_path: Path) -> None:
    class FailingClose(RealFileSystem):
        def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
            if path.endswith("stats.json"):  # the tally close saves: the disk is full by now
                raise OSError(28, "No space left on device", path)
            super().write_atomic(path, data, durable=durable)

        def close(self) -> None:
            raise OSError(5, "Input/output error")

    store = SessionStore(FailingClose(), storage_dir=tmp_path)
    sid = store.resolve("k")
    store.append(sid, role="user", content="x")
    with pytest.raises(ss.StorageError):
        store.close()


def test_auto_reset_is_read_only_after_the_store_is_made(store: SessionStore) -> None:
    with pytest.raises(AttributeError, match="fixed when the store is made"):
        store.auto_reset = ss.AutoResetConfig(max_messages=2)
    assert store.auto_reset is None


# -- 5. planted links -------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["lock.json", "messages.jsonl", "branches.jsonl", "stats.json", "session-dir",
                                     "keys-shard"])
def test_a_link_planted_inside_the_store_is_never_followed(tmp_path: Path, planted: str) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("precious")
    with SessionStore(storage_dir=root) as store:
        sid = store.resolve("k")
        store.append(sid, role="user", content="x")
    if planted == "session-dir":
        (root / sid).rename(tmp_path / "moved")
        os.symlink(tmp_path / "moved", root / sid)
    elif planted == "keys-shard":
        digest_dir = next((root / "keys").iterdir())
        os.rename(digest_dir, tmp_path / "shard")
        os.symlink(outside, digest_dir)
    else:
        target = root / sid / planted
        if target.exists():
            target.unlink()
        os.symlink(victim, target)
    with SessionStore(storage_dir=root) as store:
        for call in (lambda: store.append(sid, role="user", content="y"), lambda: store.acquire_lock(sid, "o"),
                     lambda: store.create_branch(sid, "b", store.get_head(sid) or ""), lambda: store.repair(),
                     lambda: store.resolve("k"), lambda: store.resolve("new"), lambda: store.get_metadata(sid)):
            try:
                call()
            except ss.SessionStoreError:
                pass  # refused: fine; followed: not
    assert victim.read_text() == "precious" and sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_temp_files_have_unpredictable_names_and_a_planted_one_is_not_used(tmp_path: Path) -> None:
    outside = tmp_path / "victim"
    outside.write_text("precious")
    with SessionStore(storage_dir=tmp_path / "s") as store:
        sid = store.resolve("k")
        for pid_tid in (f"{os.getpid()}-0", f"{os.getpid()}"):  # the old, predictable names
            os.symlink(outside, tmp_path / "s" / sid / f"stats.json.tmp-{pid_tid}")
        for i in range(300):
            store.append(sid, role="user", content=str(i))  # saves the tally (an atomic write)
    assert outside.read_text() == "precious"
    tally = ss._decode_lease((tmp_path / "s" / sid / "stats.json").read_bytes())
    assert tally is not None and tally["tally"]["messages"] == 300


# -- 6. no fcntl (Windows) ----------------------------------------------------------------------


def test_the_module_imports_and_works_in_memory_without_fcntl() -> None:
    code = ("import sys; sys.modules['fcntl'] = None; sys.modules['resource'] = None\n"
            "import session_store as ss\n"
            "s = ss.SessionStore(ss.InMemoryFileSystem())\n"
            "sid = s.resolve('k'); s.append(sid, role='user', content='hi')\n"
            "with s.lock(sid, 'me'): s.append(sid, role='user', content='locked')\n"
            "import tempfile\n"
            "try:\n"
            "    ss.SessionStore(storage_dir=tempfile.mkdtemp()).append(\n"
            "        ss.SessionStore(storage_dir=tempfile.mkdtemp()).resolve('k'), role='user', content='x')\n"
            "except ss.StorageError as e: print('refused:', e)\n"
            "print(len(s.get_messages(sid)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "2" and "fcntl" in done.stdout


# -- 7. returned records ------------------------------------------------------------------------


def test_what_the_store_returns_can_never_change_what_it_holds(store: SessionStore) -> None:
    sid = store.resolve("k")
    m = store.append(sid, role="assistant", content=[{"type": "text", "text": "hi"}],
                     tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": "{}"}}], metadata={"n": 1})
    fields: Any = m.fields
    mutations: list[Callable[[], object]] = [
        lambda: m.content.append({}), lambda: m.content[0].update(text="changed"),
        lambda: m.content[0].__setitem__("text", "changed"), lambda: fields["metadata"].clear(),
        lambda: m.tool_calls[0]["function"].pop("name"), lambda: fields.__setitem__("x", 1),
        lambda: m.content.sort(), lambda: m.content.__delitem__(0)]
    for mutate in mutations:
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    m.content.__init__([])  # a second __init__ (list's and dict's refill) changes nothing
    m.content[0].__init__(text="changed")
    fields.__init__(x=1)
    assert type(m.content)(m.content) == m.content  # type(x)(items) builds, as pydantic does
    again = store.get_messages(sid)[0]
    assert again == m and again.content == [{"type": "text", "text": "hi"}] and again.fields["metadata"] == {"n": 1}
    mine = copy.deepcopy(m.content)  # a plain, mutable copy when one is wanted
    mine[0]["text"] = "mine"
    assert type(mine) is list and type(mine[0]) is dict and store.get_message(sid, m.id).content[0]["text"] == "hi"
    assert pickle.loads(pickle.dumps(m.content)) == m.content
    assert json.loads(json.dumps(m.content)) == [{"type": "text", "text": "hi"}]
    given = [{"type": "text", "text": "caller's"}]
    stored = store.append(sid, role="user", content=given)
    given[0]["text"] = "changed by the caller later"  # the caller's object is not the store's
    assert store.get_message(sid, stored.id).content[0]["text"] == "caller's"


def test_in_memory_store_rejects_writes_to_a_removed_folder() -> None:
    fs = InMemoryFileSystem()
    store = SessionStore(fs, storage_dir="/s")
    sid = store.resolve("k")
    fs.remove_tree(f"/s/{sid}")
    with pytest.raises(ss.SessionNotFound):
        store.append(sid, role="user", content="x")


# -- 6. what keeps a lease cheap keeps it right ------------------------------------------------


def test_an_in_memory_lease_record_reads_as_the_file_format_and_as_what_was_written() -> None:
    fs = InMemoryFileSystem()
    fs.makedirs("s")
    record: dict[str, Any] = {"owner": "a", "count": 1, "token": 7, "expiresAt": 10, "process": "p",
                              "queue": [["w", 5]]}
    fs.write_lease("s/lock.json", record)
    record["queue"][0][1] = 99  # the caller's dict is not the one kept
    kept = fs.read_lease("s/lock.json")
    assert kept == {**record, "queue": [["w", 5]]}
    assert kept is not None
    kept["queue"].append(["x", 1])  # nor is the one returned
    assert fs.read_lease("s/lock.json") == {**record, "queue": [["w", 5]]}
    raw = fs.read("s/lock.json")  # as bytes: the checksummed, padded record any FileSystem writes
    assert len(raw) == ss._LEASE_RECORD_BYTES and ss._decode_lease(raw) == fs.read_lease("s/lock.json")
    fs.rename("s/lock.json", "s/moved.json")
    assert fs.read_lease("s/moved.json") == {**record, "queue": [["w", 5]]}
    fs.write_lease("s/lock.json", record)
    fs.write_in_place("s/lock.json", b'{"owner": "b", "token": 8}\tdeadbeef')  # written over as bytes: damaged
    assert fs.read_lease("s/lock.json") == {"corrupt": True}
    fs.write_lease("s/lock.json", record)
    fs.append("s/lock.json", b"x")  # bytes added after the record: it is no longer whole
    assert fs.read_lease("s/lock.json") == ss._decode_lease(fs.read("s/lock.json"))


_LEASE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                          st.text(),
                          st.lists(st.lists(st.one_of(st.text(), st.integers()), max_size=3), max_size=3),
                          st.tuples(st.tuples(st.text(), st.integers())))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(["owner", "token", "queue", "reserved"]), st.text()), _LEASE_VALUES,
                       max_size=6))
def test_a_lease_record_kept_with_its_bytes_is_what_those_bytes_read_as(record: dict[str, Any]) -> None:
    """RealFileSystem keeps the record it wrote beside its bytes and returns it when it
    reads those bytes back: it must be exactly what decoding them gives."""
    kept = ss._lease_as_read(record)
    if kept is not None:
        assert repr(kept) == repr(ss._decode_lease(ss._encode_lease(record)))  # repr: 1 and True differ


def _decode_lease_by_json_loads(raw: bytes) -> dict[str, Any] | None:
    """_decode_lease as it was written first: json.loads on the checked body."""
    text = raw.rstrip()
    if not text:
        return {"corrupt": True}
    body, tab, crc = text.rpartition(b"\t")
    if tab:
        if b"%08x" % zlib.crc32(body) != crc:
            return {"corrupt": True}
        text = body
    try:
        lease = json.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {"corrupt": True}
    return lease if isinstance(lease, dict) else {"corrupt": True}


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=40),
                 st.builds(lambda v, pad: (json.dumps(v) + pad).encode(), _LEASE_VALUES | st.dictionaries(
                     st.text(max_size=5), _LEASE_VALUES, max_size=4), st.sampled_from(["", " ", "\n", " x", "]"])),
                 st.builds(lambda d: ss._encode_lease(d), st.dictionaries(st.text(max_size=5), _LEASE_VALUES,
                                                                          max_size=4))))
def test_a_lease_record_decodes_as_json_loads_decodes_it(raw: bytes) -> None:
    """_decode_lease takes the JSON scanner's result when it read the body whole, and
    json.loads's otherwise: either way, what json.loads made of it."""
    assert repr(ss._decode_lease(raw)) == repr(_decode_lease_by_json_loads(raw))


def test_a_lease_read_back_on_files_decodes_only_bytes_it_did_not_write(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = RealFileSystem()
    path = str(tmp_path / "lease")
    record: dict[str, Any] = {"owner": "a", "count": 1, "token": 7, "expiresAt": 10, "process": "p",
                              "queue": [["w", 5]], "reserved": 9, "reservedBy": "p"}
    fs.write_lease(path, record)
    decoded: list[bytes] = []
    real = ss._decode_lease

    def decode(raw: bytes) -> dict[str, Any] | None:
        decoded.append(raw)
        return real(raw)
    monkeypatch.setattr(ss, "_decode_lease", decode)
    kept = fs.read_lease(path)
    assert kept == record and not decoded  # its own bytes: nothing decoded
    assert kept is not None
    kept["queue"][0][1] = 99  # what it returns is a copy
    assert fs.read_lease(path) == record
    with open(path, "r+b") as f:  # a byte changed on disk, the length kept
        f.seek(3)
        f.write(b"X")
    assert fs.read_lease(path) == {"corrupt": True} and len(decoded) == 1
    with open(path, "r+b") as f:  # another process's record
        f.write(ss._encode_lease({**record, "owner": "b"}))
    assert fs.read_lease(path) == {**record, "owner": "b"} and len(decoded) == 2
    fs.close()


def test_a_held_lease_keeps_its_proof_of_life_while_descriptors_are_evicted(tmp_path: Path) -> None:
    fs = RealFileSystem(max_open_files=4)
    with SessionStore(fs, storage_dir=tmp_path, durable=False) as store:
        held = store.resolve("held")
        store.acquire_lock(held, "a")
        for i in range(20):  # every other descriptor is evicted, many times over
            store.append(store.resolve(f"other-{i}"), role="user", content="x")
        probe = RealFileSystem()
        mark = f"{tmp_path}/{held}/lease.lock"
        assert probe.is_held(mark) is True  # another process would see its holder alive
        store.release_lock(held, "a")
        assert probe.is_held(mark) is False  # released: a fresh probe finds no holder
        store.acquire_lock(held, "b")  # the kept descriptor marks again
        assert probe.is_held(mark) is True
        store.release_lock(held, "b")
        assert probe.is_held(mark) is False


@pytest.mark.parametrize("files", ["memory", "disk"])
def test_a_first_acquire_that_fails_puts_back_a_free_lease(tmp_path: Path, files: str) -> None:
    """The record put back after a failed first acquire is the store's read-only empty
    one: it must be written like any other (it raised TypeError, not StorageError)."""
    base: type[Any] = InMemoryFileSystem if files == "memory" else RealFileSystem

    class FirstLeaseWriteFails(base):  # type: ignore[misc]
        failed = False

        def write_lease(self, path: str, lease: Any, *, durable: bool = False) -> None:
            super().write_lease(path, lease, durable=durable)  # lands, then reports failure
            if not FirstLeaseWriteFails.failed:
                FirstLeaseWriteFails.failed = True
                raise OSError(5, "Input/output error", path)

    with SessionStore(FirstLeaseWriteFails(), storage_dir=tmp_path / "s") as store:
        sid = store.resolve("k")
        with pytest.raises(ss.StorageError):
            store.acquire_lock(sid, "a")
        assert store.get_lock(sid) is None  # put back: free
        result = store.acquire_lock(sid, "a")
        assert result.acquired and result.token == 1
