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
BLOCKS = [block for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
          for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[b.strip().splitlines()[0][:60] for b in BLOCKS])
def test_a_readme_block_runs_as_written_twice_in_a_fresh_folder(block: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in (".", "backends", "integrations"))}
    if pg.DSN:
        env["DATABASE_URL"] = pg.DSN  # the PostgreSQL example runs against the test server
    for run in (1, 2):
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"run {run}:\n{done.stderr}"
