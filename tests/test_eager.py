"""Eager execution: coroutines that never wait run without a task; ones that wait are resumed faithfully."""

from __future__ import annotations

import asyncio

import pytest

from streams import eager


async def no_wait(x: int) -> int:
    return x * 2


async def waits(steps: list[str]) -> str:
    steps.append("before")
    await asyncio.sleep(0.01)
    steps.append("after sleep")
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, fut.set_result, "value")
    result = await fut
    steps.append("after future")
    return result


def test_a_coroutine_that_never_waits_finishes_in_start() -> None:
    async def run() -> tuple[bool, object]:
        return eager.start(no_wait(21))

    assert asyncio.run(run()) == (True, 42)


def test_a_waiting_coroutine_is_resumed_where_it_stopped() -> None:
    async def run() -> tuple[bool, list[str], str]:
        steps: list[str] = []
        done, rest = eager.start(waits(steps))
        assert steps == ["before"]
        assert isinstance(rest, eager.Resume)
        result = await asyncio.create_task(_await(rest))
        return done, steps, result

    done, steps, result = asyncio.run(run())
    assert not done
    assert steps == ["before", "after sleep", "after future"]
    assert result == "value"


async def _await(rest: eager.Resume[str]) -> str:
    return await rest


def test_exceptions_propagate_from_start_and_from_resume() -> None:
    async def fails_now() -> None:
        raise ValueError("now")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    async def run() -> None:
        with pytest.raises(ValueError):
            eager.start(fails_now())
        _, rest = eager.start(fails_later())
        assert isinstance(rest, eager.Resume)
        with pytest.raises(KeyError):
            await rest

    asyncio.run(run())


def test_a_timeout_reaches_the_waiting_coroutine() -> None:
    async def run() -> list[str]:
        seen: list[str] = []

        async def slow() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancelled inside")
                raise

        _, rest = eager.start(slow())
        assert isinstance(rest, eager.Resume)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await rest
        return seen

    assert asyncio.run(run()) == ["cancelled inside"]


def test_cancel_interrupts_the_coroutine_where_it_waits_in_the_task_that_awaits_it() -> None:
    async def run() -> list[str]:
        seen: list[str] = []

        async def waits(name: str, bare: bool) -> None:
            try:
                while True:
                    await (asyncio.sleep(0) if bare else asyncio.sleep(3600))
            except asyncio.CancelledError:
                seen.append(f"{name} cancelled inside")
                raise

        for name, bare in (("on a future", False), ("on bare yields", True)):
            _, rest = eager.start(waits(name, bare))
            assert isinstance(rest, eager.Resume)
            task = asyncio.create_task(_await_none(rest))  # continues in another task than the one that started it
            await asyncio.sleep(0.01)
            rest.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return seen

    assert asyncio.run(run()) == ["on a future cancelled inside", "on bare yields cancelled inside"]


async def _await_none(rest: eager.Resume[None]) -> None:
    await rest
