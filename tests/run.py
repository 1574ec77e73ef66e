"""Install what the tests need and run every check: ``python3 tests/run.py [pytest args]``.

Creates ``.venv`` (unless already inside a virtual environment), installs the
project with its ``test`` extra, then runs ``ruff check``, ``mypy --strict`` and
``pytest``. Exits non-zero when any of them fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python() -> str:
    if sys.prefix != sys.base_prefix:  # already in a virtual environment
        return sys.executable
    env_dir = ROOT / ".venv"
    exe = env_dir / "bin" / "python"
    if not exe.exists():
        print(f"creating {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    return str(exe)


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        sys.exit(code)


def main() -> None:
    py = python()
    extras = os.environ.get("SESSION_STORE_EXTRAS", "test")
    run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".[{extras}]")
    run(py, "-m", "ruff", "check", ".")
    run(py, "-m", "mypy", "--strict")
    run(py, "-m", "pytest", *sys.argv[1:])


if __name__ == "__main__":
    main()
