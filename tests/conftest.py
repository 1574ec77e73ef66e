"""Shared fixtures: every store test runs on both file systems."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from session_store import FileSystem, InMemoryFileSystem, RealFileSystem, SessionStore
from session_store_conformance import FakeClock

StoreFactory = Callable[..., SessionStore]
__all__ = ["FakeClock", "StoreFactory"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "files"])
def fs_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(fs_kind: str, tmp_path: Any) -> tuple[FileSystem, str]:
    """A file system and a storage_dir on it (the same pair for every store a test opens)."""
    if fs_kind == "memory":
        return InMemoryFileSystem(), "/sessions"
    return RealFileSystem(), os.path.join(str(tmp_path), "sessions")


@pytest.fixture
def open_store(storage: tuple[FileSystem, str], clock: FakeClock) -> Iterator[StoreFactory]:
    """Opens stores on the test's storage; all are closed at the end of the test."""
    fs, directory = storage
    opened: list[SessionStore] = []

    def factory(**options: Any) -> SessionStore:
        options.setdefault("clock", clock)
        options.setdefault("storage_dir", directory)
        store = SessionStore(fs if isinstance(fs, InMemoryFileSystem) else RealFileSystem(), **options)
        store.init()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> SessionStore:
    return open_store()
