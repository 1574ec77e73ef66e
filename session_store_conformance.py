"""The executable contract of session_store: run it against any storage.

A backend passes when a :class:`~session_store.SessionStore` opened on it behaves like a
tiny in-memory model under random sequences of every public operation, and raises the
documented errors (writing nothing) for bad input. Needs pytest and hypothesis
(``pip install "session-store[conformance]"``).

Give the kit a *storage opener*: a callable returning a context manager that yields a
factory ``open_store(**options) -> SessionStore``. Every store the factory opens must
see the same storage; each ``with`` block is a fresh, empty storage::

    import contextlib, tempfile
    import session_store_conformance as conformance
    from session_store import SessionStore

    @contextlib.contextmanager
    def my_storage():
        with tempfile.TemporaryDirectory() as directory:
            yield lambda **options: SessionStore(MyFileSystem(), storage_dir=directory, **options)

    TestMyStorage = conformance.state_machine_tests(my_storage)

    class TestMyStorageContract(conformance.ContractTests):
        storage = staticmethod(my_storage)

The factory must pass every keyword option through to ``SessionStore`` (the kit
uses ``clock``, ``lock_timeout_ms``, ``auto_reset``, ``durable``, ``require_lock``).
:class:`FaultyFileSystem` wraps a file system to inject ENOSPC/EIO, failing fsyncs,
short writes and crashes after N bytes.
"""

from __future__ import annotations

__all__ = [
    "StoreFactory",
    "StorageOpener",
    "FakeClock",
    "in_memory_storage",
    "file_storage",
    "temporary_storage",
    "AsyncDriver",
    "through_async",
    "StoreMachine",
    "state_machine_tests",
    "ContractTests",
    "CrashTests",
    "FaultyFileSystem",
    "FaultyStorage",
    "faults_of",
    "SimulatedCrash",
    "WRITE_OPS",
    "STORAGE_WRITE_OPS",
]

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import errno
import inspect
import json
import tempfile
import threading
import unittest
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import session_store as ss
from session_store import (
    AutoResetConfig,
    FileSystem,
    InMemoryFileSystem,
    RealFileSystem,
    SessionStore,
    Storage,
)

StoreFactory = Callable[..., SessionStore]
StorageOpener = Callable[[], contextlib.AbstractContextManager[StoreFactory]]

#: The operations of a :class:`~session_store.FileSystem` that change something: the
#: places :class:`FaultyFileSystem` can fail or crash at.
WRITE_OPS = ("append", "sync", "truncate", "write_atomic", "write_in_place", "makedirs", "rename", "remove",
             "remove_tree", "symlink", "hold")

# ============================================================================
# Storages and a clock
# ============================================================================


def faults_of(store: SessionStore) -> FaultyFileSystem | FaultyStorage | None:
    """Where faults are injected into ``store``: its storage's :class:`FaultyFileSystem`,
    or its :class:`FaultyStorage`; ``None`` when it has neither."""
    storage = store.storage
    fs = getattr(storage, "fs", None)
    if isinstance(fs, FaultyFileSystem):
        return fs
    return storage if isinstance(storage, FaultyStorage) else None


class FakeClock:
    """A ``time.time`` stand-in that tests move by hand (seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@contextlib.contextmanager
def in_memory_storage() -> Iterator[StoreFactory]:
    """A fresh :class:`~session_store.InMemoryFileSystem` shared by every store opened,
    behind a :class:`FaultyFileSystem` per store (the state machine injects faults)."""
    fs = InMemoryFileSystem()
    yield lambda **options: SessionStore(FaultyFileSystem(fs), storage_dir="/sessions", **options)


@contextlib.contextmanager
def file_storage() -> Iterator[StoreFactory]:
    """A fresh temporary directory; each store gets its own :class:`RealFileSystem`
    (as another process would), behind a :class:`FaultyFileSystem`."""
    with tempfile.TemporaryDirectory(prefix="session-store-") as directory:
        yield lambda **options: SessionStore(FaultyFileSystem(RealFileSystem()), storage_dir=directory, **options)


def temporary_storage(make_storage: Callable[[str], Storage]) -> StorageOpener:
    """An opener for a backend kept in a directory: each ``with`` block gets a fresh
    temporary directory, and every store opened gets ``make_storage(directory)``::

        opener = temporary_storage(lambda d: SqliteStorage(f"{d}/sessions.db"))
        TestSqlite = state_machine_tests(opener)

    Each storage is wrapped in a :class:`FaultyStorage`, so that the state machine's
    fault and crash rules, and :class:`CrashTests`, run on it.
    """
    @contextlib.contextmanager
    def opener() -> Iterator[StoreFactory]:
        with tempfile.TemporaryDirectory(prefix="session-store-") as directory:
            yield lambda **options: SessionStore(FaultyStorage(make_storage(directory)), **options)
    return opener


class AsyncDriver:
    """A synchronous, :class:`~session_store.SessionStore`-shaped driver over an
    :class:`~session_store.AsyncSessionStore` on an event loop of its own (a thread),
    so that the state machine and the contract tests run through the async facade.

    Every coroutine runs as a task in one shared context, as a program's own task
    would, so that ``with driver.lock(...)`` holds what the block's calls see.
    Needs Python 3.11 (``create_task(context=...)``).
    """

    def __init__(self, store: ss.AsyncSessionStore) -> None:
        self._async = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="async-driver", daemon=True)
        self._thread.start()
        self._context = contextvars.copy_context()
        weakref.finalize(self, self._loop.call_soon_threadsafe, self._loop.stop)

    def _call(self, coroutine: Any) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            task = self._loop.create_task(coroutine, context=self._context)
            task.add_done_callback(lambda t: done.set_exception(t.exception()) if t.exception() is not None
                                   else done.set_result(t.result()))
        self._loop.call_soon_threadsafe(start)
        return done.result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._async, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._call(attr(*args, **kwargs))
        return attr

    @contextlib.contextmanager
    def lock(self, session_id: str, owner_id: str, *, timeout: float | None = None) -> Iterator[ss.LockResult]:
        """``with driver.lock(...)``: the async ``lock`` entered and left on the loop."""
        block = self._async.lock(session_id, owner_id, timeout=timeout)
        result = self._call(block.__aenter__())
        try:
            yield result
        except BaseException as e:
            if not self._call(block.__aexit__(type(e), e, e.__traceback__)):
                raise
        else:
            self._call(block.__aexit__(None, None, None))

    def close(self) -> None:
        """Close the store (the loop runs on, for calls that must now raise StoreClosed,
        until the driver is collected)."""
        self._call(self._async.close())


def through_async(storage: StorageOpener) -> StorageOpener:
    """The same storage, with every store reached through :class:`AsyncDriver` over an
    :class:`~session_store.AsyncSessionStore`: the contract is the same."""
    @contextlib.contextmanager
    def opener() -> Iterator[StoreFactory]:
        with storage() as open_store:
            yield lambda **options: cast(SessionStore, AsyncDriver(ss.AsyncSessionStore(open_store(**options))))
    opener.__name__ = f"async_{getattr(storage, '__name__', 'storage')}"
    return opener


# ============================================================================
# The model
# ============================================================================

LEASE_MS = 1_000
RESET_CONFIGS = [
    None,
    AutoResetConfig(max_messages=3, keep_strategy="last", keep_count=2),
    AutoResetConfig(max_messages=2, keep_strategy="none", insert_reset_marker=False),
]


@dataclass
class _Lease:
    holder: str | None = None
    count: int = 0
    expires: int = 0
    token: int = 0


@dataclass
class _ModelBranch:
    head: str | None
    created_at: int
    updated_at: int


@dataclass
class _ModelSession:
    key: str
    created_at: int
    messages: list[ss.Message] = field(default_factory=list)
    branches: dict[str, _ModelBranch] = field(default_factory=dict)
    current: str = "main"
    lease: _Lease = field(default_factory=_Lease)
    updated_at: int = 0
    forked_from: tuple[str, str | None] | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        self.branches = self.branches or {"main": _ModelBranch(None, self.created_at, self.created_at)}
        self.updated_at = self.updated_at or self.created_at

    def by_id(self) -> dict[str, ss.Message]:
        return {m.id: m for m in self.messages}

    def head(self) -> str | None:
        return self.branches[self.current].head

    def path(self, leaf: str | None) -> list[ss.Message]:
        index = self.by_id()
        out: list[ss.Message] = []
        while leaf is not None:
            out.append(index[leaf])
            leaf = index[leaf].parent_id
        return out[::-1]

    def segment(self) -> list[ss.Message]:
        path = self.path(self.head())
        for i in range(len(path) - 1, -1, -1):
            if path[i].type == "reset":
                return path[i + 1:]
        return path

    def add(self, msg: ss.Message) -> None:
        """A message as the store applies it: the head rule, and the update time."""
        self.messages.append(msg)
        current = self.branches[self.current]
        if current.head == msg.parent_id:
            current.head, current.updated_at = msg.id, msg.timestamp
        self.updated_at = max(self.updated_at, msg.timestamp)

    def event(self, at: int) -> None:
        self.updated_at = max(self.updated_at, at)

    def preview(self) -> str | None:
        """The first user message's text, as one line (the kit's texts are short)."""
        for m in self.messages:
            line = " ".join(ss.message_text(m.content).split())
            if m.role == "user" and line:
                return line
        return None

    def last_write(self) -> int:
        return max(self.updated_at, self.created_at)

    def places(self) -> dict[str, str]:
        """Where search says each message stands: on the current path after its last
        reset, in history a reset archived (the paths resets moved the head away
        from, as markers and kept copies name them), or elsewhere."""
        by_id = self.by_id()
        path = self.path(self.head())
        current = {m.id for m in self.segment()}
        archived: set[str] = set()
        todo = [path]
        while todo:
            for m in todo.pop():
                if m.id not in current:
                    archived.add(m.id)
                for name in ("archived_head", "reset_from"):
                    before = m.fields.get(name)
                    if isinstance(before, str) and before in by_id and before not in archived | current:
                        todo.append(self.path(before))
        return {m.id: "current" if m.id in current else "archived" if m.id in archived else "branch"
                for m in self.messages}


def _json(value: Any) -> Any:
    """What the store keeps of a value: its JSON round trip."""
    return json.loads(json.dumps(value))


_keys = st.sampled_from(["user:alice", "user:bob", "../etc/passwd", "ключ 🙂", "k" * 300])
_branch_names = st.sampled_from(["alt", "feature/x", "ветка", "..", "main"])
_owners = st.sampled_from(["worker-1", "worker-2", "worker-3"])
_contents = st.one_of(st.text(max_size=20), st.just([{"type": "text", "text": "block"}]), st.none(),
                      st.just({"nested": {"list": [1, 2.5, None, True, "x"]}}))
_titles = st.sampled_from([None, "Trip to Paris", "<b>bold</b> & \"quoted\"", "ключ 🙂", " x ", "t" * 200])
_prefixes = st.sampled_from(["", "user:", "user:alice", "import-", "fork:", "../", "k", "nobody"])
# Queries: words found in the contents below, and the operators of FTS5, tsquery and LIKE, which are plain words.
_queries = st.sampled_from(["block", "imported", "imported 1", "IMPORTED", "c0", "x", "a", "0",
                            '"block"', "block OR imported", "NOT block", "block*", "NEAR(block imported)",
                            "-block", "block:x", "b%", "_", "(", "'", "\\", "^block", "imported & 2 | !1"])
_fields = st.sampled_from([{}, {"metadata": {"n": 1}}, {"tool_call_id": "call_1"},
                           {"tool_calls": [{"id": "c", "type": "function", "function": {"name": "f",
                                                                                        "arguments": "{}"}}]}])


# The calls the fault rule makes fail, with the arguments each rule draws.
_CALLS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "append": {"how": st.sampled_from(["head", "root", "random", "named-head"]), "content": _contents,
               "fields": _fields},
    "append_many": {"root": st.booleans(), "contents": st.lists(_contents, min_size=1, max_size=3), "fields": _fields},
    "resolve": {"key": _keys}, "delete": {}, "manual_reset": {}, "import_session": {"n": st.integers(0, 3)},
    "fork": {"at_head": st.booleans()}, "create_branch": {"name": _branch_names},
    "switch": {"name": _branch_names}, "move_head": {"name": _branch_names, "to_none": st.booleans()},
    "delete_branch": {"name": _branch_names}, "rename_branch": {"old": _branch_names, "new": _branch_names},
    "acquire": {"owner": _owners}, "release": {"owner": _owners},
    "lock_block": {"owner": _owners, "thief": _owners, "stall": st.booleans()},
    "set_title": {"title": _titles},
    "prune": {"age": st.sampled_from([0, 1]), "prefix": _prefixes, "dry_run": st.just(False),
              "archive": st.booleans()},
}


class StoreMachine(RuleBasedStateMachine):
    """Drives the whole public API against :class:`_ModelSession` models.

    Set ``storage`` (a :data:`StorageOpener`) on a subclass, or use
    :func:`state_machine_tests`. Two store handles share the storage (set
    ``handles = 1`` for a backend that allows only one); ``reopen`` closes one and
    opens it again, so everything must survive a restart. After every step, every
    field of every message, branch, lease and session is compared with the model.
    Stores on a :class:`FaultyFileSystem` also get faults injected into every write
    path: a call that fails must leave no trace, and nothing acknowledged is lost.
    """

    storage: ClassVar[StorageOpener] = staticmethod(in_memory_storage)
    handles: ClassVar[int] = 2

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model: dict[str, _ModelSession] = {}
        self.stores: list[SessionStore] = []
        self._storage = type(self).storage()
        self.open_store = self._storage.__enter__()
        self.reset_config: AutoResetConfig | None = None
        self.durable = False
        self.crashes = 0

    def open(self) -> SessionStore:
        store = self.open_store(clock=self.clock, lock_timeout_ms=LEASE_MS, auto_reset=self.reset_config,
                                durable=self.durable)
        store.init()
        return store

    @initialize(config=st.sampled_from(range(len(RESET_CONFIGS))), durable=st.booleans())
    def start(self, config: int, durable: bool) -> None:
        self.reset_config = RESET_CONFIGS[config]
        self.durable = durable
        self.stores = [self.open() for _ in range(self.handles)]

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        self._storage.__exit__(None, None, None)

    # -- helpers ------------------------------------------------------------------

    def now(self) -> int:
        return round(self.clock() * 1000)

    def handle(self, data: st.DataObject) -> SessionStore:
        return self.stores[data.draw(st.integers(0, self.handles - 1), label="handle")]

    def session(self, data: st.DataObject) -> tuple[str, _ModelSession]:
        sid = data.draw(st.sampled_from(list(self.model)), label="session")  # insertion order: reproducible
        return sid, self.model[sid]

    def lease_live(self, m: _ModelSession) -> bool:
        return m.lease.holder is not None and m.lease.expires > self.now()

    def expect_reset(self, m: _ModelSession, parent: str | None) -> bool:
        config = self.reset_config
        if config is None or config.max_messages is None or parent is None:
            return False
        return parent == m.head() and len(m.segment()) + 1 > config.max_messages

    def message(self, msg: ss.Message, parent: str | None, content: Any, fields: dict[str, Any],
                role: str = "user") -> ss.Message:
        """The message the model expects, checked against what the store returned."""
        expected = ss.Message(id=msg.id, parent_id=parent, type=role, role=role, content=_json(content),
                              timestamp=self.now(), fields=_json(fields))
        assert msg == expected
        return expected

    # -- sessions -------------------------------------------------------------------

    @rule(key=_keys, data=st.data())
    def resolve(self, key: str, data: st.DataObject) -> None:
        sid = self.handle(data).resolve(key)
        known = [s for s, m in self.model.items() if m.key == key]
        assert sid == known[0] if known else sid not in self.model
        if not known:
            self.model[sid] = _ModelSession(key, self.now())

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        sid, _ = self.session(data)
        store = self.handle(data)
        store.delete_session(sid)
        del self.model[sid]
        with pytest.raises(ss.SessionNotFound):
            store.delete_session(sid)

    @rule(which=st.integers(0, 1))
    def reopen(self, which: int) -> None:
        which %= self.handles
        self.stores[which].close()
        self.stores[which] = self.open()

    @rule(data=st.data(), n=st.integers(0, 3))
    def import_session(self, data: st.DataObject, n: int) -> None:
        key = f"import-{len(self.model)}-{n}"
        if any(m.key == key for m in self.model.values()):
            return
        messages = [ss.Message(id=f"i{i}", parent_id=f"i{i - 1}" if i else None, type="user", role="user",
                               content=f"imported {i}", timestamp=1_000 + i, fields={"n": i} if i % 2 else {})
                    for i in range(n)]
        head = messages[-1].id if messages else None
        branches = [ss.Branch(name="main", head_id=head, created_at=500, updated_at=2_000)]
        sid = self.handle(data).import_session(key, messages, branches=branches)
        m = self.model[sid] = _ModelSession(key, self.now())
        m.messages = list(messages)
        m.branches["main"] = _ModelBranch(head, m.created_at, 2_000)
        m.updated_at = max(m.created_at, 2_000)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), at_head=st.booleans())
    def fork(self, data: st.DataObject, at_head: bool) -> None:
        sid, m = self.session(data)
        leaf = m.head() if at_head or not m.messages else data.draw(st.sampled_from([x.id for x in m.messages]))
        new = self.handle(data).fork_session(sid, None if at_head else leaf)
        assert new not in self.model
        f = self.model[new] = _ModelSession(f"fork:{new}", self.now(), forked_from=(sid, leaf))
        f.messages = m.path(leaf)
        f.branches["main"] = _ModelBranch(leaf, f.created_at, self.now())

    # -- titles, listing, search, retention ---------------------------------------------

    @precondition(lambda self: self.model)
    @rule(data=st.data(), title=_titles)
    def set_title(self, data: st.DataObject, title: str | None) -> None:
        sid, m = self.session(data)
        self.handle(data).set_title(sid, title)
        m.title = title
        m.event(self.now())

    @rule(data=st.data(), prefix=_prefixes, limit=st.sampled_from([None, 1, 2, 50]), offset=st.integers(0, 2))
    def list_sessions(self, data: st.DataObject, prefix: str, limit: int | None, offset: int) -> None:
        found = self.handle(data).list_sessions(key_prefix=prefix, limit=limit, offset=offset)
        expected = sorted(((m.last_write(), m.created_at, sid) for sid, m in self.model.items()
                           if m.key.startswith(prefix)), reverse=True)
        expected = expected[offset:None if limit is None else offset + limit]
        assert [x.session_id for x in found] == [sid for _, _, sid in expected]  # newest first, paged
        for meta in found:
            assert meta == self.metadata(meta.session_id)

    @rule(data=st.data(), query=_queries, prefix=_prefixes, archived=st.booleans())
    def search(self, data: st.DataObject, query: str, prefix: str, archived: bool) -> None:
        """Every message holding every word of the query, whatever branch it is on;
        the query's operators are words; the prefix applies before the limit."""
        store = self.handle(data)
        words = set(ss.search_words(query))
        expected: dict[tuple[str, str], str] = {}
        for sid, m in self.model.items():
            if not m.key.startswith(prefix):
                continue
            places = m.places()
            for msg in m.messages:
                if (words and words <= set(ss.search_words(ss.message_text(msg.content)))
                        and (archived or places[msg.id] != "archived")):
                    expected[(sid, msg.id)] = places[msg.id]
        hits = store.search(query, key_prefix=prefix, limit=1000, include_archived=archived)
        assert {(h.session_id, h.message_id): h.place for h in hits} == expected
        assert len(hits) == len(expected)
        for h in hits:
            m = self.model[h.session_id]
            msg = m.by_id()[h.message_id]
            assert (h.key, h.role, h.timestamp) == (m.key, msg.role, msg.timestamp)
            assert h.title == self.metadata(h.session_id).title
        if len(expected) > 1:  # a limit keeps the best: some of them, within the prefix
            few = store.search(query, key_prefix=prefix, limit=1, include_archived=archived)
            assert len(few) == 1 and (few[0].session_id, few[0].message_id) in expected

    @rule(data=st.data(), age=st.sampled_from([0, 1, 5, 60]), prefix=_prefixes, dry_run=st.booleans(),
          archive=st.booleans())
    def prune(self, data: st.DataObject, age: int, prefix: str, dry_run: bool, archive: bool) -> None:
        """Sessions whose last write is older than the age go, unless leased; a dry
        run names exactly those and changes nothing; an archive brings one back whole."""
        store = self.handle(data)
        cutoff = self.now() - age * 1000
        old = {sid for sid, m in self.model.items() if m.key.startswith(prefix) and m.last_write() < cutoff}
        leased = {sid for sid in old if self.lease_live(self.model[sid])}
        with tempfile.TemporaryDirectory() as folder:
            report = store.prune(older_than=age, key_prefix=prefix, now=self.clock(), dry_run=dry_run,
                                 archive_to=folder if archive else None)
            assert set(report.deleted) == old - leased and set(report.kept_leased) == leased
            assert report.kept_written == () and report.dry_run == dry_run
            if dry_run:
                assert report.archived == ()
                return
            assert len(report.archived) == (len(report.deleted) if archive else 0)
            if report.archived:  # an archive is the native export: it comes back whole
                path = report.archived[0]
                sid = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
                gone = self.model[sid]
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
                back = store.restore_session(lines, key=f"restored-{len(self.model)}-{sid}")
                assert store.get_messages(back) == gone.messages
                assert store.get_current_branch(back) == gone.current and store.get_head(back) == gone.head()
                meta = store.get_metadata(back)
                assert meta is not None and meta.title == self.metadata_of(gone).title
                store.delete_session(back)
        for sid in report.deleted:
            del self.model[sid]

    def metadata_of(self, m: _ModelSession, sid: str = "") -> ss.SessionMetadata:
        preview = m.preview()
        return ss.SessionMetadata(
            session_id=sid, key=m.key, created_at=m.created_at, updated_at=m.updated_at,
            message_count=len(m.messages), reset_count=sum(x.type == "reset" for x in m.messages),
            last_reset_at=max((x.timestamp for x in m.messages if x.type == "reset"), default=None),
            forked_from=m.forked_from, branch_count=len(m.branches),
            title=m.title or (None if preview is None else preview[:60]), preview=preview)

    def metadata(self, sid: str) -> ss.SessionMetadata:
        return self.metadata_of(self.model[sid], sid)

    # -- messages ---------------------------------------------------------------------

    def _append(self, store: SessionStore, sid: str, m: _ModelSession, content: Any, fields: dict[str, Any],
                **kwargs: Any) -> ss.Message:
        """Append through ``store`` and apply it to the model (an auto-reset included)."""
        head = m.head()
        parent = kwargs.get("parent_id", head)
        resets = self.expect_reset(m, parent)
        segment = m.segment() if resets else []
        msg = store.append(sid, role="user", content=content, **kwargs, **fields)
        if resets:
            self._apply_reset(store, sid, m, segment, msg)
        else:
            m.add(self.message(msg, parent, content, fields))
        return msg

    @precondition(lambda self: self.model)
    @rule(data=st.data(), how=st.sampled_from(["head", "head", "root", "random", "named-head"]), content=_contents,
          fields=_fields)
    def append(self, data: st.DataObject, how: str, content: Any, fields: dict[str, Any]) -> None:
        sid, m = self.session(data)
        head = m.head()
        kwargs: dict[str, Any] = {}
        if how == "root":
            kwargs["parent_id"] = None
        elif how == "random" and m.messages:
            kwargs["parent_id"] = data.draw(st.sampled_from([x.id for x in m.messages]), label="parent")
        elif how == "named-head" and head is not None:
            kwargs["parent_id"] = head
        self._append(self.handle(data), sid, m, content, fields, **kwargs)  # unowned: advisory under a lease

    @precondition(lambda self: self.model)
    @rule(data=st.data(), root=st.booleans(), contents=st.lists(_contents, max_size=3), fields=_fields)
    def append_many(self, data: st.DataObject, root: bool, contents: list[Any], fields: dict[str, Any]) -> None:
        """A chain in one call: as many appends, or (when anything fails) none of them.
        (Without auto-reset: the model checks a reset against the store one append at a time.)"""
        if self.reset_config is not None:
            return
        sid, m = self.session(data)
        parent = None if root else m.head()
        written = self.handle(data).append_many(
            sid, [{"role": "user", "content": c, **fields} for c in contents], **({"parent_id": None} if root else {}))
        assert len(written) == len(contents)
        for msg, content in zip(written, contents, strict=True):
            m.add(self.message(msg, parent, content, fields))
            parent = msg.id

    def _apply_reset(self, store: SessionStore, sid: str, m: _ModelSession, segment: list[ss.Message],
                     incoming: ss.Message) -> None:
        """Check the store's auto-reset against the config, then record it in the model."""
        config = self.reset_config
        assert config is not None
        history = store.get_linear_history(sid)
        assert history[-1].id == incoming.id and store.get_head(sid) == incoming.id
        kept = segment[len(segment) - config.keep_count:] if config.keep_strategy == "last" else []
        expected = (["reset"] if config.insert_reset_marker else []) + [k.type for k in kept] + ["user"]
        assert [h.type for h in history] == expected
        for kept_copy, original in zip(history[-1 - len(kept):-1], kept, strict=True):
            assert kept_copy.content == original.content
            assert kept_copy.fields == {**original.fields, "reset_from": original.id}
            assert kept_copy.timestamp == self.now()
        self._record_reset(m, history)

    def _record_reset(self, m: _ModelSession, written: list[ss.Message]) -> None:
        parent: str | None = None
        for h in written:
            assert h.parent_id == parent
            m.messages.append(h)  # a new root chain: the head rule moves nothing...
            m.updated_at = max(m.updated_at, h.timestamp)
            parent = h.id
        current = m.branches[m.current]  # ...the head moves once, to the end of the new segment
        current.head, current.updated_at = parent, self.now()
        m.event(self.now())

    @precondition(lambda self: any(m.messages for m in self.model.values()))
    @rule(data=st.data(), content=_contents, fields=_fields)
    def edit(self, data: st.DataObject, content: Any, fields: dict[str, Any]) -> None:
        """A new version of a message: its sibling, and the current head."""
        sid = data.draw(st.sampled_from([s for s, m in self.model.items() if m.messages]), label="session")
        m = self.model[sid]
        old = data.draw(st.sampled_from(m.messages), label="message")
        if self.expect_reset(m, old.parent_id):  # onto the head and over a limit: the append rule's business
            return
        msg = self.handle(data).edit(sid, old.id, content=content, **fields)
        m.add(self.message(msg, old.parent_id, content, fields, role=old.role))
        current = m.branches[m.current]
        if current.head != msg.id:
            current.head, current.updated_at = msg.id, self.now()
            m.event(self.now())

    @precondition(lambda self: any(m.messages for m in self.model.values()))
    @rule(data=st.data())
    def regenerate(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from([s for s, m in self.model.items() if m.messages]), label="session")
        m = self.model[sid]
        old = data.draw(st.sampled_from(m.messages), label="message")
        branch = self.handle(data).regenerate(sid, old.id)
        current = m.branches[m.current]
        if current.head != old.parent_id:
            current.head, current.updated_at = old.parent_id, self.now()
            m.event(self.now())
        assert branch == ss.Branch(name=m.current, head_id=current.head, created_at=current.created_at,
                                   updated_at=current.updated_at)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def manual_reset(self, data: st.DataObject) -> None:
        sid, m = self.session(data)
        segment = m.segment()
        was_empty = m.head() is None
        result = self.handle(data).reset(sid, keep_strategy="last", keep_count=1)
        assert result.reset and result.reason == "manual"
        marker = self.reset_config.insert_reset_marker if self.reset_config else True
        assert [x.content for x in result.messages[1 if marker else 0:]] == [x.content for x in segment[-1:]]
        if was_empty and result.messages:  # an empty branch takes its new root by the head rule
            m.branches[m.current].updated_at = result.messages[0].timestamp
        self._record_reset(m, result.messages)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def append_refused(self, data: st.DataObject) -> None:
        sid, _ = self.session(data)
        store = self.handle(data)
        with pytest.raises(ss.MessageNotFound):
            store.append(sid, role="user", content="x", parent_id="no-such-message")
        with pytest.raises(ss.InvalidMessage):
            store.append(sid, role="user", content={1, 2})
        with pytest.raises(ss.InvalidMessage):
            store.append(sid, role="user", content={1: "a", "1": "b"})

    # -- branches ------------------------------------------------------------------------

    @precondition(lambda self: any(m.messages for m in self.model.values()))
    @rule(data=st.data(), name=_branch_names)
    def create_branch(self, data: st.DataObject, name: str) -> None:
        sid = data.draw(st.sampled_from([s for s, m in self.model.items() if m.messages]), label="session")
        m = self.model[sid]
        leaf = data.draw(st.sampled_from([x.id for x in m.messages]), label="leaf")
        store = self.handle(data)
        if name in m.branches:
            with pytest.raises(ss.BranchExists):
                store.create_branch(sid, name, leaf)
            return
        assert store.create_branch(sid, name, leaf) == ss.Branch(name=name, head_id=leaf, created_at=self.now(),
                                                                  updated_at=self.now())
        m.branches[name] = _ModelBranch(leaf, self.now(), self.now())
        m.event(self.now())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=_branch_names)
    def switch(self, data: st.DataObject, name: str) -> None:
        sid, m = self.session(data)
        store = self.handle(data)
        if name not in m.branches:
            with pytest.raises(ss.BranchNotFound):
                store.switch_to_branch(sid, name)
            return
        assert store.switch_to_branch(sid, name) == m.branches[name].head
        if m.current != name:
            m.current = name
            m.event(self.now())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=_branch_names, to_none=st.booleans())
    def move_head(self, data: st.DataObject, name: str, to_none: bool) -> None:
        sid, m = self.session(data)
        target = None if to_none or not m.messages else data.draw(st.sampled_from([x.id for x in m.messages]))
        store = self.handle(data)
        if name not in m.branches:
            with pytest.raises(ss.BranchNotFound):
                store.move_head(sid, target, branch=name)
            return
        moved = store.move_head(sid, target, branch=name)
        branch = m.branches[name]
        if branch.head != target:
            branch.head, branch.updated_at = target, self.now()
            m.event(self.now())
        assert moved == ss.Branch(name=name, head_id=branch.head, created_at=branch.created_at,
                                  updated_at=branch.updated_at)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=_branch_names)
    def delete_branch(self, data: st.DataObject, name: str) -> None:
        sid, m = self.session(data)
        store = self.handle(data)
        if name not in m.branches:
            with pytest.raises(ss.BranchNotFound):
                store.delete_branch(sid, name)
        elif name == m.current:
            with pytest.raises(ss.InvalidInput):
                store.delete_branch(sid, name)
        else:
            store.delete_branch(sid, name)
            del m.branches[name]
            m.event(self.now())

    @precondition(lambda self: self.model)
    @rule(data=st.data(), old=_branch_names, new=_branch_names)
    def rename_branch(self, data: st.DataObject, old: str, new: str) -> None:
        sid, m = self.session(data)
        store = self.handle(data)
        if old not in m.branches:
            with pytest.raises(ss.BranchNotFound):
                store.rename_branch(sid, old, new)
        elif new in m.branches:
            with pytest.raises(ss.BranchExists):
                store.rename_branch(sid, old, new)
        else:
            store.rename_branch(sid, old, new)
            m.branches = {(new if k == old else k): v for k, v in m.branches.items()}  # keeps its place
            m.branches[new].updated_at = self.now()
            m.current = new if m.current == old else m.current
            m.event(self.now())

    # -- leases ---------------------------------------------------------------------------

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners)
    def acquire(self, data: st.DataObject, owner: str) -> None:
        sid, m = self.session(data)
        result = self.handle(data).acquire_lock(sid, owner)
        lease = m.lease
        if self.lease_live(m) and lease.holder != owner:
            assert not result.acquired and result.holder_id == lease.holder
            return
        assert result.acquired
        if self.lease_live(m):
            lease.count += 1
        else:
            lease.holder, lease.count, lease.token = owner, 1, lease.token + 1
        assert result.token == lease.token
        lease.expires = self.now() + LEASE_MS

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners)
    def release(self, data: st.DataObject, owner: str) -> None:
        sid, m = self.session(data)
        holder = m.lease.holder if self.lease_live(m) else None
        if holder is not None and data.draw(st.booleans(), label="release the holder"):
            owner = holder  # mostly release what is held: the successful path must run often
        released = self.handle(data).release_lock(sid, owner)
        if holder != owner:
            assert released is False
            return
        assert released is True
        m.lease.count -= 1
        if m.lease.count == 0:
            m.lease.holder = None

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners)
    def renew(self, data: st.DataObject, owner: str) -> None:
        sid, m = self.session(data)
        result = self.handle(data).renew_lock(sid, owner)
        assert result.acquired == (self.lease_live(m) and m.lease.holder == owner)
        if result.acquired:
            m.lease.expires = self.now() + LEASE_MS

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners, stale=st.booleans())
    def fenced_append(self, data: st.DataObject, owner: str, stale: bool) -> None:
        """An append naming an owner and a fencing token: refused unless that lease is live and current."""
        sid, m = self.session(data)
        store = self.handle(data)
        token = max(0, m.lease.token - (1 if stale else 0))
        if self.lease_live(m) and m.lease.holder == owner and token == m.lease.token:
            self._append(store, sid, m, "fenced", {}, owner_id=owner, fencing_token=token)
        else:
            with pytest.raises(ss.SessionLocked):  # LeaseLost is a SessionLocked
                store.append(sid, role="user", content="refused", owner_id=owner, fencing_token=token)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners, thief=_owners, stall=st.booleans())
    def lock_block(self, data: st.DataObject, owner: str, thief: str, stall: bool) -> None:
        """Writes inside ``lock()`` are the holder's; after its lease expired and another
        owner took it, the block's next write is refused with ``LeaseLost``."""
        sid, m = self.session(data)
        store = self.handle(data)
        if self.lease_live(m) and m.lease.holder != owner:
            with pytest.raises(ss.LockTimeout):
                with store.lock(sid, owner, timeout=0):
                    pass  # pragma: no cover
            return
        taken = inside = False  # the lease was taken; the block's append is done (a failure after it: the release's)
        try:
            with store.lock(sid, owner, timeout=0) as held:
                taken = True
                if self.lease_live(m):
                    m.lease.count += 1
                else:
                    m.lease.holder, m.lease.count, m.lease.token = owner, 1, m.lease.token + 1
                m.lease.expires = self.now() + LEASE_MS
                assert held.token == m.lease.token
                self._append(store, sid, m, "inside", {})
                inside = True
                if stall and thief != owner:
                    self.clock.advance(LEASE_MS / 1000)  # the holder stalls past its lease
                    stolen = self.stores[-1].acquire_lock(sid, thief)
                    assert stolen.acquired and stolen.token == m.lease.token + 1
                    m.lease.holder, m.lease.count, m.lease.token = thief, 1, m.lease.token + 1
                    m.lease.expires = self.now() + LEASE_MS
                    with pytest.raises(ss.LeaseLost):
                        store.append(sid, role="user", content="zombie")
                    return  # the block's release finds the lease not its own: the thief keeps it
        except ss.StorageError:
            if inside:
                return  # the release failed: the append (acknowledged) stands, and so does the lease
            if not taken:
                raise  # the lease was not taken: as if never called
            # The block's append failed and left no trace; but the lease was taken (its
            # token issued: the next holder's is above it) and the block released it.
        m.lease.count -= 1
        if m.lease.count == 0:
            m.lease.holder = None

    @precondition(lambda self: self.model)
    @rule(data=st.data(), owner=_owners)
    def append_as_owner(self, data: st.DataObject, owner: str) -> None:
        sid, m = self.session(data)
        if self.lease_live(m) and m.lease.holder != owner:
            with pytest.raises(ss.SessionLocked):
                self.handle(data).append(sid, role="user", content="guarded", owner_id=owner)

    @rule(ms=st.sampled_from([1, 500, 999, 1000, 1001, 10_000]))
    def advance_clock(self, ms: int) -> None:
        self.clock.advance(ms / 1000)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), limit=st.sampled_from([1, 2, 5, 50]), flush=st.booleans())
    def read_a_path_end_from_a_fresh_store(self, data: st.DataObject, limit: int, flush: bool) -> None:
        """A store that never loaded the session reads a path's last messages from
        the end of its records (the saved tally and what follows it): exactly the
        model's, for the head and for any message's path."""
        sid, m = self.session(data)
        if flush:  # the tallies (with the head) the fresh store starts from
            self.handle(data).flush()
        leaf = data.draw(st.sampled_from([None, *(x.id for x in m.messages)]), label="leaf")
        fresh = self.open()
        try:
            expected = m.path(m.head() if leaf is None else leaf)[-limit:]
            assert fresh.get_linear_history(sid, leaf, limit=limit) == expected
        finally:
            fresh.close()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fmt=st.sampled_from(["openai", "anthropic"]))
    def build_a_context_three_ways(self, data: st.DataObject, fmt: str) -> None:
        """A context kept and built on message by message (this handle's, after its
        appends, moves and rewinds), one folded afresh (a store that never loaded the
        session) and one built whole from the model's path are the same."""
        sid, m = self.session(data)
        leaf = data.draw(st.sampled_from([None, *(x.id for x in m.messages)]), label="leaf")
        path = m.path(m.head() if leaf is None else leaf)
        if any(x.type != x.role for x in path):  # records a registered reader reads: not folded
            return
        kept = self.handle(data).build_context(sid, leaf, format=fmt)  # type: ignore[call-overload]
        fresh = self.open()
        try:
            afresh = fresh.build_context(sid, leaf, format=fmt)  # type: ignore[call-overload]
        finally:
            fresh.close()
        whole = ss._context(ss._path_turns([x for x in path if x.type != "reset"], lambda _: [], []), fmt)
        assert kept == afresh == whole

    # -- faults ---------------------------------------------------------------------------

    @precondition(lambda self: self.model and faults_of(self.stores[0]) is not None)
    @rule(data=st.data(), after=st.integers(0, 4), call=st.sampled_from(sorted(_CALLS)))
    def fault(self, data: st.DataObject, after: int, call: str) -> None:
        """A write path fails (``ENOSPC``/``EIO``) somewhere inside a call: the call raises
        :class:`StorageError` and leaves no trace, or succeeds as if nothing happened."""
        if call == "create_branch" and not any(m.messages for m in self.model.values()):
            return
        store = self.handle(data)
        faulty = faults_of(store)
        assert faulty is not None
        op = data.draw(st.sampled_from(WRITE_OPS if isinstance(faulty, FaultyFileSystem) else faulty.OPS),
                       label="op")
        before = copy.deepcopy((self.model, self.clock.now))
        faulty.fail_next(op, data.draw(st.sampled_from([errno.ENOSPC, errno.EIO]), label="errno"), after=after)
        kwargs = {name: data.draw(strategy, label=name) for name, strategy in _CALLS[call].items()}
        try:
            getattr(self, call)(data=data, **kwargs)
        except ss.StorageError:
            if call in ("delete", "prune"):  # past its commit, a deletion's sync may fail: then it is done
                gone = [sid for sid in before[0] if not self.stores[0].has_session(sid)]
                self.model, self.clock.now = before
                for sid in gone:
                    del self.model[sid]
            else:
                self.model, self.clock.now = before
        finally:
            faulty._failures.clear()

    @precondition(lambda self: self.model and faults_of(self.stores[0]) is not None)
    @rule(data=st.data(), after=st.integers(0, 3),
          call=st.sampled_from(["append", "append_many", "create_branch", "switch", "manual_reset", "acquire",
                               "release"]))
    def landed_fault(self, data: st.DataObject, after: int, call: str) -> None:
        """A record write (a log record, a lease) lands and then reports failure, as a
        write whose fsync fails does: the call raises :class:`StorageError` and leaves no
        trace (the store takes back what landed), or succeeds as if nothing happened.
        (Not a ``lock()`` block: the writes inside it stand when its release fails.)"""
        if call == "create_branch" and not any(m.messages for m in self.model.values()):
            return
        store = self.handle(data)
        faulty = faults_of(store)
        assert faulty is not None
        op = data.draw(st.sampled_from(["append", "write_in_place"] if isinstance(faulty, FaultyFileSystem) else
                                       ["append_message", "append_messages", "append_event", "write_lease"]),
                       label="op")
        before = copy.deepcopy((self.model, self.clock.now))
        faulty.fail_next(op, errno.EIO, after=after, landed=True)
        kwargs = {name: data.draw(strategy, label=name) for name, strategy in _CALLS[call].items()}
        try:
            getattr(self, call)(data=data, **kwargs)
        except ss.StorageError:
            self.model, self.clock.now = before
        finally:
            faulty._failures.clear()

    @precondition(lambda self: self.model and faults_of(self.stores[0]) is not None)
    @rule(data=st.data(), after=st.integers(0, 3))
    def failing_reset(self, data: st.DataObject, after: int) -> None:
        """A reset writes several records: one of them fails; the reset leaves no trace."""
        store = self.handle(data)
        faulty = faults_of(store)
        assert faulty is not None
        before = copy.deepcopy((self.model, self.clock.now))
        faulty.fail_next("append" if isinstance(faulty, FaultyFileSystem) else "append_message", errno.ENOSPC,
                         after=after)
        try:
            self.manual_reset(data=data)
        except ss.StorageError:
            self.model, self.clock.now = before
        finally:
            faulty._failures.clear()

    @precondition(lambda self: self.model and faults_of(self.stores[0]) is not None)
    @rule(data=st.data(), step=st.integers(0, 12),
          call=st.sampled_from(["manual_reset", "delete", "import_session", "resolve"]))
    def crash(self, data: st.DataObject, step: int, call: str) -> None:
        """The process dies at a write step inside a call. A new process (a reopened
        handle) finds the call done whole or not at all, and nothing acknowledged lost;
        a reset's head is on the old segment or on the whole new one."""
        which = data.draw(st.integers(0, self.handles - 1), label="handle")
        store = self.stores[which]
        faulty = faults_of(store)
        assert faulty is not None
        before = copy.deepcopy((self.model, self.clock.now))
        sid = data.draw(st.sampled_from(list(self.model)), label="session")
        faulty.crash_at(step)
        try:
            if call == "manual_reset":
                result = store.reset(sid, keep_strategy="last", keep_count=1)
            elif call == "delete":
                store.delete_session(sid)
            elif call == "import_session":
                chain = [ss.Message(id=f"c{i}", parent_id=f"c{i - 1}" if i else None, type="user", role="user",
                                    content=f"c{i}", timestamp=1_000) for i in range(3)]
                store.import_session(f"crash-import-{self.crashes}", chain)
            else:
                store.resolve(f"crash-new-{self.crashes}")
        except SimulatedCrash:
            crashed = True
        else:
            crashed = False
        faulty.crashed, faulty._crash_op = False, None
        self.stores[which] = self.open()  # the dead process's handle is gone; a new one starts
        fresh = self.stores[which]
        if not crashed:  # it ran through: the model learns it as the plain rule would
            self.model, self.clock.now = before
            self._crash_outcome(fresh, call, sid, done=True, result=result if call == "manual_reset" else None)
            return
        self.model, self.clock.now = before
        self._crash_outcome(fresh, call, sid, done=None, result=None)

    def _crash_outcome(self, fresh: SessionStore, call: str, sid: str, *, done: bool | None, result: Any) -> None:
        """Fold what a (maybe crashed) call left into the model, checking it is allowed."""
        m = self.model[sid]
        if call == "delete":
            if not fresh.has_session(sid):
                assert not fresh.has_key(m.key)
                del self.model[sid]
            else:
                assert done is not True
            return
        if call in ("import_session", "resolve"):
            key = f"crash-import-{self.crashes}" if call == "import_session" else f"crash-new-{self.crashes}"
            self.crashes += 1
            if not fresh.has_key(key):
                assert done is not True
                return
            new = fresh.resolve(key)
            created = self.model[new] = _ModelSession(key, fresh.get_metadata(new).created_at)  # type: ignore[union-attr]
            if call == "import_session":
                created.messages = fresh.get_messages(new)
                assert [x.id for x in created.messages] == ["c0", "c1", "c2"]  # whole or absent
                created.branches["main"] = _ModelBranch("c2", created.created_at, 1_000)  # by the head rule
            return
        # a reset: extra records may remain (a stray chain), and the head is on the old
        # segment, or on the end of the whole new one: never on a marker without its copies
        stored = fresh.get_messages(sid)
        assert stored[:len(m.messages)] == m.messages  # nothing acknowledged lost or changed
        extra = stored[len(m.messages):]
        segment = m.segment()
        expected = (["reset"] if not self.reset_config or self.reset_config.insert_reset_marker else []) + [
            x.type for x in segment[-1:]]
        assert [x.type for x in extra] == expected[:len(extra)]
        head = fresh.get_head(sid)
        for x in extra:
            m.messages.append(x)
            m.updated_at = max(m.updated_at, x.timestamp)
        current = m.branches[m.current]
        if head != current.head:  # the move landed: it was the last write, so the new segment is whole
            assert len(extra) == len(expected) and extra and head == extra[-1].id
        branch = fresh.get_branch(sid, m.current)
        assert branch is not None
        current.head, current.updated_at = head, branch.updated_at  # (a move to the same head may have landed)
        m.event(branch.updated_at)

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def every_handle_matches_the_model(self) -> None:
        for store in self.stores:
            assert sorted(store.get_all_session_ids()) == sorted(self.model)
            for sid, m in self.model.items():
                assert store.has_session(sid) and store.has_key(m.key) and store.resolve(m.key) == sid
                assert store.get_messages(sid) == m.messages  # every field of every message
                assert store.get_branches(sid) == [ss.Branch(name=n, head_id=b.head, created_at=b.created_at,
                                                              updated_at=b.updated_at) for n, b in m.branches.items()]
                assert store.get_current_branch(sid) == m.current and store.get_head(sid) == m.head()
                assert store.get_linear_history(sid) == m.path(m.head())
                assert store.get_metadata(sid) == self.metadata(sid)
                info = store.get_lock(sid)
                if self.lease_live(m):
                    assert info is not None and (info.holder_id, info.token, info.count, info.expires_at) == (
                        m.lease.holder, m.lease.token, m.lease.count, m.lease.expires)
                else:
                    assert info is None


def state_machine_tests(storage: StorageOpener, *, handles: int = 2, max_examples: int = 50,
                        steps: int = 30) -> type[unittest.TestCase]:
    """A ``TestCase`` running :class:`StoreMachine` on ``storage``; assign it to a ``Test*`` name."""
    machine = type("StoreMachineFor_" + getattr(storage, "__name__", "storage"), (StoreMachine,),
                   {"storage": staticmethod(storage), "handles": handles})
    case: type[unittest.TestCase] = machine.TestCase  # type: ignore[attr-defined]
    case.settings = settings(max_examples=max_examples, stateful_step_count=steps, deadline=None)  # type: ignore[attr-defined]
    return case


# ============================================================================
# Crash sweeps: every write step of every call that writes more than once
# ============================================================================


class CrashTests:
    """Crash each call that writes several times at its first write step, then at its
    second, ... until it runs through; after each crash a new handle (a new process,
    as far as the store can tell) finds the call done whole or not at all, and
    nothing acknowledged lost. Where the state machine's ``crash`` rule samples
    steps at random, this tries every one, so a store that writes in the wrong order
    (a key link removed before its log, a head moved before a reset's copies) fails
    here every run.

    Needs a storage on a :class:`FaultyFileSystem` (``in_memory_storage`` and
    ``file_storage`` are) or in a :class:`FaultyStorage` (``temporary_storage``
    wraps every storage in one); subclass and set ``storage``.
    """

    storage: ClassVar[StorageOpener] = staticmethod(in_memory_storage)
    file_steps = True

    def sweep(self, setup: Callable[[SessionStore], Any], call: Callable[[SessionStore, Any], Any],
              verify: Callable[[SessionStore, Any, bool], None]) -> int:
        """Crash ``call`` at each step in turn, each time on fresh data; returns the steps."""
        step = 0
        while True:
            with type(self).storage() as open_store:
                store = open_store(clock=FakeClock(), lock_timeout_ms=LEASE_MS)
                store.init()
                faulty = faults_of(store)
                assert faulty is not None, "CrashTests needs a FaultyFileSystem or a FaultyStorage"
                self.file_steps = isinstance(faulty, FaultyFileSystem)  # finer steps than a storage's calls
                state = setup(store)
                faulty.crash_at(step)
                try:
                    call(store, state)
                except SimulatedCrash:
                    done = False
                else:
                    done = True
                faulty.crashed, faulty._crash_op = False, None  # the dead handle is left as it was
                fresh = open_store(clock=FakeClock(), lock_timeout_ms=LEASE_MS)
                fresh.init()
                try:
                    verify(fresh, state, done)
                    assert fresh.repair().ok and fresh.check().ok
                finally:
                    fresh.close()
            if done:
                return step
            step += 1
            assert step < 200, "the call never ran through"

    @staticmethod
    def chat(store: SessionStore, key: str = "k") -> tuple[str, list[ss.Message]]:
        sid = store.resolve(key)
        for role in ("system", "user", "assistant"):
            store.append(sid, role=role, content=f"{role} text")
        return sid, store.get_messages(sid)

    def test_a_delete_is_whole_or_absent_at_every_step(self) -> None:
        def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], done: bool) -> None:
            sid, before = state
            if fresh.has_session(sid):
                assert not done
                assert fresh.has_key("k") and fresh.resolve("k") == sid and fresh.get_messages(sid) == before
            else:
                assert not fresh.has_key("k") and fresh.get_metadata(sid) is None
                assert fresh.resolve("k") != sid  # the key works again: a new session
        steps = self.sweep(self.chat, lambda store, state: store.delete_session(state[0]), verify)
        assert steps >= (2 if self.file_steps else 1)

    def test_a_prune_leaves_each_session_whole_or_gone_and_a_rerun_finishes_it(self) -> None:
        def setup(store: SessionStore) -> tuple[list[tuple[str, list[ss.Message]]], str]:
            chats = [self.chat(store, key) for key in ("old:1", "old:2", "old:3")]
            clock = store._clock
            assert isinstance(clock, FakeClock)
            clock.advance(3600)
            return chats, self.chat(store, "new")[0]

        def verify(fresh: SessionStore, state: tuple[list[tuple[str, list[ss.Message]]], str], done: bool) -> None:
            chats, new = state
            there = [(sid, before) for sid, before in chats if fresh.has_session(sid)]
            for sid, before in there:  # whole
                assert fresh.get_messages(sid) == before
            assert not done or not there
            at = 1_700_000_000.0 + 3600
            report = fresh.prune(older_than=60, now=at)  # a rerun finishes the job
            assert sorted(report.deleted) == sorted(sid for sid, _ in there)
            assert fresh.list_sessions() == [fresh.get_metadata(new)]
        steps = self.sweep(setup, lambda store, state: store.prune(older_than=60), verify)
        assert steps >= 3

    def test_a_reset_never_moves_the_head_onto_a_marker_without_its_copies(self) -> None:
        def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], done: bool) -> None:
            sid, before = state
            stored = fresh.get_messages(sid)
            assert stored[:len(before)] == before  # nothing acknowledged lost or changed
            extra = stored[len(before):]
            assert [m.type for m in extra] == ["reset", "assistant"][:len(extra)]
            head = fresh.get_head(sid)
            if head != before[-1].id:  # the move landed: the whole new segment is there
                assert len(extra) == 2 and head == extra[-1].id and extra[-1].content == before[-1].content
            assert head != before[-1].id or not done
        steps = self.sweep(self.chat, lambda store, state: store.reset(state[0], keep_strategy="last", keep_count=1),
                           verify)
        assert steps >= (3 if self.file_steps else 2)

    def test_an_import_is_whole_or_absent_at_every_step(self) -> None:
        chain = [ss.Message(id=f"c{i}", parent_id=f"c{i - 1}" if i else None, type="user", role="user",
                            content=f"c{i}", timestamp=1_000) for i in range(3)]

        def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], done: bool) -> None:
            sid, before = state
            assert fresh.resolve("k") == sid and fresh.get_messages(sid) == before
            if fresh.has_key("imported"):
                new = fresh.resolve("imported")
                assert fresh.get_messages(new) == chain and fresh.get_head(new) == "c2"
            else:
                assert not done
        self.sweep(self.chat, lambda store, state: store.import_session("imported", chain), verify)

    def test_a_creation_is_whole_or_absent_and_never_hides_another_at_every_step(self) -> None:
        def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], done: bool) -> None:
            sid, before = state
            assert fresh.resolve("k") == sid and fresh.get_messages(sid) == before
            assert sorted(fresh.get_all_session_ids()) == sorted(
                [sid] + ([fresh.resolve("new")] if fresh.has_key("new") else []))
            assert fresh.has_key("new") or not done
        self.sweep(self.chat, lambda store, state: store.resolve("new"), verify)

    def test_a_chain_leaves_a_prefix_of_itself_at_every_step(self) -> None:
        chain: list[dict[str, Any]] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]

        def verify(fresh: SessionStore, state: tuple[str, list[ss.Message]], done: bool) -> None:
            sid, before = state
            history = fresh.get_linear_history(sid)
            assert history[:len(before)] == before and fresh.get_messages(sid) == history
            assert [(m.role, m.content) for m in history[len(before):]] == [
                (x["role"], x["content"]) for x in chain][:len(history) - len(before)]
            assert len(history) == len(before) + len(chain) or not done
        self.sweep(self.chat, lambda store, state: store.append_many(state[0], chain), verify)

    def test_a_write_that_landed_but_reported_failure_is_taken_back(self) -> None:
        """A log record or a lease record lands and its call then fails (an ``fsync``
        error after the write): the call raises and leaves nothing, so no lease is held
        by an owner who was told it failed, a lease whose release or renewal failed is
        held as before, no message outlives its error, and the next fencing token is
        still above every one issued before."""
        for case in range(5):
            with type(self).storage() as open_store:
                clock = FakeClock()
                store = open_store(clock=clock, lock_timeout_ms=LEASE_MS)
                store.init()
                faulty = faults_of(store)
                assert faulty is not None, "CrashTests needs a FaultyFileSystem or a FaultyStorage"
                op, call = ((("write_in_place", "acquire"), ("write_in_place", "release"),
                             ("write_in_place", "renew"), ("append", "append"), ("sync", "append"))
                            if isinstance(faulty, FaultyFileSystem) else
                            (("write_lease", "acquire"), ("write_lease", "release"), ("write_lease", "renew"),
                             ("append_message", "append"), ("commit", "append")))[case]
                sid, before = self.chat(store)
                first = store.acquire_lock(sid, "earlier", timeout=0)
                assert first.acquired and first.token is not None
                if call in ("acquire", "append"):
                    assert store.release_lock(sid, "earlier")
                held = store.get_lock(sid)
                clock.advance(LEASE_MS / 4000)  # a renewal that lands moves the expiry
                faulty.fail_next(op, errno.EIO, landed=True)
                with pytest.raises(ss.StorageError):
                    if call == "acquire":
                        store.acquire_lock(sid, "told-it-failed")
                    elif call == "release":
                        store.release_lock(sid, "earlier")
                    elif call == "renew":
                        store.renew_lock(sid, "earlier")
                    else:
                        store.append(sid, role="user", content="told it failed")
                fresh = open_store(clock=clock, lock_timeout_ms=LEASE_MS)
                fresh.init()
                try:
                    assert fresh.get_messages(sid) == before and fresh.get_lock(sid) == held, (call, held)
                    assert fresh.check().ok, fresh.check()
                    if held is not None:
                        assert fresh.release_lock(sid, "earlier")
                    taken = fresh.acquire_lock(sid, "next", timeout=0)
                    assert taken.acquired and taken.token is not None and taken.token > first.token
                finally:
                    fresh.close()


# ============================================================================
# Contract tests for the error cases
# ============================================================================


class ContractTests:
    """Plain pytest tests of the documented errors; subclass and set ``storage``.

    Each test checks the error's type (and builtin twin) and that nothing was
    written: the session reads the same before and after.
    """

    storage: ClassVar[StorageOpener] = staticmethod(in_memory_storage)

    @pytest.fixture
    def open_store(self) -> Iterator[StoreFactory]:
        """Opens stores on one storage with one clock; all are closed at the end."""
        clock = FakeClock()
        opened: list[SessionStore] = []
        with type(self).storage() as open_store:
            def factory(**options: Any) -> SessionStore:
                store = open_store(clock=clock, lock_timeout_ms=LEASE_MS, **options)
                opened.append(store)
                store.init()
                return store
            try:
                yield factory
            finally:
                for store in opened:
                    store.close()

    @pytest.fixture
    def store(self, open_store: StoreFactory) -> SessionStore:
        return open_store()

    @staticmethod
    def snapshot(store: SessionStore, sid: str) -> tuple[Any, ...]:
        return (store.get_messages(sid), store.get_branches(sid), store.get_current_branch(sid),
                store.get_head(sid), store.get_lock(sid))

    @pytest.fixture
    def sid(self, store: SessionStore) -> str:
        sid = store.resolve("contract")
        first = store.append(sid, role="user", content="first")
        store.create_branch(sid, "alt", first.id)
        return sid

    def test_unknown_session_everywhere(self, store: SessionStore) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.append("nope", role="user", content="x"),
            lambda: store.get_messages("nope"), lambda: store.get_message("nope", "m"),
            lambda: store.get_linear_history("nope"), lambda: store.get_children("nope", "m"),
            lambda: store.get_tree("nope"), lambda: store.get_leaves("nope"),
            lambda: store.get_branches("nope"), lambda: store.create_branch("nope", "b", "m"),
            lambda: store.switch_to_branch("nope", "main"), lambda: store.get_head("nope"),
            lambda: store.acquire_lock("nope", "o"), lambda: store.release_lock("nope", "o"),
            lambda: store.delete_session("nope"), lambda: store.reset("nope"),
        ]
        for call in calls:
            with pytest.raises(ss.SessionNotFound) as info:
                call()
            assert isinstance(info.value, KeyError) and info.value.session_id == "nope"
        assert store.get_metadata("nope") is None and not store.has_session("nope")

    @pytest.mark.parametrize("bad", [
        {"content": object()}, {"content": float("nan")}, {"content": "\ud800"}, {"role": ""},
        {"role": None}, {"type": "a\nb"}, {"id": ""}, {"id": "x" * 1000}, {"parentId": "camel"},
        {"timestamp": 1}, {"parent_id": 5}, {"owner_id": ""},
        {"type": "reset"}, {"type": "damaged"}, {"role": "reset"}, {"role": "damaged"},  # only the store writes these
    ])
    def test_invalid_messages_write_nothing(self, store: SessionStore, sid: str, bad: dict[str, Any]) -> None:
        before = self.snapshot(store, sid)
        with pytest.raises(ss.InvalidInput):
            store.append(sid, **{"role": "user", "content": "x", **bad})
        assert self.snapshot(store, sid) == before

    def test_a_chain_with_a_reserved_type_writes_nothing(self, store: SessionStore, sid: str) -> None:
        before = self.snapshot(store, sid)
        with pytest.raises(ss.InvalidMessage, match="reserved"):
            store.append_many(sid, [{"role": "user", "content": "fine"}, {"role": "system", "content": "x",
                                                                          "type": "reset"}])
        assert self.snapshot(store, sid) == before

    def test_duplicate_id_and_unknown_parent_write_nothing(self, store: SessionStore, sid: str) -> None:
        head = store.get_head(sid)
        before = self.snapshot(store, sid)
        with pytest.raises(ss.DuplicateMessage):
            store.append(sid, role="user", content="x", id=head)
        with pytest.raises(ss.MessageNotFound):
            store.append(sid, role="user", content="x", parent_id="ghost")
        assert self.snapshot(store, sid) == before

    def test_repeating_an_append_by_id_writes_nothing_twice(self, store: SessionStore, sid: str) -> None:
        first = store.append(sid, role="user", content="retry me", id="retry-1", metadata={"n": 1})
        before = self.snapshot(store, sid)
        assert store.append(sid, role="user", content="retry me", id="retry-1", metadata={"n": 1}) == first
        assert self.snapshot(store, sid) == before

    def test_branch_errors_write_nothing(self, store: SessionStore, sid: str) -> None:
        head = store.get_head(sid)
        assert head is not None
        before = self.snapshot(store, sid)
        with pytest.raises(ss.BranchExists):
            store.create_branch(sid, "alt", head)
        with pytest.raises(ss.MessageNotFound):
            store.create_branch(sid, "new", "ghost")
        with pytest.raises(ss.BranchNotFound):
            store.switch_to_branch(sid, "ghost")
        for name in ("", "a\x00b", "x" * 300):
            with pytest.raises(ss.InvalidInput):
                store.create_branch(sid, name, head)
        assert self.snapshot(store, sid) == before

    def test_lock_errors(self, store: SessionStore, sid: str) -> None:
        assert store.acquire_lock(sid, "holder").acquired
        before = self.snapshot(store, sid)
        with pytest.raises(ValueError):
            store.acquire_lock(sid, "other", timeout=-1)
        with pytest.raises(ss.LockTimeout):
            with store.lock(sid, "other", timeout=0):
                pass  # pragma: no cover
        with pytest.raises(ss.SessionLocked):
            store.append(sid, role="user", content="x", owner_id="other")
        with pytest.raises(ss.InvalidInput):
            store.acquire_lock(sid, "")
        assert store.release_lock(sid, "other") is False
        assert self.snapshot(store, sid) == before

    # Every public method that changes a session, called with the keywords the test
    # gives it. ``head`` is the session's head; the session has a branch "alt".
    WRITES: ClassVar[dict[str, Callable[..., object]]] = {
        "append": lambda s, sid, head, **kw: s.append(sid, role="user", content="x", **kw),
        "append_many": lambda s, sid, head, **kw: s.append_many(sid, [{"role": "user", "content": "x"}], **kw),
        "reset": lambda s, sid, head, **kw: s.reset(sid, **kw),
        "import_messages": lambda s, sid, head, **kw: s.import_messages(sid, [ss.Message(
            id="imported", parent_id=head, type="user", role="user", content="x", timestamp=1)], **kw),
        "create_branch": lambda s, sid, head, **kw: s.create_branch(sid, "new", head, **kw),
        "switch_to_branch": lambda s, sid, head, **kw: s.switch_to_branch(sid, "alt", **kw),
        "move_head": lambda s, sid, head, **kw: s.move_head(sid, None, **kw),
        "rename_branch": lambda s, sid, head, **kw: s.rename_branch(sid, "alt", "renamed", **kw),
        "delete_branch": lambda s, sid, head, **kw: s.delete_branch(sid, "alt", **kw),
        "fork_session": lambda s, sid, head, **kw: s.fork_session(sid, **kw),
        "delete_session": lambda s, sid, head, **kw: s.delete_session(sid, **kw),
    }

    @pytest.mark.parametrize("write", sorted(WRITES))
    def test_every_write_is_fenced_by_the_lease(self, open_store: StoreFactory, store: SessionStore, sid: str,
                                                write: str) -> None:
        """No write of any kind goes through under another owner's lease: not with
        another owner, not with a stale token, not with no owner on a store made with
        ``require_lock``; and nothing is written. The holder's own write goes through."""
        call, head = self.WRITES[write], store.get_head(sid)
        lease = store.acquire_lock(sid, "holder")
        assert lease.acquired and lease.token is not None
        strict = open_store(require_lock=True)
        before, sessions = self.snapshot(store, sid), sorted(store.get_all_session_ids())
        attempts: list[tuple[SessionStore, dict[str, Any], type[Exception]]] = [
            (store, {"owner_id": "other"}, ss.SessionLocked),
            (store, {"fencing_token": lease.token + 1}, ss.LeaseLost),
            (store, {"owner_id": "holder", "fencing_token": lease.token + 1}, ss.LeaseLost),
            (strict, {}, ss.SessionLocked),
        ]
        for writer, keywords, error in attempts:
            with pytest.raises(error):
                call(writer, sid, head, **keywords)
            assert self.snapshot(store, sid) == before, (write, keywords)
            assert sorted(store.get_all_session_ids()) == sessions, (write, keywords)
        call(store, sid, head, owner_id="holder", fencing_token=lease.token)
        if write == "delete_session":
            assert not store.has_session(sid)
        elif write == "fork_session":
            assert len(store.get_all_session_ids()) == len(sessions) + 1
        else:
            assert self.snapshot(store, sid) != before

    def test_a_lock_block_fences_every_write_it_makes(self, open_store: StoreFactory, store: SessionStore,
                                                       sid: str) -> None:
        """Inside ``lock()`` the holder's owner and token are implied for every write."""
        head = store.get_head(sid)
        assert head is not None
        strict = open_store(require_lock=True)
        with store.lock(sid, "holder"):
            for name in ("append", "append_many", "import_messages", "create_branch", "switch_to_branch",
                         "move_head", "reset", "fork_session"):
                self.WRITES[name](store, sid, head)
            store.rename_branch(sid, "alt", "renamed")
            store.delete_branch(sid, "new")
            with pytest.raises(ss.SessionLocked):  # the block is the holder's, not the other store's
                strict.delete_session(sid)
            store.delete_session(sid)
        assert not store.has_session(sid)

    def test_bad_keys(self, store: SessionStore) -> None:
        for key in ("", None, 42, "x" * 100_000, "\udcff"):
            with pytest.raises(ss.InvalidKey):
                store.resolve(key)  # type: ignore[arg-type]
        assert store.get_all_session_ids() == []

    def test_bad_reset_settings_write_nothing(self, store: SessionStore, sid: str) -> None:
        before = self.snapshot(store, sid)
        with pytest.raises(ss.InvalidInput):
            store.reset(sid, keep_strategy="nope")
        with pytest.raises(ss.InvalidInput):
            store.reset(sid, max_messages=-1)
        assert self.snapshot(store, sid) == before

    def test_closed_store(self, store: SessionStore) -> None:
        store.close()
        with pytest.raises(ss.StoreClosed):
            store.resolve("k")


# ============================================================================
# Fault injection
# ============================================================================


class SimulatedCrash(BaseException):
    """Raised by :class:`FaultyFileSystem` at the simulated crash; the "process" is dead.

    A ``BaseException`` so that no ``except Exception`` in the store can tidy up:
    whatever was written stays exactly as a real crash would leave it.
    """


class _Faults:
    """What :class:`FaultyFileSystem` and :class:`FaultyStorage` share: faults armed per
    operation, a crash at the n-th write operation, and the count of operations."""

    def __init__(self) -> None:
        self._failures: dict[str, list[tuple[int, int, bool]]] = {}  # op -> [(skip, errno, landed)]
        self._crash_op: int | None = None
        self.ops = 0
        self.crashed = False

    def crash_at(self, n: int) -> None:
        """The ``n``-th write operation from now crashes (0: the next)."""
        self._crash_op = self.ops + n

    def _error(self, code: int, op: str, what: str) -> OSError:
        raise NotImplementedError  # pragma: no cover

    def _step(self, op: str, what: str) -> OSError | None:
        """Count a write operation; raise the fault armed for it, or return it when it
        is to be raised once the operation has landed."""
        if self.crashed:
            raise SimulatedCrash("the simulated process has crashed")
        if self._crash_op is not None and self.ops >= self._crash_op:
            self.crashed = True
            raise SimulatedCrash(f"crashed at {op} {what}")
        self.ops += 1
        armed = self._failures.get(op)
        if armed:
            skip, code, landed = armed[0]
            if skip:
                armed[0] = (skip - 1, code, landed)
                return None
            armed.pop(0)
            error = self._error(code, op, what)
            if not landed:
                raise error
            return error
        return None


class FaultyFileSystem(_Faults, FileSystem):
    """Wraps a :class:`~session_store.FileSystem` and injects faults into every write path.

    Arm faults with:

    - ``fail_next(op, code=ENOSPC, *, after=0)``: the next call of ``op`` (one of
      :data:`WRITE_OPS`; ``after`` skips that many first) raises ``OSError(code)``
      having done nothing (for ``append``: written nothing). With ``landed=True`` the
      call does its work first and then raises, as an ``fsync`` failing after a
      ``pwrite`` or a rename does: the caller must undo what it cannot vouch for.
    - ``fail_next_append(code)``, ``fail_next_sync()``: the same for those two.
    - ``short_next_append(nbytes)``: the next append writes a prefix, then raises ``EIO``.
    - ``crash_after(nbytes)``: appends write at most ``nbytes`` more bytes in all, then
      :class:`SimulatedCrash` is raised and every later call refused.
    - ``crash_at(n)``: the ``n``-th write operation from now (0: the next one) crashes
      instead of running (an append first writes half of its data): with it, a test
      can crash a store between any two steps of any operation (creations,
      deletions, resets, imports, leases, repairs).

    ``ops`` counts the write operations done so far; ``inner`` is the real file
    system, for reopening after a crash.
    """

    def __init__(self, inner: FileSystem) -> None:
        super().__init__()
        self.inner = inner
        self._short: int | None = None
        self._crash_budget: int | None = None

    def __repr__(self) -> str:
        return f"FaultyFileSystem({self.inner!r})"

    def fail_next(self, op: str, code: int = errno.ENOSPC, *, after: int = 0, landed: bool = False) -> None:
        """The next call of ``op`` (after ``after`` more) raises ``OSError(code)``:
        before doing anything, or with ``landed`` after doing its work."""
        if op not in WRITE_OPS:
            raise ValueError(f"unknown write operation {op!r}; known: {', '.join(WRITE_OPS)}")
        self._failures.setdefault(op, []).append((after, code, landed))

    def fail_next_append(self, code: int = errno.ENOSPC) -> None:
        """The next append raises ``OSError(code)`` having written nothing."""
        self.fail_next("append", code)

    def fail_next_sync(self) -> None:
        """The next sync raises ``OSError(EIO)``."""
        self.fail_next("sync", errno.EIO)

    def short_next_append(self, nbytes: int) -> None:
        """The next append writes only ``nbytes`` bytes, then raises ``OSError(EIO)``."""
        self._short = nbytes

    def crash_after(self, nbytes: int) -> None:
        """Appends write at most ``nbytes`` more bytes in all; then the simulated crash."""
        self._crash_budget = nbytes

    def _alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the simulated process has crashed")

    def _error(self, code: int, op: str, what: str) -> OSError:
        return OSError(code, errno.errorcode.get(code, "error"), what)

    @staticmethod
    def _landed(error: OSError | None) -> None:
        """Raise the fault of an operation that has done its work."""
        if error is not None:
            raise error

    def append(self, path: str, data: bytes) -> None:
        """Append, or inject the armed fault."""
        self._alive()
        if self._crash_op is not None and self.ops >= self._crash_op:
            self.inner.append(path, data[: len(data) // 2])  # a torn write, as a kill mid-write leaves
            self.crashed = True
            raise SimulatedCrash(f"crashed writing {path}")
        landed = self._step("append", path)
        if self._short is not None:
            n, self._short = self._short, None
            self.inner.append(path, data[:n])
            raise OSError(errno.EIO, f"short write: {n} of {len(data)} bytes", path)
        if self._crash_budget is not None:
            if len(data) > self._crash_budget:
                self.inner.append(path, data[: self._crash_budget])
                self.crashed = True
                raise SimulatedCrash(f"crashed writing {path}")
            self._crash_budget -= len(data)
        self.inner.append(path, data)
        self._landed(landed)

    def sync(self, path: str) -> None:
        """Sync, or fail when armed."""
        landed = self._step("sync", path)
        self.inner.sync(path)
        self._landed(landed)

    def truncate(self, path: str, size: int) -> None:
        """Truncate, or fail when armed."""
        landed = self._step("truncate", path)
        self.inner.truncate(path, size)
        self._landed(landed)

    def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Replace a file, or fail when armed (leaving the old one)."""
        landed = self._step("write_atomic", path)
        self.inner.write_atomic(path, data, durable=durable)
        self._landed(landed)

    def write_in_place(self, path: str, data: bytes, *, durable: bool = False) -> None:
        """Overwrite a small file, or fail when armed."""
        landed = self._step("write_in_place", path)
        self.inner.write_in_place(path, data, durable=durable)
        self._landed(landed)

    def makedirs(self, path: str, *, durable: bool = True) -> None:
        """Create directories, or fail when armed."""
        landed = self._step("makedirs", path)
        self.inner.makedirs(path, durable=durable)
        self._landed(landed)

    def rename(self, src: str, dst: str, *, durable: bool = True) -> None:
        """Rename, or fail when armed."""
        landed = self._step("rename", src)
        self.inner.rename(src, dst, durable=durable)
        self._landed(landed)

    def remove(self, path: str, *, durable: bool = False) -> None:
        """Remove a file, or fail when armed."""
        landed = self._step("remove", path)
        self.inner.remove(path, durable=durable)
        self._landed(landed)

    def remove_tree(self, path: str) -> None:
        """Remove a tree, or fail when armed."""
        landed = self._step("remove_tree", path)
        self.inner.remove_tree(path)
        self._landed(landed)

    def symlink(self, target: str, path: str, *, durable: bool = True) -> bool:
        """Make a link, or fail when armed."""
        landed = self._step("symlink", path)
        result = self.inner.symlink(target, path, durable=durable)
        self._landed(landed)
        return result

    def hold(self, path: str) -> None:
        """Keep a proof of life, or fail when armed."""
        landed = self._step("hold", path)
        self.inner.hold(path)
        self._landed(landed)

    # -- plain delegation ------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """Delegated."""
        self._alive()
        return self.inner.read(path)

    def read_from(self, path: str, offset: int) -> bytes:
        """Delegated."""
        self._alive()
        return self.inner.read_from(path, offset)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Delegated."""
        self._alive()
        return self.inner.read_range(path, offset, size)

    def stat(self, path: str) -> tuple[int, Any]:
        """Delegated."""
        self._alive()
        return self.inner.stat(path)

    def listdir(self, path: str) -> list[str]:
        """Delegated."""
        self._alive()
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        """Delegated."""
        self._alive()
        return self.inner.exists(path)

    def is_dir(self, path: str) -> bool:
        """Delegated."""
        self._alive()
        return self.inner.is_dir(path)

    def readlink(self, path: str) -> str | None:
        """Delegated."""
        self._alive()
        return self.inner.readlink(path)

    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
        """Delegated."""
        self._alive()
        return self.inner.locked(path, create=create)

    def release(self, path: str) -> None:
        """Delegated (also after a crash: a dead process's marks are gone)."""
        self.inner.release(path)

    def is_held(self, path: str) -> bool | None:
        """Delegated."""
        self._alive()
        return self.inner.is_held(path)

    def anchor(self, directory: str) -> None:
        """Delegated."""
        self.inner.anchor(directory)

    def read_lease(self, path: str) -> dict[str, Any] | None:
        """Delegated."""
        self._alive()
        return self.inner.read_lease(path)

    def write_lease(self, path: str, lease: Mapping[str, Any], *, durable: bool = False) -> None:
        """Written through :meth:`write_in_place` (where faults are injected)."""
        FileSystem.write_lease(self, path, lease, durable=durable)

    @property
    def shared_across_processes(self) -> bool:
        """As the wrapped file system."""
        return self.inner.shared_across_processes

    @property
    def sync_is_noop(self) -> bool:
        """Never: syncs are where faults are injected."""
        return False

    def close(self) -> None:
        """Delegated (also after a crash: descriptors are released)."""
        self.inner.close()


#: The operations of a :class:`~session_store.Storage` that change something: the
#: places :class:`FaultyStorage` can fail or crash at. ``commit`` is the end of a
#: :meth:`~session_store.Storage.writing` scope (a transaction's ``COMMIT``).
STORAGE_WRITE_OPS = ("create_session", "delete_session", "append_message", "append_messages", "append_event",
                     "sync", "write_tally", "write_lease", "hold_lease", "quarantine", "repair_index", "commit")


class FaultyStorage(_Faults, Storage):
    """Wraps any :class:`~session_store.Storage` and injects faults at its boundary, so
    that a backend with no file system below it (SQLite, PostgreSQL, a third party's)
    has its failed writes and its crashes tested. The interface is
    :class:`FaultyFileSystem`'s, with :data:`STORAGE_WRITE_OPS` for operations:

    - ``fail_next(op, code=ENOSPC, *, after=0, landed=False)``: the next call of ``op``
      raises :class:`~session_store.StorageError` (``code``), before delegating it or,
      with ``landed``, after (for ``commit``: before only, since what a transaction
      committed cannot be taken back, only reported).
    - ``crash_at(n)``: the ``n``-th write operation from now raises
      :class:`SimulatedCrash` instead of running; ``commit`` counts twice, before the
      inner scope ends (which then ends with the crash: a transaction rolls back, as
      when its process dies) and after it committed. Every later call is refused.

    Reads are delegated unchanged. ``inner`` is the wrapped storage.
    """

    def __init__(self, inner: Storage) -> None:
        super().__init__()
        self.inner = inner
        #: The operations that can fail here: ``sync`` only where the inner storage has
        #: one (the default hook does nothing, so it cannot fail: a transaction's
        #: durability is its commit's) that takes back what it covered when it fails
        #: (see :attr:`~session_store.Storage.sync_takes_back`: a storage that cannot
        #: leaves the records and refuses writes until reopened, which a failure
        #: raised here, around it, would not make it do; its own tests fail its fsync).
        self.OPS = tuple(op for op in STORAGE_WRITE_OPS
                         if op != "sync" or (type(inner).sync is not Storage.sync and inner.sync_takes_back))

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"

    # -- arming -----------------------------------------------------------------------

    def fail_next(self, op: str, code: int = errno.ENOSPC, *, after: int = 0, landed: bool = False) -> None:
        """The next call of ``op`` (after ``after`` more) fails with ``code``."""
        if op not in self.OPS:
            raise ValueError(f"unknown write operation {op!r} for {self.inner!r}; known: {', '.join(self.OPS)}")
        self._failures.setdefault(op, []).append((after, code, landed and op != "commit"))

    def _error(self, code: int, op: str, what: str) -> OSError:
        return ss.StorageError(code, f"injected: {op} {what}: {errno.errorcode.get(code, 'error')}")

    def _write(self, op: str, what: str, call: Callable[[], Any]) -> Any:
        error = self._step(op, what)
        result = call()
        if error is not None:
            raise error
        return result

    # -- writes -----------------------------------------------------------------------

    def create_session(self, key: str, session_id: str, created_at: int, *, messages: Any = (), events: Any = (),
                       forked_from: tuple[str, str | None] | None = None) -> str:
        return cast(str, self._write("create_session", session_id, lambda: self.inner.create_session(
            key, session_id, created_at, messages=messages, events=events, forked_from=forked_from)))

    def delete_session(self, session_id: str, at: int, *, check: Callable[[], None] | None = None) -> None:
        extra = {} if check is None else {"check": check}
        self._write("delete_session", session_id, lambda: self.inner.delete_session(session_id, at, **extra))

    @contextlib.contextmanager
    def writing(self, session_id: str) -> Iterator[None]:
        if self.crashed:
            raise SimulatedCrash("the simulated process has crashed")
        with self.inner.writing(session_id):
            yield
            self._step("commit", session_id)  # raising here ends the inner scope with the error: nothing commits
        if self.crashed or self._crash_op is None or self.ops < self._crash_op:
            return
        self.crashed = True
        raise SimulatedCrash(f"crashed after commit {session_id}")

    def append_message(self, session_id: str, position: Any, message_id: str, line: bytes) -> Any:
        return self._write("append_message", session_id, lambda: self.inner.append_message(
            session_id, position, message_id, line))

    def append_messages(self, session_id: str, position: Any, lines: Any) -> Any:
        return self._write("append_messages", session_id, lambda: self.inner.append_messages(
            session_id, position, lines))

    def append_event(self, session_id: str, position: Any, line: bytes) -> Any:
        return self._write("append_event", session_id, lambda: self.inner.append_event(session_id, position, line))

    def sync(self, session_id: str) -> None:
        self._write("sync", session_id, lambda: self.inner.sync(session_id))

    def write_tally(self, session_id: str, position: Any, tally: Mapping[str, Any]) -> None:
        self._write("write_tally", session_id, lambda: self.inner.write_tally(session_id, position, tally))

    def write_lease(self, session_id: str, lease: Mapping[str, Any], *, durable: bool) -> None:
        self._write("write_lease", session_id, lambda: self.inner.write_lease(session_id, lease, durable=durable))

    def hold_lease(self, session_id: str) -> None:
        self._write("hold_lease", session_id, lambda: self.inner.hold_lease(session_id))

    def quarantine(self, session_id: str, problems: list[ss.Problem], placeholders: Mapping[int, bytes]) -> list[str]:
        return cast(list[str], self._write("quarantine", session_id, lambda: self.inner.quarantine(
            session_id, problems, placeholders)))

    def repair_index(self) -> list[str]:
        return cast(list[str], self._write("repair_index", "", self.inner.repair_index))

    # -- everything else, delegated ------------------------------------------------------

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def shared_across_processes(self) -> bool:
        return self.inner.shared_across_processes

    @property
    def sync_takes_back(self) -> bool:
        return self.inner.sync_takes_back

    def open(self, *, durable: bool) -> None:
        self.inner.open(durable=durable)

    def close(self) -> None:
        self.inner.close()

    def after_fork(self) -> None:
        self.inner.after_fork()

    def forget(self, session_id: str) -> None:
        self.inner.forget(session_id)

    def lookup(self, key: str) -> str | None:
        return self.inner.lookup(key)

    def session_info(self, session_id: str) -> ss.IndexEntry | None:
        return self.inner.session_info(session_id)

    def list_sessions(self) -> list[ss.IndexEntry]:
        return self.inner.list_sessions()

    def find_sessions(self, key_prefix: str) -> list[ss.IndexEntry]:
        return self.inner.find_sessions(key_prefix)

    def session_bytes(self, session_id: str) -> int | None:
        return self.inner.session_bytes(session_id)

    def search_messages(self, words: Any, key_prefix: str, limit: int, offset: int) -> list[tuple[str, str]] | None:
        return self.inner.search_messages(words, key_prefix, limit, offset)

    def load(self, session_id: str, position: Any, *, writer: bool = False) -> ss.Records | None:
        return self.inner.load(session_id, position, writer=writer)

    def scan(self, session_id: str) -> ss.Records | None:
        return self.inner.scan(session_id)

    def load_parts(self, session_id: str, position: Any, *, writer: bool = False) -> Any:
        return self.inner.load_parts(session_id, position, writer=writer)

    def load_backwards(self, session_id: str, position: Any) -> Any:
        return self.inner.load_backwards(session_id, position)

    def rollback(self, session_id: str, position: Any) -> None:
        self.inner.rollback(session_id, position)

    def read_tally(self, session_id: str) -> Any:
        return self.inner.read_tally(session_id)

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        return self.inner.read_lease(session_id)

    def peek_lease(self, session_id: str) -> dict[str, Any] | None:
        return self.inner.peek_lease(session_id)

    def drop_lease(self, session_id: str) -> None:
        self.inner.drop_lease(session_id)

    def holder_gone(self, session_id: str, lease: Mapping[str, Any]) -> bool:
        return self.inner.holder_gone(session_id, lease)

    def check(self, sessions: Mapping[str, str], *, index: bool) -> list[ss.Problem]:
        return self.inner.check(sessions, index=index)
