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


def test_the_stand_in_is_the_task_it_is_bound_to_for_cancel_requests_made_before_and_after() -> None:
    """A coroutine stepped as an EagerTask continues in another task: cancel requests made of the stand-in, before
    that task started or after, reach the coroutine where it waits (on a future or on bare yields), and the
    stand-in's count is that task's, whichever of the two was asked."""

    async def run() -> list[tuple[str, int]]:
        seen: list[tuple[str, int]] = []

        async def waits(name: str, bare: bool) -> None:
            try:
                while True:
                    await (asyncio.sleep(0) if bare else asyncio.sleep(3600))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                seen.append((name, task.cancelling()))
                raise

        for name, bare, early in (("future", False, False), ("bare yields", True, False), ("asked early", False, True)):
            stand_in = eager.EagerTask(name)
            _, rest = eager.start(waits(name, bare), stand_in)
            assert isinstance(rest, eager.Resume)

            async def continues(stand_in: eager.EagerTask = stand_in, rest: eager.Resume[None] = rest) -> None:
                task = asyncio.current_task()
                assert task is not None
                stand_in.bind(task)
                await rest

            if early:
                stand_in.cancel()  # before the task that continues it exists
            task = asyncio.create_task(continues())
            await asyncio.sleep(0.01)
            if not early:
                stand_in.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stand_in.cancelling() == task.cancelling() == 1
            assert stand_in.uncancel() == task.cancelling() == 0
        return seen

    assert asyncio.run(run()) == [("future", 1), ("bare yields", 1), ("asked early", 1)]


def test_while_it_is_stepped_the_stand_in_is_the_current_task_and_the_caller_is_current_again_after() -> None:
    async def run() -> tuple[object, object, object]:
        async def where() -> object:
            return asyncio.current_task()

        caller = asyncio.current_task()
        stand_in = eager.EagerTask("k")
        _, inside = eager.start(where(), stand_in)
        return inside, stand_in, asyncio.current_task() is caller

    inside, stand_in, caller_again = asyncio.run(run())
    assert inside is stand_in
    assert caller_again is True
