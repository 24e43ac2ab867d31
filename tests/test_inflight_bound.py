"""The transport's bound on requests in flight (``_http._Bound``): asyncio.Semaphore's contract
with a free path that makes no coroutine."""

from __future__ import annotations

import asyncio

from lipsync_async._http import _Bound


async def _hold(bound: _Bound, started: list[int], i: int, release: asyncio.Event) -> None:
    async with bound:
        started.append(i)
        await release.wait()


async def test_at_most_size_inside_and_first_come_first_served() -> None:
    """No more than ``size`` holders at once; waiters get the slot in arrival order."""
    bound = _Bound(2)
    release = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(_hold(bound, started, i, release)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert started == [0, 1]
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    assert started == [0, 1, 2, 3, 4, 5]
    async with bound:  # every slot came back
        async with bound:
            pass


async def test_a_cancelled_waiter_leaves_no_hole() -> None:
    """A waiter cancelled while it waits leaves the queue; one cancelled after it was handed the
    slot hands it on: either way the bound keeps its size and nobody waits forever."""
    bound = _Bound(1)
    gate = asyncio.Event()
    gate.set()
    started: list[int] = []
    await bound.__aenter__()  # this test holds the slot
    waiting = asyncio.create_task(_hold(bound, started, 1, gate))
    handed = asyncio.create_task(_hold(bound, started, 2, gate))
    last = asyncio.create_task(_hold(bound, started, 3, gate))
    await asyncio.sleep(0.01)
    waiting.cancel()  # cancelled in the queue
    await asyncio.sleep(0)
    await bound.__aexit__(None, None, None)  # the slot goes to `handed` (no yield here)...
    handed.cancel()  # ...cancelled before it runs: the slot must go on to `last`
    await asyncio.wait_for(last, 5.0)
    assert started == [3]
    assert waiting.cancelled() and handed.cancelled()
    async with bound:
        pass
