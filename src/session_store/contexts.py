"""Contexts: a path of messages as the input of OpenAI's or Anthropic's API.

Records of any supported shape are read into one neutral form (:class:`_Turn`),
settled so that both APIs accept the path (tool calls answered, results matched), and
written out in either API's shape. Other formats plug in through
:func:`register_context_reader`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidInput, InvalidMessage, SessionStoreError, _log
from .log_format import _dumps
from .records import _FILL_DICT, _NEW_DICT, Message, _freeze, _FrozenDict
from .tree import _Session
from .validation import _check_name

#
# build_context goes through one neutral form, _Turn (system, developer, user,
# assistant or tool), read from native records: the tutorial's shapes, OpenAI Chat
# Completions' (tool_calls, tool role), OpenAI Responses' items and content parts (what
# the OpenAI Agents SDK stores: input_text/output_text, function_call,
# function_call_output, reasoning), Anthropic's content blocks, and any of these held
# whole as a record's content. Records of another format are first turned into native
# records by the reader registered for that format (register_context_reader): by
# their type (the transcripts session_store_transcripts imports), or by their content
# (a LangChain, pydantic-ai or LlamaIndex message held whole, as the integrations in
# integrations/ store them; each registers its reader when imported). _Settler makes
# any path acceptable to both APIs: consecutive assistant turns merge (one response
# split over several records), a tool call left without a result gets a synthetic
# error result before the next turn, and a result that answers no open call is
# dropped. What has no equivalent in the APIs (an unknown role, a hosted-tool item, a
# content block of an unknown type) is left out and reported: logged once per session,
# or raised with strict=True.

ContextReader = Callable[[list[Message], Callable[[str], list[Message]]], list[Message]]
"""The type of a reader given to :func:`register_context_reader`."""

_CONTEXT_READERS: dict[str, ContextReader] = {}
_RECOGNIZERS: dict[str, Callable[[Message], bool]] = {}  # formats read by content: see register_context_reader
_CONTEXT_READERS_VERSION = [0]  # changed by every registration: contexts folded before are rebuilt
_REGISTRATIONS = itertools.count(1)  # next() of a count is atomic: two registrations never share a version


def register_context_reader(format_name: str, reader: ContextReader, *,
                            recognizes: Callable[[Message], bool] | None = None) -> None:
    """Let :meth:`SessionStore.build_context` read the records of another format.

    A record belongs to format ``format_name`` when its type is ``format_name`` or
    starts with ``format_name + "."``. Whenever a root -> leaf path holds such a
    record, ``reader(path, children)`` is called first, outside the store's locks, with
    the path (a fresh list) and ``children(message_id)``: that message's children in the
    session, in append order (``[]`` for an id the session does not hold; read from one
    snapshot of the session, taken at the first call). It returns
    the path with its format's records replaced by native ones, in any shape
    ``build_context`` reads (for instance ``Message(role="assistant", content=[...])``
    with Anthropic content blocks; a tool result as ``role="tool"`` with a
    ``tool_call_id`` field): it may leave records out (what the model is not sent),
    merge, reorder or add them (including records found through ``children``), and
    returns every record of other formats unchanged. It must not write to the store.

    Registering a name again replaces its reader. A path holding records of a format
    with no reader, records that also carry their line in the field named
    ``format_name`` or ``format_name + "_line"`` (as session_store_transcripts writes
    them), makes ``build_context`` raise :class:`SessionStoreError` naming the module to
    import; other records of unknown formats are read as native records.
    ``session_store_transcripts`` registers its readers when it is imported.

    ``recognizes``: a predicate for records of this format whatever their type,
    known by their content (a framework's message held whole, as the integrations
    ``session_store_langchain``, ``session_store_pydantic_ai`` and
    ``session_store_llama_index`` store them; each registers its reader when
    imported). Such a record is read by ``reader`` alone, called with a one-record
    path and no children, wherever a record is read (:meth:`SessionStore.build_context`,
    its kept contexts included, and :func:`read_turns`); the predicate must be cheap
    and must not raise. Registering again without it stops recognizing.
    """
    _check_name("format name", format_name)
    if "." in format_name:
        raise InvalidInput(f"format name {format_name!r} must not contain a dot")
    if not callable(reader):
        raise InvalidInput(f"reader must be callable, not {type(reader).__name__}")
    if recognizes is not None and not callable(recognizes):
        raise InvalidInput(f"recognizes must be callable, not {type(recognizes).__name__}")
    _CONTEXT_READERS[format_name] = reader
    if recognizes is None:
        _RECOGNIZERS.pop(format_name, None)
    else:
        _RECOGNIZERS[format_name] = recognizes
    _CONTEXT_READERS_VERSION[0] = next(_REGISTRATIONS)


def read_turns(message: Message, *, strict: bool = False) -> list[Message]:
    """What :meth:`SessionStore.build_context` reads from one record, as records of one
    canonical shape (for writing a session in another format).

    Each returned record keeps ``message``'s id, parent and timestamp; its type is its
    role: ``"system"`` or ``"developer"`` (content: text), ``"user"`` (content: a list of
    ``text`` and ``image`` blocks), ``"assistant"`` (``text``, ``thinking``,
    ``redacted_thinking`` and ``tool_use`` blocks) or ``"tool"`` (content: ``text`` and
    ``image`` blocks; fields ``tool_call_id``, ``is_error`` and ``name``), all blocks in
    Anthropic's shapes. A record of another format goes through its registered reader
    (see :func:`register_context_reader`; it sees the record alone). What has no
    equivalent is left out, or raises :class:`InvalidMessage` with ``strict=True``.
    Nothing is settled: a call and its result stay in the records they came in.
    """
    problems: list[str] = []
    turns = _path_turns([message], lambda _: [], problems)
    if problems and strict:
        raise InvalidMessage(f"message {message.id!r}: " + "; ".join(problems))
    out: list[Message] = []
    for t in turns:
        fields: dict[str, Any] = {}
        if t.role == "tool":
            content: Any = [b for b in _anthropic_blocks(t.parts) if b["type"] in ("text", "image")]
            fields = {"tool_call_id": t.call_id, "is_error": t.is_error, "name": t.name}
        elif t.role in ("system", "developer"):
            content = t.text()
        else:
            content = _anthropic_blocks(t.parts, t.calls, ids=str, thinking=True)
        out.append(Message(id=message.id, parent_id=message.parent_id, type=t.role, role=t.role, content=content,
                           timestamp=message.timestamp, fields=fields))
    return out


# -- neutral turns --------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Call:
    """A tool call: its arguments as JSON text (``arguments``, as OpenAI has them) or
    as a value (``given``, as Anthropic has them); each made from the other only when
    asked for."""

    id: str
    name: str
    given: Any
    arguments: str | None = None

    @property
    def input(self) -> Any:
        if self.arguments is None:
            return self.given
        try:
            return json.loads(self.arguments)
        except ValueError:
            return {"arguments": self.arguments}

    def arguments_text(self) -> str:
        return self.arguments if self.arguments is not None else _dumps({} if self.given is None else self.given)


@dataclasses.dataclass(slots=True)
class _Turn:
    """One turn in neutral form. ``parts``: ``{"type": "text", "text"}``, ``{"type":
    "image", "media_type", "data"}`` or ``{"type": "image", "url"}``, ``{"type":
    "thinking", "thinking", "signature"}``, ``{"type": "redacted_thinking", "data"}``.
    An assistant turn has ``calls``; a tool turn answers ``call_id``."""

    role: str
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    calls: list[_Call] = dataclasses.field(default_factory=list)
    call_id: str = ""
    name: str = ""
    is_error: bool = False

    def text(self) -> str:
        return "\n\n".join(p["text"] for p in self.parts if p["type"] == "text")


_SYNTHETIC_RESULT = "Error: this tool call has no result (the conversation moved on before it completed)."


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _image(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """A neutral image from Anthropic's, pi's, OpenAI Chat's or OpenAI Responses' image block."""
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64":
            return {"type": "image", "media_type": source.get("media_type"), "data": source.get("data")}
        if isinstance(source.get("url"), str):
            return {"type": "image", "url": source["url"]}
    if isinstance(block.get("data"), str):
        return {"type": "image", "media_type": block.get("mimeType") or block.get("media_type"),
                "data": block["data"]}
    url = block.get("image_url", block.get("url"))
    url = url.get("url") if isinstance(url, dict) else url
    if isinstance(url, str):
        found = re.fullmatch(r"data:([^;,]+);base64,(.*)", url, re.S)
        return ({"type": "image", "media_type": found[1], "data": found[2]} if found
                else {"type": "image", "url": url})
    return None


def _call(block: Mapping[str, Any], fallback_id: str) -> _Call:
    """A call from the tutorial's ``{id, name, params}``, OpenAI Chat's ``{id, function:
    {name, arguments}}``, OpenAI Responses' ``function_call`` (``call_id``, ``arguments``)
    or ``custom_tool_call`` (``input`` text), Anthropic's ``tool_use`` or pi's ``toolCall``."""
    function = block.get("function")
    source = function if isinstance(function, dict) else block
    arguments = source.get("arguments", source.get("input", source.get("params")))
    call_id = block.get("call_id", block.get("id")) if block.get("type") in _RESPONSES_CALLS else block.get("id")
    name = source.get("name")
    return _Call(id=call_id if isinstance(call_id, str) and call_id else fallback_id,
                 name=name if isinstance(name, str) else "unknown", given=arguments,
                 arguments=arguments if isinstance(arguments, str) else None)


_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_RESPONSES_CALLS = frozenset({"function_call", "custom_tool_call"})
_RESPONSES_RESULTS = frozenset({"function_call_output", "custom_tool_call_output"})
# Responses items that exist only on OpenAI's side (hosted tools, references to stored
# items): no equivalent in a request built from scratch.
_RESPONSES_HOSTED = frozenset({
    "item_reference", "web_search_call", "file_search_call", "computer_call", "computer_call_output",
    "code_interpreter_call", "image_generation_call", "local_shell_call", "local_shell_call_output",
    "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output", "mcp_call",
    "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "compaction"})
_RESPONSES_ITEMS = _RESPONSES_CALLS | _RESPONSES_RESULTS | _RESPONSES_HOSTED | {"message", "reasoning"}


def _kind(block: Mapping[str, Any]) -> str | None:
    """A block's or item's ``type`` when it is a string (anything else names no type)."""
    kind = block.get("type")
    return kind if isinstance(kind, str) else None


def _read_content(content: Any, owner: str, problems: list[str] | None = None,
                  ) -> tuple[list[dict[str, Any]], list[_Call], list[_Turn]]:
    """Parts, tool calls and tool results of a message's content: a string, or a list
    of Anthropic, pi, OpenAI Chat or OpenAI Responses blocks. ``owner`` names made-up
    call ids; a block of no known type is left out and described in ``problems``."""
    if content is None:
        return [], [], []
    if isinstance(content, str):
        return [_text(content)], [], []
    blocks = content if isinstance(content, list) else [content]
    parts: list[dict[str, Any]] = []
    calls: list[_Call] = []
    results: list[_Turn] = []
    for i, block in enumerate(blocks):
        if isinstance(block, str):
            parts.append(_text(block))
            continue
        if not isinstance(block, dict):
            if problems is not None:
                problems.append(f"a content block that is not an object in {owner!r}")
            continue
        kind = _kind(block)
        if kind in _TEXT_PARTS and isinstance(block.get("text"), str):
            parts.append(_text(block["text"]))
        elif kind == "refusal" and isinstance(block.get("refusal"), str):
            parts.append(_text(block["refusal"]))
        elif kind in ("image", "image_url", "input_image") and (image := _image(block)) is not None:
            parts.append(image)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            signature = block.get("signature", block.get("thinkingSignature"))
            parts.append({"type": "thinking", "thinking": block["thinking"],
                          "signature": signature if isinstance(signature, str) else None})
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str):
            parts.append({"type": "redacted_thinking", "data": block["data"]})
        elif kind in ("tool_use", "toolCall") or kind in _RESPONSES_CALLS:
            calls.append(_call(block, f"{owner}-call-{i}"))
        elif kind == "tool_result":
            answered = block.get("tool_use_id")
            results.append(_Turn("tool", _result_parts(block.get("content"), owner, problems),
                                 call_id=answered if isinstance(answered, str) else "",
                                 is_error=block.get("is_error") is True))
        elif problems is not None:
            problems.append(f"a content block of type {kind!r} in {owner!r}" if isinstance(kind, str)
                            else f"a content block without a type in {owner!r}")
    return parts, calls, results


def _result_parts(value: Any, owner: str, problems: list[str] | None = None) -> list[dict[str, Any]]:
    if value is None or isinstance(value, (str, list)):
        return _read_content(value, owner, problems)[0]
    return [_text(_dumps(value))]


_CHAT_ROLES = frozenset({"system", "user", "assistant"})
# Roles other software writes for the ones the APIs know: LangChain's message types,
# Gemini's "model", Cohere's "chatbot", OpenAI's legacy "function" (a tool result).
_ROLE_ALIASES = {"system": "system", "developer": "developer", "user": "user", "human": "user",
                 "assistant": "assistant", "ai": "assistant", "model": "assistant", "chatbot": "assistant",
                 "tool": "tool", "function": "tool"}


def _native_turns(m: Message, problems: list[str]) -> list[_Turn]:
    """The turns of one record: read by the reader of a format that recognizes its
    content (see :func:`register_context_reader`), else as a plain record."""
    if _RECOGNIZERS and m.content.__class__ is not str:
        for name, recognizes in list(_RECOGNIZERS.items()):
            if recognizes(m):
                turns: list[_Turn] = []
                for native in _checked(name, _CONTEXT_READERS[name]([m], _no_children)):
                    turns += _plain_turns(native, problems)
                return turns
    return _plain_turns(m, problems)


def _no_children(message_id: str) -> list[Message]:
    return []


def _checked(name: str, path: Any) -> list[Message]:
    """What a reader returned, if it is a list of Messages."""
    if not isinstance(path, list) or not all(isinstance(m, Message) for m in path):
        raise SessionStoreError(f"the context reader for {name!r} returned something else than Messages")
    return path


def _plain_turns(m: Message, problems: list[str]) -> list[_Turn]:
    """A native record: the tutorial's shapes (``tool_calls`` as ``{id, name, params}``,
    ``tool_result`` records with ``output``), OpenAI Chat's (``tool_calls`` with
    ``function``, ``tool`` role), OpenAI Responses' items and parts, Anthropic's
    content blocks; or any of these held whole as the content."""
    if m.type == m.role and not m.fields and isinstance(m.content, str) and m.role in _CHAT_ROLES:
        return [_Turn(m.role, [{"type": "text", "text": m.content}])]  # the common case, quickly
    if m.type == "reset":
        return [_Turn("system", _result_parts(m.content, m.id, problems))]
    if m.type == "damaged":  # a record the store could not read: nothing to send, and said
        problems.append(f"the damaged record {m.id!r}")
        return []
    if m.type == "tool" and m.role != "tool":  # the tutorial's call record: the assistant's tool_calls say it
        return []
    content = m.content
    if isinstance(content, dict) and ("role" in content or _kind(content) in _RESPONSES_ITEMS):
        return _item_turns(content, m.id, problems)  # a whole message or Responses item as the content
    if m.type in _RESPONSES_ITEMS and m.type != "message":  # a Responses item spread over the record
        return _item_turns({**m.fields, "type": m.type, "content": content}, m.id, problems)
    return _message_turns(m.role, content, m.fields, m.type == "tool_result", m.id, problems)


def _item_turns(item: Mapping[str, Any], owner: str, problems: list[str]) -> list[_Turn]:
    """A Responses item, or a chat message held as one dict (``{"role", "content", ...}``)."""
    kind = _kind(item)
    if kind in _RESPONSES_CALLS:
        return [_Turn("assistant", calls=[_call(item, f"{owner}-call")])]
    if kind in _RESPONSES_RESULTS:
        call_id = item.get("call_id")
        return [_Turn("tool", _result_parts(item.get("output"), owner, problems),
                      call_id=call_id if isinstance(call_id, str) else "")]
    if kind == "reasoning":  # OpenAI's own reasoning: neither API takes it back from a request built here
        summary = item.get("summary")
        texts = [s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str)] \
            if isinstance(summary, list) else []
        return [_Turn("assistant", [{"type": "thinking", "thinking": t, "signature": None} for t in texts])]
    if kind in _RESPONSES_HOSTED:
        problems.append(f"a Responses {kind!r} item in {owner!r}")
        return []
    role = item.get("role")
    rest = {k: v for k, v in item.items() if k not in ("role", "content", "type")}
    return _message_turns(role if isinstance(role, str) else "", item.get("content"), rest, False, owner, problems)


def _message_turns(role: str, content: Any, fields: Mapping[str, Any], is_result: bool, owner: str,
                   problems: list[str]) -> list[_Turn]:
    """The turns of one chat message: a role, content, and fields such as ``tool_calls``."""
    role = _ROLE_ALIASES.get(role, "")
    if not role and not is_result:
        problems.append(f"role of {owner!r} has no equivalent in the APIs")
        return []
    if is_result or role == "tool":
        call_id = fields.get("tool_call_id", fields.get("call_id"))
        name = fields.get("name")
        return [_Turn("tool", _result_parts(fields.get("output", content), owner, problems),
                      call_id=call_id if isinstance(call_id, str) else "", name=name if isinstance(name, str) else "",
                      is_error=fields.get("is_error") is True)]
    parts, calls, results = _read_content(content, owner, problems)
    if role in ("system", "developer"):
        return [_Turn(role, [p for p in parts if p["type"] == "text"])]
    if role == "user":
        return results + ([_Turn("user", parts)] if parts or not results else [])
    declared = fields.get("tool_calls")
    if isinstance(declared, list):
        calls += [_call(c, f"{owner}-call-{i}") for i, c in enumerate(declared) if isinstance(c, dict)]
    return [_Turn("assistant", parts, calls)]


def _path_turns(path: list[Message], children: Callable[[str], list[Message]], problems: list[str]) -> list[_Turn]:
    """The turns of a root -> leaf path, records of other formats read by their readers."""
    readers: dict[str, ContextReader] | None = None
    for m in path:
        if m.type != m.role and m.type != "damaged":  # a plain record's type is its role: it skips this
            name = m.type.partition(".")[0]
            reader = _CONTEXT_READERS.get(name)
            if reader is not None:
                readers = readers or {}
                readers[name] = reader
            elif name in m.fields or name + "_line" in m.fields:
                raise SessionStoreError(
                    f"message {m.id!r} holds a {name!r} transcript line, and no context reader for {name!r} is "
                    "registered: import session_store_transcripts (integrations/session_store_transcripts.py) first")
    if readers:
        for name, reader in readers.items():
            path = _checked(name, reader(list(path), children))
    turns: list[_Turn] = []
    for m in path:
        turns.extend(_native_turns(m, problems))
    return turns


# Sessions whose left-out records were logged: once per session (the most recent ones).
_REPORTED: OrderedDict[str, None] = OrderedDict()
_REPORTED_MAX = 10_000
_REPORTED_LOCK = threading.Lock()


def _left_out(session_id: str, problems: list[str], strict: bool) -> None:
    """Raise (``strict``) or log once per session what a context had to leave out."""
    if strict:
        raise InvalidMessage(f"session {session_id!r}: cannot express in the API: " + "; ".join(problems))
    with _REPORTED_LOCK:
        if session_id in _REPORTED:
            return
        _REPORTED[session_id] = None
        if len(_REPORTED) > _REPORTED_MAX:
            _REPORTED.popitem(last=False)
    _log.warning("session %s: a context left out %d thing(s) the APIs cannot express (reported once per "
                 "session; strict=True raises instead): %s", session_id, len(problems), "; ".join(problems[:5]))


class _Settler:
    """What makes turns acceptable to both APIs (see the banner above), as a fold:
    :meth:`push` takes one turn at a time and hands each settled turn to ``emit`` as
    soon as nothing that follows can change it; :meth:`tail` is what the end of the
    path adds (the last assistant turn, which a next assistant record would merge
    into, and synthetic results for the calls still open). Changes the turns it is
    given: they are made fresh for each fold."""

    __slots__ = ("emit", "last", "open_calls", "seen", "seen_order")

    def __init__(self, emit: Callable[[_Turn], None]) -> None:
        self.emit = emit
        self.last: _Turn | None = None  # the last settled turn, when it is an assistant's
        self.open_calls: dict[str, str] = {}  # id -> name, awaiting a result
        self.seen: set[str] = set()  # call ids so far: a repeated call is dropped
        self.seen_order: list[str] = []

    @property
    def clean(self) -> bool:
        """Whether nothing pending: the state is the emitted turns and ``seen`` alone."""
        return self.last is None and not self.open_calls

    def _flush(self) -> None:
        if self.last is not None:
            self.emit(self.last)
            self.last = None

    def _close_open_calls(self) -> None:
        for call_id, name in self.open_calls.items():
            self.emit(_synthetic_result(call_id, name))
        self.open_calls.clear()

    def push(self, turn: _Turn) -> None:
        parts = turn.parts
        if len(parts) == 1:  # empty text: the APIs refuse it
            if parts[0]["type"] == "text" and not parts[0]["text"].strip() and turn.role != "tool":
                turn.parts = []
        elif parts and turn.role != "tool":
            turn.parts = [p for p in parts if p["type"] != "text" or p["text"].strip()]
        if turn.role == "tool":
            if self.open_calls and turn.call_id in self.open_calls:
                name = self.open_calls.pop(turn.call_id)
                turn.name = turn.name or name
                self._flush()
                self.emit(turn)
            return
        if turn.role == "assistant":
            if turn.calls:
                seen, order = self.seen, self.seen_order
                turn.calls = [c for c in turn.calls if c.id not in seen and not seen.add(c.id)]  # type: ignore[func-returns-value]
                order += (c.id for c in turn.calls)
            if not turn.parts and not turn.calls:
                return
            if self.last is not None:  # one response over several records
                self.last.parts += turn.parts
                self.last.calls += turn.calls
            else:
                if self.open_calls:
                    self._close_open_calls()
                self.last = turn
            if turn.calls:
                self.open_calls.update((c.id, c.name) for c in turn.calls)
            return
        if not turn.parts:
            return
        self._flush()
        if self.open_calls:
            self._close_open_calls()
        self.emit(turn)

    def tail(self) -> list[_Turn]:
        """The turns the end of the path adds; changes nothing."""
        out = [] if self.last is None else [self.last]
        out += (_synthetic_result(call_id, name) for call_id, name in self.open_calls.items())
        return out

    def rewind(self, seen: int) -> None:
        """Back to a clean state whose ``seen`` held its first ``seen`` call ids."""
        self.last = None
        self.open_calls.clear()
        for call_id in self.seen_order[seen:]:
            self.seen.discard(call_id)
        del self.seen_order[seen:]


def _synthetic_result(call_id: str, name: str) -> _Turn:
    return _Turn("tool", [_text(_SYNTHETIC_RESULT)], call_id=call_id, name=name, is_error=True)


# -- OpenAI and Anthropic --------------------------------------------------------------


def _openai_content(parts: list[dict[str, Any]], *, images: bool) -> Any:
    """A string when the parts are one text, else a list of OpenAI content parts."""
    out: list[dict[str, Any]] = []
    for p in parts:
        if p["type"] == "text":
            out.append(p)
        elif p["type"] == "image":
            url = p.get("url") or f"data:{p.get('media_type')};base64,{p.get('data')}"
            out.append({"type": "image_url", "image_url": {"url": url}} if images else _text("[image]"))
    if len(out) == 1 and out[0]["type"] == "text":
        return out[0]["text"]
    return out


# OpenAI refuses tool call ids longer than 40 characters ("string too long. Expected a
# string with maximum length 40"); OpenAI Responses ids ("call_...|fc_...") are longer.
_OPENAI_ID_MAX = 40


def _openai_id(call_id: str) -> str:
    """A tool call id OpenAI accepts: unchanged when short enough, else a prefix and a
    hash of the whole id, the same for the call and its result."""
    if len(call_id) <= _OPENAI_ID_MAX:
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return call_id[:_OPENAI_ID_MAX - 13] + "_" + digest


def _openai_message(t: _Turn) -> dict[str, Any] | None:
    """An OpenAI chat message, read-only: ``tool_calls`` with JSON-text ``arguments``,
    one ``tool`` message per call; thinking is dropped (Chat Completions takes none
    back). ``None`` when nothing is left."""
    if len(t.parts) == 1 and not t.calls and t.role != "tool" and t.parts[0]["type"] == "text":
        return _FrozenDict(role=t.role, content=t.parts[0]["text"])  # the common case, quickly
    entry = _openai_entry(t)
    return None if entry is None else _freeze(entry)


def _openai_entry(t: _Turn) -> dict[str, Any] | None:
    """:func:`_openai_message` of a turn that is not one text."""
    if t.role in ("system", "developer"):
        return {"role": t.role, "content": t.text()}
    if t.role == "user":
        return {"role": "user", "content": _openai_content(t.parts, images=True)}
    if t.role == "tool":
        return {"role": "tool", "tool_call_id": _openai_id(t.call_id),
                "content": "\n\n".join(p["text"] if p["type"] == "text" else "[image]" for p in t.parts)}
    texts = [p for p in t.parts if p["type"] == "text"]
    if not texts and not t.calls:
        return None
    entry: dict[str, Any] = {"role": "assistant", "content": _openai_content(texts, images=False)
                             if texts else None}
    if t.calls:
        entry["tool_calls"] = [{"id": _openai_id(c.id), "type": "function", "function": {
            "name": c.name, "arguments": c.arguments_text()}} for c in t.calls]
    return entry


_ANTHROPIC_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _anthropic_id(call_id: str) -> str:
    """A tool call id Anthropic accepts (``^[a-zA-Z0-9_-]+$``): unchanged when it is
    one, else a sanitized one with a hash suffix, the same for the call and its result."""
    if _ANTHROPIC_ID_RE.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_-]", "_", call_id)[:40] + "_" + digest


def _anthropic_blocks(parts: list[dict[str, Any]], calls: Sequence[_Call] = (), *,
                      ids: Callable[[str], str] = _anthropic_id, thinking: bool = False) -> list[dict[str, Any]]:
    """Anthropic content blocks; thinking only with its signature (the API refuses
    it unsigned; ``thinking=True`` keeps it unsigned, for transcripts); empty texts
    dropped (refused too)."""
    out: list[dict[str, Any]] = []
    for p in parts:
        if p["type"] == "text" and p["text"].strip():
            out.append(p)
        elif p["type"] == "image":
            source = ({"type": "url", "url": p["url"]} if "url" in p else
                      {"type": "base64", "media_type": p.get("media_type"), "data": p.get("data")})
            out.append({"type": "image", "source": source})
        elif p["type"] == "thinking" and p.get("signature"):
            out.append({"type": "thinking", "thinking": p["thinking"], "signature": p["signature"]})
        elif p["type"] == "thinking" and thinking:
            out.append({"type": "thinking", "thinking": p["thinking"]})
        elif p["type"] == "redacted_thinking":
            out.append(p)
    for c in calls:
        value = c.input
        value = value if isinstance(value, dict) else {} if value is None else {"value": value}
        out.append({"type": "tool_use", "id": ids(c.id), "name": c.name, "input": value})
    return out


def _anthropic_result(t: _Turn, *, ids: Callable[[str], str] = _anthropic_id) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": ids(t.call_id)}
    content = [b for b in _anthropic_blocks(t.parts) if b["type"] in ("text", "image")]
    if content:
        block["content"] = content[0]["text"] if len(content) == 1 and content[0]["type"] == "text" else content
    if t.is_error:
        block["is_error"] = True
    return block


def _anthropic_message(role: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """An Anthropic message, read-only: one text block is sent as a string."""
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return _FrozenDict({"role": role, "content": blocks[0]["text"]})
    return _FrozenDict({"role": role, "content": _freeze(blocks)})


_CONTINUES = _anthropic_message("user", [_text("(The conversation so far continues below.)")])


# -- contexts as folds ---------------------------------------------------------------
#
# A context is a fold over the path's turns: _Settler settles them, and an output
# (_OpenAIOutput, _AnthropicOutput) turns each settled turn into the API's shape as
# soon as it is final. The outputs' entries are read-only and shared between the
# contexts a fold returns (copying 2,000 dicts costs more than building a context
# from a cache), so building a context again costs the list, not the path. The
# store keeps one fold per session and format (_ContextCache) and extends it along
# the path; see SessionStore._context.


class _OpenAIOutput:
    """OpenAI chat messages of the settled turns: one message per turn at most."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def take(self, turn: _Turn) -> None:
        entry = _openai_message(turn)
        if entry is not None:
            self.entries.append(entry)

    def mark(self) -> Any:
        return len(self.entries)

    def rewind(self, mark: Any) -> None:
        del self.entries[mark:]

    def finish(self, tail: list[_Turn]) -> Any:
        """What the turns after the settled ones add (kept until the fold changes)."""
        return [entry for entry in map(_openai_message, tail) if entry is not None]

    def result(self, finished: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.entries + finished


class _AnthropicOutput:
    """``{"system": ..., "messages": [...]}`` for Anthropic's Messages API: system and
    developer text goes to ``system`` (absent when there is none); user and assistant
    alternate, the first is a user turn; a user turn after tool use starts with its
    ``tool_result`` blocks. The last message stays open while turns of its role follow."""

    __slots__ = ("blocks", "done", "role", "system")

    def __init__(self) -> None:
        self.system: list[str] = []
        self.done: list[dict[str, Any]] = []  # messages a turn of the other role followed
        self.role: str | None = None  # the open message's role and blocks
        self.blocks: list[dict[str, Any]] = []

    def take(self, turn: _Turn) -> None:
        if turn.role in ("system", "developer"):
            if turn.text().strip():
                self.system.append(turn.text())
            return
        role = "assistant" if turn.role == "assistant" else "user"
        blocks = [_anthropic_result(turn)] if turn.role == "tool" else _anthropic_blocks(turn.parts, turn.calls)
        if not blocks:
            return
        if role == self.role:
            self.blocks += blocks
            return
        if self.role is not None:
            self.done.append(_anthropic_message(self.role, self.blocks))
        self.role, self.blocks = role, blocks

    def mark(self) -> Any:
        return len(self.done), self.role, tuple(self.blocks), len(self.system)

    def rewind(self, mark: Any) -> None:
        done, self.role, blocks, system = mark
        del self.done[done:]
        del self.system[system:]
        self.blocks = list(blocks)

    def finish(self, tail: list[_Turn]) -> Any:
        """What the open message and the turns after the settled ones add (kept until
        the fold changes): ``(messages, the first message is not a user's, system)``."""
        scratch = _AnthropicOutput()  # the tail: assistant turns and tool results, no system text
        scratch.role, scratch.blocks = self.role, self.blocks.copy()
        for turn in tail:
            scratch.take(turn)
        after = scratch.done
        if scratch.role is not None:
            after.append(_anthropic_message(scratch.role, scratch.blocks))
        first = self.done[0] if self.done else after[0] if after else None
        return after, first is not None and first["role"] != "user", "\n\n".join(self.system)

    def result(self, finished: Any) -> dict[str, Any]:
        after, continues, system = finished
        request: dict[str, Any] = {"messages": [_CONTINUES, *self.done, *after] if continues else self.done + after}
        if system:
            request["system"] = system
        return request


_CONTEXT_FORMATS = ("openai", "anthropic")


class _ContextFold:
    """The context of one root -> leaf path in one format, built one message at a time.

    ``ids`` is the path folded so far. After each message that leaves nothing
    pending (no assistant turn open to a merge, no call awaiting its result) a
    *mark* records where every part of the fold stood, for the last
    ``_CONTEXT_MARKS`` such messages: a path that leaves this one near its end (a
    sibling of the leaf, an ancestor) rewinds to the mark before the fork and folds
    on from there."""

    __slots__ = ("finished", "ids", "index", "markers", "marks", "output", "problems", "readers", "settler")

    def __init__(self, format: str, markers: bool = True) -> None:
        self.markers = markers  # reset markers go in as system text (else they are left out)
        self.output: _OpenAIOutput | _AnthropicOutput = (
            _AnthropicOutput() if format == "anthropic" else _OpenAIOutput())
        self.settler = _Settler(self.output.take)
        self.problems: list[str] = []  # what the path's records hold that the APIs cannot express
        self.ids: list[str] = []
        self.index: dict[str, int] | None = None  # where each id of the path is in it (see positions)
        # (path length, call ids seen, problems, output mark), the first for the empty path
        self.marks: list[tuple[int, int, int, Any]] = [(0, 0, 0, self.output.mark())]
        self.readers = _CONTEXT_READERS_VERSION[0]  # the readers registered when the fold began
        self.finished: Any = None  # the output's finish() of the tail, until the fold changes

    def fold(self, path: Sequence[Message]) -> bool:
        """Fold messages onto the path; ``False`` (the fold is then unusable) at the
        first record of another format, which needs its registered reader.

        A chat message of one text (the most common record by far) takes a lane of its
        own into an OpenAI context, the same steps as :meth:`_Settler.push` and
        :func:`_openai_message` inlined: the first context of a session loaded cold
        folds its whole path, and cost 16 times a bare loop over it through them."""
        settler, ids, index, problems, marks = self.settler, self.ids, self.index, self.problems, self.marks
        self.finished = None
        count = len(ids)
        marked_from = count + len(path) - _CONTEXT_MARKS  # marks further back would be dropped below
        markers = self.markers
        entries = self.output.entries if type(self.output) is _OpenAIOutput else None
        add_id, chat_roles, new, fill, frozen = ids.append, _CHAT_ROLES, _NEW_DICT, _FILL_DICT, _FrozenDict
        add_entry = entries.append if entries is not None else None
        open_calls = settler.open_calls
        pending: str | None = None  # the text of an assistant turn of one text, held here, not in settler.last
        for m in path:
            role, content = m.role, m.content
            if (add_entry is not None and m.type == role and type(content) is str and not m.fields
                    and role in chat_roles and not open_calls):
                if content and not content.isspace():  # (push drops a blank text, and the turn with it)
                    if role == "assistant":  # open to a merge with the next assistant record
                        if pending is None and settler.last is None:
                            pending = content
                        else:
                            if pending is not None:
                                settler.last, pending = _Turn("assistant", [_text(pending)]), None
                            assert settler.last is not None
                            settler.last.parts.append(_text(content))
                    else:  # the assistant's turn, if any, is settled, and this one too
                        if pending is not None:
                            entry = new(frozen)
                            fill(entry, role="assistant", content=pending)
                            add_entry(entry)
                            pending = None
                        elif settler.last is not None:
                            last, settler.last = settler.last, None
                            settler.emit(last)
                        entry = new(frozen)
                        fill(entry, role=role, content=content)
                        add_entry(entry)
            else:
                if m.type != role and _reader_of(m):
                    return False
                if markers or m.type != "reset":
                    if pending is not None:
                        settler.last, pending = _Turn("assistant", [_text(pending)]), None
                    for turn in _native_turns(m, problems):
                        settler.push(turn)
                    open_calls = settler.open_calls
            if index is not None:
                index[m.id] = count
            add_id(m.id)
            count += 1
            if count >= marked_from and pending is None and settler.last is None and not open_calls:
                marks.append((count, len(settler.seen_order), len(problems), self.output.mark()))
        if pending is not None:
            settler.last = _Turn("assistant", [_text(pending)])
        if len(marks) > 2 * _CONTEXT_MARKS:
            del marks[:-_CONTEXT_MARKS]
        return True

    def positions(self) -> dict[str, int]:
        """Where each id of the path is in it, from the oldest mark on (a path that
        leaves this one further back cannot be rewound to: it is folded afresh).
        Made when first asked, not by the fold: the first context of a path does
        not need it."""
        if self.index is None:
            start = self.marks[0][0]
            self.index = {mid: i for i, mid in enumerate(self.ids[start:], start)}
        return self.index

    def fold_turns(self, turns: Iterable[_Turn]) -> None:
        """Fold turns read some other way (by a registered reader): no marks."""
        self.finished = None
        for turn in turns:
            self.settler.push(turn)

    def rewind(self, length: int) -> list[str] | None:
        """Back to the state after the first ``length`` messages of the path: to the
        last mark at or before it; returns the ids to fold again from there to
        ``length``, or ``None`` when no mark is that far back."""
        ids = self.ids
        if length >= len(ids):
            return []
        marks = self.marks
        i = len(marks)
        while i and marks[i - 1][0] > length:
            i -= 1
        if not i:
            return None
        at, seen, problems, output = marks[i - 1]
        self.finished = None
        again = ids[at:length]
        index = self.index
        if index is not None:
            for mid in ids[at:]:
                index.pop(mid, None)
        del marks[i:]
        del ids[at:]
        del self.problems[problems:]
        self.settler.rewind(seen)
        self.output.rewind(output)
        return again

    def result(self) -> Any:
        """The context of the path folded so far: fresh lists (and request dict) of
        read-only entries."""
        if self.finished is None:
            self.finished = self.output.finish(self.settler.tail())
        return self.output.result(self.finished)


_CONTEXT_MARKS = 256  # how far back (in messages that leave nothing pending) a fold can rewind


_CONTEXT_BYTES = 300  # what a folded message costs (its entry, its place in the fold: 290-330 B), for the cache budget


def _context(turns: Iterable[_Turn], format: str) -> Any:
    """Turns as an OpenAI message list or an Anthropic request."""
    fold = _ContextFold(format)
    fold.fold_turns(turns)
    return fold.result()


def _to_fold(state: _Session, fold: _ContextFold, leaf: Message) -> list[Message] | None:
    """Rewind ``fold`` to where the path to ``leaf`` leaves it and return the messages
    to fold from there; ``None`` when that is too far back (fold afresh)."""
    ids = fold.ids
    if ids and ids[-1] == leaf.id:
        return []
    index = fold.positions()
    walk: list[Message] = []
    by_id, detached = state.by_id, state.detached
    m: Message | None = leaf
    while m is not None:
        at = index.get(m.id)
        if at is not None:
            again = fold.rewind(at + 1)
            if again is None:
                return None
            walk.reverse()
            return [by_id[mid] for mid in again] + walk
        if len(walk) >= _CONTEXT_MARKS:
            return None
        walk.append(m)
        m = by_id.get(m.parent_id) if m.parent_id is not None and m.id not in detached else None
    return None  # a path of its own (another root)


def _reader_of(m: Message) -> bool:
    """Whether a record of another format is on a path: a registered reader reads it
    (or, without one, the context is refused): see :func:`_path_turns`."""
    if m.type == "damaged":  # a placeholder (see _damaged_record): left out, never read
        return False
    name = m.type.partition(".")[0]
    return name in _CONTEXT_READERS or name in m.fields or name + "_line" in m.fields
