"""session_store_transcripts: pi and Claude Code transcripts in and out of a session store.

Bring in what agents already wrote, line for line, branch it, hand it to OpenAI or
Anthropic, and write it back::

    import session_store_transcripts as transcripts
    from session_store import SessionStore

    with SessionStore(storage_dir="./sessions") as store:
        sid = transcripts.import_pi(store, "~/.pi/agent/sessions/--work--/2026-01-02T03-04-05-678Z_x.jsonl")
        store.build_context(sid, format="anthropic")       # {"system"?, "messages": [...]}
        transcripts.export_claude_code(store, sid, "copy.jsonl")

Importing this module registers its readers with
:func:`session_store.register_context_reader`, so that
:meth:`~session_store.SessionStore.build_context` reads the sessions it imported, in any
process (a store reopened without this module raises an error naming it). Importing
a transcript again under the same key mirrors it: only the lines added since are
written, and the heads move as the agent's own do.

Standard library and ``session_store`` only: vendor it beside ``session_store.py``.
Table of contents: ``grep -n '^# ===' session_store_transcripts.py``.
"""

from __future__ import annotations

__all__ = [
    "import_pi",
    "export_pi",
    "pi_lines",
    "import_claude_code",
    "export_claude_code",
    "claude_code_messages",
    "claude_code_line",
    "detect_format",
    "TranscriptChanged",
    "PI_VERSION",
]

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeGuard

import session_store
from session_store import (
    Branch,
    DuplicateMessage,
    InvalidInput,
    InvalidKey,
    InvalidMessage,
    Message,
    SessionStore,
    StorageError,
)

_log = logging.getLogger("session_store_transcripts")

#: The pi session format version this module writes (and the newest it reads).
PI_VERSION = 3

Progress = Callable[[int, int], None]
"""Called as ``progress(lines_done, lines_total)`` while a transcript is read."""


class TranscriptChanged(DuplicateMessage):
    """A transcript imported before has a line that changed in place since (only
    appended lines can be mirrored). Carries ``session_id``, ``message_id``, ``file``
    and ``line`` (its number)."""

    def __init__(self, session_id: str, message_id: str, file: str, line: int) -> None:
        super().__init__(session_id, message_id)
        self.args = (f"{file}, line {line} (id {message_id!r}) changed since it was imported into session "
                     f"{session_id!r}; only lines appended since can be imported again",)
        self.file = file
        self.line = line


# ============================================================================
# Record format
# ============================================================================
#
# Imported lines are kept as they were. A pi entry or a Claude Code line becomes one
# message: id = its id (pi "id", Claude Code "uuid"); parent = its parent (pi's roots
# hang under the header; a Claude Code parent that is not in the file makes a root);
# type = "pi.<type>" or "claude_code.<type>"; role = the inner message's role, else the
# line's type; content = its text (message.content, content or summary, by type);
# timestamp = its ISO time in ms (the previous line's when it has none). The field
# "pi" / "claude_code" holds the line minus the id and type restated above, with the
# content replaced by null. A line written before its parent (Claude Code writes hook
# attachments before theirs) is stored after it and carries "pi_at" / "claude_code_at",
# its index in the file; Claude Code lines of another file than the transcript carry
# "claude_code_file" (its path relative to the transcript's folder or to
# "<transcript>/"). Export puts them back: an imported line is written back JSON-equal,
# in its place, unknown types and fields included. A line that cannot be a node (no
# usable id, a repeated id, not an object) is kept whole in "pi_line" /
# "claude_code_line" on a root with a made-up id, and written back as it was.

_ABSENT: Any = object()
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@dataclasses.dataclass(frozen=True, slots=True)
class _Dialect:
    """How one agent's transcript lines name things (see the banner above)."""

    name: str
    id_key: str
    parent_key: str
    content: Mapping[str, tuple[str, ...]]  # line type -> path of its text

    def line(self, m: Message) -> Any:
        """The line ``m`` was imported from, or ``_ABSENT`` when it was not imported."""
        whole = m.fields.get(self.name + "_line", _ABSENT)
        if whole is not _ABSENT:
            return whole
        rest = m.fields.get(self.name)
        if not isinstance(rest, dict) or not (m.type == self.name or m.type.startswith(self.name + ".")):
            return _ABSENT
        line: dict[str, Any] = {}
        kind = m.type[len(self.name) + 1:] or None
        if kind is not None:
            line["type"] = kind
        line[self.id_key] = m.id
        line.update(rest)
        path = self.content.get(kind or "")
        if path is not None and m.content is not None:
            holder = line
            for key in path[:-1]:
                holder[key] = holder = dict(holder[key])
            holder[path[-1]] = m.content
        return line

    def position(self, m: Message) -> int | None:
        """The index in its file of a line stored after a parent that followed it."""
        at = m.fields.get(self.name + "_at")
        return at if isinstance(at, int) and not isinstance(at, bool) else None


_PI = _Dialect("pi", "id", "parentId", {"message": ("message", "content"), "custom_message": ("content",),
                                        "compaction": ("summary",), "branch_summary": ("summary",)})
_CLAUDE = _Dialect("claude_code", "uuid", "parentUuid", {"user": ("message", "content"),
                                                         "assistant": ("message", "content"),
                                                         "system": ("content",), "summary": ("summary",)})

# The store's rule for ids and names (session_store._check_name), as a test: a line
# whose id breaks it is kept whole instead of becoming a node.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _is_name(value: object) -> TypeGuard[str]:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or _CONTROL_RE.search(value) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _iso_ms(value: object) -> int | None:
    """ms since the epoch of an ISO 8601 time (``Z`` or an offset; naive = UTC), else ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return round(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


def _ms_iso(ms: int) -> str:
    """JavaScript's ``toISOString()`` of a time in ms: what pi and Claude Code write."""
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ============================================================================
# Reading lines
# ============================================================================


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with lone surrogates (text JavaScript can write, UTF-8 cannot hold)
    replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE_RE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _split_values(line: str) -> list[Any] | None:
    """The JSON values of a line that holds several back to back (``{...}{...}``: what
    a writer leaves when it appends to a file whose last line had no newline), else
    ``None``."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    values: list[Any] = []
    at = len(line) - len(line.lstrip())
    try:
        while at < len(line):
            value, at = decoder.raw_decode(line, at)
            values.append(value)
            at += len(line[at:]) - len(line[at:].lstrip())
    except ValueError:
        return None
    return values if len(values) > 1 else None


def _read_lines(source: str | os.PathLike[str] | Iterable[str], what: str) -> list[tuple[int, Any]]:
    """The JSON values of a JSONL file (a path) or of lines, with their line numbers.

    Blank lines are skipped; a line holding several JSON values back to back gives
    each of them. A line that is not JSON raises :class:`InvalidInput`, except an
    unterminated last line of a file: what a writer killed mid-line (or still writing)
    leaves, logged and skipped.
    """
    torn = False
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(os.path.expanduser(source), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInput(f"cannot read {what} {os.fspath(source)!r}: {e}") from None
        raw = text.split("\n")
        torn = not text.endswith("\n")
    else:
        try:
            raw = list(source)
        except TypeError:
            raise InvalidInput(f"{what}: give a path or lines, not {type(source).__name__}") from None
        if not all(isinstance(line, str) for line in raw):
            raise InvalidInput(f"{what}: lines must be strings")
    out: list[tuple[int, Any]] = []
    for n, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, parse_constant=_reject_constant)
        except ValueError as e:
            if torn and n == len(raw):
                _log.warning("%s: unterminated last line %d is not JSON; skipped", what, n)
                continue
            values = _split_values(line)
            if values is None:
                raise InvalidInput(f"{what}, line {n}: not JSON ({e})") from None
            if _SURROGATE_ESCAPE_RE.search(line):
                values = [_without_lone_surrogates(v) for v in values]
            out += [(n, v) for v in values]
            continue
        except RecursionError:
            raise InvalidInput(f"{what}, line {n}: nested too deeply") from None
        if _SURROGATE_ESCAPE_RE.search(line):
            value = _without_lone_surrogates(value)
        out.append((n, value))
    return out


# ============================================================================
# Lines to messages
# ============================================================================


class _Importer:
    """Turns transcript lines into messages, parents first (see "Record format")."""

    def __init__(self, dialect: _Dialect, files: Sequence[Sequence[tuple[int, Any]]],
                 progress: Progress | None = None) -> None:
        self.dialect = dialect
        # made-up ids avoid every id the source uses, so no later line loses its own
        self.reserved: set[Any] = set()
        for lines in files:
            for _, v in lines:
                if isinstance(v, dict):
                    own = v.get(dialect.id_key)
                    if isinstance(own, str):
                        self.reserved.add(own)
        self.nodes: set[str] = set()
        self.messages: list[Message] = []
        self.made_up = 0
        self.progress = progress
        self.done = 0
        self.total = sum(len(lines) for lines in files)

    def _made_up_id(self) -> str:
        while True:
            self.made_up += 1
            mid = f"{self.dialect.name}-line-{self.made_up}"
            if mid not in self.reserved and mid not in self.nodes:
                return mid

    def add(self, line: Any, default_parent: str | None, when: int, extra: Mapping[str, Any]) -> Message:
        d = self.dialect
        is_dict = isinstance(line, dict)
        kind = line.get("type") if is_dict else None
        if not (isinstance(kind, str) and _is_name(f"{d.name}.{kind}")):
            kind = None
        inner = line.get("message") if is_dict else None
        role = inner.get("role") if isinstance(inner, dict) else None
        path = d.content.get(kind or "")
        content: Any = None
        own_id = line.get(d.id_key) if is_dict else None
        if is_dict and _is_name(own_id) and own_id not in self.nodes:
            mid: str = own_id
            parent = line.get(d.parent_key)
            parent_id = parent if isinstance(parent, str) and parent in self.nodes else default_parent
            rest = {k: v for k, v in line.items() if k != d.id_key and not (k == "type" and kind is not None)}
            holder: dict[str, Any] | None = rest
            for key in (path or ())[:-1]:
                step = holder.get(key) if holder is not None else None
                if not isinstance(step, dict):
                    holder = None
                    break
                holder[key] = holder = dict(step)
            if path and holder is not None and holder.get(path[-1]) is not None:
                content, holder[path[-1]] = holder[path[-1]], None
            fields: dict[str, Any] = {d.name: rest}
            self.nodes.add(mid)
        else:
            mid, parent_id = self._made_up_id(), None
            fields = {d.name + "_line": line}
            content = line if path else None  # shown by history and tree; the line itself is written back
            for key in path or ():
                content = content.get(key) if isinstance(content, dict) else None
        fields.update(extra)
        msg = Message(id=mid, parent_id=parent_id, type=f"{d.name}.{kind}" if kind else d.name,
                      role=role if _is_name(role) else kind or "line", content=content, timestamp=when,
                      fields=fields)
        self.messages.append(msg)
        self.done += 1
        if self.progress is not None and (self.done % 256 == 0 or self.done == self.total):
            self.progress(self.done, self.total)
        return msg

    def add_file(self, lines: Sequence[tuple[int, Any]], default_parent: str | None = None, *,
                 extra: Mapping[str, Any] | None = None, chain: bool = False,
                 first_position: int = 0) -> list[Message]:
        """The messages of one file's lines (in append order). A line whose parent comes
        later in the file waits for it, and records its position (counted from
        ``first_position``); ``chain`` links every node to the one before (for a
        transcript without any links)."""
        d = self.dialect
        extra = extra or {}
        values = [v for _, v in lines]
        times = _line_times(values)
        later: dict[str, int] = {}  # id -> its first position in this file
        for pos, v in enumerate(values):
            if isinstance(v, dict) and isinstance(v.get(d.id_key), str):
                later.setdefault(v[d.id_key], pos)
        by_pos: list[Message | None] = [None] * len(values)
        added: list[Message] = []
        waiting: dict[str, list[int]] = {}

        def take(pos: int, parent: str | None, moved: bool) -> None:
            stack = [(pos, parent, moved)]
            while stack:
                pos, parent, moved = stack.pop()
                m = self.add(values[pos], parent, times[pos],
                             {**extra, d.name + "_at": first_position + pos} if moved else extra)
                by_pos[pos] = m
                added.append(m)
                for child in reversed(waiting.pop(m.id, []) if d.name in m.fields else []):
                    stack.append((child, default_parent, True))

        previous = default_parent
        for pos, v in enumerate(values):
            if chain:
                m = self.add(v, previous, times[pos], extra)
                by_pos[pos] = m
                added.append(m)
                previous = m.id if d.name in m.fields else previous
                continue
            parent = v.get(d.parent_key) if isinstance(v, dict) else None
            own = v.get(d.id_key) if isinstance(v, dict) else None
            if (isinstance(parent, str) and parent not in self.nodes and later.get(parent, -1) > pos
                    and _is_name(own) and own not in self.nodes):
                waiting.setdefault(parent, []).append(pos)
                continue
            take(pos, default_parent, False)
        while waiting:  # parents that never became nodes (a cycle, a repeated id): in file order
            take(min(p for group in waiting.values() for p in group), default_parent, True)
            waiting = {k: [p for p in group if by_pos[p] is None] for k, group in waiting.items()}
            waiting = {k: group for k, group in waiting.items() if group}
        return added


def _line_times(values: Sequence[Any]) -> list[int]:
    """Each line's time in ms: its own ``timestamp``, else the previous line's, else the
    first one in the file (0 when none has one: the same on every import)."""
    own = [_iso_ms(v.get("timestamp")) if isinstance(v, dict) else None for v in values]
    last = next((t for t in own if t is not None), 0)
    out: list[int] = []
    for t in own:
        last = t if t is not None else last
        out.append(last)
    return out


def _in_file_order(messages: Sequence[Message], dialect: _Dialect) -> list[Message]:
    """Messages (in append order) as their lines were in the file."""
    order: list[Message] = []
    moved: list[tuple[int, Message]] = []
    for m in messages:
        at = dialect.position(m)
        if at is None:
            order.append(m)
        else:
            moved.append((at, m))
    for at, m in sorted(moved, key=lambda pair: pair[0]):
        order.insert(min(at, len(order)), m)
    return order


# -- pi ---------------------------------------------------------------------------------


def _pi_migrate(entries: list[dict[str, Any]], version: int) -> None:
    """Bring pi entries of format version 1 or 2 to version 3, as pi itself does on
    load: v1 -> v2 gives every entry an id and chains them (``firstKeptEntryIndex``
    becomes ``firstKeptEntryId``); v2 -> v3 renames the ``hookMessage`` role ``custom``.
    Ids made here are derived from the session id and position: importing the same
    file twice gives the same ids."""
    header = entries[0]
    if version < 2:
        ids: set[str] = set()
        previous: str | None = None
        for n, entry in enumerate(entries[1:], 1):
            seed = f"{header.get('id')}:{n}"
            while (eid := hashlib.sha256(seed.encode()).hexdigest()[:8]) in ids:
                seed += "'"
            ids.add(eid)
            entry["id"], entry["parentId"], previous = eid, previous, eid
        for entry in entries[1:]:
            index = entry.pop("firstKeptEntryIndex", None) if entry.get("type") == "compaction" else None
            if isinstance(index, int) and 0 < index < len(entries):
                entry["firstKeptEntryId"] = entries[index]["id"]
    if version < 3:
        for entry in entries[1:]:
            message = entry.get("message")
            if entry.get("type") == "message" and isinstance(message, dict) and message.get("role") == "hookMessage":
                message["role"] = "custom"
        header["version"] = PI_VERSION


def _pi_messages(lines: list[tuple[int, Any]], progress: Progress | None) -> tuple[list[Message], str]:
    """The messages of a pi session file, and the id of its leaf (its last entry)."""
    first = lines[0][1] if lines else None
    if isinstance(first, dict) and first.get("kind") == "header" and "type" not in first:
        # A lane-based file ({"kind":"header","version":4,...}). No published pi writes or
        # reads one (the newest @mariozechner/pi-coding-agent on npm, 0.73.1, writes version
        # 3): there is no reader to follow and no context to compare with, so it is refused
        # by name rather than guessed at.
        raise InvalidInput(f"a lane-based pi session (header version {first.get('version')!r}) is not read here: "
                           f"this module reads pi's session files of versions 1 to {PI_VERSION}")
    if not isinstance(first, dict) or first.get("type") != "session":
        raise InvalidInput('not a pi session: the first line must be its header {"type":"session",...}')
    for n, value in lines:
        if not isinstance(value, dict):
            raise InvalidInput(f"pi session, line {n}: not a JSON object")
    header = lines[0][1]
    version = header.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput(f"pi session header: version must be a positive integer, not {version!r}")
    if version > PI_VERSION:
        raise InvalidInput(f"pi session format version {version} is newer than this module reads ({PI_VERSION})")
    if not _is_name(header.get("id")):
        raise InvalidInput("pi session header: id must be a string of 1 to 256 characters")
    _pi_migrate([value for _, value in lines], version)
    importer = _Importer(_PI, [lines], progress)
    [root] = importer.add_file(lines[:1])
    entries = importer.add_file(lines[1:], root.id, first_position=1)
    leaf = next((m.id for m in reversed(_in_file_order(entries, _PI)) if _PI.name in m.fields), root.id)
    return importer.messages, leaf


# -- Claude Code ------------------------------------------------------------------------

_FILE_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_OLD_AGENT_FILE_RE = re.compile(r"agent-[A-Za-z0-9._-]{1,200}\.jsonl")


def _safe_relative(file: object) -> TypeGuard[str]:
    """A file written beside a transcript: ``agent-<id>.jsonl`` (the old layout) or a
    path under ``subagents/``; never absolute, never ``..``."""
    if not isinstance(file, str):
        return False
    parts = file.split("/")
    if len(parts) == 1:
        return _OLD_AGENT_FILE_RE.fullmatch(file) is not None
    return parts[0] == "subagents" and file.endswith(".jsonl") and all(_FILE_PART_RE.fullmatch(p) for p in parts)


def _claude_files(path: str) -> list[tuple[str | None, list[tuple[int, Any]]]]:
    """The transcript and its subagents' transcripts: ``<transcript>/subagents/**.jsonl``
    (Claude Code 2.1) and ``agent-*.jsonl`` of the same session beside it (2.0)."""
    files: list[tuple[str | None, list[tuple[int, Any]]]] = [(None, _read_lines(path, "Claude Code transcript"))]
    session = next((v["sessionId"] for _, v in files[0][1] if isinstance(v, dict)
                    and isinstance(v.get("sessionId"), str)), None)
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    subagents = os.path.join(folder, stem, "subagents")
    found: list[str] = []
    for top, dirs, names in os.walk(subagents):
        dirs[:] = sorted(d for d in dirs if _FILE_PART_RE.fullmatch(d))
        relative = os.path.relpath(top, os.path.join(folder, stem)).replace(os.sep, "/")
        found += [f"{relative}/{n}" for n in sorted(names) if n.endswith(".jsonl") and _FILE_PART_RE.fullmatch(n)]
    if session is not None and not name.startswith("agent-"):
        try:
            beside = sorted(n for n in os.listdir(folder or ".") if _OLD_AGENT_FILE_RE.fullmatch(n))
        except OSError:
            beside = []
        for n in beside:
            if _first_session_id(os.path.join(folder, n)) == session:
                found.append(n)
    for file in found:
        where = os.path.join(folder, stem, *file.split("/")) if "/" in file else os.path.join(folder, file)
        files.append((file, _read_lines(where, "Claude Code subagent transcript")))
    return files


def _first_session_id(path: str) -> str | None:
    """The ``sessionId`` of a transcript's first line that has one (read from its start)."""
    try:
        with open(path, encoding="utf-8") as f:
            for _ in range(20):
                line = f.readline()
                if not line:
                    break
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict) and isinstance(value.get("sessionId"), str):
                    return str(value["sessionId"])
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _is_prompt(line: Any) -> bool:
    """A user's own turn (not a tool result, a command's output or a compact summary)."""
    if not isinstance(line, dict) or line.get("type") != "user" or line.get("isMeta") or line.get("isCompactSummary"):
        return False
    message = line.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return bool(content.strip())
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in ("text", "image")
                                             for b in content)


def _claude_messages(path: str, progress: Progress | None,
                     ) -> tuple[list[Message], str | None, dict[str, str], str | None]:
    """Messages of a Claude Code transcript and of its subagents' files, the head of
    ``main``, the other branches (sidechains and rewinds) by name, and the session id."""
    files = _claude_files(path)
    importer = _Importer(_CLAUDE, [lines for _, lines in files], progress)
    session: str | None = None
    main_file: list[Message] = []
    sidechains: list[tuple[Message, str | None]] = []
    branches: dict[str, str] = {}
    resume: str | None = None
    for file, lines in files:
        uuids = {v.get("uuid") for _, v in lines if isinstance(v, dict) and isinstance(v.get("uuid"), str)}
        linked = any(isinstance(v, dict) and v.get("parentUuid") in uuids for _, v in lines)
        added = importer.add_file(lines, extra={"claude_code_file": file} if file else None, chain=not linked)
        for m in _in_file_order(added, _CLAUDE):
            line = _CLAUDE.line(m)
            if not isinstance(line, dict):
                continue
            if session is None and isinstance(line.get("sessionId"), str):
                session = line["sessionId"]
            if file is None and line.get("type") == "last-prompt" and isinstance(line.get("leafUuid"), str):
                resume = line["leafUuid"]  # where Claude Code 2.1 resumes: the last one counts
            if _CLAUDE.name not in m.fields:
                continue
            if line.get("isSidechain") is True:
                agent = line.get("agentId")
                sidechains.append((m, "agent-" + agent if isinstance(agent, str) and _is_name("agent-" + agent)
                                   else None))
            elif file is None and _resumes_on(line):
                main_file.append(m)
    by_id = {m.id: m for m in importer.messages}
    on_side = {m.id for m, _ in sidechains}
    for m, name in sidechains:  # each agent's last line; without an agentId, each sidechain's (by its first line)
        first = m
        while first.parent_id in on_side:
            first = by_id[first.parent_id]
        branches[name or ("sidechain-" + first.id[:8])] = m.id
    head = resume if resume in {m.id for m in main_file} else (main_file[-1].id if main_file else None)
    if head is None:
        head = next((m.id for m in reversed(importer.messages) if _CLAUDE.name in m.fields), None)
    branches.update(_rewinds(main_file, head, by_id))
    return importer.messages, head, branches, session


def _rewinds(nodes: list[Message], head: str | None, by_id: Mapping[str, Message]) -> dict[str, str]:
    """A branch for every user turn re-sent from an earlier point (a rewind) that the
    head's path left: ``rewind-<its id>``, at the newest line under it."""
    on_main: set[str] = set()
    at = head
    while at is not None and at not in on_main:
        on_main.add(at)
        at = by_id[at].parent_id if at in by_id else None
    children: dict[str, list[Message]] = {}
    for m in nodes:
        if m.parent_id is not None:
            children.setdefault(m.parent_id, []).append(m)
    out: dict[str, str] = {}
    for m in nodes:
        if m.id in on_main or m.parent_id is None or len(children.get(m.parent_id, ())) < 2:
            continue
        if not _is_prompt(_CLAUDE.line(m)):
            continue
        newest, stack = m, [m]
        while stack:
            for c in children.get(stack.pop().id, ()):
                stack.append(c)
                if c.timestamp >= newest.timestamp and _CLAUDE.line(c)["type"] in ("user", "assistant"):
                    newest = c
        name = "rewind-" + m.id[:8]
        out[name if name not in out else ("rewind-" + m.id)[:256]] = newest.id
    return out


# ============================================================================
# Contexts: what pi and Claude Code send the model
# ============================================================================

_COMPACTION_PREFIX = ("The conversation history before this point was compacted into the following summary:"
                      "\n\n<summary>\n")
_COMPACTION_SUFFIX = "\n</summary>"
_BRANCH_PREFIX = "The following is a summary of a branch that this conversation came back from:\n\n<summary>\n"
_BRANCH_SUFFIX = "</summary>"


def _native(m: Message, role: str, content: Any, **fields: Any) -> Message:
    return Message(id=m.id, parent_id=m.parent_id, type=role, role=role, content=content, timestamp=m.timestamp,
                   fields=fields)


def _bash_text(message: Mapping[str, Any]) -> str:
    """pi's ``bashExecution`` message as the user text pi sends for it."""
    text = f"Ran `{message.get('command')}`\n"
    output = message.get("output")
    text += f"```\n{output}\n```" if output else "(no output)"
    if message.get("cancelled"):
        text += "\n\n(command cancelled)"
    elif message.get("exitCode") not in (None, 0):
        text += f"\n\nCommand exited with code {message.get('exitCode')}"
    if message.get("truncated") and message.get("fullOutputPath"):
        text += f"\n\n[Output truncated. Full output: {message.get('fullOutputPath')}]"
    return text


def _from_anthropic(message: Mapping[str, Any]) -> bool:
    """Whether pi recorded this assistant message from Anthropic itself: only Anthropic
    accepts its thinking signatures back. Other providers behind the same API shape
    (``api`` ``"anthropic-messages"`` with a provider such as a Kimi or GLM endpoint)
    sign with their own keys."""
    return message.get("provider") == "anthropic" and message.get("api") in ("anthropic-messages", None)


def _pi_assistant_blocks(content: Any, signed: bool) -> Any:
    """pi's assistant content as Anthropic blocks: thinking keeps its signature only when
    it came from Anthropic (``signed``), redacted thinking only then too."""
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for b in content:
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "toolCall":
            out.append({"type": "tool_use", "id": b.get("id"), "name": b.get("name"), "input": b.get("arguments")})
        elif kind == "thinking" and b.get("redacted"):
            if signed and isinstance(b.get("thinkingSignature"), str):
                out.append({"type": "redacted_thinking", "data": b["thinkingSignature"]})
        elif kind == "thinking":
            signature = b.get("thinkingSignature") if signed else None
            out.append({"type": "thinking", "thinking": b.get("thinking")} | (
                {"signature": signature} if isinstance(signature, str) and signature else {}))
        else:
            out.append(b)
    return out


def _pi_agent_message(message: Any, m: Message) -> list[Message]:
    """What pi sends for one of its messages (``convertToLlm``), as native records."""
    if not isinstance(message, dict):
        return []
    role = message.get("role")
    content = message.get("content")
    if role in ("user", "custom", "hookMessage"):
        return [_native(m, "user", content)]
    if role == "assistant":
        if message.get("stopReason") in ("error", "aborted"):  # pi replays neither
            return []
        return [_native(m, "assistant", _pi_assistant_blocks(content, _from_anthropic(message)))]
    if role == "toolResult":
        call_id, name = message.get("toolCallId"), message.get("toolName")
        return [_native(m, "tool", content, tool_call_id=call_id if isinstance(call_id, str) else "",
                        name=name if isinstance(name, str) else "", is_error=message.get("isError") is True)]
    if role == "bashExecution":
        return [] if message.get("excludeFromContext") else [_native(m, "user", _bash_text(message))]
    if role == "branchSummary" and isinstance(message.get("summary"), str):
        return [_native(m, "user", _BRANCH_PREFIX + message["summary"] + _BRANCH_SUFFIX)]
    if role == "compactionSummary" and isinstance(message.get("summary"), str):
        return [_native(m, "user", _COMPACTION_PREFIX + message["summary"] + _COMPACTION_SUFFIX)]
    if isinstance(role, str) and _is_name(role):  # a role pi's extensions add: build_context reports it
        return [_native(m, role, content)]
    return []


def _pi_entry(entry: Any, m: Message) -> list[Message]:
    """What pi sends the model for one entry (its ``buildSessionContext``), as native
    records; a compaction is read on the whole path (:func:`_pi_context`)."""
    if not isinstance(entry, dict):
        return []
    kind = entry.get("type")
    if kind == "message":
        return _pi_agent_message(entry.get("message"), m)
    if kind == "custom_message":
        return [_native(m, "user", entry.get("content"))]
    if kind == "branch_summary" and isinstance(entry.get("summary"), str) and entry["summary"]:
        return [_native(m, "user", _BRANCH_PREFIX + entry["summary"] + _BRANCH_SUFFIX)]
    return []  # settings, labels, session info, extensions' state: pi sends none of them


def _compaction_kept(entry: Mapping[str, Any], m: Message, before: Sequence[Message]) -> list[Message]:
    """What a pi compaction keeps besides its summary: its ``retainedTail`` (pi 0.84+),
    else the entries of the path from its ``firstKeptEntryId`` on."""
    tail = entry.get("retainedTail")
    if isinstance(tail, list):
        return [n for message in tail for n in _pi_agent_message(message, m)]
    kept = entry.get("firstKeptEntryId")
    start = next((j for j, p in enumerate(before) if p.id == kept), len(before))
    return list(before[start:])


def _pi_context(path: list[Message], children: Callable[[str], list[Message]]) -> list[Message]:
    """The context reader for pi entries (registered as ``"pi"``): the last compaction on
    the path stands for what came before it: its summary (a user turn, as pi sends it),
    what it kept, then the entries after it."""
    for i in range(len(path) - 1, -1, -1):
        entry = _PI.line(path[i]) if path[i].type == "pi.compaction" else None
        if isinstance(entry, dict):
            summary = _native(path[i], "user", _COMPACTION_PREFIX + str(entry.get("summary")) + _COMPACTION_SUFFIX)
            path = [summary, *_compaction_kept(entry, path[i], path[:i]), *path[i + 1:]]
            break
    out: list[Message] = []
    for m in path:
        line = _PI.line(m)
        out.extend(m for m in ([m] if line is _ABSENT else _pi_entry(line, m)))
    return out


def _claude_native(m: Message, line: Any) -> Message | None:
    """A Claude Code line as the native record Claude Code sends for it: user and
    assistant lines only (system lines, summaries, attachments, progress and API error
    notices are for the user); the content is Anthropic's already."""
    if not isinstance(line, dict) or line.get("type") not in ("user", "assistant") or line.get("isApiErrorMessage"):
        return None
    message = line.get("message")
    if not isinstance(message, dict):
        return None
    return _native(m, line["type"], message.get("content"))


def _results_only(line: Any) -> list[str]:
    """The call ids a user line answers when it holds nothing but tool results."""
    message = line.get("message") if isinstance(line, dict) and line.get("type") == "user" else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not content:
        return []
    ids = [b.get("tool_use_id") for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return [i for i in ids if isinstance(i, str)] if len(ids) == len(content) else []


def _response_id(line: Any) -> str | None:
    message = line.get("message") if isinstance(line, dict) and line.get("type") == "assistant" else None
    rid = message.get("id") if isinstance(message, dict) else None
    return rid if isinstance(rid, str) else None


def _claude_context(path: list[Message], children: Callable[[str], list[Message]]) -> list[Message]:
    """The context reader for Claude Code lines (registered as ``"claude_code"``).

    Claude Code writes one response as several lines (one per content block, sharing
    ``message.id``), and with parallel tool calls each result line hangs under its own
    ``tool_use`` line: the lines of one response and their results sit on sibling
    paths. So a response on the path takes in the lines of the same response beside it,
    and the results beside it of calls that the path does not answer."""
    answered = {i for m in path for i in _results_only(_CLAUDE.line(m))}
    on_path = {m.id for m in path}
    out: list[Message] = []
    pending: list[Message] = []  # results found beside the response being read
    response: str | None = None
    for m in path:
        line = _CLAUDE.line(m)
        native = _claude_native(m, line) if line is not _ABSENT else m
        if native is None:
            continue
        rid = _response_id(line) if line is not _ABSENT else None
        if rid is None or rid != response:
            out += pending
            pending = []
            response = rid
        out.append(native)
        if rid is not None:
            _beside(m, rid, children, on_path, answered, out, pending)
    return out + pending


def _beside(m: Message, rid: str, children: Callable[[str], list[Message]], on_path: set[str], answered: set[str],
            out: list[Message], pending: list[Message]) -> None:
    """Lines off the path under ``m`` that belong to its response ``rid`` (into ``out``)
    and results of its calls that the path does not answer (into ``pending``)."""
    stack = [m]
    seen = {m.id}
    while stack:
        for c in children(stack.pop().id):
            if c.id in on_path or c.id in seen:
                continue
            seen.add(c.id)
            line = _CLAUDE.line(c)
            if line is _ABSENT or not isinstance(line, dict):
                continue
            if _response_id(line) == rid and (native := _claude_native(c, line)) is not None:
                out.append(native)
                stack.append(c)
            elif (ids := _results_only(line)) and not answered.intersection(ids):
                answered.update(ids)
                if (native := _claude_native(c, line)) is not None:
                    pending.append(native)
                stack.append(c)
            elif line.get("type") in ("progress", "attachment", "system") and not line.get("isSidechain"):
                stack.append(c)  # lines for the user between a call and its result


session_store.register_context_reader("pi", _pi_context)
session_store.register_context_reader("claude_code", _claude_context)


# ============================================================================
# Messages to lines
# ============================================================================


def _chain(m: Message, bodies: list[dict[str, Any]], id_key: str, parent_key: str, parent: str | None,
           taken: set[str]) -> list[dict[str, Any]]:
    """Lines for the turns of one message, chained; the last carries the message's id
    (children name it), the others ``<id>.<n>``."""
    out: list[dict[str, Any]] = []
    for n, body in enumerate(bodies, 1):
        line_id = m.id
        if n < len(bodies):
            line_id = f"{m.id}.{n}"
            while line_id in taken:
                line_id += "_"
            taken.add(line_id)
        out.append({"type": body.pop("type"), id_key: line_id, parent_key: parent, **body})
        parent = line_id
    return out


def _first_text(content: Any) -> str:
    return content if isinstance(content, str) else _dumps(content)


def _turns(m: Message) -> list[Message] | None:
    """The turns of a message written in another format, or ``None`` when part of it has
    no equivalent (then the record itself is written)."""
    try:
        return session_store.read_turns(m, strict=True)
    except InvalidMessage:
        return None


def _path_to(m: Message, by_id: Mapping[str, Message]) -> list[Message]:
    path: list[Message] = []
    at: Message | None = m
    while at is not None and len(path) <= len(by_id):
        path.append(at)
        at = by_id.get(at.parent_id) if at.parent_id is not None else None
    return path[::-1]


def _compaction_turns(m: Message, entry: Mapping[str, Any], by_id: Mapping[str, Message]) -> list[Message]:
    """A pi compaction as turns a model is sent after it: its summary, then what it kept."""
    before = _path_to(m, by_id)[:-1]
    summary = _native(m, "user", _COMPACTION_PREFIX + str(entry.get("summary")) + _COMPACTION_SUFFIX)
    turns = [summary]
    for kept in _compaction_kept(entry, m, before):
        turns += _turns(kept) or []
    return turns


def _pi_blocks(blocks: Any) -> list[dict[str, Any]]:
    """Anthropic blocks (canonical turns) as pi's."""
    out: list[dict[str, Any]] = []
    given: list[Any] = blocks if isinstance(blocks, list) else [{"type": "text", "text": str(blocks)}]
    for b in given:
        kind = b.get("type")
        if kind == "text":
            out.append(b)
        elif kind == "image":
            source = b.get("source") or {}
            out.append({"type": "image", "data": source.get("data"), "mimeType": source.get("media_type")}
                       if source.get("type") == "base64" else {"type": "text", "text": f"[image: {source.get('url')}]"})
        elif kind == "thinking":
            out.append({"type": "thinking", "thinking": b.get("thinking")} | (
                {"thinkingSignature": b["signature"]} if b.get("signature") else {}))
        elif kind == "redacted_thinking":
            out.append({"type": "thinking", "thinking": "[Reasoning redacted]", "thinkingSignature": b.get("data"),
                        "redacted": True})
        elif kind == "tool_use":
            value = b.get("input")
            out.append({"type": "toolCall", "id": b.get("id"), "name": b.get("name"),
                        "arguments": value if isinstance(value, dict) else {}})
    return out


_PI_NO_USAGE = {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0,
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": 0}}


def _pi_entries(m: Message, parent: str | None, taken: set[str], names: dict[str, str]) -> list[dict[str, Any]]:
    """pi entries for a message that was not imported from pi: user, assistant and tool
    turns as pi messages; system and developer text as a ``custom_message``; a reset
    marker as a ``compaction`` (its text the summary); anything else as a ``custom``
    entry (``customType`` ``"session-store"``) holding the record, so nothing is lost."""
    ms = m.timestamp
    bodies: list[dict[str, Any]] = []
    turns = [] if m.type == "reset" else _turns(m)
    if m.type == "reset":
        bodies.append({"type": "compaction", "summary": _first_text(m.content), "firstKeptEntryId": m.id,
                       "tokensBefore": 0})
    for t in turns or []:
        if t.role in ("system", "developer"):
            bodies.append({"type": "custom_message", "customType": f"session-store.{t.role}", "content": t.content,
                           "display": True})
            continue
        blocks = _pi_blocks(t.content)
        message: dict[str, Any]
        if t.role == "user":
            one_text = len(blocks) == 1 and blocks[0]["type"] == "text"
            message = {"role": "user", "content": blocks[0]["text"] if one_text else blocks, "timestamp": ms}
        elif t.role == "tool":
            call_id = str(t.fields.get("tool_call_id", ""))
            message = {"role": "toolResult", "toolCallId": call_id,
                       "toolName": t.fields.get("name") or names.get(call_id, ""), "content": blocks,
                       "isError": t.fields.get("is_error") is True, "timestamp": ms}
        else:
            names.update((b["id"], b["name"]) for b in blocks if b["type"] == "toolCall")
            signed = m.type.startswith("claude_code") or any(b.get("thinkingSignature") for b in blocks)
            message = {"role": "assistant", "content": blocks,
                       "api": "anthropic-messages" if signed else "unknown",
                       "provider": "anthropic" if signed else str(m.fields.get("provider", "unknown")),
                       "model": str(m.fields.get("model", "unknown")), "usage": _PI_NO_USAGE,
                       "stopReason": "toolUse" if any(b["type"] == "toolCall" for b in blocks) else "stop",
                       "timestamp": ms}
        bodies.append({"type": "message", "message": message})
    if not bodies:
        bodies.append({"type": "custom", "customType": "session-store", "data": m.to_record()})
    when = _ms_iso(ms)
    for body in bodies:
        body["timestamp"] = when
    return _chain(m, bodies, "id", "parentId", parent, taken)


def _resume_last(lines: list[Any], ids: list[str | None], head: str | None, dialect: _Dialect,
                 node: Callable[[int], bool]) -> None:
    """Move the head's line after the last node line (the agent resumes at the last one),
    when it has no children and is not there already. ``ids`` names the message each
    line ends (``None`` for lines kept whole and the first lines of a chain)."""
    if head is None or head not in ids:
        return
    at = ids.index(head)
    if any(isinstance(line, dict) and line.get(dialect.parent_key) == head for line in lines):
        return
    last = max((i for i in range(len(lines)) if ids[i] is not None and node(i)), default=at)
    if last > at:
        lines.insert(last, lines.pop(at))
        ids.insert(last, ids.pop(at))


def _pi_export(session_id: str, created_at: int, messages: list[Message], head: str | None) -> list[Any]:
    """The lines of a pi session file (format version 3) for a session's whole tree."""
    headers = [m for m in messages if m.type == "pi.session" and isinstance(_PI.line(m), dict)]
    header_ids = {m.id for m in headers}
    lines: list[Any] = [_PI.line(headers[0]) if headers else {
        "type": "session", "version": PI_VERSION, "id": session_id, "timestamp": _ms_iso(created_at), "cwd": ""}]
    ids: list[str | None] = [headers[0].id if headers else None]
    taken = {m.id for m in messages}
    names: dict[str, str] = {}
    for m in _in_file_order(messages, _PI):
        if headers and m is headers[0]:
            continue
        line = _PI.line(m)
        if line is not _ABSENT:
            lines.append(line)
            ids.append(m.id if _PI.name in m.fields else None)
            continue
        parent = None if m.parent_id is None or m.parent_id in header_ids else m.parent_id
        entries = _pi_entries(m, parent, taken, names)
        lines += entries
        ids += [None] * (len(entries) - 1) + [m.id]
    _resume_last(lines, ids, head, _PI, lambda i: i > 0)
    return lines


def _claude_lines(m: Message, session: str, sidechain: bool, parent: str | None, taken: set[str],
                  by_id: Mapping[str, Message]) -> list[dict[str, Any]]:
    """Claude Code lines for a message that was not imported from Claude Code: user,
    assistant and tool turns as user/assistant lines (Anthropic content); system and
    developer text as system lines; a reset marker as a ``compact_boundary``; a pi
    compaction as a ``compact_boundary`` and its summary and kept turns (what Claude Code
    sends after a boundary); anything else as a system line carrying the record in
    ``sessionStoreRecord``."""
    bodies: list[dict[str, Any]] = []
    entry = _PI.line(m) if m.type == "pi.compaction" else None
    turns: list[Message] | None
    if m.type == "reset" or isinstance(entry, dict):
        bodies.append({"type": "system", "subtype": "compact_boundary", "content": _first_text(m.content),
                       "level": "info", "logicalParentUuid": m.parent_id})
        parent = None  # a boundary starts a new root, as Claude Code writes it
        turns = _compaction_turns(m, entry, by_id) if isinstance(entry, dict) else []
    else:
        turns = _turns(m)
    for t in turns or []:
        if t.role in ("system", "developer"):
            bodies.append({"type": "system", "subtype": "informational", "content": t.content, "level": "info"})
        elif t.role == "assistant":
            bodies.append({"type": "assistant", "message": {
                "id": f"msg_{m.id}", "type": "message", "role": "assistant",
                "model": str(m.fields.get("model", "unknown")), "content": t.content}})
        else:
            blocks = t.content if isinstance(t.content, list) else [{"type": "text", "text": str(t.content)}]
            if t.role == "tool":
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": t.fields.get("tool_call_id")}
                if blocks:
                    one = len(blocks) == 1 and blocks[0]["type"] == "text"
                    result["content"] = blocks[0]["text"] if one else blocks
                if t.fields.get("is_error"):
                    result["is_error"] = True
                blocks = [result]
            one_text = len(blocks) == 1 and blocks[0]["type"] == "text"
            bodies.append({"type": "user", "message": {"role": "user",
                                                       "content": blocks[0]["text"] if one_text else blocks}})
    if isinstance(entry, dict) and len(bodies) > 1:
        bodies[1]["isCompactSummary"] = True  # the summary Claude Code writes after a boundary
    if not bodies:
        bodies.append({"type": "system", "subtype": "informational", "content": _first_text(m.content),
                       "level": "info", "sessionStoreRecord": m.to_record()})
    for body in bodies:
        body.update(isSidechain=sidechain, sessionId=session, timestamp=_ms_iso(m.timestamp))
    return _chain(m, bodies, "uuid", "parentUuid", parent, taken)


def _claude_export(session_id: str, messages: list[Message], head: str | None) -> dict[str | None, list[Any]]:
    """The lines of a Claude Code transcript, by file: ``None`` for the main one, else
    its path relative to the transcript (see :func:`_safe_relative`). Imported lines go
    back to the file they came from, in their place; others to their parent's file."""
    session = session_id
    for m in messages:
        line = _CLAUDE.line(m)
        if isinstance(line, dict) and isinstance(line.get("sessionId"), str):
            session = line["sessionId"]
            break
    by_id = {m.id: m for m in messages}
    files: dict[str | None, list[Any]] = {None: []}
    ids: dict[str | None, list[str | None]] = {None: []}
    file_of: dict[str, str | None] = {}
    taken = {m.id for m in messages}
    for m in _in_file_order(messages, _CLAUDE):
        line = _CLAUDE.line(m)
        if line is not _ABSENT:
            file = m.fields.get("claude_code_file")
            file = file if _safe_relative(file) else None
            lines = [line]
            last_id = m.id if _CLAUDE.name in m.fields else None
        else:
            file = file_of.get(m.parent_id) if m.parent_id is not None else None
            lines = _claude_lines(m, session, file is not None, m.parent_id, taken, by_id)
            last_id = m.id
        file_of[m.id] = file
        files.setdefault(file, []).extend(lines)
        ids.setdefault(file, []).extend([None] * (len(lines) - 1) + [last_id])
    main, main_ids = files[None], ids[None]
    prompts = [line for line in main if isinstance(line, dict) and line.get("type") == "last-prompt"]
    if prompts and head is not None and head in main_ids and _resumes_at(main, main_ids, prompts[-1]) != head:
        main.append({"type": "last-prompt", "lastPrompt": _last_prompt(head, by_id), "leafUuid": head,
                     "sessionId": session})  # Claude Code 2.1 resumes at the last of these
    elif not prompts:
        _resume_last(main, main_ids, head, _CLAUDE, lambda i: isinstance(main[i], dict) and _resumes_on(main[i]))
    return files


def _resumes_at(main: list[Any], main_ids: list[str | None], prompt: Mapping[str, Any]) -> str | None:
    """Where a main transcript resumes (as :func:`_claude_messages` reads it): its last
    last-prompt row's ``leafUuid`` when that is one of its lines, else its last line
    not on a sidechain."""
    leaf = prompt.get("leafUuid")
    if leaf in main_ids:
        return leaf if isinstance(leaf, str) else None
    return next((mid for line, mid in zip(reversed(main), reversed(main_ids), strict=True)
                 if mid is not None and isinstance(line, dict) and _resumes_on(line)), None)


def _resumes_on(line: Mapping[str, Any]) -> bool:
    """Whether Claude Code can resume on a main transcript's line: a row of the
    conversation, not on a sidechain (a state row with a uuid, like
    ``content-replacement``, is not one)."""
    return line.get("type") in _CLAUDE_TURN_TYPES and line.get("isSidechain") is not True


def _last_prompt(head: str, by_id: Mapping[str, Message]) -> str:
    for m in reversed(_path_to(by_id[head], by_id)):
        line = _CLAUDE.line(m)
        if _is_prompt(line):
            content = line["message"]["content"]
            return content if isinstance(content, str) else " ".join(
                b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _write_jsonl(path: str, lines: list[Any]) -> None:
    """Write ``lines`` as a JSONL file, atomically (a reader sees the old file or the new)."""
    data = b"".join((_dumps(line) + "\n").encode("utf-8") for line in lines)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except OSError as e:
        raise StorageError(e.errno, f"could not write {path}: {e.strerror or e}") from None


# ============================================================================
# Import and export
# ============================================================================


def _import(store: SessionStore, key: str, messages: list[Message], branches: list[Branch], anchor: str | None,
            where: Callable[[str], tuple[str, int]], forked_from: tuple[str, str | None] | None = None) -> str:
    """A new session for ``key`` (``forked_from``: see :meth:`SessionStore.import_session`),
    or, when ``key`` has the session of an earlier import of the same transcript (it
    holds ``anchor``), the lines added since."""
    if not store.has_key(key):
        return store.import_session(key, messages, branches=branches, forked_from=forked_from)
    sid = store.resolve(key)
    if anchor is None or not any(m.id == anchor for m in store.get_messages(sid)):
        raise InvalidKey(f"key {key!r} already has a session ({sid}), not one of this transcript")
    try:
        store.import_messages(sid, messages, branches=branches)
    except DuplicateMessage as e:
        file, line = where(e.message_id)
        raise TranscriptChanged(sid, e.message_id, file, line) from None
    return sid


def import_pi(store: SessionStore, path_or_lines: str | os.PathLike[str] | Iterable[str], *,
              key: str | None = None, progress: Progress | None = None) -> str:
    """Import a pi session file (``~/.pi/agent/sessions/*/*.jsonl``); return the session id.

    ``path_or_lines``: a path, or the file's lines (an open file will do). Format
    versions 1, 2 and 3 are read; older ones are brought to version 3 as pi does (v1
    entries get ids derived from the session id and chain; v2's ``hookMessage`` role
    becomes ``custom``). Every entry becomes one message (see "Record format" in this
    file); the header becomes the root, and pi's roots its children. pi keeps no leaf:
    the last entry is the head of ``main``.

    ``key`` defaults to ``"pi:<session id>"``. When the key already has the session of
    this file (imported before), only the entries added since are written and ``main``
    moves to the new last entry; an entry that changed raises :class:`TranscriptChanged`.
    Bad input (not a pi session, a line that is not JSON, a newer format, a key holding
    another session) raises :class:`~session_store.InvalidInput` with nothing written;
    an unterminated last line (a writer that crashed or is still writing) is skipped.
    Lone surrogates (invalid text JavaScript can write) become U+FFFD. ``progress``
    is called as lines are read.
    """
    lines = _read_lines(path_or_lines, "pi session")
    messages, leaf = _pi_messages(lines, progress)
    header = messages[0]
    head = next(m for m in messages if m.id == leaf)
    main = Branch(name="main", head_id=leaf, created_at=header.timestamp, updated_at=head.timestamp)
    numbers = {m.id: n for m, (n, _) in zip(_in_file_order(messages, _PI), lines, strict=True)}
    what = os.fspath(path_or_lines) if isinstance(path_or_lines, (str, os.PathLike)) else "pi session"
    return _import(store, f"pi:{header.id}" if key is None else key, messages, [main], header.id,
                   lambda mid: (what, numbers.get(mid, 0)))


def pi_lines(store: SessionStore, session_id: str) -> list[Any]:
    """The lines :func:`export_pi` writes, as JSON values."""
    head = store.get_head(session_id)
    messages = store.get_messages(session_id)
    meta = store.get_metadata(session_id)
    return _pi_export(session_id, meta.created_at if meta else 0, messages, head)


def export_pi(store: SessionStore, session_id: str, path: str | os.PathLike[str]) -> None:
    """Write the session's whole tree as a pi session file (format version 3), atomically.

    Entries imported from pi are written back as they were read (JSON-equal, unknown
    types and fields included), in their place. Other messages become pi entries:
    user, assistant and tool results as ``message`` entries, system and developer text
    as a ``custom_message``, a reset marker as a ``compaction``, anything else as a
    ``custom`` entry holding the record. A session not imported from pi gets a header
    with its id. pi resumes at the last entry: the current head is written last when it
    is a leaf.
    """
    _write_jsonl(os.fspath(path), pi_lines(store, session_id))


def import_claude_code(store: SessionStore, path: str | os.PathLike[str], *, key: str | None = None,
                       progress: Progress | None = None) -> str:
    """Import a Claude Code transcript (``~/.claude/projects/*/<session>.jsonl``) with its
    subagents' transcripts; return the session id.

    Subagents' files are ``<session>/subagents/**/*.jsonl`` (Claude Code 2.1) and
    ``agent-*.jsonl`` of the same ``sessionId`` beside the transcript (2.0). Every line
    becomes one message (see "Record format" in this file): ``uuid`` / ``parentUuid``
    make the tree, also when a line comes before its parent; a parent that is not in
    the file makes a root (like ``compact_boundary`` lines, whose
    ``logicalParentUuid`` is kept); a file without any links reads in file order. State
    rows (``queue-operation``, ``last-prompt``, ``file-history-snapshot``, ``summary``,
    ...), lines without a uuid, repeated uuids and non-object lines are kept as roots
    and written back. Branches: ``main`` ends where Claude Code resumes (the last
    ``last-prompt`` row's ``leafUuid``, else the last line not on a sidechain) and is
    current; each agent's last line heads ``agent-<agentId>`` (without one, each
    sidechain's last line heads ``sidechain-<its first line's first 8 characters>``);
    each user turn re-sent from an earlier point (a rewind) that ``main`` left heads
    ``rewind-<its uuid's first 8 characters>`` at the newest line under it. A fork
    (its rows carry ``forkedFrom``) records where it came from in the session's
    ``forked_from``: the session imported from the source (under its default key)
    when the store has it, else the source's session id, and the source's message.

    ``key`` defaults to ``"claude-code:<sessionId>"``. Importing again under the same
    key writes only the lines added since and moves the branches. Errors as
    :func:`import_pi`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"Claude Code transcript: give a path, not {type(path).__name__}")
    source = os.path.expanduser(os.fspath(path))
    messages, head, others, session = _claude_messages(source, progress)
    at = {m.id: m.timestamp for m in messages}
    start = messages[0].timestamp if messages else 0
    branches = [Branch(name=name, head_id=h, created_at=start if h is None else at[h],
                       updated_at=start if h is None else at[h]) for name, h in [("main", head), *others.items()]]
    if key is None:
        key = f"claude-code:{session or os.path.splitext(os.path.basename(source))[0]}"
    anchor = next((m.id for m in messages if _CLAUDE.name in m.fields), None)
    forked_from = _claude_fork(store, next((m for m in messages if m.id == head), None))
    return _import(store, key, messages, branches, anchor, lambda mid: _claude_where(source, mid), forked_from)


def _claude_fork(store: SessionStore, head: Message | None) -> tuple[str, str | None] | None:
    """Where a Claude Code fork came from (its resume point's ``forkedFrom``, which
    Claude Code and the Agent SDK write on every row of a fork): the session imported
    from the source transcript (its default key) when the store has it, else the
    source's Claude Code session id; and the source's message."""
    line = _CLAUDE.line(head) if head is not None else None
    fork = line.get("forkedFrom") if isinstance(line, dict) else None
    if not isinstance(fork, dict) or not _is_name(fork.get("sessionId")):
        return None
    source: str = fork["sessionId"]
    message = fork.get("messageUuid")
    return store.resolve(f"claude-code:{source}", create=False) or source, message if _is_name(message) else None


def claude_code_messages(lines: Sequence[Any], *, after: Iterable[str] = ()) -> list[Message]:
    """The messages of Claude Code transcript lines (parsed JSON values, in file order)
    as :func:`import_claude_code` writes them, to add after a session holding the ids
    ``after``: a line's ``uuid`` is its message id, and its ``parentUuid`` its parent
    when that is among ``after`` or among ``lines`` (else it is a root); a line
    without a usable uuid is kept whole under an id none of them uses. For
    :meth:`SessionStore.import_messages`; :func:`claude_code_line` gives each line back."""
    numbered = list(enumerate(lines, 1))
    importer = _Importer(_CLAUDE, [numbered])
    importer.nodes.update(after)
    return importer.add_file(numbered)


def claude_code_line(message: Message) -> Any:
    """The Claude Code transcript line a message holds (as :func:`claude_code_messages`
    or :func:`import_claude_code` wrote it); ``InvalidInput`` for any other message."""
    line = _CLAUDE.line(message)
    if line is _ABSENT:
        raise InvalidInput(f"message {message.id!r} holds no Claude Code transcript line")
    return line


def _claude_where(source: str, message_id: str) -> tuple[str, int]:
    """The file and line number of a uuid (for an error)."""
    for file, lines in _claude_files(source):
        for n, value in lines:
            if isinstance(value, dict) and value.get("uuid") == message_id:
                return (source if file is None else file), n
    return source, 0


def export_claude_code(store: SessionStore, session_id: str, path: str | os.PathLike[str]) -> list[str]:
    """Write the session as a Claude Code transcript at ``path`` and its subagents'
    transcripts beside it, each file atomically; return the paths written, the
    transcript first.

    Imported lines are written back as they were read, to the file they came from (a
    subagent's file under ``<path without .jsonl>/`` or beside ``path``, as it was), in
    their place; other messages become user / assistant / system lines with Anthropic
    content, in their parent's file. Claude Code resumes at the current head: when the
    transcript has ``last-prompt`` rows and the head is elsewhere, one more row points
    at it; otherwise the head's line is written last when it is a leaf. With subagents'
    transcripts under its folder, ``path`` must end in ``.jsonl``
    (:class:`~session_store.InvalidInput`, nothing written).
    """
    head = store.get_head(session_id)
    messages = store.get_messages(session_id)
    target = os.fspath(path)
    files = _claude_export(session_id, messages, head)
    if any(file is not None and "/" in file for file in files) and not target.endswith(".jsonl"):
        raise InvalidInput(f"{target!r}: the session has subagent transcripts, which go in a folder named "
                           "like the transcript without .jsonl; give a path ending in .jsonl")
    written = []
    for file, lines in files.items():
        if file is None:
            where = target
        elif "/" in file:
            where = os.path.join(os.path.splitext(target)[0], *file.split("/"))
        else:
            where = os.path.join(os.path.dirname(target), file)
        _write_jsonl(where, lines)
        written.append(where)
    return written


# Rows of the conversation itself, in the parentUuid chain: where Claude Code can resume.
_CLAUDE_TURN_TYPES = frozenset({"user", "assistant", "system", "attachment", "progress"})
_CLAUDE_ROW_TYPES = frozenset({"user", "assistant", "system", "summary", "attachment", "progress", "queue-operation",
                               "last-prompt", "file-history-snapshot", "mode", "permission-mode", "ai-title",
                               "custom-title", "agent-name", "tag", "pr-link"})


def detect_format(lines: Iterable[str]) -> str | None:
    """``"pi"`` or ``"claude-code"`` when the first lines of a file are a pi session
    header or Claude Code transcript lines, else ``None`` (reads at most 20 lines)."""
    seen = 0
    for text in lines:
        if not text.strip():
            continue
        seen += 1
        if seen > 20:
            break
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        if seen == 1 and value.get("type") == "session" and isinstance(value.get("id"), str):
            return "pi"
        if ("parentUuid" in value and "uuid" in value) or (
                value.get("type") in _CLAUDE_ROW_TYPES and "sessionId" in value):
            return "claude-code"
        if value.get("type") == "summary" and "leafUuid" in value:
            return "claude-code"
    return None
