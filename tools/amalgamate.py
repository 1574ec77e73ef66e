"""Write ``session_store.py``, the one file users vendor, from the modules in ``src/session_store/``.

SQLite's model: develop in small files, each with one job; ship one generated file;
test what ships. Usage::

    python3 tools/amalgamate.py           # (re)write session_store.py
    python3 tools/amalgamate.py --check   # exit 1 if session_store.py is stale

The generated file is, in this order: a first line saying it is generated and from
what; the package's docstring (``__init__.py``); ``from __future__ import
annotations``; ``__all__``; every module's standard-library imports, merged; then each
module of :data:`MODULES` under a banner made from its docstring, its body exactly as
written. Imports between the modules (``from .records import Message``) are dropped:
in one file every name is already there.

It refuses (exit 2, nothing written) what would make the one file differ from the
package: a module of ``src/session_store/`` missing from :data:`MODULES` or the other
way round; a relative import of a module that does not come earlier in
:data:`MODULES` (so the import graph is the reading order and has no cycles), or of a
name that module does not define; a top-level name defined by two modules; an
import after a module's first statement; a public name in ``__all__`` that no module
defines or that ``__init__.py`` does not re-export.

Standard library only; runs on Python >= 3.10.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "session_store"
OUTPUT = ROOT / "session_store.py"

#: The modules in dependency order, which is also the reading order: each imports
#: only modules before it.
MODULES = [
    "errors",
    "records",
    "validation",
    "log_format",
    "searching",
    "storage",
    "file_systems",
    "real_file_system",
    "tuning",
    "key_names",
    "jsonl_storage",
    "auto_reset",
    "tree",
    "contexts",
    "session_cache",
    "leases",
    "store",
    "catalog",
    "async_store",
    "command_line",
]

_RULE = "# " + "=" * 76
_WIDTH = 120  # ruff's line-length in pyproject.toml


class AmalgamationError(Exception):
    """The modules cannot be made into one file as they are; the message says where."""


class _Module:
    """One source module, split into its docstring, its imports and its body."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(self.text, str(path))
        except SyntaxError as e:
            raise AmalgamationError(f"{path}: {e}") from None
        self.docstring = ast.get_docstring(tree, clean=True) or ""
        #: ``import x`` / ``from x import y`` of other packages: (module, name, alias)
        self.imports: list[tuple[str | None, str, str | None]] = []
        self.type_checking: list[tuple[str | None, str, str | None]] = []
        #: ``from .x import a, b``: (line, module, names)
        self.relative: list[tuple[int, str, list[str]]] = []
        self.defined: dict[str, int] = {}
        lines = self.text.splitlines(keepends=True)
        body_start = 0  # the line (0-based) after the header: docstring, __future__, imports
        header = True
        for node in tree.body:
            if header and self._is_header(node):
                body_start = node.end_lineno or node.lineno
                continue
            header = False
            if isinstance(node, (ast.Import, ast.ImportFrom)) or self._is_type_checking(node):
                raise AmalgamationError(f"{path}:{node.lineno}: an import after the module's first statement; "
                                        "move it to the top")
            for name in _defined_names(node):
                self.defined.setdefault(name, node.lineno)
        self.body = "".join(lines[body_start:]).strip("\n") + "\n"

    def _is_header(self, node: ast.stmt) -> bool:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return True  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            return True
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            return True  # __init__.py's, which the one file starts with
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module:
                raise AmalgamationError(f"{self.path}:{node.lineno}: import modules of the package as 'from .name'")
            self.relative.append((node.lineno, node.module, [a.name for a in node.names]))
            for a in node.names:
                if a.asname and a.asname != a.name:
                    raise AmalgamationError(f"{self.path}:{node.lineno}: '{a.name} as {a.asname}' would not exist "
                                            "in the one file; import it under its own name")
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            self.imports.extend(_import_names(node))
            return True
        if self._is_type_checking(node):
            assert isinstance(node, ast.If)
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.level:
                    self.relative.append((stmt.lineno, stmt.module or "", [a.name for a in stmt.names]))
                else:
                    assert isinstance(stmt, (ast.Import, ast.ImportFrom))
                    self.type_checking.extend(_import_names(stmt))
            return True
        return False

    @staticmethod
    def _is_type_checking(node: ast.stmt) -> bool:
        return (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                and not node.orelse and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body))


def _import_names(node: ast.Import | ast.ImportFrom) -> list[tuple[str | None, str, str | None]]:
    if isinstance(node, ast.Import):
        return [(None, a.name, a.asname) for a in node.names]
    return [(node.module, a.name, a.asname) for a in node.names]


def _defined_names(node: ast.stmt) -> list[str]:
    """The module-level names a top-level statement binds (an ``if``'s branches included)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
        names: list[str] = []
        for part in ast.iter_child_nodes(node):
            if isinstance(part, ast.stmt):
                names += _defined_names(part)
        return names
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _sort_key(name: str) -> tuple[int, str]:
    """isort's (and ruff's) order-by-type: CONSTANTS, then Classes, then functions."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    return (1 if name[:1].isupper() else 2, name)


def _import_block(imports: list[tuple[str | None, str, str | None]], indent: str = "") -> list[str]:
    """Merged import lines in the order ``ruff check`` (isort) wants."""
    plain = sorted({(name, alias) for module, name, alias in imports if module is None})
    froms: dict[str, set[str]] = {}
    aliased: set[tuple[str, str, str]] = set()
    for module, name, alias in imports:
        if module is None:
            continue
        if alias:
            aliased.add((module, name, alias))
        else:
            froms.setdefault(module, set()).add(name)
    out = [f"{indent}import {name}" + (f" as {alias}" if alias else "") for name, alias in plain]
    for module in sorted(set(froms) | {m for m, _, _ in aliased}):
        if module in froms:
            names = ", ".join(sorted(froms[module], key=_sort_key))
            line = f"{indent}from {module} import {names}"
            if len(line) > _WIDTH:
                parts = "".join(f"{indent}    {n},\n" for n in sorted(froms[module], key=_sort_key))
                line = f"{indent}from {module} import (\n{parts}{indent})"
            out.append(line)
        for m, name, alias in sorted(aliased):
            if m == module:
                out.append(f"{indent}from {module} import {name} as {alias}")
    return out


def _banner(module: _Module) -> str:
    """The module's docstring as a banner: ``grep '^# ==='`` stays the table of contents."""
    title, _, rest = module.docstring.partition("\n")
    lines = [_RULE, f"# {title}", f"#   (src/session_store/{module.path.name})"]
    if rest.strip():
        lines.append("#")
        lines += [f"# {line}".rstrip() for line in rest.strip("\n").splitlines()]
    lines.append(_RULE)
    return "\n".join(lines) + "\n"


def _check_all(init: _Module, init_tree: ast.Module, defined: dict[str, str]) -> list[str]:
    names: list[str] = []
    for node in init_tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
    if not names:
        raise AmalgamationError(f"{init.path}: no __all__")
    exported = {n for _, _, ns in init.relative for n in ns}
    for name in names:
        if name not in defined:
            raise AmalgamationError(f"{init.path}: __all__ names {name!r}, which no module defines")
        if name not in exported:
            raise AmalgamationError(f"{init.path}: __all__ names {name!r}, which __init__.py does not import")
    return names


def amalgamate(package: Path = PACKAGE) -> str:
    """The text of the one file, or :class:`AmalgamationError` saying why there is none."""
    found = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    if found != set(MODULES):
        extra, missing = sorted(found - set(MODULES)), sorted(set(MODULES) - found)
        raise AmalgamationError(f"MODULES and {package} differ: not listed {extra}, not there {missing}")
    modules = [_Module(name, package / f"{name}.py") for name in MODULES]
    defined: dict[str, str] = {}  # name -> the module that defines it
    for module in modules:
        if not module.docstring:
            raise AmalgamationError(f"{module.path}: no docstring saying what the module keeps and promises")
        for name, line in module.defined.items():
            if name in defined:
                raise AmalgamationError(f"{module.path}:{line}: {name!r} is already defined in "
                                        f"{defined[name]}.py; one name, one place")
            defined[name] = module.name
    for module in modules:
        earlier = MODULES[:MODULES.index(module.name)]
        for line, source, names in module.relative:
            if source not in earlier:
                where = "a later module" if source in MODULES else "no module of the package"
                raise AmalgamationError(f"{module.path}:{line}: imports from {source!r}, {where}; a module imports "
                                        f"only those before it in MODULES: {', '.join(earlier) or 'none'}")
            for name in names:
                if defined.get(name) != source:
                    raise AmalgamationError(f"{module.path}:{line}: {source}.py does not define {name!r}")
    init = _Module("__init__", package / "__init__.py")
    init_tree = ast.parse(init.text)
    _check_all(init, init_tree, defined)
    for line, source, _ in init.relative:
        if source not in MODULES:
            raise AmalgamationError(f"{init.path}:{line}: imports from {source!r}, no module of the package")

    imports = [imp for m in modules for imp in m.imports]
    type_checking = [imp for m in modules for imp in m.type_checking]
    listed = ", ".join(f"{m}.py" for m in MODULES)
    first = ("GENERATED by tools/amalgamate.py from src/session_store/: do not edit; edit the modules and run "
             f"python3 tools/amalgamate.py. Modules, in order: __init__.py, {listed}.")
    out = ["".join(f"# {line}\n" for line in textwrap.wrap(first, _WIDTH - 2))]
    out.append(f'"""{init.docstring}\n"""\n\nfrom __future__ import annotations\n\n')
    out.append("__all__ = [\n" + _all_lines(init.text) + "]\n\n")
    out.append("\n".join(_import_block(imports)) + "\n")
    if type_checking:
        out.append("\nif TYPE_CHECKING:  # imported where they are used: a store that needs neither does not pay "
                   "for them\n" + "\n".join(_import_block(type_checking, "    ")) + "\n")
    for module in modules:
        out.append("\n\n" + _banner(module) + "\n" + module.body)
    return "".join(out)


def _all_lines(init_text: str) -> str:
    """``__all__``'s entries as written in ``__init__.py``, its section comments included."""
    start = init_text.index("__all__ = [\n") + len("__all__ = [\n")
    return init_text[start:init_text.index("]\n", start)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if session_store.py is not what it would write")
    args = parser.parse_args(argv)
    try:
        text = amalgamate()
    except AmalgamationError as e:
        print(f"amalgamate: {e}", file=sys.stderr)
        return 2
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if args.check:
        if current != text:
            print("amalgamate: session_store.py is stale: it is generated from src/session_store/; "
                  "run python3 tools/amalgamate.py", file=sys.stderr)
            return 1
        print(f"session_store.py is up to date with src/session_store/ ({len(MODULES)} modules)")
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote session_store.py ({text.count(chr(10))} lines) from {len(MODULES)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
