"""The benchmark harness runs (quick mode); timings are never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--no-peers",
                          "--out", str(out)], capture_output=True, text=True, timeout=600,
                         env={"SESSION_STORE_BENCH_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    for metric in ("append, InMemoryFileSystem", "append, disk, durable", "append, disk, non-durable",
                   "durable appends, 8 threads, 8 sessions", "durable appends, 8 threads, 1 session",
                   "read all of 100 messages, warm", "cold open + read of 100 messages", "linear history, depth 10",
                   "build_context, depth 100", "lock acquire+release, InMemoryFileSystem",
                   "lock acquire+release, RealFileSystem", "append cost vs session size",
                   "resolve + append vs sessions", "cold open + read vs session size", "Memory per message"):
        assert metric in text, metric
