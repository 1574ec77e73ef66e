"""session_store_view: see a session's tree in a browser, as one file or served read-only.

Two ways to look at conversations kept by :mod:`session_store`::

    from session_store import SessionStore
    from session_store_view import make_server, render_session

    with SessionStore(storage_dir="./sessions") as store:
        sid = store.resolve("user:alice")
        with open("alice.html", "w", encoding="utf-8") as f:
            f.write(render_session(store, sid))     # one self-contained page
        make_server(store, port=8000).serve_forever()   # http://127.0.0.1:8000/, read-only

or from the command line: ``session-store view SESSION -o page.html`` and
``session-store serve [--dir DIR] [--port N] [--host H]``.

The page shows the current path as a conversation: each message's role and text, the
text of every role but the user's rendered as Markdown (headings, emphasis, lists,
quotes, tables, links, inline code and fenced code blocks, the code highlighted); long
texts, long tool results and thinking folded. Each tool call is one card holding its
arguments and the result it got on that path (short results shown, long ones folded),
or saying it got none; a message that only carried results is not shown again. At every
branch point a switcher (``< 2 / 3 >``) shows another sibling in place; branch heads
and the current head are marked; a jump list reaches every branch and leaf (Claude
Code subagent sidechains included) and a minimap of the whole tree jumps anywhere.
Reset markers, pi compactions and branch summaries, and Claude Code compact
boundaries are dividers carrying their summary. What a reader rarely needs is out of
the way, in the tooltip of each message's time (its link): the full time, the id, the
size of its stored record in bytes and an estimate of its tokens
(:func:`session_store.estimate_tokens`, labelled as an estimate); the path's totals
and the lease holder are in the header.

Everything from a session is data. The page has no network access and no external
assets: the session is embedded as JSON in a ``<script type="application/json">``
(with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, so no content can close the
element), read with ``JSON.parse`` and put on the page as DOM nodes built by the
script, every string as a text node (``textContent``), never parsed as HTML: Markdown
is read by the script's own small parser, and a link keeps its address only when it is
``http:``, ``https:`` or ``mailto:`` (otherwise it stays text); a
Content-Security-Policy allows the page's one script (by hash) and nothing else (the
server's pages may also submit their search form to the server itself).
The server answers GET and HEAD on ``/`` (the sessions, newest first, with their titles
and first messages, and a search box), ``/search?q=...`` (:meth:`SessionStore.search`:
each hit links to its message in its session) and ``/session/<id>`` only, checks the
Host header when it listens on a loopback address (against DNS rebinding), and only
reads the store: it renders each request afresh, so a session that grew shows its new
messages on reload. The query a search page echoes is data like the rest.

Standard library only, beside ``session_store``; the core's command line imports this
file only when ``view`` or ``serve`` runs.
"""

from __future__ import annotations

__all__ = ["render_session", "render_index", "render_search", "ViewServer", "make_server", "cli", "INDEX_LIMIT",
           "SEARCH_LIMIT", "QUERY_CHARS"]

import argparse
import base64
import hashlib
import http.server
import ipaddress
import json
import re
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from session_store import Message, SessionNotFound, SessionStore, SessionStoreError, estimate_tokens, read_turns

# ============================================================================
# Reading messages for display
# ============================================================================
#
# Each message becomes a small JSON object for the page's script (short keys: the
# page of a 1,000-message session carries a thousand of them):
#
#   i id, p index of the parent (-1: a root), r role, y type, t timestamp (ms),
#   b size of the stored record (bytes of its JSON line), k estimated tokens
#   (session_store.estimate_tokens: characters / 4 + framing, not a tokenizer's count),
#   c parts: ["t", text] | ["th", thinking] | ["img", label, data URL or ""] |
#            ["call", call id, tool name, arguments as text] |
#            ["res", call id, text, 1 if an error else 0, tool name] | ["j", JSON text]
#   and, when they apply: d [divider kind, detail] (reset, compaction, ...), n a note
#   (a one-line entry such as a model change), x the model, e an error message, sc the
#   agent id of a sidechain, ag the agent a result comes from, cs 1 for a compact
#   summary, rf the index of the message a reset copied, lp the index of the message a
#   Claude Code compact boundary continues from (its logicalParentUuid), bk 1 for a
#   framework's bookkeeping (a LangGraph channel value or pending write: a child of its
#   checkpoint that the page keeps out of the tree's branches, leaves and minimap).
#
# This is display parsing, not the API's: it keeps what a reader wants to see
# (model, errors, agents) and shows any shape it does not know as JSON text.

_IMAGE_DATA_MAX = 2_000_000  # bytes of base64 shown inline; bigger images are named, not embedded
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_BASE64_RE = re.compile(r"[A-Za-z0-9+/\s]*={0,2}\s*")
_TEXT_KINDS = frozenset({"text", "input_text", "output_text", "summary_text"})


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=repr)


def _arguments_text(arguments: Any) -> str:
    """Tool-call arguments as readable text: JSON pretty-printed (also when given as a JSON string)."""
    if isinstance(arguments, str):
        try:
            return _json_text(json.loads(arguments))
        except ValueError:
            return arguments
    return "" if arguments is None else _json_text(arguments)


def _kind(block: Mapping[str, Any]) -> str | None:
    """A block's ``type`` when it is a string (content is any JSON: a list or an object
    there names no type, and cannot be looked up in a set)."""
    kind = block.get("type")
    return kind if isinstance(kind, str) else None


def _image_part(block: Mapping[str, Any]) -> list[Any]:
    """An image as ``["img", label, data URL]``; the URL is empty unless it is a base64
    PNG, JPEG, GIF or WebP small enough to embed (never a link: the page loads nothing)."""
    media: Any = None
    data: Any = None
    url: Any = None
    source = block.get("source")
    if isinstance(source, dict):
        media, data, url = source.get("media_type"), source.get("data"), source.get("url")
    elif isinstance(block.get("data"), str):
        media, data = block.get("mimeType") or block.get("media_type"), block["data"]
    else:
        url = block.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
    if isinstance(url, str):
        found = re.fullmatch(r"data:([\w.+/-]+);base64,(.*)", url, re.S)
        if not found:
            return ["img", f"image at {url}", ""]
        media, data = found[1], found[2]
    if not isinstance(data, str):
        return ["j", _json_text(block)]
    label = f"image ({media}, {len(data) * 3 // 4:,} bytes)"
    if isinstance(media, str) and media in _IMAGE_TYPES and len(data) <= _IMAGE_DATA_MAX \
            and _BASE64_RE.fullmatch(data):
        return ["img", label, f"data:{media};base64,{''.join(data.split())}"]
    return ["img", label, ""]


def _result_text(content: Any) -> str:
    """A tool result's content as text: strings and text blocks joined, images named."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return _json_text(content)
    pieces = []
    for block in content:
        if isinstance(block, str):
            pieces.append(block)
        elif isinstance(block, dict) and _kind(block) in _TEXT_KINDS and isinstance(block.get("text"), str):
            pieces.append(block["text"])
        elif isinstance(block, dict) and _kind(block) in ("image", "input_image"):
            pieces.append(f"[{_image_part(block)[1]}]")
        else:
            pieces.append(_json_text(block))
    return "\n".join(pieces)


def _block_parts(block: Any) -> list[list[Any]]:
    """The parts of one content block (Anthropic, OpenAI chat or Responses, pi)."""
    if isinstance(block, str):
        return [["t", block]] if block else []
    if not isinstance(block, dict):
        return [["j", _json_text(block)]]
    kind = _kind(block)
    if kind in _TEXT_KINDS and isinstance(block.get("text"), str):
        return [["t", block["text"]]]
    if kind == "refusal" and isinstance(block.get("refusal"), str):
        return [["t", block["refusal"]]]
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return [["th", block["thinking"]]]
    if kind == "redacted_thinking":
        return [["th", "(redacted thinking)"]]
    if kind == "reasoning":  # OpenAI Responses: a summary of the reasoning, when there is one
        summary = block.get("summary")
        text = _result_text(summary) if isinstance(summary, list) else ""
        return [["th", text or "(reasoning)"]]
    if kind in ("image", "image_url", "input_image"):
        return [_image_part(block)]
    if kind in ("tool_use", "server_tool_use", "toolCall"):
        arguments = block.get("input", block.get("arguments"))
        return [["call", str(block.get("id") or ""), str(block.get("name") or ""), _arguments_text(arguments)]]
    if kind == "function_call":  # OpenAI Responses
        return [["call", str(block.get("call_id") or block.get("id") or ""), str(block.get("name") or ""),
                 _arguments_text(block.get("arguments"))]]
    if kind in ("tool_result", "web_search_tool_result"):
        return [["res", str(block.get("tool_use_id") or ""), _result_text(block.get("content")),
                 1 if block.get("is_error") is True else 0, ""]]
    if kind == "function_call_output":  # OpenAI Responses
        return [["res", str(block.get("call_id") or ""), _result_text(block.get("output")), 0, ""]]
    if kind == "message" and "content" in block:  # an OpenAI Responses message item
        return _content_parts(block["content"])
    return [["j", _json_text(block)]]


def _content_parts(content: Any) -> list[list[Any]]:
    """The parts of a message's content: a string, a list of blocks, or one block / item."""
    if content is None:
        return []
    if isinstance(content, str):
        return [["t", content]] if content else []
    if isinstance(content, list):
        return [part for block in content for part in _block_parts(block)]
    return _block_parts(content)


def _declared_calls(fields: Mapping[str, Any]) -> list[list[Any]]:
    """OpenAI chat's ``tool_calls`` (and the legacy ``function_call``), and the tutorial's
    ``{id, name, params}`` calls, given beside the content."""
    calls = fields.get("tool_calls")
    declared = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    legacy = fields.get("function_call")
    if isinstance(legacy, dict):
        declared.append({"function": legacy})
    parts = []
    for call in declared:
        function = call.get("function")
        source = function if isinstance(function, dict) else call
        arguments = source.get("arguments", source.get("input", source.get("params")))
        parts.append(["call", str(call.get("id") or ""), str(source.get("name") or ""), _arguments_text(arguments)])
    return parts


def _imported_line(m: Message, dialect: str) -> dict[str, Any] | None:
    """The rest of an imported pi / Claude Code line (``fields["pi"]`` etc.), or ``None``."""
    rest = m.fields.get(dialect)
    return rest if isinstance(rest, dict) and m.type.startswith(dialect + ".") else None


def _pi_view(m: Message, line: Mapping[str, Any], shown: dict[str, Any]) -> None:
    """What a reader sees of a pi entry (``type`` ``pi.<entry type>``)."""
    kind = m.type[3:]
    if kind == "message":
        message = line.get("message")
        message = message if isinstance(message, dict) else {}
        if isinstance(message.get("model"), str):
            shown["x"] = message["model"]
        if isinstance(message.get("errorMessage"), str):
            shown["e"] = message["errorMessage"]
        if m.role == "toolResult":
            name = message.get("toolName")
            shown["c"] = [["res", str(message.get("toolCallId") or ""), _result_text(m.content),
                           1 if message.get("isError") is True else 0, name if isinstance(name, str) else ""]]
        elif m.role == "bashExecution":
            shown["c"] = [["call", "", "bash", str(message.get("command", ""))],
                          ["res", "", str(message.get("output") or "(no output)"),
                           0 if message.get("exitCode") in (None, 0) else 1, "bash"]]
        return
    if kind == "compaction":
        tokens = line.get("tokensBefore")
        shown["d"] = ["compaction", f"{tokens:,} tokens before" if isinstance(tokens, int) else ""]
    elif kind == "branch_summary":
        shown["d"] = ["branch summary", ""]
    elif kind == "session":
        shown["n"] = " · ".join(str(line[k]) for k in ("cwd", "provider", "modelId") if line.get(k))
    elif kind == "model_change":
        shown["n"] = "/".join(str(line[k]) for k in ("provider", "modelId") if line.get(k))
    elif kind == "thinking_level_change":
        shown["n"] = str(line.get("thinkingLevel", ""))
    elif kind == "session_info":
        shown["n"] = str(line.get("name", ""))
    elif kind == "label":
        shown["n"] = f"{line.get('label')!s} on {line.get('targetId')!s}"
    elif kind == "custom_message":
        shown["x"] = str(line.get("customType", ""))
    else:  # custom entries and whatever pi adds later: the line as JSON
        shown["n"] = str(line.get("customType", ""))
        shown["c"] = [["j", _json_text({k: v for k, v in line.items() if k not in ("parentId", "timestamp")})]]


def _claude_view(m: Message, line: Mapping[str, Any], shown: dict[str, Any], index: Mapping[str, int]) -> None:
    """What a reader sees of a Claude Code line (``type`` ``claude_code.<type>``)."""
    kind = m.type[len("claude_code."):]
    if line.get("isSidechain") is True:
        shown["sc"] = str(line.get("agentId") or "sidechain")
    message = line.get("message")
    if isinstance(message, dict) and isinstance(message.get("model"), str):
        shown["x"] = message["model"]
    used = line.get("toolUseResult")
    if isinstance(used, dict) and isinstance(used.get("agentId"), str):
        shown["ag"] = used["agentId"]
    if line.get("isCompactSummary") is True:
        shown["cs"] = 1
    if kind == "system":
        subtype = line.get("subtype")
        if subtype == "compact_boundary":
            about = line.get("compactMetadata")
            about = about if isinstance(about, dict) else {}
            detail = [str(about["trigger"]) if about.get("trigger") else "",
                      f"{about['preTokens']:,} tokens before" if isinstance(about.get("preTokens"), int) else ""]
            shown["d"] = ["compacted", ", ".join(d for d in detail if d)]
            before = line.get("logicalParentUuid")
            if isinstance(before, str) and before in index:
                shown["lp"] = index[before]
        else:
            shown["n"] = str(subtype or "system")
    elif kind == "summary":
        shown["n"] = "summary"
    elif kind not in ("user", "assistant"):
        shown["n"] = kind
        if not shown["c"]:
            shown["c"] = [["j", _json_text({k: v for k, v in line.items() if k != "parentUuid"})]]


def _message_view(m: Message, index: Mapping[str, int]) -> dict[str, Any]:
    """The page's object for one message (keys in the banner above)."""
    record = m.to_record()
    shown: dict[str, Any] = {
        "i": m.id, "p": index.get(m.parent_id, -1) if m.parent_id is not None else -1, "r": m.role, "y": m.type,
        "t": m.timestamp, "b": len(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()) + 1,
        "k": estimate_tokens(m), "c": _content_parts(m.content),
    }
    fields = m.fields
    pi, claude = _imported_line(m, "pi"), _imported_line(m, "claude_code")
    if pi is not None:
        _pi_view(m, pi, shown)
    elif claude is not None:
        _claude_view(m, claude, shown, index)
    elif m.type in ("pi", "claude_code"):  # a line that could not be a node, kept as it was
        shown["n"] = "a line kept as it was"
        shown["c"] = [["j", _json_text(fields.get(m.type + "_line"))]]
    elif m.type == "reset":
        reason = fields.get("reason")
        shown["d"] = ["reset", str(reason) if reason else ""]
    elif m.type.startswith("langgraph.") and isinstance(m.content, dict):
        if not (m.type == "langgraph.checkpoint" and _read_as_turns(m, shown)):  # the messages it added
            _langgraph_view(m.type[len("langgraph."):], m.content, shown)
        if m.type in ("langgraph.value", "langgraph.write"):
            shown["bk"] = 1  # a child of its checkpoint, beside the next one: not a branch of the conversation
    elif isinstance(m.content, dict) and _read_as_turns(m, shown):
        pass  # a framework's message held whole (LangChain, pydantic-ai, LlamaIndex, a Responses item)
    else:
        shown["c"] += _declared_calls(fields)
        if m.role == "tool" or m.type in ("tool_result", "function_call_output"):
            call_id = fields.get("tool_call_id", fields.get("call_id"))
            name = fields.get("name")
            output = fields.get("output", m.content)
            shown["c"] = [["res", str(call_id or ""), _result_text(output), 1 if fields.get("is_error") is True else 0,
                           name if isinstance(name, str) else ""]]
        if isinstance(fields.get("model"), str):
            shown["x"] = fields["model"]
    copied = fields.get("reset_from")
    if isinstance(copied, str) and copied in index:
        shown["rf"] = index[copied]
    if not shown["c"] and "n" not in shown and "d" not in shown and m.content not in (None, "", [], {}):
        shown["c"] = [["j", _json_text(m.content)]]
    return shown


def _langgraph_view(kind: str, record: Mapping[str, Any], shown: dict[str, Any]) -> None:
    """A LangGraph checkpointer's record (session_store_langgraph) as a one-line note:
    its channel values, pending writes and checkpoints that added no message hold
    LangGraph's serializer's bytes (msgpack), which this file does not decode; they
    are named and sized. (A checkpoint that added messages shows them: the reader
    session_store_langgraph registers decodes them.)"""
    def value(v: Any) -> str:
        if not isinstance(v, dict) or v.get("t") in (None, "null"):
            return "empty"
        data = v.get("b")
        return f"{v.get('t')!s}, {len(data) * 3 // 4:,} bytes" if isinstance(data, str) else str(v.get("t"))
    where = f" in {record['ns']}" if isinstance(record.get("ns"), str) and record["ns"] else ""
    if kind == "checkpoint":
        shown["n"] = f"{str(record.get('id', ''))[:13]}{where}"
    elif kind == "value":
        shown["n"] = f"{record.get('channel')!s}{where} ({value(record.get('value'))})"
    elif kind == "write":
        shown["n"] = f"to {record.get('channel')!s}{where} by task {str(record.get('task', ''))[:8]} " \
                     f"({value(record.get('value'))})"
    else:
        shown["n"] = kind
        shown["c"] = [["j", _json_text(record)]]
        return
    shown["c"] = []


def _read_as_turns(m: Message, shown: dict[str, Any]) -> bool:
    """Show a record held as an object the way :meth:`SessionStore.build_context` reads
    it (:func:`session_store.read_turns`: the framework's registered reader, or the
    Responses item): its text, each tool call, each result with its call's id (so a
    call finds its result on the path). ``False`` when it reads as nothing."""
    turns = read_turns(m)
    if not turns:
        return False
    parts: list[list[Any]] = []
    for t in turns:
        if t.role == "tool":
            name = t.fields.get("name")
            parts.append(["res", str(t.fields.get("tool_call_id") or ""), _result_text(t.content),
                          1 if t.fields.get("is_error") is True else 0, name if isinstance(name, str) else ""])
        else:
            parts += _content_parts(t.content)
    shown["c"], shown["r"] = parts, turns[-1].role if len({t.role for t in turns}) == 1 else m.role
    shown["k"] = sum(estimate_tokens(t) for t in turns)  # what the model reads, not the framework's JSON
    return True


# ============================================================================
# Pages
# ============================================================================

_CSS = """
:root { --bg: #f6f7f9; --card: #fff; --ink: #1d2330; --dim: #667085; --line: #e3e6ea; --accent: #2d6cdf;
  --user: #e8f0fe; --tool: #f3f4f6; --system: #fff7e6; --warn: #b42318; --side: #f5f0ff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, sans-serif; }
button { font: inherit; cursor: pointer; }
code, pre, .mono { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
header.top { position: sticky; top: 0; z-index: 3; background: #fff; border-bottom: 1px solid var(--line);
  padding: 8px 16px; display: flex; flex-wrap: wrap; gap: 4px 18px; align-items: baseline; }
header.top h1 { font-size: 16px; margin: 0; overflow-wrap: anywhere; }
header.top .facts { color: var(--dim); font-size: 12.5px; display: flex; flex-wrap: wrap; gap: 2px 14px; }
header.top a.back { color: var(--accent); text-decoration: none; }
.layout { display: grid; grid-template-columns: 250px minmax(0, 1fr) 84px; gap: 0 18px; }
nav.jump { position: sticky; top: 46px; align-self: start; max-height: calc(100vh - 46px); overflow: auto;
  padding: 12px 0 24px 12px; font-size: 12.5px; }
nav.jump h2 { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--dim);
  margin: 14px 0 4px; }
nav.jump button { display: block; width: 100%; text-align: left; border: 0; background: none; padding: 3px 6px;
  border-radius: 5px; color: var(--ink); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
nav.jump button:hover { background: #e9edf3; }
nav.jump button.on { background: #dfe8fb; }
nav.jump .when { color: var(--dim); }
main { padding: 12px 0 40vh; min-width: 0; }
.msg { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin: 0 0 10px;
  padding: 8px 12px 10px; max-width: 920px; }
.msg.role-user { background: var(--user); }
.msg.role-tool, .msg.role-toolResult { background: var(--tool); }
.msg.role-system { background: var(--system); }
.msg.sidechain { border-left: 4px solid #9b7be0; }
.msg.flash { outline: 3px solid #f5b400; }
.msg > .head { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; font-size: 12px; color: var(--dim); }
.msg .role { font-weight: 600; color: var(--ink); text-transform: capitalize; }
.msg .model { color: var(--dim); }
a.id { color: var(--dim); text-decoration: none; font-variant-numeric: tabular-nums; }
.head a.meta { margin-left: auto; }
a.id:hover { text-decoration: underline; }
.merged { display: none; }
/* Rows off screen are neither laid out nor painted: a 1,000-message path opens quickly. */
main > article, main > .note, main > .divider { content-visibility: auto; contain-intrinsic-size: auto 90px; }
.badge { border-radius: 9px; padding: 0 7px; font-size: 11.5px; background: #e4e7ec; color: #344054; }
.badge.branch { background: #d1fadf; color: #05603a; }
.badge.current { background: #12b76a; color: #fff; }
.badge.head { background: #1d2330; color: #fff; }
.badge.agent { background: #ebe4ff; color: #5b3cc4; }
.badge.err { background: #fee4e2; color: var(--warn); }
.switch { display: inline-flex; align-items: center; gap: 2px; background: #fff; border: 1px solid var(--line);
  border-radius: 12px; padding: 0 2px; color: var(--ink); }
.switch button { border: 0; background: none; padding: 0 6px; font-size: 15px; line-height: 18px; border-radius: 9px; }
.switch button:hover:not(:disabled) { background: #e9edf3; }
.switch button:disabled { color: #c0c5cc; cursor: default; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin-top: 6px; }
.text.args { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
button.more, .fold > button { border: 0; background: none; color: var(--accent); padding: 2px 0; font-size: 12.5px; }
.fold { margin-top: 4px; }
.fold > pre, .fold > .text { margin: 4px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; max-height: 480px; overflow: auto; }
.fold.thinking > button { color: #7a5af8; }
.fold.error > button { color: var(--warn); }
.call { border: 1px solid #d0d5dd; border-radius: 8px; margin-top: 8px; padding: 6px 10px; background: #fbfcfe; }
.call .call-head { font-size: 12.5px; }
.call .call-name { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }
.call .call-id { color: var(--dim); margin-left: 8px; font-size: 11.5px; }
.call .no-result { color: var(--warn); font-size: 12.5px; margin-top: 4px; }
.call .args { color: #344054; }
.result.inline { margin-top: 6px; }
.result.inline .result-label { font-size: 12px; color: var(--dim); }
.result.inline pre { margin: 2px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; }
.result.inline.error pre { border-color: #fda29b; color: var(--warn); }
.text.md { white-space: normal; }
.md > :first-child { margin-top: 0; }
.md > :last-child { margin-bottom: 0; }
.md p { margin: 0 0 .6em; white-space: pre-wrap; }
.md h1, .md h2, .md h3, .md h4, .md h5, .md h6 { margin: .9em 0 .4em; line-height: 1.25; }
.md h1 { font-size: 1.35em; } .md h2 { font-size: 1.2em; } .md h3 { font-size: 1.08em; }
.md h4, .md h5, .md h6 { font-size: 1em; }
.md ul, .md ol { margin: 0 0 .6em; padding-left: 1.6em; }
.md li > p { margin: 0 0 .3em; }
.md blockquote { margin: 0 0 .6em; padding: 0 0 0 10px; border-left: 3px solid #d0d5dd; color: #475467; }
.md hr { border: 0; border-top: 1px solid var(--line); margin: .8em 0; }
.md code { background: #eef1f4; border-radius: 4px; padding: 0 4px; }
.md pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; margin: 0 0 .6em;
  overflow: auto; white-space: pre; }
.md pre code { background: none; padding: 0; }
.md table { border-collapse: collapse; margin: 0 0 .6em; display: block; overflow: auto; }
.md th, .md td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; }
.md a { color: var(--accent); }
.hl-k { color: #8250df; } .hl-s { color: #0a3069; } .hl-c { color: #6e7781; font-style: italic; }
.hl-n { color: #0550ae; }
button.link { border: 0; background: none; color: var(--accent); padding: 2px 0; font-size: 12.5px; }
.note { color: var(--dim); font-size: 12.5px; margin: 0 0 10px; padding: 2px 12px; max-width: 920px; }
.note .head { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; }
.note .kind { font-weight: 600; }
.divider { margin: 18px 0; max-width: 920px; }
.divider .rule { display: flex; align-items: center; gap: 10px; color: #9a3412; font-weight: 600; font-size: 13px; }
.divider .rule::before, .divider .rule::after { content: ""; flex: 1; border-top: 2px dashed #f4a261; }
.divider .head { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; justify-content: center;
  font-size: 12px; color: var(--dim); }
.divider .summary { background: #fff7ed; border: 1px solid #fed7aa; border-radius: 8px; padding: 4px 12px 8px;
  margin-top: 6px; }
img.shown { max-width: 100%; max-height: 360px; margin-top: 6px; border-radius: 6px; display: block; }
.empty { color: var(--dim); padding: 40px; }
aside.minimap { position: sticky; top: 46px; align-self: start; height: calc(100vh - 46px); padding: 8px 8px 8px 0; }
aside.minimap canvas { width: 100%; height: 100%; display: block; cursor: pointer; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; }
table.sessions { border-collapse: collapse; width: 100%; max-width: 1100px; background: #fff; }
table.sessions th, table.sessions td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
table.sessions th { font-size: 12px; color: var(--dim); font-weight: 600; }
table.sessions td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sessions a { color: var(--accent); text-decoration: none; font-weight: 600; overflow-wrap: anywhere; }
.index { padding: 16px; }
.index input { font: inherit; padding: 6px 10px; width: 320px; max-width: 100%; border: 1px solid #d0d5dd;
  border-radius: 8px; margin: 0 12px 12px 0; }
.index form { margin: 0 0 12px; }
.index form button { font: inherit; padding: 6px 12px; border: 1px solid #d0d5dd; border-radius: 8px;
  background: #fff; }
.index a.back { color: var(--accent); text-decoration: none; }
table.sessions .preview { color: var(--dim); font-size: 12.5px; overflow-wrap: anywhere; }
table.sessions td.key { color: var(--dim); overflow-wrap: anywhere; }
table.sessions td.when { white-space: nowrap; color: var(--dim); }
ol.hits { list-style: none; padding: 0; max-width: 1100px; }
ol.hits li { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 8px 12px; margin: 0 0 8px; }
ol.hits a { color: var(--accent); text-decoration: none; font-weight: 600; overflow-wrap: anywhere; }
ol.hits .head { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: baseline; font-size: 12.5px;
  color: var(--dim); }
ol.hits .snippet { margin-top: 4px; white-space: pre-wrap; overflow-wrap: anywhere; }
.badge.archived { background: #fff1e6; color: #9a3412; }
@media (max-width: 900px) { .layout { grid-template-columns: minmax(0, 1fr) 60px; } nav.jump { display: none; } }
"""

# Each page has one script: these helpers, then the page's own part. Every string
# from the session goes through textContent (or a property such as title, an <img>
# src already checked to be a data: image, or a Markdown link's href checked to be
# http(s) or mailto); nothing is parsed as HTML or evaluated. The Markdown reader and
# the code highlighter build elements and text nodes, never markup.
_SHARED_JS = r"""
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function on(e, type, fn) { e.addEventListener(type, fn); return e; }
  const pad = n => String(n).padStart(2, "0");
  function when(ms) {
    const d = new Date(ms);
    if (isNaN(d.getTime())) return "";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:` +
      `${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const count = n => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");  // toLocaleString is slow
  const rendered = () => { document.documentElement.dataset.renderedMs = String(Math.round(performance.now())); };
"""


def _script(own: str) -> str:
    return f'"use strict";\n(() => {{{_SHARED_JS}{own}}})();\n'


_VIEW_JS = _script(r"""
  const D = JSON.parse(document.getElementById("session-data").textContent);
  const M = D.m, N = M.length, S = D.session;
  const FOLD_CHARS = 1600, FOLD_LINES = 24, SHORT_LINES = 12;  // a longer text shows its start and "show all"
  const MD_FOLD_CHARS = 4000, MD_FOLD_LINES = 60, MD_SHORT_LINES = 30;  // the same for Markdown
  const SHORT_RESULT_CHARS = 600, SHORT_RESULT_LINES = 8;  // a shorter tool result is shown, a longer one folded
  const kids = M.map(() => []), roots = [];
  // A framework's bookkeeping (bk: a LangGraph value or write) is no branch of the tree, unless it is the head.
  M.forEach((m, i) => { if (!m.bk || i === D.head) (m.p < 0 ? roots : kids[m.p]).push(i); });
  const byId = new Map(M.map((m, i) => [m.i, i]));
  const branchesAt = new Map();
  for (const b of D.branches) {
    if (b.h < 0) continue;
    if (!branchesAt.has(b.h)) branchesAt.set(b.h, []);
    branchesAt.get(b.h).push(b.name);
  }
  const sidechainRoot = new Map();
  roots.forEach(i => { if (M[i].sc && !sidechainRoot.has(M[i].sc)) sidechainRoot.set(M[i].sc, i); });
  // A reset starts a new root: its marker, then copies of kept messages ("rf": the
  // original); the last original copied is where the conversation stood before. A
  // Claude Code compact boundary is a root too, naming what it continues ("lp").
  const before = new Map(), after = new Map();
  roots.forEach(i => {
    if (!M[i].d) return;
    let from = M[i].lp !== undefined ? M[i].lp : -1;
    for (let j = i; kids[j].length && M[kids[j][0]].rf !== undefined; j = kids[j][0]) from = M[kids[j][0]].rf;
    if (from >= 0) { before.set(i, from); after.set(from, i); }
  });
  const choice = new Map();  // parent index (-1: the roots) -> the child shown below it
  let rows = new Map(), onPath = new Set();

  // ---- small helpers ---------------------------------------------------------
  const encoder = new TextEncoder();
  const utf8 = text => encoder.encode(text).length;
  function bytes(n) {
    return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
  }
  const plural = (n, one, many) => `${count(n)} ${n === 1 ? one : many}`;
  function lineCount(s) { let n = 1, at = -1; while ((at = s.indexOf("\n", at + 1)) >= 0) n++; return n; }
  function firstLines(s, n, chars) {
    let at = -1;
    for (let k = 0; k < n; k++) {
      const next = s.indexOf("\n", at + 1);
      if (next < 0) { at = s.length; break; }
      at = next;
    }
    return s.slice(0, Math.min(at < 0 ? s.length : at, chars));
  }
  function snippet(i) {
    const m = M[i];
    if (m.d) return `${m.d[0]}`;
    for (const c of m.c) {
      if ((c[0] === "t" || c[0] === "th") && c[1].trim()) {  // its first line, without Markdown's marks
        return c[1].trim().split("\n")[0].replace(/^(#{1,6}|>|[-*+]|\d+[.)])\s+/, "").replace(/\*\*|__|`/g, "")
          .slice(0, 90);
      }
      if (c[0] === "call") return `${c[2]}(…)`;
      if (c[0] === "res") return `result: ${c[2].trim().split("\n")[0].slice(0, 80)}`;
    }
    return m.n || m.y;
  }
  const siblings = i => (M[i].p < 0 ? roots : kids[M[i].p]);
  function choose(i) { for (let j = i; j >= 0; j = M[j].p) choice.set(M[j].p, j); }
  function shownPath() {
    const out = [];
    let list = roots, key = -1;
    while (list.length) {
      const c = choice.has(key) ? choice.get(key) : list[list.length - 1];
      out.push(c); key = c; list = kids[c];
    }
    return out;
  }
  function leafBelow(i) {
    while (kids[i].length) i = choice.has(i) ? choice.get(i) : kids[i][kids[i].length - 1];
    return i;
  }

  // ---- folds ---------------------------------------------------------------
  // A text as "plain" text, "md" (Markdown) or "json" (highlighted); a long one shows
  // its first lines and a button for the rest.
  function textBlock(text, cls, as) {
    const box = el("div", "text" + (as === "md" ? " md" : "") + (cls ? " " + cls : ""));
    const fill = (into, value) => {
      if (as === "md") markdown(value, into); else if (as === "json") highlight(value, "json", into);
      else into.textContent = value;
    };
    const lines = lineCount(text), md = as === "md";
    if (text.length <= (md ? MD_FOLD_CHARS : FOLD_CHARS) && lines <= (md ? MD_FOLD_LINES : FOLD_LINES)) {
      fill(box, text);
      return box;
    }
    const short = firstLines(text, md ? MD_SHORT_LINES : SHORT_LINES, (md ? MD_FOLD_CHARS : FOLD_CHARS) / 2) + " …";
    const body = el(md ? "div" : "span");
    fill(body, short);
    const label = `show all (${plural(lines, "line", "lines")})`;
    const more = el("button", "more", label);
    more.title = bytes(utf8(text));
    let open = false;
    on(more, "click", () => {
      open = !open;
      body.replaceChildren();
      fill(body, open ? text : short);
      more.textContent = open ? "show less" : label;
    });
    box.append(body, md ? "" : el("br"), more);
    return box;
  }
  // A closed section whose content is only built when it is first opened.
  function fold(label, cls, make) {
    const box = el("div", "fold" + (cls ? " " + cls : ""));
    const toggle = el("button", "fold-toggle", "▸ " + label);
    toggle.setAttribute("aria-expanded", "false");
    let body = null;
    on(toggle, "click", () => {
      if (body === null) { body = make(); box.append(body); } else body.hidden = !body.hidden;
      toggle.textContent = (body.hidden ? "▸ " : "▾ ") + label;
      toggle.setAttribute("aria-expanded", String(!body.hidden));
    });
    box.append(toggle);
    return box;
  }
  // A tool result: shown when short, else folded under a button saying how long it is.
  function resultView(part, what, from) {
    const text = part[2], lines = lineCount(text);
    let box;
    if (text.length <= SHORT_RESULT_CHARS && lines <= SHORT_RESULT_LINES) {
      box = el("div", "result inline" + (part[3] ? " error" : ""));
      box.append(el("div", "result-label", what + (part[3] ? " · error" : "")),
                 el("pre", "result-text", text || "(empty)"));
    } else {
      const label = `${what} · ${plural(lines, "line", "lines")}` + (part[3] ? " · error" : "");
      box = fold(label, "result" + (part[3] ? " error" : ""), () => el("pre", "result-text", text));
    }
    box.title = `${bytes(utf8(text))} · ${from}`;
    return box;
  }

  // ---- Markdown, built as DOM nodes ------------------------------------------------
  // A small subset, as chat products render it: headings, paragraphs (line breaks
  // kept), emphasis, strikethrough, inline code, fenced and indented code (highlighted
  // when it names its language), lists, quotes, rules, tables and links. Every piece of
  // text becomes a text node; the one attribute taken from content is a link's address,
  // and only an http(s) or mailto one: any other link stays the text it was written as.
  const SAFE_HREF = /^(https?|mailto):/i;
  const INLINE = new RegExp([
    /\\([!-\/:-@\[-`{-~])/.source,                               // 1: a backslash escape
    /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source,                   // 2, 3: code
    /\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)/.source,  // 4, 5: strong
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source,  // 6, 7: emphasis
    /~~(?=\S)([\s\S]*?\S)~~/.source,                               // 8: strikethrough
    /\[([^\]\n]+)\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+"[^"\n]*")?\s*\)/.source,  // 9, 10: link
  ].join("|"), "g");
  function inline(text, into) {
    let at = 0, found;
    INLINE.lastIndex = 0;
    const pieces = [];
    while ((found = INLINE.exec(text)) !== null) pieces.push([found.index, found[0].length, [...found]]);
    for (const [index, length, g] of pieces) {
      if (index > at) into.append(text.slice(at, index));
      if (g[1] !== undefined) into.append(g[1]);
      else if (g[3] !== undefined) into.append(el("code", "", g[3].replace(/^ (.*) $/s, "$1")));
      else if (g[4] !== undefined || g[5] !== undefined) inline(g[4] ?? g[5], into.appendChild(el("strong")));
      else if (g[6] !== undefined || g[7] !== undefined) inline(g[6] ?? g[7], into.appendChild(el("em")));
      else if (g[8] !== undefined) inline(g[8], into.appendChild(el("del")));
      else if (SAFE_HREF.test(g[10])) {
        const a = el("a");
        a.href = g[10]; a.title = g[10]; a.rel = "noopener noreferrer nofollow"; a.target = "_blank";
        inline(g[9], into.appendChild(a));
      } else into.append(g[0]);  // javascript:, data:, a relative address...: not a link
      at = index + length;
    }
    if (at < text.length) into.append(text.slice(at));
    return into;
  }
  const KEYWORDS = new Set(("abstract and as assert async await break case catch class const continue def default " +
    "defer del delete do elif else enum except export extends false False final finally fn for from func function " +
    "go if impl import in instanceof interface is lambda let loop match mod mut new nil None nonlocal not null or " +
    "package pass private protected pub public raise return select self Self static struct super switch this throw " +
    "throws trait true True try type typeof undefined use var void where while with yield").split(" "));
  const HASH_COMMENTS = new RegExp("^(py|python|python3|sh|bash|shell|console|zsh|fish|rb|ruby|r|pl|perl|yaml|yml|" +
                                   "toml|ini|conf|make|makefile|dockerfile|nix|ps1|powershell|elixir|ex)$");
  const DASH_COMMENTS = /^(sql|lua|hs|haskell|elm|ada)$/;
  const TOKENS = `("{3}[\\s\\S]*?"{3}|'{3}[\\s\\S]*?'{3}|"(?:[^"\\\\\\n]|\\\\.)*"|` +
    `'(?:[^'\\\\\\n]|\\\\.)*'|\`(?:[^\`\\\\]|\\\\.)*\`)` +
    "|(\\b(?:0[xob][\\da-fA-F_]+|\\d[\\d_]*(?:\\.\\d+)?(?:[eE][+-]?\\d+)?)\\b)|([A-Za-z_$][\\w$]*)";
  const highlighters = new Map();
  // Code as text nodes, with comments, strings, numbers and keywords in spans.
  function highlight(code, language, into) {
    const lang = (language || "").toLowerCase();
    if (!lang || lang === "text" || lang === "plain" || code.length > 200000) { into.append(code); return into; }
    if (!highlighters.has(lang)) {
      const comment = HASH_COMMENTS.test(lang) ? "#[^\\n]*" : DASH_COMMENTS.test(lang) ? "--[^\\n]*"
        : /^(json|md|markdown|csv|diff)$/.test(lang) ? "(?!)"
        : "//[^\\n]*|/\\*[\\s\\S]*?\\*/|\\x3c!--[\\s\\S]*?--\\x3e";
      highlighters.set(lang, new RegExp(`(${comment})|${TOKENS}`, "g"));
    }
    const re = highlighters.get(lang);
    re.lastIndex = 0;
    let at = 0, plain = "", found;
    const flush = () => { if (plain) { into.append(plain); plain = ""; } };
    while ((found = re.exec(code)) !== null) {
      plain += code.slice(at, found.index);
      at = found.index + found[0].length;
      const cls = found[1] !== undefined ? "hl-c" : found[2] !== undefined ? "hl-s" : found[3] !== undefined ? "hl-n"
        : KEYWORDS.has(found[4]) ? "hl-k" : "";
      if (cls) { flush(); into.append(el("span", cls, found[0])); } else plain += found[0];
    }
    plain += code.slice(at);
    flush();
    return into;
  }
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/, ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
  const QUOTE = /^ {0,3}> ?(.*)$/, TABLE_RULE = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;
  const breaksParagraph = line => FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    /^ {0,3}([-*+]|1[.)])[ \t]+\S/.test(line);
  const cells = line => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map(c => c.trim());
  // Markdown text as block elements appended to `into` (depth: lists and quotes inside each other).
  function markdown(text, into, depth = 0) {
    const lines = text.split(/\r?\n/);
    let n = 0;
    while (n < lines.length) {
      const line = lines[n];
      let found;
      if (!line.trim()) { n++; continue; }
      if ((found = FENCE.exec(line))) {
        const close = new RegExp(`^ {0,3}${found[1][0] === "`" ? "`" : "~"}{${found[1].length},}[ \\t]*$`);
        const body = [];
        for (n++; n < lines.length && !close.test(lines[n]); n++) body.push(lines[n]);
        n++;
        into.appendChild(el("pre")).append(highlight(body.join("\n"), found[2], el("code")));
      } else if ((found = HEADING.exec(line))) {
        inline(found[2] || "", into.appendChild(el("h" + found[1].length)));
        n++;
      } else if (RULE.test(line)) { into.append(el("hr")); n++; }
      else if (QUOTE.test(line) && depth < 8) {
        const body = [];
        for (; n < lines.length && lines[n].trim(); n++) body.push((QUOTE.exec(lines[n]) || [, lines[n]])[1]);
        markdown(body.join("\n"), into.appendChild(el("blockquote")), depth + 1);
      } else if ((found = ITEM.exec(line)) && depth < 8) {
        const ordered = /\d/.test(found[2]);
        const list = into.appendChild(el(ordered ? "ol" : "ul"));
        if (ordered && parseInt(found[2], 10) !== 1) list.start = parseInt(found[2], 10);
        let loose = false;
        while (n < lines.length && (found = ITEM.exec(lines[n])) && /\d/.test(found[2]) === ordered) {
          const indent = found[1].length + found[2].length + Math.min(Math.max(found[3].length, 1), 4);
          const body = [found[4]];
          for (n++; n < lines.length; n++) {
            const next = lines[n];
            if (!next.trim()) {
              const after = lines.slice(n + 1).find(l => l.trim());
              if (after === undefined || after.search(/\S/) < indent) break;
              body.push(""); loose = true;
            } else if (next.search(/\S/) >= indent) body.push(next.slice(indent));
            else if (ITEM.test(next) || breaksParagraph(next) || !body[body.length - 1].trim()) break;
            else body.push(next.trim());  // a lazy continuation of the item's paragraph
          }
          const item = list.appendChild(el("li"));
          markdown(body.join("\n"), item, depth + 1);
          if (!loose && item.childElementCount >= 1 && item.firstChild.tagName === "P") {
            const p = item.firstChild;
            while (p.firstChild) item.insertBefore(p.firstChild, p);
            p.remove();
          }
          if (n < lines.length && !lines[n].trim()) n++;
        }
      } else if (/^( {4}|\t)/.test(line)) {
        const body = [];
        for (; n < lines.length && (/^( {4}|\t)/.test(lines[n]) || !lines[n].trim()); n++) {
          body.push(lines[n].replace(/^( {4}|\t)/, ""));
        }
        while (body.length && !body[body.length - 1].trim()) body.pop();
        into.appendChild(el("pre")).append(el("code", "", body.join("\n")));
      } else if (line.includes("|") && n + 1 < lines.length && TABLE_RULE.test(lines[n + 1])) {
        const table = into.appendChild(el("table")), head = table.appendChild(el("thead")).appendChild(el("tr"));
        for (const cell of cells(line)) inline(cell, head.appendChild(el("th")));
        const body = table.appendChild(el("tbody"));
        for (n += 2; n < lines.length && lines[n].includes("|") && lines[n].trim(); n++) {
          const tr = body.appendChild(el("tr"));
          for (const cell of cells(lines[n])) inline(cell, tr.appendChild(el("td")));
        }
      } else {
        const body = [line.trim()];
        for (n++; n < lines.length && lines[n].trim() && !breaksParagraph(lines[n]); n++) body.push(lines[n].trim());
        inline(body.join("\n"), into.appendChild(el("p")));
      }
    }
    return into;
  }

  // ---- one message -------------------------------------------------------------
  function switcher(i) {
    const sib = siblings(i);
    if (sib.length < 2) return null;
    const k = sib.indexOf(i);
    const box = el("span", "switch");
    box.title = M[i].p < 0 ? "other roots: earlier segments, sidechains" : "other versions of this message";
    const prev = el("button", "prev", "\u2039"), next = el("button", "next", "\u203a");
    prev.disabled = k === 0;
    next.disabled = k === sib.length - 1;
    prev.setAttribute("aria-label", "previous sibling");
    next.setAttribute("aria-label", "next sibling");
    on(prev, "click", () => pick(i, sib[k - 1]));
    on(next, "click", () => pick(i, sib[k + 1]));
    box.append(prev, el("span", "count", `${k + 1} / ${sib.length}`), next);
    return box;
  }
  let shownDay = "";  // the day of the last time shown: a row shows its date only when it changes
  function head(i, kindLabel) {
    const m = M[i];
    const h = el("div", "head");
    h.append(el("span", "role", kindLabel || m.r));
    if (m.x) h.append(el("span", "model", m.x));
    if (m.sc) h.append(el("span", "badge agent", `subagent ${m.sc}`));
    if (m.cs) h.append(el("span", "badge", "compact summary"));
    if (m.e) h.append(el("span", "badge err", m.e));
    for (const name of branchesAt.get(i) || []) {
      const current = name === S.current;
      h.append(el("span", current ? "badge current" : "badge branch", current ? `${name} ●` : name));
    }
    if (i === D.head) h.append(el("span", "badge head", "HEAD"));
    if (m.rf !== undefined) {
      h.append(on(el("button", "link", "copied from an earlier message"), "click", () => show(m.rf)));
    }
    if (after.has(i)) {
      const label = M[after.get(i)].d[0] === "reset" ? "continues after a reset ↓" : "continues after a compaction ↓";
      h.append(on(el("button", "link", label), "click", () => show(leafBelow(after.get(i)))));
    }
    const sw = switcher(i);
    if (sw) h.append(sw);
    // The time links to the message; the rest of what a debugger shows is in its tooltip.
    const full = when(m.t), day = full.slice(0, 10);
    const link = el("a", "id meta", !full ? "#" : day === shownDay ? full.slice(11, 16) : full.slice(0, 16));
    shownDay = day;
    link.href = "#" + encodeURIComponent(m.i);
    link.title = `${full}\nmessage ${m.i}\nstored record: ${bytes(m.b)}\n` +
      `≈${plural(m.k, "token", "tokens")} (an estimate: session_store.estimate_tokens, not a tokenizer's count)`;
    h.append(link);
    return h;
  }
  function agentLink(agent) {
    const root = sidechainRoot.get(agent);
    if (root === undefined) return el("span", "badge agent", `subagent ${agent} (no transcript in this session)`);
    return on(el("button", "link", `open subagent ${agent}'s conversation →`), "click", () => show(leafBelow(root)));
  }
  // Append message i's parts to `row`; each result goes into the card of its call when
  // that call is on the path. Returns that card when every part was such a result.
  function parts(i, row, pending) {
    const m = M[i], as = m.r === "user" && !m.cs ? "plain" : "md";  // what people type is shown as typed
    let answered = 0, unnamed = null, card = null;
    for (const c of m.c) {
      const kind = c[0];
      if (kind === "t") row.append(textBlock(c[1], m.cs ? "summary" : "", as));
      else if (kind === "th") {
        row.append(fold(`thinking · ${plural(lineCount(c[1]), "line", "lines")}`, "thinking",
                        () => el("div", "text", c[1])));
      } else if (kind === "j") {
        row.append(fold(`JSON · ${plural(lineCount(c[1]), "line", "lines")}`, "json",
                        () => highlight(c[1], "json", el("pre"))));
      }
      else if (kind === "img") {
        if (c[2]) { const img = el("img", "shown"); img.alt = c[1]; img.src = c[2]; row.append(img); }
        else row.append(el("div", "text", `[${c[1]}]`));
      } else if (kind === "call") {
        const box = el("div", "call");
        const name = el("span", "call-name", c[2] || "(unnamed tool)");
        box.appendChild(el("div", "call-head")).append(name);
        if (c[1]) name.title = `call ${c[1]}`;
        if (c[3]) box.append(textBlock(c[3], "args", "json"));
        const slot = box.appendChild(el("div", "call-result"));
        row.append(box);
        const call = { slot, card: box, key: c[1] || `#${i}:${pending.size}` };
        pending.set(call.key, call);
        if (!c[1]) unnamed = call;  // a result without an id answers the call without one before it (pi's bash)
      } else if (kind === "res") {
        const from = `${m.r} ${m.i}, ${when(m.t)}`;
        const call = c[1] ? pending.get(c[1]) : unnamed;
        if (call) {
          pending.delete(call.key);
          if (call === unnamed) unnamed = null;
          call.slot.append(resultView(c, "result", from));
          if (m.ag) call.slot.append(agentLink(m.ag));
          answered++;
          card = call.card;
        } else {
          const what = c[1] ? `result for ${c[4] || c[1]} (its call is not on this path)` : "result";
          row.append(resultView(c, what, from));
          if (m.ag) row.append(agentLink(m.ag));
        }
      }
    }
    return answered && answered === m.c.length ? card : null;
  }
  // A message that only answered calls shown above needs no card of its own, unless it
  // carries something a reader must see: a branch, the head, siblings, an error, a link.
  const foldable = i => i !== D.head && !branchesAt.has(i) && siblings(i).length < 2 && !M[i].e &&
    M[i].rf === undefined && !after.has(i);
  // The row of message i, and what showing it scrolls to (the card its results went into).
  function messageRow(i, pending) {
    const m = M[i];
    let row, target = null;
    if (m.d) {
      row = el("section", "divider");
      const label = { reset: "↺ Session reset", compaction: "⇣ Compaction", "branch summary": "⎇ Branch summary",
        compacted: "⇣ Conversation compacted" }[m.d[0]] || m.d[0];
      row.append(el("div", "rule", label + (m.d[1] ? ` (${m.d[1]})` : "")), head(i, m.y));
      if (m.c.length) { const box = el("div", "summary"); parts(i, box, pending); row.append(box); }
      if (before.has(i)) {
        const what = m.d[0] === "reset" ? "reset" : "compaction";
        const back = el("button", "link", `↑ the conversation before this ${what}`);
        row.append(on(back, "click", () => show(before.get(i))));
      }
    } else if (m.n !== undefined) {
      row = el("div", "note");
      const h = head(i, m.y.replace(/^(pi|claude_code|langgraph)\./, ""));
      h.insertBefore(el("span", "kind", m.n), h.children[1]);
      row.append(h);
      parts(i, row, pending);
    } else {
      const body = document.createDocumentFragment(), card = parts(i, body, pending);
      if (card && foldable(i)) {
        row = el("div", "merged");
        target = card;
      } else {
        row = el("article", `msg role-${m.r.replace(/[^\w-]/g, "_")}` + (m.sc ? " sidechain" : ""));
        row.append(head(i), body);
      }
    }
    row.dataset.id = m.i;
    row.id = "m" + i;
    return [row, target || row];
  }

  // ---- the conversation ----------------------------------------------------------
  const conversation = document.getElementById("conversation");
  const pathFacts = document.getElementById("path-facts");
  function render() {
    const path = shownPath();
    const pending = new Map();
    const fragment = document.createDocumentFragment();
    rows = new Map();
    shownDay = "";
    let size = 0, tokens = 0;
    for (const i of path) {
      const [row, target] = messageRow(i, pending);
      rows.set(i, target);
      fragment.append(row);
      size += M[i].b; tokens += M[i].k;
    }
    for (const call of pending.values()) call.slot.append(el("div", "no-result", "no result on this path"));
    if (!path.length) fragment.append(el("div", "empty", "This session has no messages."));
    conversation.replaceChildren(fragment);
    pathFacts.textContent = `shown path: ${plural(path.length, "message", "messages")} · ` +
      `≈${plural(tokens, "token", "tokens")} (estimated)`;
    pathFacts.title = `${bytes(size)} of stored records; tokens estimated by session_store.estimate_tokens ` +
      "(a quarter of the characters, plus 4 a message), not counted by a tokenizer";
    onPath = new Set(path);
    markJumps(path.length ? path[path.length - 1] : -1);
    drawMinimap();
  }
  function flash(row) { row.classList.add("flash"); setTimeout(() => row.classList.remove("flash"), 1200); }
  // Show sibling `to` where `from` was, keeping that spot still on the screen.
  function pick(from, to) {
    const before = rows.get(from);
    const top = before ? before.getBoundingClientRect().top : 0;
    choice.set(M[to].p, to);
    render();
    const after = rows.get(to);
    if (after) window.scrollBy(0, after.getBoundingClientRect().top - top);
  }
  function show(i) {
    choose(i);
    render();
    const row = rows.get(i);
    if (row) { row.scrollIntoView({ block: "center" }); flash(row); }
  }

  // ---- header and jump list ------------------------------------------------------
  // Without a title (a framework's records the catalog cannot read), the first thing the user said.
  const said = S.title ? null : M.find(m => m.r === "user" && !m.d && m.c.some(c => c[0] === "t" && c[1].trim()));
  const opening = said ? said.c.find(c => c[0] === "t" && c[1].trim())[1].trim().split("\n")[0] : "";
  const heading = S.title || (opening.length > 80 ? opening.slice(0, 79) + "…" : opening) || S.key || S.id;
  document.title = `${heading} · session-store`;
  document.getElementById("title").textContent = heading;
  const facts = document.getElementById("facts");
  const fact = (text, cls) => facts.appendChild(el("span", cls || "", text));
  if (S.key && S.key !== heading) fact(S.key, "mono");
  fact(`${plural(N, "message", "messages")} · ${plural(D.branches.length, "branch", "branches")} · ` +
       `current branch ${S.current}`);
  if (S.lock) fact(`leased by ${S.lock.holder} until ${when(S.lock.expires)} (token ${S.lock.token})`);
  fact(`updated ${when(S.updated)}`).title = `session ${S.id}, created ${when(S.created)}`;
  if (S.index) { const back = el("a", "back", "← all sessions"); back.href = "/"; facts.prepend(back); }

  const jumps = [];  // [button, leaf or head index]
  const nav = document.getElementById("jump");
  function jumpButton(i, label, detail) {
    const b = el("button", "", label);
    if (detail) b.append(" ", el("span", "when", detail));
    b.title = label;
    on(b, "click", () => show(i));
    jumps.push([b, i]);
    return b;
  }
  nav.append(el("h2", "", "Branches"));
  for (const b of D.branches) {
    const label = b.name + (b.name === S.current ? " ●" : "");
    if (b.h < 0) { nav.append(el("button", "", `${label} (empty)`)); continue; }
    nav.append(jumpButton(b.h, label, when(M[b.h].t)));
  }
  const leaves = [];
  for (let i = 0; i < N; i++) if (!kids[i].length && (!M[i].bk || i === D.head)) leaves.push(i);
  nav.append(el("h2", "", `Leaves (${count(leaves.length)})`));
  for (const i of leaves) {
    const m = M[i];
    let root = i; while (M[root].p >= 0) root = M[root].p;
    const who = M[root].sc ? `[subagent ${M[root].sc}] ` : "";
    nav.append(jumpButton(i, `${who}${m.r}: ${snippet(i)}`, when(m.t)));
  }
  function markJumps(leaf) { for (const [b, i] of jumps) b.classList.toggle("on", i === leaf); }

  // ---- minimap: the whole tree, one row per message, a lane per branch depth ---------
  const order = [], lane = new Int32Array(N);
  {
    const stack = [];
    for (let r = roots.length - 1; r >= 0; r--) { lane[roots[r]] = r > 0 ? 1 : 0; stack.push(roots[r]); }
    while (stack.length) {
      const i = stack.pop();
      order.push(i);
      const ks = kids[i];
      for (let k = ks.length - 1; k >= 0; k--) { lane[ks[k]] = lane[i] + (k > 0 ? 1 : 0); stack.push(ks[k]); }
    }
  }
  const canvas = document.getElementById("minimap");
  const colours = { user: "#3b82f6", assistant: "#10b981", system: "#f59e0b", tool: "#9ca3af", toolResult: "#9ca3af" };
  let rowHeight = 1;
  function drawMinimap() {
    const width = canvas.clientWidth, height = canvas.clientHeight, ratio = window.devicePixelRatio || 1;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    rowHeight = Math.min(6, height / Math.max(order.length, 1));
    const bar = Math.max(rowHeight > 2 ? rowHeight - 1 : rowHeight, 0.6);
    for (let r = 0; r < order.length; r++) {
      const i = order[r], x = 3 + Math.min(lane[i], 10) * 5;
      g.fillStyle = onPath.has(i) ? (M[i].d ? "#ea580c" : colours[M[i].r] || "#6b7280") : "#dde1e6";
      g.fillRect(x, r * rowHeight, width - x - 3, bar);
    }
  }
  function rowAt(event) {
    const r = Math.floor((event.clientY - canvas.getBoundingClientRect().top) / rowHeight);
    return r >= 0 && r < order.length ? order[r] : -1;
  }
  on(canvas, "click", event => { const i = rowAt(event); if (i >= 0) show(i); });
  on(canvas, "mousemove", event => {
    const i = rowAt(event);
    canvas.title = i >= 0 ? `${M[i].r}: ${snippet(i)}` : "";
  });
  on(window, "resize", drawMinimap);

  // ---- start: the message named in the address, else the current head ------------
  function fromAddress() {
    let id = "";
    try { id = decodeURIComponent(location.hash.slice(1)); } catch (e) { id = ""; }
    return byId.has(id) ? byId.get(id) : -1;
  }
  on(window, "hashchange", () => { const i = fromAddress(); if (i >= 0) show(i); });
  const start = fromAddress();
  if (start >= 0) show(start);
  else { if (D.head >= 0) choose(D.head); render(); }
  requestAnimationFrame(rendered);
""")

_INDEX_JS = _script(r"""
  const D = JSON.parse(document.getElementById("store-data").textContent);
  document.getElementById("where").textContent = D.location;
  const body = document.getElementById("sessions");
  const rows = D.sessions.map(s => {
    const tr = el("tr"), about = el("td"), link = el("a", "", s.title || s.preview || s.key || s.id);
    link.href = "session/" + encodeURIComponent(s.id);
    link.title = (s.preview ? s.preview + "\n" : "") + `session ${s.id}`;
    about.append(link);
    const shown = (s.title || "").replace(/…$/, "");  // a title made from the first message: not repeated
    if (s.preview && !s.preview.startsWith(shown)) about.append(el("div", "preview", s.preview));
    tr.append(about, el("td", "key mono", s.key || "(no key)"), el("td", "num", count(s.messages)),
              el("td", "num", count(s.branches)), el("td", "when", when(s.updated)));
    body.append(tr);
    return [tr, [s.key, s.id, s.title || "", s.preview || ""].join(" ").toLowerCase()];
  });
  const filter = document.getElementById("filter"), shown = document.getElementById("shown");
  const more = D.total > rows.length ? ` (the newest ${count(rows.length)} of ${count(D.total)}: search finds any)`
                                     : "";
  function apply() {
    const q = filter.value.trim().toLowerCase();
    let n = 0;
    for (const [tr, text] of rows) { tr.hidden = !!q && !text.includes(q); if (!tr.hidden) n++; }
    shown.textContent = `${n} of ${rows.length} sessions${more}`;
  }
  on(filter, "input", apply);
  apply();
  rendered();
""")

_SEARCH_JS = _script(r"""
  const D = JSON.parse(document.getElementById("search-data").textContent);
  document.getElementById("where").textContent = D.location;
  document.getElementById("q").value = D.query;
  document.title = `${D.query} · search · session-store`;
  const said = document.getElementById("said"), list = document.getElementById("hits");
  if (D.problem) said.textContent = D.problem;
  else if (!D.hits.length) said.textContent = `no matches for “${D.query}”`;
  else said.textContent = `${D.hits.length === D.limit ? "the first " : ""}${count(D.hits.length)} ` +
                          `${D.hits.length === 1 ? "match" : "matches"} for “${D.query}”, best first`;
  const places = { current: "current path", branch: "another branch", archived: "archived by a reset" };
  for (const h of D.hits) {
    const li = el("li"), head = el("div", "head");
    const link = el("a", "", h.title || h.key || h.session);
    link.href = "session/" + encodeURIComponent(h.session) + "#" + encodeURIComponent(h.message);
    head.append(link, el("span", "mono", h.key), el("span", "role", h.role),
                el("span", "badge " + (h.place === "archived" ? "archived" : "place"), places[h.place] || h.place),
                el("span", "", when(h.t)));
    li.append(head, el("div", "snippet", h.snippet));
    list.append(li);
  }
  rendered();
""")

_VIEW_BODY = """<header class="top"><h1 id="title"></h1><div class="facts" id="facts"></div>
<div class="facts" id="path-facts"></div></header>
<div class="layout"><nav class="jump" id="jump"></nav><main id="conversation"></main>
<aside class="minimap"><canvas id="minimap" aria-label="outline of the whole tree"></canvas></aside></div>"""

INDEX_LIMIT = 2000  # sessions the index lists (the newest); the search finds the others
SEARCH_LIMIT = 100  # hits a search page shows
QUERY_CHARS = 500  # the longest query a search page takes

# The search form is plain markup (no script needed): a GET to ``search`` beside the page.
_SEARCH_FORM = f"""<form method="get" action="search" role="search"><input id="q" name="q" type="search"
placeholder="search every message" maxlength="{QUERY_CHARS}" required><button type="submit">Search</button></form>"""

_INDEX_BODY = """<div class="index"><h1>Sessions</h1><p class="mono" id="where"></p>
""" + _SEARCH_FORM + """
<input id="filter" type="search" placeholder="filter by key, title or id" autofocus><span id="shown"></span>
<table class="sessions"><thead><tr><th>conversation: title, first message</th><th>key</th><th>messages</th>
<th>branches</th><th>updated</th></tr></thead><tbody id="sessions"></tbody></table></div>"""

_SEARCH_BODY = """<div class="index"><p><a class="back" href="./">← all sessions</a></p><h1>Search</h1>
<p class="mono" id="where"></p>
""" + _SEARCH_FORM + """
<p id="said"></p><ol class="hits" id="hits"></ol></div>"""


def _script_json(value: Any) -> str:
    """JSON that can sit inside a ``<script type="application/json">``: ``<``, ``>`` and
    ``&`` escaped (no ``</script>`` or ``<!--`` can appear), U+2028/2029 escaped, and lone
    surrogates written as ``\\uXXXX`` escapes (JSON keeps them; UTF-8 cannot)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _policy(script: str) -> str:
    """The Content-Security-Policy of a page whose one script is ``script``: that
    script and nothing else; the pages with the search form (the index and the search
    page) may submit it to the server that sent them, and nowhere else."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    forms = "'self'" if script in (_INDEX_JS, _SEARCH_JS) else "'none'"
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
            f"base-uri 'none'; form-action {forms}")


def _page(title: str, body: str, data_id: str, data: Any, script: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_policy(script)}">\n'
            f'<meta name="referrer" content="no-referrer">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{_CSS}</style></head>\n<body>\n{body}\n"
            f'<script type="application/json" id="{data_id}">{_script_json(data)}</script>\n'
            f"<script>{script}</script>\n</body></html>\n")


def render_session(store: SessionStore, session_id: str, *, index_link: bool = False) -> str:
    """One session as a self-contained HTML page (a ``str``; write it as UTF-8).

    The page needs no network and loads nothing: styles, script and the session (every
    message, branch, the current branch and head, the lease if one is live) are inside
    it. It opens at the current head; ``index_link`` adds a link to ``/`` (the server's
    list of sessions). Reads only through the store's public API; writes nothing.
    Raises :class:`session_store.SessionNotFound` for an unknown id.
    """
    meta = store.get_metadata(session_id)
    if meta is None:
        raise SessionNotFound(session_id)
    # Branches and head before the messages: a message appended meanwhile is then
    # one more leaf, never a head pointing past the messages read.
    branches = store.get_branches(session_id)
    current = store.get_current_branch(session_id)
    head = store.get_head(session_id)
    lock = store.get_lock(session_id)
    messages = store.get_messages(session_id)
    index = {m.id: i for i, m in enumerate(messages)}
    doc = {
        "session": {"id": session_id, "key": meta.key, "title": meta.title, "created": meta.created_at,
                    "updated": meta.updated_at, "current": current,
                    "lock": None if lock is None else {"holder": lock.holder_id, "expires": lock.expires_at,
                                                       "token": lock.token},
                    "index": index_link},
        "head": index.get(head, -1) if head is not None else -1,
        "branches": [{"name": b.name, "h": index.get(b.head_id, -1) if b.head_id is not None else -1}
                     for b in branches],
        "m": [_message_view(m, index) for m in messages],
    }
    return _page("session", _VIEW_BODY, "session-data", doc, _VIEW_JS)


def render_index(store: SessionStore, *, limit: int = INDEX_LIMIT) -> str:
    """The store's sessions as an HTML page, newest first
    (:meth:`SessionStore.list_sessions`): key, title and first user message, message
    and branch counts, last write; a filter box, and a search form that asks
    ``search?q=...`` (see :func:`render_search`). Each key links to
    ``session/<id>`` (see :func:`make_server`). At most ``limit`` sessions (the
    newest; the page says how many there are). Self-contained like
    :func:`render_session`; writes nothing."""
    found = store.list_sessions()
    sessions = [{"id": m.session_id, "key": m.key, "title": m.title, "preview": m.preview,
                 "messages": m.message_count, "branches": m.branch_count, "updated": m.updated_at}
                for m in found[:max(limit, 0)]]
    return _page("sessions", _INDEX_BODY, "store-data",
                 {"location": store.storage_dir, "sessions": sessions, "total": len(found)}, _INDEX_JS)


def render_search(store: SessionStore, query: str, *, limit: int = SEARCH_LIMIT) -> str:
    """The messages that :meth:`SessionStore.search` finds for ``query`` (at most
    ``limit``, best first; reset history included and marked) as an HTML page: each
    hit's session title and key, role, place and snippet, linking to
    ``session/<id>#<message id>`` (the session page opens at that message). The query
    is shown back in the form, as text. A query longer than :data:`QUERY_CHARS` is
    refused on the page. Self-contained like :func:`render_session`; writes nothing."""
    problem = ""
    hits: list[dict[str, Any]] = []
    if len(query) > QUERY_CHARS:
        problem = f"the query is too long: at most {QUERY_CHARS} characters"
    elif query.strip():
        hits = [{"session": h.session_id, "key": h.key, "title": h.title, "message": h.message_id, "role": h.role,
                 "place": h.place, "snippet": h.snippet, "t": h.timestamp}
                for h in store.search(query, limit=limit)]
    else:
        problem = "type words to find in every message"
    return _page("search", _SEARCH_BODY, "search-data",
                 {"location": store.storage_dir, "query": query, "hits": hits, "limit": limit, "problem": problem},
                 _SEARCH_JS)


# ============================================================================
# The read-only server
# ============================================================================

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of ``/``, ``/search?q=...`` and ``/session/<id>``; anything else is refused."""

    server: ViewServer
    server_version = "session-store-view"

    def _send(self, status: int, body: str, content_type: str, *, policy: str | None = None) -> None:
        payload = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", policy or "default-src 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _refuse(self, status: int, reason: str) -> None:
        self._send(status, f"{status} {reason}\n", "text/plain")

    def _host_allowed(self) -> bool:
        """Against DNS rebinding: on a loopback address, only loopback names may ask."""
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host", "")
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        return _is_loopback(name.lower()) or name == self.server.host

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._refuse(403, "this server answers only to its loopback address")
            return
        where = urllib.parse.urlsplit(self.path)
        path = where.path
        store = self.server.store
        try:
            if path == "/":
                self._send(200, render_index(store), "text/html", policy=_policy(_INDEX_JS))
                return
            if path == "/search":
                try:
                    asked = urllib.parse.parse_qs(where.query, errors="strict", max_num_fields=8)
                except ValueError:  # UnicodeDecodeError too: not UTF-8, or too many fields
                    self._refuse(400, "bad query")
                    return
                query = asked.get("q", [""])[0]
                self._send(200, render_search(store, query), "text/html", policy=_policy(_SEARCH_JS))
                return
            prefix, _, quoted = path.partition("/session/")
            session_id = urllib.parse.unquote(quoted, errors="strict")
            if prefix or not session_id or "/" in session_id or not store.has_session(session_id):
                self._refuse(404, "not found")
                return
            self._send(200, render_session(store, session_id, index_link=True), "text/html",
                       policy=_policy(_VIEW_JS))
        except (SessionNotFound, UnicodeDecodeError):
            self._refuse(404, "not found")
        except SessionStoreError as e:
            self.log_error("%s: %s", path, e)
            self._refuse(500, "the store could not be read (see the server's log)")
        except Exception as e:  # a page that cannot be drawn still gets an answer, and the log says why
            self.log_error("%s: could not render: %r", path, e)
            self._refuse(500, "this page could not be rendered (see the server's log)")

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed


class ViewServer(http.server.ThreadingHTTPServer):
    """A read-only web server over a store: the list of sessions at ``/``, a search
    at ``/search?q=...`` and each session's page at ``/session/<id>`` (see
    :func:`make_server`)."""

    def __init__(self, store: SessionStore, host: str, port: int) -> None:
        self.store = store
        self.host = host
        self.loopback_only = _is_loopback(host)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The address to open, e.g. ``http://127.0.0.1:8000/`` (the port as bound)."""
        port = self.server_address[1]
        return f"http://[{self.host}]:{port}/" if ":" in self.host else f"http://{self.host}:{port}/"


def make_server(store: SessionStore, *, host: str = "127.0.0.1", port: int = 8000) -> ViewServer:
    """A :class:`ViewServer` bound to ``host:port`` (port 0: any free one), not yet serving.

    Call ``serve_forever()`` on it (and ``shutdown()`` from another thread to stop).
    It answers GET and HEAD only (405 otherwise) on ``/``, ``/search`` and
    ``/session/<id>`` (404 otherwise), renders every request from the store (so a session that grew shows its
    new messages on reload), and only reads. Bound to a loopback address (the default),
    it also refuses requests whose Host header is not a loopback name (403).
    """
    return ViewServer(store, host, port)


# ============================================================================
# Command line
# ============================================================================


def cli(store: SessionStore, args: argparse.Namespace, session_id: str | None) -> int:
    """The ``view`` and ``serve`` commands of ``session-store`` (its ``main`` calls this
    with the opened store, the parsed arguments and, for ``view``, the session found).

    ``view`` writes :func:`render_session` to ``args.output`` (stdout when ``None``);
    ``serve`` prints the address and serves until interrupted.
    """
    if args.command == "view":
        assert session_id is not None
        page = render_session(store, session_id)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(page)
        else:
            sys.stdout.write(page)
        return 0
    server = make_server(store, host=args.host, port=args.port)
    print(f"serving {store.storage_dir} read-only at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
