"""Validation: what a caller may hand the store, checked before anything is written.

Names (branches, owners, roles, types), keys, session ids, timeouts, timestamps and
JSON shapes (nesting at most :data:`MAX_NESTING`, string keys) are checked here; a bad
one raises :class:`InvalidInput` (or a subclass) and nothing is written. Every
user-supplied string is data: a name is never a path and a key is never one either.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from .errors import InvalidInput, InvalidKey, InvalidMessage
from .records import _CONTROL_RE, _MAX_KEY_CHARS, _MAX_NAME_CHARS, _SESSION_ID_RE, Branch


def _check_name(what: str, value: object, error: type[InvalidInput] = InvalidInput) -> str:
    """A non-empty id/name of at most 256 characters without control characters."""
    if value.__class__ is str and value in _GOOD_NAMES:  # a role, type or owner seen before
        return value
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {type(value).__name__}")
    if not value or len(value) > _MAX_NAME_CHARS:
        raise error(f"{what} must have 1 to {_MAX_NAME_CHARS} characters (got {len(value)})")
    if _CONTROL_RE.search(value):
        raise error(f"{what} must not contain control characters: {value!r}")
    if not value.strip():
        raise error(f"{what} must not be blank")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid unicode (lone surrogate)") from None
    if value.__class__ is str and len(value) <= 32:
        if len(_GOOD_NAMES) >= 1024:  # bounded: ids pass here too
            _GOOD_NAMES.clear()
        _GOOD_NAMES[value] = None
    return value


# Short names _check_name accepted (roles, types, owners): checked again in one lookup.
_GOOD_NAMES: dict[str, None] = {}


def _is_name(value: object) -> TypeGuard[str]:
    """Whether :func:`_check_name` accepts ``value``."""
    try:
        _check_name("name", value)
    except InvalidInput:
        return False
    return True


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidKey(f"session key must be a string, not {type(key).__name__}")
    if not key or len(key) > _MAX_KEY_CHARS:
        raise InvalidKey(f"session key must have 1 to {_MAX_KEY_CHARS} characters (got {len(key)})")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("session key is not valid unicode (lone surrogate)") from None
    return key


def _is_session_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _SESSION_ID_RE.fullmatch(value) is not None


def _check_import_branch(b: Branch, seen: set[str], named: set[str]) -> None:
    """An imported branch: a valid name not in ``named`` (the names given before it,
    to which it is added), integer times, a head among ``seen``."""
    _check_name("branch name", b.name)
    if b.name in named:
        raise InvalidInput(f"branch {b.name!r} is given twice")
    named.add(b.name)
    _check_time(f"created_at of branch {b.name!r}", b.created_at)
    _check_time(f"updated_at of branch {b.name!r}", b.updated_at)
    if b.head_id is not None and b.head_id not in seen:
        raise InvalidInput(f"branch {b.name!r} points at {b.head_id!r}, which is not imported")


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise InvalidInput("timeout must be a non-negative number or None")
    return timeout


#: Content and extra fields may nest at most this many arrays and objects deep. A
#: deeper append is refused with :class:`InvalidMessage` and nothing is written, so
#: every reader can decode what was written, even from the bottom of a deep stack.
MAX_NESTING = 100

_MAX_TIME_MS = 253_402_300_799_999  # timestamps the store accepts: up to the end of year 9999


def _check_json_shape(value: Any, what: str) -> None:
    """Refuse what JSON would change or a reader could not read back: nesting deeper
    than :data:`MAX_NESTING` (a cycle included) and object keys that are not strings
    (``{1: "a", "1": "b"}`` would silently become ``{"1": "b"}``). Iterative: a
    hostile value cannot exhaust the stack here."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise InvalidMessage(f"{what} nests deeper than {MAX_NESTING} arrays and objects")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise InvalidMessage(f"{what}: JSON object keys must be strings, not {type(k).__name__} {k!r}")
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, depth + 1))
        else:
            for v in node:
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, depth + 1))


def _check_time(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_TIME_MS:
        raise InvalidInput(f"{what} must be an integer of ms between 0 and {_MAX_TIME_MS} (year 9999), "
                           f"not {value!r}")
    return value


_MAX_TITLE_CHARS = 200


def _check_title(title: object) -> str | None:
    """A session title: ``None`` (none set), or one line of 1 to 200 characters
    that is not only blanks, without control characters. Kept verbatim: data, never
    markup."""
    if title is None:
        return None
    if not isinstance(title, str):
        raise InvalidInput(f"a title must be a string or None, not {type(title).__name__}")
    if not title.strip() or len(title) > _MAX_TITLE_CHARS:
        raise InvalidInput(f"a title must have 1 to {_MAX_TITLE_CHARS} characters, not only blanks "
                           f"(got {len(title)})")
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in title):
        raise InvalidInput("a title is one line: no control characters or line breaks")
    try:
        title.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("a title is not valid unicode (lone surrogate)") from None
    return title
