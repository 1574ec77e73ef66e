"""Shared fixtures: every store test runs on every backend (memory, files, SQLite)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from session_store import InMemoryFileSystem, JsonlStorage, RealFileSystem, SessionStore, Storage
from session_store_conformance import FakeClock
from session_store_sqlite import SqliteStorage

StoreFactory = Callable[..., SessionStore]
__all__ = ["FakeClock", "StoreFactory"]

# No test may depend on the machine being idle: Hypothesis neither times examples
# nor fails a test because generating its inputs was slow on a busy machine.
settings.register_profile("any-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("any-machine")

# Where the run is: each test file's name with the time since the run began, on its own line.
_STARTED = time.monotonic()
_FILE: list[str | None] = [None]
_CONFIG: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG.append(config)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    file = nodeid.split("::")[0]
    reporter = _CONFIG[-1].pluginmanager.get_plugin("terminalreporter") if _CONFIG else None
    if file != _FILE[0] and reporter is not None:
        _FILE[0] = file
        minutes, seconds = divmod(int(time.monotonic() - _STARTED), 60)
        if reporter._tw.width_of_current_line:  # after a line of dots
            reporter._tw.line()
        reporter.write_line(f"[{minutes:02d}:{seconds:02d}] {file}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "files", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(backend: str, tmp_path: Any) -> Callable[[], Storage]:
    """Makes storages on one place (the same data for every store a test opens)."""
    if backend == "memory":
        fs = InMemoryFileSystem()
        return lambda: JsonlStorage(fs, "/sessions")
    directory = os.path.join(str(tmp_path), "sessions")
    if backend == "files":
        return lambda: JsonlStorage(RealFileSystem(), directory)
    return lambda: SqliteStorage(os.path.join(str(tmp_path), "sessions.db"))


@pytest.fixture
def open_store(make_storage: Callable[[], Storage], clock: FakeClock) -> Iterator[StoreFactory]:
    """Opens stores on the test's storage; all are closed at the end of the test."""
    opened: list[SessionStore] = []

    def factory(**options: Any) -> SessionStore:
        options.setdefault("clock", clock)
        store = SessionStore(make_storage(), **options)
        store.init()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> SessionStore:
    return open_store()
