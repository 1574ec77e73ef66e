"""The session view and the read-only server (session_store_view), in a real headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver``: without them they
skip with a message, unless ``SESSION_STORE_REQUIRE_BROWSER=1`` (CI sets it), which
makes that a failure. The rest (page data, escaping, the server's refusals, the
command line) needs no browser.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from session_store import InMemoryFileSystem, SessionNotFound, SessionStore, estimate_tokens
from session_store_conformance import FakeClock
from session_store_view import QUERY_CHARS, SEARCH_LIMIT, make_server, render_index, render_search, render_session

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PI_LARGE = FIXTURES / "pi" / "large-session.v1.jsonl"
CLAUDE_SHOWCASE = FIXTURES / "claude-code" / "minimal_showcase" / "55550000-0000-4000-8000-000000000001.jsonl"
CHROMIUM = os.environ.get("SESSION_STORE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SESSION_STORE_CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSER_REQUIRED = os.environ.get("SESSION_STORE_REQUIRE_BROWSER") == "1"
# Without these, Chromium tries the network (closed here and in CI) and hangs on it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]
# Strings that would run or inject markup if a page put them anywhere but text.
ATTACKS = ["<script>window.pwned = 7</script>", '"><img src=x onerror=alert(1)>', "'><svg onload=alert(2)>",
           "</script><script>window.pwned = 8</script>", "<!-- x", "&lt;b&gt;"]
HOSTILE = ('<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
           '<a href="javascript:window.pwned = 3">click me</a><!-- </script><script>window.pwned = 4</script>')


# ============================================================================
# Helpers
# ============================================================================


def import_transcript(store: SessionStore, kind: str, path: Path) -> str:
    """Import a pi / Claude Code file through session_store_transcripts when it exists
    (where the importers are moving), else through the store's own methods."""
    try:
        transcripts = importlib.import_module("session_store_transcripts")
    except ModuleNotFoundError:
        return str(getattr(store, f"import_{kind}")(path))
    return str(getattr(transcripts, f"import_{kind}")(store, path))


def page_data(page: str) -> dict[str, Any]:
    """The JSON a page embeds for its script."""
    found = re.search(r'<script type="application/json" id="[\w-]+">(.*?)</script>', page, re.S)
    assert found is not None
    data: dict[str, Any] = json.loads(found[1])
    return data


def parts_of(store: SessionStore, sid: str) -> list[list[Any]]:
    """Each message's display parts, in append order."""
    return [m["c"] for m in page_data(render_session(store, sid))["m"]]


def write_page(store: SessionStore, sid: str, tmp_path: Path) -> str:
    path = tmp_path / "page.html"
    path.write_text(render_session(store, sid), encoding="utf-8")
    return path.as_uri()


def conversation(browser: WebDriver) -> str:
    """The conversation's visible text, every row of the shown path included.

    Rows are ``content-visibility: auto``: Chromium skips rendering those off screen,
    and innerText then leaves them out depending on when it last laid out the page
    (a race: a row above the one scrolled to was sometimes missing). The rows are
    made visible for the read, then put back."""
    return str(browser.execute_script("""
        const c = document.getElementById('conversation'), rows = [...c.children];
        const kept = rows.map(r => r.style.contentVisibility);
        rows.forEach(r => { r.style.contentVisibility = 'visible'; });
        const text = c.innerText;
        rows.forEach((r, k) => { r.style.contentVisibility = kept[k]; });
        return text;"""))


def button(scope: WebDriver | WebElement, text: str) -> WebElement:
    """The first button whose text contains ``text``."""
    for candidate in scope.find_elements(By.TAG_NAME, "button"):
        if text in candidate.text:
            return candidate
    raise AssertionError(f"no button with {text!r}")


def row(browser: WebDriver, message_id: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'[data-id="{message_id}"]')


@contextlib.contextmanager
def serving(store: SessionStore) -> Iterator[str]:
    """A view server on a free port, in a thread; yields its URL."""
    server = make_server(store, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def request(url: str, method: str, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (the path sent exactly as given)."""
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def arrive(browser: WebDriver, expected: str) -> None:
    """Wait until the browser has loaded ``expected``: a form's submit and a link's click return before the
    page they lead to has arrived, the later the busier the machine (the limit only bounds a failure)."""
    def arrived(driver: WebDriver) -> bool:
        loaded = driver.execute_script("return document.readyState") == "complete"
        return bool(loaded and driver.current_url == expected)
    try:
        WebDriverWait(browser, 120).until(arrived)
    except TimeoutException:
        assert browser.current_url == expected  # says where the browser is instead
        raise


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``directory``: size and modification time."""
    found = {}
    for path in [directory, *directory.rglob("*")]:
        st = path.lstat()  # the key index is made of links: never follow them
        found[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns)
    return found


def branched(store: SessionStore) -> tuple[str, dict[str, str]]:
    """A session with two answers to one question (the second current) and a tool call."""
    sid = store.resolve("user:alice")
    q = store.append(sid, role="user", content="What is a good name for a cat?")
    miso = store.append(sid, role="assistant", content="How about Miso?")
    store.append(sid, role="user", content="Something more regal.")
    pixel = store.append(sid, role="assistant", content="Try Pixel.", parent_id=q.id)
    store.create_branch(sid, "pixel", pixel.id)
    store.switch_to_branch(sid, "pixel")
    call = store.append(sid, role="assistant", content="Let me look that up.", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"name": "Pixel"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": '{"name": "Miso"}'}}])
    result = store.append(sid, role="tool", tool_call_id="call_1", content="Pixel: a small dot\n" * 30)
    last = store.append(sid, role="assistant", content="Pixel means a small dot.")
    return sid, {"q": q.id, "miso": miso.id, "pixel": pixel.id, "call": call.id, "result": result.id, "last": last.id}


# ============================================================================
# Fixtures
# ============================================================================


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        reason = f"no headless Chromium ({', '.join(missing)} missing; apt-get install chromium chromium-driver)"
        if BROWSER_REQUIRED:
            pytest.fail(reason + " (SESSION_STORE_REQUIRE_BROWSER=1: not skipping)", pytrace=False)
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="session-store-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def store(clock: FakeClock) -> SessionStore:
    return SessionStore(InMemoryFileSystem(), clock=clock)


# ============================================================================
# The page, without a browser
# ============================================================================


def test_page_is_one_file_that_loads_nothing(store: SessionStore) -> None:
    sid, _ = branched(store)
    page = render_session(store, sid)
    assert "default-src 'none'" in page and "img-src data:" in page  # its policy forbids every fetch
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # the script builds only in-page links
    assert not re.search(r"<(link|iframe|object|embed)\b|\b(src|href)\s*=|url\(|@import", markup)
    assert not re.search(r"https?://", page)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data block and the script


def test_text_that_could_close_the_script_is_escaped_inside_the_json(store: SessionStore) -> None:
    sid = store.resolve("k")
    content = HOSTILE + " & \u2028\u2029 ]]> --> <!-- \"quoted\""
    store.append(sid, role="user", content=content)
    page = render_session(store, sid)
    assert page.count("</script>") == 2 and "<!--" not in page and "\u2028" not in page
    assert page_data(page)["m"][0]["c"] == [["t", content]]


# Any JSON the store accepts as content or fields, biased toward the keys the view reads
# (a "type" that is a list or an object, an image whose media_type is an object...).
_VIEW_KEYS = st.sampled_from(["type", "text", "media_type", "mimeType", "source", "data", "url", "image_url",
                              "content", "tool_use_id", "call_id", "id", "name", "input", "arguments", "output",
                              "is_error", "summary", "thinking", "function", "params", "tool_calls"])
_ACCEPTED = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["text", "image", "tool_use", "tool_result", "function_call", "thinking",
                                             "image/png", "iVBORw0KGgo=", "message", "reasoning", "toolCall"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_VIEW_KEYS | st.text(max_size=4), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300)
@given(content=_ACCEPTED, role=st.sampled_from(["user", "assistant", "tool", "system", "toolResult", "x"]),
       fields=st.dictionaries(st.sampled_from(["tool_calls", "tool_call_id", "function_call", "name", "output",
                                               "is_error"]), _ACCEPTED, max_size=2))
def test_the_view_renders_whatever_the_store_accepted(content: Any, role: str, fields: dict[str, Any]) -> None:
    """No content or field the store accepts makes the page raise: what the view does not
    know is shown as JSON text."""
    store = SessionStore(InMemoryFileSystem())
    sid = store.resolve("k")
    store.append(sid, role="user", content="before")
    store.append(sid, role=role, content=content, **fields)
    page = render_session(store, sid)
    assert page.count("</script>") == 2
    assert render_index(store)


def test_unknown_session_raises_session_not_found(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound):
        render_session(store, "no-such-session")


def test_openai_chat_calls_and_tool_results_are_paired_by_id(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=None, tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}])
    store.append(sid, role="tool", tool_call_id="c1", content="3")
    assert parts_of(store, sid) == [[["call", "c1", "add", '{\n  "a": 1,\n  "b": 2\n}']], [["res", "c1", "3", 0, ""]]]


def test_anthropic_blocks_show_text_thinking_calls_results_and_images(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=[
        {"type": "thinking", "thinking": "Hm.", "signature": "s"}, {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "tu1", "name": "read", "input": {"path": "a.py"}}])
    store.append(sid, role="user", content=[
        {"type": "tool_result", "tool_use_id": "tu1", "is_error": True, "content": [{"type": "text", "text": "no"}]},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/svg+xml", "data": "PHN2Zz4="}}])
    first, second = parts_of(store, sid)
    assert first == [["th", "Hm."], ["t", "Reading."], ["call", "tu1", "read", '{\n  "path": "a.py"\n}']]
    assert second == [["res", "tu1", "no", 1, ""], ["img", "image (image/png, 3 bytes)", "data:image/png;base64,aGk="],
                      ["img", "image (image/svg+xml, 6 bytes)", ""]]  # SVG can carry script: named, not shown


def test_openai_responses_items_show_calls_outputs_and_texts(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "fc1", "name": "weather", "arguments": '{"city": "Rome"}'}])
    store.append(sid, role="user", content=[{"type": "function_call_output", "call_id": "fc1", "output": "sunny"},
                                            {"type": "input_text", "text": "Thanks."}])
    assert parts_of(store, sid) == [[["t", "Checking."], ["call", "fc1", "weather", '{\n  "city": "Rome"\n}']],
                                    [["res", "fc1", "sunny", 0, ""], ["t", "Thanks."]]]


def test_unknown_shapes_show_as_json_text(store: SessionStore) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=[{"type": "hologram", "beam": 3}, 7])
    store.append(sid, role="user", content={"weird": True})
    assert parts_of(store, sid) == [[["j", '{\n  "type": "hologram",\n  "beam": 3\n}'], ["j", "7"]],
                                    [["j", '{\n  "weird": true\n}']]]


def test_sizes_in_bytes_and_estimated_tokens_are_per_message(store: SessionStore) -> None:
    sid = store.resolve("k")
    m = store.append(sid, role="user", content="héllo, how are you today?")
    [shown] = page_data(render_session(store, sid))["m"]
    assert shown["k"] == estimate_tokens(m) == 11  # 25 characters / 4, rounded up, + 4: an estimate, not characters
    assert shown["b"] == len(json.dumps(m.to_record(), ensure_ascii=False, separators=(",", ":")).encode()) + 1


def test_the_lease_holder_is_in_the_page(store: SessionStore, clock: FakeClock) -> None:
    sid = store.resolve("k")
    store.acquire_lock(sid, "worker-7")
    lock = page_data(render_session(store, sid))["session"]["lock"]
    assert lock["holder"] == "worker-7" and lock["expires"] == round(clock.now * 1000) + store.lock_timeout_ms


def test_index_lists_sessions_newest_first(store: SessionStore, clock: FakeClock) -> None:
    for key in ("old", "new", "middle"):
        store.append(store.resolve(key), role="user", content=key)
        clock.advance(60)
    store.append(store.resolve("old"), role="user", content="old again")
    sessions = page_data(render_index(store))["sessions"]
    assert [s["key"] for s in sessions] == ["old", "middle", "new"]
    assert sessions[0]["messages"] == 2 and sessions[0]["branches"] == 1


def test_index_shows_each_sessions_title_and_first_message(store: SessionStore, clock: FakeClock) -> None:
    sid, _ = branched(store)
    clock.advance(1)
    titled = store.resolve("user:bob")
    store.append(titled, role="user", content="  Plan a trip\nto Lisbon  ")
    store.set_title(titled, "Lisbon in May")
    data = page_data(render_index(store))
    assert [(s["key"], s["title"], s["preview"]) for s in data["sessions"]] == [
        ("user:bob", "Lisbon in May", "Plan a trip to Lisbon"),
        ("user:alice", "What is a good name for a cat?", "What is a good name for a cat?")]
    assert data["total"] == 2 and data["sessions"][1]["id"] == sid
    capped = page_data(render_index(store, limit=1))
    assert [s["key"] for s in capped["sessions"]] == ["user:bob"] and capped["total"] == 2


def test_search_page_lists_hits_with_their_place_linking_to_the_message(store: SessionStore) -> None:
    sid, ids = branched(store)
    store.reset(sid)
    store.append(sid, role="user", content="Back to Pixel, please.")
    data = page_data(render_search(store, "pixel"))
    assert data["query"] == "pixel" and data["problem"] == ""
    found = {h["message"]: h for h in data["hits"]}
    assert found[ids["last"]]["place"] == "archived" and found[ids["last"]]["role"] == "assistant"
    assert found[ids["last"]]["snippet"] == "Pixel means a small dot."
    assert found[ids["last"]]["session"] == sid and found[ids["last"]]["key"] == "user:alice"
    assert [h["place"] for h in data["hits"] if h["snippet"] == "Back to Pixel, please."] == ["current"]
    assert found[ids["last"]]["title"] == "What is a good name for a cat?"
    assert page_data(render_search(store, "Miso"))["hits"][0]["place"] == "branch"
    assert page_data(render_search(store, "zebra"))["hits"] == []


def test_search_page_caps_its_hits_and_the_querys_length(store: SessionStore) -> None:
    sid = store.resolve("k")
    for i in range(SEARCH_LIMIT + 5):
        store.append(sid, role="user", content=f"echo {i}")
    assert len(page_data(render_search(store, "echo"))["hits"]) == SEARCH_LIMIT
    assert len(page_data(render_search(store, "echo", limit=3))["hits"]) == 3
    long = page_data(render_search(store, "echo " * QUERY_CHARS))
    assert long["hits"] == [] and "too long" in long["problem"]
    assert page_data(render_search(store, "   "))["hits"] == []


def hostile_store(store: SessionStore) -> str:
    """A session whose key, title and message are each every attack."""
    sid = store.resolve("user:" + "".join(ATTACKS))
    store.append(sid, role="user", content="needle " + " ".join(ATTACKS))
    store.set_title(sid, "".join(ATTACKS))
    return sid


def markup_of(page: str) -> str:
    """A page without its two script elements (the JSON data and the script)."""
    return re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)


def test_hostile_keys_titles_messages_and_queries_are_only_data_in_index_and_search(store: SessionStore) -> None:
    hostile_store(store)
    query = "needle " + " ".join(ATTACKS)
    for page in (render_index(store), render_search(store, query)):
        assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!-- x" not in page
        markup = markup_of(page)
        assert "pwned" not in markup and "alert" not in markup and "onerror" not in markup
        assert "<img" not in page and "<svg" not in page
    data = page_data(render_search(store, query))
    assert data["query"] == query and len(data["hits"]) == 1
    assert data["hits"][0]["title"] == "".join(ATTACKS) and data["hits"][0]["key"] == "user:" + "".join(ATTACKS)
    sessions = page_data(render_index(store))["sessions"]
    assert sessions[0]["preview"] == "needle " + " ".join(ATTACKS)


# ============================================================================
# The page, in the browser
# ============================================================================


def test_switcher_shows_the_other_answer_in_place(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, ids = branched(store)
    browser.get(write_page(store, sid, tmp_path))
    assert "Try Pixel." in conversation(browser) and "How about Miso?" not in conversation(browser)
    switch = row(browser, ids["pixel"]).find_element(By.CSS_SELECTOR, ".switch")
    assert switch.find_element(By.CSS_SELECTOR, ".count").text == "2 / 2"
    switch.find_element(By.CSS_SELECTOR, "button.prev").click()
    text = conversation(browser)
    assert "How about Miso?" in text and "Something more regal." in text
    assert "Try Pixel." not in text and "Pixel means a small dot." not in text
    assert row(browser, ids["miso"]).find_element(By.CSS_SELECTOR, ".count").text == "1 / 2"


def test_a_tool_result_folds_and_unfolds_under_its_call(browser: WebDriver, store: SessionStore,
                                                        tmp_path: Path) -> None:
    sid, ids = branched(store)
    browser.get(write_page(store, sid, tmp_path))
    call = row(browser, ids["call"]).find_elements(By.CSS_SELECTOR, ".call")[0]
    assert "lookup" in call.text and '"name": "Pixel"' in call.text
    assert "Pixel: a small dot" not in call.text  # folded
    toggle = button(call, "result · 31 lines")
    toggle.click()
    assert call.find_element(By.CSS_SELECTOR, "pre.result-text").is_displayed()
    assert "Pixel: a small dot" in call.text
    toggle.click()
    assert not call.find_element(By.CSS_SELECTOR, "pre.result-text").is_displayed()
    assert "Pixel: a small dot" not in call.text


def test_a_call_that_got_no_result_says_so(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, ids = branched(store)
    browser.get(write_page(store, sid, tmp_path))
    unanswered = row(browser, ids["call"]).find_elements(By.CSS_SELECTOR, ".call")[1]
    assert '"name": "Miso"' in unanswered.text and "no result on this path" in unanswered.text


def test_branches_and_the_head_are_marked(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, ids = branched(store)
    store.create_branch(sid, "main-tip", ids["last"])
    browser.get(write_page(store, sid, tmp_path))
    badges = [b.text for b in row(browser, ids["last"]).find_elements(By.CSS_SELECTOR, ".badge")]
    assert badges == ["pixel ●", "main-tip", "HEAD"]
    assert "current branch pixel" in browser.find_element(By.ID, "facts").text


def test_the_jump_list_reaches_every_branch_and_leaf(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, _ = branched(store)
    browser.get(write_page(store, sid, tmp_path))
    nav = browser.find_element(By.ID, "jump")
    button(nav, "user: Something more regal.").click()
    assert "Something more regal." in conversation(browser) and "Try Pixel." not in conversation(browser)
    button(nav, "pixel").click()
    assert "Pixel means a small dot." in conversation(browser)


def test_the_minimap_jumps_to_the_message_clicked(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, _ = branched(store)  # rows in tree order: q, miso, regal, pixel, call, result, last
    browser.get(write_page(store, sid, tmp_path))
    canvas = browser.find_element(By.ID, "minimap")
    height = canvas.size["height"]
    row_height = min(6, height / 7)
    ActionChains(browser).move_to_element_with_offset(canvas, 0, round(2.5 * row_height - height / 2)).click().perform()
    assert "Something more regal." in conversation(browser) and "Try Pixel." not in conversation(browser)


def test_long_texts_are_folded(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="".join(f"line {n}\n" for n in range(100)))
    browser.get(write_page(store, sid, tmp_path))
    assert "line 5" in conversation(browser) and "line 99" not in conversation(browser)
    button(browser, "show all (101 lines").click()
    assert "line 99" in conversation(browser)


def test_hostile_content_renders_as_text_and_runs_nothing(browser: WebDriver, store: SessionStore,
                                                          tmp_path: Path) -> None:
    sid = store.resolve("user:</script><script>window.pwned = 5</script>")
    store.append(sid, role="user", content=HOSTILE)
    store.append(sid, role="assistant", content=[{"type": "text", "text": HOSTILE}, {
        "type": "tool_use", "id": "</script>", "name": '<img src=x onerror="window.pwned = 6">', "input": HOSTILE}])
    store.append(sid, role="user", content=[{"type": "tool_result", "tool_use_id": "</script>", "content": HOSTILE}])
    browser.get(write_page(store, sid, tmp_path))
    assert browser.execute_script("return window.pwned") is None
    text = conversation(browser)
    assert text.count("<script>window.pwned = 1</script>") == 4  # two messages, the arguments, the result (shown)
    assert 'onerror="window.pwned = 2"' in text and 'href="javascript:window.pwned = 3"' in text
    assert '<img src=x onerror="window.pwned = 6">' in text
    title = browser.find_element(By.ID, "title").text  # the session's title: its first message, shortened, as text
    assert title.startswith("<script>window.pwned = 1</script><img src=x") and HOSTILE.startswith(title[:-1])
    assert "user:</script><script>window.pwned = 5</script>" in browser.find_element(By.ID, "facts").text
    assert browser.execute_script(
        "return document.querySelectorAll('main script, main img, main a:not(.id), main iframe').length") == 0


MARKDOWN = """## Reading a file

Use **pathlib**, not *os.path*; `read_text` reads it whole:

```python
from pathlib import Path
text = Path("notes.txt").read_text()  # the whole file
```

1. open it
2. read it
   - as text

> a quote

| name | use |
|---|---|
| Path | paths |

See [the docs](https://docs.python.org/3/library/pathlib.html) or [mail us](mailto:help@example.org)."""

HOSTILE_MARKDOWN = """# <img src=x onerror="window.pwned = 11"> heading

[click](javascript:window.pwned=12) [shout](JAVASCRIPT:window.pwned=13) [data](data:text/html,<script>x</script>)
[rel](/etc/passwd) [**<img src=x onerror="window.pwned = 14">**](https://example.org/ok)
<script>window.pwned = 15</script>
[spaced](  javascript:window.pwned=16) [tab](java\tscript:window.pwned=17) <a href="https://example.org/raw">raw</a>

```html
<script>window.pwned = 18</script><img src=x onerror="window.pwned = 19">
```

- `<svg onload="window.pwned = 20">`
- <iframe src="javascript:window.pwned = 21"></iframe>"""


def test_markdown_in_an_answer_becomes_headings_lists_code_and_links(browser: WebDriver, store: SessionStore,
                                                                      tmp_path: Path) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="# Not a heading: *what the user typed* stays as typed")
    store.append(sid, role="assistant", content=MARKDOWN)
    browser.get(write_page(store, sid, tmp_path))
    answer = browser.find_element(By.CSS_SELECTOR, "main article.role-assistant .md")
    assert answer.find_element(By.TAG_NAME, "h2").text == "Reading a file"
    assert [e.text for e in answer.find_elements(By.CSS_SELECTOR, "strong, em")] == ["pathlib", "os.path"]
    assert [e.text for e in answer.find_elements(By.CSS_SELECTOR, "p > code")] == ["read_text"]
    assert [e.text.splitlines()[0] for e in answer.find_elements(By.CSS_SELECTOR, "ol > li")] == ["open it", "read it"]
    assert [e.text for e in answer.find_elements(By.CSS_SELECTOR, "ol li ul li")] == ["as text"]
    code = answer.find_element(By.CSS_SELECTOR, "pre > code")
    assert code.text == 'from pathlib import Path\ntext = Path("notes.txt").read_text()  # the whole file'
    assert [e.text for e in code.find_elements(By.CLASS_NAME, "hl-k")] == ["from", "import"]
    assert [e.text for e in code.find_elements(By.CLASS_NAME, "hl-s")] == ['"notes.txt"']
    assert [e.text for e in code.find_elements(By.CLASS_NAME, "hl-c")] == ["# the whole file"]
    assert answer.find_element(By.CSS_SELECTOR, "blockquote").text == "a quote"
    assert answer.find_element(By.CSS_SELECTOR, "table td").text == "Path"
    links = [(a.text, a.get_attribute("href")) for a in answer.find_elements(By.TAG_NAME, "a")]
    assert links == [("the docs", "https://docs.python.org/3/library/pathlib.html"),
                     ("mail us", "mailto:help@example.org")]
    question = browser.find_element(By.CSS_SELECTOR, "main article.role-user .text")
    assert question.text == "# Not a heading: *what the user typed* stays as typed"
    assert question.find_elements(By.CSS_SELECTOR, "*") == []


def test_markdown_never_makes_markup_or_a_link_that_is_not_http_or_mailto(browser: WebDriver, store: SessionStore,
                                                                           tmp_path: Path) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=HOSTILE_MARKDOWN)
    store.append(sid, role="system", content=HOSTILE_MARKDOWN)
    browser.get(write_page(store, sid, tmp_path))
    assert not alert_open(browser)
    assert browser.execute_script("return window.pwned") is None
    assert browser.execute_script(
        "return document.querySelectorAll('main script, main img, main svg, main iframe, main [onerror], "
        "main [onload], main [src], main [style]').length") == 0
    hrefs = browser.execute_script(
        "return [...document.querySelectorAll('main a:not(.id)')].map(a => [a.textContent, a.getAttribute('href')])")
    assert hrefs == [['<img src=x onerror="window.pwned = 14">', "https://example.org/ok"]] * 2  # the one safe link
    text = conversation(browser)
    for shown in ("[click](javascript:window.pwned=12)", "[shout](JAVASCRIPT:window.pwned=13)", "[rel](/etc/passwd)",
                  "<script>window.pwned = 15</script>", '<a href="https://example.org/raw">raw</a>',
                  '<svg onload="window.pwned = 20">', '<iframe src="javascript:window.pwned = 21"></iframe>',
                  '<script>window.pwned = 18</script><img src=x onerror="window.pwned = 19">'):
        assert text.count(shown) == 2, shown  # as the text it was written as, in both messages
    heading = browser.find_element(By.CSS_SELECTOR, "main .md h1")
    assert heading.text == '<img src=x onerror="window.pwned = 11"> heading'


ODD_MARKDOWN = ["```", "```python\nnever closed", "~~~\n~~~", ">" * 40 + " deep", "- " * 40 + "deep", "|", "| a |\n|-|",
                "***", "_", "**", "[", "[a](", "`", "#", "1.", "\\", "*a **b* c**", "- a\n\n\n  - b\n- c",
                "a\n    b\n\n    code", "```brainfuck\n+[>+<-]\n```", "a * b * c * d " * 2000, "[x](https://e.org/(a)b)"]


def test_odd_markdown_renders_every_message(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid = store.resolve("k")
    ids = [store.append(sid, role="assistant", content=text).id for text in ODD_MARKDOWN]
    browser.get(write_page(store, sid, tmp_path))
    assert [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#conversation article")] == ids
    assert "deep" in row(browser, ids[3]).text and "never closed" in row(browser, ids[1]).text


SHAPES: dict[str, list[dict[str, Any]]] = {
    "openai-chat": [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"}],
    "openai-responses": [
        {"role": "assistant", "content": [{"type": "function_call", "call_id": "c1", "name": "add",
                                           "arguments": '{"a": 1, "b": 2}'}]},
        {"role": "user", "content": [{"type": "function_call_output", "call_id": "c1", "output": "3"}]}],
    "anthropic": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "add", "input": {"a": 1, "b": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "3"}]}],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_call_and_its_result_are_one_card_with_a_short_result_shown(browser: WebDriver, store: SessionStore,
                                                                     tmp_path: Path, shape: str) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="What is 1 + 2?")
    _, result = (store.append(sid, **record) for record in SHAPES[shape])
    store.append(sid, role="assistant", content="It is 3.")
    browser.get(write_page(store, sid, tmp_path))
    cards = browser.find_elements(By.CSS_SELECTOR, "#conversation article")
    assert [c.get_attribute("data-id") for c in cards] == [m.id for m in store.get_messages(sid) if m.id != result.id]
    [card] = browser.find_elements(By.CSS_SELECTOR, "main .call")
    assert card.text == 'add\n{\n  "a": 1,\n  "b": 2\n}\nresult\n3'  # the result shown, not folded
    assert not row(browser, result.id).is_displayed()  # no card of its own
    assert "result" not in conversation(browser).replace(card.text, "")
    browser.get(write_page(store, sid, tmp_path) + "#" + result.id)  # a link to the result opens at its call
    assert "add" in conversation(browser)


def test_a_result_that_heads_a_branch_keeps_its_own_card(browser: WebDriver, store: SessionStore,
                                                         tmp_path: Path) -> None:
    sid = store.resolve("k")
    store.append(sid, **SHAPES["openai-chat"][0])
    result = store.append(sid, **SHAPES["openai-chat"][1])
    browser.get(write_page(store, sid, tmp_path))
    assert "3" in browser.find_element(By.CSS_SELECTOR, "main .call").text
    assert [b.text for b in row(browser, result.id).find_elements(By.CSS_SELECTOR, ".badge")] == ["main ●", "HEAD"]


def test_headers_show_role_and_time_and_keep_size_id_and_token_estimate_in_a_tooltip(
        browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid = store.resolve("k")
    m = store.append(sid, role="user", content="I'm Bob.")
    browser.get(write_page(store, sid, tmp_path))
    head = row(browser, m.id).find_element(By.CLASS_NAME, "head")
    assert re.fullmatch(r"User\n?.*\d\d:\d\d", head.text, re.S) and m.id not in head.text
    assert " B" not in head.text and "tok" not in head.text
    tooltip = head.find_element(By.CSS_SELECTOR, "a.meta").get_attribute("title")
    assert tooltip is not None and m.id in tooltip and "stored record: " in tooltip
    assert f"≈{estimate_tokens(m)} tokens (an estimate" in tooltip
    assert browser.find_element(By.ID, "path-facts").text == f"shown path: 1 message · ≈{estimate_tokens(m)} tokens " \
                                                             "(estimated)"


def test_claude_code_results_join_their_calls(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid = import_transcript(store, "claude_code", CLAUDE_SHOWCASE)
    browser.get(write_page(store, sid, tmp_path))
    refresh = [c for c in browser.find_elements(By.CSS_SELECTOR, "main .call") if "refresh_search_index" in c.text]
    assert len(refresh) == 1 and refresh[0].text.endswith("result\ndone")
    assert not row(browser, "sc-r2").is_displayed()
    assert "**" not in conversation(browser)  # the answer's Markdown is rendered
    assert [e.text for e in row(browser, "sc-a5").find_elements(By.TAG_NAME, "strong")] == ["web", "jobs"]


def test_a_reset_is_a_divider_that_leads_back(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid = store.resolve("k")
    store.append(sid, role="user", content="Before the reset.")
    store.append(sid, role="assistant", content="Kept answer.")
    store.reset(sid, keep_strategy="last", keep_count=1)
    store.append(sid, role="user", content="After the reset.")
    browser.get(write_page(store, sid, tmp_path))
    divider = browser.find_element(By.CSS_SELECTOR, "main .divider")
    assert "Session reset (manual)" in divider.text
    assert "Before the reset." not in conversation(browser) and "After the reset." in conversation(browser)
    button(divider, "the conversation before this reset").click()
    assert "Before the reset." in conversation(browser) and "After the reset." not in conversation(browser)
    button(browser, "continues after a reset").click()
    assert "After the reset." in conversation(browser)


def pi_lines() -> list[dict[str, Any]]:
    """A pi (format 3) session with a compaction, and a branch with a branch summary."""
    def entry(kind: str, eid: str, parent: str | None, **body: Any) -> dict[str, Any]:
        return {"type": kind, "id": eid, "parentId": parent, "timestamp": "2026-01-02T03:04:05.000Z", **body}

    def said(role: str, text: str) -> dict[str, Any]:
        return {"role": role, "content": [{"type": "text", "text": text}], "timestamp": 1767323045000}

    return [
        {"type": "session", "version": 3, "id": "7f0e2b9c-0000-4000-8000-000000000001",
         "timestamp": "2026-01-02T03:04:00.000Z", "cwd": "/work/app"},
        entry("model_change", "a0000001", None, provider="anthropic", modelId="claude-sonnet-4-5"),
        entry("message", "a0000002", "a0000001", message=said("user", "List the files.")),
        entry("message", "a0000003", "a0000002", message={
            **said("assistant", "Listing."), "model": "claude-sonnet-4-5",
            "content": [{"type": "toolCall", "id": "call_1", "name": "bash", "arguments": {"command": "ls"}}]}),
        entry("message", "a0000004", "a0000003", message={**said("toolResult", "a.py"), "toolCallId": "call_1",
                                                          "toolName": "bash", "isError": False}),
        entry("compaction", "a0000005", "a0000004", summary="User listed files; one file, a.py.",
              firstKeptEntryId="a0000004", tokensBefore=1234),
        entry("message", "a0000006", "a0000005", message=said("user", "And now?")),
        entry("branch_summary", "a0000007", "a0000002", fromId="a0000006", summary="Tried listing files."),
        entry("message", "a0000008", "a0000007", message=said("user", "Another way?")),
    ]


def test_pi_compactions_and_branch_summaries_are_dividers(browser: WebDriver, store: SessionStore,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "pi.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in pi_lines()), encoding="utf-8")
    sid = import_transcript(store, "pi", path)
    browser.get(write_page(store, sid, tmp_path))
    assert "Tried listing files." in conversation(browser)  # the newest leaf is pi's current one
    assert "⎇ Branch summary" in browser.find_element(By.CSS_SELECTOR, "main .divider").text
    button(browser.find_element(By.ID, "jump"), "user: And now?").click()
    divider = browser.find_element(By.CSS_SELECTOR, "main .divider")
    assert "Compaction (1,234 tokens before)" in divider.text and "User listed files; one file, a.py." in divider.text
    bash = browser.find_element(By.CSS_SELECTOR, "main .call")
    assert bash.text == 'bash\n{\n  "command": "ls"\n}\nresult\na.py'  # a short result, shown in its call's card
    assert "anthropic/claude-sonnet-4-5" in conversation(browser)  # the model change, as a note


def test_claude_code_subagent_sidechain_is_reachable(browser: WebDriver, store: SessionStore,
                                                     tmp_path: Path) -> None:
    sid = import_transcript(store, "claude_code", CLAUDE_SHOWCASE)
    browser.get(write_page(store, sid, tmp_path))
    assert "Both modules are surveyed" in conversation(browser) and "Three scheduled jobs:" not in conversation(browser)
    button(browser, "open subagent showcol2's conversation").click()
    text = conversation(browser)
    assert "Survey src/jobs and list its scheduled jobs." in text and "Three scheduled jobs:" in text
    assert "subagent showcol2" in row(browser, "showcol2-u1").text
    assert "Both modules are surveyed" not in text


def test_claude_code_compact_boundary_is_a_divider_with_its_summary(browser: WebDriver, store: SessionStore,
                                                                     tmp_path: Path) -> None:
    def line(kind: str, uuid: str, parent: str | None, **more: Any) -> dict[str, Any]:
        return {"type": kind, "uuid": uuid, "parentUuid": parent, "isSidechain": False, "sessionId": "cc-1",
                "timestamp": "2026-03-01T10:00:00.000Z", **more}

    lines = [line("user", "u1", None, message={"role": "user", "content": "Fix the bug."}),
             line("assistant", "a1", "u1", message={"role": "assistant", "content": "Done."}),
             line("system", "b1", None, subtype="compact_boundary", content="Conversation compacted",
                  logicalParentUuid="a1", compactMetadata={"trigger": "auto", "preTokens": 9000}),
             line("user", "s1", "b1", message={"role": "user", "content": "Summary: a bug was fixed."},
                  isCompactSummary=True),
             line("assistant", "a2", "s1", message={"role": "assistant", "content": "Continuing."})]
    path = tmp_path / "cc-1.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    sid = import_transcript(store, "claude_code", path)
    browser.get(write_page(store, sid, tmp_path))
    divider = browser.find_element(By.CSS_SELECTOR, "main .divider")
    assert "Conversation compacted (auto, 9,000 tokens before)" in divider.text
    assert "compact summary" in row(browser, "s1").text and "Summary: a bug was fixed." in conversation(browser)
    button(divider, "the conversation before this compaction").click()
    assert "Fix the bug." in conversation(browser) and "Continuing." not in conversation(browser)


def test_a_1000_entry_pi_session_renders_every_message(browser: WebDriver, store: SessionStore,
                                                       tmp_path: Path) -> None:
    sid = import_transcript(store, "pi", PI_LARGE)
    browser.get(write_page(store, sid, tmp_path))
    assert browser.execute_script("return document.getElementById('conversation').children.length") == 1019
    assert "shown path: 1,019 messages" in browser.find_element(By.ID, "path-facts").text
    assert browser.execute_script("return window.pwned") is None


def test_the_lease_holder_is_shown(browser: WebDriver, store: SessionStore, tmp_path: Path) -> None:
    sid, _ = branched(store)
    store.acquire_lock(sid, "worker-7")
    browser.get(write_page(store, sid, tmp_path))
    assert "leased by worker-7" in browser.find_element(By.ID, "facts").text


# ============================================================================
# The server
# ============================================================================


def test_served_index_filters_and_opens_a_session(browser: WebDriver, store: SessionStore, clock: FakeClock) -> None:
    sid, _ = branched(store)
    for key in ("team:alpha", "team:beta"):
        clock.advance(1)
        store.append(store.resolve(key), role="user", content=f"hello from {key}")
    with serving(store) as url:
        browser.get(url)
        titles = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions a")]
        assert titles == ["hello from team:beta", "hello from team:alpha", "What is a good name for a cat?"]
        keys = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#sessions td.key")]
        assert keys == ["team:beta", "team:alpha", "user:alice"]  # newest first
        browser.find_element(By.ID, "filter").send_keys("ALICE")
        shown = [a for a in browser.find_elements(By.CSS_SELECTOR, "#sessions a") if a.is_displayed()]
        assert [a.text for a in shown] == ["What is a good name for a cat?"]
        assert browser.find_element(By.ID, "shown").text == "1 of 3 sessions"
        shown[0].click()
        arrive(browser, f"{url}session/{sid}")
        assert "Pixel means a small dot." in conversation(browser)
        browser.find_element(By.CSS_SELECTOR, "a.back").click()
        arrive(browser, url)


def test_served_search_finds_a_message_and_opens_the_session_at_it(browser: WebDriver, store: SessionStore,
                                                                    clock: FakeClock) -> None:
    sid, ids = branched(store)
    clock.advance(1)
    store.append(store.resolve("team:alpha"), role="user", content="nothing about cats")
    with serving(store) as url:
        browser.get(url)
        box = browser.find_element(By.ID, "q")
        box.send_keys("MISO")
        box.submit()  # a plain GET form: the page's policy lets it go to this server only
        arrive(browser, f"{url}search?q=MISO")
        assert browser.find_element(By.ID, "q").get_attribute("value") == "MISO"
        assert browser.find_element(By.ID, "said").text == "1 match for “MISO”, best first"
        hit = browser.find_element(By.CSS_SELECTOR, "#hits li")
        assert "How about Miso?" in hit.text and "another branch" in hit.text and "user:alice" in hit.text
        hit.find_element(By.TAG_NAME, "a").click()
        arrive(browser, f"{url}session/{sid}#{ids['miso']}")
        assert "How about Miso?" in conversation(browser)  # on another branch: the page shows its path
        assert "Try Pixel." not in conversation(browser)
        browser.get(f"{url}search?q=zebra")
        assert browser.find_element(By.ID, "said").text == "no matches for “zebra”"
        assert browser.find_elements(By.CSS_SELECTOR, "#hits li") == []


def test_hostile_strings_in_the_served_index_and_search_render_as_text(browser: WebDriver,
                                                                        store: SessionStore) -> None:
    hostile_store(store)
    query = "needle " + " ".join(ATTACKS)
    with serving(store) as url:
        for page in (url, f"{url}search?q={urllib.parse.quote(query)}"):
            browser.get(page)
            assert not alert_open(browser)
            assert browser.execute_script("return window.pwned") is None
            assert len(browser.find_elements(By.TAG_NAME, "img")) == 0
            assert len(browser.find_elements(By.TAG_NAME, "svg")) == 0
            assert len(browser.find_elements(By.TAG_NAME, "script")) == 2
            assert [a.get_attribute("href").partition(url)[2].partition("/")[0]  # type: ignore[union-attr]
                    for a in browser.find_elements(By.CSS_SELECTOR, "#sessions a, #hits a")] == ["session"]
            text = browser.find_element(By.TAG_NAME, "body").text
            assert '"><img src=x onerror=alert(1)>' in text and "<script>window.pwned = 7</script>" in text
        assert browser.find_element(By.ID, "q").get_attribute("value") == query
        assert browser.title.startswith(query)


def alert_open(browser: WebDriver) -> bool:
    try:
        browser.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return False
    return True


def test_a_session_that_grew_shows_its_new_messages_on_reload(browser: WebDriver, tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as writer, SessionStore(storage_dir=tmp_path) as reader:
        sid, _ = branched(writer)
        with serving(reader) as url:
            browser.get(f"{url}session/{sid}")
            assert "Pixel means a small dot." in conversation(browser)
            writer.append(sid, role="user", content="A question written later.")
            browser.refresh()
            assert "A question written later." in conversation(browser)


TRAVERSALS = ["/../../../../etc/passwd", "//etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/keys.jsonl",
              "/sessions.json", "/session/../keys.jsonl", "/session/..%2Fkeys.jsonl", "/session/%2e%2e%2fkeys.jsonl",
              "/session/%ff", "/session/", "/session", "/static/app.js", "/index.html"]


def test_the_server_answers_only_its_own_paths(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path) as store:
        sid, _ = branched(store)
        with serving(store) as url:
            refused = [f"/{sid}/messages.jsonl", f"/session/{sid}/messages.jsonl", f"/session/{sid}/../../keys.jsonl",
                       f"/session/..%2F{sid}%2Fmessages.jsonl", *TRAVERSALS]
            for path in refused:
                status, _, body = request(url, "GET", path)
                assert (path, status) == (path, 404) and body == b"404 not found\n"
            assert request(url, "GET", f"/session/{sid}?x=1")[0] == 200
            assert request(url, "GET", "/")[0] == 200
            assert request(url, "GET", "/search?q=pixel")[0] == 200
            assert request(url, "GET", "/search")[0] == 200  # no query: a page asking for one
            assert request(url, "GET", "/search/x?q=pixel")[0] == 404
            assert request(url, "GET", "/search?q=%ff")[:3:2] == (400, b"400 bad query\n")
            assert request(url, "GET", "/search?" + "&".join(["q=a"] * 20))[0] == 400


def test_the_search_page_may_submit_its_form_only_to_its_own_server(store: SessionStore) -> None:
    branched(store)
    with serving(store) as url:
        for path in ("/", "/search?q=pixel"):
            status, headers, body = request(url, "GET", path)
            policy = headers["Content-Security-Policy"]
            assert status == 200 and "form-action 'self'" in policy and "default-src 'none'" in policy
            assert policy in body.decode()  # the page's own copy of its policy says the same
        sid = store.resolve("user:alice")
        assert "form-action 'none'" in request(url, "GET", f"/session/{sid}")[1]["Content-Security-Policy"]
        status, headers, body = request(url, "HEAD", "/search?q=pixel")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_the_server_refuses_every_method_but_get_and_head(store: SessionStore) -> None:
    sid, _ = branched(store)
    with serving(store) as url:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            status, headers, _ = request(url, method, f"/session/{sid}")
            assert (method, status, headers.get("Allow")) == (method, 405, "GET, HEAD")
        status, headers, body = request(url, "HEAD", f"/session/{sid}")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        status, headers, _ = request(url, "GET", "/")
        assert headers["X-Content-Type-Options"] == "nosniff" and "script-src 'sha256-" in headers[
            "Content-Security-Policy"]


def test_the_server_answers_every_request_even_when_a_page_cannot_be_drawn(
        store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = store.resolve("k")
    store.append(sid, role="assistant", content=[{"type": ["text"], "text": "x"},
                                                 {"type": "image", "media_type": {"x": 1}, "data": "AAAA"}])
    with serving(store) as url:
        assert request(url, "GET", f"/session/{sid}")[0] == 200  # content the view does not know: as JSON
        import session_store_view

        def broken(*args: Any, **kwargs: Any) -> str:
            raise RuntimeError("a defect in the view")
        monkeypatch.setattr(session_store_view, "render_session", broken)
        status, _, body = request(url, "GET", f"/session/{sid}")
        assert status == 500 and b"could not be rendered" in body  # an answer, not a closed connection


def test_the_server_answers_only_to_loopback_names(store: SessionStore) -> None:
    """Against DNS rebinding: a page on another site cannot read the store through it."""
    with serving(store) as url:
        assert request(url, "GET", "/", {"Host": "evil.example:8000"})[0] == 403
        assert request(url, "GET", "/", {"Host": "localhost:8000"})[0] == 200


# ============================================================================
# The command line
# ============================================================================


def cli(*args: str, python: list[str] | None = None, cwd: Path = ROOT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(python or [sys.executable, "-m", "session_store"]), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_view_writes_one_page_for_a_key(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path / "s") as store:
        sid, _ = branched(store)
    done = cli("view", "user:alice", "-o", str(tmp_path / "page.html"), "--dir", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    data = page_data((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert data["session"]["id"] == sid and len(data["m"]) == 7


def test_view_of_an_unknown_session_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with SessionStore(storage_dir=tmp_path):
        pass
    done = cli("view", "nobody", "--dir", str(tmp_path))
    assert (done.returncode, done.stderr) == (2, "session-store: no session or key 'nobody'\n")


def test_without_the_view_file_the_command_says_which_file_is_missing(tmp_path: Path) -> None:
    shutil.copy(ROOT / "session_store.py", tmp_path / "session_store.py")  # vendored alone
    (tmp_path / "s").mkdir()
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nor integrations/ on the path
    done = cli("--dir", "s", "serve", python=[sys.executable, "-S", str(tmp_path / "session_store.py")], cwd=tmp_path,
               env=alone)
    assert done.returncode == 2 and "session_store_view.py" in done.stderr and "Traceback" not in done.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve_and_ask(directory: Path, sid: str) -> None:
    """Run ``session-store serve`` on ``directory``, ask it everything, stop it with Ctrl-C."""
    # (Ctrl-C must reach it even when the tests run as a background job, whose children
    # inherit SIGINT ignored: then Python installs no KeyboardInterrupt and serve never ends.)
    server = subprocess.Popen([sys.executable, "-m", "session_store", "serve", "--port", "0", "--dir", str(directory)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                              preexec_fn=_default_sigint)
    try:
        assert server.stdout is not None
        url = re.search(r"http://\S+/", server.stdout.readline())
        assert url is not None
        page = f"/session/{sid}"
        asked = [("GET", "/"), ("GET", page), ("HEAD", page), ("POST", page), ("DELETE", page),
                 ("GET", "/search?q=pixel"), ("GET", "/search?q=regal"), ("POST", "/search?q=pixel")]
        for method, path in asked + [("GET", p) for p in TRAVERSALS]:
            request(url[0], method, path)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0


def test_serve_never_writes_to_the_store(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with SessionStore(storage_dir=directory) as store:
        sid, _ = branched(store)
        store.reset(sid)
        store.acquire_lock(sid, "worker-1")  # a live lease is read, not taken over
    before = snapshot(directory)
    serve_and_ask(directory, sid)
    assert snapshot(directory) == before


def test_serve_never_writes_even_while_a_writer_has_unsaved_state(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with SessionStore(storage_dir=directory) as writer:  # a live writer, its tallies not saved yet
        sid, _ = branched(writer)
        before = snapshot(directory)
        serve_and_ask(directory, sid)
        after = snapshot(directory)
    assert after == before
