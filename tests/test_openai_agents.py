"""session_store_openai_agents with the real OpenAI Agents SDK: Runner.run over several
turns with a local model that answers from a script (tool calls included), pop, clear,
limits, and two runners on one session taking turns under the lease."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import FakeClock
from frameworks import require

require("agents", "openai-agents")

from agents import Agent, RunConfig, Runner, SQLiteSession, function_tool, set_tracing_disabled  # noqa: E402
from agents.items import ModelResponse, TResponseInputItem, TResponseOutputItem, TResponseStreamEvent  # noqa: E402
from agents.memory import Session, SessionSettings  # noqa: E402
from agents.memory.session import _session_accepts_wrapper  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage  # noqa: E402
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText  # noqa: E402
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
    ``before`` (optional) is awaited at the start of each request."""

    def __init__(self, *script: list[TResponseOutputItem], before: Any = None) -> None:
        self.script = list(script)
        self.inputs: list[list[TResponseInputItem]] = []
        self.before = before

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any, tools: Any,
                           output_schema: Any, handoffs: Any, tracing: Any, *, previous_response_id: Any,
                           conversation_id: Any, prompt: Any) -> ModelResponse:
        self.inputs.append(copy.deepcopy([{"role": "user", "content": input}] if isinstance(input, str) else input))
        if self.before is not None:
            await self.before()
        return ModelResponse(output=self.script.pop(0), usage=Usage(), response_id=None)

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
