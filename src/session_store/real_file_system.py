"""RealFileSystem: files on this machine's disks, for :class:`JsonlStorage`.

Every path below an anchor is walked one component at a time without following a
link; logs are appended to with one ``write`` on an ``O_APPEND`` descriptor and synced
with ``fdatasync``; a file's lock is its ``flock`` plus a thread lock; descriptors are
kept in a bounded cache, indexed by folder, and forgotten when their file is renamed
or removed. Safe across threads, processes and ``fork()``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from stat import S_ISDIR, S_ISREG
from typing import Any

from .errors import InvalidInput
from .file_systems import (
    _LEASE_READ_BYTES,
    FileSystem,
    _after_fork_hooks,
    _copy_lease,
    _decode_lease,
    _encode_lease,
    _lease_as_read,
    _let_go,
)


class _Descriptor:
    """An open descriptor in :class:`RealFileSystem`'s cache (pinned while in use),
    with the thread lock that :meth:`RealFileSystem.locked` holds around its ``flock``:
    the threads of a process share the descriptor, and an ``flock`` excludes other
    descriptions only, not the threads using one. A path has one cached descriptor at a
    time, and a pinned one stays cached until its file is removed or replaced (then
    ``stale``, and a locker opens the path again), so its threads meet on this lock. A
    lock held when its file goes is handed to the path's next descriptor (see
    :meth:`RealFileSystem._forget`): the lock is the path's, as long as it is held."""

    __slots__ = ("fd", "lease", "lock", "pins", "stale")

    def __init__(self, fd: int, lock: threading.Lock | None = None) -> None:
        self.fd = fd
        self.pins = 0
        self.stale = False
        self.lock = threading.Lock() if lock is None else lock
        # The last lease record written here: its bytes, and the record they read as
        # (see RealFileSystem.read_lease).
        self.lease: tuple[bytes, dict[str, Any]] | None = None


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class RealFileSystem(FileSystem):
    """The operating system's files: fsync'd, and safe across threads and processes.

    Log files are kept open (an LRU of at most ``max_open_files`` descriptors, by
    default a quarter of the process's limit and at most 1,024; opened ``O_APPEND``),
    so an append is one ``write`` and, when durable, one ``fdatasync``.
    :meth:`locked` is an ``fcntl.flock`` on the file itself plus the thread lock of
    its cached descriptor, so it excludes other threads and other processes; the OS drops the flock
    of a process that dies. Below an anchored directory every path is walked one
    component at a time with ``O_NOFOLLOW`` (``openat``): a link planted inside a
    store is refused, never followed. Temp files of atomic writes have unpredictable
    names, are created ``O_EXCL`` and are removed on any failure.

    After ``fork()`` a child drops the cached descriptors (a ``flock`` belongs to the
    open file description, which parent and child would share) and starts afresh.
    POSIX only (``fcntl``, imported when the first lock is taken).
    """

    def __init__(self, *, max_open_files: int | None = None) -> None:
        if max_open_files is None:  # a quarter of what the process may open, at most 1,024
            try:
                import resource
            except ImportError:  # not POSIX
                max_open_files = 256
            else:
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                max_open_files = 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))
        if not isinstance(max_open_files, int) or max_open_files < 4:
            raise InvalidInput("max_open_files must be an integer of at least 4")
        self._max_open = max_open_files
        self._anchors: tuple[str, ...] = ()
        self._reset()
        _after_fork_hooks.add(self.after_fork)

    def _reset(self) -> None:
        self._fds: OrderedDict[str, _Descriptor] = OrderedDict()
        # The cache by directory, so that forgetting a path or a folder costs what it
        # drops, not a look through the whole cache (see _forget): directory -> its
        # cached paths, and directory -> how many cached paths lie anywhere below it.
        self._fd_dirs: dict[str, set[str]] = {}
        self._fd_under: dict[str, int] = {}
        self._forgets = 0  # calls of _forget so far: a descriptor opened across one is checked (see _pin)
        self._mutex = threading.Lock()
        self._held_gone: dict[str, threading.Lock] = {}  # path -> the held lock of its forgotten descriptor
        # Directory -> the files this file system created in it whose entry no sync has
        # covered yet (see _sync_entry), each with a token of its creation; by directory,
        # so that forgetting a path costs O(1), not a look through every file a store
        # that never syncs ever created.
        self._new_files: dict[str, dict[str, object]] = {}
        self._holds: dict[str, list[Any]] = {}  # path -> [its pinned _Descriptor, count]
        # Descriptors out of the cache that may hold a flock (a creation's log, a temp
        # file being written, a stale descriptor still in use): a child forked meanwhile
        # closes its copies, so that a lock dies with this process. Added under
        # _FORK_GATE with their open (or when they leave the cache), discarded before
        # their close.
        self._locking: set[int] = set()

    def __repr__(self) -> str:
        return f"RealFileSystem(max_open_files={self._max_open})"

    @property
    def shared_across_processes(self) -> bool:
        """Files on disk are seen by every process on the machine."""
        return True

    @property
    def local(self) -> bool:
        """A local disk's system calls."""
        return True

    def anchor(self, directory: str) -> None:
        """Below ``directory``, links are never followed."""
        directory = directory.rstrip("/") or "/"
        if directory not in self._anchors:
            self._anchors = (*self._anchors, directory)

    def after_fork(self) -> None:
        """Forget the parent's descriptors (closing our copies releases no flock of
        the parent's) and its thread locks; marks of life were the parent's. The
        copies of those the parent holds a lock on outside the cache (a folder being
        created, a file being replaced) are closed too: kept, they would keep the lock
        for as long as this child lives, if the parent is killed before it lets go."""
        fds = list({*self._locking, *(d.fd for d in (*self._fds.values(), *(h[0] for h in self._holds.values())))})
        self._reset()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- walking below an anchor ------------------------------------------------

    def _anchor_of(self, path: str) -> str | None:
        """The anchor ``path`` is or is below, if any (a loop: on every walk)."""
        for a in self._anchors:
            if path.startswith(a) and (len(path) == len(a) or path[len(a)] == "/"):
                return a
        return None

    def _dir_fd(self, path: str) -> tuple[int, str]:
        """A descriptor of ``path``'s directory and its last component, opened one
        component at a time with ``O_NOFOLLOW`` below an anchor. Caller closes it."""
        directory, _, name = path.rpartition("/")
        if not name:
            raise FileNotFoundError(errno.ENOENT, "not a file name", path)
        base = self._anchor_of(directory)
        if base is None:
            return os.open(directory or "/", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC), name
        fd = os.open(base, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            for part in directory[len(base):].split("/"):
                if part:
                    sub = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                    os.close(fd)
                    fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _open_file(self, path: str, flags: int, mode: int = 0o644) -> int:
        dfd, name = self._dir_fd(path)
        try:
            return os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=dfd)
        finally:
            os.close(dfd)

    # -- descriptor cache ---------------------------------------------------

    def _pin(self, path: str, *, create: bool, append: bool = True) -> _Descriptor:
        """The cached descriptor of ``path``, pinned; opened (and maybe created) if needed.

        A path is used in one mode: ``O_APPEND`` for logs, plain read-write for the
        small files written in place (``pwrite`` on an ``O_APPEND`` fd appends).
        """
        with self._mutex:
            d = self._fds.get(path)
            if d is not None:
                self._fds.move_to_end(path)
                d.pins += 1
                return d
            forgets = self._forgets
        flags = os.O_RDWR | (os.O_APPEND if append else 0) | _O_NOFOLLOW | _O_CLOEXEC
        fd = self._open_for_cache(path, flags, create)
        while True:
            with self._mutex:
                if self._forgets == forgets:  # nothing renamed or removed since it was opened
                    d = self._fds.get(path)
                    if d is not None:  # another thread opened it meanwhile
                        os.close(fd)
                        d.pins += 1
                    else:
                        d = self._cache(path, _Descriptor(fd, self._held_gone.pop(path, None)))
                        d.pins += 1  # before evicting: with every older one pinned, it was the one closed
                        self._evict()
                    return d
                forgets = self._forgets
            # A rename or a removal ran while it was opened, and its _forget found nothing
            # to drop yet: the file opened may no longer be the one at the path (replaced,
            # moved away with its folder). Cached, every later write would go to it.
            try:
                here = self._lstat(path)
                if here is None or not os.path.samestat(os.fstat(fd), here):
                    os.close(fd)
                    fd = -1
                    fd = self._open_for_cache(path, flags, create)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise

    def _open_for_cache(self, path: str, flags: int, create: bool) -> int:
        """Open ``path`` for :meth:`_pin` (created, and noted as new, when absent and ``create``)."""
        dfd, name = self._dir_fd(path)  # one walk for both attempts
        try:
            try:  # the file usually exists: one open, no exception
                return os.open(name, flags, dir_fd=dfd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                except FileExistsError:  # created by someone else meanwhile
                    return os.open(name, flags, dir_fd=dfd)
                with self._mutex:  # (a token per creation: see _sync_dir)
                    self._new_files.setdefault(_parent(path), {})[path] = object()
                return fd
        finally:
            os.close(dfd)

    def _unpin(self, d: _Descriptor) -> None:
        with self._mutex:
            d.pins -= 1
            if d.stale and d.pins == 0:
                self._locking.discard(d.fd)
                os.close(d.fd)

    def _pin_cached(self, path: str) -> _Descriptor | None:
        """The cached descriptor of ``path``, pinned, or ``None`` (nothing is opened).

        The mutex guards the map and the pins only: no system call is made under it.
        A thread in a system call releases the GIL, and a mutex held meanwhile makes
        every other thread's next file operation wait for that thread to be scheduled
        again (8 threads appending durably to 8 sessions, in one process: 4,000-4,800
        appends/s with ``fstat``/``lseek`` under it, 6,000-6,500 outside it, while this
        machine's ``fdatasync`` was fast; no difference while it was slow)."""
        with self._mutex:
            d = self._fds.get(path)
            if d is not None:
                d.pins += 1
            return d

    def _evict(self) -> None:
        """Close least recently used idle descriptors beyond the limit (mutex held).

        Walks from the old end only as far as it must: O(excess), not O(cache).
        """
        excess = len(self._fds) - self._max_open
        if excess <= 0:
            return
        victims = []
        for path, d in self._fds.items():
            if d.pins == 0:
                victims.append(path)
                if len(victims) == excess:
                    break
        for path in victims:
            os.close(self._uncache(path).fd)

    def _cache(self, path: str, d: _Descriptor) -> _Descriptor:
        """Put ``d`` in the cache as ``path``'s (mutex held)."""
        self._fds[path] = d
        self._fd_dirs.setdefault(_parent(path), set()).add(path)
        under = self._fd_under
        for directory in _ancestors(path):
            under[directory] = under.get(directory, 0) + 1
        return d

    def _uncache(self, path: str) -> _Descriptor:
        """Take ``path``'s descriptor out of the cache (mutex held)."""
        d = self._fds.pop(path)
        directory = _parent(path)
        paths = self._fd_dirs[directory]
        paths.discard(path)
        if not paths:
            del self._fd_dirs[directory]
        under = self._fd_under
        for directory in _ancestors(path):
            if under[directory] == 1:
                del under[directory]
            else:
                under[directory] -= 1
        return d

    def _forget(self, prefix: str) -> None:
        """Drop cached descriptors of ``prefix`` and below (files removed or renamed).
        The thread lock of one that is locked stays the path's (``_held_gone``, taken
        by its next descriptor) until its holder lets go: a file replaced or removed
        by the thread holding its lock (a repair, a deletion) is still that thread's
        to finish with, and another thread's locker of the path waits."""
        with self._mutex:
            self._forgets += 1
            gone = list(self._fd_dirs.get(prefix, ()))  # a folder's files
            if self._fd_under.get(prefix, 0) > len(gone):  # and more below them (a subfolder's): looked for
                gone += [p for p in self._fds if p.startswith(prefix + "/") and _parent(p) != prefix]
            if prefix in self._fds:  # a file
                gone.append(prefix)
            for path in gone:
                d = self._fds[path]
                if d.pins:  # noted before it leaves the cache (maybe locked): a child always knows to close it
                    self._locking.add(d.fd)
                self._uncache(path)
                if d.pins:
                    d.stale = True
                    if d.lock.locked():
                        self._held_gone[path] = d.lock
                else:
                    os.close(d.fd)
            self._not_new(prefix)  # a file
            self._new_files.pop(prefix, None)  # a directory: the files made in it. (Deeper ones stay
            # listed: harmless, a sync of a listed path costs one directory sync more.)

    @contextlib.contextmanager
    def _open(self, path: str, *, create: bool = False) -> Iterator[int]:
        d = self._pin(path, create=create)
        try:
            yield d.fd
        finally:
            self._unpin(d)

    # -- FileSystem -----------------------------------------------------------

    def read(self, path: str) -> bytes:
        """The whole file (``pread`` on the cached descriptor when there is one)."""
        d = self._pin_cached(path)
        if d is None:
            fd = self._open_file(path, os.O_RDONLY)
            try:
                return _read_fd(fd, 0)
            finally:
                os.close(fd)
        try:
            return _read_fd(d.fd, 0)
        finally:
            self._unpin(d)

    def read_lease(self, path: str) -> dict[str, Any] | None:
        """The lease record (the format of :meth:`FileSystem.write_lease`), read on the
        descriptor :meth:`write_lease` keeps: ``pread`` until a short read, no ``fstat``."""
        try:
            d = self._pin(path, create=False, append=False)
        except FileNotFoundError:
            return None
        try:
            chunks, offset = [], 0
            while True:
                chunk = os.pread(d.fd, _LEASE_READ_BYTES, offset)
                chunks.append(chunk)
                if len(chunk) < _LEASE_READ_BYTES:
                    break
                offset += len(chunk)
            kept = d.lease
        finally:
            self._unpin(d)
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if kept is not None and kept[0] == raw:  # the very bytes this process wrote: their record, no decoding
            return _copy_lease(kept[1])
        return _decode_lease(raw)

    def write_lease(self, path: str, lease: Mapping[str, Any], *, durable: bool = False) -> None:
        """:meth:`FileSystem.write_lease`'s bytes, written in place; the record they
        read as is kept with them on the file's descriptor, so that reading them back
        (the next cycle of a lease this process takes, 8 µs of decoding) compares
        bytes instead. Bytes anyone else wrote, or changed on disk, are decoded."""
        data = _encode_lease(lease)
        self._write_in_place(path, data, durable, _lease_as_read(lease))

    def read_from(self, path: str, offset: int) -> bytes:
        """The file's bytes from ``offset`` to its current end (``pread`` on the cached fd)."""
        with self._open(path) as fd:
            return _read_fd(fd, offset)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """At most ``size`` bytes of the file from ``offset`` (``pread`` on the cached fd)."""
        with self._open(path) as fd:
            return _read_fd(fd, offset, offset + size)

    def stat(self, path: str) -> tuple[int, Any]:
        """Size and ``(st_dev, st_ino)``, by ``fstat`` of the file's cached descriptor
        (opened and cached when there is none: every read of a session stats its
        files, and walking the path costs ten times more), re-opened when the file
        was replaced or removed."""
        d = self._pin_cached(path)
        if d is not None:
            try:
                st = os.fstat(d.fd)
            finally:
                self._unpin(d)
            if st.st_nlink and S_ISREG(st.st_mode):
                return st.st_size, (st.st_dev, st.st_ino)
        for _ in range(2):
            try:
                d = self._pin(path, create=False)
            except (FileNotFoundError, NotADirectoryError):
                raise
            except OSError:  # not a file that opens read-write (a directory, a read-only store)
                break
            try:
                st = os.fstat(d.fd)
            finally:
                self._unpin(d)
            if st.st_nlink and S_ISREG(st.st_mode):
                return st.st_size, (st.st_dev, st.st_ino)
            self._forget(path)  # removed or replaced (a repair) since we opened it
            if st.st_nlink:
                break
        dfd, name = self._dir_fd(path)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
        if not S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        return st.st_size, (st.st_dev, st.st_ino)

    def _size_as_open(self, path: str) -> int:
        d = self._pin_cached(path)
        if d is None:
            return self.stat(path)[0]
        try:
            return os.lseek(d.fd, 0, os.SEEK_END)
        finally:
            self._unpin(d)

    def append(self, path: str, data: bytes) -> None:
        """One ``write`` on an ``O_APPEND`` descriptor. A short write (a disk that fills
        takes what fits) is followed by one ``write`` of the rest, which either completes
        the data or raises why it cannot (``ENOSPC`` for a full disk); a second short
        write raises ``OSError`` (``EIO``). Either way the caller cuts the tail back."""
        d = self._pin(path, create=True)
        try:
            written = os.write(d.fd, data)
            if written != len(data):
                written += os.write(d.fd, data[written:])
        finally:
            self._unpin(d)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes", path)

    def sync(self, path: str) -> None:
        """``fdatasync`` the file; ``fsync`` its directory when append created it."""
        d = self._pin(path, create=False)
        try:
            _fdatasync(d.fd)
        finally:
            self._unpin(d)
        self._sync_entry(path)

    def truncate(self, path: str, size: int) -> None:
        """Cut the file back to ``size`` bytes."""
        with self._open(path) as fd:
            os.ftruncate(fd, size)

    def _open_locking(self, name: str, flags: int, dir_fd: int) -> int:
        """Open a file this process is about to ``flock`` outside the cache, its
        descriptor in :attr:`_locking` (closed by a child, see :meth:`after_fork`);
        no fork comes between the open and that (:data:`_FORK_GATE`)."""
        with _FORK_GATE[0]:
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            self._locking.add(fd)
        return fd

    def _unlock_and_close(self, fd: int) -> None:
        """Let go of the lock of a descriptor from :meth:`_open_locking` (``LOCK_UN``:
        a child forked meanwhile shares it, closing alone would leave it held), then
        close it, whatever the unlock says."""
        try:
            _flock(fd, "LOCK_UN")
        finally:
            self._locking.discard(fd)
            os.close(fd)

    def write_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Temp file (``O_EXCL``, a random name, ``flock``'ed while written so that a
        repair can tell it from garbage), (fsync), rename over ``path``, (fsync of the
        directory). The temp file is removed on any failure, ``ENOSPC`` included. Its
        lock is let go of explicitly before it is closed: a child forked meanwhile
        shares it, and closing alone would leave it held, on the file then renamed to
        ``path``, for as long as the child lives."""
        dfd, name = self._dir_fd(path)
        try:
            tmp = f".{name[:64]}.tmp-{os.urandom(8).hex()}"
            fd = self._open_locking(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, dfd)
            try:
                try:
                    _flock(fd, "LOCK_EX")
                    _write_fd(fd, data)
                    if durable:
                        os.fsync(fd)
                finally:
                    self._unlock_and_close(fd)  # (before the rename: an error fails the write, nothing replaced)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            self._forget(path)
            if durable:
                _fsync_fd(dfd)
        finally:
            os.close(dfd)

    def write_in_place(self, path: str, data: bytes, *, durable: bool = False) -> None:
        """One ``pwrite`` at offset 0 (then a truncate if shorter); ``durable``: fdatasync."""
        self._write_in_place(path, data, durable, None)

    def _write_in_place(self, path: str, data: bytes, durable: bool, record: dict[str, Any] | None) -> None:
        """:meth:`write_in_place`, keeping ``record`` as what ``data`` reads as (a lease)."""
        d = self._pin(path, create=True, append=False)
        try:
            d.lease = None
            os.pwrite(d.fd, data, 0)
            if os.fstat(d.fd).st_size > len(data):
                os.ftruncate(d.fd, len(data))
            if durable:
                _fdatasync(d.fd)
            if record is not None:
                d.lease = data, record
        finally:
            self._unpin(d)
        if durable:
            self._sync_entry(path)

    @contextlib.contextmanager
    def publish_folder(self, staging: str, final: str, files: Sequence[tuple[str, bytes]], *,
                       durable: bool) -> Iterator[None]:
        """:meth:`FileSystem.publish_folder` on descriptors: one walk to the directory,
        the folder made and opened once, each file created (``O_EXCL``: the folder is
        new), written and (``durable``) synced on its own descriptor, the first one
        ``flock``'ed until the block ends (the lock is the file's, so the rename keeps
        it); none of them cached (their path changes with the rename). A creation is
        mostly system calls: it made 74 through the primitives one by one, 57 so
        (strace, ``durable=False``). The lock is let go of explicitly (``LOCK_UN``),
        not by closing: a child forked meanwhile shares the descriptor's lock, and
        would hold it for as long as it lives (a child closes its copy at once, see
        :meth:`after_fork`, so that the lock dies with this process if it is killed).
        Every descriptor is closed, whatever fails."""
        if final.rpartition("/")[0] != staging.rpartition("/")[0]:  # (not how a storage calls it)
            with super().publish_folder(staging, final, files, durable=durable):
                yield
            return
        dfd, name = self._dir_fd(staging)
        log = -1  # the log's descriptor, locked until the block ends (the directory's too is kept)
        try:
            renamed = False
            try:
                os.mkdir(name, 0o755, dir_fd=dfd)
                fds: list[int] = []  # closed once the folder is in place: the new folder, its other files
                try:
                    fds.append(os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dfd))
                    for file, data in files:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
                        if log < 0:
                            fd = log = self._open_locking(file, flags, fds[0])
                            _flock(fd, "LOCK_EX")
                        else:
                            fd = os.open(file, flags, 0o644, dir_fd=fds[0])
                            fds.append(fd)
                        _write_fd(fd, data)
                    if durable:
                        for fd in (log, *fds[1:]):
                            _fdatasync(fd)
                        _fsync_fd(fds[0])  # the files' entries
                    os.rename(name, final.rpartition("/")[2], src_dir_fd=dfd, dst_dir_fd=dfd)
                    renamed = True
                finally:
                    _close_all(fds)
                self._forget(staging)
                self._forget(final)
                if durable:
                    _fsync_fd(dfd)
            except BaseException:
                if not renamed:
                    with contextlib.suppress(OSError):
                        self.remove_tree(staging)
                raise
            yield
        finally:
            if log >= 0:
                _let_go(self._unlock_and_close, log)
            _let_go(os.close, dfd)

    def makedirs(self, path: str, *, durable: bool = True) -> None:
        """Create the missing directories, one at a time below an anchor (a link where a
        directory should be is an error), then (durable) fsync each new entry's parent."""
        path = path.rstrip("/") or "/"
        base = self._anchor_of(path)
        if base is None or path == base:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
                if durable:
                    _fsync_dir(os.path.dirname(os.path.abspath(path)))
            return
        # Mostly only the last directory may be missing (a shard of keys/, a session's
        # staging folder): one mkdir below its parent, walked to as every path is.
        try:
            dfd, name = self._dir_fd(path)
        except FileNotFoundError:
            pass  # a parent is missing too: the walk below
        else:
            try:
                if not _make_dir(dfd, name, durable):  # (a link or a file there is an error, as in the walk)
                    os.close(os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dfd))
                return
            finally:
                os.close(dfd)
        self.makedirs(base, durable=durable)
        fd = os.open(base, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            for part in path[len(base):].split("/"):
                if not part:
                    continue
                _make_dir(fd, part, durable)
                sub = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = sub
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``, sorted; ``[]`` when the directory is absent."""
        try:
            if path.rstrip("/") in self._anchors:
                return sorted(os.listdir(path))
            dfd, name = self._dir_fd(path.rstrip("/"))
            try:
                fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dfd)
            finally:
                os.close(dfd)
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            if e.errno == errno.ELOOP:
                return []
            raise

    def _lstat(self, path: str) -> os.stat_result | None:
        try:
            dfd, name = self._dir_fd(path.rstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(dfd)

    def exists(self, path: str) -> bool:
        """Whether a file, directory or link is at ``path`` (not following it)."""
        return self._lstat(path) is not None

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory, not a link to one."""
        st = self._lstat(path)
        return st is not None and S_ISDIR(st.st_mode)

    def rename(self, src: str, dst: str, *, durable: bool = True) -> None:
        """``rename`` between two directories, then (``durable``) an fsync of the destination's."""
        sfd, sname = self._dir_fd(src)
        try:
            dfd, dname = self._dir_fd(dst)
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                self._forget(src)
                self._forget(dst)  # what was there is gone: a descriptor of it must not be used for the path
                if durable:
                    _fsync_fd(dfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def remove(self, path: str, *, durable: bool = False) -> None:
        """``unlink`` (no error when absent); ``durable``: fsync of the directory."""
        self._forget(path)
        try:
            dfd, name = self._dir_fd(path)
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
            if durable:
                _fsync_fd(dfd)
        finally:
            os.close(dfd)

    def remove_tree(self, path: str) -> None:
        """Remove a directory tree (``shutil.rmtree``, which never follows links); a
        link in the directory's place is removed itself."""
        self._forget(path)
        st = self._lstat(path)
        if st is None:
            return
        if not S_ISDIR(st.st_mode):
            self.remove(path)
            return
        shutil.rmtree(path, ignore_errors=True)

    def symlink(self, target: str, path: str, *, durable: bool = True) -> bool:
        """``symlink`` (atomic, fails when the name exists); durable: fsync of the directory."""
        dfd, name = self._dir_fd(path)
        try:
            try:
                os.symlink(target, name, dir_fd=dfd)
            except FileExistsError:
                return False
            if durable:
                _fsync_fd(dfd)
            return True
        finally:
            os.close(dfd)

    def readlink(self, path: str) -> str | None:
        """``readlink``; ``None`` when there is no link (or no directory) there."""
        try:
            dfd, name = self._dir_fd(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.readlink(name, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:  # not a link
                return None
            raise
        finally:
            os.close(dfd)

    def locked(self, path: str, *, create: bool = True) -> contextlib.AbstractContextManager[Any]:
        """The thread lock of the file's cached descriptor, then ``flock(LOCK_EX)`` on it."""
        return _FlockGuard(self, path, create)

    def hold(self, path: str) -> None:
        """A ``flock(LOCK_SH)`` on ``path`` kept until the last :meth:`release`; the OS
        drops it when this process dies, whatever its PID namespace. The lock is taken
        on the path's cached descriptor, pinned while held, so that a lease taken again
        costs two ``flock`` calls, not an open and a close of the file (and of each
        directory above it)."""
        with self._mutex:
            held = self._holds.get(path)
            if held is not None:
                held[1] += 1
                return
        d = self._pin(path, create=True)
        try:
            _flock(d.fd, "LOCK_SH")
        except BaseException:
            self._unpin(d)
            raise
        with self._mutex:
            self._not_new(path)  # a mark, never synced: its entry need not be
            held = self._holds.get(path)
            if held is None:
                self._holds[path] = [d, 1]
                return
            held[1] += 1
        if held[0] is not d:  # another descriptor won the race: this one's lock goes
            with contextlib.suppress(OSError):
                _flock(d.fd, "LOCK_UN")
        self._unpin(d)

    def release(self, path: str) -> None:
        """Undo one :meth:`hold`; the last one unlocks the descriptor (it stays cached)."""
        with self._mutex:
            held = self._holds.get(path)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del self._holds[path]
        d = held[0]
        try:
            _flock(d.fd, "LOCK_UN")
        finally:
            self._unpin(d)

    def is_held(self, path: str) -> bool | None:
        """Whether any process holds a ``flock`` on ``path``: a non-blocking
        ``LOCK_EX`` on a fresh descriptor fails exactly then. A missing file is not held."""
        try:
            fd = self._open_file(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                _flock(fd, "LOCK_EX", blocking=False)
            except BlockingIOError:
                return True
            return False
        finally:
            os.close(fd)  # closing drops the probe's own lock

    def close(self) -> None:
        """Close every idle cached descriptor."""
        with self._mutex:
            for path in [p for p, d in self._fds.items() if d.pins == 0]:
                os.close(self._uncache(path).fd)
            if not self._fds:  # an emptied dict keeps its grown table
                self._fds, self._fd_dirs, self._fd_under = OrderedDict(), {}, {}

    def _sync_entry(self, path: str) -> None:
        """fsync the directory of ``path`` when this file system created the file and
        no directory sync has covered its entry since. (Read without the mutex: its
        creation adds the path before the file can be written, see :meth:`_pin`.)"""
        directory = _parent(path)
        if path in self._new_files.get(directory, ()):
            self._sync_dir(directory)

    def _not_new(self, path: str, creation: object | None = None) -> None:
        """Forget that ``path`` is new (mutex held); given ``creation``, only if that
        creation is still the path's (not a file made again there since)."""
        directory = _parent(path)
        names = self._new_files.get(directory)
        if names is not None and path in names and (creation is None or names[path] is creation):
            del names[path]
            if not names:
                del self._new_files[directory]

    def _sync_dir(self, path: str) -> None:
        """fsync a directory: every entry created in it before is then durable. Only
        the new files known before the fsync began count as synced, and only once it
        succeeded: one created meanwhile may have missed it, and a failed sync covers
        nothing (the next sync of such a file syncs the directory again)."""
        directory = path.rstrip("/") or "/"
        with self._mutex:
            covered = dict(self._new_files.get(directory, {}))
        dfd, _ = self._dir_fd(directory.rstrip("/") + "/.")
        try:
            _fsync_fd(dfd)
        finally:
            os.close(dfd)
        if covered:
            with self._mutex:
                for p, creation in covered.items():
                    self._not_new(p, creation)


class _FlockGuard:
    """``RealFileSystem.locked``: a class, not a generator, because it is on every write."""

    __slots__ = ("_create", "_d", "_fs", "_path")

    def __init__(self, fs: RealFileSystem, path: str, create: bool) -> None:
        self._fs, self._path, self._create = fs, path, create
        self._d: _Descriptor | None = None

    def __enter__(self) -> None:
        fs = self._fs
        while True:
            d = fs._pin(self._path, create=self._create)
            try:
                d.lock.acquire()
                try:
                    _flock(d.fd, "LOCK_EX")
                    try:
                        if os.fstat(d.fd).st_nlink and not d.stale:
                            self._d = d
                            return
                    finally:
                        if self._d is None:
                            _flock(d.fd, "LOCK_UN")
                finally:
                    if self._d is None:
                        d.lock.release()
                # The file was replaced (a repair renamed a new one over it), removed or
                # renamed away while cached or while we waited: a lock on it excludes
                # nobody. Open the path again (gone: FileNotFoundError, if not create).
                with fs._mutex:
                    if fs._fds.get(self._path) is d:  # (replaced by another process: still cached)
                        fs._uncache(self._path)
                        d.stale = True
            finally:
                if self._d is None:
                    fs._unpin(d)

    def __exit__(self, *exc: object) -> None:
        d, self._d = self._d, None
        if d is not None:
            try:
                _flock(d.fd, "LOCK_UN")
            finally:
                if d.stale:  # the path's lock no more, once let go
                    fs = self._fs
                    with fs._mutex:
                        if fs._held_gone.get(self._path) is d.lock:
                            del fs._held_gone[self._path]
                d.lock.release()
                self._fs._unpin(d)


def _flock(fd: int, op: str, *, blocking: bool = True) -> None:
    """``fcntl.flock``; ``fcntl`` is imported at the first call, so that a platform
    without it can still import this module for the in-memory and SQL storages (the
    file storage then raises :class:`StorageError` at its first lock)."""
    flock = _FLOCK.get(op if blocking else op + "|LOCK_NB")
    if flock is None:
        flock = _load_flock(op, blocking)
    flock(fd)


_FLOCK: dict[str, Callable[[int], None]] = {}  # "LOCK_EX", "LOCK_EX|LOCK_NB"... -> the call


def _load_flock(op: str, blocking: bool) -> Callable[[int], None]:
    try:
        import fcntl
    except ImportError:
        raise OSError(errno.ENOSYS, "the file storage needs fcntl.flock (POSIX); use InMemoryFileSystem, "
                                    "SqliteStorage or PostgresStorage on this platform") from None
    flags = getattr(fcntl, op) | (0 if blocking else fcntl.LOCK_NB)
    lock = fcntl.flock

    def flock(fd: int) -> None:
        lock(fd, flags)

    _FLOCK[op if blocking else op + "|LOCK_NB"] = flock
    return flock


def _read_fd(fd: int, offset: int, end: int | None = None) -> bytes:
    """The bytes of ``fd`` from ``offset`` to its end as ``fstat`` saw it (or to ``end``,
    when sooner)."""
    size = os.fstat(fd).st_size
    end = size if end is None else min(end, size)
    chunks = []
    while offset < end:
        chunk = os.pread(fd, end - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the descriptor's offset (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# A fork waits while a thread opens a file it will lock and notes its descriptor
# (RealFileSystem._open_locking), so that a child has a copy only of descriptors it
# knows to close. Held by the forking thread across fork(); a child gets a new one.
# Re-entrant: a signal handler that forks in the thread holding it must not wait for itself.
_FORK_GATE = [threading.RLock()]


def _new_fork_gate() -> None:
    _FORK_GATE[0] = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=lambda: _FORK_GATE[0].acquire(), after_in_parent=lambda: _FORK_GATE[0].release(),
                        after_in_child=_new_fork_gate)


def _close_all(fds: list[int]) -> None:
    """Close every descriptor of ``fds``; the first error, if any, is raised after."""
    failed: OSError | None = None
    for fd in fds:
        try:
            os.close(fd)
        except OSError as e:
            failed = failed or e
    if failed is not None:
        raise failed


def _fsync_fd(fd: int) -> None:
    """fsync a directory descriptor (entries created or renamed in it survive a crash)."""
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise


def _make_dir(dfd: int, name: str, durable: bool) -> bool:
    """Make the directory ``name`` in ``dfd``, whose entry is then synced (``durable``);
    ``False`` when something is there already (what it is, the caller checks)."""
    try:
        os.mkdir(name, 0o755, dir_fd=dfd)
    except FileExistsError:
        return False
    if durable:
        _fsync_fd(dfd)
    return True


def _parent(path: str) -> str:
    """The directory of ``path``, as the files of each are kept (``_new_files``, ``_fd_dirs``)."""
    return path.rpartition("/")[0] or "/"


def _ancestors(path: str) -> list[str]:
    """Every directory ``path`` lies below, nearest first, as :func:`_parent` names them
    (a list, not a generator: it runs for every descriptor cached and dropped)."""
    found = []
    while path != "/":
        path = _parent(path)
        found.append(path)
    return found


def _fsync_dir(path: str) -> None:
    """fsync a directory by path."""
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)
