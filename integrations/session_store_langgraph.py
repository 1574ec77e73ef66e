"""session_store_langgraph: a LangGraph checkpointer whose checkpoints are a session's tree.

LangGraph (and LangChain 1.x agents, ``create_agent``) persist through a checkpointer::

    from langgraph.graph import StateGraph
    from session_store import SessionStore
    from session_store_langgraph import SessionStoreSaver

    store = SessionStore(storage_dir="./sessions")
    graph = builder.compile(checkpointer=SessionStoreSaver(store))
    graph.invoke(inputs, {"configurable": {"thread_id": "user:alice"}})

Every method of ``BaseCheckpointSaver``, sync and async, is implemented: ``put``,
``put_writes``, ``get_tuple``, ``list``, ``delete_thread``, ``delete_for_runs``,
``copy_thread`` and ``prune``; LangGraph's own conformance suite
(``langgraph-checkpoint-conformance``) detects and passes all eight capabilities.

How it is kept:

- A thread is one session of the store, under the key ``langgraph:<thread_id>``; its
  namespaces (subgraphs) are in the same session.
- A checkpoint is one message, a child of its parent checkpoint's: a checkpoint's
  ``parent_config`` is its parent in the tree, so forks and time travel are the
  session's own branches. Each channel value is one message per (namespace, channel,
  version), written once however many checkpoints share that version; each pending
  write is one message, a child of its checkpoint. Values are LangGraph's serializer's
  bytes (base64 in the record).
- A checkpoint whose ``messages`` channel (LangGraph's convention: ``MessagesState``,
  ``create_agent``) changed also holds the messages it added, those whose ids its
  parent's list lacks (serialized like the values), and, unless the serializer
  encrypts, their text (``text``: what search and the session's title read). Its role
  is then ``user`` when one of them is a ``HumanMessage``, else the last one's
  (``assistant``, ``tool``); ``checkpoint`` when it added none. The current branch's head
  follows the newest checkpoint of the root namespace, LangGraph's current one.
- ``delete_for_runs`` and ``prune`` append one record naming the checkpoints they take
  away (with their writes); readers leave those out. The log stays append-only: their
  bytes are reclaimed only when the thread is deleted. ``delete_thread`` deletes the
  session.

Importing this module registers a context reader (``register_context_reader``) for
these records, so :meth:`SessionStore.build_context` of a checkpoint is the
conversation the graph's state holds there (its ``messages`` as decoded by LangGraph's
default serializer: HumanMessage, AIMessage with its tool calls, ToolMessage), and the
view and the command line (:func:`session_store.read_turns`) show each checkpoint as
the messages it added; values and writes read as nothing.

Each read indexes the thread's records (O(records of the thread), on the store's
cached tree). Imports ``session_store`` and ``langgraph``
(``pip install "session-store[langgraph]"``).
"""

from __future__ import annotations

__all__ = ["SessionStoreSaver"]

import asyncio
import base64
import builtins
import dataclasses
import hashlib
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import quote, unquote

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from session_store import (
    AsyncSessionStore,
    Branch,
    InvalidInput,
    Message,
    SessionNotFound,
    SessionStore,
    register_context_reader,
)

_THREADS_KEPT = 64  # threads whose records a saver keeps indexed
_SAID_KEPT = 16  # checkpoints per thread whose message keys a saver keeps (see SessionStoreSaver._said)
_MESSAGES = "messages"  # the channel read as the conversation


def _id(kind: str, *parts: Any) -> str:
    """A message id for a record that LangGraph names by ``parts`` (any strings)."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":"), default=str).encode()).hexdigest()[:32]
    return f"{kind}-{digest}"


def _typed(serialized: tuple[str, bytes]) -> dict[str, str]:
    return {"t": serialized[0], "b": base64.b64encode(serialized[1]).decode("ascii")}


def _untyped(stored: Any) -> tuple[str, bytes]:
    return stored["t"], base64.b64decode(stored["b"])


def _key_of(message: Any, place: int) -> Any:
    """What tells a message of a list apart: its id, or its place when it has none (a
    list kept with ``operator.add`` only grows, so a place is the same message)."""
    mid = getattr(message, "id", None)
    return mid if isinstance(mid, str) and mid else ("#", place)


def _added(messages: Sequence[Any], before: frozenset[Any]) -> builtins.list[BaseMessage]:
    """The messages of ``messages`` whose keys ``before`` (the parent's) lacks."""
    return [m for i, m in enumerate(messages) if isinstance(m, BaseMessage) and _key_of(m, i) not in before]


# -- reading checkpoints as a conversation ---------------------------------------------------
#
# build_context, the view and the command line read these records through the reader
# registered below. A path of checkpoints (with a value or write at its end, perhaps)
# reads as the messages channel of its last checkpoint, found through ``children``:
# exactly the graph's state there, whatever its reducer replaced or removed. A record
# read alone (read_turns: no children) reads as the messages it added (kept in it by
# put), so a path shown record by record says each message once. Decoding uses
# LangGraph's default serializer: what another serializer wrote (an encrypted one)
# reads as nothing. LangChain messages become native records as session_store_langchain
# reads them (not imported from there: an integration imports only session_store and
# its own framework).

_SERDE = JsonPlusSerializer()
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def _decoded(stored: Any) -> Any:
    """A stored value as LangGraph's default serializer reads it; ``None`` when it cannot."""
    try:
        return _SERDE.loads_typed(_untyped(stored))
    except Exception:  # another serializer's bytes, or a damaged record: nothing to read
        return None


def _native(message: BaseMessage, record: Message) -> Message:
    """A LangChain message as a native record (``record``'s id, parent and time): its
    role, its content (``tool_call`` blocks left out: ``tool_calls`` says them), an AI
    message's ``tool_calls`` as ``{id, name, input}``, a tool message's
    ``tool_call_id``, ``name`` and ``is_error``."""
    role = _ROLES.get(message.type, "")
    if message.type == "chat":
        role = str(getattr(message, "role", ""))
    content: Any = message.content
    if isinstance(content, builtins.list):
        content = [b for b in content
                   if not (isinstance(b, dict) and b.get("type") in ("tool_call", "tool_call_chunk"))]
    fields: dict[str, Any] = {}
    if isinstance(message, AIMessage) and message.tool_calls:
        fields["tool_calls"] = [{"id": c.get("id"), "name": c.get("name"), "input": c.get("args")}
                                for c in message.tool_calls]
    if isinstance(message, ToolMessage):
        fields = {"tool_call_id": message.tool_call_id, "name": message.name, "is_error": message.status == "error"}
    return dataclasses.replace(record, type=role, role=role, content=content, fields=fields)


def _natives(messages: Any, record: Message) -> builtins.list[Message]:
    if not isinstance(messages, builtins.list):
        return []
    return [_native(m, record) for m in messages if isinstance(m, BaseMessage)]


def _state_at(path: Sequence[Message], children: Any) -> builtins.list[Message] | None:
    """The messages channel at the path's last record (a checkpoint), from the value
    record of its version (a child of that checkpoint or of one before it); ``None``
    when that record is not found (``children`` gives none: a record read alone)."""
    content = path[-1].content
    checkpoint = _decoded(content.get("checkpoint")) if isinstance(content, dict) else None
    if not isinstance(checkpoint, dict):
        return None
    version = checkpoint.get("channel_versions", {}).get(_MESSAGES)
    if version is None:
        return []  # no message yet
    wanted = _id("value", content.get("ns", ""), _MESSAGES, version)
    for m in reversed(path):
        if m.type == "langgraph.checkpoint":
            for child in children(m.id):
                if child.id == wanted:
                    value = child.content.get("value") if isinstance(child.content, dict) else None
                    return [] if value is None else _natives(_decoded(value), path[-1])
    return None


def _read_langgraph(path: builtins.list[Message], children: Any) -> builtins.list[Message]:
    """The context reader of this module's records (see the banner above)."""
    last = max((i for i, m in enumerate(path) if m.type == "langgraph.checkpoint"), default=None)
    state = None if last is None else _state_at(path[:last + 1], children)
    out: builtins.list[Message] = []
    for i, record in enumerate(path):
        if not record.type.startswith("langgraph."):
            out.append(record)
        elif state is not None:
            if i == last:
                out += state
        elif record.type == "langgraph.checkpoint" and isinstance(record.content, dict) \
                and _MESSAGES in record.content:
            out += _natives(_decoded(record.content[_MESSAGES]), record)
    return out


register_context_reader("langgraph", _read_langgraph)


class _Thread:
    """A thread's records, indexed; :meth:`read_on` indexes the records added since
    (a session's messages come in append order, so the new ones are its tail)."""

    def __init__(self) -> None:
        self.seen = 0  # messages of the session indexed so far
        self.last = ""  # the id of the last of them
        self.ids: set[str] = set()
        self.checkpoints: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, id) -> record content
        self.values: dict[str, Any] = {}  # message id of (ns, channel, version) -> content
        self.writes: dict[tuple[str, str], dict[tuple[str, int], dict[str, Any]]] = {}
        self.said: dict[tuple[str, str], frozenset[Any]] = {}  # (ns, id) -> keys of its messages (recent ones)

    def continued_by(self, messages: Sequence[Message]) -> bool:
        """Whether ``messages`` begin with the ones indexed (a record taken back after
        a failed write, or a repair, makes the index start again)."""
        return self.seen <= len(messages) and (not self.seen or messages[self.seen - 1].id == self.last)

    def read_on(self, messages: Sequence[Message]) -> _Thread:
        for m in messages[self.seen:]:
            self.ids.add(m.id)
            content = m.content
            if not isinstance(content, dict):
                continue
            if m.type == "langgraph.checkpoint":
                self.checkpoints[(content["ns"], content["id"])] = content
            elif m.type == "langgraph.value":
                self.values[m.id] = content
            elif m.type == "langgraph.write":
                slot = self.writes.setdefault((content["ns"], content["checkpoint"]), {})
                key = (content["task"], content["idx"])
                if key not in slot or content["idx"] < 0:  # a special channel's write replaces the one before
                    slot[key] = content
            elif m.type == "langgraph.removed":
                for ns, cid in content["checkpoints"]:
                    self.checkpoints.pop((ns, cid), None)
                    self.writes.pop((ns, cid), None)
        self.seen = len(messages)
        if messages:
            self.last = messages[-1].id
        return self


class SessionStoreSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer over a :class:`~session_store.SessionStore` (or an
    :class:`~session_store.AsyncSessionStore`'s store); see the module. ``serde``:
    LangGraph's serializer (default: its own). The async methods run the store's calls
    in a worker thread."""

    def __init__(self, store: SessionStore | AsyncSessionStore, *, serde: SerializerProtocol | None = None,
                 key_prefix: str = "langgraph:") -> None:
        super().__init__(serde=serde)
        if isinstance(store, AsyncSessionStore):
            store = store.sync
        if not isinstance(store, SessionStore):
            raise InvalidInput(f"SessionStoreSaver needs a SessionStore, not {type(store).__name__}")
        if not isinstance(key_prefix, str):
            raise InvalidInput("key_prefix must be a string")
        self.store = store
        self.key_prefix = key_prefix
        self._threads: dict[str, _Thread] = {}  # session id -> its records, indexed (see _thread)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SessionStoreSaver({self.store!r}, key_prefix={self.key_prefix!r})"

    # -- threads ------------------------------------------------------------------------

    def _key(self, thread_id: Any) -> str:
        if not isinstance(thread_id, (str, int)) or isinstance(thread_id, bool) or thread_id == "":
            raise InvalidInput(f"a thread_id is a non-empty string, not {thread_id!r}")
        return self.key_prefix + quote(str(thread_id), safe="")

    def _thread(self, thread_id: Any, *, create: bool = False) -> tuple[str | None, _Thread]:
        """The thread's session id (``None``: it has none) and its records, indexed:
        kept per session and read on from where they were (a thread's records are
        only ever added to; a deletion makes a new session, with a new id)."""
        sid = self.store.resolve(self._key(thread_id), create=create)
        if sid is None:
            return None, _Thread()
        try:
            messages = self.store.get_messages(sid)
        except SessionNotFound:  # deleted meanwhile
            return None, _Thread()
        with self._lock:
            thread = self._threads.pop(sid, None)
            if thread is None or not thread.continued_by(messages):
                thread = _Thread()
            self._threads[sid] = thread  # most recently used last
            while len(self._threads) > _THREADS_KEPT:
                del self._threads[next(iter(self._threads))]
            return sid, thread.read_on(messages)

    def _tuple(self, thread_id: str, thread: _Thread, ns: str, cid: str) -> CheckpointTuple:
        content = thread.checkpoints[(ns, cid)]
        checkpoint: Checkpoint = self.serde.loads_typed(_untyped(content["checkpoint"]))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            stored = thread.values.get(_id("value", ns, channel, version))
            if stored is not None and stored["value"] is not None:
                values[channel] = self.serde.loads_typed(_untyped(stored["value"]))
        writes = sorted(thread.writes.get((ns, cid), {}).values(),
                        key=lambda w: writes_sort_key(w["path"], w["task"], w["idx"]))
        parent = content["parent"]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}},
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed(_untyped(content["metadata"])),
            parent_config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
            if parent else None,
            pending_writes=[(w["task"], w["channel"], self.serde.loads_typed(_untyped(w["value"]))) for w in writes])

    # -- BaseCheckpointSaver ----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), else the thread's latest in its namespace."""
        thread_id = config["configurable"]["thread_id"]
        ns = config["configurable"].get("checkpoint_ns", "")
        _, thread = self._thread(thread_id)
        cid = get_checkpoint_id(config)
        if cid is None:
            ids = [c for n, c in thread.checkpoints if n == ns]
            if not ids:
                return None
            cid = max(ids)
        if (ns, cid) not in thread.checkpoints:
            return None
        return self._tuple(str(thread_id), thread, ns, cid)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace and id, when
        given; ``None``: every thread), whose metadata has ``filter``'s values, before
        ``before``'s checkpoint, at most ``limit``."""
        if config is not None:
            threads: list[str] = [str(config["configurable"]["thread_id"])]
            want_ns = config["configurable"].get("checkpoint_ns")
            want_id = get_checkpoint_id(config)
        else:
            threads = self._thread_ids()
            want_ns, want_id = None, None
        before_id = get_checkpoint_id(before) if before else None
        for thread_id in threads:
            _, thread = self._thread(thread_id)
            for ns, cid in sorted(thread.checkpoints, key=lambda k: k[1], reverse=True):
                if (want_ns is not None and ns != want_ns) or (want_id and cid != want_id):
                    continue
                if before_id and cid >= before_id:
                    continue
                if filter:
                    metadata = self.serde.loads_typed(_untyped(thread.checkpoints[(ns, cid)]["metadata"]))
                    if not all(metadata.get(k) == v for k, v in filter.items()):
                        continue
                if limit is not None and limit <= 0:
                    return
                if limit is not None:
                    limit -= 1
                yield self._tuple(thread_id, thread, ns, cid)

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Keep a checkpoint (a child of its parent's message) and the channel values of
        ``new_versions`` not kept before; durable when this returns (one sync)."""
        thread_id = config["configurable"]["thread_id"]
        ns = config["configurable"].get("checkpoint_ns", "")
        parent = config["configurable"].get("checkpoint_id")
        kept: dict[str, Any] = dict(checkpoint)
        values: dict[str, Any] = kept.pop("channel_values", {})
        cid = checkpoint["id"]
        sid, thread = self._thread(thread_id, create=True)
        assert sid is not None
        have, adding = thread.ids, set()  # (the index's own set is not changed before the write lands)
        own = _id("checkpoint", ns, cid)
        records: builtins.list[Message] = []
        if own not in have:
            parent_id = _id("checkpoint", ns, parent) if parent else None
            content: dict[str, Any] = {
                "ns": ns, "id": cid, "parent": parent, "checkpoint": _typed(self.serde.dumps_typed(kept)),
                "metadata": _typed(self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)))}
            role = "checkpoint"
            said = values.get(_MESSAGES) if _MESSAGES in new_versions else None
            if isinstance(said, builtins.list):
                added = _added(said, self._said(thread, ns, parent))
                with self._lock:
                    thread.said[(ns, cid)] = frozenset(_key_of(m, i) for i, m in enumerate(said))
                    while len(thread.said) > _SAID_KEPT:
                        del thread.said[next(iter(thread.said))]
                if added:
                    typed = self.serde.dumps_typed(added)
                    content[_MESSAGES] = _typed(typed)
                    roles = [_ROLES.get(m.type, "chat") for m in added]
                    role = "user" if "user" in roles else roles[-1]  # (a user's: the session's title reads it)
                    if "+" not in typed[0]:  # an encrypting serializer names its cipher after a "+": no text then
                        text = [t for t in (str(m.text) for m in added) if t.strip()]
                        if text:
                            content["text"] = text
            records.append(Message(id=own, parent_id=parent_id if parent_id in have else None,
                                   type="langgraph.checkpoint", role=role, timestamp=0, content=content))
        for channel, version in new_versions.items():
            vid = _id("value", ns, channel, version)
            if vid in have or vid in adding:
                continue
            adding.add(vid)
            value = _typed(self.serde.dumps_typed(values[channel])) if channel in values else None
            records.append(Message(id=vid, parent_id=own, type="langgraph.value", role="value", timestamp=0,
                                   content={"ns": ns, "channel": channel, "version": version, "value": value}))
        self._write(sid, records, head=own if not ns and records and records[0].id == own else None)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def _said(self, thread: _Thread, ns: str, cid: str | None) -> frozenset[Any]:
        """The keys of the messages at checkpoint ``cid`` (kept by :meth:`put`, else read
        from its messages value); empty for none."""
        if cid is None:
            return frozenset()
        with self._lock:
            kept = thread.said.get((ns, cid))
        if kept is not None:
            return kept
        content = thread.checkpoints.get((ns, cid))
        if content is None:
            return frozenset()
        version = self.serde.loads_typed(_untyped(content["checkpoint"]))["channel_versions"].get(_MESSAGES)
        stored = thread.values.get(_id("value", ns, _MESSAGES, version)) if version is not None else None
        if stored is None or stored["value"] is None:
            return frozenset()
        value = self.serde.loads_typed(_untyped(stored["value"]))
        if not isinstance(value, builtins.list):
            return frozenset()
        return frozenset(_key_of(m, i) for i, m in enumerate(value))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Keep a task's pending writes under their checkpoint (a write to a regular
        channel already kept is not kept twice; one to a special channel replaces it)."""
        thread_id = config["configurable"]["thread_id"]
        ns = config["configurable"].get("checkpoint_ns", "")
        cid = config["configurable"]["checkpoint_id"]
        sid, thread = self._thread(thread_id, create=True)
        assert sid is not None
        have, slot = thread.ids, thread.writes.get((ns, cid), {})
        checkpoint = _id("checkpoint", ns, cid)
        records: builtins.list[Message] = []
        for i, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, i)
            if idx >= 0 and (task_id, idx) in slot:
                continue
            content = {"ns": ns, "checkpoint": cid, "task": task_id, "idx": idx, "path": task_path,
                       "channel": channel, "value": _typed(self.serde.dumps_typed(value))}
            wid = _id("write", ns, cid, task_id, idx, thread.seen + len(records))
            records.append(Message(id=wid, parent_id=checkpoint if checkpoint in have else None,
                                   type="langgraph.write", role="write", timestamp=0, content=content))
        self._write(sid, records)

    def _write(self, sid: str, records: builtins.list[Message], *, head: str | None = None) -> None:
        """Add records (all or none, one sync), each timestamped now; ``head``: move the
        current branch's head there (a checkpoint's values and writes are its children,
        so the store's rule, that a child of the head advances it, would leave the head
        on the first value: the head follows the newest checkpoint instead)."""
        if records:
            now = int(time.time() * 1000)
            branches = () if head is None else (
                Branch(name=self.store.get_current_branch(sid), head_id=head, created_at=now, updated_at=now),)
            self.store.import_messages(sid, [Message(id=m.id, parent_id=m.parent_id, type=m.type, role=m.role,
                                                     content=m.content, timestamp=now) for m in records],
                                       branches=branches)

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's session: every checkpoint, value and write of it."""
        sid = self.store.resolve(self._key(thread_id), create=False)
        if sid is not None:
            try:
                self.store.delete_session(sid)
            except SessionNotFound:
                pass

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Take away every checkpoint whose metadata names one of ``run_ids`` (with its writes)."""
        runs = set(run_ids)
        if runs:
            self._remove(lambda thread, key: self.serde.loads_typed(
                _untyped(thread.checkpoints[key]["metadata"])).get("run_id") in runs, None)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep only each namespace's latest checkpoint; ``delete``: take every one away."""
        if strategy not in ("keep_latest", "delete"):
            raise InvalidInput(f"unknown prune strategy {strategy!r}: 'keep_latest' or 'delete'")

        def doomed(thread: _Thread, key: tuple[str, str]) -> bool:
            if strategy == "delete":
                return True
            return key[1] != max(c for n, c in thread.checkpoints if n == key[0])

        self._remove(doomed, [str(t) for t in thread_ids])

    def _thread_ids(self) -> builtins.list[str]:
        """Every thread the store holds (its index of keys read whole: O(sessions))."""
        return [unquote(k[len(self.key_prefix):]) for k in self.store.get_keys(self.key_prefix)]

    def _remove(self, doomed: Any, thread_ids: builtins.list[str] | None) -> None:
        if thread_ids is None:
            thread_ids = self._thread_ids()
        for thread_id in thread_ids:
            sid, thread = self._thread(thread_id)
            gone = [key for key in thread.checkpoints if doomed(thread, key)]
            if sid is not None and gone:
                self.store.append(sid, role="removed", type="langgraph.removed", parent_id=None,
                                  content={"checkpoints": [list(key) for key in gone]})

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, value and write of a thread to another (its tree as it is)."""
        source = self.store.resolve(self._key(source_thread_id), create=False)
        if source is None:
            return
        messages = self.store.get_messages(source)
        thread = _Thread().read_on(messages)
        live = {_id("checkpoint", ns, cid) for ns, cid in thread.checkpoints}
        kept = [m for m in messages if m.type != "langgraph.removed" and (
            m.type != "langgraph.checkpoint" or m.id in live) and (
            m.type != "langgraph.write" or (m.content["ns"], m.content["checkpoint"]) in thread.checkpoints)]
        target = self.store.resolve(self._key(target_thread_id))
        have = {m.id for m in self.store.get_messages(target)}
        ids = have | {m.id for m in kept}  # a parent taken away (pruned) makes its child a root
        self.store.import_messages(target, [m if m.parent_id is None or m.parent_id in ids else
                                            dataclasses.replace(m, parent_id=None)
                                            for m in kept if m.id not in have])

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A channel's next version: its number, then a random part. Two branches that
        reach the same step (a fork from an earlier checkpoint) write different
        versions, so that each keeps its own value (a value is kept once per version)."""
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(current.split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- async ---------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """:meth:`get_tuple` in a worker thread."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        """:meth:`list` in a worker thread."""
        found = await asyncio.to_thread(lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for item in found:
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        """:meth:`put` in a worker thread."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        """:meth:`put_writes` in a worker thread."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """:meth:`delete_thread` in a worker thread."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """:meth:`delete_for_runs` in a worker thread."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """:meth:`copy_thread` in a worker thread."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """:meth:`prune` in a worker thread."""
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)
