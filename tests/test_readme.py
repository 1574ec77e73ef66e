"""Every Python block of the README and of docs/ runs as written, in a fresh folder, twice in a row."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pg
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for page in PAGES
          for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 8


def test_the_readme_is_a_front_page_under_25_kb() -> None:
    """A newcomer reads it top to bottom; the details live in docs/."""
    assert (ROOT / "README.md").stat().st_size < 25_000


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_a_page_speaks_to_its_reader_not_of_the_project_history(page: Path) -> None:
    """No "the seed" or "issue 17": the TypeScript SessionStore whose API this follows is named as such."""
    text = page.read_text(encoding="utf-8")
    assert not re.findall(r"\bseed|\bissue \d+", text, re.I)


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_a_page_installs_only_in_ways_that_work(page: Path) -> None:
    """There is no published package: "session-store[extra]" works only as a direct reference (``@ git+...``)."""
    for line in page.read_text(encoding="utf-8").splitlines():
        if re.search(r"pip install [\"']session-store\[", line):
            assert "@ git+" in line, line


@pytest.mark.parametrize("block", BLOCKS, ids=[b.strip().splitlines()[0][:60] for b in BLOCKS])
def test_a_readme_block_runs_as_written_twice_in_a_fresh_folder(block: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in (".", "backends", "integrations"))}
    if pg.DSN:
        env["DATABASE_URL"] = pg.DSN  # the PostgreSQL example runs against the test server
    for run in (1, 2):
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"run {run}:\n{done.stderr}"
