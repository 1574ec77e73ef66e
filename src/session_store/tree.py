"""Tree and branches: the cached state of one session, kept in memory by the store.

:class:`_Session` holds a session's messages as a tree (parent, children, detached
roots), its branches and their heads, its storage position and running tallies, and
applies records read from storage or just written, in the one order the log defines.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from .auto_reset import AutoResetConfig
from .errors import MessageNotFound
from .log_format import _legacy_branch_event, _message_from_record, _new_message, _placeholder_of, _report
from .records import Branch, Message, Problem, SessionMetadata, _random_id
from .searching import _preview, _shown_title
from .storage import Position, Records
from .validation import _is_name


class _BranchState:
    """A branch inside the cache: mutable, so that advancing a head costs nothing.
    Handed out only as a frozen :class:`Branch`."""

    __slots__ = ("created_at", "head_id", "name", "updated_at")

    def __init__(self, name: str, head_id: str | None, created_at: int) -> None:
        self.name = name
        self.head_id = head_id
        self.created_at = created_at
        self.updated_at = created_at

    def frozen(self) -> Branch:
        return Branch(name=self.name, head_id=self.head_id, created_at=self.created_at,
                      updated_at=self.updated_at)


_SEQ = operator.itemgetter("seq")  # a branch event's place among the message records


class _Session:
    """The cached state of one session: its tree, branches and storage position.

    Guarded by ``lock`` (in this process); writers also hold the storage's
    :meth:`Storage.writing` so that other stores and processes are excluded.
    """

    __slots__ = (
        "adopted",
        "batch",
        "branches",
        "by_id",
        "children",
        "context_cache",
        "created_at",
        "current",
        "deleted",
        "detached",
        "events_label",
        "forked_from",
        "key",
        "last_reset_at",
        "lease",
        "loaded",
        "lock",
        "nbytes",
        "pending_events",
        "position",
        "preview_seen",
        "problems",
        "record_count",
        "reset_config",
        "reset_count",
        "roots",
        "segments",
        "session_id",
        "title",
        "untallied",
        "updated_at",
    )

    def __init__(self, session_id: str, key: str, created_at: int,
                 reset_config: AutoResetConfig | None = None,
                 forked_from: tuple[str, str | None] | None = None) -> None:
        self.session_id = session_id
        self.forked_from = forked_from
        # With auto-reset, every message carries its segment's running totals
        # (count, tokens, start ms), derived from its parent's: the check is O(1).
        self.reset_config = reset_config
        self.key = key
        self.created_at = created_at
        self.lock = threading.Lock()
        self.loaded = False
        self.deleted = False
        self.events_label = "branch events"
        self.untallied = 0  # records this store wrote since the storage's tally was saved
        # Inside append_many: the message records applied and not yet written (see
        # SessionStore._write_message); None otherwise.
        self.batch: list[tuple[str, bytes]] | None = None
        # The lease record this store last wrote (whole and well-formed): one read back
        # equal to it needs no check (see _LeasedStore._read_lease).
        self.lease: Mapping[str, Any] | None = None
        self.clear()

    def clear(self) -> None:
        """Forget the cached tree (before a full reload)."""
        self.by_id: dict[str, Message] = {}  # every message, in append order
        # A parent's children: its only child's id, or a list of two or more (most
        # messages have one child, and a list each would cost ~100 bytes a message).
        # Built when tree navigation first needs it (see child_map): reading histories
        # and contexts never does, and a cached message then costs ~20 bytes less.
        self.children: dict[str, str | list[str]] | None = None
        self.roots: list[str] = []
        # Roots whose parent is missing: a path ends at them. Rare (damage, hand-written
        # logs), so a session has the shared empty set until it has one (a set is 216 bytes).
        self.detached: AbstractSet[str] = _NONE_DETACHED
        # The ids of the damaged records read (oldest first), whose children may name them
        # by the id they had before the damage, and the missing ids given to one of them
        # (see _adopt). None until the session has a damaged record.
        self.adopted: tuple[list[str], dict[str, str]] | None = None
        self.branches: dict[str, _BranchState] = {"main": _BranchState("main", None, self.created_at)}
        self.current = "main"
        self.position: Position = (0, 0)
        self.pending_events: list[dict[str, Any]] = []
        self.problems: list[Problem] = []
        self.updated_at = self.created_at
        self.segments: dict[str, tuple[int, int, int]] | None = {} if self.reset_config else None
        self.reset_count = 0
        self.last_reset_at: int | None = None
        self.record_count = 0  # message records applied or skipped: what an event's "seq" counts
        self.title: str | None = None  # as set by SessionStore.set_title (a "title" event)
        # The preview found (see preview()), or the count of messages it was not among.
        self.preview_seen: str | int = 0
        self.nbytes = 0  # bytes of the records read (the cache's measure of this session)
        self.context_cache: Any = None

    # -- applying records -----------------------------------------------------

    def head(self) -> str | None:
        return self.branches[self.current].head_id

    def fresh_id(self) -> str:
        """A random 16-hex message id not used in this session."""
        new = _random_id()
        while new in self.by_id:
            new = _random_id()
        return new

    def add_message(self, msg: Message) -> None:
        """Apply one message (already validated): tree links and the head rule. The
        one way a message joins the tree, whether it was just written or read from
        storage (:meth:`_take_records` decodes records, then calls this).

        A message whose parent is missing (its record was lost, or written by hand
        after it) joins as a *detached* root: it keeps ``parent_id`` as stored, but no
        path goes above it and it is nobody's child, whatever comes later (so a cycle
        written by hand cannot make a path or a walk loop)."""
        if self.pending_events:  # an event written before this record applies first
            self._apply_events_upto(self.record_count)
        self.record_count += 1
        parent = msg.parent_id
        if parent is None:
            self.roots.append(msg.id)
        elif parent not in self.by_id or parent == msg.id:
            self.roots.append(msg.id)
            detached = self.detached
            if not isinstance(detached, set):
                detached = self.detached = set()
            detached.add(msg.id)
        elif self.children is not None:
            _add_child(self.children, parent, msg.id)
        self.by_id[msg.id] = msg
        branch = self.branches[self.current]
        if _advances(branch.head_id, parent):
            branch.head_id = msg.id
            branch.updated_at = msg.timestamp
        if msg.timestamp > self.updated_at:
            self.updated_at = msg.timestamp
        if msg.type == "reset":
            self.reset_count += 1
            self.last_reset_at = msg.timestamp
        if self.segments is not None and self.reset_config is not None:
            if msg.type == "reset":
                self.segments[msg.id] = (0, 0, msg.timestamp)
            else:
                tokens = self.reset_config.count_tokens(msg) if self.reset_config.max_tokens is not None else 0
                count, total, start = self.segments.get(parent, (0, 0, msg.timestamp)) if parent else (
                    0, 0, msg.timestamp)
                self.segments[msg.id] = (count + 1, total + tokens, start)

    def child_map(self) -> dict[str, str | list[str]]:
        """The children of every parent (see ``children``), built on first use."""
        if self.children is None:
            children: dict[str, str | list[str]] = {}
            detached = self.detached
            for m in self.by_id.values():
                if m.parent_id is not None and m.id not in detached:
                    _add_child(children, m.parent_id, m.id)
            self.children = children
        return self.children

    def child_ids(self, message_id: str) -> Sequence[str]:
        """The ids of the message's children, in append order."""
        found = self.child_map().get(message_id)
        return () if found is None else (found,) if type(found) is str else found

    def add_event(self, event: dict[str, Any]) -> None:
        """Queue a branch event; it applies once ``seq`` message records are applied.

        Waiting events apply in ``seq`` order (in file order for equal ``seq``), which
        is file order as written. An event whose messages were lost (a crash kept it
        and lost them, or a failed sync took back another writer's message it
        counted) names more records than there are, and then waits without holding
        back the events written after it, which name fewer.
        """
        bisect.insort(self.pending_events, event, key=_SEQ)
        self._apply_events_upto(self.record_count)

    def _apply_events_upto(self, count: int) -> None:
        while self.pending_events and self.pending_events[0]["seq"] <= count:
            self._apply_event(self.pending_events.pop(0))

    def _apply_event(self, ev: dict[str, Any]) -> None:
        op, name, at = ev["op"], ev["name"], ev["at"]
        head = ev.get("headId")
        if head is not None and head not in self.by_id:
            self.problems.append(Problem(session_id=self.session_id, file=self.events_label, offset=None,
                                         reason=f"branch {name!r} names unknown message {head!r}"))
            return
        to = ev.get("to")
        if op == "title":
            title = ev.get("title")
            self.title = title if isinstance(title, str) else None
        elif op == "create" and name not in self.branches:
            self.branches[name] = _BranchState(name, head, at)
        elif op == "switch" and name in self.branches:
            self.current = name
        elif op == "move" and name in self.branches:
            branch = self.branches[name]
            branch.head_id, branch.updated_at = head, at
        elif op == "delete" and name in self.branches and name != self.current:
            del self.branches[name]
        elif op == "rename" and name in self.branches and _is_name(to) and to not in self.branches:
            self.branches = {(to if k == name else k): v for k, v in self.branches.items()}  # keeps its place
            branch = self.branches[to]
            branch.name, branch.updated_at = to, at
            if self.current == name:
                self.current = to
        else:
            self.problems.append(Problem(session_id=self.session_id, file=self.events_label, offset=None,
                                         reason=f"event {op!r} on branch {name!r} does not apply"))
            return
        if at > self.updated_at:
            self.updated_at = at

    # -- reading ------------------------------------------------------------

    def ingest(self, found: Records) -> None:
        """Apply what :meth:`Storage.load` found: branch events first (each waits for
        the record count it names), then messages, validated as they join the tree."""
        if found.restart:
            self.clear()
        self.events_label = found.events_label
        self.problems += found.problems
        self.nbytes += found.nbytes
        legacy: list[tuple[int, dict[str, Any]]] = []
        for where, rec in found.events:
            if "op" not in rec and "name" in rec:  # the seed's layout, not migrated yet: a branch as it stood
                legacy.append((where, rec))
                continue
            if (rec.get("op") not in _EVENT_OPS or not isinstance(rec.get("name"), str)
                    or not isinstance(rec.get("seq"), int) or not isinstance(rec.get("at"), int)):
                _report(self.problems, self.session_id, found.events_label, where, "not a branch event")
                continue
            self.add_event(rec)
        self._take_records(found.messages, found.messages_label)
        self._apply_events_upto(self.record_count)
        for where, rec in legacy:  # after every message read (no store writes to such a folder before migrating it)
            event = _legacy_branch_event(rec, set(self.branches), self.record_count)
            if event is None:
                _report(self.problems, self.session_id, found.events_label, where, "not a branch event")
            else:
                self.add_event(event)
        self.position = found.position

    def _take_records(self, records: list[tuple[int, dict[str, Any]]], label: str) -> None:
        """Apply message records in order, whatever each holds: decoded by
        :func:`_message_from_record`, joined by :meth:`add_message`. A record that is
        no message becomes a placeholder, a duplicate id is skipped, a message whose
        parent is missing is kept as a detached root, and each is reported."""
        by_id, add, decode, problems, sid = self.by_id, self.add_message, _message_from_record, self.problems, \
            self.session_id
        for where, rec in records:
            try:
                msg = decode(rec, by_id)
            except (ValueError, RecursionError) as e:  # a JSON object that is no message: damaged too
                why = str(e) if isinstance(e, ValueError) else "nested too deeply to read"
                _report(problems, sid, label, where, why)
                msg = decode(_placeholder_of(rec, where, why), by_id)
            if msg.id in by_id:
                _report(problems, sid, label, where, f"duplicate id {msg.id!r}")
                self._apply_events_upto(self.record_count)
                self.record_count += 1
                continue
            if msg.parent_id is not None and msg.parent_id not in by_id:
                msg = self._adopt(msg, where, label)
            elif msg.type == "damaged" and msg.parent_id is None and by_id and _unread_own(msg):
                # One of our records, its id and parent unreadable: the log order says its
                # parent is most likely the record before it (a chat is mostly a chain).
                msg = _new_message(msg.id, next(reversed(by_id)), msg.type, msg.role, msg.content, msg.timestamp,
                                   msg.fields)
            add(msg)
            if msg.type == "damaged":
                if self.adopted is None:
                    self.adopted = ([], {})
                self.adopted[0].append(msg.id)

    def _adopt(self, msg: Message, where: int, label: str) -> Message:
        """A message whose parent is missing, joined to the damaged record before it in
        the log that its parent was, as far as the log can tell: a parent precedes its
        children, and a record damaged in its id keeps an id of the same length that
        differs in a character or two (what a flipped bit or byte does). So the newest
        damaged record before it whose id is that near the missing one takes it, and
        every later message naming the same id; failing that, the newest damaged record
        of ours whose id could not be read at all (see :func:`_unread_own`) and that no
        other id was given to. A damaged record whose own parent is missing goes under
        the newest message whose id is that near the one it names. The head follows as
        for any append. Else it is kept as a root, and reported."""
        adopted = self.adopted
        parent = msg.parent_id
        assert parent is not None
        to = None
        if msg.type == "damaged":  # its own parentId may be what changed: the message whose id it nearly is
            to = next((m for m in reversed(self.by_id) if _near(m, parent)), None)
        if to is None and adopted is not None:
            to = adopted[1].get(parent)
            if to is None:
                to = next((d for d in reversed(adopted[0]) if _near(d, parent)), None)
                if to is None:  # else the newest record of ours whose id could not be read, not given yet
                    given = set(adopted[1].values())
                    to = next((d for d in reversed(adopted[0]) if d not in given and _unread_own(self.by_id[d])),
                              None)
                if to is not None:
                    adopted[1][parent] = to
        if to is None:
            _report(self.problems, self.session_id, label, where,
                    f"parent {parent!r} of {msg.id!r} is missing (its record was lost): {_KEPT}")
            return msg
        return _new_message(msg.id, to, msg.type, msg.role, msg.content, msg.timestamp, msg.fields)

    def require(self, message_id: str) -> Message:
        try:
            return self.by_id[message_id]
        except (KeyError, TypeError):
            raise MessageNotFound(self.session_id, message_id) from None

    def path_to(self, leaf_id: str, limit: int | None = None) -> list[Message]:
        """Root -> leaf, O(depth); only its last ``limit`` messages, O(limit), when given."""
        out: list[Message] = []
        msg: Message | None = self.require(leaf_id)
        by_id, detached = self.by_id, self.detached
        if limit is None and not detached:  # the common walk, without the checks it cannot need
            add, parent = out.append, by_id.get
            while msg is not None:
                add(msg)
                msg = parent(msg.parent_id)  # type: ignore[arg-type]  # (a root's None is no id: None)
        else:
            while msg is not None and (limit is None or len(out) < limit):
                out.append(msg)
                msg = by_id.get(msg.parent_id) if msg.parent_id is not None and msg.id not in detached else None
        out.reverse()
        return out

    def subtree(self, root_id: str | None) -> list[Message]:
        """Pre-order; siblings in append order; ``None``: every root's subtree."""
        stack = list(reversed(self.roots)) if root_id is None else [self.require(root_id).id]
        out: list[Message] = []
        while stack:
            mid = stack.pop()
            out.append(self.by_id[mid])
            stack.extend(reversed(self.child_ids(mid)))
        return out

    def tally(self) -> dict[str, Any]:
        """What :func:`_tally_records` would count for the records read so far; and,
        when every record read was sound (no problem, no branch event waiting), the
        current branch's ``head``: where a read of the path's end starts without
        loading the session (see :meth:`SessionStore.get_linear_history`)."""
        tally: dict[str, Any] = {"messages": self.record_count, "updatedAt": self.updated_at,
                                 "resets": self.reset_count, "lastResetAt": self.last_reset_at,
                                 "branches": len(self.branches), "title": self.title, "preview": self.preview()}
        if not self.problems and not self.pending_events and not self.detached:
            tally["head"] = self.head()
        return tally

    def metadata(self) -> SessionMetadata:
        preview = self.preview()
        return SessionMetadata(session_id=self.session_id, key=self.key, created_at=self.created_at,
                               updated_at=self.updated_at, message_count=self.record_count,
                               reset_count=self.reset_count, last_reset_at=self.last_reset_at,
                               forked_from=self.forked_from, branch_count=len(self.branches),
                               title=_shown_title(self.title, preview), preview=preview)

    def preview(self) -> str | None:
        """The first user message's text as one line (see :func:`_preview`): the
        first message with role ``user`` that has text, in record order. Found once;
        until then each call reads only the messages added since the last one."""
        seen = self.preview_seen
        if isinstance(seen, str):
            return seen
        messages = self.by_id
        new = len(messages) - seen
        if new < 0:  # messages were taken back: look again from the start
            seen, new = 0, len(messages)
        if new:
            tail = list(itertools.islice(reversed(messages.values()), new))
            for m in reversed(tail):
                if m.role == "user":
                    found = _preview(m.content)
                    if found is not None:
                        self.preview_seen = found
                        return found
        self.preview_seen = len(messages)
        return None


def _near(one: str, other: str) -> bool:
    """Whether two ids could be one id with a byte or two changed: the same length,
    differing in at most two characters (see ``_Session._adopt``)."""
    return len(one) == len(other) and sum(a != b for a, b in zip(one, other, strict=True)) <= 2


def _unread_own(m: Message) -> bool:
    """Whether ``m`` is the placeholder of a record this store wrote (its line ends
    with a check) whose id could not be read back: its children, and its parent, are
    found by the log's order (see ``_Session._adopt``). A line of anything else (not
    ours) never is: a message naming a missing parent is not guessed to be its child."""
    return m.type == "damaged" and m.fields.get("sealed") is True and m.id.startswith("damaged-")


def _advances(head: str | None, parent: str | None) -> bool:
    """The head rule, written once: a message whose parent is the current branch's
    head becomes the head (a new root does, when the branch is empty); a sibling, or a
    root in a non-empty branch, leaves it alone. Used where a message joins a tree
    (:meth:`_Session.add_message`) and where the records after a saved tally are
    replayed without one (:meth:`SessionStore._history_from_the_end`)."""
    return parent == head


def _newest_first(parts: Iterable[Records]) -> Iterator[dict[str, Any] | None]:
    """The message records of :meth:`Storage.load_backwards`' parts, the newest first;
    ``None`` for a part that cannot be trusted (rewritten, or holding a damaged
    record), and nothing after it."""
    for found in parts:
        if found.restart or found.problems:
            yield None
            return
        for _, rec in reversed(found.messages):
            yield rec


def _add_child(children: dict[str, str | list[str]], parent: str, child: str) -> None:
    """Add ``child`` to the children of ``parent`` in a :attr:`_Session.children` map."""
    siblings = children.get(parent)
    if siblings is None:
        children[parent] = child
    elif type(siblings) is str:
        children[parent] = [siblings, child]
    else:
        siblings.append(child)  # type: ignore[union-attr]


_NONE_DETACHED: frozenset[str] = frozenset()  # a session's detached roots until it has one
_KEPT = "kept as a root"  # the end of the reason of a record whose parent is missing: repair keeps it
_EVENT_OPS = frozenset({"create", "switch", "move", "delete", "rename", "title"})


def _tally_records(tally: dict[str, Any], messages: Iterable[tuple[int, dict[str, Any]]],
                   events: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Count records into a tally (messages, last update, resets, branches) without
    building a tree: what :meth:`SessionStore.get_metadata` reads on from a saved
    tally. ``events`` are all those read, counted once every message is: an event
    naming more messages than there are waits in a load, and is not counted."""
    updated, count = tally["updatedAt"], tally["messages"]
    for _, rec in messages:
        count += 1
        mid, parent, role, ts, kind = rec.get("id"), rec.get("parentId"), rec.get("role"), rec.get("timestamp"), \
            rec.get("type")
        # What _message_from_record refuses loads as a placeholder: no time, not a reset.
        if (isinstance(mid, str) and mid and (parent is None or isinstance(parent, str)) and isinstance(role, str)
                and isinstance(ts, int) and not isinstance(ts, bool)):
            updated = max(updated, ts)
            if role == "user" and tally.get("preview") is None:
                tally["preview"] = _preview(rec.get("content"))
            if (kind if isinstance(kind, str) else role) == "reset":
                tally["resets"] += 1
                tally["lastResetAt"] = ts
    for _, rec in events:
        seq = rec.get("seq")
        if isinstance(seq, int) and seq > count:
            continue
        at = rec.get("at")
        if isinstance(at, int) and not isinstance(at, bool) and at > updated:
            updated = at
        op = rec.get("op")
        if op == "title":
            title = rec.get("title")
            tally["title"] = title if isinstance(title, str) else None
        tally["branches"] = tally.get("branches", 1) + (op == "create") - (op == "delete")
    tally["messages"], tally["updatedAt"] = count, updated
