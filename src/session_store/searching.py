"""Search words and titles: what a message says, as search and listings read it.

One rule each, used by every backend: :func:`message_text` (the readable text of a
message's content, whatever shape it came in), :func:`search_words` (what a query or a
text is made of: its words, lowercased), :func:`record_words` (what a search index
keeps of a message record), and the one-line previews listings show.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInput

#
# A query is text, never syntax: it is split into words exactly as the messages are,
# and a message matches when it holds every word of the query. So `"a" OR b*` is the
# three words `a`, `or`, `b`, whatever engine is underneath (FTS5, a tsvector, a scan):
# the engines are given the words (quoted, or through plainto_tsquery), never the query.
# A word is a run of letters and digits (Unicode), lowercased; everything else
# separates words. Backends index record_words(record): the words already split and
# lowercased here, space separated, so that every engine's tokenizer reads the same
# words this module does.

_WORD = re.compile(r"[^\W_]+")
_TEXT_KEYS = ("text", "content")
_MAX_TEXT = 100_000  # characters of a message that search reads (and indexes)
_MAX_DEPTH = 8
_PREVIEW_CHARS = 200
_TITLE_CHARS = 60


def message_text(content: Any) -> str:
    """The readable text of a message's content: the content itself when it is a
    string; else every string found under a ``"text"`` or ``"content"`` key of its
    parts (OpenAI and Anthropic blocks, the framework adapters' records), in order,
    one per line. Tool-call arguments, images and ids are not text. At most the
    first 100,000 characters."""
    out: list[str] = []
    size = 0

    def walk(value: Any, depth: int) -> None:
        nonlocal size
        if size >= _MAX_TEXT or depth > _MAX_DEPTH:
            return
        if isinstance(value, str):
            out.append(value)
            size += len(value)
        elif isinstance(value, Mapping):
            for k in _TEXT_KEYS:
                if k in value:
                    walk(value[k], depth + 1)
        elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
            for item in value:
                walk(item, depth + 1)

    walk(content, 0)
    return "\n".join(out)[:_MAX_TEXT]


def search_words(text: str) -> list[str]:
    """The words of ``text`` as search reads them: runs of letters and digits,
    lowercased, in order (repeats kept). A query's words are found the same way."""
    return _WORD.findall(text.lower())


def record_words(record: Mapping[str, Any]) -> str:
    """What a search index keeps of a message record: the words of
    :func:`message_text` of its ``content``, space separated. A storage that keeps
    an index (:meth:`Storage.search_messages`) indexes exactly this."""
    return " ".join(search_words(message_text(record.get("content"))))


def key_range(prefix: str) -> tuple[str, str | None] | None:
    """For a storage that keeps keys in order: ``(low, high)`` such that the keys
    starting with ``prefix`` are exactly those with ``low <= key < high`` in code
    point order (UTF-8 byte order, SQLite's BINARY and PostgreSQL's "C" collation);
    ``high`` ``None`` for no bound; ``None`` when no key can start so (a lone
    surrogate is in no key). ``high`` is ``prefix`` with its last character that can
    grow grown by one (skipping the surrogates), what follows it dropped."""
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        return None
    for end in range(len(prefix) - 1, -1, -1):
        c = ord(prefix[end])
        if c < 0x10FFFF:
            return prefix, prefix[:end] + chr(0xE000 if c + 1 == 0xD800 else c + 1)
    return prefix, None


def query_words(words: Sequence[str]) -> list[str] | None:
    """For a storage's :meth:`Storage.search_messages`: its ``words``, each once;
    ``None`` when one of them is no word :func:`search_words` makes (no message's
    words can hold it: nothing matches). :class:`InvalidInput` for a string given
    where a sequence of words belongs."""
    if isinstance(words, str):
        raise InvalidInput("words must be a sequence of words, not a str")
    for word in words:
        if not isinstance(word, str) or search_words(word) != [word]:
            return None
    return list(dict.fromkeys(words))


def _one_line(text: str, width: int) -> str:
    """``text`` as one line of at most ``width`` characters (cut at a word when it
    can be, with an ellipsis)."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[:width - 1]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _preview(content: Any) -> str | None:
    """A message's text as one short line (a listing's first message), or ``None``
    when it has no text."""
    line = _one_line(message_text(content), _PREVIEW_CHARS)
    return line or None


def _shown_title(title: str | None, preview: str | None) -> str | None:
    """The title a session shows: the one set, else its first user message (its
    ``preview``), shorter."""
    if title is not None:
        return title
    return None if preview is None else _one_line(preview, _TITLE_CHARS)


def _snippet(text: str, words: Sequence[str], width: int = 160) -> str:
    """One line of ``text`` around the first place one of ``words`` occurs."""
    line = " ".join(text.split())
    lowered = line.lower()
    at = len(line)
    for w in words:
        for m in re.finditer(re.escape(w), lowered):
            s, e = m.span()
            if (s == 0 or not _WORD.match(lowered[s - 1])) and (e == len(lowered) or not _WORD.match(lowered[e])):
                at = min(at, s)
                break
    if at == len(line):
        at = 0
    start = max(0, at - width // 3)
    if start:
        space = line.find(" ", start)
        start = space + 1 if 0 <= space < at else start
    piece = line[start:start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(line) else "")
