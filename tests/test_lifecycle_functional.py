"""Closing under pressure: cancelled closes, submits racing a close, listeners, duplicates."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from lipsync_async import (
    APIConnectionError,
    Job,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    SubmissionUncertainError,
)
from lipsync_async.stores import MemoryStore
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from .conftest import AUDIO, IMAGE, ClientFactory


async def test_cancelled_close_still_ends_waits_and_session(fake: FakeLipsyncServer) -> None:
    """A close() cancelled halfway still fails pending waits and closes the owned session."""
    fake.job_duration = 60
    client = LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.01)
    await client.__aenter__()
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(50))
    )
    waiter = asyncio.create_task(jobs[0].wait())
    await asyncio.sleep(0.05)  # reads in flight
    session = client._transport.session
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)  # close has started and is awaiting its tasks
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(LipsyncError, match="closed"):
        await asyncio.wait_for(waiter, 2)
    await asyncio.sleep(0.05)
    assert all(job.done() for job in jobs)
    assert session.closed


async def test_job_tracked_after_close_fails_instead_of_hanging(make_client: ClientFactory) -> None:
    """A submit answer that lands after close() began gives a Job that fails, never one that
    waits forever."""
    client = await make_client()
    tracker = client._tracker
    await tracker.close()
    late = Job("late-job", tracker)
    tracker.track(late, webhook=False)
    with pytest.raises(LipsyncError, match="closed"):
        await asyncio.wait_for(late.wait(), 1)
    attached = Job("attached-job", tracker)
    tracker.attach(attached)
    assert attached.done()


async def test_requests_queued_at_close_are_connection_errors() -> None:
    """Submits still waiting their turn when the client closes raise APIConnectionError
    (nothing was sent), the one in flight SubmissionUncertainError: never a bare RuntimeError."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.json_response({"id": "x", "status": "processing"})

    async with RawServer(slow) as srv:
        client = LipsyncClient("sk_x", base_url=srv.base_url, max_in_flight=1)
        await client.__aenter__()
        submits = [
            asyncio.create_task(client.lipsync_image(image=IMAGE, audio=AUDIO)) for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        await client.close()
        results = await asyncio.gather(*submits, return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["APIConnectionError", "APIConnectionError", "SubmissionUncertainError"]
    assert all(isinstance(r, APIConnectionError | SubmissionUncertainError) for r in results)
    assert len(srv.hits) == 1


async def test_closed_clients_leave_no_store_listener(fake: FakeLipsyncServer) -> None:
    """A store outliving its clients keeps no listener of a closed client."""
    store = MemoryStore()
    for _ in range(3):
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, store=store, poll_interval=0.05
        ) as client:
            assert len(store._listeners) == 1
            await (await client.lipsync_image(image=IMAGE, audio=AUDIO)).wait(5)
        assert store._listeners == []


async def test_duplicates_of_finished_jobs_skip_the_early_buffer(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A delivery (or a store's echo) for a job that just finished here is acknowledged as a
    duplicate, not parked in the early-delivery buffer."""
    client = await make_client(store=MemoryStore())
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(30))
    )
    states = await asyncio.gather(*(j.wait(5) for j in jobs))
    await asyncio.sleep(0.05)  # the store's announcements come back
    assert {s.status for s in states} == {JobStatus.COMPLETED}
    assert client._tracker.deliver(states[0]) is True
    assert len(client._tracker._early) == 0
