"""session_store_claude_agent_sdk with the real Claude Agent SDK: its own conformance
suite (every contract, nothing skipped) on memory, files, SQLite and PostgreSQL; entries
kept verbatim and read as a Claude Code transcript; hostile keys refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pg
import pytest
from frameworks import require

require("claude_agent_sdk", "claude-agent-sdk")

from claude_agent_sdk import SessionStore as SDKSessionStore  # noqa: E402
from claude_agent_sdk.testing import run_session_store_conformance  # noqa: E402
from claude_agent_sdk.testing.session_store_conformance import _has_optional  # noqa: E402
from claude_agent_sdk.types import SessionKey  # noqa: E402
from session_store_claude_agent_sdk import ClaudeSessionStore  # noqa: E402

import session_store as ss  # noqa: E402
import session_store_transcripts  # noqa: E402 - also registers the Claude Code reader
from session_store import AsyncSessionStore, InMemoryFileSystem, InvalidKey, SessionStore  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude-code"
OPTIONAL = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")


@pytest.mark.parametrize("backend", ["memory", "files", "sqlite", "postgres"])
def test_the_sdk_s_own_conformance_suite_passes_with_every_optional_method(backend: str, tmp_path: Path) -> None:
    with pg.fresh_stores(backend, tmp_path) as make:
        probe = ClaudeSessionStore(make())
        assert all(_has_optional(probe, m, frozenset()) for m in OPTIONAL)  # so none of the 14 is skipped
        asyncio.run(run_session_store_conformance(lambda: ClaudeSessionStore(make())))


def test_an_async_store_serves_too(tmp_path: Path) -> None:
    async def main() -> None:
        store = AsyncSessionStore(InMemoryFileSystem())
        await run_session_store_conformance(lambda: ClaudeSessionStore(AsyncSessionStore(InMemoryFileSystem())))
        sdk = ClaudeSessionStore(store)
        await sdk.append({"project_key": "p", "session_id": "s"}, [{"type": "x", "uuid": "u1"}])
        assert await sdk.load({"project_key": "p", "session_id": "s"}) == [{"type": "x", "uuid": "u1"}]
        await store.close()

    asyncio.run(main())


def transcript() -> list[Any]:
    path = next(FIXTURES.glob("*/*.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_real_transcript_is_kept_verbatim_and_read_as_a_claude_code_transcript() -> None:
    lines = transcript()
    store = SessionStore(InMemoryFileSystem())
    sdk = ClaudeSessionStore(store)
    key: SessionKey = {"project_key": "-workspace-example-app", "session_id": "abc"}

    async def mirror() -> Any:
        for start in range(0, len(lines), 3):  # in batches, as the SDK mirrors a turn
            await sdk.append(key, lines[start:start + 3])
        await sdk.append(key, lines[:5])  # a retried batch: nothing twice
        return await sdk.load(key)

    assert asyncio.run(mirror()) == lines
    sid = store.resolve("claude:-workspace-example-app/abc", create=False)
    assert sid is not None
    assert len(store.get_messages(sid)) == len(lines)
    assert sid in store.get_all_session_ids()
    context = store.build_context(sid, format="anthropic")  # the Claude Code reader reads what it keeps
    assert context["messages"] and context["messages"][0]["role"] == "user"
    store.close()


def test_keys_are_data_a_project_never_reaches_another_and_bad_keys_are_refused() -> None:
    store = SessionStore(InMemoryFileSystem())
    sdk = ClaudeSessionStore(store)

    async def main() -> None:
        await sdk.append({"project_key": "a/b", "session_id": "c"}, [{"type": "x", "uuid": "1"}])
        await sdk.append({"project_key": "a", "session_id": "b/c"}, [{"type": "x", "uuid": "2"}])
        assert [s["session_id"] for s in await sdk.list_sessions("a")] == ["b/c"]
        assert [s["session_id"] for s in await sdk.list_sessions("a/b")] == ["c"]
        assert await sdk.load({"project_key": "a", "session_id": "b", "subpath": "c"}) is None
        for bad in ({"project_key": "", "session_id": "s"}, {"project_key": "p", "session_id": "s", "subpath": ""},
                    {"project_key": 3, "session_id": "s"}):
            with pytest.raises(InvalidKey):
                await sdk.append(bad, [{"type": "x"}])  # type: ignore[arg-type]
        assert len(store.get_all_session_ids()) == 4  # two transcripts, two summaries: nothing for the bad keys

    asyncio.run(main())
    assert SDKSessionStore in ClaudeSessionStore.__mro__
    store.close()


def test_the_command_line_reads_a_mirrored_transcript_as_text(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    lines = transcript()
    with SessionStore(storage_dir=tmp_path) as store:
        asyncio.run(ClaudeSessionStore(store).append({"project_key": "p", "session_id": "x"}, lines))
    assert ss.main(["--dir", str(tmp_path), "history", "claude:p/x"]) == 0
    out = capsys.readouterr().out
    first = next(line["message"]["content"] for line in lines if line.get("type") == "user")
    text = first if isinstance(first, str) else next(b["text"] for b in first if b.get("type") == "text")
    assert f"user: {text}" in out
    assert '"uuid"' not in out  # lines read as a transcript, not printed as JSON


def test_a_fork_the_sdk_made_imports_knowing_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``claude_agent_sdk.fork_session`` writes a fork as Claude Code does (every row with
    ``forkedFrom``); the import records the source session and message."""
    from claude_agent_sdk import fork_session

    lines = transcript()
    source_id = next(line["sessionId"] for line in lines if isinstance(line.get("sessionId"), str))
    project = tmp_path / "config" / "projects" / "-workspace"
    project.mkdir(parents=True)
    (project / f"{source_id}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "config"))
    forked = fork_session(source_id)
    with SessionStore(InMemoryFileSystem()) as store:
        source = session_store_transcripts.import_claude_code(store, project / f"{source_id}.jsonl")
        fork = session_store_transcripts.import_claude_code(store, project / f"{forked.session_id}.jsonl")
        meta = store.get_metadata(fork)
        assert meta is not None and meta.forked_from is not None
        assert meta.forked_from[0] == source and meta.forked_from[1] in {m.id for m in store.get_messages(source)}
        assert store.build_context(fork) == store.build_context(source, meta.forked_from[1])


@pytest.mark.parametrize("bad", [["not an entry"], [{"uuid": "u"}], [{"type": 3}], [{"type": "x", "v": {1, 2}}],
                                 [{"type": "x", "v": float("nan")}], [{"type": "x", "k": {1: "int key"}}],
                                 [{"type": "x", "uuid": "ok"}, {"type": "x", "v": {1, 2}}]])
def test_a_batch_with_an_entry_that_is_no_transcript_line_is_refused_and_writes_nothing(bad: list[Any]) -> None:
    store = SessionStore(InMemoryFileSystem())
    sdk = ClaudeSessionStore(store)
    with pytest.raises(ss.InvalidMessage):
        asyncio.run(sdk.append({"project_key": "p", "session_id": "s"}, bad))
    assert store.get_keys() == {}  # no session, no summary: not even an empty one
    store.close()
