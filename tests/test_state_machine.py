"""The store against a tiny model, driven by hypothesis (both file systems)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import session_store as ss
from session_store import InMemoryFileSystem, RealFileSystem, SessionStore


@dataclass
class ModelSession:
    key: str
    messages: list[tuple[str, str | None]] = field(default_factory=list)  # (id, parent)
    branches: dict[str, str | None] = field(default_factory=lambda: {"main": None})
    current: str = "main"

    def ids(self) -> list[str]:
        return [m for m, _ in self.messages]

    def path(self, leaf: str | None) -> list[str]:
        parents = dict(self.messages)
        out: list[str] = []
        while leaf is not None:
            out.append(leaf)
            leaf = parents[leaf]
        return out[::-1]


keys = st.sampled_from(["user:alice", "user:bob", "../x", "ключ", "k" * 300])
branch_names = st.sampled_from(["alt", "feature/x", "ветка", "b2"])


class StoreMachine(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp() if self.kind == "files" else None
        self.fs = InMemoryFileSystem() if self.kind == "memory" else None
        self.model: dict[str, ModelSession] = {}
        self.stores: list[SessionStore] = []

    def open(self) -> SessionStore:
        fs = self.fs if self.fs is not None else RealFileSystem()
        store = SessionStore(fs, storage_dir=self.tmp or "/s", durable=False, index_save_delay_ms=10_000)
        store.init()
        return store

    @initialize()
    def start(self) -> None:
        self.stores = [self.open(), self.open()]  # two handles on one storage

    def teardown(self) -> None:
        for s in self.stores:
            s.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def pick(self, data: st.DataObject) -> SessionStore:
        return self.stores[data.draw(st.integers(0, 1), label="handle")]

    def some_session(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(list(self.model)), label="session")

    @rule(key=keys, data=st.data())
    def resolve(self, key: str, data: st.DataObject) -> None:
        sid = self.pick(data).resolve(key)
        known = [s for s, m in self.model.items() if m.key == key]
        if known:
            assert sid == known[0]
        else:
            assert sid not in self.model
            self.model[sid] = ModelSession(key)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), how=st.sampled_from(["head", "root", "random", "named-head"]))
    def append(self, data: st.DataObject, how: str) -> None:
        sid = self.some_session(data)
        m = self.model[sid]
        head = m.branches[m.current]
        kwargs: dict[str, Any] = {}
        if how == "root":
            kwargs["parent_id"] = None
        elif how == "random" and m.messages:
            kwargs["parent_id"] = data.draw(st.sampled_from(m.ids()), label="parent")
        elif how == "named-head" and head is not None:
            kwargs["parent_id"] = head
        msg = self.pick(data).append(sid, role="user", content=f"m{len(m.messages)}", **kwargs)
        parent = kwargs.get("parent_id", head)
        assert msg.parent_id == parent
        m.messages.append((msg.id, parent))
        if parent == head:
            m.branches[m.current] = msg.id

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def append_to_unknown_parent(self, data: st.DataObject) -> None:
        sid = self.some_session(data)
        with pytest.raises(ss.MessageNotFound):
            self.pick(data).append(sid, role="user", content="x", parent_id="no-such-message")

    @precondition(lambda self: any(m.messages for m in self.model.values()))
    @rule(data=st.data(), name=branch_names)
    def create_branch(self, data: st.DataObject, name: str) -> None:
        sid = data.draw(st.sampled_from([s for s, m in self.model.items() if m.messages]))
        m = self.model[sid]
        leaf = data.draw(st.sampled_from(m.ids()), label="leaf")
        store = self.pick(data)
        if name in m.branches:
            with pytest.raises(ss.BranchExists):
                store.create_branch(sid, name, leaf)
            return
        branch = store.create_branch(sid, name, leaf)
        assert branch.head_id == leaf
        m.branches[name] = leaf

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=st.one_of(branch_names, st.just("main")))
    def switch(self, data: st.DataObject, name: str) -> None:
        sid = self.some_session(data)
        m = self.model[sid]
        store = self.pick(data)
        if name not in m.branches:
            with pytest.raises(ss.BranchNotFound):
                store.switch_to_branch(sid, name)
            return
        assert store.switch_to_branch(sid, name) == m.branches[name]
        m.current = name

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        sid = self.some_session(data)
        self.pick(data).delete_session(sid)
        del self.model[sid]

    @rule(which=st.integers(0, 1))
    def reopen(self, which: int) -> None:
        self.stores[which].close()
        self.stores[which] = self.open()

    @invariant()
    def store_matches_model(self) -> None:
        for store in self.stores:
            assert sorted(store.get_all_session_ids()) == sorted(self.model)
            for sid, m in self.model.items():
                assert [(x.id, x.parent_id) for x in store.get_messages(sid)] == m.messages
                assert {b.name: b.head_id for b in store.get_branches(sid)} == m.branches
                assert store.get_current_branch(sid) == m.current
                head = m.branches[m.current]
                assert [x.id for x in store.get_linear_history(sid)] == m.path(head)
                meta = store.get_metadata(sid)
                assert meta is not None and meta.message_count == len(m.messages) and meta.key == m.key


class FilesStoreMachine(StoreMachine):
    kind = "files"


TestMemoryStore = StoreMachine.TestCase
TestMemoryStore.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestFilesStore = FilesStoreMachine.TestCase
TestFilesStore.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
