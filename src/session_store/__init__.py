"""session_store: durable, branchable conversation storage for LLM agents, in one file.

A *session* is a tree of messages: every message names its parent, so editing or
regenerating a turn makes a sibling instead of rewriting history. Each session has
named *branches* (pointers at messages) and a *current branch* whose head is where
the next message goes. A key -> session index (``"user:alice"`` -> session id) finds
sessions; owner-based *leases* keep concurrent workers from interleaving.

Quick start::

    from session_store import SessionStore

    with SessionStore(storage_dir="./sessions") as store:
        sid = store.resolve("user:alice")
        q = store.append(sid, role="user", content="Hello!")
        a = store.append(sid, role="assistant", content="Hi there!")
        store.get_linear_history(sid)          # [q, a]

:meth:`SessionStore.build_context` hands any path to OpenAI's or Anthropic's API,
whatever shape the records came in (OpenAI Chat or Responses, Anthropic, the
tutorial's); other formats plug in through :func:`register_context_reader` (the
optional ``session_store_transcripts`` module brings pi and Claude Code transcripts
in and out line for line).

Storage is append-only JSONL on a :class:`FileSystem`: :class:`RealFileSystem` (the
default; fsync'd, safe across threads and processes) or :class:`InMemoryFileSystem`
(for tests; per process). Standard library only, Python >= 3.10 (the one exception,
:func:`tiktoken_counter`, imports tiktoken when it is called). Vendor this one file.

Table of contents: ``grep -n '^# ===' session_store.py``.
"""

from __future__ import annotations

__all__ = [
    # errors
    "SessionStoreError",
    "InvalidInput",
    "InvalidKey",
    "InvalidMessage",
    "SessionNotFound",
    "MessageNotFound",
    "BranchNotFound",
    "BranchExists",
    "DuplicateMessage",
    "SessionLocked",
    "LeaseLost",
    "LockTimeout",
    "StorageError",
    "StoreClosed",
    # records
    "Message",
    "Branch",
    "SessionMetadata",
    "SearchHit",
    "PruneReport",
    "Event",
    "LockResult",
    "LockInfo",
    "Problem",
    "CheckReport",
    # storage
    "Storage",
    "Position",
    "IndexEntry",
    "Records",
    "JsonlStorage",
    "FileSystem",
    "RealFileSystem",
    "InMemoryFileSystem",
    # auto-reset
    "AutoResetConfig",
    "AutoResetManager",
    "ResetResult",
    "KEEP_STRATEGIES",
    "default_token_counter",
    "estimate_tokens",
    "tiktoken_counter",
    # search
    "message_text",
    "search_words",
    "record_words",
    "key_range",
    "query_words",
    # contexts
    "ContextReader",
    "register_context_reader",
    "read_turns",
    # the store
    "SessionStore",
    "tune_process",
    "AsyncSessionStore",
    "FORMAT_VERSION",
    "MAX_NESTING",
    # command line
    "draw_tree",
    "main",
]

from .async_store import AsyncSessionStore
from .auto_reset import (
    KEEP_STRATEGIES,
    AutoResetConfig,
    AutoResetManager,
    ResetResult,
    default_token_counter,
    estimate_tokens,
    tiktoken_counter,
)
from .catalog import SessionStore
from .command_line import draw_tree, main
from .contexts import ContextReader, read_turns, register_context_reader
from .errors import (
    BranchExists,
    BranchNotFound,
    DuplicateMessage,
    InvalidInput,
    InvalidKey,
    InvalidMessage,
    LeaseLost,
    LockTimeout,
    MessageNotFound,
    SessionLocked,
    SessionNotFound,
    SessionStoreError,
    StorageError,
    StoreClosed,
)
from .file_systems import FileSystem, InMemoryFileSystem
from .jsonl_storage import JsonlStorage
from .real_file_system import RealFileSystem
from .records import (
    FORMAT_VERSION,
    Branch,
    CheckReport,
    Event,
    LockInfo,
    LockResult,
    Message,
    Problem,
    PruneReport,
    SearchHit,
    SessionMetadata,
)
from .records import __version__ as __version__  # not in __all__: a package's version is asked for by name
from .searching import key_range, message_text, query_words, record_words, search_words
from .storage import IndexEntry, Position, Records, Storage
from .tuning import tune_process
from .validation import MAX_NESTING
