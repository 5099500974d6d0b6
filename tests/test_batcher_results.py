"""`batching.results`: a request's results from a real `Batcher`, in order, with one wake-up of
the event loop per request (not one per item), and a cancelled wait dropping its queued items."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.core.batching import Batcher, results
from tests.conftest import eventually


def counted_wakeups(loop: asyncio.AbstractEventLoop) -> list:
    """The loop's thread-safe wake-ups from now on (what a batcher thread costs the loop)."""
    calls, original = [], loop.call_soon_threadsafe

    def call_soon_threadsafe(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = call_soon_threadsafe
    return calls


def test_a_requests_results_come_in_order_with_one_wakeup_of_the_loop():
    batcher = Batcher(lambda items: [item * 10 for item in items], max_batch_size=8, workers=2)

    async def request():
        wakeups = counted_wakeups(asyncio.get_running_loop())
        values = await results(batcher.submit(list(range(50))))
        return values, len(wakeups)

    try:
        values, wakeups = asyncio.run(request())
    finally:
        batcher.close()
    assert values == [item * 10 for item in range(50)]
    assert wakeups == 1


def test_the_first_failure_in_order_is_raised_and_no_items_is_no_wait():
    batcher = Batcher(lambda items: [ValueError(item) if item % 3 == 2 else item for item in items], max_batch_size=4)

    async def request(items):
        return await results(batcher.submit(items))

    try:
        with pytest.raises(ValueError, match="^2$"):
            asyncio.run(request(list(range(10))))
        assert asyncio.run(request([])) == []
    finally:
        batcher.close()


def test_a_cancelled_wait_drops_its_items_still_queued():
    release, seen = threading.Event(), []

    def run_batch(items):
        seen.extend(items)
        release.wait(30)
        return items

    batcher = Batcher(run_batch, max_batch_size=1)
    running = batcher.submit(["running"])
    assert eventually(lambda: seen, 10)

    async def request_that_goes_away():
        queued = batcher.submit(["a", "b"])
        waiting = asyncio.create_task(results(queued))
        await asyncio.sleep(0)  # the task starts waiting
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return queued

    try:
        queued = asyncio.run(request_that_goes_away())
        release.set()
        assert running[0].result(10) == "running"
        assert all(future.cancelled() for future in queued)
    finally:
        batcher.close()
    assert seen == ["running"]
