"""Real crashes: SIGKILL a durable writer at random moments; nothing acknowledged is lost.

CI runs a few cycles; the full run is ``SESSION_STORE_CRASH_CYCLES=1000 python3 -m pytest
tests/test_crash.py`` (about ten minutes here). Each cycle reuses the same store, so
the damage of every earlier kill is still on disk when the next writer starts. The
writer appends, branches, takes leases, resets, imports, deletes and repairs: a kill
can land inside any of them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import store_at

CYCLES = int(os.environ.get("SESSION_STORE_CRASH_CYCLES", "12"))

# Each line is printed only once the call returned: what it says is acknowledged.
CHILD = r"""
import json, sys
import session_store as ss
from _procs import store_at
store = store_at(sys.argv[1])
sid = store.resolve("crash")
n = int(sys.argv[2])
def say(*what):
    print(json.dumps(what), flush=True)
def chain(k):  # the messages of one append_many: all of them or none, whenever the kill lands
    return [m.id for m in store.append_many(sid, [{"role": "user" if i % 2 == 0 else "assistant",
                                                     "content": "chain %d %d/%d " % (n, i, k) + "y" * 3000}
                                                    for i in range(k)])]
say("chain", chain(3))  # (the first line the parent waits for: every cycle acknowledges a chain)
while True:
    n += 1
    m = store.append(sid, role="user", content="payload %d " % n + "x" * (n % 300))
    say("message", m.id)
    if n % 7 == 1:
        say("chain", chain(2 + n % 4))
    if n % 17 == 0:
        store.create_branch(sid, "b-%s" % m.id, m.id)
    if n % 23 == 0:
        with store.lock(sid, "crasher"):
            say("message", store.append(sid, role="assistant", content="locked %d" % n).id)
    if n % 29 == 0:
        result = store.reset(sid, keep_strategy="last", keep_count=2)
        say("reset", store.get_head(sid), [c.content for c in result.messages[1:]])
    if n % 31 == 0:
        messages = [ss.Message(id="i%d-%d" % (n, i), parent_id="i%d-%d" % (n, i - 1) if i else None, type="user",
                               role="user", content="imported %d" % i, timestamp=1000 + i) for i in range(40)]
        say("import", store.import_session("import-%d" % n, messages), 40)
    if n % 37 == 0:
        side = store.resolve("side-%d" % n)
        say("message", store.append(side, role="user", content="side").id, side)
        store.delete_session(side)
        say("deleted", side)
    if n % 97 == 0:
        store.repair(sid)
"""


@pytest.mark.parametrize("backend", ["files", "sqlite"])
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path, backend: str) -> None:
    rng = random.Random(os.environ.get("SESSION_STORE_CRASH_SEED", "7"))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / d) for d in (".", "backends", "tests"))}
    place = str(tmp_path / "sessions.db") if backend == "sqlite" else str(tmp_path)
    acknowledged: list[str] = []
    imported: dict[str, int] = {}
    deleted: list[str] = []
    resets: list[tuple[str, list[str]]] = []
    n = 0
    chained = 0
    for _ in range(CYCLES):
        child = subprocess.Popen([sys.executable, "-c", CHILD, place, str(n)], stdout=subprocess.PIPE, env=env)
        assert child.stdout is not None
        first = child.stdout.readline()  # wait until it is writing
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
        for line in (first + rest).splitlines():
            what = json.loads(line)
            if what[0] == "message" and len(what) == 2:
                acknowledged.append(what[1])
            elif what[0] == "chain":
                acknowledged.extend(what[1])
            elif what[0] == "import":
                imported[what[1]] = what[2]
            elif what[0] == "deleted":
                deleted.append(what[1])
            elif what[0] == "reset":
                resets.append((what[1], what[2]))
        n += 1000
        with store_at(place) as store:
            sid = store.resolve("crash")
            present = {m.id for m in store.get_messages(sid)}
            missing = [i for i in acknowledged if i not in present]
            assert not missing, f"acknowledged but lost: {missing[:5]}"
            chains: dict[str, set[str]] = {}  # every chain seen is whole, acknowledged or not
            for m in store.get_messages(sid):
                if isinstance(m.content, str) and m.content.startswith("chain "):
                    number, part = m.content.split()[1:3]
                    chains.setdefault(number, set()).add(part)
            chained += len(chains)
            assert all(len(parts) == int(next(iter(parts)).split("/")[1]) for parts in chains.values())
            for head, kept in resets:  # an acknowledged reset kept what it said it kept
                path = [m.content for m in store.get_linear_history(sid, head)]
                assert path[-len(kept):] == kept if kept else True
            for isid, count in imported.items():  # an acknowledged import is whole
                assert len(store.get_messages(isid)) == count
            for gone in deleted:  # an acknowledged deletion is complete
                assert not store.has_session(gone)
            # Every session loads; what a kill leaves is reported until a repair.
            expected = ("incomplete last line", "unfinished chain", "interrupted creation",
                        "remains of a deleted session", "temp file of an interrupted write", "key link to no session",
                        "not in the index")
            problems = [p for p in store.check().problems if not any(e in p.reason for e in expected)]
            assert problems == []
    with store_at(place) as store:
        assert store.repair().ok
        assert {m.id for m in store.get_messages(store.resolve("crash"))} >= set(acknowledged)
        assert store.check().ok
    assert len(acknowledged) > CYCLES and chained
