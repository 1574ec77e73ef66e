"""The session view's size and time to first render, in headless Chromium.

    python3 benchmarks/view.py                          # writes benchmarks/VIEW.md
    python3 benchmarks/view.py --screenshot docs/view.png   # the README's screenshot
    python3 benchmarks/view.py --screenshots docs/view-after   # -claude-code.png, -adapter.png: docs/command-line.md

Needs the ``test`` extra (selenium) and Debian's ``chromium`` and ``chromium-driver``.
Each page is written to a file and loaded afresh ``--loads`` times; the report gives the
median and the range of: the page's size, ``render_session`` in Python, the browser's
first contentful paint, and the moment the page's script has built the conversation
and a frame has passed (``data-rendered-ms``), all from navigation start. Nothing here
asserts a time: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "integrations")]

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

from session_store import InMemoryFileSystem, SessionStore  # noqa: E402
from session_store_view import render_session  # noqa: E402

PI_LARGE = ROOT / "tests" / "fixtures" / "pi" / "large-session.v1.jsonl"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="view-bench-") as profile:
        for flag in [*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            yield driver
        finally:
            driver.quit()


# ============================================================================
# Sessions
# ============================================================================


def pi_session(store: SessionStore) -> str:
    """The public pi fixture: 1,019 entries, one path, 391 tool calls."""
    from session_store_transcripts import import_pi
    return import_pi(store, PI_LARGE)


def branched_native_session(store: SessionStore) -> str:
    """1,000 native messages: a 500-turn conversation where every tenth answer was regenerated."""
    sid = store.resolve("bench:branched")
    for turn in range(500):
        question = store.append(sid, role="user", content=f"Question {turn}: " + "why? " * 20)
        if turn % 10 == 9:
            again = store.append(sid, role="assistant", content=f"A regenerated answer to {turn}. " * 10,
                                 parent_id=question.id)
            store.create_branch(sid, f"regenerated-{turn}", again.id)
            store.append(sid, role="assistant", content=f"The answer to {turn}. " * 10)  # the conversation goes on here
        else:
            store.append(sid, role="assistant", content=f"The answer to {turn}. " * 10)
    return sid


def screenshot_session(store: SessionStore) -> str:
    """A short coding conversation with a tool call and a regenerated answer (two branches)."""
    sid = store.resolve("user:alice")
    store.append(sid, role="system", content="You are a helpful coding assistant.")
    question = store.append(sid, role="user",
                            content="My script fails with ModuleNotFoundError: No module named 'requests'. Why?")
    store.append(sid, role="assistant", content="Install it: pip install requests.")
    detailed = store.append(sid, role="assistant", parent_id=question.id,  # regenerated
                            content="The package is missing from the Python that runs the script. Let me check which "
                                    "one that is.",
                            tool_calls=[{"id": "call_1", "type": "function", "function": {
                                "name": "run_shell",
                                "arguments": '{"command": "which python3 && python3 -m pip --version"}'}}])
    store.create_branch(sid, "detailed", detailed.id)
    store.switch_to_branch(sid, "detailed")
    store.append(sid, role="tool", tool_call_id="call_1",
                 content="/usr/bin/python3\npip 23.0.1 from /usr/lib/python3/dist-packages/pip (python 3.11)")
    store.append(sid, role="assistant", content=(
        "Your script runs with the system Python 3.11, which has no requests. Install it into a virtual "
        "environment rather than the system:\n\n    python3 -m venv .venv\n    .venv/bin/pip install requests\n"
        "    .venv/bin/python script.py"))
    store.append(sid, role="user", content="Thanks, that worked!")
    return sid


CLAUDE_SHOWCASE = ROOT / "tests" / "fixtures" / "claude-code" / "minimal_showcase" / \
    "55550000-0000-4000-8000-000000000001.jsonl"
ANSWER = """## Reading a CSV file

Use the standard library's **csv** module; `DictReader` gives each row as a *dict*:

```python
import csv

with open("people.csv", newline="") as f:
    for row in csv.DictReader(f):  # the header line names the keys
        print(row["name"], int(row["age"]) + 1)
```

- `newline=""` lets the module handle line endings itself.
- For very large files, read rows one at a time as above; nothing is loaded whole.

See [the csv module's documentation](https://docs.python.org/3/library/csv.html)."""


def adapter_session(store: SessionStore) -> str:
    """What the LangChain adapter stores: a question, a tool call and its short result, a Markdown answer."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    from session_store_langchain import SessionStoreChatMessageHistory

    SessionStoreChatMessageHistory("user:carol", store).add_messages([
        SystemMessage("You are a concise Python tutor. Use the docs tool when unsure."),
        HumanMessage("How do I read a CSV file in Python, with the column names?"),
        AIMessage("", tool_calls=[{"id": "call_7", "name": "search_docs", "args": {"query": "csv DictReader"}}]),
        ToolMessage("csv.DictReader(f): rows as dicts keyed by the header line", tool_call_id="call_7"),
        AIMessage(ANSWER)])
    return store.resolve("user:carol")


# ============================================================================
# Measuring
# ============================================================================


def measure(driver: WebDriver, name: str, build: Callable[[SessionStore], str], loads: int) -> list[str]:
    with SessionStore(InMemoryFileSystem()) as store:
        sid = build(store)
        messages = len(store.get_messages(sid))
        renders = []
        for _ in range(5):
            started = time.perf_counter()
            page = render_session(store, sid)
            renders.append((time.perf_counter() - started) * 1000)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "page.html"
        path.write_text(page, encoding="utf-8")
        paints, rendered = [], []
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(path.as_uri())
            for _ in range(200):  # the mark is set one frame after the script ran; the paint entry comes later
                ready, paint = driver.execute_script(
                    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    "return [document.documentElement.dataset.renderedMs, p ? p.startTime : null]")
                if ready and paint is not None:
                    break
                time.sleep(0.05)
            rendered.append(float(ready))
            paints.append(float(paint))
            assert len(driver.find_element(By.ID, "conversation").find_elements(By.XPATH, "./*")) > 0

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ms ({min(values):,.0f}–{max(values):,.0f})"

    size = len(page.encode("utf-8"))
    return [f"| {name} | {messages:,} | {size / 1024:,.0f} kB | {spread(renders)} | {spread(paints)} | "
            f"{spread(rendered)} |"]


def report(loads: int, out: Path) -> None:
    with chromium() as driver:
        rows = measure(driver, "pi fixture (large-session.v1.jsonl), one path", pi_session, loads)
        rows += measure(driver, "native, 500 turns, 50 regenerated answers", branched_native_session, loads)
        version = driver.capabilities.get("browserVersion", "?")
    text = "\n".join([
        "# Session view: size and first render",
        "",
        "Command: `python3 benchmarks/view.py`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, headless Chromium {version}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ",
        f"Median (and range) of {loads} fresh loads of a file:// page; times from navigation start. "
        "The machine is shared and noisy.",
        "",
        "| session | messages | page | render_session (Python) | first contentful paint | conversation built |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Rows off screen are neither laid out nor painted (`content-visibility: auto`); folded tool results, "
        "thinking and JSON are built only when opened.",
        "",
    ])
    out.write_text(text, encoding="utf-8")
    print(text)


def screenshot(path: Path) -> None:
    ticks = iter(range(1_780_000_000, 1_780_100_000, 17))  # a message every 17 s, from a fixed day
    with SessionStore(InMemoryFileSystem(), clock=lambda: next(ticks)) as store, \
            tempfile.TemporaryDirectory() as directory:
        sid = screenshot_session(store)
        page = Path(directory) / "page.html"
        page.write_text(render_session(store, sid), encoding="utf-8")
        with chromium(1280, 900) as driver:
            driver.get(page.as_uri())
            for toggle in driver.find_elements(By.CSS_SELECTOR, "main .call .fold-toggle"):  # a long result
                toggle.click()
            driver.save_screenshot(str(path))
    print(f"wrote {path}")


def screenshots(prefix: str) -> None:
    """``<prefix>-claude-code.png`` (the public Claude Code showcase transcript) and
    ``<prefix>-adapter.png`` (a LangChain session), as the page opens."""
    from session_store_transcripts import import_claude_code

    sessions: list[tuple[str, Callable[[SessionStore], str]]] = [
        ("claude-code", lambda store: import_claude_code(store, CLAUDE_SHOWCASE)), ("adapter", adapter_session)]
    ticks = iter(range(1_780_000_000, 1_780_100_000, 17))
    with chromium(1280, 900) as driver, tempfile.TemporaryDirectory() as directory:
        for name, build in sessions:
            with SessionStore(InMemoryFileSystem(), clock=lambda: next(ticks)) as store:
                page = Path(directory) / f"{name}.html"
                page.write_text(render_session(store, build(store)), encoding="utf-8")
            driver.get(page.as_uri())
            driver.save_screenshot(f"{prefix}-{name}.png")
            print(f"wrote {prefix}-{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--loads", type=int, default=7, help="page loads per session (default 7)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "VIEW.md")
    parser.add_argument("--screenshot", type=Path, help="write the README's screenshot here instead")
    parser.add_argument("--screenshots", metavar="PREFIX",
                        help="write PREFIX-claude-code.png and PREFIX-adapter.png (docs/command-line.md) instead")
    args = parser.parse_args()
    if args.screenshots:
        screenshots(args.screenshots)
    elif args.screenshot:
        screenshot(args.screenshot)
    else:
        report(args.loads, args.out)


if __name__ == "__main__":
    main()
