"""Every: a step on the loop at an interval; a failing step is logged and the next one runs."""

import asyncio
import logging

from mediaserver.periodic import Every
from tests.timing import MS


def test_steps_run_until_closed_and_a_failing_one_does_not_stop_them(caplog):
    async def scenario():
        ran: list[int] = []

        def step():
            ran.append(len(ran))
            if len(ran) == 2:
                raise RuntimeError("the second step fails")

        every = Every(0.01, step, name="test-step")
        every.start()
        every.start()  # idempotent: still one task
        while len(ran) < 4:
            await asyncio.sleep(0.01)
        await every.close()
        stopped_at = len(ran)
        await asyncio.sleep(0.05)
        assert len(ran) == stopped_at
        await every.close()  # idempotent

    with caplog.at_level(logging.ERROR, "mediaserver.periodic"):
        asyncio.run(asyncio.wait_for(scenario(), 5000 * MS))
    assert [r.getMessage() for r in caplog.records] == ["= test-step failed"]


def test_a_coroutine_step_is_awaited():
    async def scenario():
        done = asyncio.Event()

        async def step():
            await asyncio.sleep(0)
            done.set()

        every = Every(0.01, step, name="async-step")
        every.start()
        await asyncio.wait_for(done.wait(), 5000 * MS)
        await every.close()

    asyncio.run(scenario())
