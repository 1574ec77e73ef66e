"""The store's core: sessions, messages and branches over a :class:`Storage`.

It validates every call, keeps a bounded cache of session trees, writes through the
storage's exclusive ``writing`` scope, enforces leases with fencing tokens, performs
auto-resets, and emits events to subscribers outside its locks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

from .auto_reset import AutoResetConfig, AutoResetManager, ResetResult, _current_segment
from .contexts import (
    _CONTEXT_BYTES,
    _CONTEXT_FORMATS,
    _CONTEXT_READERS_VERSION,
    _context,
    _ContextFold,
    _left_out,
    _path_turns,
    _to_fold,
)
from .errors import (
    BranchExists,
    BranchNotFound,
    DuplicateMessage,
    InvalidInput,
    InvalidKey,
    InvalidMessage,
    MessageNotFound,
    SessionNotFound,
    _storage_errors,
)
from .jsonl_storage import (
    _BACK_MOST,
)
from .leases import _lease_fields_ok, _LeasedStore
from .log_format import (
    _AppendSpec,
    _checked_append,
    _encode_line,
    _encode_message,
    _import_lines,
    _message_from_record,
    _new_message,
    _same_message,
    _sealed,
)
from .records import (
    _HEAD,
    _NO_FIELDS,
    _SNAKE_TO_CAMEL,
    Branch,
    CheckReport,
    Message,
    Problem,
    SessionMetadata,
)
from .searching import _shown_title
from .session_cache import _valid_tally
from .storage import IndexEntry
from .tree import _KEPT, _advances, _newest_first, _Session, _tally_records
from .validation import _check_import_branch, _check_key, _check_name, _check_title, _is_name


class _StoreBase(_LeasedStore):
    """The sessions, their messages and branches (see :class:`SessionStore`)."""

    # -- sessions -----------------------------------------------------------------

    @overload
    def resolve(self, key: str) -> str: ...

    @overload
    def resolve(self, key: str, *, create: Literal[True]) -> str: ...

    @overload
    def resolve(self, key: str, *, create: bool) -> str | None: ...

    def resolve(self, key: str, *, create: bool = True) -> str | None:
        """The session id of ``key``, creating the session when there is none.

        ``create=False`` only looks: ``None`` when ``key`` has no session (nothing is
        written), so that a mistyped key does not make an empty session.

        A lookup reads one key of the index (never the whole index), so it costs the
        same whatever the store holds. Creation is durable before this returns (with
        ``durable``), and unique across every store and process on the same storage.
        """
        _check_key(key)
        self._ready()
        with _storage_errors(f"resolve key {key[:80]!r}"):
            sid = self._storage.lookup(key)
            if sid is not None or not create:
                return sid
            new, now = str(uuid.uuid4()), self._now_ms()
            sid = self._storage.create_session(key, new, now)
        if sid == new:
            self._emit("session.created", sid, SessionMetadata(session_id=sid, key=key, created_at=now,
                                                                 updated_at=now, message_count=0))
        return sid

    def has_key(self, key: str) -> bool:
        """Whether a session exists for ``key`` (never creates one)."""
        _check_key(key)
        self._ready()
        with _storage_errors("read the index"):
            return self._storage.lookup(key) is not None

    def has_session(self, session_id: str) -> bool:
        """Whether a session with this id exists."""
        self._ready()
        if not isinstance(session_id, str):
            return False
        with _storage_errors("read the index"):
            return self._storage.session_info(session_id) is not None

    def get_all_session_ids(self) -> list[str]:
        """Every session id, oldest first. Reads the index, never a session's records."""
        self._ready()
        with _storage_errors("list the sessions"):
            return [e.session_id for e in self._storage.list_sessions()]

    def get_keys(self, prefix: str = "") -> dict[str, str]:
        """Key -> session id of every session whose key starts with ``prefix``, oldest
        first. Reads the key index (never a session's records): O(matches) where the
        storage's index is ordered (see :meth:`Storage.find_sessions`)."""
        if not isinstance(prefix, str):
            raise InvalidKey(f"a key prefix must be a string, not {type(prefix).__name__}")
        self._ready()
        with _storage_errors("list the sessions"):
            found = sorted(self._storage.find_sessions(prefix), key=lambda e: (e.created_at, e.session_id))
        return {e.key: e.session_id for e in found if e.key.startswith(prefix)}

    def get_metadata(self, session_id: str) -> SessionMetadata | None:
        """The session's metadata, or ``None`` for an unknown id.

        Never loads a session that is not cached: counts come from the storage's
        saved tally and the records written after it. ``message_count`` counts the
        message records in storage (a damaged log's duplicate records included,
        until :meth:`repair`).
        """
        self._ready()
        if not isinstance(session_id, str):
            return None
        with self._mutex:
            state = self._sessions.get(session_id)
        if state is not None and state.loaded:
            try:
                with state.lock:
                    self._catch_up(state)
                    return state.metadata()
            except SessionNotFound:
                return None
        with _storage_errors(f"read session {session_id!r}"):
            info = self._storage.session_info(session_id)
            if info is None:
                return None
            fresh: dict[str, Any] = {"messages": 0, "updatedAt": info.created_at, "resets": 0, "lastResetAt": None,
                                     "branches": 1, "title": None, "preview": None}
            saved = self._storage.read_tally(session_id)
            position, tally = (0, 0), dict(fresh)
            if saved is not None and _valid_tally(saved[1]):
                position, tally = saved[0], dict(saved[1])
            events: list[tuple[int, dict[str, Any]]] = []
            try:
                for found in self._storage.load_parts(session_id, position):
                    if found.restart:
                        tally, events = dict(fresh), []
                    _tally_records(tally, found.messages, ())
                    events += found.events
                _tally_records(tally, (), events)
            except SessionNotFound:
                return None
        return SessionMetadata(session_id=session_id, key=info.key, created_at=info.created_at,
                               updated_at=tally["updatedAt"], message_count=tally["messages"],
                               reset_count=tally["resets"], last_reset_at=tally["lastResetAt"],
                               forked_from=info.forked_from, branch_count=tally.get("branches", 1),
                               title=_shown_title(tally["title"], tally["preview"]), preview=tally["preview"])

    def delete_session(self, session_id: str, *, owner_id: str | None = None,
                       fencing_token: int | None = None) -> None:
        """Delete the session and its records. ``SessionNotFound`` for an unknown id.

        Atomic: whatever fails or crashes, the session is fully there or fully gone.
        The storage holds the session as a writer does while it deletes, so no writer
        in any process can append to a session that is going away.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them,
        in the storage's exclusive section before anything is deleted
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing deleted); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        fence = self._fence(session_id, owner_id, fencing_token)
        self._delete(session_id, None if fence is None else functools.partial(self._check_lease, owner_id=fence[0],
                                                                                token=fence[1]))

    def _delete(self, session_id: str, check: Callable[[_Session], None] | None) -> None:
        """Delete the session (the one path of every deletion): ``check(state)``, when
        given, runs in the storage's exclusive section before anything is deleted,
        and nothing is deleted when it raises."""
        state = self._state(session_id)
        extra: dict[str, Any] = {}
        if check is not None:  # given only when needed: a storage written before `check` still deletes
            extra["check"] = functools.partial(check, state)
        with _storage_errors(f"delete session {session_id!r}"):
            with state.lock:
                try:
                    self._storage.delete_session(session_id, self._now_ms(), **extra)
                except SessionNotFound:
                    self._forget_deleted(state)
                    raise
                self._forget_deleted(state)
        self._emit("session.deleted", session_id, session_id)

    def _lease_problems(self, entry: IndexEntry) -> list[Problem]:
        raw = self._storage.read_lease(entry.session_id)
        if raw is None or _lease_fields_ok(raw):
            return []
        return [Problem(session_id=entry.session_id, file=f"{self._storage.location} (lease of {entry.session_id})",
                        offset=None, reason="the lease record is corrupt (repair resets it; fencing tokens keep "
                                            "growing)")]

    def check(self, session_id: str | None = None) -> CheckReport:
        """Look for problems without changing anything: records, files, index, leases.

        Reports damaged and torn records (file, offset, reason: a damaged message
        record reads as a placeholder that keeps its place in the tree), duplicate
        ids, records whose parent is missing (kept as roots), branch events that do
        not apply, corrupt lease records, and what interrupted operations left
        (unindexed sessions, remains of deletions, temp files). With ``session_id``:
        that session only (``SessionNotFound`` when unknown).
        """
        self._ready()
        with _storage_errors("check the store"):
            if session_id is not None:
                info = self._storage.session_info(session_id) if isinstance(session_id, str) else None
                if info is None:
                    raise SessionNotFound(session_id)
                entries = [info]
            else:
                entries = self._storage.list_sessions()
            problems = self._storage.check({e.session_id: e.key for e in entries}, index=session_id is None)
            for entry in entries:
                try:
                    problems += self._scan_session(entry)[0].problems
                    problems += self._lease_problems(entry)
                except SessionNotFound:
                    continue  # deleted meanwhile
        return CheckReport(problems=problems, sessions_checked=len(entries))

    def repair(self, session_id: str | None = None) -> CheckReport:
        """Fix what can be fixed without deleting data; report the rest.

        - Records that cannot join a session (damaged lines, duplicate ids, a torn
          tail) are moved aside by the storage (JSONL: to ``messages.jsonl.quarantine``
          beside the log, byte for byte, the log then rewritten atomically); each
          damaged or duplicate message record leaves a placeholder of type
          ``damaged`` in its place, which keeps the records after it where they were:
          an intact record is never moved aside. Records whose parent is missing stay,
          as roots.
        - A corrupt lease record is reset (free, its fencing token above any issued).
        - Without ``session_id``: sessions missing from the index are adopted, and
          what interrupted operations left is removed when it is provably garbage
          (remains of deletions, creations never announced, temp files no process is
          writing); a session whose key another session took is kept aside and
          reported.

        Every other store and process notices a rewritten log and reloads it.
        """
        self._ready()
        fixed: list[str] = []
        with _storage_errors("repair the store"):
            if session_id is None:
                fixed += self._storage.repair_index()
                entries = self._storage.list_sessions()
            else:
                info = self._storage.session_info(session_id) if isinstance(session_id, str) else None
                if info is None:
                    raise SessionNotFound(session_id)
                entries = [info]
            for entry in entries:
                try:
                    with self._writing(entry.session_id, catch_up=False) as state:
                        scratch, placeholders = self._scan_session(entry)
                        bad = [p for p in scratch.problems if not p.reason.endswith(_KEPT)]
                        done = self._storage.quarantine(entry.session_id, bad, placeholders)
                        if done:
                            self._drop_tree(state)
                        fixed += done
                        if self._lease_problems(entry):
                            floor = self._normal_lease(self._storage.read_lease(entry.session_id))["token"]
                            self._storage.write_lease(entry.session_id, {"owner": None, "token": floor, "queue": []},
                                                      durable=True)
                            fixed.append(f"the lease record of {entry.session_id}: reset (next token > {floor})")
                except SessionNotFound:
                    continue
        report = self.check(session_id)
        return CheckReport(problems=report.problems, fixed=fixed, sessions_checked=report.sessions_checked)

    # -- appending --------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        *,
        role: str,
        content: Any,
        type: str | None = None,
        parent_id: str | None = _HEAD,
        id: str | None = None,
        owner_id: str | None = None,
        fencing_token: int | None = None,
        **fields: Any,
    ) -> Message:
        """Append a message and return it as stored.

        - ``parent_id`` omitted: the current branch's head (``None`` when empty);
          ``None``: a new root; an id: must exist here (``MessageNotFound``).
        - The current branch's head advances when the parent *is* that head (omitted
          or named); a sibling or a new root in a non-empty session leaves it alone.
        - ``type`` defaults to ``role``. ``id`` defaults to a fresh random id. An
          existing id raises :class:`DuplicateMessage`, unless the call repeats that
          message (same role, type, content and fields; parent omitted or the same):
          then the stored message is returned and nothing is written. So an append
          whose outcome is unknown (a connection lost during the commit) is retried
          safely with the same id.
        - ``**fields`` (``tool_calls``, ``tool_call_id``, ``metadata``, any JSON) are
          stored and returned as given; content and fields must be JSON, with string
          object keys and at most :data:`MAX_NESTING` levels (:class:`InvalidMessage`
          otherwise). What is returned is read-only (lists and dicts refuse changes).
        - ``owner_id``: refused with :class:`SessionLocked` while another owner holds
          the lease. ``fencing_token`` (from :meth:`acquire_lock`): refused with
          :class:`LeaseLost` unless that lease is still live and current; the check
          runs in the storage's exclusive section, together with the write. Inside
          :meth:`lock`/:meth:`with_lock` both are implied.

        Returns once the record is written (and fsync'd when ``durable``). Any error
        leaves storage untouched.
        """
        spec = _checked_append(role, content, type, id, fields)
        if parent_id is not _HEAD and parent_id is not None and not isinstance(parent_id, str):
            raise InvalidMessage(f"parent_id must be a string or None, not {parent_id!r}")

        def change(state: _Session) -> tuple[Message, list[tuple[str, Any]]]:
            msg, reset = self._append_in(state, spec, parent_id)
            return msg, _append_events(msg, reset)
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def edit(self, session_id: str, message_id: str, *, content: Any, role: str | None = None,
             type: str | None = None, owner_id: str | None = None, fencing_token: int | None = None,
             **fields: Any) -> Message:
        """A new version of a message, made current, as chat products edit a turn:
        a sibling of ``message_id`` (the same parent; its role unless ``role`` is
        given; ``content`` and ``**fields`` as :meth:`append` takes them), and the
        current branch's head moves to it, so the next :meth:`append` continues from
        the new version. The old version and what followed it stay in the tree (the
        parent's :meth:`get_children` lists both; :meth:`move_head` goes back). One
        write: both or neither. Returns the new message; subscribers get
        ``message.added`` and ``branch.moved``.

        ``MessageNotFound`` for an unknown id; leases as :meth:`append` checks them.
        """
        if not isinstance(message_id, str):
            raise InvalidInput(f"message_id must be a message id, not {message_id!r}")

        def change(state: _Session) -> tuple[Message, list[tuple[str, Any]]]:
            old = state.require(message_id)
            spec = _checked_append(old.role if role is None else role, content, type, None, fields)
            msg, reset = self._append_in(state, spec, old.parent_id)
            if state.head() != msg.id:
                self._move(state, msg.id, self._now_ms())
            return msg, [*_append_events(msg, reset), ("branch.moved", state.branches[state.current].frozen())]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def regenerate(self, session_id: str, message_id: str, *, owner_id: str | None = None,
                   fencing_token: int | None = None) -> Branch:
        """Make room for a new version of a message, as chat products regenerate an
        answer: the current branch's head moves to the message's parent (the prompt),
        so the next :meth:`append` (the new answer) becomes its sibling and current.
        The old version stays in the tree. Returns the branch as moved; subscribers
        get ``branch.moved``. (A message given with its new content at once is
        :meth:`edit`.)

        ``MessageNotFound`` for an unknown id; leases as :meth:`append` checks them.
        """
        if not isinstance(message_id, str):
            raise InvalidInput(f"message_id must be a message id, not {message_id!r}")

        def change(state: _Session) -> tuple[Branch, list[tuple[str, Any]]]:
            parent = state.require(message_id).parent_id
            if state.head() != parent:
                self._move(state, parent, self._now_ms())
            moved = state.branches[state.current].frozen()
            return moved, [("branch.moved", moved)]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def append_many(self, session_id: str, messages: Sequence[Mapping[str, Any]], *,
                    parent_id: str | None = _HEAD, owner_id: str | None = None,
                    fencing_token: int | None = None) -> list[Message]:
        """Append a chain of messages at once: all of them or none, with one sync.

        Each of ``messages`` is a mapping of :meth:`append`'s keywords: ``role`` and
        ``content``, optionally ``type``, ``id`` and any fields. The first goes under
        ``parent_id`` (as for :meth:`append`: omitted, the current head), each next one
        under the one before; the head rules, auto-reset and retries (an ``id`` that
        repeats a stored message returns it) are those of as many :meth:`append` calls.
        Everything is checked before anything is written; an error part way (a write,
        a full disk) undoes the records written, so none of them is in the session.
        A crash part way leaves none of it either: on SQLite and PostgreSQL the chain
        is one transaction; on the JSONL files it is one write, which no reader takes
        until its last record is there (see :meth:`Storage.append_messages`). One
        exception: a chain that auto-resets is written in parts, each but the last
        ending with a message that triggered a reset (and its reset's records), so a
        crash may keep the parts before it. Returns the
        messages as stored; durable when it returns (with ``durable``), at the cost of
        one sync for the chain, where as many appends cost one each.
        """
        specs = []
        for i, given in enumerate(messages):
            if not isinstance(given, Mapping) or not isinstance(given.get("role"), str) or "content" not in given:
                raise InvalidMessage(f"messages[{i}] must be a mapping with a string 'role' and a 'content'")
            fields = {k: v for k, v in given.items() if k not in ("role", "content", "type", "id")}
            specs.append(_checked_append(given["role"], given["content"], given.get("type"), given.get("id"), fields))
        if parent_id is not _HEAD and parent_id is not None and not isinstance(parent_id, str):
            raise InvalidMessage(f"parent_id must be a string or None, not {parent_id!r}")

        def change(state: _Session) -> tuple[list[Message], list[tuple[str, Any]]]:
            written: list[Message] = []
            events: list[tuple[str, Any]] = []
            parent: str | None = parent_id
            for spec in specs:
                msg, reset = self._append_in(state, spec, parent)
                written.append(msg)
                events += _append_events(msg, reset)
                parent = msg.id
            self._write_batch(state)
            return written, events
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token, chain=True)

    def _append_in(self, state: _Session, spec: _AppendSpec, parent_id: str | None
                   ) -> tuple[Message, ResetResult | None]:
        """Write one checked message under ``parent_id`` (``_HEAD``: the head), with its
        auto-reset; caller is in ``_writing``. Returns it and the reset it caused."""
        role, mtype, content, id, fields = spec
        session_id = state.session_id
        parent = state.head() if parent_id is _HEAD else parent_id
        if parent is not None and parent not in state.by_id:
            raise MessageNotFound(session_id, parent)
        if id is None:
            id = state.fresh_id()
        elif id in state.by_id:
            existing = state.by_id[id]
            if (parent_id is _HEAD or parent_id == existing.parent_id) and _same_message(
                    existing, mtype, role, content, fields):
                return existing, None  # a retry of an append that landed: nothing is written twice
            raise DuplicateMessage(session_id, id)
        now = self._now_ms()
        record = {"id": id, "parentId": parent, "type": mtype, "role": role,
                  "content": content, "timestamp": now}
        for name, value in fields.items():
            record[_SNAKE_TO_CAMEL.get(name, name)] = value
        line = _encode_message(record)  # validates before anything is written
        if isinstance(content, str) and not fields:
            msg = _new_message(id, state.by_id[parent].id if parent is not None else None, sys.intern(mtype),
                               sys.intern(role), content, now, _NO_FIELDS)
        else:  # store the JSON round trip: what a reload returns, detached from the caller
            msg = _message_from_record(json.loads(line), state.by_id)
        config = self._auto_reset
        reason = self._reset_reason(state, config, msg, now) if config is not None else None
        reset = None
        if config is not None and reason is not None:
            reset, new_parent = self._write_reset(state, reason, now, config, incoming=msg)
            msg = dataclasses.replace(msg, parent_id=new_parent)
            record["parentId"] = new_parent
            line = _encode_message(record)
        self._write_message(state, msg, line)
        if reason is not None:  # the head moves last, once the whole new segment is written
            self._move(state, msg.id, now)
        return msg, reset

    def _write_message(self, state: _Session, msg: Message, line: bytes) -> None:
        """Write one message record and apply it (caller is in ``_writing``). Inside
        append_many (``state.batch``) the record is applied now and written with the
        rest of its chain by :meth:`_write_batch`."""
        line = _sealed(line)  # every message line goes to storage with its check
        if state.batch is None:
            state.position = self._storage.append_message(state.session_id, state.position, msg.id, line)
        else:
            state.batch.append((msg.id, line))
        state.add_message(msg)
        if state.pending_events:  # one naming this many records applies now, as a load applies it
            state._apply_events_upto(state.record_count)
        self._grow(state, len(line))
        state.untallied += 1

    def _write_batch(self, state: _Session) -> None:
        """Write the message records append_many applied so far, as one chain (see
        :meth:`Storage.append_messages`): all of them or none is ever seen, also after
        a crash. Before a branch event too (an auto-reset's ``move``): an event must
        never name records that may still be cut off."""
        if state.batch:
            state.position = self._storage.append_messages(state.session_id, state.position, state.batch)
            state.batch = []

    def _move(self, state: _Session, head_id: str | None, now: int, branch: str | None = None) -> None:
        """Write a ``move`` event: the branch's (default: the current one's) head is now ``head_id``."""
        self._branch_event(state, {"op": "move", "name": state.current if branch is None else branch,
                                   "headId": head_id, "at": now, "seq": state.record_count})

    # -- auto-reset ---------------------------------------------------------------------

    @staticmethod
    def _reset_reason(state: _Session, config: AutoResetConfig, incoming: Message, now: int) -> str | None:
        """Which limit appending ``incoming`` would break (O(1)), or ``None``.

        Only appends onto the current head are checked; others never reset.
        """
        if (not config.enabled or state.segments is None or incoming.parent_id is None
                or incoming.parent_id != state.head()):
            return None
        count, tokens, start = state.segments[incoming.parent_id]
        if config.max_tokens is not None:
            tokens += config.count_tokens(incoming)
        return AutoResetManager(config).over_limit(count + 1, tokens, start, now)

    def _write_reset(self, state: _Session, reason: str, now: int, config: AutoResetConfig,
                     incoming: Message | None = None) -> tuple[ResetResult, str | None]:
        """Write a reset's new segment: a root (the marker, or the first kept copy) and
        the copies chained after it. Returns the result and the id the head moves to
        (the segment's last message, ``None`` when nothing was written).

        Caller is in ``_writing`` and writes the head's ``move`` itself, after
        everything else: a crash in between leaves a stray chain of copies the head
        never moved to, never a head on a marker without its kept messages.
        ``incoming`` (an append that triggered the reset) is reserved room in the new
        segment; the caller writes it after the copies, before the move.
        """
        manager = AutoResetManager(config)
        head = state.head()
        segment = _current_segment(state.path_to(head)) if head is not None else []
        reserve_tokens = config.count_tokens(incoming) if incoming is not None and config.max_tokens else 0
        result = manager.reset(segment, reason, now, reserve=1 if incoming is not None else 0,
                               reserve_tokens=reserve_tokens, new_id=state.fresh_id)
        for msg in result.messages:
            self._write_message(state, msg, _encode_message(msg.to_record()))
        return result, result.messages[-1].id if result.messages else None

    def reset(self, session_id: str, *, owner_id: str | None = None, fencing_token: int | None = None,
              **overrides: Any) -> ResetResult:
        """Reset the session now, whatever its size; the result's reason is ``"manual"``.

        Uses the store's ``auto_reset`` config (or the defaults) with ``overrides``
        applied, e.g. ``reset(sid, keep_strategy="last", keep_count=2)``. The old
        messages stay in the tree; the current branch's head moves to the new segment
        once it is written. Subscribers get ``session.reset``, then ``message.added``
        for the marker and each kept copy.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        try:
            config = dataclasses.replace(self._auto_reset or AutoResetConfig(), **overrides)
        except TypeError as e:
            raise InvalidInput(f"reset() got an unknown setting: {e}") from None
        except ValueError as e:
            raise InvalidInput(str(e)) from None

        def change(state: _Session) -> tuple[ResetResult, list[tuple[str, Any]]]:
            now = self._now_ms()
            result, new_head = self._write_reset(state, "manual", now, config)
            self._move(state, new_head, now)
            return result, _reset_events(result)
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    # -- imports ---------------------------------------------------------------------

    def import_session(self, key: str, messages: list[Message], *, branches: list[Branch] | None = None,
                       current: str = "main", forked_from: tuple[str, str | None] | None = None,
                       title: str | None = None) -> str:
        """Create a session for ``key`` holding ``messages`` exactly as given (ids,
        parents, timestamps, fields), with ``branches`` and the ``current`` one.
        ``forked_from``: ``(session id, message id)`` of the session and message it
        was forked from, kept as :meth:`fork_session` keeps it (in its metadata).
        ``title``: its title, as :meth:`set_title` sets one.

        Every parent must precede its children and ids must be unique; branch heads
        must name given messages. All of it is checked before anything is written
        (:class:`InvalidMessage`, :class:`InvalidInput`); a key that already has a
        session raises :class:`InvalidKey`. All or nothing: the session appears under
        its key whole (with every message and branch) or, when anything fails or the
        process is killed, not at all; a retry then starts afresh. Returns the new
        session's id.
        """
        _check_key(key)
        if not isinstance(messages, (list, tuple)):
            raise InvalidInput(f"import_session takes a list of Message records, not {type(messages).__name__}")
        seen: set[str] = set()
        lines = [_sealed(line) for line in _import_lines(messages, seen)]
        heads: dict[str, str | None] = {"main": None}
        named: set[str] = set()
        for b in branches or []:
            if not isinstance(b, Branch):
                raise InvalidInput(f"branches must be Branch records, not {type(b).__name__}")
            _check_import_branch(b, seen, named)
            heads[b.name] = b.head_id
        if not isinstance(current, str) or current not in heads:
            raise InvalidInput(f"current branch {current!r} is not among the branches")
        if forked_from is not None and not (
                isinstance(forked_from, tuple) and len(forked_from) == 2 and _is_name(forked_from[0])
                and (forked_from[1] is None or _is_name(forked_from[1]))):
            raise InvalidInput(f"forked_from must be a (session id, message id or None) pair, not {forked_from!r}")
        _check_title(title)
        self._ready()
        now, seq = self._now_ms(), len(lines)
        events: list[bytes] = []
        for b in branches or []:  # branch times are kept: create at created_at, move at updated_at
            if b.name != "main":
                events.append(_encode_line({"op": "create", "name": b.name, "headId": b.head_id,
                                            "at": b.created_at, "seq": seq}))
            if b.name == "main" or b.updated_at != b.created_at:
                events.append(_encode_line({"op": "move", "name": b.name, "headId": b.head_id,
                                            "at": b.updated_at, "seq": seq}))
        if current != "main":
            events.append(_encode_line({"op": "switch", "name": current, "at": now, "seq": seq}))
        if title is not None:
            events.append(_encode_line({"op": "title", "name": current, "title": title, "at": now, "seq": seq}))
        new = str(uuid.uuid4())
        with _storage_errors(f"import a session for key {key[:80]!r}"):
            existing = self._storage.lookup(key)
            if existing is None:
                existing = self._storage.create_session(key, new, now, messages=lines, events=events,
                                                        forked_from=forked_from)
        if existing != new:
            raise InvalidKey(f"key {key!r} already has a session ({existing})")
        self._emit("session.created", new, SessionMetadata(session_id=new, key=key, created_at=now, updated_at=now,
                                                             message_count=len(lines), forked_from=forked_from))
        return new

    def import_messages(self, session_id: str, messages: Sequence[Message], *,
                        branches: Sequence[Branch] = (), owner_id: str | None = None,
                        fencing_token: int | None = None) -> list[Message]:
        """Add ``messages`` to an existing session exactly as given (ids, parents,
        timestamps, fields), then create or move ``branches`` to the heads they name.

        For mirroring a source that grows (a transcript that was imported before): a
        message whose id the session already has is skipped when it is the same record
        (parent, type, role, content, fields and timestamp), and raises
        :class:`DuplicateMessage` when it differs. Every parent must be in the session
        or precede its child in ``messages``; the head rule applies as for
        :meth:`append` (a message whose parent is the current head advances it); no
        auto-reset. Everything is checked before anything is written. Returns the
        messages written (the skipped ones left out). A crash part way leaves a prefix
        of them (each whole); repeating the call completes it.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        if not isinstance(messages, (list, tuple)):
            raise InvalidInput(f"import_messages takes a list of Message records, not {type(messages).__name__}")
        given = list(messages)
        for b in branches:
            if not isinstance(b, Branch):
                raise InvalidInput(f"branches must be Branch records, not {type(b).__name__}")

        def change(state: _Session) -> tuple[list[Message], list[tuple[str, Any]]]:
            seen = set(state.by_id)
            existing = {m.id: m for m in given if isinstance(m, Message) and m.id in state.by_id}
            for mid, m in existing.items():
                if state.by_id[mid].to_record() != json.loads(_encode_message(m.to_record())):
                    raise DuplicateMessage(session_id, mid)
            fresh = [m for m in given if not (isinstance(m, Message) and m.id in existing)]
            lines = _import_lines(fresh, seen)
            named: set[str] = set()
            for b in branches:
                _check_import_branch(b, seen, named)
            written: list[Message] = []
            for line in lines:
                msg = _message_from_record(json.loads(line), state.by_id)
                self._write_message(state, msg, line)
                written.append(msg)
            for b in branches:
                current = state.branches.get(b.name)
                if current is None:
                    self._branch_event(state, {"op": "create", "name": b.name, "headId": b.head_id,
                                               "at": b.created_at, "seq": state.record_count})
                elif current.head_id != b.head_id:
                    self._move(state, b.head_id, b.updated_at, b.name)
            return written, [("message.added", msg) for msg in written]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def get_messages(self, session_id: str) -> list[Message]:
        """Every message, in append order."""
        return self._read(session_id, lambda s: list(s.by_id.values()))

    def get_message(self, session_id: str, message_id: str) -> Message:
        """One message; ``MessageNotFound`` when absent."""
        return self._read(session_id, lambda s: s.require(message_id))

    def get_linear_history(self, session_id: str, leaf_id: str | None = None, *,
                           limit: int | None = None) -> list[Message]:
        """Root -> ``leaf_id`` (default: the current head; ``[]`` when empty). O(depth).

        ``limit``: only the last ``limit`` messages of that path, still root-first,
        found by walking back from the leaf: O(limit), whatever the depth (``0`` gives
        ``[]``; negative raises :class:`InvalidInput`). Head and path are read together.
        A session not in the cache is then not loaded: its records are read backwards
        from their end (see :meth:`_history_from_the_end`), unless that read cannot be
        sure to give what a load gives.
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise InvalidInput(f"limit must be an integer >= 0 or None, not {limit!r}")
        state = self._state(session_id)
        with state.lock:
            found: list[Message] | None = None
            if limit == 0 and leaf_id is None:
                found = []
            elif limit and not state.loaded and (leaf_id is None or isinstance(leaf_id, str)):
                try:
                    found = self._history_from_the_end(state, leaf_id, limit)
                except SessionNotFound:
                    self._forget_deleted(state)
                    raise
            if found is None:
                self._catch_up(state)
                leaf = state.head() if leaf_id is None else leaf_id
                found = [] if leaf is None else state.path_to(leaf, limit)
        self._trim()
        return found

    def _history_from_the_end(self, state: _Session, leaf_id: str | None, limit: int) -> list[Message] | None:
        """The last ``limit`` messages of the path to ``leaf_id`` (default: the current
        head) of a session not in the cache, read from the end of its log without
        loading it: O(the records after the tally and those back to the path's first
        message read), holding those after the tally and a part at a time. ``None``
        when that read cannot be sure to give what a load would: the caller loads the
        session instead.

        The head comes from the storage's tally, saved with the head only by a store
        that read every record up to it sound (see :meth:`_Session.tally`) and believed
        only while the storage still holds what it was saved of (a log rewritten, or
        cut back and grown again, is not: see :meth:`JsonlStorage.read_tally`), moved
        on by the records after it as a load moves it (a message whose parent is the
        head becomes the head). Then the path is walked back from its leaf, reading the
        log backwards: a record's parent always precedes it, so one pass finds them
        all. Whatever a load would report or treat specially makes this give up: a
        branch event or a damaged record after the tally, a damaged record among those
        read, an id read twice, a child before its parent, a cycle, a leaf or a parent
        that is not found, more than ``_BACK_MOST`` records to look through.

        Trusted, not checked: the records before the tally that it does not read, as
        they were when the tally was saved. A store never writes a duplicate id there;
        an id repeated by hand, or a byte flipped on disk since, is what :meth:`check`
        finds, and a load reports, but this read does not see.
        """
        storage, sid = self._storage, state.session_id
        with _storage_errors(f"read session {sid!r}"):
            saved = storage.read_tally(sid)
            if saved is None or not _valid_tally(saved[1]) or "head" not in saved[1]:
                return None
            position, head = saved[0], saved[1]["head"]
            if head is not None and not isinstance(head, str):
                return None
            newer: dict[str, Message] = {}  # the records after the tally, by id
            awaited: set[str] = set()  # their parents not among them: before the tally, or nowhere
            for found in storage.load_parts(sid, position):
                if found.restart or found.events or found.problems or len(newer) > _BACK_MOST:
                    return None
                for _, rec in found.messages:
                    try:
                        new = _message_from_record(rec, newer)
                    except (ValueError, RecursionError):
                        return None
                    if new.id in newer or new.id in awaited:  # read twice, or a parent after its child
                        return None
                    newer[new.id] = new
                    if new.parent_id is not None and new.parent_id not in newer:
                        awaited.add(new.parent_id)
                    if _advances(head, new.parent_id):
                        head = new.id
            want = head if leaf_id is None else leaf_id
            out: list[Message] = []
            seen = set(newer)  # every id read: one read twice makes the log one a load reports on
            taken: set[str] = set()  # the records after the tally on the path
            older: Iterator[dict[str, Any] | None] | None = None
            while want is not None and len(out) < limit:
                msg: Message | None = newer.get(want)
                if msg is not None:
                    if want in taken:  # a cycle written by hand (a load leaves it detached)
                        return None
                    taken.add(want)
                else:
                    if older is None:
                        parts = storage.load_backwards(sid, position)
                        if parts is None:
                            return None
                        older = _newest_first(parts)
                    for back in older:
                        if back is None:
                            return None
                        rid = back.get("id")
                        if rid.__class__ is not str or rid in seen or len(seen) > _BACK_MOST + limit:
                            return None
                        seen.add(rid)
                        if rid == want:
                            try:
                                msg = _message_from_record(back)
                            except (ValueError, RecursionError):
                                return None
                            break
                    else:
                        return None  # not in the log: a load reports what is wrong
                out.append(msg)
                want = msg.parent_id
        out.reverse()
        return out

    def get_children(self, session_id: str, message_id: str) -> list[Message]:
        """The message's children in append order. O(children)."""
        def children(s: _Session) -> list[Message]:
            s.require(message_id)
            return [s.by_id[c] for c in s.child_ids(message_id)]
        return self._read(session_id, children)

    def has_children(self, session_id: str, message_id: str) -> bool:
        """Whether the message has at least one child."""
        def has(s: _Session) -> bool:
            s.require(message_id)
            return message_id in s.child_map()
        return self._read(session_id, has)

    def get_tree(self, session_id: str, root_id: str | None = None) -> list[Message]:
        """The subtree of ``root_id`` in pre-order, siblings in append order.

        Without ``root_id``: every root's subtree, roots in append order.
        """
        return self._read(session_id, lambda s: s.subtree(root_id))

    def get_leaves(self, session_id: str) -> list[Message]:
        """Messages without children, in append order."""
        def leaves(s: _Session) -> list[Message]:
            children = s.child_map()
            return [m for m in s.by_id.values() if m.id not in children]
        return self._read(session_id, leaves)

    def get_branch_points(self, session_id: str) -> list[Message]:
        """Messages with more than one child, in append order."""
        def branch_points(s: _Session) -> list[Message]:
            children = s.child_map()
            return [m for m in s.by_id.values() if type(children.get(m.id)) is list]
        return self._read(session_id, branch_points)

    @overload
    def build_context(self, session_id: str, leaf_id: str | None = None, *,
                      format: Literal["openai"] = "openai", strict: bool = False,
                      include_reset_markers: bool = False, limit: int | None = None) -> list[dict[str, Any]]: ...

    @overload
    def build_context(self, session_id: str, leaf_id: str | None = None, *,
                      format: Literal["anthropic"], strict: bool = False,
                      include_reset_markers: bool = False, limit: int | None = None) -> dict[str, Any]: ...

    def build_context(self, session_id: str, leaf_id: str | None = None, *, format: str = "openai",
                      strict: bool = False, include_reset_markers: bool = False, limit: int | None = None
                      ) -> list[dict[str, Any]] | dict[str, Any]:
        """The root -> leaf path (default: the current head) as what a model API takes.

        ``format="openai"``: a list of Chat Completions messages (assistant
        ``tool_calls`` with ``function.arguments`` as a JSON string, one ``tool``
        message per call, call ids of at most 40 characters). ``format="anthropic"``:
        ``{"system": str, "messages": [...]}`` for the Messages API (``tool_use`` blocks;
        the next user turn starts with their ``tool_result`` blocks; user and assistant
        alternate; ``system`` only when there is system or developer text), ready for
        ``client.messages.create(**context, ...)``.

        Reads native records: the tutorial's ``tool_calls``/``tool_result`` shapes,
        OpenAI Chat's (``developer`` stays a developer message for OpenAI and becomes
        system text for Anthropic), OpenAI Responses' items and parts (``input_text``,
        ``output_text``, ``function_call``, ``function_call_output``, as the OpenAI
        Agents SDK stores them), Anthropic's content blocks, also when a record's content
        is such a message or item whole; records of other formats through their
        registered reader (:func:`register_context_reader`): session_store_transcripts
        reads pi and Claude Code transcripts, and the integrations
        session_store_langchain, session_store_pydantic_ai and session_store_llama_index
        the framework messages they store (a LangChain message as ``messages_to_dict``
        writes it, a pydantic-ai ``ModelMessage`` as its type adapter dumps it to JSON,
        its ``instructions`` left out as pydantic-ai does, a LlamaIndex ``ChatMessage``
        as ``model_dump`` gives it), once imported. A tool call without a result (branching
        and resets leave them) gets a synthetic error result; a result answering no call
        on the path is dropped; consecutive assistant records (one response split over
        records) merge; thinking goes to Anthropic only with its signature, to OpenAI
        never. A reset marker ("Session reset (max_messages) at ...") stays out of the
        context (the kept messages after it are in); ``include_reset_markers=True``
        sends it as system text.

        What neither API can express (an unknown role, a block of an unknown type, an
        item of OpenAI's hosted tools) is left out and logged once per session; with
        ``strict=True`` it raises :class:`InvalidMessage` instead.

        The list (and the Anthropic request dict and its ``messages`` list) is the
        caller's; the messages in it are read-only dicts shared with the store's cache,
        like a :class:`Message`'s content (``copy.deepcopy`` gives mutable ones: do that
        before handing them to a library that edits messages in place). The store keeps
        each session's last context per format and builds on it: the context of a
        descendant of the last leaf (the head after appends) costs O(new messages),
        one of a path that leaves it within its last few hundred messages (a sibling,
        an ancestor) O(the messages after the fork), anything else O(path).

        ``limit``: the context of only the path's last ``limit`` messages, read as
        :meth:`get_linear_history` reads them (a session not in the cache is not
        loaded), built afresh each time. What lies before them is not in it: a
        system prompt at the root, the call a result in them answers (the result is
        then dropped, as one answering no call).
        """
        if format not in _CONTEXT_FORMATS:
            raise InvalidInput(f"unknown context format {format!r}; known: {', '.join(_CONTEXT_FORMATS)}")
        if limit is not None:
            found, path = None, self.get_linear_history(session_id, leaf_id, limit=limit)
        else:
            state = self._state(session_id)
            with state.lock:
                self._catch_up(state)
                leaf = state.head() if leaf_id is None else state.require(leaf_id).id
                found = None if leaf is None else self._context(state, state.by_id[leaf], format,
                                                                include_reset_markers)
                path = [] if found is not None or leaf is None else state.path_to(leaf)
            self._trim()
        if found is not None:
            context, problems = found
        else:  # a limit, or records of another format (their readers see the path, outside the store's locks)
            tree: dict[str | None, list[Message]] | None = None

            def children(message_id: str) -> list[Message]:  # for readers: one snapshot, taken when first asked
                nonlocal tree
                if tree is None:
                    tree = {}
                    for m in self.get_messages(session_id):
                        tree.setdefault(m.parent_id, []).append(m)
                return list(tree.get(message_id, ()))

            problems = []
            if not include_reset_markers:
                path = [m for m in path if m.type != "reset"]
            context = _context(_path_turns(path, children, problems), format)
        if problems:
            _left_out(session_id, problems, strict)
        return context  # type: ignore[no-any-return]

    def _context(self, state: _Session, leaf: Message, format: str, markers: bool
                 ) -> tuple[Any, list[str]] | None:
        """The context of the path to ``leaf`` and what it left out, from the session's
        fold for ``format`` (see "Contexts"), extended or rewound to reach ``leaf``:
        O(new messages) for the leaf folded last, a descendant of it, or a path that
        leaves it near its end; anything else is folded afresh. ``None`` when a record
        on the path needs a registered reader. Caller holds ``state.lock``.

        A path never changes once its leaf exists (messages are immutable and appends
        only add leaves; moving a head changes no path), so a fold stays right until
        the tree is reloaded (:meth:`_Session.clear` drops the folds) or a reader is
        registered (the fold is then begun again)."""
        folds = state.context_cache
        if folds is None:
            folds = state.context_cache = {}
        which = (format, markers)
        fold: _ContextFold | None = folds.get(which)
        before = 0 if fold is None else len(fold.ids)
        todo = None if fold is None or fold.readers != _CONTEXT_READERS_VERSION[0] else _to_fold(state, fold, leaf)
        if fold is None or todo is None:
            fold = folds[which] = _ContextFold(format, markers)
            todo = state.path_to(leaf.id)
        if todo and not fold.fold(todo):  # a record needs its reader: no fold kept
            del folds[which]
            self._grow(state, -before * _CONTEXT_BYTES)
            return None
        if len(fold.ids) != before:
            self._grow(state, (len(fold.ids) - before) * _CONTEXT_BYTES)
        return fold.result(), (fold.problems.copy() if fold.problems else [])

    # -- branches ---------------------------------------------------------------------

    def _branch_event(self, state: _Session, event: dict[str, Any]) -> None:
        """Append a branch event and apply it (caller is in ``_writing``, and syncs after)."""
        self._write_batch(state)  # what append_many applied before it: an event never precedes its records
        line = _encode_line(event)
        state.position = self._storage.append_event(state.session_id, state.position, line)
        state.add_event(event)
        self._grow(state, len(line))
        state.untallied += 1

    def create_branch(self, session_id: str, name: str, leaf_id: str, *, owner_id: str | None = None,
                      fencing_token: int | None = None) -> Branch:
        """Create branch ``name`` pointing at message ``leaf_id`` (any message).

        ``BranchExists`` for a taken name, ``MessageNotFound`` for an unknown id.
        The current branch does not change.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        _check_name("branch name", name)
        if not isinstance(leaf_id, str):
            raise InvalidInput(f"leaf_id must be a message id, not {leaf_id!r}")

        def change(state: _Session) -> tuple[Branch, list[tuple[str, Any]]]:
            if name in state.branches:
                raise BranchExists(session_id, name)
            state.require(leaf_id)
            self._branch_event(state, {"op": "create", "name": name, "headId": leaf_id,
                                       "at": self._now_ms(), "seq": state.record_count})
            branch = state.branches[name].frozen()
            return branch, [("branch.created", branch)]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def get_branches(self, session_id: str) -> list[Branch]:
        """Every branch, ``main`` first (while it exists), then in creation order."""
        return self._read(session_id, lambda s: [b.frozen() for b in s.branches.values()])

    def get_branch(self, session_id: str, name: str) -> Branch | None:
        """The branch of that name, or ``None``."""
        _check_name("branch name", name)

        def branch(s: _Session) -> Branch | None:
            found = s.branches.get(name)
            return found.frozen() if found is not None else None
        return self._read(session_id, branch)

    def switch_to_branch(self, session_id: str, name: str, *, owner_id: str | None = None,
                         fencing_token: int | None = None) -> str | None:
        """Make ``name`` the current branch; returns its head id (``None`` when empty).

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        _check_name("branch name", name)

        def change(state: _Session) -> tuple[str | None, list[tuple[str, Any]]]:
            if name not in state.branches:
                raise BranchNotFound(session_id, name)
            if state.current != name:
                self._branch_event(state, {"op": "switch", "name": name, "at": self._now_ms(),
                                           "seq": state.record_count})
            branch = state.branches[name].frozen()
            return branch.head_id, [("branch.switched", branch)]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def get_head(self, session_id: str) -> str | None:
        """The current branch's head id (``None`` when empty)."""
        return self._read(session_id, lambda s: s.head())

    def get_current_branch(self, session_id: str) -> str:
        """The current branch's name."""
        return self._read(session_id, lambda s: s.current)

    def move_head(self, session_id: str, message_id: str | None, *, branch: str | None = None,
                  owner_id: str | None = None, fencing_token: int | None = None) -> Branch:
        """Move the head of the current branch (or of ``branch``) to any message of the
        session, or to ``None`` (the branch is then empty). Nothing is deleted: the
        next append on that branch continues from there, and the messages after the
        old head stay in the tree (move back to one of them to redo). This is undo
        (move to the head's parent), rewind and redo. Returns the branch as moved;
        subscribers get ``branch.moved``.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        if branch is not None:
            _check_name("branch name", branch)
        if message_id is not None and not isinstance(message_id, str):
            raise InvalidInput(f"message_id must be a message id or None, not {message_id!r}")

        def change(state: _Session) -> tuple[Branch, list[tuple[str, Any]]]:
            name = state.current if branch is None else branch
            if name not in state.branches:
                raise BranchNotFound(session_id, name)
            if message_id is not None:
                state.require(message_id)
            if state.branches[name].head_id != message_id:
                self._move(state, message_id, self._now_ms(), name)
            moved = state.branches[name].frozen()
            return moved, [("branch.moved", moved)]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def delete_branch(self, session_id: str, name: str, *, owner_id: str | None = None,
                      fencing_token: int | None = None) -> Branch:
        """Delete branch ``name`` (the pointer, never its messages); returns it as it
        was. The current branch cannot be deleted (:class:`InvalidInput`: switch
        first). Subscribers get ``branch.deleted``.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        _check_name("branch name", name)

        def change(state: _Session) -> tuple[Branch, list[tuple[str, Any]]]:
            if name not in state.branches:
                raise BranchNotFound(session_id, name)
            if name == state.current:
                raise InvalidInput(f"branch {name!r} is the current branch of session {session_id!r}: "
                                   "switch to another branch before deleting it")
            gone = state.branches[name].frozen()
            self._branch_event(state, {"op": "delete", "name": name, "at": self._now_ms(),
                                       "seq": state.record_count})
            return gone, [("branch.deleted", gone)]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def rename_branch(self, session_id: str, old: str, new: str, *, owner_id: str | None = None,
                      fencing_token: int | None = None) -> Branch:
        """Rename branch ``old`` to ``new`` (the current branch too: it stays current).
        :class:`BranchNotFound` / :class:`BranchExists` as expected; messages are
        untouched. Subscribers get ``branch.renamed`` with ``(old, branch)``.

        ``owner_id`` and ``fencing_token`` are checked as :meth:`append` checks them
        (:class:`SessionLocked`, :class:`LeaseLost`, nothing written); inside
        :meth:`lock`/:meth:`with_lock` both are implied.
        """
        _check_name("branch name", old)
        _check_name("branch name", new)

        def change(state: _Session) -> tuple[Branch, list[tuple[str, Any]]]:
            if old not in state.branches:
                raise BranchNotFound(session_id, old)
            if new in state.branches:
                raise BranchExists(session_id, new)
            self._branch_event(state, {"op": "rename", "name": old, "to": new, "at": self._now_ms(),
                                       "seq": state.record_count})
            renamed = state.branches[new].frozen()
            return renamed, [("branch.renamed", (old, renamed))]
        return self._write(session_id, change, owner_id=owner_id, fencing_token=fencing_token)

    def fork_session(self, session_id: str, message_id: str | None = None, *, key: str | None = None,
                     owner_id: str | None = None, fencing_token: int | None = None) -> str:
        """A new session whose history is the path root -> ``message_id`` (default: the
        current head) of this one: the same messages (ids, parents, timestamps,
        fields), its ``main`` at the last. Its metadata's ``forked_from`` is
        ``(session_id, message_id)``, kept across reopen. The source is untouched.

        Costs O(depth) writes (and one load of the source when it is not cached).
        ``key`` defaults to ``"fork:<new session id>"``; a taken key raises
        :class:`InvalidKey`. All or nothing, like :meth:`import_session`.
        Subscribers get ``session.forked`` with the new session's metadata.

        ``owner_id`` and ``fencing_token`` are checked against the source's lease as
        :meth:`append` checks them, while its path is read (:class:`SessionLocked`,
        :class:`LeaseLost`, nothing created); inside :meth:`lock`/:meth:`with_lock`
        both are implied.
        """
        if key is not None:
            _check_key(key)
        if message_id is not None and not isinstance(message_id, str):
            raise InvalidInput(f"message_id must be a message id or None, not {message_id!r}")

        def path(s: _Session) -> tuple[str | None, list[Message]]:
            leaf = s.head() if message_id is None else message_id
            return leaf, ([] if leaf is None else s.path_to(leaf))
        fence = self._fence(session_id, owner_id, fencing_token)
        if fence is None:
            leaf, messages = self._read(session_id, path)
        else:
            with self._writing(session_id, fence=fence) as state:
                leaf, messages = path(state)
        new, now = str(uuid.uuid4()), self._now_ms()
        key = f"fork:{new}" if key is None else key
        lines = [_sealed(_encode_message(m.to_record())) for m in messages]
        events = [_encode_line({"op": "move", "name": "main", "headId": leaf, "at": now, "seq": len(lines)})]
        with _storage_errors(f"fork session {session_id!r}"):
            created = self._storage.create_session(key, new, now, messages=lines, events=events,
                                                   forked_from=(session_id, leaf))
        if created != new:
            raise InvalidKey(f"key {key!r} already has a session ({created})")
        meta = SessionMetadata(session_id=new, key=key, created_at=now, updated_at=max([now, *(
            m.timestamp for m in messages)]), message_count=len(lines), forked_from=(session_id, leaf))
        self._emit("session.forked", new, meta)
        return new


def _append_events(msg: Message, reset: ResetResult | None) -> list[tuple[str, Any]]:
    """What subscribers get for an appended message: its reset's events first, if it
    caused one (see :func:`_reset_events`), then ``message.added``."""
    if reset is None:
        return [("message.added", msg)]
    return [*_reset_events(reset), ("message.added", msg)]


def _reset_events(result: ResetResult | None) -> list[tuple[str, Any]]:
    """What subscribers get for a reset: ``session.reset``, then ``message.added`` for
    the marker and each kept copy (nothing without a reset)."""
    if result is None:
        return []
    return [("session.reset", result), *(("message.added", msg) for msg in result.messages)]
