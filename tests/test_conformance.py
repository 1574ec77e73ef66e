"""The conformance kit over every backend we ship (two handles on one storage each)."""

from __future__ import annotations

import pg

import session_store_conformance as conformance
from session_store_sqlite import SqliteStorage

TestMemoryMachine = conformance.state_machine_tests(conformance.in_memory_storage, max_examples=60)
TestAsyncMemoryMachine = conformance.state_machine_tests(conformance.through_async(conformance.in_memory_storage),
                                                         max_examples=20)
TestAsyncFilesMachine = conformance.state_machine_tests(conformance.through_async(conformance.file_storage),
                                                        max_examples=10)
TestFilesMachine = conformance.state_machine_tests(conformance.file_storage, max_examples=30)


class TestMemoryContract(conformance.ContractTests):
    storage = staticmethod(conformance.in_memory_storage)


class TestFilesContract(conformance.ContractTests):
    storage = staticmethod(conformance.file_storage)


class TestMemoryCrashes(conformance.CrashTests):
    storage = staticmethod(conformance.in_memory_storage)


class TestFilesCrashes(conformance.CrashTests):
    storage = staticmethod(conformance.file_storage)


class TestAsyncContract(conformance.ContractTests):
    storage = staticmethod(conformance.through_async(conformance.in_memory_storage))


sqlite_storage = conformance.temporary_storage(lambda directory: SqliteStorage(f"{directory}/sessions.db"))
TestSqliteMachine = conformance.state_machine_tests(sqlite_storage, max_examples=30)


class TestSqliteContract(conformance.ContractTests):
    storage = staticmethod(sqlite_storage)


class TestSqliteCrashes(conformance.CrashTests):
    storage = staticmethod(sqlite_storage)


if pg.DSN or pg.REQUIRED:
    TestPostgresMachine = conformance.state_machine_tests(pg.postgres_storage, max_examples=15)

    class TestPostgresContract(conformance.ContractTests):
        storage = staticmethod(pg.postgres_storage)

    class TestPostgresCrashes(conformance.CrashTests):
        storage = staticmethod(pg.postgres_storage)


def test_the_fault_wrapper_passes_every_storage_method_through() -> None:
    """A method the wrapper inherits runs Storage's default on the wrapper, not the
    wrapped storage's own (a search index, an ordered key index): every one is passed on."""
    import session_store as ss

    inherited = [name for name in dir(ss.Storage) if not name.startswith("_") and callable(getattr(ss.Storage, name))
                 and getattr(conformance.FaultyStorage, name) is getattr(ss.Storage, name)]
    assert inherited == []
