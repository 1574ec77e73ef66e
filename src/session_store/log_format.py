"""Log format: how records are written as JSON lines and read back.

Encoding (:func:`_encode_line`, :func:`_encode_message`), decoding with salvage of
damaged lines (:func:`_parse_lines`, :func:`_decode_record`), the chain mark that makes
an ``append_many`` all-or-none, and the conversion between records and
:class:`Message`. The layout of a store's folder and its crash guarantees are written
in the comment below, next to the code that keeps them.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidInput, InvalidMessage, _log
from .records import (
    _CAMEL_TO_SNAKE,
    _CONTROL_RE,
    _CORE_KEYS,
    _NO_FIELDS,
    _RESERVED_FIELDS,
    _RESERVED_TYPES,
    _SNAKE_TO_CAMEL,
    Message,
    Problem,
    _freeze,
    _FrozenDict,
)
from .validation import _check_json_shape, _check_name, _check_time, _is_name

#
# Format version 2. Everything is UTF-8 JSON, one object per line, "\n"-terminated.
#
#   <storage_dir>/session-store.json   {"format": 2}: marks the folder as a store;
#       written with its first session. Opening a store writes nothing.
#   <storage_dir>/keys/<hh>/<sha256(key)>   the key index: a symbolic link whose
#       target is the session id (<hh>: the hash's first two hex digits). Created with
#       symlink(), which is atomic and exclusive: two processes resolving one new key
#       cannot both win. Read with readlink(), never followed. Rebuildable from the
#       session folders (each names its key).
#   <storage_dir>/keys/.complete   empty; says the key index is whole. Written last
#       by the first creation and by a rebuild: when it is missing (the keys folder
#       was removed, or a rebuild was cut short), the next open or lookup that finds
#       no link links every session folder's key again before anything else (under
#       the lock of session-store.json). A link lost alone is found by check() and
#       put back by repair().
#   <storage_dir>/names/<piece>/.../<rest>=<session-id>   the keys again, a folder per piece
#       (a key prefix is a folder), for find_sessions: see "Layout of names/". Never
#       believed alone (each leaf found is checked against the key index); names/.complete
#       says every session has its leaf, and a store without it is indexed once.
#   <storage_dir>/<session-id>/session.json   {"version","sessionId","key","createdAt"}
#       (+ "forkedFrom": [session id, message id] for a fork)
#   <storage_dir>/<session-id>/messages.jsonl one message per line, in append order:
#       {"id","parentId","type","role","content","timestamp", ...extra fields}
#       The seed's fields keep its camelCase names (parentId, toolCalls, toolCallId,
#       resetFrom); other extra fields keep the names they were given. A record's
#       parent always precedes it, so the file is a topological order of the tree.
#   <storage_dir>/<session-id>/branches.jsonl  branch events:
#       {"op":"create","name","headId","at","seq"}   {"op":"switch","name","at","seq"}
#       {"op":"move","name","headId","at","seq"}     {"op":"delete","name","at","seq"}
#       {"op":"rename","name","to","at","seq"}
#       "seq" is the number of message records that preceded the event. Heads are
#       never written per append: replaying messages and branch events in seq order
#       advances the current branch's head whenever a message's parent is that head.
#   <storage_dir>/<session-id>/lock.json   the lease (JSON, a tab, its CRC-32; padded)
#   <storage_dir>/<session-id>/lease.lock  flock'ed (shared) by processes holding the lease
#   <storage_dir>/<session-id>/stats.json  a tally of the log up to a position (a cache:
#       counts, and the current branch's head when every record up to it was sound),
#       with the length and CRC-32 of each file's last line before that position: a
#       file cut back and grown again since no longer matches, and the tally is ignored.
#       JSON, a tab, its CRC-32, replaced whole (one whose bytes changed is ignored
#       too; a tally written before the CRC has no tab, and still reads)
#
# A session is created whole before it is announced: its folder is written as
# ".new-<id>" (its log flock'ed meanwhile), renamed into place, given its leaf in
# names/, then its key link made: the link is the commit. A deletion's commit is the
# removal of messages.jsonl (under the log's lock); the key link, the leaf and the
# folder are then garbage, which readers ignore and repair() removes. Format 1 (a
# keys.jsonl journal and a sessions.json checkpoint instead of key links) and the
# seed's layout (sessions.json {"keys": {key: id}, "sessions": {id: {"createdAt"...}}},
# no session.json, branch lines {"name", "headId" | "leafId"} holding a branch as it
# stood) are read, and migrated to format 2 by the first write (see
# JsonlStorage._adopt_legacy_folder).
#
# Each log record is written with one write() while holding the log's lock; with
# durable=True the call returns after fdatasync. A crash can leave only a torn last
# line, which readers ignore and the next writer (holding the lock) cuts off.
# An append_many chain is one write() of its records, each but the last ending in a
# space and a tab before its newline (_CHAIN_MARK: "more of this chain follows"; JSON
# whitespace, so json.loads reads the line as before). Readers hold back the marked
# lines at the end of the log, as an incomplete line, until the unmarked one that ends
# their chain is there: a chain cut by a crash is never seen, and the next writer moves
# its lines to <log>.quarantine and cuts them off (no append_many returned for them;
# and no whole line is dropped unseen). A chain that auto-resets is written in parts,
# each but the last ending with a message that triggered a reset, before the head's
# move event (an event never names records that may still be cut off). This holds
# while every writer runs a version with the mark: an older one reads marked lines as
# records, and its next append after a cut chain ends that chain, which then stays,
# part as it is. A write
# that fails (a failed write scope, a failed sync) is cut off again in place; readers
# do not lock, so another store may have read it meanwhile. Before reading on from a
# position, a reader checks that the line it last saw end there (its own: see _Vouch)
# is still there (length and CRC-32), and reloads when it is not. A writer checks it
# even when the files have not grown, so it never writes under a record taken back; a
# reader checks only when reading on, so until either file grows again it may still
# show that record.
# Readers ignore unknown fields of known records; a format only ever gains fields.

def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))``,
    by the C encoder made once: ``JSONEncoder.encode`` makes one per call (with a
    closure and a dict of markers), a third of its time on a message record. Without
    the markers a value that contains itself raises ``RecursionError``, not
    ``ValueError``; every caller takes both (and what the store encodes was checked
    for depth first)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): the pure-Python encoder
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                                check_circular=False).encode
    chunks = make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join

    def dumps(value: Any) -> str:
        return join(chunks(value, 0))
    return dumps


_dumps = _make_dumps()


def _encode_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line; ``ValueError``/``TypeError``/``UnicodeError`` when not valid JSON,
    ``RecursionError`` when it contains itself (or nests deeper than the interpreter goes)."""
    return (_dumps(record) + "\n").encode("utf-8")


def _encode_message(record: Mapping[str, Any]) -> bytes:
    """A message record as one JSON line; :class:`InvalidMessage` when it is not JSON."""
    try:
        return _encode_line(record)
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        raise InvalidMessage(f"message is not JSON-serializable: {e}") from None


# A message line's check: its last key, "#", holding the CRC-32 of the line before
# it (from "{" to the end of the last value) as a JSON number:
# {"id":...,"content":...,"#":2947203461}. The store adds it as it hands a line to its
# storage (_sealed); a reader compares and takes it out (_checked_message), so a
# changed byte anywhere in a record is seen, a digit of an id that became another
# digit too. Format 2 gained it: a line without it (written before, or by hand) is
# read unchecked, and an older reader takes it for an extra field.
_DAMAGED_CHECK = "its check does not match its bytes (a byte changed on disk or by hand)"


def _sealed(line: bytes) -> bytes:
    """A message line (``b'{...}\n'``) with its check as its last key."""
    head = line[:-2] if line.endswith(b"\n") else line[:-1]  # all but the closing brace
    return b'%s,"#":%d}\n' % (head, zlib.crc32(head))


def _checked_message(raw: bytes, where: int, rec: dict[str, Any], file: str, session_id: str | None,
                     problems: list[Problem]) -> dict[str, Any]:
    """A message record decoded from the line ``raw``: itself when it matches its
    check (taken out of it), else its placeholder, reported. A record without a check
    is believed. On every record of every load: one CRC of the line, no other work."""
    check = rec.get("#")
    if check.__class__ is not int:  # none (or not one of ours): read as it is
        return rec
    del rec["#"]
    cut = raw.rfind(b',"#":')  # the check is the line's last key: its last such bytes
    if cut > 0 and zlib.crc32(raw[:cut]) == check:
        return rec
    _report(problems, session_id, file, where, _DAMAGED_CHECK)
    return _damaged_record(raw, where, _DAMAGED_CHECK)


def _report(problems: list[Problem], session_id: str | None, file: str, offset: int, reason: str) -> None:
    """Record a problem record and log it: it is ignored by the tree, kept in storage."""
    problems.append(Problem(session_id=session_id, file=file, offset=offset, reason=reason))
    _log.warning("%s: record at %d ignored (left in place): %s", file, offset, reason)


# The id and parent of a record this module wrote come first, in this order, so they
# can be read back from a line damaged further on (one flipped bit in its content).
# A damaged line's id and parent, as this store writes them first: a few bytes of any
# kind before the first '":' and any 8-character key for the parent, so that a flipped
# bit in "{", a quote or a key still leaves the record's children attached.
_SALVAGE_RE = re.compile(
    rb'[^\n]{0,8}?":("(?:[^"\\\n]|\\.){1,2000}"),"[^"\n]{8}":(null|"(?:[^"\\\n]|\\.){1,2000}"),')


def _damaged_record(raw: bytes, where: int, reason: str) -> dict[str, Any]:
    """The placeholder of a message record that cannot be decoded: type ``damaged``,
    its own id and parent when they can be read (so its children stay attached), else
    ``damaged-<where>`` as a root; ``damaged`` says why. A byte changed in an id reads
    back as a near id (an invalid byte or a control character as ``?``), which the
    tree joins to its children (see ``_Session._adopt``). ``sealed``: the line ends
    with a check, so it is a record this store wrote (not a line of something else)."""
    record: dict[str, Any] = {"id": f"damaged-{where}", "parentId": None, "type": "damaged", "role": "system",
                              "content": None, "timestamp": 0, "damaged": reason}
    if _CHECKED_END_RE.search(raw.rstrip(b" \t\r")):
        record["sealed"] = True
    found = _SALVAGE_RE.match(raw)
    if found:
        mid, parent = _salvaged_name(found[1]), None if found[2] == b"null" else _salvaged_name(found[2])
        if mid is not None and (parent is not None or found[2] == b"null"):
            record["id"], record["parentId"] = mid, parent
    return record


_CHECKED_END_RE = re.compile(rb',"#":\d{1,10}\}$')


def _salvaged_name(quoted: bytes) -> str | None:
    """An id read back from a damaged line (``quoted`` with its quotes): as JSON when
    it still is, else its bytes with what cannot be in a name made ``?``."""
    try:
        value = json.loads(quoted)
    except (ValueError, UnicodeDecodeError):
        value = _CONTROL_RE.sub("?", quoted[1:-1].decode("utf-8", "replace")).replace("\ufffd", "?")
    return value if _is_name(value) else None


def _placeholder_of(rec: dict[str, Any], where: int, reason: str) -> dict[str, Any]:
    """The placeholder of a JSON object that is no message: its id and parent kept
    where usable, read by name or else from the first two values (this store writes
    them first), so that a flipped bit in a key leaves the record's children attached."""
    placeholder = _damaged_record(b"", where, reason)
    firsts = list(itertools.islice(rec.values(), 2))
    for i, name in enumerate(("id", "parentId")):
        value = rec[name] if name in rec else firsts[i] if len(firsts) > i else None
        if _is_name(value):
            placeholder[name] = value
    return placeholder


def _decode_record(raw: bytes, where: int, file: str, session_id: str | None, problems: list[Problem], *,
                   message: bool) -> dict[str, Any] | None:
    """One record: the JSON object, or (reported) ``None`` for a bad event line and a
    placeholder for a bad message line. A record too deeply nested to decode
    (``RecursionError``) is damaged like any other: never fatal to its session."""
    try:
        rec = json.loads(raw)
        why = None if isinstance(rec, dict) else "not a JSON object"
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        why = f"not JSON: {e}" if not isinstance(e, RecursionError) else "nested too deeply to read"
    if why is None:
        return rec  # type: ignore[no-any-return]
    _report(problems, session_id, file, where, why)
    return _damaged_record(raw, where, why) if message else None


# json.loads(line) is decode + detect_encoding + two regex matches + this scanner: the
# common line goes through the scanner directly, anything else through json.loads.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


#: The end of an append_many chain's record lines but the last (before the newline):
#: JSON whitespace, so the line reads as before; see "Log format".
_CHAIN_MARK = b" \t"
_CHAIN_MARK_TEXT = _CHAIN_MARK.decode()


def _unfinished_tail(data: bytes) -> int:
    """Where the part of a log's ``data`` that readers hold back begins: an incomplete
    last line, and before it the lines of a chain whose last record is not there
    (lines ending in :data:`_CHAIN_MARK`: more of their chain follows)."""
    end = data.rfind(b"\n") + 1
    while end > 2 and data[end - 3:end - 1] == _CHAIN_MARK:
        start = data.rfind(b"\n", 0, end - 1) + 1
        if not data[start:end - 1].strip():
            break
        end = start
    return end


def _parse_lines(chunk: bytes, base: int, file: str, session_id: str | None, problems: list[Problem], *,
                 message: bool = False, hold: bool = True) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Parse the complete lines of ``chunk`` (read at ``base``).

    Returns ``(records with their offsets, bytes consumed)``; an incomplete last line
    is not consumed, nor (for a message log, with ``hold``) an unfinished chain
    before it (see :func:`_unfinished_tail`). Bad lines are appended to ``problems``
    (see :func:`_decode_record`).
    """
    lines = chunk.split(b"\n")
    lines.pop()  # what follows the last newline: an incomplete line, or nothing
    if not lines:
        return [], 0
    end = chunk.rfind(b"\n") + 1
    # Line by line: each line is read exactly as json.loads reads it alone. (Decoding a
    # part's lines joined into one JSON array is faster, but no count or shape check
    # makes it sound: a value split where a comma belongs and a line holding two values
    # read as two records together, a damaged log read as made-up records.)
    out: list[tuple[int, dict[str, Any]]] = []
    offset = base
    scan = _scan_json
    for raw in lines:
        where = offset
        offset += len(raw) + 1
        try:
            text = raw.decode()
            rec, stop = scan(text, 0)
            if type(rec) is dict and (stop == len(text) or (stop == len(text) - 2 and text[stop:] == _CHAIN_MARK_TEXT)):
                # the common case, quickly (a chain's line too)
                out.append((where, _checked_message(raw, where, rec, file, session_id, problems)
                             if message else rec))
                continue
        except (ValueError, StopIteration, RecursionError):
            pass
        _parse_line(raw, where, out, file, session_id, problems, message)
    if message and hold and lines[-1][-2:] == _CHAIN_MARK:  # an unfinished chain: none of it until it is whole
        held = base + _unfinished_tail(chunk)
        while out and out[-1][0] >= held:
            out.pop()
        problems[:] = [p for p in problems if p.file != file or p.offset is None or p.offset < held]
        end = held - base
    return out, end


def _parse_line(raw: bytes, where: int, out: list[tuple[int, dict[str, Any]]], file: str, session_id: str | None,
                problems: list[Problem], message: bool) -> None:
    """A line the scanner did not take whole: exactly what ``json.loads`` makes of it."""
    try:
        rec = json.loads(raw)
        if type(rec) is dict:
            out.append((where, _checked_message(raw, where, rec, file, session_id, problems) if message else rec))
            return
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    if not raw.strip():
        return
    found = _decode_record(raw, where, file, session_id, problems, message=message)
    if found is not None:
        out.append((where, found))


# An append's checked arguments: role, type, content, id (or None), fields.
_AppendSpec = tuple[str, str, Any, "str | None", dict[str, Any]]


def _checked_append(role: Any, content: Any, type: Any, id: Any, fields: dict[str, Any]) -> _AppendSpec:
    """Check an append's arguments as :meth:`SessionStore.append` documents
    (:class:`InvalidMessage`); what needs the session is checked when it is written."""
    _check_name("role", role, InvalidMessage)
    mtype = role if type is None else _check_name("type", type, InvalidMessage)
    if mtype in _RESERVED_TYPES:
        raise InvalidMessage(f"type {mtype!r} is reserved: only the store writes {mtype!r} records"
                             + (" (reset() writes a reset marker)" if mtype == "reset" else ""))
    if id is not None:
        _check_name("message id", id, InvalidMessage)
    for name, value in fields.items():
        if name in _RESERVED_FIELDS:
            raise InvalidMessage(f"field {name!r} is reserved; pass it as the keyword it maps to")
        if isinstance(value, (dict, list, tuple)):
            _check_json_shape(value, f"field {name!r}")
    if isinstance(content, (dict, list, tuple)):
        _check_json_shape(content, "content")
    return role, mtype, content, id, fields


def _same_message(existing: Message, mtype: str, role: str, content: Any, fields: Mapping[str, Any]) -> bool:
    """Whether an append of these values would store ``existing`` again (ids, parent and
    time aside), comparing the JSON round trip, as stored."""
    want = {"type": mtype, "role": role, "content": content}
    for name, value in fields.items():
        want[_SNAKE_TO_CAMEL.get(name, name)] = value
    try:
        want = json.loads(_encode_line(want))
    except (TypeError, ValueError, UnicodeError, RecursionError):
        return False
    have = existing.to_record()
    for k in ("id", "parentId", "timestamp"):
        del have[k]
    return bool(have == want)


class _NewMessage:
    """A :class:`Message` being built: the same slots, filled by plain attribute stores,
    then turned into a Message by assigning ``__class__`` (see :func:`_new_message`).

    Why: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, 1.8 µs a message on the reference machine, most of a cold
    load; this costs 0.35 µs. ``__class__`` may be assigned between classes of the same
    slot layout; tests hold the two layouts equal."""

    __slots__ = ("content", "fields", "id", "parent_id", "role", "timestamp", "type")
    id: str
    parent_id: str | None
    type: str
    role: str
    content: Any
    timestamp: int
    fields: Mapping[str, Any]


def _new_message(mid: str, parent: str | None, mtype: str, role: str, content: Any, timestamp: int,
                 fields: Mapping[str, Any]) -> Message:
    """``Message(id=mid, parent_id=parent, ...)`` without the frozen ``__init__`` (the
    values are taken as given: the caller has validated them)."""
    m = _NewMessage()
    m.id, m.parent_id, m.type, m.role, m.content, m.timestamp, m.fields = (
        mid, parent, mtype, role, content, timestamp, fields)
    m.__class__ = Message  # type: ignore[assignment]
    return m  # type: ignore[return-value]


def _fields_of(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The extra fields of a message record (every key but the core ones), read-only,
    under their Python names."""
    fields = {_CAMEL_TO_SNAKE.get(k) or sys.intern(k): _freeze(v) for k, v in rec.items() if k not in _CORE_KEYS}
    return _FrozenDict(fields) if fields else _NO_FIELDS


def _message_from_record(rec: dict[str, Any], by_id: Mapping[str, Message] | None = None) -> Message:
    """Build a read-only Message from a stored record; ``ValueError`` when it is not one.

    The one decoder of message records: loads, reads from the end and imports use it.
    Role and type are interned and a parent's id is the parent's own string object
    (``by_id``): a cached message costs little more than its bytes on disk. Most of a
    cold load is spent here, hence the quick way for a record with exactly the six
    core keys (every record a store writes without extra fields).
    """
    try:  # the keys every record written here has
        mid, parent, mtype, role, ts, content = (rec["id"], rec["parentId"], rec["type"], rec["role"],
                                                 rec["timestamp"], rec["content"])
        fields = _NO_FIELDS if len(rec) == 6 else None
    except KeyError:
        mid, parent, mtype, role, ts, content = (rec.get("id"), rec.get("parentId"), rec.get("type"),
                                                 rec.get("role"), rec.get("timestamp"), rec.get("content"))
        fields = _NO_FIELDS if rec.keys() <= _CORE_KEYS else None
    if (mid.__class__ is not str and not isinstance(mid, str)) or not mid:
        raise ValueError("record has no string id")
    if parent is not None:
        if not isinstance(parent, str):
            raise ValueError("parentId is not a string")
        if by_id is not None:
            known = by_id.get(parent)
            if known is not None:
                parent = known.id
    if role.__class__ is not str and not isinstance(role, str):
        raise ValueError("record has no string role")
    if ts.__class__ is not int and (not isinstance(ts, int) or isinstance(ts, bool)):
        raise ValueError("timestamp is not an integer")
    if content.__class__ is dict or content.__class__ is list:
        content = _freeze(content)
    role = sys.intern(role)
    return _new_message(mid, parent, role if mtype == role or not isinstance(mtype, str) else sys.intern(mtype),
                        role, content, ts, fields if fields is not None else _fields_of(rec))


def _legacy_branch_event(rec: Mapping[str, Any], names: set[str], seq: int) -> dict[str, Any] | None:
    """A branch line of the seed's layout (a branch as it stood: ``name`` and its head
    as ``headId``, ``leafId`` or ``leafMessageId``) as the event that makes it so once
    ``seq`` messages are read: ``create`` for a new name, ``move`` for a known one."""
    name = rec.get("name")
    head = next((rec[k] for k in ("headId", "leafId", "leafMessageId") if k in rec), None)
    if not _is_name(name) or not (head is None or isinstance(head, str)):
        return None
    at = next((rec[k] for k in ("updatedAt", "createdAt") if isinstance(rec.get(k), int)
               and not isinstance(rec.get(k), bool)), 0)
    return {"op": "move" if name in names else "create", "name": name, "headId": head, "at": at, "seq": seq}


def _import_lines(messages: Sequence[Message], seen: set[str]) -> list[bytes]:
    """The records of imported ``messages``, validated: ids, roles, types, fields,
    integer timestamps, and parents in ``seen`` (ids already there, grown as messages
    are taken). :class:`InvalidMessage` for the first that is wrong."""
    lines: list[bytes] = []
    for m in messages:
        if not isinstance(m, Message):
            raise InvalidMessage(f"imports take Message records, not {type(m).__name__}")
        _check_name("message id", m.id, InvalidMessage)
        _check_name("role", m.role, InvalidMessage)
        _check_name("type", m.type, InvalidMessage)
        for name in m.fields:
            if name in _RESERVED_FIELDS:
                raise InvalidMessage(f"field {name!r} of {m.id!r} is reserved")
        if m.id in seen:
            raise InvalidMessage(f"message id {m.id!r} appears twice")
        if m.parent_id is not None and m.parent_id not in seen:
            raise InvalidMessage(f"parent {m.parent_id!r} of {m.id!r} does not precede it")
        try:
            _check_time(f"timestamp of {m.id!r}", m.timestamp)
        except InvalidInput as e:
            raise InvalidMessage(str(e)) from None
        if isinstance(m.content, (dict, list, tuple)):
            _check_json_shape(m.content, f"content of {m.id!r}")
        for name, value in m.fields.items():
            if isinstance(value, (dict, list, tuple)):
                _check_json_shape(value, f"field {name!r} of {m.id!r}")
        seen.add(m.id)
        lines.append(_encode_message(m.to_record()))
    return lines
