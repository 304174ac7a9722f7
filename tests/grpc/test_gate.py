"""The gate a stopping gRPC server closes first: admitted calls finish, new ones are refused."""

import asyncio

import pytest

from service.errors import ShuttingDown
from service.grpc.gate import Gate


def test_close_waits_for_admitted_calls_and_refuses_new_ones() -> None:
    async def scenario() -> list[str]:
        gate, events = Gate(), []

        async def call(name: str, release: asyncio.Event) -> None:
            with gate.admit():
                events.append(f"{name} admitted")
                await release.wait()
                events.append(f"{name} done")

        release = asyncio.Event()
        first = asyncio.ensure_future(call("first", release))
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(gate.close())
        await asyncio.sleep(0.01)
        assert not closing.done()  # the admitted call is still running
        with pytest.raises(ShuttingDown, match="shutting down"), gate.admit():
            events.append("late admitted")
        release.set()
        await asyncio.wait_for(closing, 5)
        await first
        events.append("closed")
        return events

    assert asyncio.run(scenario()) == ["first admitted", "first done", "closed"]


def test_close_returns_at_once_when_no_call_runs() -> None:
    async def scenario() -> None:
        gate = Gate()
        with gate.admit():
            pass
        await asyncio.wait_for(gate.close(), 1)

    asyncio.run(scenario())
