"""Errors: the one exception family every call raises, and the log for what is not raised.

Every error the store raises is a :class:`SessionStoreError`; each leaf also inherits
its builtin twin (``SessionNotFound`` is a ``KeyError``, ``LockTimeout`` a
``TimeoutError``, ``InvalidInput`` a ``ValueError``) and carries the ids it is about.
An ``OSError`` from a file system reaches callers as :class:`StorageError`, through
:func:`_storage_errors` (or :func:`_storage_error` on hot paths).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TypeVar

_log = logging.getLogger("session_store")
_T = TypeVar("_T")


@contextlib.contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` from the file system into :class:`StorageError` (ours pass through)."""
    try:
        yield
    except SessionStoreError:
        raise
    except OSError as e:
        raise _storage_error(e, action) from e


def _storage_error(e: OSError, action: str) -> StorageError:
    """The :class:`StorageError` for ``e`` (for hot paths, where a context manager costs µs)."""
    return StorageError(e.errno, f"could not {action}: {e.strerror or e}")


class SessionStoreError(Exception):
    """Root of every error this module raises on purpose.

    Each leaf also inherits its builtin twin (``KeyError``, ``ValueError``,
    ``TimeoutError``, ``OSError``) so that generic handlers keep working. An operation
    that raises one of these has written nothing.
    """


class InvalidInput(SessionStoreError, ValueError):
    """An argument is malformed (wrong type, empty, too long, control characters)."""


class InvalidKey(InvalidInput):
    """A session key is not a usable string."""


class InvalidMessage(InvalidInput):
    """A message cannot be stored: bad role/type/id, reserved field, or not JSON."""


class _NotFound(SessionStoreError, KeyError):
    """Base of the "unknown id" errors; ``str()`` is the message, not a repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SessionNotFound(_NotFound):
    """No session with this id (or it was deleted). Carries ``session_id``."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r}")
        self.session_id = session_id


class MessageNotFound(_NotFound):
    """No message with this id in the session. Carries ``session_id``, ``message_id``."""

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(f"no message {message_id!r} in session {session_id!r}")
        self.session_id = session_id
        self.message_id = message_id


class BranchNotFound(_NotFound):
    """No branch of this name in the session. Carries ``session_id``, ``name``."""

    def __init__(self, session_id: str, name: str) -> None:
        super().__init__(f"no branch {name!r} in session {session_id!r}")
        self.session_id = session_id
        self.name = name


class BranchExists(SessionStoreError, ValueError):
    """A branch of this name already exists. Carries ``session_id``, ``name``."""

    def __init__(self, session_id: str, name: str) -> None:
        super().__init__(f"branch {name!r} already exists in session {session_id!r}")
        self.session_id = session_id
        self.name = name


class DuplicateMessage(InvalidMessage):
    """A message with this id already exists. Carries ``session_id``, ``message_id``."""

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(f"message {message_id!r} already exists in session {session_id!r}")
        self.session_id = session_id
        self.message_id = message_id


class SessionLocked(SessionStoreError, RuntimeError):
    """A write was refused because another owner holds the session's lease.

    Carries ``session_id``, ``owner_id`` (who tried) and ``holder_id`` (who holds it).
    """

    def __init__(self, session_id: str, owner_id: str | None, holder_id: str | None) -> None:
        super().__init__(
            f"session {session_id!r} is locked by {holder_id!r}"
            + (f" (write by {owner_id!r} refused)" if owner_id is not None else "")
        )
        self.session_id = session_id
        self.owner_id = owner_id
        self.holder_id = holder_id


class LeaseLost(SessionLocked):
    """A write under a lease was refused: the lease is no longer the writer's (it
    expired, was released, or another owner took it, so its fencing token is not the
    current one). Carries ``session_id``, ``owner_id``, ``holder_id`` (the current
    holder, or ``None``) and ``token`` (the writer's stale token)."""

    def __init__(self, session_id: str, owner_id: str | None, holder_id: str | None, token: int | None) -> None:
        super().__init__(session_id, owner_id, holder_id)
        self.args = (f"the lease of session {session_id!r} held by {owner_id!r} with token {token} is lost: "
                     + (f"{holder_id!r} holds it now" if holder_id is not None else "it expired or was released")
                     + "; the write was refused",)
        self.token = token


class LockTimeout(SessionStoreError, TimeoutError):
    """The lease could not be acquired in time. Carries ``session_id``, ``owner_id``,
    ``holder_id`` and ``timeout``."""

    def __init__(
        self, session_id: str, owner_id: str, holder_id: str | None, timeout: float | None
    ) -> None:
        super().__init__(
            f"could not lock session {session_id!r} for {owner_id!r} within {timeout}s"
            f" (held by {holder_id!r})"
        )
        self.session_id = session_id
        self.owner_id = owner_id
        self.holder_id = holder_id
        self.timeout = timeout


class StorageError(SessionStoreError, OSError):
    """The storage failed (disk full, I/O error, short write). Nothing half-written
    stays visible: the store cut the log back to its last complete record."""


class StoreClosed(SessionStoreError, RuntimeError):
    """The store was closed; open a new one."""


class _WrittenMeanwhile(Exception):
    """A repair's deletion of an empty session is called off: it is not empty any more."""
