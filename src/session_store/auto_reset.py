"""Auto-reset: when a session's current segment has grown too long, too old or too large.

:class:`AutoResetConfig` sets the limits and what is kept; :class:`AutoResetManager`
decides and performs a reset on a store; :data:`KEEP_STRATEGIES` and
:func:`default_token_counter` are the stock choices. A reset appends, never rewrites.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidInput, InvalidMessage
from .log_format import _dumps, _encode_message, _message_from_record
from .records import _SNAKE_TO_CAMEL, Message, _FrozenDict, _random_id, _thaw
from .searching import message_text

#
# A *segment* is the path from a root to a message. A reset starts a new one: it
# appends a new root (the reset marker, or the first kept copy when markers are off),
# moves the current branch's head there with a "move" branch event, then appends
# copies of the kept messages (new ids, ``reset_from`` = the original id) chained
# after it. Nothing is deleted or rewritten: the old history stays in the tree.
#
# Limits (each optional) apply to the current segment, a marker itself not counted:
#   messages  reset when the segment would hold more than max_messages;
#   tokens    reset when the sum of token_counter(message) would exceed max_tokens;
#   age       reset when now - segment start > max_age_ms (start: the root's timestamp).
# "Exactly at the limit" is fine; one over resets. The store checks an append onto
# the current head *before* writing it, so a segment never goes over a limit (except
# a single message larger than max_tokens, which starts a fresh segment alone).

_TokenCounter = Callable[[Message], int]
_KeepStrategy = Callable[[list[Message], int], list[Message]]


def default_token_counter(message: Message) -> int:
    """The seed's counter, the default: *characters* of ``content`` (its JSON text when
    not a string), not tokens. A chat's ``max_tokens`` counted so is about four times
    what a model would count: use :func:`estimate_tokens` or :func:`tiktoken_counter`
    to count tokens."""
    content = message.content
    if content is None:
        return 0
    return len(content) if isinstance(content, str) else len(_dumps(content))


_FRAMING_TOKENS = 4  # a message's role and separators, as OpenAI's chat format counts them


def _countable_text(message: Message) -> str:
    """What a model reads of a message: its text, and its tool calls (names, arguments)."""
    text = message_text(message.content)
    calls = message.fields.get("tool_calls")
    return text if not calls else f"{text}\n{_dumps(_thaw(calls))}"


def estimate_tokens(message: Message) -> int:
    """About the tokens a model reads for ``message``, without a tokenizer: one per
    four characters of its text (:func:`message_text`) and tool calls, rounded up,
    plus 4 for its role and framing (OpenAI's rule of thumb for English; code and
    other scripts take more tokens per character). Quick and dependency-free; pass it
    as ``AutoResetConfig(token_counter=estimate_tokens)``."""
    return -(-len(_countable_text(message)) // 4) + _FRAMING_TOKENS


def tiktoken_counter(encoding: Any = "o200k_base") -> _TokenCounter:
    """A ``token_counter`` that counts with tiktoken (``pip install tiktoken``): the
    encoding by name (tiktoken downloads its file on first use and caches it) or a
    ``tiktoken.Encoding``; the message's text and tool calls, plus 4 for its framing.
    The encoding is loaded here, so a missing package or file fails now, with
    :class:`InvalidInput`, never at an append."""
    try:
        import tiktoken
        enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding
        enc.encode_ordinary("")
    except Exception as e:  # ImportError, a download that failed, an unknown name: all say the same
        raise InvalidInput(f"tiktoken cannot count with {encoding!r}: {e}") from None

    def count(message: Message) -> int:
        return len(enc.encode_ordinary(_countable_text(message))) + _FRAMING_TOKENS
    return count


#: Keep strategies by name: ``(segment, keep_count) -> kept messages``, in order.
KEEP_STRATEGIES: Mapping[str, _KeepStrategy] = {
    "none": lambda messages, n: [],
    "first": lambda messages, n: messages[:n],
    "last": lambda messages, n: messages[len(messages) - n:] if n else [],
    "system": lambda messages, n: [m for m in messages if m.role == "system"][:n],
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AutoResetConfig:
    """When and how a session resets (the seed's ``AutoResetConfig``).

    ``keep_strategy`` is a name in :data:`KEEP_STRATEGIES` (``"none"``, ``"first"``,
    ``"last"``, ``"system"``) or a callable ``(segment, keep_count) -> messages``.
    ``token_counter`` receives a :class:`Message` (default: :func:`default_token_counter`,
    the seed's, which counts *characters*; :func:`estimate_tokens` estimates tokens, and
    :func:`tiktoken_counter` counts them with tiktoken).
    Invalid values raise ``ValueError`` here, not at the first append.

    In a store, ``token_counter`` runs once per message as it is appended or loaded,
    and ``keep_strategy`` once per reset, both while the session is locked: they must
    be quick and must not call the store.
    """

    enabled: bool = True
    max_messages: int | None = None
    max_age_ms: int | None = None
    max_tokens: int | None = None
    token_counter: _TokenCounter | None = None
    keep_strategy: str | _KeepStrategy = "none"
    keep_count: int = 5
    insert_reset_marker: bool = True

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_age_ms", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise InvalidInput(f"{name} must be a positive integer or None, not {value!r}")
        if not isinstance(self.keep_count, int) or isinstance(self.keep_count, bool) or self.keep_count < 0:
            raise InvalidInput(f"keep_count must be a non-negative integer, not {self.keep_count!r}")
        if isinstance(self.keep_strategy, str):
            if self.keep_strategy not in KEEP_STRATEGIES:
                raise InvalidInput(f"unknown keep_strategy {self.keep_strategy!r}; "
                                 f"known: {', '.join(sorted(KEEP_STRATEGIES))}")
        elif not callable(self.keep_strategy):
            raise InvalidInput("keep_strategy must be a strategy name or a callable")
        keeps = self.keep_strategy != "none" and self.keep_count > 0
        if keeps and self.max_messages is not None and self.keep_count >= self.max_messages:
            raise InvalidInput(f"keep_count={self.keep_count} with max_messages={self.max_messages} would "
                             "reset again at the next message; keep_count must be < max_messages")
        if self.token_counter is not None and not callable(self.token_counter):
            raise InvalidInput("token_counter must be callable")

    def count_tokens(self, message: Message) -> int:
        """Tokens of one message by the configured counter."""
        return (self.token_counter or default_token_counter)(message)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResetResult:
    """What a reset check decided.

    ``reason``: ``"max_messages"``, ``"max_age"``, ``"max_tokens"``, ``"manual"`` or
    ``None``. ``messages``: the new segment, the marker (when inserted) first, then
    copies of the kept messages in their original order (new ids, chained after the
    marker, ``reset_from`` naming the original): what a store writes. Unchanged input
    when ``reset`` is false. (Dicts when :meth:`AutoResetManager.check_and_reset` was
    given dicts.)
    """

    reset: bool
    reason: str | None
    messages: list[Any]


class AutoResetManager:
    """The seed's ``AutoResetManager``: pure, no I/O; ``clock`` is ``time.time``-like."""

    def __init__(self, config: AutoResetConfig, *, clock: Callable[[], float] | None = None) -> None:
        if not isinstance(config, AutoResetConfig):
            raise TypeError("config must be an AutoResetConfig")
        self.config = config
        self._clock = clock if clock is not None else time.time

    def __repr__(self) -> str:
        return f"AutoResetManager({self.config!r})"

    def over_limit(self, count: int, tokens: int, start_ms: int | None, now_ms: int) -> str | None:
        """The first limit a segment of these totals breaks, or ``None``."""
        c = self.config
        if c.max_messages is not None and count > c.max_messages:
            return "max_messages"
        if c.max_tokens is not None and tokens > c.max_tokens:
            return "max_tokens"
        if c.max_age_ms is not None and start_ms is not None and now_ms - start_ms > c.max_age_ms:
            return "max_age"
        return None

    def keep(self, segment: list[Message], *, reserve: int = 0, reserve_tokens: int = 0,
             now_ms: int | None = None) -> list[Message]:
        """The strategy's choice, trimmed so that it (plus a reserve) fits every limit.

        ``last`` drops the oldest kept messages first; the other strategies drop the
        newest; a kept list too old (only checked with ``now_ms``, for messages that
        keep their timestamps) drops its oldest. The result is a subsequence of ``segment``.
        """
        c = self.config
        strategy = KEEP_STRATEGIES[c.keep_strategy] if isinstance(c.keep_strategy, str) else c.keep_strategy
        chosen = {id(m) for m in strategy(list(segment), c.keep_count)}
        kept = [m for m in segment if id(m) in chosen]  # original order, only real members
        tokens = [c.count_tokens(m) for m in kept] if c.max_tokens is not None else [0] * len(kept)
        while kept:
            start = kept[0].timestamp if now_ms is not None else None
            reason = self.over_limit(len(kept) + reserve, sum(tokens) + reserve_tokens, start, now_ms or 0)
            if reason is None:
                break
            index = 0 if reason == "max_age" or c.keep_strategy == "last" else -1
            kept.pop(index)
            tokens.pop(index)
        return kept

    def marker(self, reason: str, now_ms: int) -> Message:
        """A reset marker: type ``reset``, role ``system``, a root saying why and when."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
        return Message(id=_random_id(), parent_id=None, type="reset", role="system",
                       content=f"Session reset ({reason}) at {when}.", timestamp=now_ms,
                       fields={"reason": reason})

    def check_and_reset(self, messages: Sequence[Message | Mapping[str, Any]]) -> ResetResult:
        """Reset ``messages`` (a root -> leaf history) when its segment is over a limit.

        The segment is what follows the last ``reset`` marker (all of it when none).
        Not reset: ``ResetResult(False, None, messages)``. Reset: what a store writes
        (see :meth:`reset`). Messages may be :class:`Message` records or, as the seed
        passes them, dicts (``id``, ``parentId``, ``type``, ``role``, ``content``,
        ``timestamp``, extra fields; ``parent_id`` is read too): then the result holds
        dicts of the same shape. :class:`InvalidMessage` for one that is neither.
        """
        history = [_as_message(m) for m in messages]
        segment = _current_segment(history)
        c = self.config
        now = round(self._clock() * 1000)
        tokens = sum(c.count_tokens(m) for m in segment) if c.max_tokens is not None else 0
        start = history[len(history) - len(segment) - 1].timestamp if len(segment) < len(history) else (
            segment[0].timestamp if segment else None)
        reason = self.over_limit(len(segment), tokens, start, now) if c.enabled else None
        if reason is None:
            return ResetResult(reset=False, reason=None, messages=list(messages))
        result = self.reset(segment, reason, now)
        if messages and not isinstance(messages[0], Message):
            return ResetResult(reset=True, reason=reason, messages=[_thaw(m.to_record()) for m in result.messages])
        return result

    def reset(self, segment: list[Message], reason: str, now_ms: int, *, reserve: int = 0, reserve_tokens: int = 0,
              new_id: Callable[[], str] | None = None) -> ResetResult:
        """Reset unconditionally, exactly as a store writes it: the marker (if
        configured; a new root, naming the segment's last message as
        ``archived_head``), then a copy of each kept message chained after it
        (a new id, ``reset_from`` = the original's id, the time ``now_ms``). ``reserve``
        / ``reserve_tokens``: room kept for a message about to be appended."""
        kept = self.keep(segment, reserve=reserve, reserve_tokens=reserve_tokens)
        new_id = new_id if new_id is not None else _random_id
        written: list[Message] = []
        parent: str | None = None
        if self.config.insert_reset_marker:
            marker = dataclasses.replace(self.marker(reason, now_ms), id=new_id())
            if segment:  # the head it moves away from: where the history it archives ends
                marker = dataclasses.replace(marker, fields=_FrozenDict({**marker.fields,
                                                                         "archived_head": segment[-1].id}))
            written.append(marker)
            parent = marker.id
        for original in kept:
            copy = dataclasses.replace(original, id=new_id(), parent_id=parent, timestamp=now_ms,
                                       fields=_FrozenDict({**original.fields, "reset_from": original.id}))
            written.append(copy)
            parent = copy.id
        return ResetResult(reset=True, reason=reason, messages=written)


def _as_message(message: Message | Mapping[str, Any]) -> Message:
    """A record as given to :meth:`AutoResetManager.check_and_reset`: a Message, or a dict."""
    if isinstance(message, Message):
        return message
    if not isinstance(message, Mapping):
        raise InvalidMessage(f"messages must be Message records or dicts, not {type(message).__name__}")
    record = {_SNAKE_TO_CAMEL.get(k, k): v for k, v in message.items()}
    record.setdefault("type", record.get("role"))
    try:
        return _message_from_record(json.loads(_encode_message(record)))
    except ValueError as e:
        raise InvalidMessage(f"not a message record: {e}") from None


def _current_segment(messages: list[Message]) -> list[Message]:
    """The messages after the last reset marker (all of them when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].type == "reset":
            return messages[i + 1:]
    return list(messages)
