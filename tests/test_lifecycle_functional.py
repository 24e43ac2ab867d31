"""Closing under pressure: cancelled closes, submits racing a close, listeners, duplicates."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from lipsync_async import (
    ClientClosedError,
    Job,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    SubmissionUncertainError,
    WebhookReceiver,
)
from lipsync_async.stores import MemoryStore
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from ._waiting import until
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
    await until(lambda: fake.requests["GET /jobs"] >= 10, what="reads in flight")
    session = client._transport.session
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)  # close has started and is awaiting its tasks
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(LipsyncError, match="closed"):
        await asyncio.wait_for(waiter, 2)
    assert all(job.done() for job in jobs)
    assert session.closed


async def test_close_lets_sent_submits_answer_and_refuses_unsent_ones() -> None:
    """close() waits (up to close_timeout) for a submit already sent, so it becomes a Job rather
    than a SubmissionUncertainError; submits still waiting their turn raise ClientClosedError
    (nothing was sent, job_id None); the Job ends with ClientClosedError naming its id."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"id": "x-1", "status": "processing"})

    async with RawServer(slow) as srv:
        client = LipsyncClient("sk_x", base_url=srv.base_url, max_in_flight=1)
        await client.__aenter__()
        submits = [
            asyncio.create_task(client.lipsync_image(image=IMAGE, audio=AUDIO)) for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        await client.close()
        results = await asyncio.gather(*submits, return_exceptions=True)
    jobs = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, ClientClosedError)]
    assert len(jobs) == 1 and len(refused) == 2, results
    assert all(r.job_id is None and "nothing was submitted" in str(r) for r in refused)
    assert len(srv.hits) == 1
    assert jobs[0].id == "x-1" and jobs[0].done()
    with pytest.raises(ClientClosedError, match="x-1") as info:
        await jobs[0]
    assert info.value.job_id == "x-1"


async def test_close_timeout_bounds_the_wait_for_sent_submits() -> None:
    """A submit that stays unanswered past close_timeout becomes SubmissionUncertainError and
    close() returns after about close_timeout, not after the server's delay."""

    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"id": "never", "status": "processing"})

    async with RawServer(stuck) as srv:
        client = LipsyncClient("sk_x", base_url=srv.base_url, close_timeout=0.2)
        await client.__aenter__()
        submit = asyncio.create_task(client.lipsync_image(image=IMAGE, audio=AUDIO))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.close()
        took = loop.time() - started
        with pytest.raises(SubmissionUncertainError):
            await submit
    assert took < 2.0


async def test_submit_after_close_began_is_refused(make_client: ClientFactory) -> None:
    """A submit started after close() began raises ClientClosedError before any request."""
    client = await make_client()
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)
    with pytest.raises((ClientClosedError, RuntimeError)):
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    await closing


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
    receiver = WebhookReceiver()
    client = await make_client(store=MemoryStore(), webhook=receiver)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(30))
    )
    states = await asyncio.gather(*(j.wait(5) for j in jobs))
    await asyncio.sleep(0.05)  # the store's announcements come back
    assert {s.status for s in states} == {JobStatus.COMPLETED}
    async with aiohttp.ClientSession() as http:
        for state in states[:3]:  # the service delivering again, as it may
            async with http.post(receiver.url, json=state.to_wire()) as answer:
                assert answer.status == 200
    assert client.stats["held_deliveries"] == 0
    assert client.stats["held_bytes"] == 0
