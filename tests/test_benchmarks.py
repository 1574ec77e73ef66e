"""The benchmark harness runs (quick mode) and reports every row; timings are never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600,
                         env={"SESSION_STORE_BENCH_DIR": str(tmp), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return out.read_text()


def test_quick_benchmark_reports_every_goal_of_issue_17(quick_report: str) -> None:
    for metric in ("open + resolve + read 50 messages, files", "open + resolve + read 50 messages, SQLite",
                   "stateless request, files", "stateless request, SQLite", "sessions, files", "sessions, SQLite",
                   "RSS across touching", "RSS after close()", "memory per cached message", "get_metadata of",
                   "build_context, 100 messages, warm", "append one message + build the head's context",
                   "4 processes, one session's lease", "cold load of a 200-message session",
                   "-message session: fresh store + get_messages",
                   "-message session: fresh store + get_linear_history(sid, limit=50)",
                   "-message session: fresh store + build_context(sid, limit=50)"):
        assert metric in quick_report, metric


def test_quick_benchmark_reports_every_operation_and_curve(quick_report: str) -> None:
    for metric in ("append, InMemoryFileSystem", "append, files, durable", "append, files, not durable",
                   "append, SQLite, durable", "durable appends, 8 threads, 8 sessions",
                   "durable appends, 8 threads, 1 session", "read all of 100 messages, warm",
                   "linear history, depth 10", "build_context openai, depth 100",
                   "lock acquire+release, InMemoryFileSystem", "lock acquire+release, files",
                   "open + resolve + read 50 messages vs sessions in the store", "fresh store per request",
                   "long-lived store", "RSS vs sessions touched", "build_context vs path length",
                   "append vs session size", "fresh store + read vs session size"):
        assert metric in quick_report, metric


def test_every_verdict_is_computed_and_every_median_states_its_samples(quick_report: str) -> None:
    goals = quick_report.split("## Goals of issue 17")[1].split("\n## ")[0]
    rows = [line for line in goals.splitlines() if line.startswith("| ") and not line.startswith("| goal")]
    assert rows
    for row in rows:
        assert re.search(r"\| (met|\*\*missed\*\*|n/a|—) \|$", row), row
    assert "(n=" in quick_report


def test_quick_benchmark_records_the_commit_it_measured(quick_report: str) -> None:
    assert re.search(r"Measured code: commit [0-9a-f]{10} \(\d{4}-\d{2}-\d{2}\)", quick_report)


def test_the_catalog_benchmark_runs_and_reports_every_row() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "catalog.py"), "--quick"], capture_output=True,
                         text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("One user's conversations", "| files |", "| SQLite |", "| PostgreSQL |", "a rare word",
                "words files beside them", "SQLite, durable", "files + words file, durable"):
        assert row in run.stdout, row
