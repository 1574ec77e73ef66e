"""Check that one Python file is another with its code only moved: ``python3 tools/pure_move.py OLD NEW``.

Every top-level statement of OLD other than an import (its exact text, decorators
included) must appear in NEW as often, and nothing else; so must every comment line
outside the ``# ===`` banners. It prints which statements changed place. Exits 1 when
the files differ in more than order, imports and banners. Used to prove that splitting
the core into ``src/session_store/`` changed no line of code, for example::

    git show be3816d:session_store.py > /tmp/old.py && python3 tools/pure_move.py /tmp/old.py session_store.py
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections import Counter
from pathlib import Path


def statements(text: str) -> list[str]:
    """The text of each top-level statement but imports, in order."""
    lines = text.splitlines()
    out = []
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        decorators = getattr(node, "decorator_list", [])
        start = (decorators[0].lineno if decorators else node.lineno) - 1
        out.append("\n".join(lines[start:node.end_lineno]))
    return out


def comments(text: str) -> list[str]:
    """Comment lines outside ``# ===`` banners (and the first lines, which say a file is generated)."""
    out, banner, heading = [], False, True
    for line in text.splitlines():
        heading = heading and line.startswith("#")
        if line.startswith("# ====="):
            banner = not banner
        elif not banner and not heading and line.lstrip().startswith("#"):
            out.append(line)
    return out


def main(argv: list[str]) -> int:
    old_text, new_text = (Path(path).read_text(encoding="utf-8") for path in argv[1:3])
    old, new = statements(old_text), statements(new_text)
    only_old, only_new = Counter(old) - Counter(new), Counter(new) - Counter(old)
    print(f"top-level statements: {len(old)} before, {len(new)} after; "
          f"only before: {sum(only_old.values())}; only after: {sum(only_new.values())}")
    for text in only_old:
        print("  only before:", text.splitlines()[0])
    for text in only_new:
        print("  only after:", text.splitlines()[0])
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            moved = old[i1:i2] if tag == "delete" else new[j1:j2]
            print(f"  moved ({tag}): {len(moved)} statements from", moved[0].splitlines()[0][:70])
    comments_old, comments_new = Counter(comments(old_text)), Counter(comments(new_text))
    lost, added = comments_old - comments_new, comments_new - comments_old
    print(f"comment lines outside banners: only before: {sum(lost.values())}; only after: {sum(added.values())}")
    for line in list(lost) + list(added):
        print("  ", line)
    return 1 if only_old or only_new or lost or added else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
