"""JSONL storage: sessions as append-only JSON-lines logs on a file system (the default).

:class:`JsonlStorage` keeps the layout described in the log format's comment: a key
index of symbolic links, one folder per session with its message log, branch events,
lease and tally. It writes each record with one ``write()`` under the log's lock,
syncs by group commit, cuts back torn tails and quarantines cut chains, and reads
sessions forwards in bounded parts or backwards from the end.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from .errors import InvalidInput, InvalidKey, SessionNotFound, StorageError, _log, _WrittenMeanwhile
from .file_systems import FileSystem, _after_fork_hooks, _checked_line, _decode_lease
from .key_names import _KeyNames, _link_in_folder
from .log_format import _CHAIN_MARK, _encode_line, _legacy_branch_event, _parse_lines, _unfinished_tail
from .real_file_system import RealFileSystem
from .records import FORMAT_VERSION, Problem
from .storage import IndexEntry, Position, Records, Storage
from .validation import _check_key, _is_session_id


class _SyncState:
    """Group commit of one session's files in this process (see :meth:`JsonlStorage.sync`).

    Counted in *tickets* (one per record written here), not byte offsets: a log
    rewritten under us (a repair) cannot make an unsynced record look synced. For
    each file (0: branch events, 1: messages) it also knows where this process's
    unsynced records begin and end, and whether another writer's record lies among
    them: what a failed sync may cut off.
    """

    __slots__ = ("after", "cond", "crossed", "dirty", "end", "failed", "foreign", "poisoned", "synced", "syncing",
                 "unsynced_from", "written")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.syncing = False
        self.written = 0  # tickets issued: records this process wrote
        self.synced = 0  # every ticket up to this one is durable
        self.failed = 0  # every ticket up to this one was lost to a failed sync
        self.unsynced_from: list[int | None] = [None, None]  # per file: where our unsynced records begin
        self.end = [0, 0]  # per file: the offset after our last record
        self.foreign = [False, False]  # per file: another writer's record lies among our unsynced ones
        self.after: list[int] | None = None  # both files' sizes after our last record
        self.crossed = False  # another writer wrote to either file since our first unsynced record
        self.dirty = [False, False]
        self.poisoned: str | None = None

    def note_write(self, file: int, start: int, end: int, position: Position) -> None:
        """A record of ours now spans ``[start, end)`` of ``file``, written at
        ``position`` (both files' sizes then: the caller holds the lock, caught up)."""
        with self.cond:
            if self.unsynced_from[0] is None and self.unsynced_from[1] is None:
                self.crossed = False
            elif self.after is None or list(position) != self.after:
                # Another writer wrote in between, to this file or to the other one: a
                # branch event of theirs counts our messages, a message of theirs may
                # follow our event. Taking ours back would take theirs with it.
                self.crossed = True
            if self.unsynced_from[file] is None:
                self.unsynced_from[file], self.foreign[file] = start, False
            elif start != self.end[file]:
                self.foreign[file] = True
            self.end[file] = end
            self.after = list(position)
            self.after[file] = end
            self.dirty[file] = True
            self.written += 1

    def rolled_back(self, file: int, offset: int) -> None:
        """Our records from ``offset`` on were removed (a failed write scope, under the lock)."""
        with self.cond:
            start = self.unsynced_from[file]
            if start is not None and start >= offset:
                self.unsynced_from[file], self.foreign[file] = None, False
            self.end[file] = min(self.end[file], offset)
            if self.after is not None:  # (never forwards: what others wrote after our last record still counts)
                self.after[file] = min(self.after[file], offset)

    @property
    def idle(self) -> bool:
        return not self.syncing and self.synced >= self.written and not any(self.dirty) and not self.poisoned


class _JsonlWriting:
    """``JsonlStorage.writing``: a class, not a generator, because it is on every write."""

    __slots__ = ("_lock", "_session_id", "_storage")

    def __init__(self, storage: JsonlStorage, session_id: str) -> None:
        self._storage, self._session_id = storage, session_id
        self._lock: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> None:
        storage, sid = self._storage, self._session_id
        try:
            lock = storage.fs.locked(storage._log(sid), create=False)
            lock.__enter__()
        except (FileNotFoundError, NotADirectoryError):  # deleted, now or while we waited
            raise SessionNotFound(sid) from None
        self._lock = lock

    def __exit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)


# What vouches for one reader's position in a session's JSONL files (see
# JsonlStorage._read_on): (position, idents, ends). ``idents``: the files' identities
# when it was reached (None for a file that did not exist); ``ends``: for the events
# file then the log, the end, length and CRC-32 of the last line before that end, then
# for each whether the reader read that line (1) rather than wrote it (0).
#
# A storage keeps one per session, for the very ``position`` object it last returned,
# and believes it for that object only (``is``): a line another reader saw at the same
# offset (another thread's read of the metadata, a check) may have been written after
# the files were cut back and grown again, and proves nothing about what this reader
# read. A reader whose position is not the one kept reads its session whole.
_Vouch = tuple[Position, tuple[Any, Any], tuple[int, ...]]


class _Tallied(tuple[int, int]):
    """A position read from a saved tally, with what vouches for it, kept by no storage
    (a read of the metadata or of a path's end uses it once): its lines are marked read
    (not written), so every use checks them again."""

    vouch: _Vouch


# A _Vouch's ends for the first record a reader writes: what came before it was read
# by nobody, so nothing vouches for the other file's end (its "read" flag set).
_UNVOUCHED = (-1, 0, 0, -1, 0, 0)


class JsonlStorage(Storage):
    """Format v2 (see "Log format") on a :class:`FileSystem`: the default storage.

    ``JsonlStorage(fs=None, directory="./sessions")``; ``fs`` defaults to a
    :class:`RealFileSystem`. Writers hold the file system's lock of the session's
    ``messages.jsonl``; the key index is one symbolic link per key, so a lookup is
    one ``readlink`` whatever the store holds. The index is rebuilt from the session
    folders (each names its key in ``session.json``) when it is lost, before any key
    can be given a second session: ``keys/.complete`` says it is whole (one ``stat``
    at open and on a lookup that finds no link); a link lost alone is reported by
    ``check()`` and put back by ``repair()``. Beside it, ``names/`` keeps the keys in
    folders of their pieces (see "Layout of names/"), which :meth:`find_sessions`
    walks. A store of format 1 is read as it is and migrated by the first write.
    """

    def __init__(self, fs: FileSystem | None = None, directory: str | os.PathLike[str] = "./sessions") -> None:
        if fs is not None and not isinstance(fs, FileSystem):
            raise InvalidInput(f"fs must be a FileSystem, not {type(fs).__name__}")
        try:
            path = os.fspath(directory)
        except TypeError:
            raise InvalidInput(f"directory must be a path, not {type(directory).__name__}") from None
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidInput(f"directory must be a non-empty str path, not {directory!r}")
        self.fs = fs if fs is not None else RealFileSystem()
        self.directory = path.rstrip("/") or "/"
        self._names = _KeyNames(self.fs, self.directory)
        self._durable = True
        self._must_sync = True
        self._reset()
        _after_fork_hooks.add(self.after_fork)

    def _reset(self) -> None:
        self._syncs: dict[str, _SyncState] = {}
        self._syncs_lock = threading.Lock()
        # Session id -> what vouches for the position this storage last returned for it
        # (see _Vouch); dropped when this storage cuts the files back itself (a failed
        # sync), rewrites them (a repair) or deletes the session, and on forget/close.
        self._vouches: dict[str, _Vouch] = {}
        self._legacy: tuple[int, dict[str, IndexEntry]] | None = None  # format 1: (journal size, key -> entry)
        self._current_format = False  # seen to be format 2 (writing() need not look again)

    def __repr__(self) -> str:
        return f"JsonlStorage({self.fs!r}, {self.directory!r})"

    @property
    def location(self) -> str:
        return self.directory

    @property
    def shared_across_processes(self) -> bool:
        return self.fs.shared_across_processes

    @property
    def local_writes(self) -> bool:
        return self.fs.local

    def open(self, *, durable: bool) -> None:
        self._durable = durable
        self._must_sync = durable and not self.fs.sync_is_noop
        if isinstance(self.fs, RealFileSystem):
            self.fs.anchor(os.path.realpath(self.directory))
            self.fs.anchor(os.path.abspath(self.directory))
        self.fs.anchor(self.directory)
        self._ensure_index()

    def close(self) -> None:
        """Close the file system's descriptors and drop the per-session caches (what
        was last read of each file: a later load of a session reads it whole)."""
        self.fs.close()
        self._vouches.clear()
        with self._syncs_lock:
            for sid in [s for s, x in self._syncs.items() if x.idle]:
                del self._syncs[sid]

    def after_fork(self) -> None:
        self._reset()

    def _marked(self, session_id: str, position: Position) -> _Vouch | None:
        """What vouches for ``position``: when it is the very one kept (see ``_Vouch``),
        or one read from a saved tally (its own, all of whose lines are checked again)."""
        vouch = self._vouches.get(session_id)
        if vouch is not None and vouch[0] is position:
            return vouch
        return position.vouch if isinstance(position, _Tallied) else None

    def _mark(self, session_id: str, epos: int, mpos: int, idents: tuple[Any, Any], ends: Sequence[int]) -> Position:
        """A new position, kept with what vouches for it (for it alone)."""
        position = epos, mpos
        self._vouches[session_id] = position, idents, tuple(ends)
        return position

    def forget(self, session_id: str) -> None:
        self._vouches.pop(session_id, None)
        with self._syncs_lock:
            st = self._syncs.get(session_id)
            if st is not None and st.idle:
                del self._syncs[session_id]

    # -- paths ----------------------------------------------------------------------------

    def _dir(self, session_id: str) -> str:
        return f"{self.directory}/{session_id}"

    def _log(self, session_id: str) -> str:
        return f"{self.directory}/{session_id}/messages.jsonl"

    def _lease(self, session_id: str) -> str:
        return f"{self.directory}/{session_id}/lock.json"

    def _lease_mark(self, session_id: str) -> str:
        return f"{self.directory}/{session_id}/lease.lock"

    def _events(self, session_id: str) -> str:
        return f"{self.directory}/{session_id}/branches.jsonl"

    def _key_link(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self.directory}/keys/{digest[:2]}/{digest}"

    @property
    def _marker(self) -> str:
        return f"{self.directory}/session-store.json"

    @property
    def _journal_path(self) -> str:  # format 1
        return f"{self.directory}/keys.jsonl"

    def _format(self) -> int:
        """2 (key links), 1 (a keys.jsonl journal, not migrated yet) or 0 (no store yet)."""
        if self.fs.exists(self._marker):
            return 2
        if self.fs.exists(self._journal_path) or self.fs.exists(f"{self.directory}/sessions.json"):
            return 1
        return 0

    def is_store(self) -> bool:
        """Whether the directory holds a session store (of any format) or is empty."""
        return self._format() > 0 or not self.fs.listdir(self.directory)

    def _sync_file(self, path: str) -> None:
        """fsync ``path`` when this storage syncs at all; failures become StorageError."""
        if not self._must_sync:
            return
        try:
            self.fs.sync(path)
        except OSError as e:
            raise StorageError(e.errno, f"could not sync {path}: {e.strerror or e}") from e

    def _write_record(self, path: str, offset: int, line: bytes) -> None:
        """One append at ``offset`` (the known end); on failure cut back and raise StorageError."""
        try:
            self.fs.append(path, line)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.fs.truncate(path, offset)
            raise StorageError(e.errno, f"could not append to {path}: {e.strerror or e}") from e

    # -- the key index -----------------------------------------------------------------------

    def _live_target(self, key: str) -> str | None:
        """The session id the key's link names, if that session's log exists."""
        sid = self.fs.readlink(self._key_link(key))
        if sid is None or not _is_session_id(sid) or not self.fs.exists(self._log(sid)):
            return None
        return sid

    def lookup(self, key: str) -> str | None:
        if self._format() == 1:
            entry = self._legacy_index().get(key)
            return entry.session_id if entry is not None else None
        found = self._live_target(key)
        if found is None and self._ensure_index():  # the index was lost meanwhile: rebuilt, look again
            found = self._live_target(key)
        return found

    @property
    def _index_whole(self) -> str:
        return f"{self.directory}/keys/.complete"

    def _ensure_index(self) -> bool:
        """Rebuild the key index if it is lost; whether it was.

        Lost: the store's marker (written with its first session) is there but
        ``keys/.complete`` is not (the ``keys`` folder was removed, or never finished).
        Every complete session folder's key is then linked again, under one lock
        across processes, the earliest created session first when two name one key
        (the others stay out of the index: ``check()`` reports them). ``.complete`` is
        written last, so a rebuild cut short by a crash is done again. A store
        written before ``.complete`` existed is rebuilt once, on its first open."""
        fs = self.fs
        if fs.exists(self._index_whole) or self._format() != 2:
            return False
        with fs.locked(self._marker, create=False):  # the store's marker is the rebuild's lock: no file more
            if fs.exists(self._index_whole):
                return False  # another store rebuilt it while we waited
            entries = sorted(self._session_folders(), key=lambda e: (e.created_at, e.session_id))
            linked = sum(self._link_key(entry.key, entry.session_id) for entry in entries
                         if self._live_target(entry.key) is None)
            fs.makedirs(f"{self.directory}/keys", durable=self._durable)
            fs.write_atomic(self._index_whole, b"", durable=self._durable)
        if linked:
            _log.warning("%s: the key index was lost; %d key(s) linked again from the session folders",
                         self.directory, linked)
        return True

    def _read_meta(self, session_id: str) -> IndexEntry | None:
        """``session.json`` of a folder, validated; ``None`` when absent or unusable."""
        if not _is_session_id(session_id):
            return None
        try:
            doc = json.loads(self.fs.read(f"{self._dir(session_id)}/session.json"))
            key, created = _check_key(doc["key"]), doc["createdAt"]
            if doc["sessionId"] != session_id or not isinstance(created, int) or isinstance(created, bool):
                raise ValueError("session.json does not match its folder")
        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError, InvalidKey):
            return None
        fork = doc.get("forkedFrom")
        forked_from = (fork[0], fork[1]) if (isinstance(fork, list) and len(fork) == 2 and _is_session_id(fork[0])
                                             and (fork[1] is None or isinstance(fork[1], str))) else None
        return IndexEntry(session_id=session_id, key=key, created_at=created, forked_from=forked_from)

    def _described(self, session_id: str) -> IndexEntry | None:
        """The session as its ``session.json`` describes it, or, in a store of the seed's
        layout not migrated yet (no ``session.json``), as ``sessions.json`` does."""
        entry = self._read_meta(session_id)
        if entry is None and self._format() == 1:
            entry = next((e for e in self._legacy_index().values() if e.session_id == session_id), None)
        return entry

    def session_info(self, session_id: str) -> IndexEntry | None:
        entry = self._described(session_id)
        if entry is None:
            # session.json unreadable (damaged by hand or by the disk): the session is
            # still reachable by its id while its log exists; its key is unknown ("").
            if not _is_session_id(session_id) or not self.fs.exists(self._log(session_id)):
                return None
            return IndexEntry(session_id=session_id, key="", created_at=0)
        if self.lookup(entry.key) != session_id:
            return None
        return entry

    def list_sessions(self) -> list[IndexEntry]:
        self._ensure_index()
        if self._format() == 1:
            found = list(self._legacy_index().values())
        else:
            found = []
            keys = f"{self.directory}/keys"
            for shard in self.fs.listdir(keys):
                if len(shard) != 2:
                    continue
                for name in self.fs.listdir(f"{keys}/{shard}"):
                    sid = self.fs.readlink(f"{keys}/{shard}/{name}")
                    if sid is None or not _is_session_id(sid) or not self.fs.exists(self._log(sid)):
                        continue
                    entry = self._read_meta(sid)
                    if entry is None:  # session.json unreadable: listed, its key unknown
                        found.append(IndexEntry(session_id=sid, key="", created_at=0))
                    elif self._key_link(entry.key) == f"{keys}/{shard}/{name}":
                        found.append(entry)
        found.sort(key=lambda e: (e.created_at, e.session_id))
        return found

    def find_sessions(self, key_prefix: str) -> list[IndexEntry]:
        """Walks the one subtree of ``names/`` where the prefix's keys are (see "Layout
        of names/"): O(matches), plus one ``listdir`` where the prefix ends inside a
        piece. A leaf is believed only when its session's key (its session.json) starts
        with the prefix and the key index links that key to it. ``""``: list_sessions()."""
        if not isinstance(key_prefix, str):
            raise InvalidKey(f"a key prefix must be a string, not {type(key_prefix).__name__}")
        if not key_prefix or self._format() != 2:
            return super().find_sessions(key_prefix)
        self._ensure_index()
        self._ensure_names()
        found: dict[str, IndexEntry] = {}
        for sid in self._names.candidates(key_prefix):
            entry = self._read_meta(sid) if sid not in found else None  # (None for a name that is no session id)
            if entry is not None and entry.key.startswith(key_prefix) and self._live_target(entry.key) == sid:
                found[sid] = entry
        return sorted(found.values(), key=lambda e: (e.created_at, e.session_id))

    def _ensure_names(self) -> None:
        """Give every live session its leaf in ``names/`` unless ``names/.complete``
        says they have one (a store written before names/, or by other rules), under
        the lock of :meth:`_ensure_index`; the marker is written last, so a build cut
        short is done again. Leaves of other rules are left to repair()."""
        if self._names.whole:
            return
        with self.fs.locked(self._marker, create=False):
            if self._names.whole:
                return  # another store built it while we waited
            named = self._name_sessions()
            self._names.mark_whole(durable=self._durable)
        if named:
            _log.info("%s: the key names of %d session(s) written to names/", self.directory, len(named))

    def _name_sessions(self) -> list[IndexEntry]:
        """Write the leaf of every live session that has none; those it wrote."""
        return [e for e in self._session_folders() if self._live_target(e.key) == e.session_id
                and self._names.add(e.key, e.session_id, durable=self._durable)]

    def session_bytes(self, session_id: str) -> int | None:
        """The bytes of the session folder's files (log, branch events, session.json,
        lease, tally, quarantined lines): about what deleting it frees. ``None`` for
        no live session. Temp files of writes in progress are not counted."""
        if not _is_session_id(session_id) or not self.fs.exists(self._log(session_id)):
            return None
        total = 0
        for name in self.fs.listdir(self._dir(session_id)):
            path = f"{self._dir(session_id)}/{name}"
            if name.startswith("."):
                continue
            try:
                # The lease record is read, not measured: a stat would cache an O_APPEND
                # descriptor of it, and its in-place writes would then append.
                total += len(self.fs.read(path)) if name == "lock.json" else self.fs.size(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
        return total

    def create_session(self, key: str, session_id: str, created_at: int, *,
                       messages: Sequence[bytes] = (), events: Sequence[bytes] = (),
                       forked_from: tuple[str, str | None] | None = None) -> str:
        if not _is_session_id(session_id):
            raise InvalidInput(f"not a session id: {session_id!r}")
        self._ensure_format()
        self._ensure_index()
        if messages or events:  # a copy would be written for nothing (an empty folder: resolve() just looked)
            existing = self._live_target(key)
            if existing is not None:
                return existing
        fs, durable = self.fs, self._durable
        link = self._key_link(key)
        # The folder is written whole under a temporary name (its log locked, so that a
        # repair can tell a creation in progress from the remains of a killed one), then
        # renamed into place (FileSystem.publish_folder), then announced: the key link is
        # the commit. The log stays locked until the link is made or taken back, so no
        # one (a client who found the link, or the folder adopted by a repair) can write
        # to a session this then takes back.
        meta: dict[str, Any] = {"version": FORMAT_VERSION, "sessionId": session_id, "key": key,
                                "createdAt": created_at}
        if forked_from is not None:
            meta["forkedFrom"] = list(forked_from)
        final = self._dir(session_id)
        with fs.publish_folder(f"{self.directory}/.new-{session_id}", final,
                               [("messages.jsonl", b"".join(messages)), ("session.json", _encode_line(meta)),
                                ("branches.jsonl", b"".join(events))], durable=durable):
            try:
                self._names.add(key, session_id, durable=durable)  # before the commit: found by its key, and its prefix
                while not _link_in_folder(fs, session_id, link, durable=durable):
                    winner = self._live_target(key)
                    if winner == session_id:  # a repair() adopted the folder meanwhile: it is ours, and linked
                        return winner
                    if winner is not None:  # another store created the key's session first
                        self._names.remove(key, session_id)
                        fs.remove_tree(final)
                        return winner
                    self._remove_stale_link(key)  # an interrupted deletion left the link
            except BaseException:
                # Not acknowledged (the link's sync may have failed after it was made): undo it.
                with contextlib.suppress(OSError):
                    if fs.readlink(link) == session_id:
                        fs.remove(link)
                    self._names.remove(key, session_id)
                    fs.remove_tree(final)
                raise
        return session_id

    def _link_key(self, key: str, session_id: str) -> bool:
        """Link ``key`` to ``session_id`` unless the key has a live link; whether it
        was linked. A link to no live session (an interrupted deletion) is replaced.
        The session's leaf in ``names/`` is written first (see :meth:`create_session`),
        and taken back when the key turns out to be another session's."""
        link = self._key_link(key)
        self.fs.makedirs(link.rpartition("/")[0], durable=self._durable)
        self._remove_stale_link(key)
        named = self._names.add(key, session_id, durable=self._durable)
        if self.fs.symlink(session_id, link, durable=self._durable):
            return True
        if named and self._live_target(key) != session_id:
            self._names.remove(key, session_id)
        return False

    def _remove_stale_link(self, key: str) -> None:
        """Remove the key's link if it names no live session (under the shard's lock:
        two processes replacing one stale link must not remove each other's new one)."""
        link = self._key_link(key)
        with self.fs.locked(f"{link.rpartition('/')[0]}/.lock"):
            if self.fs.readlink(link) is not None and self._live_target(key) is None:
                self.fs.remove(link, durable=self._durable)

    def delete_session(self, session_id: str, at: int, *, check: Callable[[], None] | None = None) -> None:
        entry = self.session_info(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        link = self._key_link(entry.key)
        fs = self.fs
        # The session's lock, then the key's shard lock: the order of a creation, which
        # holds its new log's lock while it links the key (see create_session).
        with _JsonlWriting(self, session_id):
            if check is not None:
                check()
            # The commit: without its log, a folder is no session (lookups check it).
            fs.remove(self._log(session_id), durable=self._durable)
            try:  # past the commit the session is gone whatever fails: a dangling link is
                with fs.locked(f"{link.rpartition('/')[0]}/.lock"):  # no session (lookups check the log),
                    if fs.readlink(link) == session_id:  # repair() clears it
                        fs.remove(link, durable=self._durable)
            except OSError as exc:
                _log.warning("session %s deleted; its key link stays until repair(): %s", session_id, exc)
        with contextlib.suppress(OSError):  # a leaf of no session: no walk believes it, repair() clears it
            self._names.remove(entry.key, session_id)
        with self._syncs_lock:
            self._syncs.pop(session_id, None)
        self._vouches.pop(session_id, None)
        with contextlib.suppress(OSError):  # garbage now; repair() clears what a crash leaves
            fs.remove_tree(self._dir(session_id))

    def _ensure_format(self) -> None:
        """Before the first write: mark a new store, or migrate a format-1 store."""
        version = self._format()
        if version == 2:
            return
        self.fs.makedirs(self.directory)
        if version == 0:  # a new store: each session it will hold writes its own leaf in names/
            self._names.mark_whole(durable=self._durable)
            self.fs.write_atomic(self._marker, _encode_line({"format": FORMAT_VERSION}), durable=self._durable)
            return
        with self.fs.locked(self._journal_path):  # format-1 writers take this lock too
            if self.fs.exists(self._marker):
                return
            for entry in self._legacy_index(fresh=True).values():
                self._adopt_legacy_folder(entry)
                self._link_key(entry.key, entry.session_id)
            self.fs.write_atomic(self._marker, _encode_line({"format": FORMAT_VERSION}), durable=self._durable)
            _log.warning("%s: migrated from format 1 to %d", self.directory, FORMAT_VERSION)
        for name in ("keys.jsonl", "sessions.json"):
            with contextlib.suppress(OSError):
                self.fs.rename(f"{self.directory}/{name}", f"{self.directory}/{name}.format-1")
        self._legacy = None

    def _adopt_legacy_folder(self, entry: IndexEntry) -> None:
        """Bring a session folder of the seed's layout to format 2 (in the migration):
        a ``session.json`` naming its key, and its ``branches.jsonl`` as branch events.
        The seed's branch lines (``{"name", "headId" | "leafId", ...}``: a branch as it
        stood) become ``create``/``move`` events after every message there is; the file
        they were in is kept beside, as ``branches.jsonl.format-1``."""
        fs, folder = self.fs, self._dir(entry.session_id)
        if self._read_meta(entry.session_id) is None:
            fs.write_atomic(f"{folder}/session.json", _encode_line(
                {"version": FORMAT_VERSION, "sessionId": entry.session_id, "key": entry.key,
                 "createdAt": entry.created_at}), durable=self._durable)
        try:
            data = fs.read(self._events(entry.session_id))
        except FileNotFoundError:
            return
        rows = _parse_lines(data, 0, self._events(entry.session_id), entry.session_id, [])[0]
        if all("op" in rec for _, rec in rows):
            return
        seq = fs.read(self._log(entry.session_id)).count(b"\n")
        names: set[str] = {"main"}
        events: list[bytes] = []
        for _, rec in rows:
            event = rec if "op" in rec else _legacy_branch_event(rec, names, seq)
            if event is not None:
                names.add(event["name"])
                events.append(_encode_line(event))
        fs.rename(self._events(entry.session_id), f"{self._events(entry.session_id)}.format-1")
        fs.write_atomic(self._events(entry.session_id), b"".join(events), durable=self._durable)

    def _checkpoint(self) -> list[IndexEntry]:
        """The sessions ``sessions.json`` names: ``{"keys": {key: session id}, "sessions":
        {session id: {"createdAt": ms, ...}}}``, the index of the seed's TypeScript
        SessionStore (and format 1's checkpoint). What cannot be read names nothing."""
        try:
            doc = json.loads(self.fs.read(f"{self.directory}/sessions.json"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return []
        keys = doc.get("keys") if isinstance(doc, dict) else None
        sessions = doc.get("sessions") if isinstance(doc, dict) else None
        found = []
        for key, sid in (keys.items() if isinstance(keys, dict) else ()):
            if not _is_session_id(sid):
                continue
            try:
                _check_key(key)
            except InvalidKey:
                continue
            about = sessions.get(sid) if isinstance(sessions, dict) else None
            created = about.get("createdAt") if isinstance(about, dict) else None
            found.append(IndexEntry(session_id=sid, key=key,
                                    created_at=created if isinstance(created, int) and not isinstance(created, bool)
                                    else 0))
        return found

    def _legacy_index(self, *, fresh: bool = False) -> dict[str, IndexEntry]:
        """Format 1's index, and the seed's: the sessions ``sessions.json`` names, then
        the journal's, then folders they missed whose key is free (what format 1 itself
        rebuilt from); only sessions whose log exists. Cached by the journal's size."""
        try:
            size = self.fs.size(self._journal_path)
        except FileNotFoundError:
            size = -1
        if self._legacy is not None and self._legacy[0] == size and not fresh:
            return self._legacy[1]
        live: dict[str, IndexEntry] = {}
        by_id: dict[str, str] = {}
        for entry in self._checkpoint():  # the seed's index (and format 1's checkpoint); the journal is newer
            if entry.key not in live and entry.session_id not in by_id:
                live[entry.key] = entry
                by_id[entry.session_id] = entry.key
        journal = b""
        with contextlib.suppress(FileNotFoundError):
            journal = self.fs.read(self._journal_path)
        for _, rec in _parse_lines(journal, 0, self._journal_path, None, [])[0]:
            sid = rec.get("sessionId")
            if not _is_session_id(sid):
                continue
            if rec.get("op") == "create" and isinstance(rec.get("key"), str) and sid not in by_id \
                    and rec["key"] not in live:
                created = rec.get("createdAt")
                live[rec["key"]] = IndexEntry(session_id=sid, key=rec["key"],
                                              created_at=created if isinstance(created, int) else 0)
                by_id[sid] = rec["key"]
            elif rec.get("op") == "delete" and sid in by_id:
                key = by_id.pop(sid)
                if live.get(key) is not None and live[key].session_id == sid:
                    del live[key]
        for name in self.fs.listdir(self.directory):
            found = self._read_meta(name) if name not in by_id else None
            if found is not None and found.key not in live and self.fs.exists(self._log(name)):
                live[found.key] = found
        for key, entry in list(live.items()):
            if not self.fs.exists(self._log(entry.session_id)):
                del live[key]
        self._legacy = (size, live)
        return live

    # -- a session's records --------------------------------------------------------------

    def writing(self, session_id: str) -> contextlib.AbstractContextManager[None]:
        if not self._current_format:  # a store of format 1 (or the seed's) is migrated by its first write
            if self._format() == 1:
                self._ensure_format()
            self._current_format = self._format() == 2
        return _JsonlWriting(self, session_id)

    def _stat_events(self, session_id: str) -> tuple[int, Any]:
        try:
            return self.fs.stat(self._events(session_id))
        except FileNotFoundError:
            return 0, None

    def load(self, session_id: str, position: Position, *, writer: bool = False) -> Records | None:
        return next(iter(self._load(session_id, position, writer, None)), None)

    def load_parts(self, session_id: str, position: Position, *, writer: bool = False) -> Iterable[Records]:
        return self._load(session_id, position, writer, _LOAD_PART)

    def scan(self, session_id: str) -> Records | None:
        """Both files read whole, up to the sizes seen first (its position vouches for
        nothing: no reader reads on from a check's scan)."""
        log, events = self._log(session_id), self._events(session_id)
        try:
            size = self.fs.stat(log)[0]
        except (FileNotFoundError, NotADirectoryError):
            raise SessionNotFound(session_id) from None
        esize = self._stat_events(session_id)[0]
        if not size and not esize:
            return None
        found = Records(position=(0, 0), events=[], messages=[], events_label=events, messages_label=log)
        try:
            echunk, chunk = self.fs.read_range(events, 0, esize) if esize else b"", self.fs.read_range(log, 0, size)
        except (FileNotFoundError, NotADirectoryError):  # deleted meanwhile
            raise SessionNotFound(session_id) from None
        found.events, epos = _parse_lines(echunk, 0, events, session_id, found.problems)
        found.messages, mpos = _parse_lines(chunk, 0, log, session_id, found.problems, message=True)
        found.position, found.nbytes = (epos, mpos), mpos
        return found

    def _load(self, session_id: str, position: Position, writer: bool, part: int | None) -> Iterable[Records]:
        """The records after ``position``, in parts of about ``part`` bytes of message
        records (``None``: one part); ``()`` when there are none (the common case of a
        read: two ``fstat`` calls, nothing else).

        Both files are read only up to the sizes seen before reading: every branch
        event that a message read names (by its ``seq``) was written before that
        message, so before the log was measured, and is read with it (events are read
        whole, first; one that follows the messages read waits for them)."""
        fs = self.fs
        log, events = self._log(session_id), self._events(session_id)
        try:
            size, ident = fs.stat(log)
        except (FileNotFoundError, NotADirectoryError):
            raise SessionNotFound(session_id) from None
        epos, mpos = position
        mark = self._marked(session_id, position)
        known = None if mark is None else mark[1]
        cut = False  # a file this writer did not grow was cut back and grown again to the same size
        if mark is not None and mark[1][1] == ident and size == mpos:
            # The log is the one read before, with nothing new: the events file, never
            # replaced without the log (see quarantine; a delete removes the log first),
            # needs only its size. This is the common read: one fstat and one lseek.
            try:
                if fs._size_as_open(events) == epos:
                    ends = mark[2]  # all written by this reader since it read: nothing to check
                    if not writer or (not ends[6] and not ends[7]) or self._read_unchanged(mark, (events, log)):
                        return ()
                    cut = True
            except FileNotFoundError:
                if epos == 0 and mark[1][0] is None:
                    return ()
        try:
            esize, eident = fs.stat(events)
        except FileNotFoundError:
            esize, eident = 0, None
        idents = eident, ident
        same = known == idents
        if same and esize == epos and size == mpos and not cut:  # nothing new
            if not writer or self._read_unchanged(mark, (events, log)):
                return ()
            cut = True
        restart = position != (0, 0) and (cut or not same or size < mpos or esize < epos)
        if restart:  # rewritten (a repair) or cut back (a failed sync) under us
            _log.warning("%s was rewritten: reloading", log)
            epos = mpos = 0
        if esize <= epos and size <= mpos and not restart:
            return ()
        return self._parts(session_id, position, writer, part, (epos, mpos), (esize, size), idents,
                           None if restart or mark is None else mark[2])

    def _parts(self, session_id: str, position: Position, writer: bool, part: int | None, start: Position,
               sizes: tuple[int, int], idents: tuple[Any, Any], vouch: tuple[int, ...] | None) -> Iterator[Records]:
        """The parts :meth:`_load` found, read from ``start`` up to ``sizes`` in the files
        of ``idents``; ``vouch``: the ends of ``position``'s mark, ``None`` to read from
        the start (a restart). Each part's position is a mark of what it read."""
        fs = self.fs
        log, events = self._log(session_id), self._events(session_id)
        (epos, mpos), (esize, size) = start, sizes
        restart = vouch is None and position != (0, 0)
        found = Records(position=position, events=[], messages=[], events_label=events, messages_label=log,
                        restart=restart)
        ends = list(vouch) if vouch is not None else [0, 0, 0, 0, 0, 0, 0, 0]
        # A file read on from a position must still hold, just before it, the line this
        # reader last read or wrote there (see _note_end): a write taken back (a failed
        # write scope, a failed sync) is cut off in place, the file keeps its identity,
        # and once later appends grow it past the position only this tells that what
        # lies before changed. That line is read with what follows it, in one read.
        if vouch is not None and esize == epos and epos and ends[6] and not self._intact(
                ends, 0, events, epos):  # the events file cut back and grown again to the same size
            yield from self._parts_again(session_id, position, writer, part, sizes, idents)
            return
        if esize > epos:
            chunk = self._read_on(events, epos, esize - epos, ends, 0)
            if chunk is None:
                yield from self._parts_again(session_id, position, writer, part, sizes, idents)
                return
            found.events, used = _parse_lines(chunk, epos, events, session_id, found.problems)
            _note_end(ends, 0, epos, chunk, used)
            epos += used
            if writer and epos < esize:
                _log.warning("%s: torn last line cut off", events)
                fs.truncate(events, epos)
        while True:
            if size > mpos:
                want = size - mpos if part is None else min(size - mpos, part)
                if mpos == start[1]:
                    checked = self._read_on(log, mpos, want, ends, 1)
                    if checked is None:
                        yield from self._parts_again(session_id, position, writer, part, sizes, idents)
                        return
                    chunk = checked
                else:
                    chunk = fs.read_range(log, mpos, want)
                grow = len(chunk)
                while len(chunk) < size - mpos and not _unfinished_tail(chunk):
                    # A record, or a chain, longer than a part: read on to its end, twice
                    # as far each time, each a whole read from mpos (never a splice of two
                    # reads). A short read: the log was cut back meanwhile; take what is here.
                    grow = min(2 * grow, size - mpos)
                    again = fs.read_range(log, mpos, grow)
                    if len(again) < grow:
                        break
                    chunk = again
                found.messages, used = _parse_lines(chunk, mpos, log, session_id, found.problems, message=True)
                _note_end(ends, 1, mpos, chunk, used)
                del chunk
                found.nbytes = used
                mpos += used
            found.position = self._mark(session_id, epos, mpos, idents, ends)
            done = size <= mpos or not found.nbytes
            if done and writer and mpos < size:
                self._cut_unfinished(log, mpos, size)
            yield found
            if done:
                return
            found = Records(position=found.position, events=[], messages=[], events_label=events,
                            messages_label=log)

    def _cut_unfinished(self, log: str, end: int, size: int) -> None:
        """A writer's cut of what readers hold back at the log's end (``end`` to
        ``size``): a torn last line, and the whole lines of an unfinished chain before
        it, which go to ``<log>.quarantine`` first (never acknowledged, as no
        append_many returned; but whole records are never dropped unseen)."""
        tail = self.fs.read_range(log, end, size - end)
        whole = tail[:tail.rfind(b"\n") + 1]
        if whole:
            _log.warning("%s: an unfinished append_many chain of %d record(s) (its last record is not there) "
                         "moved to %s.quarantine", log, whole.count(b"\n"), log)
            self.fs.append(log + ".quarantine", whole)
            self._sync_file(log + ".quarantine")
        if len(tail) > len(whole):
            _log.warning("%s: torn last line (%d bytes) cut off", log, len(tail) - len(whole))
        self.fs.truncate(log, end)

    def _read_on(self, path: str, end: int, size: int, ends: list[int], file: int) -> bytes | None:
        """The ``size`` bytes of ``path`` from ``end``; ``None`` when ``end`` is past the
        start and the line the reader last saw end there (``ends``, see
        :func:`_note_end`) is not there any more, or was not seen."""
        if not end:
            return self.fs.read_range(path, 0, size)
        at = 3 * file
        length, crc = ends[at + 1], ends[at + 2]
        if ends[at] != end or not 0 < length <= end:
            return None
        data = self.fs.read_range(path, end - length, length + size)
        if len(data) < length or zlib.crc32(memoryview(data)[:length]) != crc:
            return None
        return data[length:]

    def _intact(self, ends: Sequence[int], file: int, path: str, end: int) -> bool:
        """Whether ``path`` still holds, just before ``end``, the line the reader last saw
        end there (``ends``, see :func:`_note_end`)."""
        if not end:
            return True
        at = 3 * file
        return ends[at] == end and _holds_line(self.fs, path, ends[at], ends[at + 1], ends[at + 2])

    def _read_unchanged(self, mark: _Vouch | None, paths: tuple[str, str]) -> bool:
        """Whether the files still hold what the reader of ``mark`` *read* up to it (what
        it wrote itself, no other writer can take back). A writer asks before it
        trusts a file that has not grown: one cut back and grown again to the same size
        would otherwise have it write under a message that is not there any more."""
        if mark is None:
            return False
        at, _, ends = mark
        return all(not at[f] or not ends[6 + f] or self._intact(ends, f, paths[f], at[f]) for f in (0, 1))

    def _parts_again(self, session_id: str, position: Position, writer: bool, part: int | None,
                     sizes: tuple[int, int], idents: tuple[Any, Any]) -> Iterator[Records]:
        """:meth:`_parts` from the start: the files were cut back and grown again."""
        _log.warning("%s was cut back and grown again: reloading", self._log(session_id))
        return self._parts(session_id, position, writer, part, (0, 0), sizes, idents, None)

    def load_backwards(self, session_id: str, position: Position) -> Iterator[Records]:
        mark = self._marked(session_id, position)
        return self._backwards(session_id, position[1], mark)

    def _backwards(self, session_id: str, end: int, mark: _Vouch | None) -> Iterator[Records]:
        """The log's records before ``end`` (a line boundary), read ``_BACK_PART`` bytes
        at a time from there towards the start: the lines a part begins inside are
        decoded with the part before them. Each part is read from the log ``mark``
        vouches for, still ending at ``end`` with the line it names, else ``restart``."""
        fs, log = self.fs, self._log(session_id)
        known = None if mark is None or not self._intact(mark[2], 1, log, end) else mark[1][1]
        carry = b""
        while end > 0:
            try:
                ident = fs.stat(log)[1]
            except (FileNotFoundError, NotADirectoryError):
                raise SessionNotFound(session_id) from None
            found = Records(position=(0, end), events=[], messages=[], events_label=self._events(session_id),
                            messages_label=log, restart=known is None or ident != known)
            if found.restart:
                yield found
                return
            start = max(0, end - _BACK_PART)
            chunk = fs.read_range(log, start, end - start) + carry
            cut = chunk.find(b"\n") + 1 if start else 0
            end = start
            if start and not cut:  # a line longer than a part: read on to its start
                carry = chunk
                continue
            carry = chunk[:cut]
            found.messages, used = _parse_lines(chunk[cut:], start + cut, log, session_id, found.problems,
                                                message=True, hold=False)  # a part may end inside a chain
            found.position = (0, start + cut)
            if used != len(chunk) - cut:  # ``end`` was not a line boundary: not a log we know
                found.restart = True
            yield found
            if found.restart:
                return

    def _sync_state(self, session_id: str) -> _SyncState:
        st = self._syncs.get(session_id)
        if st is None:
            with self._syncs_lock:
                st = self._syncs.get(session_id)
                if st is None:
                    if len(self._syncs) >= 4096:  # bounded: idle states are recreated on demand
                        for sid in [s for s, x in self._syncs.items() if x.idle]:
                            del self._syncs[sid]
                    st = self._syncs[session_id] = _SyncState()
        return st

    def append_message(self, session_id: str, position: Position, message_id: str, line: bytes) -> Position:
        return self._append(session_id, 1, position, line)

    def append_messages(self, session_id: str, position: Position, lines: Sequence[tuple[str, bytes]]) -> Position:
        """The chain's lines with one ``write()``: each but the last ends in
        :data:`_CHAIN_MARK` before its newline (see "Log format"), so that a reader
        holds back a chain whose last record it does not see (being written, or cut by
        a crash) and the next writer cuts it off."""
        data = b"".join([line[:-1] + _CHAIN_MARK + b"\n" for _, line in lines[:-1]] + [lines[-1][1]])
        return self._append(session_id, 1, position, data, lines[-1][1])

    def append_event(self, session_id: str, position: Position, line: bytes) -> Position:
        return self._append(session_id, 0, position, line)

    def _append(self, session_id: str, file: int, position: Position, data: bytes,
                line: bytes | None = None) -> Position:
        """Records at the end of a session's file (0: branch events, 1: messages), with
        one write: ``data``, whose last line is ``line`` (by default, all of it)."""
        path = self._log(session_id) if file else self._events(session_id)
        start = position[file]
        new = (position[0], start + len(data)) if file else (start + len(data), position[1])
        if self._must_sync:
            st = self._sync_state(session_id)
            if st.poisoned:
                raise StorageError(errno.EIO, st.poisoned)
            self._write_record(path, start, data)
            st.note_write(file, start, start + len(data), position)
        else:
            self._write_record(path, start, data)
        # The line now last before the new end (see _note_end). Nothing before a record
        # of ours can be taken back any more (a failed sync takes back only what no
        # other writer wrote after, see _after_failed_sync): both "read" flags go.
        line = data if line is None else line
        last = (new[file], len(line), zlib.crc32(line))
        mark = self._vouches.get(session_id)
        if mark is not None and mark[0] is position:
            idents, e, read = mark[1], mark[2], (0, 0)
            if not file and idents[0] is None:  # the events file just created: which file is it?
                idents = self._stat_events(session_id)[1], idents[1]
        else:  # the first record written here: which files?
            idents = self._stat_events(session_id)[1], self.fs.stat(self._log(session_id))[1]
            e, read = _UNVOUCHED, ((1, 0) if file else (0, 1))
        self._vouches[session_id] = new, idents, ((e[0], e[1], e[2], *last, *read) if file
                                                  else (*last, e[3], e[4], e[5], *read))
        return new

    def rollback(self, session_id: str, position: Position) -> None:
        """Cut both files back to ``position`` (the records after it are this writer's,
        not acknowledged: their write scope failed)."""
        for file, path in ((0, self._events(session_id)), (1, self._log(session_id))):
            try:
                if self.fs.size(path) > position[file]:
                    self.fs.truncate(path, position[file])
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(e.errno, f"could not undo a failed write to {path}: {e.strerror or e}") from e
            if self._must_sync:
                self._sync_state(session_id).rolled_back(file, position[file])

    def sync(self, session_id: str) -> None:
        """Group commit: one fdatasync covers every record written before it started.

        The first writer to arrive becomes the leader and syncs; writers arriving
        meanwhile wait, and are all woken at once when a sync covers their record.
        A failed sync fails every record it covered, and later syncs never cover them
        (the fsyncgate lesson: after a failed fsync the kernel may have dropped the
        pages, so a second fsync "succeeding" proves nothing). The failed records are
        cut off their files when they are all this process's own and no other writer
        wrote to either file since the first of them (its branch event counts them);
        otherwise this storage refuses further writes to the session until reopened.
        A branch event's sync covers the log first, other writers' records in it too.
        """
        if not self._must_sync:
            return
        st = self._sync_state(session_id)
        with st.cond:
            want = st.written
            while st.synced < want:
                if st.failed >= want or st.poisoned:
                    raise StorageError(errno.EIO, st.poisoned or f"could not sync session {session_id}: an "
                                       "earlier sync covering this record failed, and the record was removed")
                if not st.syncing:
                    break
                st.cond.wait()
            else:
                return
            st.syncing = True
            target, target_end, dirty = st.written, list(st.end), list(st.dirty)
            st.dirty = [False, False]
        try:
            if dirty[1] or dirty[0]:  # a branch event counts the log's records, other writers' too: those first
                self.fs.sync(self._log(session_id))
            if dirty[0]:
                self.fs.sync(self._events(session_id))
        except OSError as e:
            with st.cond:
                st.syncing = False
            self._after_failed_sync(session_id, st, e)  # raises
        with st.cond:
            st.syncing = False
            st.synced = max(st.synced, target)
            for file in (0, 1):
                st.unsynced_from[file] = None if st.end[file] == target_end[file] else target_end[file]
            st.cond.notify_all()

    def _after_failed_sync(self, session_id: str, st: _SyncState, error: OSError) -> NoReturn:
        files = (self._events(session_id), self._log(session_id))
        why = f"could not sync session {session_id}: {error.strerror or error}"
        try:
            with self.fs.locked(files[1], create=False):
                with st.cond:
                    st.failed = st.written  # every record written so far is in doubt
                    sizes = [self._stat_events(session_id)[0], self.fs.size(files[1])]
                    ours = not st.crossed and sizes == st.after and all(
                        st.unsynced_from[f] is None or (not st.foreign[f] and sizes[f] == st.end[f]) for f in (0, 1))
                    if ours:
                        for f in (0, 1):
                            cut = st.unsynced_from[f]
                            if cut is not None:
                                self.fs.truncate(files[f], cut)
                                self.fs.sync(files[f])
                                st.unsynced_from[f], st.end[f] = None, cut
                        st.dirty = [False, False]
                        self._vouches.pop(session_id, None)
                        why += "; the records written since the last good sync were removed"
                    else:
                        st.poisoned = why + ("; records of other writers follow them, so this storage refuses "
                                             "further writes to the session until the store is reopened")
                    st.cond.notify_all()
        except OSError as e:
            with st.cond:
                st.poisoned = f"{why}; then {e.strerror or e}: writes refused until the store is reopened"
                st.cond.notify_all()
        _log.error("%s", st.poisoned or why)
        raise StorageError(error.errno or errno.EIO, st.poisoned or why) from error

    # -- counts ------------------------------------------------------------------------------

    def read_tally(self, session_id: str) -> tuple[Position, dict[str, Any]] | None:
        """The saved tally, when its files are the ones it was saved of (their identity)
        and each still holds, just before the tally's position, the very line that was
        last there when it was saved (its length and CRC-32): a file cut back (a failed
        write or sync taken back) and grown again to the same size fails that."""
        try:
            doc = _decode_lease(self.fs.read(f"{self._dir(session_id)}/stats.json"))  # (corrupt: no "position")
            if doc is None:
                return None
            size, ident = self.fs.stat(self._log(session_id))
            esize, eident = self._stat_events(session_id)
            epos, mpos = doc["position"]
            if ([_jsonable(eident), _jsonable(ident)] != doc["identity"] or not isinstance(mpos, int)
                    or not isinstance(epos, int) or mpos > size or epos > esize or not isinstance(doc["tally"], dict)):
                return None
            ends = [0, 0, 0, 0, 0, 0, 1, 1]
            for file, path, end, (length, crc) in ((0, self._events(session_id), epos, doc["last"][0]),
                                                   (1, self._log(session_id), mpos, doc["last"][1])):
                if end and not _holds_line(self.fs, path, end, length, crc):
                    return None
                ends[3 * file:3 * file + 3] = end, length, crc
        except (OSError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError):
            return None
        # The position is in these very files, and vouched for: load() reads on from it.
        position = _Tallied((epos, mpos))
        position.vouch = position, (eident, ident), tuple(ends)
        return position, doc["tally"]

    def write_tally(self, session_id: str, position: Position, tally: Mapping[str, Any]) -> None:
        mark = self._marked(session_id, position)
        if mark is None:
            return  # the lines before the position were not read or written here: nothing vouches for them
        _, idents, ends = mark
        last = []
        for file in (0, 1):
            if not position[file]:
                last.append([0, 0])
            elif idents[file] is not None and ends[3 * file] == position[file]:
                last.append(list(ends[3 * file + 1:3 * file + 3]))
            else:
                return
        doc = {"position": list(position), "identity": [_jsonable(i) for i in idents], "tally": dict(tally),
               "last": last}
        # Replaced whole, with its CRC-32: a tally whose bytes changed on disk is not
        # believed. A failure only costs a longer read later (it is a cache).
        with contextlib.suppress(OSError):
            self.fs.write_atomic(f"{self._dir(session_id)}/stats.json", _checked_line(doc), durable=False)

    # -- leases ---------------------------------------------------------------------------

    def read_lease(self, session_id: str) -> dict[str, Any] | None:
        return self.fs.read_lease(self._lease(session_id))

    def write_lease(self, session_id: str, lease: Mapping[str, Any], *, durable: bool) -> None:
        self.fs.write_lease(self._lease(session_id), lease, durable=durable and self._durable)

    def peek_lease(self, session_id: str) -> dict[str, Any] | None:
        try:
            return self.fs.read_lease(self._lease(session_id))
        except OSError:
            return None

    def hold_lease(self, session_id: str) -> None:
        self.fs.hold(self._lease_mark(session_id))

    def drop_lease(self, session_id: str) -> None:
        self.fs.release(self._lease_mark(session_id))

    def holder_gone(self, session_id: str, lease: Mapping[str, Any]) -> bool:
        try:
            return self.fs.is_held(self._lease_mark(session_id)) is False
        except OSError:
            return False

    # -- check and repair -------------------------------------------------------------------

    def check(self, sessions: Mapping[str, str], *, index: bool) -> list[Problem]:
        problems: list[Problem] = []
        if index:
            problems += self._check_index()
        named = index and self._names.whole
        for sid, key in sessions.items():
            if named and key and not self.fs.exists(self._names.leaf(key, sid)):
                problems.append(Problem(session_id=sid, file=self._names.leaf(key, sid), offset=None,
                                        reason="the session is missing from names/, so find_sessions() misses it "
                                               "(repair writes it)"))
            for path in (self._events(sid), self._log(sid)):
                try:
                    data = self.fs.read(path)
                except FileNotFoundError:
                    continue
                used = data.rfind(b"\n") + 1
                held = _unfinished_tail(data) if path == self._log(sid) else used
                if held < used:
                    lines = data.count(b"\n", held, used)
                    problems.append(Problem(session_id=sid, file=path, offset=held, reason=(
                        f"unfinished chain: {lines} record(s) of an append_many chain whose last record is not "
                        "there (a crash cut it short); readers do not see them, and the next write or repair "
                        "moves them to the quarantine")))
                if used < len(data):
                    problems.append(Problem(session_id=sid, file=path, offset=used,
                                            reason=f"incomplete last line ({len(data) - used} bytes, torn write)"))
            entry = self._described(sid)
            if entry is None or entry.key != key:
                problems.append(Problem(session_id=sid, file=f"{self._dir(sid)}/session.json", offset=None,
                                        reason="session.json is unusable: the session's key is unknown (it is "
                                               "still reachable by its id)"))
        return problems

    def _garbage(self) -> list[tuple[str, str, bool]]:
        """What a killed or failed operation left: ``(path, why, is a directory)``.

        A folder being created holds its log's lock and a temp file being written its
        own, so a live writer's work is never taken for garbage."""
        fs, found = self.fs, []
        keys = f"{self.directory}/keys"
        shards = [f"{keys}/{s}" for s in fs.listdir(keys) if len(s) == 2]
        scanned = [self.directory, *shards]
        for name in fs.listdir(self.directory):
            path = f"{self.directory}/{name}"
            if name.startswith(".new-") and fs.is_dir(path) and fs.is_held(f"{path}/messages.jsonl") is False:
                found.append((path, "an interrupted creation, never announced", True))
            elif name.startswith(".deleted-") and fs.is_dir(path):
                found.append((path, "a folder set aside for removal (a deleted session of format 1, or garbage "
                                    "whose removal was cut short)", True))
            elif _is_session_id(name) and fs.is_dir(path):
                if fs.exists(self._log(name)):
                    scanned.append(path)
                elif self._only_ours(path):
                    found.append((path, "the remains of a deleted session (or of a creation killed in format 1)",
                                  True))
        for directory in scanned:
            for name in fs.listdir(directory):
                path = f"{directory}/{name}"
                if name.startswith(".") and ".tmp-" in name and fs.is_held(path) is False:
                    found.append((path, "the temp file of an interrupted write", False))
        for shard in shards:
            for name in fs.listdir(shard):
                if name.startswith("."):
                    continue
                target = fs.readlink(f"{shard}/{name}")
                if target is None or not _is_session_id(target) or not fs.exists(self._log(target)):
                    found.append((f"{shard}/{name}", "a key link to no session (an interrupted deletion)", False))
        return found

    def _remove_folder(self, path: str) -> str | None:
        """Remove a garbage folder: ``None`` when it was not there any more, else what
        is left of it (``""``: nothing; a folder the next repair removes). An
        interrupted creation's is renamed away first: its log was not locked when it
        was found, but a live creation may only not have locked it *yet*. Once renamed,
        that creation cannot publish it (its own rename fails, and so does the
        creation, unacknowledged), so no part of what this removes can end up in a
        published session; and one published first is not garbage, and stays."""
        if path.rpartition("/")[2].startswith(".new-"):
            away = f"{self.directory}/.deleted-{os.urandom(16).hex()}"
            try:
                self.fs.rename(path, away, durable=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            path = away
        self.fs.remove_tree(path)
        return path if self.fs.exists(path) else ""

    def _only_ours(self, folder: str) -> bool:
        """Whether a folder without a log is provably a session's remains: it names its
        session in ``session.json``, or holds nothing but files a session folder has.
        (A store folder may hold unrelated folders: they are never taken for garbage.)"""
        names = self.fs.listdir(folder)
        if "session.json" in names:
            return self._read_meta(folder.rpartition("/")[2]) is not None
        return bool(names) and all(n in _SESSION_FILES or (n.startswith(".") and ".tmp-" in n) for n in names)

    def _session_folders(self) -> Iterator[IndexEntry]:
        """Every complete session folder (its log there, its ``session.json`` readable),
        linked or not: what the key index is rebuilt from."""
        for name in self.fs.listdir(self.directory):
            if _is_session_id(name) and self.fs.exists(self._log(name)):
                entry = self._read_meta(name)
                if entry is not None:
                    yield entry

    def _unindexed(self) -> list[IndexEntry]:
        """Complete session folders that no key link names."""
        return [entry for entry in self._session_folders() if self.lookup(entry.key) != entry.session_id]

    def _check_index(self) -> list[Problem]:
        if self._format() == 1:
            return [Problem(session_id=None, file=self._journal_path, offset=None,
                            reason="format 1 (a keys.jsonl journal), or the seed's layout (sessions.json): the "
                                   "first write or repair() migrates it")]
        problems = [Problem(session_id=None, file=path, offset=None, reason=f"{why} (repair removes it)")
                    for path, why, _ in self._garbage()]
        problems += [Problem(session_id=None, file=path, offset=None, reason=f"{why} (repair removes it)")
                     for path, why in self._stale_names()]
        for entry in self._unindexed():
            problems.append(Problem(session_id=entry.session_id, file=self._dir(entry.session_id), offset=None,
                                    reason="session folder is not in the index (repair adopts it, or sets it "
                                           "aside if its key belongs to another session)"))
        return problems

    def quarantine(self, session_id: str, problems: list[Problem], placeholders: Mapping[int, bytes]) -> list[str]:
        """Lines that cannot join the session (and a torn tail) go to ``<log>.quarantine``
        beside the log, byte for byte; damaged message lines are replaced by their
        placeholders; the log is then rewritten atomically (a new file: every reader
        notices and reloads)."""
        fixed: list[str] = []
        for path in (self._events(session_id), self._log(session_id)):
            try:
                data = self.fs.read(path)
            except FileNotFoundError:
                continue
            used = _unfinished_tail(data) if path == self._log(session_id) else data.rfind(b"\n") + 1
            bad = {p.offset for p in problems if p.file == path and p.offset is not None}
            if not bad and used == len(data):
                if fixed:  # the events were rewritten: so is the log, a new file that readers notice (see _load)
                    self.fs.write_atomic(path, data)
                continue
            keep: list[bytes] = []
            aside: list[bytes] = []
            replaced = 0
            pos = 0
            for line in data[:used].split(b"\n")[:-1]:
                if pos in bad:
                    aside.append(line + b"\n")
                    if path == self._log(session_id) and pos in placeholders:
                        keep.append(placeholders[pos])
                        replaced += 1
                else:
                    keep.append(line + b"\n")
                pos += len(line) + 1
            if used < len(data):
                aside.append(data[used:] if data.endswith(b"\n") else data[used:] + b"\n")
            qpath = path + ".quarantine"
            self.fs.append(qpath, b"".join(aside))
            self._sync_file(qpath)
            self.fs.write_atomic(path, b"".join(keep))
            fixed.append(f"{path}: moved {len(aside)} unusable line(s) to {qpath}"
                         + (f", {replaced} of them replaced by a placeholder keeping its place in the tree"
                            if replaced else ""))
        if fixed:
            with self._syncs_lock:
                self._syncs.pop(session_id, None)
            self._vouches.pop(session_id, None)
        return fixed

    def _empty_successor(self, holder: str, entry: IndexEntry) -> bool:
        """Whether the key's session ``holder`` holds nothing (no message, no branch
        event) while ``entry``, an unindexed session of the same key, holds messages:
        what resolve() leaves when it finds a key's link lost."""
        try:
            return (self.fs.size(self._log(holder)) == 0 and self._stat_events(holder)[0] == 0
                    and self.fs.size(self._log(entry.session_id)) > 0)
        except FileNotFoundError:
            return False

    def _still_empty_successor(self, holder: str, entry: IndexEntry) -> None:
        """:meth:`_empty_successor` checked again, with ``holder`` held for its deletion."""
        if not self._empty_successor(holder, entry):
            raise _WrittenMeanwhile

    def _holds_nothing(self, folder: str) -> bool:
        """Whether a session folder holds no message and no branch event (a missing file: none)."""
        for name in ("messages.jsonl", "branches.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                if self.fs.size(f"{folder}/{name}"):
                    return False
        return True

    def _place_unindexed(self, entry: IndexEntry, set_aside: set[str]) -> list[str]:
        """An unindexed session folder, held by the caller: adopted when its key has no session,
        else removed when empty and set aside when not (another has its key); what was done."""
        sid, fs = entry.session_id, self.fs
        holder = self.lookup(entry.key)
        if holder == sid:
            return []
        if holder is None:
            self._ensure_format()
            if self._link_key(entry.key, sid):
                return [f"{self._dir(sid)}: adopted into the index (key {entry.key!r})"]
            if self.lookup(entry.key) == sid:  # (an index rebuild linked it meanwhile)
                return []
        self._names.remove(entry.key, sid)  # no prefix finds what goes (or goes aside)
        folder, log = self._dir(sid), self._log(sid)
        if self._holds_nothing(folder):
            fs.remove_tree(folder)
            return [f"{folder}: an empty session whose key belongs to another; removed"]
        # Copied, then removed log first: a writer waiting for its lock finds it gone. Cut short, it stays.
        aside = f"{self.directory}/.orphan-{sid}"
        fs.makedirs(aside, durable=self._durable)
        try:
            for name in fs.listdir(folder):
                path = f"{folder}/{name}"
                if (name in _SESSION_FILES or name == "session.json") and not fs.is_dir(path):
                    fs.write_atomic(f"{aside}/{name}", fs.read(path), durable=self._durable)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.remove_tree(aside)
            raise
        fs.remove(log, durable=self._durable)
        fs.remove_tree(folder)
        set_aside.add(aside)
        return [f"{folder}: its key {entry.key!r} belongs to another session; kept aside as {aside}"]

    def repair_index(self) -> list[str]:
        """Migrate format 1; adopt unindexed folders; clear garbage (see :meth:`_garbage`)."""
        fixed: list[str] = []
        if self._format() == 1:
            self._ensure_format()
            fixed.append(f"{self.directory}: migrated to format {FORMAT_VERSION}")
        if not self.fs.exists(self.directory):
            return fixed
        for path, why, is_dir in self._garbage():
            removed = "removed"
            if is_dir:
                left = self._remove_folder(path)
                if left is None:
                    continue
                if left:
                    removed = f"not all removed: {left} is left (the next repair goes on)"
            elif path.startswith(f"{self.directory}/keys/"):
                with self.fs.locked(f"{path.rpartition('/')[0]}/.lock"):
                    target = self.fs.readlink(path)
                    if target is None or not _is_session_id(target) or not self.fs.exists(self._log(target)):
                        self.fs.remove(path, durable=self._durable)
            else:
                self.fs.remove(path)
            fixed.append(f"{path}: {why}; {removed}")
        set_aside: set[str] = set()
        for entry in self._unindexed():
            sid = entry.session_id
            holder = self.lookup(entry.key)
            if holder is not None and self._empty_successor(holder, entry):
                # A lost link let resolve() give the key a new, empty session: the key goes back to this one
                # unless a client wrote to it meanwhile (checked again, held: then it stays the key's).
                with contextlib.suppress(_WrittenMeanwhile, SessionNotFound):
                    self.delete_session(holder, entry.created_at,
                                        check=functools.partial(self._still_empty_successor, holder, entry))
                    fixed.append(f"{self._dir(holder)}: an empty session made for key {entry.key!r} after its link "
                                 f"to {sid} was lost; removed")
            # The rest with it held (its creation over, no writer, no other repair), looked at again.
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self.fs.locked(self._log(sid), create=False))
                except FileNotFoundError:  # removed meanwhile (deleted, or by another repair)
                    continue
                fixed += self._place_unindexed(entry, set_aside)
        for name in self.fs.listdir(self.directory):
            orphan = f"{self.directory}/{name}"
            if name.startswith(".orphan-") and self.fs.is_dir(orphan) and orphan not in set_aside:
                if self._holds_nothing(orphan):
                    self.fs.remove_tree(orphan)
                    fixed.append(f"{orphan}: set aside earlier and holds no message or branch event; removed")
                else:
                    fixed.append(f"{orphan}: kept (messages of a session whose key another session has)")
        return fixed + self._repair_names()

    def _stale_names(self) -> list[tuple[str, str]]:
        def key_of(sid: str) -> str | None:
            entry = self._read_meta(sid)
            return None if entry is None else entry.key
        return self._names.stale(lambda sid: _is_session_id(sid) and self.fs.exists(self._log(sid)), key_of)

    def _repair_names(self) -> list[str]:
        """After the index is repaired: leaves that live sessions miss written (all of
        them, silently, in a store without names/ yet), stale ones removed."""
        fixed = []
        if self._names.whole:
            fixed += [f"{self._names.leaf(e.key, e.session_id)}: session {e.session_id} was missing from names/; "
                      "written" for e in self._name_sessions()]
        elif self._format() == 2:
            self._ensure_names()
        for path, why in self._stale_names():
            self.fs.remove(path, durable=self._durable)
            fixed.append(f"{path}: {why}; removed")
        return fixed


_LOAD_PART = 4 * 2**20  # bytes of log a part of a load decodes: what a long session's load holds at once
_BACK_MOST = 50_000  # records a read of a path's end looks through before it loads the session instead
_BACK_PART = 2**16  # bytes of log a part of a backwards read decodes (a path's last messages: a few hundred)


_SESSION_FILES = frozenset({"messages.jsonl", "branches.jsonl", "lock.json", "lease.lock", "stats.json",
                            "branches.jsonl.format-1",
                            "messages.jsonl.quarantine", "branches.jsonl.quarantine"})


def _note_end(ends: list[int], file: int, base: int, chunk: bytes, used: int) -> None:
    """Note in ``ends`` (see ``_Vouch``) the last whole line of ``chunk[:used]``, read
    at ``base`` of file 0 (the branch events) or 1 (the log): the reader believes what
    it read before that end only while that very line is still there."""
    if not used:
        return
    start = chunk.rfind(b"\n", 0, used - 1) + 1
    at = 3 * file
    ends[at], ends[at + 1], ends[at + 2] = base + used, used - start, zlib.crc32(memoryview(chunk)[start:used])
    ends[6 + file] = 1


def _holds_line(fs: FileSystem, path: str, end: int, length: Any, crc: Any) -> bool:
    """Whether the ``length`` bytes of ``path`` before ``end`` have CRC-32 ``crc``."""
    return (isinstance(length, int) and 0 < length <= end and isinstance(crc, int)
            and zlib.crc32(fs.read_range(path, end - length, length)) == crc)


def _jsonable(identity: Any) -> Any:
    """A file identity as JSON (a ``(dev, ino)`` pair becomes a list)."""
    return list(identity) if isinstance(identity, tuple) else identity
