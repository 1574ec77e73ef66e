"""Command line: ``python3 session_store.py demo | ls | search | tree | history | ...`` and :func:`draw_tree`.

The commands read and write a store folder; ``import``/``export`` of transcripts and
``serve`` load their optional modules lazily and say which file is missing. What a
session holds (keys, titles, message text) is printed as one line each, its control
characters shown as escapes, never sent to the terminal.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import argparse

from .catalog import SessionStore
from .contexts import _CONTEXT_FORMATS, _CONTEXT_READERS, _RECOGNIZERS, _call, _kind, read_turns
from .errors import InvalidInput, SessionStoreError, _log
from .jsonl_storage import JsonlStorage
from .log_format import _dumps, _encode_line
from .real_file_system import RealFileSystem
from .records import Message, SessionMetadata, __version__
from .searching import search_words

# What a person reads of a record, on the lines tree and history print: text as text;
# each tool call by name and arguments ("[call add {"a":1}]", OpenAI Chat tool_calls,
# Responses function_call items, Anthropic tool_use and pi toolCall blocks alike); each
# result with the name of the call it answers when the session has that call; images,
# thinking and anything else named; never an empty line.

_TEXT_KINDS = frozenset({"text", "input_text", "output_text", "summary_text"})
_CALL_KINDS = frozenset({"tool_use", "server_tool_use", "toolCall", "function_call", "custom_tool_call"})
_RESULT_KINDS = frozenset({"tool_result", "web_search_tool_result", "function_call_output",
                           "custom_tool_call_output"})


def _arguments(value: Any) -> str:
    """Tool-call arguments on one line: JSON (also when given as a JSON string)."""
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text)
        except ValueError:
            return text
    return "" if value is None else _dumps(value)


def _call_shown(name: str, arguments: Any) -> str:
    shown = _arguments(arguments)
    return f"[call {name or '(unnamed)'}{' ' + shown if shown else ''}]"


def _declared_calls(m: Message) -> list[tuple[str, str, Any]]:
    """``(call id, tool name, arguments)`` of the calls given beside the content: OpenAI
    Chat's ``tool_calls`` (and legacy ``function_call``), the tutorial's ``{id, name,
    params}``, or the record itself when it is a Responses ``function_call`` item."""
    declared = m.fields.get("tool_calls")
    blocks = [c for c in declared if isinstance(c, dict)] if isinstance(declared, list) else []
    if isinstance(m.fields.get("function_call"), dict):
        blocks.append({"function": m.fields["function_call"]})
    if m.type in _CALL_KINDS:
        blocks.append({**m.fields, "type": m.type})
    calls = [_call(block, "") for block in blocks]
    return [(c.id, c.name if c.name != "unknown" else "", c.given) for c in calls]


def _calls_of(m: Message) -> list[tuple[str, str, Any]]:
    """Every call ``m`` makes: in its content (Anthropic, Responses, pi blocks) and beside it."""
    blocks = m.content if isinstance(m.content, list) else [m.content] if isinstance(m.content, dict) else []
    calls = [_call(b, "") for b in blocks if isinstance(b, dict) and _kind(b) in _CALL_KINDS]
    return [(c.id, c.name if c.name != "unknown" else "", c.given) for c in calls] + _declared_calls(m)


def _call_names(messages: Iterable[Message]) -> dict[str, str]:
    """Each call id of ``messages`` -> its tool's name (to name the results)."""
    names: dict[str, str] = {}
    for m in messages:
        for call_id, name, _ in _calls_of(m):
            if call_id and name:
                names[call_id] = name
    return names


def _result_shown(call_id: Any, content: Any, names: dict[str, str], error: bool = False) -> str:
    text = _shown(content, names).strip() or "(empty)"
    name = names.get(call_id) if isinstance(call_id, str) else None
    what = f"of {name}" if name else f"for {call_id}" if isinstance(call_id, str) and call_id else ""
    return f"[{'error' if error else 'result'}{' ' + what if what else ''}: {text}]"


def _block_shown(block: Any, names: dict[str, str]) -> tuple[str, str]:
    """One content block as ``(kind, text)``: kind ``text``, ``thinking`` or ``other``."""
    if isinstance(block, str):
        return "text", block
    if not isinstance(block, dict):
        return "other", _dumps(block)
    kind = _kind(block)
    if kind in _TEXT_KINDS and isinstance(block.get("text"), str):
        return "text", block["text"]
    if kind == "refusal" and isinstance(block.get("refusal"), str):
        return "text", block["refusal"]
    if kind in ("thinking", "redacted_thinking", "reasoning"):
        thought = block.get("thinking")
        summary = block.get("summary")
        if not isinstance(thought, str) and isinstance(summary, list):
            thought = " ".join(s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str))
        return "thinking", f"[{kind}{': ' + thought if isinstance(thought, str) and thought else ''}]"
    if kind in ("image", "image_url", "input_image"):
        return "text", "[image]"
    if kind in _CALL_KINDS:
        call = _call(block, "")
        return "text", _call_shown(call.name if call.name != "unknown" else "", call.given)
    if kind in _RESULT_KINDS:
        call_id = block.get("tool_use_id", block.get("call_id"))
        return "text", _result_shown(call_id, block.get("content", block.get("output")), names,
                                     block.get("is_error") is True)
    if kind == "message" and "content" in block:  # a Responses message item
        return "text", _shown(block["content"], names)
    return "other", _dumps(block)


def _shown(content: Any, names: dict[str, str] | None = None) -> str:
    """Content as a person reads it: text blocks as text, tool calls by name and
    arguments, results with the name of their call (``names``: call id -> tool
    name), images as ``[image]``, thinking only when there is nothing else; other
    values as JSON."""
    if content is None or isinstance(content, str):
        return content or ""
    blocks = content if isinstance(content, list) else [content]
    shown = [_block_shown(block, names or {}) for block in blocks]
    said = [text for kind, text in shown if kind != "thinking" and text]
    return "\n".join(said or [text for kind, text in shown if text])


def _shown_message(m: Message, names: dict[str, str] | None = None) -> str:
    """A record as a person reads it, never empty (see the banner above). One held as
    an object (a framework's message or a Responses item, as the integrations store
    them) is read as :meth:`SessionStore.build_context` reads it (:func:`read_turns`);
    a tool result record (OpenAI's ``tool`` role, pi's ``toolResult``) shows its text."""
    names = names if names is not None else _call_names([m])
    if isinstance(m.content, dict) or (
            m.content.__class__ is not str and any(recognizes(m) for recognizes in list(_RECOGNIZERS.values()))):
        turns = read_turns(m)
        pieces = [_shown(t.content, names) if t.role != "tool" or len(turns) == 1 else
                  _result_shown(t.fields.get("tool_call_id"), t.content, names, t.fields.get("is_error") is True)
                  for t in turns]
        if any(pieces):
            return "\n".join(p for p in pieces if p)
        if _read_by_type(m):  # a framework's bookkeeping (a LangGraph value or write): not its bytes
            return f"[{m.type}]"
    if m.role in ("tool", "toolResult", "function") or m.type in _RESULT_KINDS:
        text = _shown(m.fields.get("output", m.content) if m.content is None else m.content, names)
        return text or "(empty result)"
    text = "\n".join(t for t in (_shown(m.content, names),
                                *(_call_shown(name, arguments) for _, name, arguments in _declared_calls(m))) if t)
    if text:
        return text
    if m.content not in (None, "", [], {}):
        return _dumps(m.content)
    return f"[{m.type}]" if m.type != m.role else "(empty)"


def _read_by_type(m: Message) -> bool:
    """Whether a registered reader reads ``m`` by its type (see
    :func:`register_context_reader`), as session_store_langgraph's records."""
    return m.type != m.role and m.type.partition(".")[0] in _CONTEXT_READERS


def _subagent(m: Message) -> str | None:
    """The agent whose conversation ``m`` belongs to, when it is a Claude Code subagent's
    (a sidechain line, or a line of a subagent's transcript), else ``None``."""
    line = m.fields.get("claude_code")
    if not isinstance(line, dict):
        return None
    agent = line.get("agentId")
    if line.get("isSidechain") is True or m.fields.get("claude_code_file"):
        return agent if isinstance(agent, str) and agent else "sidechain"
    return None


def _first_line(m: Message, width: int, names: dict[str, str] | None = None) -> str:
    text = _shown_message(m, names)
    agent = _subagent(m)
    line = text.strip().splitlines()[0] if text.strip() else "(empty)"
    line = _plain(f"[subagent {agent}] {line}" if agent else line)
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


# What a terminal would obey rather than show: C0 and C1 controls (escape sequences, line
# breaks, backspace), line and paragraph separators, bidirectional overrides (which can
# make a line read other than it is), and lone surrogates (which cannot be printed).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")


def _plain(text: str) -> str:
    """``text`` safe to print as (part of) one terminal line: each character a terminal
    would obey (see ``_UNPRINTABLE``) shown as its Python escape (``\\x1b``, ``\\n``)."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)


def _when(ms: int) -> str:
    """A time in ms since the epoch as local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


_SHORT_ID = 8  # characters of an id that tree and branches show, at least


def _short_ids(ids: Iterable[str]) -> dict[str, str]:
    """Each id's shortest prefix of at least 8 characters that no other id starts with
    (the whole id when it is a prefix of another), as ``git log --abbrev-commit``."""
    ordered = sorted(set(ids))
    short: dict[str, str] = {}
    for i, mid in enumerate(ordered):
        common = 0  # the longest prefix shared with a neighbour in sorted order: with any other id
        for other in (ordered[i - 1] if i else "", ordered[i + 1] if i + 1 < len(ordered) else ""):
            n = 0
            while n < min(len(mid), len(other)) and mid[n] == other[n]:
                n += 1
            common = max(common, n)
        short[mid] = mid[:max(_SHORT_ID, common + 1)]
    return short


def _by_prefix(what: str, given: str, ids: Iterable[str]) -> str | None:
    """The one id that is ``given`` or starts with it (at least 4 characters, as git
    takes); ``None`` when none does; :class:`_UsageError` when several do."""
    matches = []
    for candidate in ids:
        if candidate == given:
            return candidate
        if len(given) >= 4 and candidate.startswith(given):
            matches.append(candidate)
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
        raise _UsageError(f"{what} {given!r} is ambiguous: it starts {len(matches)} ids ({shown}); give more of it")
    return matches[0] if matches else None


def draw_tree(store: SessionStore, session_id: str, *, width: int = 100) -> list[str]:
    """The session's message tree as text lines, one per message, like ``git log --graph``.

    Each line shows the role, the message's short id (its shortest unique prefix of at
    least 8 characters, which every command accepts) and the content's first line (a
    tool call as ``[call NAME ARGUMENTS]``, a result as ``[result of NAME: ...]``; a
    Claude Code subagent's lines start ``[subagent AGENT]``: its conversation is not
    the main one's); branch names pointing at a message follow it in brackets, the
    current branch marked ``*``. A chain of messages stays in one column: at a fork
    the smaller subtrees are drawn first, each one column to the right behind ``├─``
    while the line it left runs on (``│``), and the largest continues in the fork's
    own column, so the width grows with the log of the tree's size, not its depth.
    Lines are cut to ``width``.
    """
    current = store.get_current_branch(session_id)
    labels: dict[str, list[str]] = {}
    for b in store.get_branches(session_id):
        if b.head_id is not None:
            labels.setdefault(b.head_id, []).append(b.name + ("*" if b.name == current else ""))
    messages = store.get_messages(session_id)
    short = _short_ids(m.id for m in messages)
    names = _call_names(messages)
    children: dict[str | None, list[Message]] = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m)
    size: dict[str, int] = {}
    for m in reversed(messages):  # children come after their parent: sizes bottom up
        size[m.id] = 1 + sum(size[c.id] for c in children.get(m.id, ()))
    out: list[str] = []
    # (message, prefix for its line, prefix for the lines under it); iterative: trees can be deep
    stack: list[tuple[Message, str, str]] = [(root, "", "") for root in reversed(children.get(None, []))]
    while stack:
        msg, prefix, rail = stack.pop()
        tag = f"  [{', '.join(labels[msg.id])}]" if msg.id in labels else ""
        head = f"{prefix}{msg.role} {short[msg.id]}  "
        if len(head) + len(tag) > width:
            tag = tag[:max(0, width - len(head))]
        out.append((head + _first_line(msg, width - len(head) - len(tag), names) + tag)[:width])
        kids = children.get(msg.id, [])
        if not kids:
            continue
        heaviest = max(range(len(kids)), key=lambda i: (size[kids[i].id], i))  # ties: the newest
        stack.append((kids[heaviest], rail, rail))  # drawn after the others, in this column
        sides = [k for i, k in enumerate(kids) if i != heaviest]
        for side in reversed(sides):
            stack.append((side, rail + "├─ ", rail + "│  "))
    return out


def _demo(storage_dir: str) -> int:
    with SessionStore(storage_dir=storage_dir) as store:
        sid = store.resolve(f"demo:{uuid.uuid4().hex[:6]}")
        q = store.append(sid, role="user", content="What's a good name for a cat?")
        store.append(sid, role="assistant", content="How about Miso? Short, warm, and easy to call.")
        store.append(sid, role="user", content="Something more regal, please.")
        store.append(sid, role="assistant", content="Then: Duchess Pemberton the Third.")
        alt = store.append(sid, role="assistant", content="Try Pixel: playful and modern.", parent_id=q.id)
        store.create_branch(sid, "alternative", alt.id)
        store.switch_to_branch(sid, "alternative")
        store.append(sid, role="user", content="I like Pixel! Why that one?")
        store.append(sid, role="assistant", content="It is short, fun to say, and suits a curious cat.")
        print(f"session {sid}  (key {store.get_metadata(sid).key!r}, "  # type: ignore[union-attr]
              f"{len(store.get_messages(sid))} messages, stored in {os.path.abspath(storage_dir)})")
        for line in draw_tree(store, sid):
            print("  " + line)
        print("\ncurrent branch:", store.get_current_branch(sid))
        for m in store.get_linear_history(sid):
            print(f"  {m.role:>9}: {m.content}")
    return 0


class _UsageError(Exception):
    """A command-line mistake: one line on stderr, exit status 2."""


_ROLE_COLOURS = {"user": "32", "assistant": "36", "system": "33", "tool": "35", "reset": "31"}


class _Output:
    """Where the command line writes: colour and progress only on a terminal (and
    colour only without ``NO_COLOR``); plain text into pipes and files."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR")
        self.progress_on = sys.stderr.isatty()

    def role(self, role: str) -> str:
        code = _ROLE_COLOURS.get(role)
        return f"\033[{code}m{role}\033[0m" if self.colour and code else role

    def progress(self, done: int, total: int, what: str) -> None:
        """``what done/total`` on stderr's last line (a terminal only), erased when done."""
        if self.progress_on:
            sys.stderr.write(f"\r{what} {done}/{total}\033[K" if done < total else "\r\033[K")
            sys.stderr.flush()

    def row(self, text: str) -> None:
        """A line of output, on a line of its own even while progress is shown."""
        if self.progress_on:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        print(text, flush=self.progress_on)


def _open_existing(directory: str) -> SessionStore:
    """A store on ``directory`` for a reading command: it must exist and be a store
    (or be empty); nothing is written to open it."""
    if not os.path.isdir(directory):
        raise _UsageError(f"no store at {directory} (use --dir)")
    storage = JsonlStorage(RealFileSystem(), directory)
    if not storage.is_store():
        raise _UsageError(f"{directory} is not a session store (no session-store.json, keys/ or keys.jsonl); "
                          "use --dir")
    return SessionStore(storage)


def _find_session(store: SessionStore, session_or_key: str) -> str:
    """A session id, the session of a key, or the session whose id starts with the
    given text (at least 4 characters); never creates one."""
    if store.has_session(session_or_key):
        return session_or_key
    if store.has_key(session_or_key):
        return store.resolve(session_or_key)
    found = _by_prefix("session id", session_or_key, store.get_all_session_ids())
    if found is None:
        raise _UsageError(f"no session or key {session_or_key!r}")
    return found


def _find_message(store: SessionStore, session_id: str, message_id: str) -> str:
    """A message id of the session, or the one that starts with the given text."""
    found = _by_prefix("message id", message_id, (m.id for m in store.get_messages(session_id)))
    if found is None:
        raise _UsageError(f"no message {message_id!r} in session {session_id}")
    return found


_TRANSCRIPTS = "session_store_transcripts"


def _optional(name: str, what: str, *, needed: bool = True) -> Any:
    """An optional module (``integrations/<name>.py``), imported when a command needs
    it: installed, beside this file, or in ``integrations/`` beside it (a checkout).
    :class:`_UsageError` naming the file when it is missing and ``needed``."""
    sys.modules.setdefault("session_store", sys.modules[__name__])  # run as a script: one module, not two
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if e.name != name:
            raise
    where = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integrations", name + ".py")
    if os.path.isfile(where):
        spec = importlib.util.spec_from_file_location(name, where)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
    if needed:
        raise _UsageError(f"{what} need{'s' if not what.endswith('s') else ''} {name}.py (integrations/ in "
                          "session-store) installed or beside session_store.py")
    return None


# The integrations that store a framework's messages whole, each registering the reader
# the command line shows them with (see _framework_readers).
_FRAMEWORK_INTEGRATIONS = ("session_store_langchain", "session_store_pydantic_ai", "session_store_llama_index",
                           "session_store_langgraph")
_FRAMEWORKS_LOADED: list[bool] = []  # [True] once tried: at most once per process


def _framework_readers(messages: Iterable[Message] | None) -> None:
    """Import the framework integrations that can be (their framework installed), the
    first time a session shown holds a record whose content is an object, as they
    store a LangChain, pydantic-ai or LlamaIndex message or a LangGraph checkpoint
    (``None``: whatever a server will be asked to show): their readers then show what
    the framework said, not its JSON. Never for other sessions (importing a framework takes seconds); one that
    cannot be imported is left out (its records show as JSON)."""
    if _FRAMEWORKS_LOADED or (messages is not None and not any(isinstance(m.content, dict) for m in messages)):
        return
    _FRAMEWORKS_LOADED.append(True)
    for name in _FRAMEWORK_INTEGRATIONS:
        try:
            _optional(name, name, needed=False)
        except Exception as e:  # its framework is not installed, or fails to import: shown as JSON
            _log.debug("%s not loaded: %s", name, e)


def _transcripts(*, needed: bool = True) -> Any:
    """The optional module for pi and Claude Code transcripts (see :func:`_optional`)."""
    return _optional(_TRANSCRIPTS, "pi and Claude Code transcripts", needed=needed)


def _first_lines(path: str, count: int = 20) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return list(itertools.islice(f, count))
    except (OSError, UnicodeDecodeError) as e:
        raise _UsageError(f"cannot read {path}: {e}") from None


def _detect_format(path: str) -> str:
    """``native``, ``pi`` or ``claude-code`` from a file's first lines."""
    lines = _first_lines(path)
    first = next((line for line in lines if line.strip()), "")
    try:
        value = json.loads(first)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("session"), dict):
        return "native"
    detected = _transcripts(needed=False)
    found = detected.detect_format(lines) if detected is not None else None
    if found is None:
        raise _UsageError(f"{path} is neither a session-store export, a pi session nor a Claude Code transcript"
                          + ("" if detected is not None else f" (or {_TRANSCRIPTS}.py is missing)")
                          + "; give --format")
    return str(found)


def _import_file(store: SessionStore, path: str, key: str | None, out: _Output) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _UsageError(f"cannot read {path}: {e}") from None
    out.progress(len(raw), len(raw), "reading")
    try:
        return store.restore_session(raw, key=key)
    except InvalidInput as e:
        if type(e) is not InvalidInput:
            raise
        raise _UsageError(f"{path}: {e}") from None


def _empty_history(store: SessionStore, sid: str, args: Any) -> str:
    """What ``history`` says instead of nothing: which branch is empty, and where the
    messages are when the session has some (a cleared branch keeps them in the tree)."""
    if args.last == 0:
        return "(no messages: --last 0)"
    branch = args.branch if args.branch is not None else store.get_current_branch(sid)
    count = len(store.get_messages(sid))
    if not count:
        return f"(branch {_plain(branch)} is empty: the session has no messages)"
    held = "1 message is" if count == 1 else f"{count:,} messages are"
    return f"(branch {_plain(branch)} is empty; the session's {held} in its tree: session-store tree {sid})"


def _imported(store: SessionStore, sid: str, added: int | None, path: str) -> str:
    """The line ``import`` prints: how many messages (``added``: into a session that was
    there, ``None``: a new one), under which key, in which session."""
    meta = store.get_metadata(sid)
    total = meta.message_count if meta is not None else len(store.get_messages(sid))
    key = _plain(meta.key) if meta is not None else "?"
    plural = "" if total == 1 else "s"
    if added is None:
        return f"imported {total:,} message{plural} as key {key} (session {sid})"
    if not added:
        return f"nothing new in {_plain(path)}: key {key} (session {sid}) has its {total:,} message{plural}"
    return (f"imported {added:,} new message{'' if added == 1 else 's'} into key {key} (session {sid}; "
            f"{total:,} in all)")


def _message_size(m: Message) -> int:
    return len(_encode_line(m.to_record()))


def _branch_command(store: SessionStore, sid: str, args: Any) -> int:
    """``branch move|create|switch|delete|rename``: one line saying what was done."""
    action = args.action
    if action == "move":
        if args.message is None and not args.empty:
            raise _UsageError("branch move needs a MESSAGE (a message id or its first characters), or --empty")
        target = None if args.empty else _find_message(store, sid, args.message)
        moved = store.move_head(sid, target, branch=args.branch)
        print(f"{moved.name}: head {moved.head_id or '(empty)'}")
    elif action == "create":
        made = store.create_branch(sid, args.name, _find_message(store, sid, args.message))
        print(f"{made.name}: head {made.head_id}")
    elif action == "switch":
        head = store.switch_to_branch(sid, args.name)
        print(f"{args.name}: current, head {head or '(empty)'}")
    elif action == "delete":
        gone = store.delete_branch(sid, args.name)
        print(f"{gone.name}: deleted (its messages stay)")
    else:
        renamed = store.rename_branch(sid, args.old, args.new)
        print(f"{args.old} -> {renamed.name}")
    return 0


_KEY_WIDTH = 40  # a column of keys is padded to the longest, up to this; longer ones push the line on


def _column(texts: Iterable[str]) -> int:
    return min(max((len(t) for t in texts), default=0), _KEY_WIDTH)


def _ls(store: SessionStore, args: Any) -> int:
    """``ls``: the sessions, newest first (:meth:`SessionStore.list_sessions`)."""
    sessions = store.list_sessions(key_prefix=args.prefix, limit=args.limit)
    if args.json:
        print(json.dumps([{"sessionId": m.session_id, "key": m.key, "messages": m.message_count,
                           "branches": m.branch_count, "updatedAt": m.updated_at, "title": m.title,
                           "preview": m.preview} for m in sessions], ensure_ascii=False, indent=2))
        return 0
    keys = [_plain(m.key) for m in sessions]
    width = _column(keys)
    for m, key in zip(sessions, keys, strict=True):
        print(f"{m.session_id}  {m.message_count:>6} msgs  {m.branch_count:>3} branches  {_when(m.updated_at)}  "
              f"{key:<{width}}  {_plain(m.title or '')}".rstrip())
    return 0


def _search(store: SessionStore, args: Any, out: _Output) -> int:
    """``search``: one line per hit (:meth:`SessionStore.search`), best first."""
    hits = store.search(args.query, key_prefix=args.prefix, limit=args.limit,
                        include_archived=not args.no_archived)
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in hits], ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("no matches" if search_words(args.query) else "no matches (the query has no words to look for)")
        return 0
    names = [_plain(h.key) if h.key else h.session_id[:_SHORT_ID] for h in hits]
    width = _column(names)
    roles = max(len(_plain(h.role)) for h in hits)
    for h, name in zip(hits, names, strict=True):
        role = _plain(h.role)
        print(f"{name:<{width}}  {h.message_id[:_SHORT_ID]}  {out.role(role)}{' ' * (roles - len(role))}  "
              f"{'[archived]' if h.archived else h.place:<10}  {_plain(h.snippet)}")
    return 0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> int:
    """``--older-than``: a whole number and one unit (``45s``, ``90m``, ``12h``,
    ``30d``, ``2w``) as seconds; anything else is a usage error."""
    import argparse

    found = re.fullmatch(r"(\d{1,9})([smhdw])", text)
    if found is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: give a whole number and a unit: "
                                         "45s, 90m, 12h, 30d or 2w")
    return int(found[1]) * _DURATION_UNITS[found[2]]


def _prune(store: SessionStore, args: Any) -> int:
    """``prune``: delete (``--dry-run``: name) the sessions not written for a while
    (:meth:`SessionStore.prune`), saying what was kept and why."""
    known: dict[str, SessionMetadata] = {m.session_id: m for m in store.list_sessions(key_prefix=args.prefix)}
    report = store.prune(older_than=args.older_than, key_prefix=args.prefix, dry_run=args.dry_run,
                         archive_to=args.archive)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), ensure_ascii=False, indent=2))
        return 0

    def named(sid: str) -> str:
        m = known.get(sid)
        if m is None:
            return sid
        return f"{sid}  {_plain(m.key)}  last written {_when(max(m.updated_at, m.created_at))}" + (
            f"  {_plain(m.title)}" if m.title else "")

    for sid in report.deleted:
        print(f"{'would delete' if report.dry_run else 'deleted'}  {named(sid)}")
    for sid in report.kept_leased:
        print(f"kept (leased)  {named(sid)}")
    for sid in report.kept_written:
        print(f"kept (written meanwhile)  {named(sid)}")
    for path in report.archived:
        print(f"archived  {_plain(path)}")
    n = len(report.deleted)
    kept = (f"; kept {len(report.kept_leased)} leased, {len(report.kept_written)} written meanwhile"
            if report.kept_leased or report.kept_written else "")
    if report.dry_run:
        where = f" (and archive to {_plain(args.archive)})" if args.archive and n else ""
        print(f"dry run: would delete {n} session(s){where}, freeing {report.bytes_freed:,} bytes{kept}; "
              "nothing was deleted")
    else:
        print(f"deleted {n} session(s), freed {report.bytes_freed:,} bytes{kept}")
    return 0


def _title(store: SessionStore, sid: str, args: Any) -> int:
    """``title``: print the session's title, set it, or (``--clear``) take it away."""
    if args.clear and args.title is not None:
        raise _UsageError("title: give a TITLE or --clear, not both")
    if args.title is None and not args.clear:
        meta = store.get_metadata(sid)
        title = meta.title if meta is not None else None
        print(_plain(title) if title else "(no title)")
        return 0
    store.set_title(sid, None if args.clear else args.title)
    meta = store.get_metadata(sid)
    key = _plain(meta.key) if meta is not None else sid
    if args.clear:
        shown = meta.title if meta is not None else None
        print(f"{key}: title cleared" + (f" (shown as its first message: {_plain(shown)})" if shown else ""))
    else:
        print(f"{key}: title {_plain(args.title)}")
    return 0


def _run(args: Any, out: _Output) -> int:
    command = args.command
    if command == "demo":
        return _demo(args.dir)
    if command == "import":
        fmt = args.format or _detect_format(args.file)
        transcripts = _transcripts() if fmt != "native" else None
        os.makedirs(args.dir, exist_ok=True)
        with SessionStore(storage_dir=args.dir) as store:
            created: set[str] = set()
            added: dict[str, int] = {}  # messages written into a session that was there (an import again)

            def note(event: Any) -> None:
                if event.type == "session.created":
                    created.add(event.session_id)
                elif event.type == "message.added":
                    added[event.session_id] = added.get(event.session_id, 0) + 1
            stop = store.subscribe(note)
            try:
                if transcripts is None:
                    sid = _import_file(store, args.file, args.key, out)
                else:
                    read = transcripts.import_pi if fmt == "pi" else transcripts.import_claude_code
                    sid = read(store, args.file, key=args.key,
                               progress=lambda done, total: out.progress(done, total, f"reading {fmt}"))
            finally:
                stop()
            print(_imported(store, sid, None if sid in created else added.get(sid, 0), args.file))
        return 0
    if command in ("view", "serve"):  # an optional file, imported only for these commands
        view = _optional("session_store_view", f"session-store {command}")
        with _open_existing(args.dir) as store:
            shown = _find_session(store, args.session) if command == "view" else None
            # the page shows framework messages as their readers read them: for a server,
            # whatever session it is asked for (loaded once, before the first request)
            _framework_readers(store.get_messages(shown) if shown is not None else None)
            return int(view.cli(store, args, shown))
    with _open_existing(args.dir) as store:
        if command == "ls":
            return _ls(store, args)
        if command == "search":
            return _search(store, args, out)
        if command == "prune":
            return _prune(store, args)
        if command == "check":
            report = store.repair() if args.repair else store.check()
            for line in report.fixed:
                print(f"fixed: {line}")
            for p in report.problems:
                where = p.file + (f" @ {p.offset}" if p.offset is not None else "")
                print(f"problem: {where}: {p.reason}")
            print(f"{report.sessions_checked} session(s) checked: " + ("ok" if report.ok else
                                                                       f"{len(report.problems)} problem(s)"))
            return 0 if report.ok else 1
        if command == "stats":
            ids = store.get_all_session_ids()
            total_messages = total_bytes = 0
            for i, sid in enumerate(ids, 1):
                messages = store.get_messages(sid)
                size = sum(_message_size(m) for m in messages)
                total_messages += len(messages)
                total_bytes += size
                out.row(f"{sid}  {len(messages):>7} messages  {len(store.get_branches(sid)):>4} branches  "
                        f"{size:>10} bytes")
                out.progress(i, len(ids), "sessions")
            out.row(f"total: {len(ids)} sessions, {total_messages} messages, {total_bytes} bytes of records")
            return 0
        sid = _find_session(store, args.session)
        if command == "title":
            return _title(store, sid, args)
        if command == "branch":
            return _branch_command(store, sid, args)
        if command == "fork":
            at = _find_message(store, sid, args.at) if args.at else None
            print(store.fork_session(sid, at, key=args.key))
            return 0
        if command == "tree":
            _framework_readers(store.get_messages(sid))
            width = min(shutil.get_terminal_size((100, 24)).columns, 120) if out.tty else 100
            for line in draw_tree(store, sid, width=width):
                print(re.sub(r"(^|[─ ])(user|assistant|system|tool|reset)(?= )",
                             lambda m: m.group(1) + out.role(m.group(2)), line, count=1))
            return 0
        if command == "branches":
            current = store.get_current_branch(sid)
            branches = store.get_branches(sid)
            short = _short_ids(m.id for m in store.get_messages(sid))
            for b in branches:
                mark = "*" if b.name == current else " "
                print(f"{mark} {b.name}  {short.get(b.head_id, '(empty)') if b.head_id else '(empty)'}")
            return 0
        if command == "history":
            leaf: str | None = None  # the current head, read with its path (--last: without loading the session)
            empty = False
            if args.branch is not None:
                branch = store.get_branch(sid, args.branch)
                if branch is None:
                    raise _UsageError(f"no branch {args.branch!r} in session {sid}")
                leaf, empty = branch.head_id, branch.head_id is None
            elif args.leaf is not None:
                leaf = _find_message(store, sid, args.leaf)
            if args.format in _CONTEXT_FORMATS:
                _transcripts(needed=False)  # reads the transcripts it imported, when it is there
                _framework_readers(store.get_messages(sid))  # and the frameworks' records
                context: Any = ([] if args.format == "openai" else {"messages": []}) if empty else store.build_context(
                    sid, leaf, format=args.format, limit=args.last)
                print(json.dumps(context, ensure_ascii=False, indent=2))
                return 0
            path = [] if empty else store.get_linear_history(sid, leaf, limit=args.last)
            if args.format == "json":
                print(json.dumps([m.to_record() for m in path], ensure_ascii=False, indent=2))
            elif not path:
                print(_empty_history(store, sid, args))
            else:
                _framework_readers(path)
                names = _call_names(path)
                for m in path:
                    agent = _subagent(m)
                    shown = _shown_message(m, names)
                    if shown == f"[{m.type}]" and _read_by_type(m):
                        continue  # it said nothing (a LangGraph checkpoint that added no message)
                    print(f"{out.role(m.role)}{f' [subagent {_plain(agent)}]' if agent else ''}: {shown}")
            return 0
        if command == "export":
            if args.format in ("pi", "claude-code"):
                transcripts = _transcripts()
                if args.format == "claude-code":
                    if not args.output:
                        raise _UsageError("export --format claude-code writes files: give -o FILE")
                    for written in transcripts.export_claude_code(store, sid, args.output):
                        print(written)
                    return 0
                if args.output:
                    transcripts.export_pi(store, sid, args.output)
                    return 0
                lines = [_dumps(line) for line in transcripts.pi_lines(store, sid)]
            else:
                lines = store.export_session(sid)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
            else:
                print("\n".join(lines))
            return 0
    raise _UsageError(f"unknown command {command!r}")  # pragma: no cover - argparse checks


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse, imported when the command line runs (not by every user of the store)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
            raise _UsageError(f"{message} (see {self.prog} --help)")

    return Parser


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m session_store [--dir DIR] COMMAND`` (see ``--help``).

    Commands: ``demo``, ``ls``, ``search``, ``title``, ``prune``, ``tree``, ``history``,
    ``branches``, ``branch`` (move, create, switch, delete, rename), ``fork``, ``export``,
    ``import``, ``check``, ``stats``, ``view`` and ``serve`` (the last two import the optional
    ``session_store_view`` when they run). Mistakes print one line on stderr and exit
    2; ``check`` exits 1 when it finds problems.
    """
    import argparse

    _Parser = _parser_class()
    common = _Parser(add_help=False)
    common.add_argument("--dir", default=argparse.SUPPRESS, help="storage directory (default ./sessions)")
    parser = _Parser(prog="session-store", parents=[common],
                     description=__doc__.splitlines()[0] if __doc__ else "",
                     epilog="SESSION_OR_KEY: a key, a session id or its first characters (at least 4). "
                            "`session-store COMMAND --help` says more about each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                                title="commands")
    sub.add_parser("demo", parents=[common], help="write a demo conversation with two branches and print its tree")
    p = sub.add_parser("ls", parents=[common], help="sessions, newest first: id, message and branch counts, "
                                                     "last write, key, title")
    p.add_argument("--prefix", metavar="P", help="only sessions whose key starts with P (one user's: user:alice:)")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N (1 to 1000)")
    p.add_argument("--json", action="store_true", help="as JSON (with each title and first message)")
    p = sub.add_parser("search", parents=[common], help="messages holding every word of a query, best first",
                       description="Find the messages holding every word of QUERY (any case; quotes, OR, * and - "
                                   "are words like any other), in every branch and in history a reset archived. "
                                   "One line per hit: key, message id, role, where it stands (current: on the "
                                   "current path; branch: elsewhere in the tree; [archived]: before a reset), "
                                   "and the text around the first word found. Exit 0, also with no matches.")
    p.add_argument("query", metavar="QUERY", help="words to find (quote it to pass several)")
    p.add_argument("--prefix", metavar="P", help="only sessions whose key starts with P")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N hits (default 20, at most 1000)")
    p.add_argument("--no-archived", action="store_true", help="leave out history a reset archived")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = sub.add_parser("prune", parents=[common], help="delete sessions not written for a while (--dry-run: list "
                                                        "them)",
                       description="Delete whole sessions whose last write (message, branch change or title; never a "
                                   "read) is older than --older-than. A session whose lease is held, or that is "
                                   "written while prune runs, is kept and said so. --archive writes each one first "
                                   "as DIR/<session id>.jsonl, which `session-store import` brings back.")
    p.add_argument("--older-than", required=True, type=_duration, metavar="AGE",
                   help="a whole number and a unit: 45s, 90m, 12h, 30d or 2w")
    p.add_argument("--prefix", metavar="P", help="only sessions whose key starts with P")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted; write nothing")
    p.add_argument("--archive", metavar="DIR", help="write each session to DIR (made if missing) before deleting it")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p = sub.add_parser("title", parents=[common], help="print, set or --clear a session's title",
                       description="Without TITLE, print the session's title (the one set, else its first user "
                                   "message, shortened). With TITLE, set it: one line of 1 to 200 characters. "
                                   "--clear takes a set title away.")
    p.add_argument("session", metavar="SESSION_OR_KEY", help="a key, a session id or its first characters")
    p.add_argument("title", metavar="TITLE", nargs="?", help="the new title")
    p.add_argument("--clear", action="store_true", help="take the title away (the first message shows again)")
    for name, what in (("tree", "draw the message tree, like git log --graph: one line a message"),
                       ("branches", "list the branches, * marks the current"),
                       ("history", "the messages from the root to the current head (or a leaf, a branch)"),
                       ("export", "write a session as JSONL: native, a pi session or a Claude Code transcript")):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("session", metavar="SESSION_OR_KEY", help="a key, a session id or its first characters")
        if name == "history":
            which = p.add_mutually_exclusive_group()
            which.add_argument("--leaf", help="a message id or its first characters (default: the current head)")
            which.add_argument("--branch", help="a branch name")
            p.add_argument("--format", choices=["text", "json", *_CONTEXT_FORMATS], default="text",
                           help="text, the stored records as json, or an openai / anthropic context")
            p.add_argument("--last", type=int, metavar="N",
                           help="only the path's last N messages (of a long session: read from the end of its log, "
                                "not loaded whole)")
        if name == "export":
            p.add_argument("-o", "--output", help="file to write (default: stdout)")
            p.add_argument("--format", choices=["native", "pi", "claude-code"], default="native",
                           help="native (re-importable here), a pi session file, or a Claude Code transcript")
    p = sub.add_parser("branch", parents=[common], help="move a head (undo, rewind, redo), create, switch, delete "
                                                         "or rename a branch; messages are never deleted")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    a = actions.add_parser("move", parents=[common], help="move the head of the current branch (or --branch)")
    a.add_argument("session", metavar="SESSION_OR_KEY")
    a.add_argument("message", nargs="?", help="the message id (or its first characters) to move the head to")
    a.add_argument("--empty", action="store_true", help="make the branch empty instead")
    a.add_argument("--branch", help="the branch to move (default: the current one)")
    a = actions.add_parser("create", parents=[common], help="a new branch at a message")
    a.add_argument("session", metavar="SESSION_OR_KEY")
    a.add_argument("name")
    a.add_argument("message", help="the message id (or its first characters) it points at")
    for action, what in (("switch", "make a branch the current one"), ("delete", "delete a branch, not its messages")):
        a = actions.add_parser(action, parents=[common], help=what)
        a.add_argument("session", metavar="SESSION_OR_KEY")
        a.add_argument("name")
    a = actions.add_parser("rename", parents=[common], help="rename a branch")
    a.add_argument("session", metavar="SESSION_OR_KEY")
    a.add_argument("old")
    a.add_argument("new")
    p = sub.add_parser("fork", parents=[common], help="a new session holding the path to a message; prints its id")
    p.add_argument("session", metavar="SESSION_OR_KEY")
    p.add_argument("--at", help="the message (id or first characters; default: the current head)")
    p.add_argument("--key", help="the new session's key (default: fork:<its id>)")
    p = sub.add_parser("import", parents=[common], help="import a native export, pi session or Claude Code "
                                                         "transcript (again: what it gained since)")
    p.add_argument("file")
    p.add_argument("--key", help="the session's key (default: the exported one, pi:<id>, claude-code:<id>)")
    p.add_argument("--format", choices=["native", "pi", "claude-code"], default=None,
                   help="native export, pi session file, or Claude Code transcript (default: found from the file)")
    p = sub.add_parser("check", parents=[common], help="find problems (exit 1 when there are any)")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed, then report")
    sub.add_parser("stats", parents=[common], help="counts and sizes per session and in total")
    p = sub.add_parser("view", parents=[common], help="write a session as one self-contained HTML page")
    p.add_argument("session", metavar="SESSION_OR_KEY")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p = sub.add_parser("serve", parents=[common], help="browse the store in a web browser, read-only")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    out = _Output()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "dir"):
            args.dir = "./sessions"
        return _run(args, out)
    except (_UsageError, SessionStoreError) as e:
        print(f"session-store: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        print(f"session-store: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Optional modules import "session_store": this very module, not a second copy of it.
    sys.modules.setdefault("session_store", sys.modules[__name__])
    raise SystemExit(main())
