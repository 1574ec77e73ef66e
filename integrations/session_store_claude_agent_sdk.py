"""session_store_claude_agent_sdk: the Claude Agent SDK's ``SessionStore``, kept in a session store.

The SDK mirrors every transcript line of a session to a ``SessionStore`` and resumes
from it (``ClaudeAgentOptions(session_store=...)``)::

    from claude_agent_sdk import ClaudeAgentOptions
    from session_store import SessionStore
    from session_store_claude_agent_sdk import ClaudeSessionStore

    store = SessionStore(storage_dir="./sessions")
    options = ClaudeAgentOptions(session_store=ClaudeSessionStore(store))

Every method of the SDK's protocol is implemented (``append``, ``load``,
``list_sessions``, ``list_session_summaries``, ``delete``, ``list_subkeys``), and the
SDK's own conformance suite (``claude_agent_sdk.testing.run_session_store_conformance``)
passes on every backend.

How it is kept:

- A transcript (a ``SessionKey``) is one session of the store, under the key
  ``<key_prefix><project_key>/<session_id>``, a subagent's transcript (``subpath``)
  under ``.../<session_id>/<subpath>`` (each part percent-encoded, so that no value can
  reach into another's keys): ``project_key`` scopes them like a tenant.
- Each entry is one message, written as :func:`session_store_transcripts.import_claude_code`
  writes a Claude Code transcript line (import ``session_store_transcripts``, and
  ``build_context``, ``history`` and the view read it as one); ``load`` returns the
  entries as appended (deep-equal). An entry's ``uuid`` is its message id: appending
  an entry whose uuid the transcript has is a no-op (the SDK retries failed batches).
- ``append`` holds the session's lease (an owner of its own per call), so
  that the summary the SDK folds (:func:`claude_agent_sdk.fold_session_summary`) is read,
  folded and written by one writer at a time, across processes. The summary is kept
  verbatim in a companion session (``...#summary``), one record per append, stamped
  with the store's clock; ``list_sessions`` reports that time as ``mtime``, so both
  share one clock.

``list_sessions``, ``list_session_summaries`` and ``delete`` read the store's index of
keys (no session's records are loaded for it).

Imports ``session_store``, ``session_store_transcripts`` and ``claude_agent_sdk``.
"""

from __future__ import annotations

__all__ = ["ClaudeSessionStore"]

import asyncio
import copy
import itertools
import json
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from claude_agent_sdk import fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)
from claude_agent_sdk.types import (
    SessionStore as SDKSessionStore,
)

from session_store import (
    AsyncSessionStore,
    InvalidInput,
    InvalidKey,
    InvalidMessage,
    Message,
    SessionNotFound,
    SessionStore,
)
from session_store_transcripts import claude_code_line, claude_code_messages

_T = TypeVar("_T")
_SUMMARY = "#summary"  # the companion session of a transcript's summary ("#" is encoded in every part)


def _part(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidKey(f"{what} must be a non-empty string, not {value!r}")
    return quote(value, safe="")


class ClaudeSessionStore(SDKSessionStore):
    """The Claude Agent SDK's ``SessionStore`` protocol over a :class:`SessionStore`
    (or an :class:`AsyncSessionStore`'s store); see the module.

    ``key_prefix`` starts every key it writes (default ``"claude:"``): two SDK stores
    with different prefixes share a session store without seeing each other. The
    store's calls run in a worker thread, never on the event loop.
    """

    def __init__(self, store: SessionStore | AsyncSessionStore, *, key_prefix: str = "claude:") -> None:
        if isinstance(store, AsyncSessionStore):
            store = store.sync
        if not isinstance(store, SessionStore):
            raise InvalidInput(f"ClaudeSessionStore needs a SessionStore, not {type(store).__name__}")
        if not isinstance(key_prefix, str):
            raise InvalidInput("key_prefix must be a string")
        self.store = store
        self.key_prefix = key_prefix
        self._owner = f"claude-agent-sdk:{uuid.uuid4().hex[:12]}:{os.getpid()}"
        self._calls = itertools.count(1)

    def __repr__(self) -> str:
        return f"ClaudeSessionStore({self.store!r}, key_prefix={self.key_prefix!r})"

    # -- keys ---------------------------------------------------------------------------

    def _project(self, project_key: object) -> str:
        return f"{self.key_prefix}{_part(project_key, 'project_key')}/"

    def _main(self, key: SessionKey | SessionListSubkeysKey) -> str:
        if not isinstance(key, dict):
            raise InvalidKey(f"a SessionKey is a dict, not {type(key).__name__}")
        return self._project(key.get("project_key")) + _part(key.get("session_id"), "session_id")

    def _key(self, key: SessionKey) -> str:
        main = self._main(key)
        if "subpath" not in key:
            return main
        return f"{main}/{_part(key.get('subpath'), 'subpath (omit it for the main transcript)')}"


    # -- the protocol ---------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Mirror a batch of entries: written whole or not at all, durably (with the
        store's ``durable``); entries whose uuid the transcript holds are skipped."""
        if not isinstance(entries, list):
            raise InvalidInput(f"entries must be a list, not {type(entries).__name__}")
        name = self._key(key)
        if not entries:
            return
        for entry in entries:  # before anything is written (a session made for a refused batch included)
            _check_entry(entry)
        await _off_loop(self._append, key, name, entries)

    def _append(self, key: SessionKey, name: str, entries: list[SessionStoreEntry]) -> None:
        store = self.store
        sid = store.resolve(name)
        with store.lock(sid, self._call_owner()):
            kept = {m.id for m in store.get_messages(sid)}
            seen = set(kept)
            fresh: list[Any] = []
            for entry in entries:
                own = entry.get("uuid") if isinstance(entry, dict) else None
                if isinstance(own, str) and own in seen:
                    continue  # a batch retried, or an entry sent twice: kept once
                if isinstance(own, str):
                    seen.add(own)
                fresh.append(entry)
            if fresh:
                store.import_messages(sid, claude_code_messages(fresh, after=kept))
        if "subpath" not in key:
            self._fold(name, entries)

    def _fold(self, name: str, entries: list[SessionStoreEntry]) -> None:
        """Fold the batch into the transcript's summary and keep it, under the
        summary session's lease (one read-fold-write at a time, across processes)."""
        store = self.store
        sid = store.resolve(name + _SUMMARY)
        key: SessionKey = self._session_key(name)
        with store.lock(sid, self._call_owner()):
            last = store.get_linear_history(sid, limit=1)
            prev = _summary(last[0]) if last else None
            summary = fold_session_summary(prev, key, entries)
            store.append(sid, role="summary", content={"session_id": summary["session_id"], "data": summary["data"]})

    def _call_owner(self) -> str:
        """A lease owner for one call: two calls of this object never share a hold."""
        return f"{self._owner}:{next(self._calls)}"

    def _session_key(self, name: str) -> SessionKey:
        project, _, session = name[len(self.key_prefix):].partition("/")
        return {"project_key": unquote(project), "session_id": unquote(session)}

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """The entries as appended; ``None`` for a transcript never written."""
        name = self._key(key)

        def load() -> list[SessionStoreEntry] | None:
            sid = self.store.resolve(name, create=False)
            if sid is None:
                return None
            try:
                messages = self.store.get_messages(sid)
            except SessionNotFound:  # deleted meanwhile
                return None
            return [claude_code_line(m) for m in messages]

        return await _off_loop(load)

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The project's transcripts (not its subagents'), with the store's time of
        their last append in ms since the epoch."""
        prefix = self._project(project_key)
        return await _off_loop(lambda: [{"session_id": s["session_id"], "mtime": s["mtime"]}
                                        for s in self._summaries(prefix)])

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The summaries the SDK folded at each append, as it folded them."""
        prefix = self._project(project_key)
        return await _off_loop(lambda: self._summaries(prefix))

    def _summaries(self, prefix: str) -> list[SessionSummaryEntry]:
        """The summary of each of the project's transcripts; its ``mtime`` is the time
        the store wrote it. A transcript whose first summary was not written (a crash
        between the two writes) has an empty one, of its creation time."""
        found = self.store.get_keys(prefix)
        out: list[SessionSummaryEntry] = []
        for name, sid in found.items():
            rest = name[len(prefix):]
            if "/" in rest or rest.endswith(_SUMMARY):
                continue  # a subagent's transcript, or a summary
            summary: SessionSummaryEntry | None = None
            try:
                if name + _SUMMARY in found:
                    last = self.store.get_linear_history(found[name + _SUMMARY], limit=1)
                    summary = _summary(last[0]) if last else None
                if summary is None:
                    metadata = self.store.get_metadata(sid)
                    if metadata is None:
                        continue  # deleted meanwhile
                    summary = {"session_id": unquote(rest), "mtime": metadata.created_at, "data": {}}
            except SessionNotFound:
                continue
            out.append(summary)
        return out

    async def delete(self, key: SessionKey) -> None:
        """Delete a transcript; a main one with its subagents' transcripts and its summary."""
        name = self._key(key)

        def delete() -> None:
            if "subpath" in key:
                sid = self.store.resolve(name, create=False)
                doomed = [sid] if sid is not None else []
            else:  # its subagents' transcripts first: a crash part way leaves the main one, and a retry
                found = self.store.get_keys(name)
                doomed = [sid for k, sid in found.items() if k.startswith(name + "/")]
                doomed += [found[k] for k in (name + _SUMMARY, name) if k in found]
            for sid in doomed:
                try:
                    self.store.delete_session(sid)
                except SessionNotFound:
                    pass  # deleted meanwhile

        await _off_loop(delete)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subpaths of a transcript's subagents."""
        name = self._main(key)
        return await _off_loop(lambda: [unquote(k[len(name) + 1:]) for k in self.store.get_keys(name + "/")])


def _check_entry(entry: Any) -> None:
    """:class:`InvalidMessage` unless ``entry`` is a transcript line the SDK can send:
    an object with a string ``type``, JSON that reads back equal (string keys, no NaN)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise InvalidMessage(f"a transcript entry is an object with a string 'type', not {entry!r:.200}")
    try:
        same = json.loads(json.dumps(entry, allow_nan=False)) == entry
    except (TypeError, ValueError, RecursionError):
        same = False
    if not same:
        raise InvalidMessage(f"a transcript entry must be JSON (string keys, no NaN, no objects): {entry!r:.200}")


def _summary(record: Message) -> SessionSummaryEntry | None:
    """A kept summary, its ``mtime`` the time the store wrote it."""
    content = record.content
    if not isinstance(content, dict) or not isinstance(content.get("data"), dict):
        return None
    return {"session_id": content.get("session_id", ""), "mtime": record.timestamp,
            "data": copy.deepcopy(content["data"])}


async def _off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.to_thread(fn, *args)
