"""``LipsyncClient.submit_many`` against the emulator over loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from lipsync_async import (
    ClientClosedError,
    InsufficientCreditsError,
    Job,
    LipsyncClient,
    LipsyncError,
    LipsyncImageRequest,
    Request,
    ValidationError,
)
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory

SENDER = "lipsync-submit-many"


def senders() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == SENDER and not t.done()]


async def until_no_senders() -> None:
    """Wait (bounded) for the loop to finalise an abandoned iterator and end its senders."""
    async with asyncio.timeout(5.0):
        while senders():  # noqa: ASYNC110 - no event to wait on: the loop's finaliser ends them
            await asyncio.sleep(0)


async def test_outcomes_come_in_request_order_with_bad_items_in_place(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """One outcome per request, in input order, though 8 senders finish out of order; a bad
    item (not a request model, a local file without a receiver) is a ValidationError in its
    place and the others still go through."""
    client: LipsyncClient = await make_client()
    requests: list[object] = [
        LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=i) for i in range(120)
    ]
    requests[3] = {"image": IMAGE}
    face = tmp_path / "face.png"
    face.write_bytes(b"\x89PNG")
    requests[50] = LipsyncImageRequest(image=face, audio=AUDIO, seed=50)
    outcomes = [o async for o in client.submit_many(requests, concurrency=8)]  # type: ignore[arg-type]
    assert len(outcomes) == 120
    assert isinstance(outcomes[3], ValidationError)
    assert isinstance(outcomes[50], ValidationError)
    for i, outcome in enumerate(outcomes):
        if i in (3, 50):
            continue
        assert isinstance(outcome, Job)
        assert fake.jobs[outcome.id].form_state["seed"] == i
    jobs = [o for o in outcomes if isinstance(o, Job)]
    async for _ in client.as_completed(jobs, timeout=30.0):
        pass
    assert not senders()


async def test_refused_submits_are_reported_per_item() -> None:
    """The service refusing some submits (402, out of credits) yields the API error for those
    items, and the iterator goes on to the end; an async iterable of requests works too."""
    async with FakeLipsyncServer(job_duration=0.05, credits=30) as fake:  # 3 jobs of 10 credits
        async with LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.05) as c:

            async def requests() -> AsyncIterator[Request]:
                for i in range(5):
                    yield LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=i)

            outcomes = [o async for o in c.submit_many(requests(), concurrency=1)]
    assert [type(o) for o in outcomes[:3]] == [Job, Job, Job]
    assert all(isinstance(o, InsufficientCreditsError) for o in outcomes[3:])


async def test_early_break_leaves_no_task(make_client: ClientFactory) -> None:
    """Breaking out after the first outcome stops the senders: none is left once the loop has
    finalised the iterator, and at once with ``contextlib.aclosing``."""
    client: LipsyncClient = await make_client()
    requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(500)]
    async for outcome in client.submit_many(requests, concurrency=16):
        assert isinstance(outcome, Job)
        break
    await until_no_senders()
    async with contextlib.aclosing(client.submit_many(requests, concurrency=16)) as outcomes:
        async for _ in outcomes:
            break
    assert not senders()


async def test_cancelling_the_reader_ends_the_senders(make_client: ClientFactory) -> None:
    """Cancelling the task that iterates cancels the pool with it: no sender outlives it."""
    client: LipsyncClient = await make_client()
    started = asyncio.Event()

    async def consume() -> None:
        requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(10_000))
        async for _ in client.submit_many(requests, concurrency=16):
            started.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10.0):
        await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not senders()


async def test_a_closed_client_is_reported_per_item(make_client: ClientFactory) -> None:
    """Submits after close() began are ClientClosedError outcomes (nothing was sent), and the
    error of an item never aborts the iteration."""
    client: LipsyncClient = await make_client()
    requests: list[Request] = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(64)]
    outcomes: list[Job | LipsyncError] = []
    async for outcome in client.submit_many(requests, concurrency=4):
        outcomes.append(outcome)
        if len(outcomes) == 4:
            closing = asyncio.ensure_future(client.close())
    await closing
    assert len(outcomes) == 64
    assert any(isinstance(o, ClientClosedError) for o in outcomes)
    assert not senders()
