"""session_store_openai_agents with the real OpenAI Agents SDK: Runner.run over several
turns with a local model that answers from a script (tool calls included), pop, clear,
limits, two runners on one session taking turns under the lease, and the branches, turns
and usage of AdvancedSQLiteSession: one script run against the SDK's own class and ours,
on every backend, answering alike."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from conftest import FakeClock
from frameworks import require

require("agents", "openai-agents")

from agents import Agent, RunConfig, Runner, SQLiteSession, function_tool, set_tracing_disabled  # noqa: E402
from agents.extensions.memory import AdvancedSQLiteSession  # noqa: E402
from agents.items import ModelResponse, TResponseInputItem, TResponseOutputItem, TResponseStreamEvent  # noqa: E402
from agents.memory import Session, SessionSettings  # noqa: E402
from agents.memory.session import _session_accepts_wrapper  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage  # noqa: E402
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText  # noqa: E402
from openai.types.responses.response_usage import OutputTokensDetails  # noqa: E402
from test_interop import assert_anthropic_accepts, assert_openai_accepts  # noqa: E402

from session_store import (  # noqa: E402
    AsyncSessionStore,
    InMemoryFileSystem,
    InvalidInput,
    InvalidMessage,
    LeaseLost,
    SessionStore,
)
from session_store_openai_agents import SessionStoreSession  # noqa: E402

set_tracing_disabled(True)  # nothing leaves the machine

# ============================================================================
# A model that runs here: it answers from a script
# ============================================================================


def say(text: str) -> list[TResponseOutputItem]:
    return [ResponseOutputMessage(id=f"msg_{abs(hash(text)) % 10**8}", type="message", role="assistant",
                                  status="completed",
                                  content=[ResponseOutputText(type="output_text", text=text, annotations=[])])]


def call(name: str, arguments: str, call_id: str) -> list[TResponseOutputItem]:
    return [ResponseFunctionToolCall(id=f"fc_{call_id}", call_id=call_id, type="function_call", name=name,
                                     arguments=arguments, status="completed")]


class ScriptedModel(Model):
    """Returns the next scripted output for each request, and keeps the inputs it got.
    ``before`` (optional) is awaited at the start of each request; ``usage(n)``
    (optional) is the usage the ``n``-th request reports (from 1)."""

    def __init__(self, *script: list[TResponseOutputItem], before: Any = None,
                 usage: Callable[[int], Usage] | None = None) -> None:
        self.script = list(script)
        self.inputs: list[list[TResponseInputItem]] = []
        self.before = before
        self.usage = usage

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any, tools: Any,
                           output_schema: Any, handoffs: Any, tracing: Any, *, previous_response_id: Any,
                           conversation_id: Any, prompt: Any) -> ModelResponse:
        self.inputs.append(copy.deepcopy([{"role": "user", "content": input}] if isinstance(input, str) else input))
        if self.before is not None:
            await self.before()
        usage = Usage() if self.usage is None else self.usage(len(self.inputs))
        return ModelResponse(output=self.script.pop(0), usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("these tests do not stream")


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def texts(items: list[Any]) -> list[str]:
    """What each item says, in short: for reading assertions."""
    out = []
    for item in items:
        if item.get("type") == "function_call":
            out.append(f"call {item['name']}")
        elif item.get("type") == "function_call_output":
            out.append(f"result {item['output']}")
        else:
            content = item["content"]
            out.append(content if isinstance(content, str) else content[0]["text"])
    return out


@pytest.fixture
def mem() -> Iterator[SessionStore]:
    with SessionStore(InMemoryFileSystem(), clock=FakeClock()) as store:
        yield store


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ============================================================================
# The Session protocol
# ============================================================================


def test_it_is_a_session_the_sdk_passes_its_wrapper_to(mem: SessionStore) -> None:
    session = SessionStoreSession("user:alice", mem)
    assert isinstance(session, Session)
    assert _session_accepts_wrapper(session)
    assert session.session_id == "user:alice" and session.session_settings == SessionSettings()


def test_runner_keeps_the_conversation_over_turns_with_tool_calls(store: SessionStore) -> None:
    model = ScriptedModel(call("weather", '{"city":"Paris"}', "call_1"), say("It is sunny in Paris."),
                          say("Lyon too, I expect."))
    agent = Agent(name="Assistant", instructions="Be brief.", model=model, tools=[weather])
    session = SessionStoreSession("user:alice", store)

    async def conversation() -> None:
        first = await Runner.run(agent, "Weather in Paris?", session=session)
        assert first.final_output == "It is sunny in Paris."
        await Runner.run(agent, "And in Lyon?", session=session)
    run(conversation())
    assert texts(model.inputs[2]) == ["Weather in Paris?", "call weather", "result Sunny in Paris",
                                      "It is sunny in Paris.", "And in Lyon?"]  # the second run saw the first
    items = run(session.get_items())
    assert texts(items) == [*texts(model.inputs[2]), "Lyon too, I expect."]
    sid = store.resolve("user:alice")
    history = store.get_linear_history(sid)
    assert [m.content for m in history] == items  # one message per item, the item as given
    assert [(m.role, m.type) for m in history[:3]] == [("user", "message"), ("assistant", "function_call"),
                                                       ("tool", "function_call_output")]
    openai = store.build_context(sid, strict=True)
    assert_openai_accepts(openai)
    assert [m["role"] for m in openai] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    anthropic = store.build_context(sid, format="anthropic", strict=True)
    assert_anthropic_accepts(anthropic)
    assert anthropic["messages"][1]["content"][0]["type"] == "tool_use"


def test_items_come_back_exactly_as_given_in_mutable_copies(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    items: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                        {"type": "reasoning", "id": "rs_1", "summary": []},
                        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                         "content": [{"type": "output_text", "text": "hello", "annotations": []}]}]
    run(session.add_items(copy.deepcopy(items)))
    got = run(session.get_items())
    assert got == items
    got[0]["content"].append("mine")  # the SDK may change what it got: the store is not affected
    assert run(session.get_items()) == items


def test_get_items_limit_gives_the_last_items_oldest_first(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem, session_settings={"limit": 2})
    items: list[Any] = [{"role": "user", "content": str(i)} for i in range(5)]
    run(session.add_items(items))
    assert run(session.get_items(3)) == items[2:]
    assert run(session.get_items()) == items[3:]  # the settings' limit
    assert run(session.get_items(0)) == []
    assert run(SessionStoreSession("k", mem).get_items()) == items


def test_the_runs_session_settings_limit_the_history_the_model_sees(mem: SessionStore) -> None:
    model = ScriptedModel(say("one"), say("two"))
    agent = Agent(name="Assistant", model=model)
    session = SessionStoreSession("k", mem)

    async def turns() -> None:
        await Runner.run(agent, "first", session=session)
        await Runner.run(agent, "second", session=session, run_config=RunConfig(session_settings=SessionSettings(
            limit=1)))
    run(turns())
    assert texts(model.inputs[1]) == ["one", "second"]


def test_a_reset_marker_is_not_an_item(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    run(session.add_items([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]))
    mem.reset(mem.resolve("k"), keep_strategy="last", keep_count=1)
    assert run(session.get_items()) == [{"role": "assistant", "content": "b"}]
    assert run(session.get_items(5)) == [{"role": "assistant", "content": "b"}]


def test_an_item_whose_type_the_store_reserves_is_an_item_like_any_other(mem: SessionStore) -> None:
    """An item typed "reset" or "damaged" (or with such a role) is kept whole as the
    content; the record's type is never the item's, so it is neither hidden nor a reset."""
    session = SessionStoreSession("k", mem)
    items: list[Any] = [{"role": "user", "content": "a"}, {"type": "reset", "note": "mine"},
                        {"type": "damaged", "role": "reset", "x": 1}]
    run(session.add_items(copy.deepcopy(items)))
    assert run(session.get_items()) == items
    assert mem.get_metadata(mem.resolve("k")).reset_count == 0  # type: ignore[union-attr]
    assert run(session.pop_item()) == items[-1]
    assert run(session.get_items()) == items[:-1]


def test_bad_items_raise_and_write_nothing(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    bad: Any
    for bad in ("text", {"content": {1: "int key"}}, {"content": float("nan")}, {"content": object()}):
        with pytest.raises(InvalidMessage):
            run(session.add_items([{"role": "user", "content": "fine"}, bad]))
    assert mem.get_messages(mem.resolve("k")) == []
    with pytest.raises(InvalidInput):
        SessionStoreSession("", mem)
    with pytest.raises(InvalidInput):
        SessionStoreSession("k", "not a store")  # type: ignore[arg-type]


# ============================================================================
# pop and clear: the head moves, nothing is lost
# ============================================================================


def test_pop_item_moves_the_head_back_and_keeps_the_item_in_the_tree(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    run(session.add_items([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]))
    assert run(session.pop_item()) == {"role": "assistant", "content": "a"}
    assert run(session.get_items()) == [{"role": "user", "content": "q"}]
    sid = mem.resolve("k")
    popped = [m for m in mem.get_tree(sid) if m.content == {"role": "assistant", "content": "a"}]
    assert len(popped) == 1  # still there: move the head back to redo
    mem.move_head(sid, popped[0].id)
    assert len(run(session.get_items())) == 2
    assert run(session.pop_item()) is not None and run(session.pop_item()) is not None
    assert run(session.pop_item()) is None
    assert run(session.get_items()) == [] and len(mem.get_messages(sid)) == 2


def test_the_sdks_documented_correction_pops_the_last_exchange_and_asks_again(mem: SessionStore) -> None:
    model = ScriptedModel(say("5"), say("2 + 3 = 5"))
    agent = Agent(name="Assistant", model=model)
    session = SessionStoreSession("user_123", mem)

    async def correction() -> None:
        await Runner.run(agent, "What's 2 + 2?", session=session)
        assistant_item = await session.pop_item()  # the agent's answer
        user_item = await session.pop_item()  # the question
        assert assistant_item is not None and user_item is not None
        assert texts([user_item, assistant_item]) == ["What's 2 + 2?", "5"]
        await Runner.run(agent, "What's 2 + 3?", session=session)
    run(correction())
    assert texts(model.inputs[1]) == ["What's 2 + 3?"]
    assert len(mem.get_messages(mem.resolve("user_123"))) == 4  # the corrected exchange is kept in the tree


def test_clear_session_empties_what_the_sdk_reads_and_injects_no_text(mem: SessionStore) -> None:
    model = ScriptedModel(say("hello"), say("hi again"))
    agent = Agent(name="Assistant", model=model)
    session = SessionStoreSession("k", mem)

    async def turns() -> None:
        await Runner.run(agent, "hi", session=session)
        await session.clear_session()
        assert await session.get_items() == []
        await Runner.run(agent, "hi", session=session)
    run(turns())
    assert texts(model.inputs[1]) == ["hi"]  # nothing from before the clear, and no system text
    sid = mem.resolve("k")
    assert mem.build_context(sid) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi again"}]
    assert len(mem.get_messages(sid)) == 4  # the first exchange is still in the tree


def test_a_session_deleted_meanwhile_starts_again_under_its_key(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    run(session.add_items([{"role": "user", "content": "old"}]))
    mem.delete_session(mem.resolve("k"))
    run(session.add_items([{"role": "user", "content": "new"}]))
    assert run(session.get_items()) == [{"role": "user", "content": "new"}]


# ============================================================================
# Two runners, one session: the lease
# ============================================================================


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_two_runners_with_owners_take_turns_instead_of_interleaving(kind: str) -> None:
    sync = SessionStore(InMemoryFileSystem(), clock=FakeClock())
    store: Any = sync if kind == "sync" else AsyncSessionStore(sync)

    async def race() -> tuple[ScriptedModel, ScriptedModel]:
        b_waits = asyncio.Event()

        async def until_b_waits() -> None:
            await b_waits.wait()  # A's model answers only once B is at the door

        model_a = ScriptedModel(say("A's answer"), before=until_b_waits)
        model_b = ScriptedModel(say("B's answer"))
        session_a = SessionStoreSession("shared", store, owner="runner-a")
        session_b = SessionStoreSession("shared", store, owner="runner-b")

        async def runner_a() -> None:
            async with session_a.turn():
                await Runner.run(Agent(name="A", model=model_a), "question A", session=session_a)

        async def runner_b() -> None:
            while not await sync_is_locked():
                await asyncio.sleep(0)
            b_waits.set()
            async with session_b.turn():
                await Runner.run(Agent(name="B", model=model_b), "question B", session=session_b)

        async def sync_is_locked() -> bool:
            return await asyncio.to_thread(sync.is_locked, sync.resolve("shared"))

        await asyncio.gather(runner_a(), runner_b())
        return model_a, model_b
    _, model_b = run(race())
    assert texts(model_b.inputs[0]) == ["question A", "A's answer", "question B"]  # B answered after A's turn
    assert texts([m.content for m in sync.get_linear_history(sync.resolve("shared"))]) == [
        "question A", "A's answer", "question B", "B's answer"]
    assert not sync.is_locked(sync.resolve("shared"))
    sync.close()


def test_without_turns_two_runners_answer_from_the_same_history(mem: SessionStore) -> None:
    async def race() -> ScriptedModel:
        b_read = asyncio.Event()
        model_a = ScriptedModel(say("A's answer"), before=b_read.wait)

        async def b_done() -> None:
            b_read.set()
        model_b = ScriptedModel(say("B's answer"), before=b_done)
        a = Runner.run(Agent(name="A", model=model_a), "question A", session=SessionStoreSession("s", mem))
        b = Runner.run(Agent(name="B", model=model_b), "question B", session=SessionStoreSession("s", mem))
        await asyncio.gather(a, b)
        return model_b
    model_b = run(race())
    assert "A's answer" not in texts(model_b.inputs[0])  # what turn() prevents


def test_writes_in_a_turn_whose_lease_was_lost_are_refused(mem: SessionStore) -> None:
    clock = FakeClock()
    store = SessionStore(InMemoryFileSystem(), clock=clock)
    session = SessionStoreSession("k", store, owner="worker-1")

    async def lost() -> None:
        async with session.turn():
            await session.add_items([{"role": "user", "content": "mine"}])
            clock.advance(store.lock_timeout_ms / 1000 + 1)  # the lease expired...
            assert store.acquire_lock(store.resolve("k"), "worker-2").acquired  # ...and another owner took it
            with pytest.raises(LeaseLost):
                await session.add_items([{"role": "user", "content": "too late"}])
    run(lost())
    assert [m.content["content"] for m in store.get_messages(store.resolve("k"))] == ["mine"]
    store.close()


def test_an_owner_waits_for_another_owners_turn_before_writing(mem: SessionStore) -> None:
    async def scenario() -> list[str]:
        first = SessionStoreSession("k", mem, owner="first")
        second = SessionStoreSession("k", mem, owner="second")
        async with first.turn():
            write = asyncio.create_task(second.add_items([{"role": "user", "content": "second"}]))
            await asyncio.sleep(0.05)
            assert not write.done()  # it waits for the lease, however long this turn takes
            await first.add_items([{"role": "user", "content": "first"}])
        await write
        return texts(await first.get_items())
    assert run(scenario()) == ["first", "second"]


def test_turn_needs_an_owner(mem: SessionStore) -> None:
    async def no_owner() -> None:
        async with SessionStoreSession("k", mem).turn():
            pass
    with pytest.raises(InvalidInput, match="owner"):
        run(no_owner())


# ============================================================================
# The SDK's own store, for comparison
# ============================================================================


def test_sqlite_session_pop_deletes_where_ours_keeps(mem: SessionStore) -> None:
    theirs, ours = SQLiteSession("k"), SessionStoreSession("k", mem)

    async def both() -> None:
        for session in (theirs, ours):
            await session.add_items([{"role": "user", "content": "q"}])
            assert await session.pop_item() == {"role": "user", "content": "q"}
            assert await session.get_items() == []
    run(both())
    assert len(mem.get_messages(mem.resolve("k"))) == 1  # SQLiteSession's row is gone; our record is not
    theirs.close()


# ============================================================================
# Branches, turns and usage: one script against AdvancedSQLiteSession and ours
# ============================================================================

# Checked for every backend. What must differ is normalized, and only that (see normalized()):
# - times ("timestamp", "created_at"): when rows were written vs when messages were stored;
# - the generated branch name's <unix time> suffix: the clock of the run;
# - the order of list_branches: theirs sorts by creation time in whole seconds (branches made
#   in the same second come in any order), ours is main then creation order: compared sorted.


def used(n: int) -> Usage:
    """What the n-th model request of the script reports."""
    return Usage(requests=1, input_tokens=100 * n, output_tokens=10 * n, total_tokens=110 * n,
                 output_tokens_details=OutputTokensDetails(reasoning_tokens=n))


async def branching_script(session: Any, turn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The operations a branching app runs, and what each returned (or the error it raised)."""
    seen: list[tuple[str, Any]] = []
    model = ScriptedModel(call("weather", '{"city":"Paris"}', "call_1"), say("Sunny in Paris."),
                          say("Lyon: rain."), say("Bye!"),
                          call("weather", '{"city":"Nice"}', "call_2"), say("Nice: sunny."),
                          say("Marseille: windy."), usage=used)
    agent = Agent(name="Assistant", model=model, tools=[weather])

    async def ask(question: str) -> None:
        async with turn():
            result = await Runner.run(agent, question, session=session)
            await session.store_run_usage(result)

    async def note(label: str, call: Any) -> Any:
        try:
            value = await call
        except ValueError as e:
            value = ("ValueError", str(e))
        seen.append((label, value))
        return value

    await ask("Weather in Paris?")  # turn 1: a tool call, its result, the answer
    await ask("And in Lyon?")  # turn 2
    await ask("Thanks, bye.")  # turn 3
    await note("items", session.get_items())
    await note("turns", session.get_conversation_turns())
    await note("by turns", session.get_conversation_by_turns())
    await note("tools", session.get_tool_usage())
    await note("found", session.find_turns_by_content("LYON"))
    await note("turn usage", session.get_turn_usage())
    await note("turn 2 usage", session.get_turn_usage(2))
    await note("turn 7 usage", session.get_turn_usage(7))
    await note("branch from turn 2", session.create_branch_from_turn(2, "nice"))
    await note("items on it", session.get_items())
    await note("its turn usage", session.get_turn_usage())
    await ask("And in Nice?")  # turn 2 of "nice"
    await note("turns on nice", session.get_conversation_turns())
    await note("tools on nice", session.get_tool_usage())
    await note("nice's turn usage", session.get_turn_usage())
    await note("branches", session.list_branches())
    await note("session usage", session.get_session_usage())
    await note("nice's usage", session.get_session_usage("nice"))
    await note("main's usage", session.get_session_usage("main"))
    await note("switch to main", session.switch_to_branch("main"))
    await note("items on main", session.get_items())
    await note("main's turn usage", session.get_turn_usage())
    await note("last 2 of nice", session.get_items(2, "nice"))
    await note("nice's turns", session.get_conversation_turns("nice"))
    await note("no such branch's items", session.get_items(branch_id="nowhere"))
    await note("switch to no branch", session.switch_to_branch("nowhere"))
    await note("branch from no turn", session.create_branch_from_turn(9))
    await note("a name taken", session.create_branch_from_turn(2, "nice"))
    await note("a blank name", session.create_branch_from_turn(2, "  "))
    await note("branch from no content", session.create_branch_from_content("snow"))
    await note("delete main", session.delete_branch("main"))
    await note("delete no name", session.delete_branch(""))
    await note("delete no branch", session.delete_branch("nowhere"))
    auto = await note("branch from content", session.create_branch_from_content("BYE"))  # turn 3: named for it
    await ask("Weather in Marseille?")  # turn 3 of the new branch
    await note("popped answer", session.pop_item())
    await note("turn usage after it", session.get_turn_usage())  # the turn has its question: usage kept
    await note("popped question", session.pop_item())
    await note("turn usage after that", session.get_turn_usage())  # the turn is gone, and its usage
    await note("delete the current branch", session.delete_branch(auto))
    await note("delete nice", session.delete_branch("nice"))
    await note("branches after", session.list_branches())
    await note("session usage after", session.get_session_usage())
    await note("delete it by force", session.delete_branch(auto, force=True))
    await note("branches at the end", session.list_branches())
    await note("items at the end", session.get_items())
    return seen


def normalized(seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The script's results, with only what must differ made equal (see above)."""
    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<time>" if k in ("timestamp", "created_at") else norm(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [norm(v) for v in value]
            if items and all(isinstance(v, dict) and "branch_id" in v for v in items):
                items.sort(key=lambda v: v["branch_id"])
            return type(value)(items)
        if isinstance(value, str):
            return re.sub(r"(branch_from_turn_\d+_)\d+", r"\1<time>", value)
        return value
    return [(label, norm(value)) for label, value in seen]


@pytest.fixture(scope="module")
def advanced_results(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Any]]:
    """The script against the SDK's AdvancedSQLiteSession, in a SQLite file."""
    db = tmp_path_factory.mktemp("advanced") / "conversations.db"
    session = AdvancedSQLiteSession(session_id="user:alice", db_path=db, create_tables=True)
    try:
        seen: list[tuple[str, Any]] = run(branching_script(session, contextlib.nullcontext))
        return seen
    finally:
        session.close()


@pytest.mark.parametrize("mode", ["sync store", "async store, owner"])
def test_branches_turns_and_usage_answer_as_advanced_sqlite_sessions_do(
        store: SessionStore, mode: str, advanced_results: list[tuple[str, Any]]) -> None:
    if mode == "sync store":
        session = SessionStoreSession("user:alice", store)
    else:
        session = SessionStoreSession("user:alice", AsyncSessionStore(store), owner="worker-1")
    ours = run(branching_script(session, session.turn if session.owner else contextlib.nullcontext))
    theirs = normalized(advanced_results)
    assert [label for label, _ in ours] == [label for label, _ in theirs]
    for (label, mine), (_, expected) in zip(normalized(ours), theirs, strict=True):
        assert mine == expected, label


ITEM_KINDS: list[Any] = [
    {"role": "user", "content": [{"type": "input_text", "text": "Héllo ZÜRICH weather"},
                                 {"type": "input_image", "image_url": "x"}]},
    {"type": "function_call", "name": "zeta", "arguments": "{}", "call_id": "a"},
    {"type": "function_call", "name": "alpha", "arguments": "{}", "call_id": "b"},
    {"type": "function_call", "name": "alpha", "namespace": "ns", "arguments": "{}", "call_id": "c"},
    {"type": "function_call", "name": "same", "namespace": "same", "arguments": "{}", "call_id": "d"},
    {"type": "function_call", "arguments": "{}", "call_id": "e"},
    {"type": "shell_call", "call_id": "f"}, {"type": "mcp_call", "server_label": "srv", "name": "tool", "id": "m"},
    {"type": "tool_search_output", "id": "t1"},
    {"role": "user", "content": 'second, ünïcode "quoted" 100%_x'},
    {"type": "tool_search_call", "id": "t2"}, {"type": "tool_search_output", "id": "t3"},
    {"type": "web_search_call", "id": "w"},
    {"role": "user", "content": {"not": "text"}},
]


async def reading_script(session: Any) -> dict[str, Any]:
    """How each kind of item is numbered, named, counted and searched."""
    await session.add_items(copy.deepcopy(ITEM_KINDS))
    seen = {"tools": await session.get_tool_usage(), "by turns": await session.get_conversation_by_turns(),
            "turns": await session.get_conversation_turns(), "last 2": await session.get_items(2),
            "branches": await session.list_branches()}
    for term in ("zürich", "ZURICH", "héllo", "HÉLLO", "weather", '"quoted"', "100%_", "%", "_", "", "image", "x"):
        seen[f"find {term!r}"] = await session.find_turns_by_content(term)
    return seen


def test_turns_tools_and_search_read_each_kind_of_item_as_advanced_sqlite_session_does(
        store: SessionStore, tmp_path: Any) -> None:
    theirs = AdvancedSQLiteSession(session_id="k", db_path=tmp_path / "advanced.db", create_tables=True)
    try:
        expected = normalized(list(run(reading_script(theirs)).items()))
    finally:
        theirs.close()
    assert normalized(list(run(reading_script(SessionStoreSession("k", store))).items())) == expected


# ============================================================================
# Branches, turns and usage: how they live in the tree
# ============================================================================


def ask(session: SessionStoreSession, *questions: str) -> None:
    """Run a turn per question (the model answers "answer <n>") and store each run's usage."""
    model = ScriptedModel(*[say(f"answer {i}") for i in range(len(questions))], usage=used)
    agent = Agent(name="Assistant", model=model)

    async def turns() -> None:
        for question in questions:
            await session.store_run_usage(await Runner.run(agent, question, session=session))
    run(turns())


def test_a_branch_from_a_turn_is_a_named_branch_at_the_message_before_it_and_copies_nothing(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    ask(session, "one", "two", "three")
    sid = mem.resolve("k")
    stored = len(mem.get_messages(sid))
    assert run(session.create_branch_from_turn(2, "retry")) == "retry"
    second_question = next(m for m in mem.get_linear_history(sid, mem.get_branch(sid, "main").head_id)  # type: ignore[union-attr]
                           if m.content == {"role": "user", "content": "two"})
    assert mem.get_branch(sid, "retry").head_id == second_question.parent_id  # type: ignore[union-attr]
    assert mem.get_current_branch(sid) == "retry" and len(mem.get_messages(sid)) == stored
    ask(session, "two, again")
    assert mem.get_children(sid, second_question.parent_id)[-1].content == {"role": "user", "content": "two, again"}  # type: ignore[arg-type]


def test_turns_are_the_user_messages_on_the_branch_path(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    items: list[Any] = [{"type": "reasoning", "id": "rs_0", "summary": []},  # turn 0: before any user message
                        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    run(session.add_items(items))
    assert [(t["turn"], t["full_content"]) for t in run(session.get_conversation_turns())] == [
        (1, [{"type": "input_text", "text": "Hi"}]), (2, "Bye")]
    assert run(session.get_conversation_by_turns()) == {
        0: [{"type": "reasoning", "tool_name": None}], 1: [{"type": "user", "tool_name": None},
                                                          {"type": "assistant", "tool_name": None}],
        2: [{"type": "user", "tool_name": None}]}
    assert [t["turn"] for t in run(session.find_turns_by_content("hi"))] == [1]


def test_usage_records_are_neither_items_nor_sent_to_a_model(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    ask(session, "one", "two", "three")
    sid = mem.resolve("k")
    assert [m.type for m in mem.get_linear_history(sid)].count("openai_agents.usage") == 3
    assert texts(run(session.get_items())) == ["one", "answer 0", "two", "answer 1", "three", "answer 2"]
    assert texts(run(session.get_items(3))) == ["answer 1", "three", "answer 2"]  # O(limit), records passed over
    context = mem.build_context(sid, strict=True)
    assert [m["content"] for m in context] == ["one", "answer 0", "two", "answer 1", "three", "answer 2"]
    assert run(session.get_turn_usage(3))["total_tokens"] == 110 * 3


def test_an_item_typed_as_a_usage_record_is_an_item(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    item: Any = {"type": "openai_agents.usage", "branch": "main", "requests": 5}
    run(session.add_items([{"role": "user", "content": "q"}, item]))
    assert run(session.get_items()) == [{"role": "user", "content": "q"}, item]
    assert run(session.get_session_usage()) is None


def test_usage_needs_a_turn_and_a_run_that_counted_it(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    model = ScriptedModel(say("hi"), usage=used)
    result = run(Runner.run(Agent(name="A", model=model), "hello"))  # no session: nothing on the branch
    run(session.store_run_usage(result))
    assert run(session.get_session_usage()) is None and mem.get_messages(mem.resolve("k")) == []
    result.context_wrapper.usage = None
    run(session.add_items([{"role": "user", "content": "hello"}]))
    run(session.store_run_usage(result))
    assert run(session.get_session_usage()) is None


def test_storing_a_turns_usage_again_replaces_it(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    model = ScriptedModel(say("hi"), usage=used)
    result = run(Runner.run(Agent(name="A", model=model), "hello", session=session))
    run(session.store_run_usage(result))
    run(session.store_run_usage(result))
    assert run(session.get_session_usage()) == {"requests": 1, "input_tokens": 100, "output_tokens": 10,
                                                "total_tokens": 110, "total_turns": 1}


def test_branches_and_usage_are_the_sessions_shared_by_handles_and_kept_across_restarts(
        open_store: Callable[..., SessionStore]) -> None:
    first, second = open_store(), open_store()  # two handles on one place: two processes, or a restart
    writer = SessionStoreSession("user:alice", first)
    ask(writer, "one", "two")
    run(writer.create_branch_from_turn(2, "retry"))
    ask(writer, "two, again")
    reader = SessionStoreSession("user:alice", second)
    assert [(b["branch_id"], b["is_current"]) for b in run(reader.list_branches())] == [("main", False),
                                                                                       ("retry", True)]
    assert texts(run(reader.get_items())) == ["one", "answer 0", "two, again", "answer 0"]
    assert run(reader.get_session_usage()) == run(writer.get_session_usage()) == {
        "requests": 3, "input_tokens": 400, "output_tokens": 40, "total_tokens": 440, "total_turns": 3}
    assert [u["user_turn_number"] for u in run(reader.get_turn_usage())] == [2]
    run(reader.switch_to_branch("main"))
    assert texts(run(writer.get_items())) == ["one", "answer 0", "two", "answer 1"]  # one current branch per session


def test_deleting_a_branch_keeps_its_messages_in_the_tree_and_frees_its_name(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    ask(session, "one", "two")
    run(session.create_branch_from_turn(2, "retry"))
    ask(session, "two, again")
    sid = mem.resolve("k")
    stored = mem.get_messages(sid)
    run(session.delete_branch("retry", force=True))
    assert mem.get_current_branch(sid) == "main" and mem.get_messages(sid) == stored
    assert run(session.get_session_usage())["total_turns"] == 2
    assert run(session.create_branch_from_turn(1, "retry")) == "retry"  # AdvancedSQLiteSession never reuses a name


def test_a_branch_from_the_first_turn_is_empty_and_listed(mem: SessionStore) -> None:
    session = SessionStoreSession("k", mem)
    ask(session, "one")
    run(session.create_branch_from_turn(1, "fresh"))
    assert run(session.get_items()) == []
    assert [(b["branch_id"], b["message_count"]) for b in run(session.list_branches())] == [("main", 2), ("fresh", 0)]
    ask(session, "one, again")
    assert texts(run(session.get_items())) == ["one, again", "answer 0"]


def test_branch_writes_in_a_turn_whose_lease_was_lost_are_refused() -> None:
    clock = FakeClock()
    store = SessionStore(InMemoryFileSystem(), clock=clock)
    session = SessionStoreSession("k", store, owner="worker-1")
    ask(session, "one", "two")
    run(session.create_branch_from_turn(2, "retry"))
    result = run(Runner.run(Agent(name="A", model=ScriptedModel(say("hi"), usage=used)), "q", session=session))
    sid = store.resolve("k")
    before = (store.export_session(sid), store.get_current_branch(sid))

    async def lost() -> None:
        async with session.turn():
            clock.advance(store.lock_timeout_ms / 1000 + 1)  # the lease expired...
            assert store.acquire_lock(sid, "worker-2").acquired  # ...and another owner took it
            for write in (session.create_branch_from_turn(1, "other"), session.switch_to_branch("main"),
                          session.delete_branch("retry", force=True), session.store_run_usage(result),
                          session.pop_item(), session.create_branch_from_content("one")):
                with pytest.raises(LeaseLost):
                    await write
    run(lost())
    assert (store.export_session(sid), store.get_current_branch(sid)) == before
    store.close()
