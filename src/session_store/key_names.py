"""Key names: an ordered index of session keys, so that a key prefix is a folder.

The key index (``keys/``: one link per key, named by its hash) answers "which session
has this key" in one ``readlink``, and nothing else. This module lays the same keys
out as a tree of folders (``names/``), split into pieces, so that the sessions whose
key starts with a prefix are the entries of one subtree: :class:`JsonlStorage` lists
50 of them in a store of 100,000 sessions with the work of listing 50 in a store of 10.
It keeps no truth of its own: every entry a walk finds is checked against the key
index before it is believed (see :meth:`JsonlStorage.find_sessions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import unquote

from .file_systems import FileSystem

#
# Layout of names/ (version 1; a store written before it existed is indexed once, by
# its first find_sessions or repair(), from the session folders):
#
#   names/.complete                   {"names": 1, ...}: the rules below; written last
#                                     by a build, so a build cut short is done again
#   names/<piece>/.../<rest>=<id>     session <id> has the key spelled by the folders
#                                     then <rest> (often empty: "=<id>")
#   names/<piece>/ x 8 /+<id>         session <id> has a key of more pieces, that
#                                     starts so (only its session.json spells it)
#
# A key is cut into pieces left to right: a piece ends after a separator (one of
# _NAME_SEPARATORS: the `:` `/` `.` `@` `#` that keys such as "user:alice:chat-7",
# "tenant/app/thread" or "bot@host#42" are made of) or after _NAME_PIECE characters,
# whichever comes first; what follows the last complete piece is the key's rest
# (no separator, shorter than a piece). Each complete piece is a folder, and the leaf
# of the key's session is in the last one: "user:alice:chat-7" is
# names/user%3A/alice%3A/chat-7=<id>. A prefix is cut the same way, so the sessions
# whose key starts with "user:alice:" are exactly the leaves below names/user%3A/alice%3A/,
# and those whose key starts with "user:alice:ch" are the leaves there whose rest, and
# the subtrees there whose piece, starts with "ch": one listdir more. A folder per
# piece, not per key: a user's sessions share their folder, and a creation usually
# makes no folder at all.
#
# Names are a percent-encoding that keeps only `a-z 0-9 - _ ~` (everything else,
# capital letters included, is %XX of its UTF-8 bytes): ASCII (no Unicode
# normalisation can change them), never "." or "..", never starting with "." (kept for
# the storage's own files), without "/" or "=", at most 16 x 12 = 192 characters for a
# piece and 15 x 12 + 37 = 217 for a leaf (under every NAME_MAX), and no two differ only in case (a
# folder of a case-insensitive file system holds one piece). Folders go at most
# _NAME_DEPTH deep (8 x 193 characters, under PATH_MAX whatever the key): the leaves of
# keys of more pieces all wait in the eighth folder as "+<id>", where a prefix longer
# than eight pieces is matched by reading each candidate's key from its session.json.
#
# A leaf is a symbolic link named for its session (its target: the session id too),
# so two sessions of one key (one deleted, one created after it; a creation that lost
# a race to another) never contend for a name, and creating or removing one takes no
# lock. A creation writes its leaf before its key link (the commit), durably when the
# store is durable; a deletion removes it after its commit. What a crash leaves is a
# leaf of no live session, which no walk believes and repair() removes. Folders are
# never removed (that would race with a creation about to write its leaf in one): a
# prefix that had sessions costs its empty folders' listing in later walks.

_NAME_SEPARATORS = frozenset(":/.@#")
_NAME_PIECE = 16  # characters at most in a piece
_NAME_DEPTH = 8  # folders at most below names/
_NAME_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_~")
#: What names/.complete holds: the rules its leaves were laid out by (others: built again).
_NAMES_MARK = (json.dumps({"names": 1, "separators": "".join(sorted(_NAME_SEPARATORS)), "piece": _NAME_PIECE,
                           "depth": _NAME_DEPTH}, sort_keys=True) + "\n").encode()


def _link_in_folder(fs: FileSystem, target: str, path: str, *, durable: bool) -> bool:
    """``fs.symlink(target, path)``, making its folder first when it is missing (the
    first link there). The folder is usually there (a user's sessions share one, and
    the key index has 256): one ``symlink``, no ``makedirs`` before it."""
    try:
        return fs.symlink(target, path, durable=durable)
    except FileNotFoundError:
        fs.makedirs(path.rpartition("/")[0], durable=durable)
        return fs.symlink(target, path, durable=durable)


def _key_pieces(text: str) -> tuple[list[str], str]:
    """``text`` cut into pieces (see "Layout of names/"): the complete pieces, and the
    rest after them (``""`` when ``text`` ends where a piece does)."""
    pieces, start = [], 0
    for at, char in enumerate(text):
        if char in _NAME_SEPARATORS or at + 1 - start == _NAME_PIECE:
            pieces.append(text[start:at + 1])
            start = at + 1
    return pieces, text[start:]


def _name_of(piece: str) -> str:
    """A piece as a folder name: ``a-z 0-9 - _ ~`` kept, everything else ``%XX``."""
    kept = _NAME_KEPT
    return "".join(c if c in kept else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in piece)


class _KeyNames:
    """The ``names/`` folder of one store (see "Layout of names/"): where a session's
    leaf is, adding and removing one, whether the folder is whole, and its walks."""

    __slots__ = ("fs", "root")

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self.fs, self.root = fs, f"{directory}/names"

    def leaf(self, key: str, session_id: str) -> str:
        """Where session ``session_id`` of ``key`` has its leaf."""
        pieces, rest = _key_pieces(key)
        name = f"+{session_id}" if len(pieces) > _NAME_DEPTH else f"{_name_of(rest)}={session_id}"
        return "/".join([self.root, *map(_name_of, pieces[:_NAME_DEPTH]), name])

    def add(self, key: str, session_id: str, *, durable: bool) -> bool:
        """Write the session's leaf (and its folders, when it is the first there);
        whether it was not there yet."""
        return _link_in_folder(self.fs, session_id, self.leaf(key, session_id), durable=durable)

    def remove(self, key: str, session_id: str, *, durable: bool = False) -> None:
        """Remove the session's leaf (no error when it is not there)."""
        self.fs.remove(self.leaf(key, session_id), durable=durable)

    @property
    def whole(self) -> bool:
        """Whether ``names/.complete`` says every live session has its leaf, by these rules."""
        try:
            return self.fs.read(f"{self.root}/.complete") == _NAMES_MARK
        except FileNotFoundError:
            return False

    def mark_whole(self, *, durable: bool) -> None:
        """Say every live session has its leaf (written last by whoever gave them one)."""
        self.fs.makedirs(self.root, durable=durable)
        self.fs.write_atomic(f"{self.root}/.complete", _NAMES_MARK, durable=durable)

    def leaves(self, folder: str, depth: int) -> Iterator[str]:
        """Every leaf below ``folder`` (``depth`` folders below ``names/``): their paths."""
        stack = [(folder, depth)]
        while stack:
            folder, depth = stack.pop()
            for name in self.fs.listdir(folder):
                if "=" in name or name[0] == "+":
                    yield f"{folder}/{name}"
                elif name[0] != "." and depth < _NAME_DEPTH:
                    stack.append((f"{folder}/{name}", depth + 1))

    def candidates(self, prefix: str) -> Iterator[str]:
        """The session ids of the leaves where a session whose key starts with
        ``prefix`` can be: those below the folder of the prefix's complete pieces
        whose rest or piece starts with what follows them. Each is still to be
        checked: a leaf may be stale, and a ``+`` leaf is of a key that only its
        session.json spells."""
        pieces, rest = _key_pieces(prefix)
        depth = min(len(pieces), _NAME_DEPTH)
        folder = "/".join([self.root, *map(_name_of, pieces[:depth])])
        if not rest and depth < _NAME_DEPTH:
            found: Iterable[str] = self.leaves(folder, depth)  # the common case: the prefix ends a piece
        else:
            found = self._matching(folder, depth, rest if len(pieces) == depth else None)
        for leaf in found:
            yield leaf.rpartition("/")[2].rpartition("=")[2].lstrip("+")

    def _matching(self, folder: str, depth: int, rest: str | None) -> Iterator[str]:
        """The leaves in ``folder`` whose rest starts with ``rest``, and every leaf below
        its folders whose piece does; ``None``: the prefix goes on past the deepest
        folder, where only its ``+`` leaves can be of a longer key."""
        for name in self.fs.listdir(folder):
            if name[0] == "+":
                yield f"{folder}/{name}"
            elif rest is None or name[0] == ".":
                continue
            elif "=" in name:
                if unquote(name.partition("=")[0]).startswith(rest):
                    yield f"{folder}/{name}"
            elif depth < _NAME_DEPTH and unquote(name).startswith(rest):
                yield from self.leaves(f"{folder}/{name}", depth + 1)

    def stale(self, is_session: Callable[[str], bool], key_of: Callable[[str], str | None]) -> list[tuple[str, str]]:
        """Leaves that are provably garbage, ``(path, why)``: of no session (not
        ``is_session``: a creation undone or cut short, a deletion cut short; a
        creation writes its leaf only once its folder is in place, and session ids
        are never used twice), or not where the session's key (``key_of``; ``None``
        when unknown) puts them."""
        found = []
        for leaf in self.leaves(self.root, 0):
            sid = leaf.rpartition("/")[2].rpartition("=")[2].lstrip("+")
            if not is_session(sid):
                found.append((leaf, "a key name of no session (an interrupted creation or deletion)"))
                continue
            key = key_of(sid)
            if key is not None and self.leaf(key, sid) != leaf:
                found.append((leaf, f"a key name that is not the key of session {sid}"))
        return found
