"""Install what the tests need and run every check: ``python3 tests/run.py [pytest args]``.

Creates ``.venv`` (unless already inside a virtual environment), installs the
project with its ``test`` and ``postgres`` extras and those of the agent frameworks
(``openai-agents``, ``langchain``, ``pydantic-ai``, ``llama-index``, ``claude-agent-sdk``,
``langgraph``; the
``SESSION_STORE_EXTRAS`` variable replaces the list), then runs ``ruff check``,
``mypy --strict`` and ``pytest``. First of all it runs ``tools/amalgamate.py --check``:
``session_store.py`` is generated from ``src/session_store/`` and must not be
stale. Exits non-zero when any of them fails.

The PostgreSQL tests use ``SESSION_STORE_POSTGRES_DSN`` when set; otherwise this
starts a throwaway server (``tests/postgres_server.py``) when PostgreSQL is
installed, and stops it afterwards. Without either they are skipped with a message,
unless ``SESSION_STORE_REQUIRE_POSTGRES=1`` (CI sets it), which makes that a failure.
The browser tests (tests/test_view.py) likewise need Debian's ``chromium`` and
``chromium-driver``, and skip without them unless ``SESSION_STORE_REQUIRE_BROWSER=1``;
the framework tests skip without their package unless ``SESSION_STORE_REQUIRE_FRAMEWORKS=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import postgres_server

ROOT = Path(__file__).resolve().parent.parent
# The extras of the integrations with agent frameworks, whose tests need their packages.
FRAMEWORKS = "openai-agents,langchain,pydantic-ai,llama-index,claude-agent-sdk,langgraph"


def python() -> str:
    if sys.prefix != sys.base_prefix:  # already in a virtual environment
        return sys.executable
    env_dir = ROOT / ".venv"
    exe = env_dir / "bin" / "python"
    if not exe.exists():
        print(f"creating {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    return str(exe)


STARTED = time.monotonic()


def run(step: str, *cmd: str) -> None:
    """Run one step, saying which and when (minutes:seconds since the start)."""
    minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
    print(f"[{minutes:02d}:{seconds:02d}] {step}: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code:
        print(f"{step} failed (exit {code})", flush=True)
        sys.exit(code)


def main() -> None:
    # What ships is generated from src/session_store/: a stale file fails first, before anything is installed.
    run("generated file up to date", sys.executable, "tools/amalgamate.py", "--check")
    py = python()
    extras = os.environ.get("SESSION_STORE_EXTRAS", "test,postgres," + FRAMEWORKS)
    run("install", py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".[{extras}]")
    run("lint", py, "-m", "ruff", "check", ".")
    run("types", py, "-m", "mypy", "--strict")
    run("types (the modules as a package)", py, "-m", "mypy", "--strict", "src/session_store")
    server = None
    if not os.environ.get("SESSION_STORE_POSTGRES_DSN"):
        if postgres_server.find_binaries() is None:
            print("PostgreSQL is not installed: its tests will be skipped "
                  "(install PostgreSQL 15, or set SESSION_STORE_POSTGRES_DSN)", flush=True)
        else:
            server = postgres_server.start()  # a failure to start is an error, not a skip
            os.environ["SESSION_STORE_POSTGRES_DSN"] = server.dsn
            print(f"started PostgreSQL for the tests: {server.dsn}", flush=True)
    if not all(os.path.exists(f"/usr/bin/{exe}") for exe in ("chromium", "chromedriver")):
        print("Chromium is not installed: the browser tests will be skipped "
              "(apt-get install chromium chromium-driver)", flush=True)
    try:
        run("tests (about 5 minutes; each file is named as it starts)", py, "-m", "pytest", *sys.argv[1:])
        minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
        print(f"[{minutes:02d}:{seconds:02d}] all checks passed", flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
