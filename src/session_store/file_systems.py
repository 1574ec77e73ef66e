"""File systems: the few primitives a :class:`JsonlStorage` needs, with exact semantics.

:class:`FileSystem` is the contract, with the lease record's encoding that every file
system shares; :class:`InMemoryFileSystem` keeps files in this process, for tests, with
the same semantics as ``RealFileSystem`` (files on disk, in ``real_file_system``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import weakref
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from .errors import _log
from .log_format import _dumps, _scan_json


class FileSystem(ABC):
    """Where a :class:`JsonlStorage` keeps its files; paths are ``/``-joined strings.

    The storage needs few primitives, each with exact semantics:

    - :meth:`append` writes ``data`` at the end of a file with *one* write call
      (creating the file), or raises and leaves at most a partial tail, which the
      storage cuts back with :meth:`truncate` while it still holds :meth:`locked`.
    - :meth:`sync` makes everything appended so far durable, including the directory
      entry of a file that :meth:`append` created.
    - :meth:`write_atomic` replaces a file whole: a reader sees the old or the new
      content, never a mix; with ``durable`` it is on disk when the call returns.
    - :meth:`stat` gives a file's size and an *identity* that changes when the file
      is replaced (a repair rewrites a log by renaming a new file over it).
    - :meth:`symlink` creates a name exclusively and atomically (the key index is
      made of them); :meth:`readlink` reads one back without following it.
    - :meth:`publish_folder` makes a new folder appear whole (a session's creation);
      its default is made of the primitives above.
    - :meth:`locked` excludes every other holder of the same path, across threads
      and, where the file system is shared, across processes. Not re-entrant.
    - :meth:`hold` / :meth:`is_held`: a holder proves it is alive; :meth:`is_held`
      answers ``False`` only when no live holder (in any process) holds ``path``.

    Paths inside a store are data-derived (session ids, key hashes), so a file
    system must never follow a symbolic link it did not create below a directory
    the storage :meth:`anchor`\\ s. Subclass it to wrap another file system (for fault
    injection, say): composition, not inheritance, of the real one is the pattern.
    """

    @abstractmethod
    def read(self, path: str) -> bytes:
        """The whole file. ``FileNotFoundError`` when absent."""

    @abstractmethod
    def read_from(self, path: str, offset: int) -> bytes:
        """The file's bytes from ``offset`` to its current end."""

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """At most ``size`` bytes of the file from ``offset``."""
        return self.read_from(path, offset)[:size]

    @abstractmethod
    def stat(self, path: str) -> tuple[int, Any]:
        """``(size, identity)``; the identity changes when the file is replaced.
        ``FileNotFoundError`` when absent or deleted."""

    def size(self, path: str) -> int:
        """The file's size in bytes (``FileNotFoundError`` when absent)."""
        return self.stat(path)[0]

    def _size_as_open(self, path: str) -> int:
        """The size of the file as last opened here, which may be one replaced or
        removed since: only for a file whose replacement always comes with another's
        that the caller checks by :meth:`stat` (a session's branch events, with its
        log). Real files answer by ``lseek``, a quarter of an ``fstat``'s cost."""
        return self.size(path)

    @abstractmethod
    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` with one write call, creating the file when absent."""

    @abstractmethod
    def sync(self, path: str) -> None:
        """Make the appended bytes (and a newly created file's entry) durable."""

    @abstractmethod
    def truncate(self, path: str, size: int) -> None:
        """Cut the file back to ``size`` bytes."""

    @abstractmethod
    def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Replace the file whole (temp file, rename); durable when asked. A failure
        leaves no temp file behind (a killed process may: :meth:`collect_garbage`)."""

    @abstractmethod
    def write_in_place(self, path: str, data: bytes, *, durable: bool = False) -> None:
        """Overwrite a small file in place (one write at offset 0); ``durable``: synced."""

    @abstractmethod
    def makedirs(self, path: str, *, durable: bool = True) -> None:
        """Create the directory and its parents (no error when it exists); durable when asked."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in a directory; ``[]`` when it does not exist."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists at ``path`` (a link is not followed)."""

    @abstractmethod
    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (not a link to one)."""

    @abstractmethod
    def rename(self, src: str, dst: str, *, durable: bool = True) -> None:
        """Rename a file or directory atomically; ``durable``: the destination's directory is synced."""

    @abstractmethod
    def remove(self, path: str, *, durable: bool = False) -> None:
        """Remove a file or a link (no error when absent); ``durable``: the directory is synced."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Remove a directory and everything below it (no error when absent)."""

    @abstractmethod
    def symlink(self, target: str, path: str, *, durable: bool = True) -> bool:
        """Create the link ``path`` -> ``target`` unless ``path`` exists (then ``False``);
        atomic and exclusive across every user of the file system. ``FileNotFoundError``
        when the directory of ``path`` does not exist."""

    @abstractmethod
    def readlink(self, path: str) -> str | None:
        """The target of the link ``path``; ``None`` when there is none."""

    @abstractmethod
    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
        """Context manager holding the exclusive lock of the file ``path``.

        ``create``: the file is created when absent; otherwise ``FileNotFoundError``
        when it is absent, or was removed while this waited for the lock (so a writer
        can never bring back a file another removed). ``FileNotFoundError`` too when
        the directory of ``path`` does not exist.
        """

    @contextlib.contextmanager
    def publish_folder(self, staging: str, final: str, files: Sequence[tuple[str, bytes]], *,
                       durable: bool) -> Iterator[None]:
        """Make the new folder ``final`` appear whole, holding ``files`` (name, content),
        on entering; its first file stays locked (:meth:`locked`) until the block ends.

        It is built under the name ``staging`` (a new name in the same directory)
        with its first file locked from its creation on, so that a repair can tell a
        creation in progress from the remains of a killed one; then (``durable``)
        every file is synced, and it is renamed to ``final`` (``durable``: its
        directory synced). The lock follows the file through the rename: the block
        announces the folder (a session's key link) or takes it back, and until it
        ends nobody else can write to the folder's first file (a session's log), so
        nothing written by anyone else is lost with a folder taken back. A failure
        before the rename removes the staging folder and is raised. One after it (the
        directory's sync) is raised and leaves ``final`` in place: complete, it may be
        adopted by a repair and written to once the lock is let go of. Letting go of
        the lock when the block ends raises nothing (it is logged): by then the block
        may have announced the folder, and a creation that happened must not report a
        failure. Default: those steps, one primitive call each; a file system may do
        the same with fewer system calls (an override is a context manager too).
        """
        lock = f"{staging}/{files[0][0]}"
        self.makedirs(staging, durable=False)
        guard, entered = self.locked(lock), False
        try:
            try:
                guard.__enter__()
                entered = True
                for name, data in files:
                    if data or f"{staging}/{name}" != lock:  # (the lock made that one)
                        self.append(f"{staging}/{name}", data)
                if durable:
                    for name, _ in files:
                        self.sync(f"{staging}/{name}")
                self.rename(staging, final, durable=durable)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.remove_tree(staging)  # (gone when it was renamed into place)
                raise
            yield
        finally:
            if entered:
                _let_go(guard.__exit__, None, None, None)

    def hold(self, path: str) -> None:  # noqa: B027 - optional: no proof of life by default
        """Mark this process alive on ``path`` until :meth:`release` (counted per path)."""

    def release(self, path: str) -> None:  # noqa: B027 - optional
        """Undo one :meth:`hold`."""

    def is_held(self, path: str) -> bool | None:
        """Whether any live process holds ``path`` (by :meth:`hold`, :meth:`locked` or an
        atomic write in progress); ``None`` when this file system cannot tell."""
        return None

    def anchor(self, directory: str) -> None:  # noqa: B027 - optional
        """Declare a storage's directory: links below it are never followed."""

    def after_fork(self) -> None:  # noqa: B027 - optional
        """In a child process after ``fork()``: drop the parent's descriptors and
        thread locks without releasing anything the parent holds."""

    def read_lease(self, path: str) -> dict[str, Any] | None:
        """The lease record at ``path``; ``None`` when absent; :data:`_CORRUPT` when
        unreadable. Default: the format :meth:`write_lease` writes."""
        try:
            return _decode_lease(self.read(path))
        except FileNotFoundError:
            return None

    def write_lease(self, path: str, lease: Mapping[str, Any], *, durable: bool = False) -> None:
        """Store a lease record (the caller holds :meth:`locked` of the session's log).

        Default: one JSON line and its CRC-32, padded to a fixed size and written in
        place, so that one ``pwrite`` replaces it whole; a torn write (a machine crash
        during it) fails the checksum and reads as corrupt. ``durable``: synced before
        returning (the store asks for it when it reserves a new range of fencing tokens).
        """
        self.write_in_place(path, _encode_lease(lease), durable=durable)

    @property
    def shared_across_processes(self) -> bool:
        """Whether other processes can see this file system (and so hold its locks)."""
        return False

    @property
    def sync_is_noop(self) -> bool:
        """Whether :meth:`sync` does nothing (the store then skips its group commit)."""
        return False

    @property
    def local(self) -> bool:
        """Whether every call is this process's code and short local system calls, with
        no wait on a server (see :attr:`Storage.local_writes`); ``False`` unless known."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release cached resources (open descriptors). The object stays usable."""


# Lease records on a FileSystem: "<json>\t<crc32 hex>\n", padded with spaces to a fixed
# size. Records written before the checksum (format v1: bare JSON) still read.
_LEASE_RECORD_BYTES = 2048
_LEASE_READ_BYTES = 4 * _LEASE_RECORD_BYTES  # a read this long that comes back short read the whole record
_CORRUPT: Any = {"corrupt": True}


def _checked_line(record: Mapping[str, Any]) -> bytes:
    """A record as a JSON line carrying its own CRC-32 (``<json>\t<crc32 hex>\n``): a
    torn write, two writers' bytes mixed or a byte changed on disk reads as corrupt
    (:func:`_decode_lease`). Leases are kept so (padded, written in place), and tallies."""
    body = _dumps(record if type(record) is dict else dict(record)).encode("utf-8")  # (any Mapping, as written)
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def _encode_lease(lease: Mapping[str, Any]) -> bytes:
    line = _checked_line(lease)
    return line.ljust(_LEASE_RECORD_BYTES) if len(line) < _LEASE_RECORD_BYTES else line


def _lease_as_read(lease: Mapping[str, Any]) -> dict[str, Any] | None:
    """What :func:`_decode_lease` makes of ``_encode_lease(lease)``, made without the
    round trip, for a record of what the store writes (string keys; strings, integers,
    ``None``; a ``queue`` of ``[waiter, deadline]`` pairs); ``None`` for any other."""
    out = dict(lease)
    for k, v in out.items():
        if type(k) is not str or (type(v) not in _PLAIN_JSON and k != "queue"):
            return None
    queue = out.get("queue")
    if queue is not None:
        if type(queue) is not list and type(queue) is not tuple:
            return None
        pairs = []
        for w in queue:
            if (type(w) is not list and type(w) is not tuple) or len(w) != 2 or type(w[0]) is not str \
                    or type(w[1]) is not int:
                return None
            pairs.append([w[0], w[1]])
        out["queue"] = pairs
    return out


_PLAIN_JSON = frozenset({str, int, type(None)})  # values JSON gives back as they were (not bool, not float)


def _decode_lease(raw: bytes) -> dict[str, Any] | None:
    text = raw.rstrip()
    if not text:  # the file exists: a record was written, and is lost
        return dict(_CORRUPT)
    body, tab, crc = text.rpartition(b"\t")
    if tab:
        if b"%08x" % zlib.crc32(body) != crc:
            return dict(_CORRUPT)
        text = body
    try:
        decoded = text.decode("utf-8")
        try:  # the scanner alone, as json.loads would use it, for a record with nothing around it
            lease, end = _scan_json(decoded, 0)
        except StopIteration:
            end = -1
        if end != len(decoded):
            lease = json.loads(decoded)  # anything else: exactly what json.loads makes of it
    except (ValueError, UnicodeDecodeError, RecursionError):
        return dict(_CORRUPT)
    return lease if isinstance(lease, dict) else dict(_CORRUPT)


class InMemoryFileSystem(FileSystem):
    """A file system in a dict, for tests and ephemeral stores.

    Paths are names in a dict (leading and trailing ``/`` ignored). Stores that
    share one instance see the same files and exclude each other through
    :meth:`locked`, as two processes would on disk. The data lives in this process
    only and is gone when the object is.
    """

    def __init__(self) -> None:
        self._files: dict[str, bytearray] = {}
        self._links: dict[str, str] = {}
        self._dirs: set[str] = {""}
        self._mutex = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # what locked() holds, per file; goes with its file
        self._moved: dict[threading.Lock, str] = {}  # a held lock renamed with its file -> the file's path now
        self._holds: dict[str, int] = {}

    def __repr__(self) -> str:
        return "InMemoryFileSystem()"

    def _file(self, path: str) -> bytearray:
        try:
            f = self._files[path.strip("/")]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None
        if type(f) is _LeaseBuffer:
            f.spell()
        return f

    def _buffer(self, path: str) -> bytearray:
        """The buffer of ``path`` to change in place, created empty when absent (mutex held)."""
        f = self._files.setdefault(path.strip("/"), bytearray())
        if type(f) is _LeaseBuffer:
            f.spell()
        return f

    def _parent_exists(self, path: str) -> None:
        parent = path.strip("/").rpartition("/")[0]
        if parent not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", parent)

    def read(self, path: str) -> bytes:
        """The whole file. ``FileNotFoundError`` when absent."""
        with self._mutex:
            return bytes(self._file(path))

    def read_from(self, path: str, offset: int) -> bytes:
        """The file's bytes from ``offset`` to its current end."""
        with self._mutex:
            return bytes(self._file(path)[offset:])

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """At most ``size`` bytes of the file from ``offset``."""
        with self._mutex:
            return bytes(self._file(path)[offset:offset + size])

    def stat(self, path: str) -> tuple[int, Any]:
        """Size, and the identity of the buffer (a new one when the file is replaced)."""
        with self._mutex:
            f = self._file(path)
            return len(f), id(f)

    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` in one step, creating the file when absent."""
        with self._mutex:
            f = self._files.get(path.strip("/"))
            if f is None or type(f) is _LeaseBuffer:
                self._parent_exists(path)
                f = self._buffer(path)
            f.extend(data)

    def sync(self, path: str) -> None:
        """Nothing to do: memory is as durable as this object."""

    @property
    def sync_is_noop(self) -> bool:
        """Memory has nothing to sync."""
        return True

    @property
    def local(self) -> bool:
        """Memory of this process."""
        return True

    def truncate(self, path: str, size: int) -> None:
        """Cut the file back to ``size`` bytes."""
        with self._mutex:
            del self._file(path)[size:]

    def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Replace the file whole."""
        with self._mutex:
            self._parent_exists(path)
            self._files[path.strip("/")] = bytearray(data)

    def write_in_place(self, path: str, data: bytes, *, durable: bool = False) -> None:
        """Overwrite the file."""
        with self._mutex:
            self._parent_exists(path)
            f = self._buffer(path)
            f[:len(data)] = data
            del f[len(data):]

    def read_lease(self, path: str) -> dict[str, Any] | None:
        """The lease record: a copy of the one :meth:`write_lease` kept, else decoded
        from the file's bytes (written some other way: maybe corrupt)."""
        with self._mutex:
            f = self._files.get(path.strip("/"))
            if f is None:
                return None
            if type(f) is _LeaseBuffer and f.record is not None:
                return _copy_lease(f.record)
            raw = bytes(f)
        return _decode_lease(raw)

    def write_lease(self, path: str, lease: Mapping[str, Any], *, durable: bool = False) -> None:
        """Keep a copy of the record itself, not its encoding: a lease changes twice per
        lock cycle, and encoding and decoding it cost more than the rest of the cycle.
        Its bytes (the format of :meth:`FileSystem.write_lease`) are made when the file
        is read or changed as bytes."""
        buffer = _LeaseBuffer()
        buffer.record = _copy_lease(lease)
        path = path.strip("/")
        with self._mutex:
            if path not in self._files:
                self._parent_exists(path)
            self._files[path] = buffer

    def makedirs(self, path: str, *, durable: bool = True) -> None:
        """Create the directory and its parents."""
        with self._mutex:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                self._dirs.add("/".join(parts[:i]))

    def listdir(self, path: str) -> list[str]:
        """Names directly below ``path``."""
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        with self._mutex:
            names = {p[len(prefix):].split("/", 1)[0] for p in (*self._files, *self._dirs, *self._links)
                     if p.startswith(prefix) and len(p) > len(prefix)}
        return sorted(names)

    def exists(self, path: str) -> bool:
        """Whether a file, link or directory exists."""
        path = path.strip("/")
        with self._mutex:
            return path in self._files or path in self._dirs or path in self._links

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        with self._mutex:
            return path.strip("/") in self._dirs

    def rename(self, src: str, dst: str, *, durable: bool = True) -> None:
        """Rename a file or a directory with everything below it."""
        src, dst = src.strip("/"), dst.strip("/")
        with self._mutex:
            if src in self._files:
                f = self._files[src]
                self._gone(src)
                self._files[dst] = f
                return
            if src not in self._dirs:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", src)
            if dst in self._dirs or dst in self._files:
                raise FileExistsError(errno.EEXIST, "exists", dst)
            for p in [p for p in self._files if p.startswith(src + "/")]:
                f, lock, to = self._files[p], self._locks.get(p), dst + p[len(src):]
                if lock is not None and lock.locked() and to not in self._locks:
                    self._locks[to] = self._locks.pop(p)  # a held lock goes with its file, as a flock does
                    self._moved[lock] = to  # (for its holder, who names the path it locked: see _TableGuard)
                self._gone(p)
                self._files[to] = f
            for p in [p for p in self._links if p.startswith(src + "/")]:
                self._links[dst + p[len(src):]] = self._links.pop(p)
            for p in [p for p in self._dirs if p == src or p.startswith(src + "/")]:
                self._dirs.discard(p)
                self._dirs.add(dst + p[len(src):])

    def remove(self, path: str, *, durable: bool = False) -> None:
        """Remove a file or a link."""
        path = path.strip("/")
        with self._mutex:
            self._gone(path)
            self._links.pop(path, None)

    def remove_tree(self, path: str) -> None:
        """Remove a directory and everything below it."""
        path = path.strip("/")
        with self._mutex:
            for p in [p for p in self._files if p.startswith(path + "/")]:
                self._gone(p)
            for p in [p for p in self._links if p.startswith(path + "/")]:
                del self._links[p]
            self._dirs = {d for d in self._dirs if d != path and not d.startswith(path + "/")}

    def symlink(self, target: str, path: str, *, durable: bool = True) -> bool:
        """Create the link unless the name is taken."""
        path = path.strip("/")
        with self._mutex:
            self._parent_exists(path)
            if path in self._links or path in self._files or path in self._dirs:
                return False
            self._links[path] = target
            return True

    def readlink(self, path: str) -> str | None:
        """The link's target, or ``None``."""
        with self._mutex:
            return self._links.get(path.strip("/"))

    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[None]:
        """The lock of ``path``, shared by every store using this object."""
        return _TableGuard(self, path.strip("/"), create)

    def _lock_of(self, path: str, create: bool) -> threading.Lock:
        """The file's lock (made on first use), the file created when absent (``create``)."""
        lock = self._locks.get(path)  # (or a held one whose file went, see _gone: _TableGuard tells which)
        if lock is not None:
            return lock
        with self._mutex:
            if path not in self._files:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "no such file", path)
                self._parent_exists(path)
                self._files[path] = bytearray()
            lock = self._locks.get(path)
            if lock is None:
                lock = self._locks[path] = threading.Lock()
            return lock

    def _gone(self, path: str) -> None:
        """A file was removed or renamed away (mutex held): its lock goes with it, and
        whoever waits for it takes the path's lock again (see :class:`_TableGuard`);
        a held lock stays the path's until its holder lets go (a deletion under the
        lock is that thread's to finish), so another locker of the path waits."""
        self._files.pop(path, None)
        lock = self._locks.get(path)
        if lock is not None and not lock.locked():
            del self._locks[path]

    def hold(self, path: str) -> None:
        """Count a hold (memory never dies while this object lives)."""
        with self._mutex:
            self._holds[path] = self._holds.get(path, 0) + 1

    def release(self, path: str) -> None:
        """Undo one hold."""
        with self._mutex:
            n = self._holds.get(path, 0) - 1
            if n > 0:
                self._holds[path] = n
            else:
                self._holds.pop(path, None)

    def is_held(self, path: str) -> bool | None:
        """Whether a hold or a lock is on ``path``."""
        with self._mutex:
            lock = self._locks.get(path.strip("/"))
            return path in self._holds or (lock is not None and lock.locked())

    def after_fork(self) -> None:
        """A child keeps the data (it is a copy) with fresh locks."""
        self._mutex = threading.Lock()
        self._locks = {}
        self._moved = {}
        self._holds = {}


class _LeaseBuffer(bytearray):
    """An :class:`InMemoryFileSystem` file holding a lease record as written: empty
    until :meth:`spell` writes the record's bytes into it (then ``record`` is ``None``
    and it is a plain file)."""

    __slots__ = ("record",)
    record: dict[str, Any] | None

    def spell(self) -> None:
        if self.record is not None:
            self[:] = _encode_lease(self.record)
            self.record = None


def _copy_lease(lease: Mapping[str, Any]) -> dict[str, Any]:
    """A copy that shares nothing mutable with ``lease`` (its queue is a list of lists)."""
    copied = dict(lease)
    queue = copied.get("queue")
    if queue and type(queue) is list:
        copied["queue"] = [list(w) if type(w) is list else w for w in queue]
    return copied


class _TableGuard:
    """``InMemoryFileSystem.locked``: the file's lock, taken again when the file was
    removed while this waited for it (``create``: made anew; else ``FileNotFoundError``)."""

    __slots__ = ("_create", "_fs", "_held", "_path")

    def __init__(self, fs: InMemoryFileSystem, path: str, create: bool) -> None:
        self._fs, self._path, self._create = fs, path, create
        self._held: threading.Lock | None = None

    def __enter__(self) -> None:
        fs, path = self._fs, self._path
        while True:
            lock = fs._lock_of(path, self._create)
            lock.acquire()
            # Only its holder, or _gone while nobody holds it, takes a lock out of the
            # table: held, the answer cannot change under us; the common case asks
            # without the mutex.
            if fs._locks.get(path) is lock and path in fs._files:
                self._held = lock
                return
            try:
                with fs._mutex:
                    if fs._locks.get(path) is lock:  # still the path's lock
                        if path in fs._files:
                            self._held = lock
                            return
                        if self._create:  # its file went, its lock kept for the holder then: made again
                            fs._parent_exists(path)
                            fs._files[path] = bytearray()
                            self._held = lock
                            return
                        del fs._locks[path]
            finally:
                if self._held is None:
                    lock.release()

    def __exit__(self, *exc: object) -> None:
        lock, self._held = self._held, None
        if lock is not None:
            fs, path = self._fs, self._path
            if path not in fs._files:  # its file went while held (or was renamed, its lock with it)
                with fs._mutex:
                    path = fs._moved.pop(lock, path)
                    if path not in fs._files and fs._locks.get(path) is lock:  # gone: its lock goes now
                        del fs._locks[path]
            lock.release()


def _let_go(release: Callable[..., object], *args: Any) -> None:
    """Let go of a lock at the end of a block that may have committed what it
    locked: an error is logged, not raised."""
    try:
        release(*args)
    except OSError as e:
        _log.warning("letting go of a lock failed (what it guarded is done): %s", e)


class _WeakHooks:
    """Methods to run in a child process after ``fork()``, their objects held weakly."""

    def __init__(self) -> None:
        self._methods: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._registered = False

    def add(self, method: Callable[[], None]) -> None:
        with self._lock:
            if not self._registered and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=self._run)
                self._registered = True
            self._methods = [m for m in self._methods if m() is not None]
            self._methods.append(weakref.WeakMethod(method))

    def _run(self) -> None:
        self._lock = threading.Lock()  # it may have been held by another thread of the parent
        for ref in self._methods:
            method = ref()
            if method is None:
                continue
            try:
                method()
            except Exception:  # a child must come up; the object reports on first use
                _log.exception("after fork: %r failed", method)


_after_fork_hooks = _WeakHooks()
