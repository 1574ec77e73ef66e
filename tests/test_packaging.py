"""An installed wheel gives type checkers real types (PEP 561), and it is the one file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import session_store

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = '''
import session_store_transcripts
from session_store import SessionStore
from session_store_sqlite import SqliteStorage

store = SessionStore(SqliteStorage("sessions.db"))
count: int = store.resolve("user:alice")
copy: str = session_store_transcripts.import_pi(store, ["{}"], key="pi:copy")
'''


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, cwd=out)
    [wheel] = out.glob("session_store-*.whl")
    return wheel


def test_the_wheel_holds_the_single_files_byte_for_byte_with_py_typed(tmp_path: Path) -> None:
    built = build_wheel(tmp_path)
    assert built.name.startswith(f"session_store-{session_store.__version__}-")  # the version: the file's own
    with zipfile.ZipFile(built) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("session_store/__init__.py") == (ROOT / "session_store.py").read_bytes()
        sqlite = (ROOT / "backends" / "session_store_sqlite.py").read_bytes()
        assert wheel.read("session_store_sqlite/__init__.py") == sqlite
        view = (ROOT / "integrations" / "session_store_view.py").read_bytes()
        assert wheel.read("session_store_view/__init__.py") == view
        transcripts = (ROOT / "integrations" / "session_store_transcripts.py").read_bytes()
        assert wheel.read("session_store_transcripts/__init__.py") == transcripts
        for framework in ("openai_agents", "langchain", "pydantic_ai", "llama_index", "claude_agent_sdk", "langgraph"):
            module = (ROOT / "integrations" / f"session_store_{framework}.py").read_bytes()
            assert wheel.read(f"session_store_{framework}/__init__.py") == module
            assert f"session_store_{framework}/py.typed" in names
    assert {"session_store/py.typed", "session_store_sqlite/py.typed", "session_store_conformance/py.typed",
            "session_store_view/py.typed", "session_store_transcripts/py.typed"} <= names


def test_mypy_sees_real_types_in_an_installed_wheel(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as zf:  # what pip does with a pure-Python wheel
        zf.extractall(site)
    user = tmp_path / "user"
    user.mkdir()
    (user / "app.py").write_text(USER_CODE)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                             "--python-executable", str(python), "app.py"],
                            cwd=user, capture_output=True, text=True, env=env)
    # The one error is ours on purpose: resolve() returns str. An untyped module would
    # instead give "missing library stubs or py.typed marker" and no error on that line.
    assert 'expression has type "str", variable has type "int"' in result.stdout, result.stdout
    assert "import-untyped" not in result.stdout and "import-not-found" not in result.stdout
    assert result.stdout.count("error:") == 1
    run = subprocess.run([str(python), "-m", "session_store", "--dir", str(tmp_path / "demo"), "demo"],
                         capture_output=True, text=True, env=env, cwd=user)
    assert run.returncode == 0, run.stderr


VENDORED_APP = '''
import json, sys
import session_store, session_store_transcripts
lines = [json.dumps({"type": "session", "version": 3, "id": "p1", "timestamp": "2026-01-01T00:00:00.000Z", "cwd": "/"}),
         json.dumps({"type": "message", "id": "e1", "parentId": None, "timestamp": "2026-01-01T00:00:01.000Z",
                     "message": {"role": "user", "content": "Hello from pi"}})]
with session_store.SessionStore(session_store.InMemoryFileSystem()) as store:
    sid = session_store_transcripts.import_pi(store, lines)
    print(json.dumps(store.build_context(sid)))
'''


def test_vendoring_the_two_files_is_enough_for_transcripts(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for source in (ROOT / "session_store.py", ROOT / "integrations" / "session_store_transcripts.py"):
        (app / source.name).write_bytes(source.read_bytes())
    (app / "main.py").write_text(VENDORED_APP)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    run = subprocess.run([sys.executable, "-S", "main.py"], cwd=app, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [{"role": "user", "content": "Hello from pi"}]
    pi = tmp_path / "pi.jsonl"
    pi.write_text(json.dumps({"type": "session", "version": 3, "id": "p1", "timestamp": "2026-01-01T00:00:00Z",
                              "cwd": "/"}) + "\n")
    cli = subprocess.run([sys.executable, "-S", str(app / "session_store.py"), "import", str(pi), "--dir",
                          str(tmp_path / "store")], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr  # the command line found the module beside it and the format
