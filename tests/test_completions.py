"""``on_complete`` across a client's lifecycle: bursts, reopening, closing mid-callback.

Found by review of the exactly-once machinery (``lipsync_async/_complete.py``); each test
failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lipsync_async import Job, JobState, JobStatus, LipsyncClient
from lipsync_async._complete import Completions
from lipsync_async.stores import CLAIM_DONE, CLAIM_HELD, MemoryStore, SQLiteStore
from lipsync_async.testing import FakeLipsyncServer

from ._waiting import until
from .conftest import AUDIO, IMAGE


class _Ended:
    """What ``Completions`` reads of a ``Job`` that ended: its id, state, cancelled()."""

    def __init__(self, i: int) -> None:
        self.id = f"job-{i}"
        self.state = JobState(id=self.id, status=JobStatus.COMPLETED, output="https://x/o.mp4")

    def cancelled(self) -> bool:
        return False


async def test_a_completion_queued_as_the_workers_exit_still_runs() -> None:
    """100 jobs end in one loop iteration, 10 more in the next, with a sync callback that
    never yields: the workers made for the first burst drain it and exit in one iteration,
    and the second burst still gets a worker (it once waited forever, with no warning)."""
    ran: list[str] = []
    completions = Completions(lambda job: ran.append(job.id), MemoryStore())
    completions.open()
    loop = asyncio.get_running_loop()
    for i in range(100):
        loop.call_soon(completions.job_done, _Ended(i))  # type: ignore[arg-type]

    def second_burst() -> None:
        for i in range(100, 110):
            loop.call_soon(completions.job_done, _Ended(i))  # type: ignore[arg-type]

    loop.call_soon(second_burst)
    await until(lambda: len(ran) == 110, timeout=2, what="all 110 callbacks")
    await completions.close(1.0)
    assert sorted(ran) == sorted(f"job-{i}" for i in range(110))


async def test_a_reopened_client_runs_on_complete_again(fake: FakeLipsyncServer) -> None:
    """A client closed and opened again completes the jobs of its second opening too (its
    callbacks once stayed off for good after the first close)."""
    ran: list[str] = []
    client = LipsyncClient(
        fake.api_key,
        base_url=fake.base_url,
        poll_interval=0.05,
        on_complete=lambda j: ran.append(j.id),
    )
    ids = []
    for _ in range(2):
        async with client:
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            await job.wait(5)
            ids.append(job.id)
            await until(lambda: len(ran) == len(ids), what="this opening's callback")
    assert ran == ids


async def test_a_callback_cut_short_by_close_leaves_no_claim_behind(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """A callback still running when its client closes is cancelled and its claim released:
    another client of this process, on the same SQLite file, claims and completes the job at
    once (the claim once stayed "held" by this live process for good)."""
    db = tmp_path / "jobs.db"
    started = asyncio.Event()

    async def stuck(job: Job) -> None:
        started.set()
        await asyncio.sleep(3600)

    first = LipsyncClient(
        fake.api_key,
        base_url=fake.base_url,
        poll_interval=0.05,
        store=SQLiteStore(db),
        on_complete=stuck,
        close_timeout=0.2,
    )
    async with first:
        job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
        await job.wait(5)
        await asyncio.wait_for(started.wait(), 5)
    other = SQLiteStore(db)
    await other.open()
    try:
        token = await other.claim(job.id, "someone else")
        assert token not in (CLAIM_HELD, CLAIM_DONE)
    finally:
        await other.close()


async def test_a_callback_raising_cancelled_error_is_a_failed_callback(
    fake: FakeLipsyncServer,
) -> None:
    """An async callback whose own await raised ``CancelledError`` (it awaited a cancelled
    job) counts as a failed callback: its claim is acknowledged and the next job's callback
    still runs (the worker once ended there, the claim left unacknowledged)."""
    store = MemoryStore()
    calls: list[str] = []

    async def fn(job: Job) -> None:
        calls.append(job.id)
        if len(calls) == 1:
            raise asyncio.CancelledError

    async with LipsyncClient(
        fake.api_key, base_url=fake.base_url, poll_interval=0.05, store=store, on_complete=fn
    ) as client:
        first = await client.lipsync_image(image=IMAGE, audio=AUDIO)
        await first.wait(5)
        await until(lambda: len(calls) == 1, what="the first callback")
        second = await client.lipsync_image(image=IMAGE, audio=AUDIO)
        await second.wait(5)
        await until(lambda: len(calls) == 2, what="the second callback")
        assert await store.claim(first.id, "someone else") == CLAIM_DONE


async def test_a_job_seen_ending_again_while_its_callback_runs_is_not_completed_twice(
    fake: FakeLipsyncServer,
) -> None:
    """A job attached again by id (``client.job``) after it ended, while its ``on_complete``
    still runs, ends a second time in this process: that second ending is dropped, not
    claimed again (this process's own claim would be handed back to it, and the callback
    would run twice)."""
    ran: list[str] = []
    release = asyncio.Event()

    async def slow(job: Job) -> None:
        ran.append(job.id)
        await release.wait()

    async with LipsyncClient(
        fake.api_key, base_url=fake.base_url, poll_interval=0.05, on_complete=slow
    ) as client:
        job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
        await job.wait(5)
        await until(lambda: len(ran) == 1, what="the first callback")
        again = client.job(job.id)
        assert again is not job  # the first one ended and was let go
        assert (await again.wait(5)).status is JobStatus.COMPLETED
        await asyncio.sleep(0.2)  # time for a second callback to start, if one were queued
        assert ran == [job.id]
        release.set()
        await until(lambda: client.stats["pending"] == 0, what="both ended")
    assert ran == [job.id]
