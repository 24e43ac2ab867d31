"""``on_complete`` when the store fails or another claimant holds the job, on a virtual clock.

The promises of ``lipsync_async/_complete.py``'s docstring that mutation testing found
unguarded (benchmarks/RESULTS.md, "Mutation testing of the job lifecycle", "Real gaps left"):
a store outage delays the callback and never drops it; a claim held by another live claimant
is tried again every ``claim_retry`` seconds; one WARNING per outage and one INFO when the
store answers again; close() leaves what it cannot settle for the next run, releases the
claims of callbacks it cut short, tries owed acknowledgements again, and leaves no task behind.

Public names only: a ``LipsyncClient`` against the emulator over loopback sockets, on
``tests/_vclock.py``'s loop, with ``FlakyStore``: a :class:`Store` that keeps everything in a
``MemoryStore`` and fails (``StoreError``) or hangs on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import pytest

from lipsync_async import Job, JobState, LipsyncClient
from lipsync_async.stores import (
    CLAIM_DONE,
    CLAIM_HELD,
    MemoryStore,
    PendingRecord,
    Store,
    StoreError,
)
from lipsync_async.testing import FakeLipsyncServer

from ._vclock import VirtualLoop, run
from ._waiting import until

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"
RETRY = 5.0  # the store's claim_retry, in virtual seconds
POLL = 1.0  # the client's poll_interval: a job the emulator finished ends within it


class FlakyStore(Store):
    """A ``MemoryStore`` behind the :class:`Store` interface that fails on cue.

    ``down``: every call fails. ``fail(method, k)``: the next ``k`` calls of ``method`` fail.
    ``hang(method)``: its calls wait until ``unhang()``. ``calls`` logs (method, job id, time).
    """

    def __init__(self, *, claim_retry: float = RETRY) -> None:
        super().__init__()
        self.inner = MemoryStore()
        self.claim_retry = claim_retry
        self.down = False
        self.calls: list[tuple[str, str, float]] = []
        self._failures: dict[str, int] = {}
        self._hung: dict[str, asyncio.Event] = {}

    def fail(self, method: str, times: int) -> None:
        self._failures[method] = times

    def hang(self, method: str) -> None:
        self._hung[method] = asyncio.Event()

    def unhang(self) -> None:
        for event in self._hung.values():
            event.set()
        self._hung.clear()

    def times(self, method: str, job_id: str) -> list[float]:
        return [t for m, j, t in self.calls if m == method and j == job_id]

    async def _gate(self, method: str, job_id: str = "") -> None:
        self.calls.append((method, job_id, asyncio.get_running_loop().time()))
        hung = self._hung.get(method)
        if hung is not None:
            await hung.wait()
        if self.down:
            raise StoreError(f"{method}: the store is down (scripted)")
        left = self._failures.get(method, 0)
        if left:
            self._failures[method] = left - 1
            raise StoreError(f"{method}: scripted failure")

    async def add_pending(self, record: PendingRecord) -> JobState | None:
        await self._gate("add_pending", record.id)
        return await self.inner.add_pending(record)

    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        await self._gate("pending")
        return await self.inner.pending()

    async def record_final(self, state: JobState) -> bool:
        await self._gate("record_final", state.id)
        return await self.inner.record_final(state)

    async def finish(self, states: Sequence[JobState], dropped: Iterable[str] = ()) -> None:
        await self._gate("finish")
        await self.inner.finish(states, dropped)

    async def finals(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        await self._gate("finals")
        return await self.inner.finals(job_ids)

    async def claim(self, job_id: str, claimant: str = "") -> int:
        await self._gate("claim", job_id)
        return await self.inner.claim(job_id, claimant)

    async def ack(self, job_id: str, token: int) -> bool:
        await self._gate("ack", job_id)
        return await self.inner.ack(job_id, token)

    async def release(self, job_id: str, token: int) -> None:
        await self._gate("release", job_id)
        await self.inner.release(job_id, token)

    async def pending_ids(self) -> list[str]:
        """The pending records, read past the failures (what the test checks)."""
        return [record.id for record, _ in await self.inner.pending()]


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[FakeLipsyncServer]:
    """Jobs that end only when the test finishes them."""
    async with FakeLipsyncServer(job_duration=10**6, seed=1) as fake:
        yield fake


def client_of(
    fake: FakeLipsyncServer, store: Store, fn: Callable[[Job], object], **kwargs: Any
) -> LipsyncClient:
    kwargs.setdefault("poll_interval", POLL)
    return LipsyncClient(
        fake.api_key, base_url=fake.base_url, store=store, on_complete=fn, **kwargs
    )


async def ended(fake: FakeLipsyncServer, job: Job) -> None:
    """Finish ``job`` at the service and wait until the client has seen it end."""
    fake.complete_job(job.id)
    async with asyncio.timeout(60):
        await job.wait()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def recoveries_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "answers again" in r.getMessage()
    ]


def test_a_claim_failing_fewer_times_than_the_quick_attempts_runs_fn_once_without_warning(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Two failed claims of three quick attempts: the third, 0.1 s then 0.2 s later, takes the
    claim and fn runs at once (long before claim_retry), once; a blip is no outage: nothing
    at WARNING and no "answers again"."""
    ran: list[tuple[str, float]] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with (
            emulator() as fake,
            client_of(fake, store, lambda j: ran.append((j.id, vloop.time()))) as client,
        ):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            store.fail("claim", 2)
            await ended(fake, job)
            await asyncio.sleep(4 * RETRY)
            claims = store.times("claim", job.id)
            assert len(claims) == 3
            assert [b - a for a, b in itertools.pairwise(claims)] == pytest.approx([0.1, 0.2])
            assert [t for _, t in ran] == [pytest.approx(claims[-1])]
            assert await store.pending_ids() == []
            return job.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        job_id = run(vloop, scenario)
    assert [i for i, _ in ran] == [job_id]
    assert warnings_of(caplog) == []
    assert recoveries_of(caplog) == []


def test_a_claim_failing_every_quick_attempt_is_retried_after_claim_retry_and_runs_fn_once(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Three failed claims (every quick attempt): fn waits, one WARNING says so; claim_retry
    seconds later the claim is tried again, taken, fn runs once, the INFO says the store
    answers again, and the job's pending record is dropped."""
    ran: list[tuple[str, float]] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with (
            emulator() as fake,
            client_of(fake, store, lambda j: ran.append((j.id, vloop.time()))) as client,
        ):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            store.fail("claim", 3)
            await ended(fake, job)
            await asyncio.sleep(RETRY / 2)
            assert ran == [] and len(store.times("claim", job.id)) == 3
            assert await store.pending_ids() == [job.id]
            await asyncio.sleep(4 * RETRY)
            claims = store.times("claim", job.id)
            assert len(claims) == 4 and claims[3] - claims[2] == pytest.approx(RETRY)
            assert [t for _, t in ran] == [pytest.approx(claims[3])]
            assert await store.pending_ids() == []
            return job.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        job_id = run(vloop, scenario)
    assert [i for i, _ in ran] == [job_id]
    (warning,) = warnings_of(caplog)
    assert warning.startswith("the store is failing (cannot claim the completion of job")
    assert len(recoveries_of(caplog)) == 1


def test_an_outage_over_many_jobs_warns_once_recovers_once_and_runs_each_fn_once(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Twelve jobs end while the store is down for a minute: no fn runs, one WARNING in all
    (not one per job or per retry); the store comes back: one INFO, every job's fn runs once,
    no record stays pending. A second outage later is warned and recovered again."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> list[str]:
        async with emulator() as fake, client_of(fake, store, lambda j: ran.append(j.id)) as client:
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(13)]
            last = jobs.pop()
            store.down = True
            for job in jobs:
                await ended(fake, job)
            await asyncio.sleep(60)
            assert ran == []
            assert len(warnings_of(caplog)) == 1 and recoveries_of(caplog) == []
            store.down = False
            await asyncio.sleep(RETRY + 1)
            assert sorted(ran) == sorted(j.id for j in jobs)
            assert len(recoveries_of(caplog)) == 1
            assert await store.pending_ids() == [last.id]
            # A second outage, after the first was over: warned and recovered again.
            store.down = True
            await ended(fake, last)
            await asyncio.sleep(3 * RETRY)
            assert len(ran) == len(jobs) and len(warnings_of(caplog)) == 2
            store.down = False
            await asyncio.sleep(RETRY + 1)
            assert ran[-1] == last.id and len(recoveries_of(caplog)) == 2
            assert await store.pending_ids() == []
            return [j.id for j in [*jobs, last]]

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        ids = run(vloop, scenario)
    assert sorted(ran) == sorted(ids) and len(ran) == 13
    assert all(w.startswith("the store is failing") for w in warnings_of(caplog))


def test_an_ack_that_fails_is_retried_and_fn_is_not_run_again(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """fn ran, its acknowledgement fails every quick attempt: fn is not run again; the ack
    alone is tried again after claim_retry (no second claim), the claim is then done and the
    pending record dropped. One WARNING, one INFO."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with emulator() as fake, client_of(fake, store, lambda j: ran.append(j.id)) as client:
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            store.fail("ack", 3)
            await ended(fake, job)
            await asyncio.sleep(RETRY / 2)
            assert ran == [job.id] and len(store.times("ack", job.id)) == 3
            assert await store.pending_ids() == [job.id]
            await asyncio.sleep(4 * RETRY)
            acks = store.times("ack", job.id)
            assert len(acks) == 4 and acks[3] - acks[2] == pytest.approx(RETRY)
            assert len(store.times("claim", job.id)) == 1
            assert await store.claim(job.id, "someone else") == CLAIM_DONE
            assert await store.pending_ids() == []
            return job.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        job_id = run(vloop, scenario)
    assert ran == [job_id]
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"the store is failing (on_complete ran for job {job_id!r} but")
    assert len(recoveries_of(caplog)) == 1


def test_a_claim_held_elsewhere_waits_and_once_acked_there_fn_never_runs_here(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Another claimant holds the job's claim: fn waits, the claim is tried again every
    claim_retry seconds and the pending record kept; that claimant acknowledges: fn never
    runs here, and the record is dropped. A held claim is no outage: nothing is logged."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with emulator() as fake, client_of(fake, store, lambda j: ran.append(j.id)) as client:
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            token = await store.claim(job.id, "another worker")
            assert token not in (CLAIM_HELD, CLAIM_DONE)
            await ended(fake, job)
            await until(lambda: len(store.times("claim", job.id)) == 2)
            first = store.times("claim", job.id)[1]
            await asyncio.sleep(3 * RETRY + RETRY / 2)
            claims = store.times("claim", job.id)[1:]
            assert [t - first for t in claims] == pytest.approx([0, RETRY, 2 * RETRY, 3 * RETRY])
            assert ran == [] and await store.pending_ids() == [job.id]
            assert await store.ack(job.id, token)
            await asyncio.sleep(RETRY)
            assert await store.pending_ids() == []
            await asyncio.sleep(3 * RETRY)
            assert len(store.times("claim", job.id)) == len(claims) + 2  # then no more
            return job.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        run(vloop, scenario)
    assert ran == []
    assert warnings_of(caplog) == [] and recoveries_of(caplog) == []


def test_a_claim_held_elsewhere_and_released_there_runs_fn_here_once(
    vloop: VirtualLoop,
) -> None:
    """Another claimant holds the job's claim, then releases it (its callback did not run to
    the end): the next retry here claims it and fn runs once; the claim is then done."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with emulator() as fake, client_of(fake, store, lambda j: ran.append(j.id)) as client:
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            token = await store.claim(job.id, "another worker")
            await ended(fake, job)
            await asyncio.sleep(2 * RETRY)
            assert ran == []
            await store.release(job.id, token)
            await asyncio.sleep(RETRY)
            assert ran == [job.id]
            await asyncio.sleep(3 * RETRY)
            assert await store.claim(job.id, "another worker") == CLAIM_DONE
            assert await store.pending_ids() == []
            return job.id

    job_id = run(vloop, scenario)
    assert ran == [job_id]


@pytest.mark.parametrize("back", [False, True], ids=["still-down", "back-before-the-retry"])
def test_close_while_a_claim_waits_on_the_store_leaves_the_job_to_the_next_client(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture, back: bool
) -> None:
    """A job ends while the store is down, and the client closes while its claim waits for
    the next retry (the store still down, or back but not yet tried again): close is quick,
    runs no fn and makes no store call, and nothing of the client runs on after it; the claim
    is not done and the record stays pending. The next client on the same store resumes the
    job and runs fn once."""
    first_ran: list[str] = []
    next_ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with emulator() as fake:
            first = client_of(fake, store, lambda j: first_ran.append(j.id), close_timeout=2.0)
            async with first:
                job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
                store.down = True
                await ended(fake, job)
                await asyncio.sleep(2 * RETRY + RETRY / 2)  # the next retry is 2.8 s away
                store.down = not back
                began = vloop.time()
            assert vloop.time() - began < 0.5
            assert [c for c in store.calls if c[2] >= began] == []
            await asyncio.sleep(4 * RETRY)
            store.down = False
            await asyncio.sleep(4 * RETRY)
            assert first_ran == [] and await store.pending_ids() == [job.id]
            async with client_of(fake, store, lambda j: next_ran.append(j.id)) as again:
                (resumed,) = await again.pending()
                assert resumed.id == job.id
                await until(lambda: next_ran != [], timeout=3 * POLL)
                await asyncio.sleep(3 * RETRY)
                assert await store.pending_ids() == []
            return job.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        job_id = run(vloop, scenario)
    assert first_ran == [] and next_ran == [job_id]
    (warning,) = warnings_of(caplog)
    assert warning.startswith("the store is failing (cannot claim the completion of job")


def test_close_releases_the_claim_of_a_callback_it_cuts_short(vloop: VirtualLoop) -> None:
    """fn still runs when close_timeout is over: close cancels it and releases its claim, so
    the next client of the same store claims the job at once (no claim_retry wait) and runs
    fn there, once."""
    cut: list[str] = []
    next_ran: list[tuple[str, float]] = []
    store = FlakyStore()

    async def stuck(job: Job) -> None:
        cut.append(job.id)
        await asyncio.sleep(3600)

    async def scenario() -> str:
        async with emulator() as fake:
            async with client_of(fake, store, stuck, close_timeout=2.0) as first:
                job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
                await ended(fake, job)
                await until(lambda: cut != [])
            assert await store.pending_ids() == [job.id]
            async with client_of(
                fake, store, lambda j: next_ran.append((j.id, vloop.time()))
            ) as again:
                began = vloop.time()
                await again.pending()
                await until(lambda: next_ran != [], timeout=3 * POLL)
                assert next_ran[0][1] - began <= POLL + 0.5
            return job.id

    job_id = run(vloop, scenario)
    assert cut == [job_id] and [i for i, _ in next_ran] == [job_id]


def test_close_waits_for_the_callbacks_it_cancels_to_unwind(vloop: VirtualLoop) -> None:
    """A callback cancelled by close (past close_timeout) that cleans up on its way out is
    waited for: close returns only once it has unwound."""
    steps: list[str] = []
    store = FlakyStore()

    async def tidy(job: Job) -> None:
        steps.append("started")
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(1.0)  # its own cleanup, not cut short a second time
            steps.append("cleaned up")

    async def scenario() -> None:
        async with emulator() as fake:
            async with client_of(fake, store, tidy, close_timeout=2.0) as client:
                job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                await ended(fake, job)
                await until(lambda: steps != [])
            assert steps == ["started", "cleaned up"]

    run(vloop, scenario)


def test_close_tries_an_owed_ack_again_and_never_reruns_fn(vloop: VirtualLoop) -> None:
    """fn ran but its ack failed every quick attempt; the store is back when the client
    closes before claim_retry is over: close acknowledges the claim (done), so neither this
    client's next run nor anyone else runs fn again. Only that ack: a job acknowledged
    earlier is not acknowledged again."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> list[str]:
        async with emulator() as fake:
            async with client_of(fake, store, lambda j: ran.append(j.id)) as client:
                done = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                await ended(fake, done)
                await until(lambda: len(store.times("ack", done.id)) == 1)
                job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                store.fail("ack", 3)
                await ended(fake, job)
                await until(lambda: len(store.times("ack", job.id)) == 3)
            assert len(store.times("ack", job.id)) == 4
            assert len(store.times("ack", done.id)) == 1
            assert await store.claim(job.id, "someone else") == CLAIM_DONE
            return [done.id, job.id]

    ids = run(vloop, scenario)
    assert ran == ids


def test_close_leaves_no_task_behind(vloop: VirtualLoop) -> None:
    """Closed with a held claim waiting for its retry, a claim in its quick retries against
    a failing store and a callback past close_timeout: once the client and the emulator are
    closed, no task is left but the test's own, and no fn runs afterwards."""
    ran: list[str] = []
    store = FlakyStore()

    async def fn(job: Job) -> None:
        ran.append(job.id)
        if len(ran) == 1:
            await asyncio.sleep(3600)

    async def scenario() -> None:
        async with emulator() as fake:
            async with client_of(fake, store, fn, close_timeout=1.0) as client:
                held, stuck, failing = [
                    await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)
                ]
                await store.claim(held.id, "another worker")
                await ended(fake, held)
                await ended(fake, stuck)
                await until(lambda: ran == [stuck.id])
                await ended(fake, failing)
                store.down = True  # the claim of `failing` is in its quick retries now
            store.down = False
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await asyncio.sleep(10 * RETRY)
        assert ran == [stuck.id]

    run(vloop, scenario)


def test_close_gives_up_on_a_hanging_store_after_close_timeout(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """fn ran, its ack is owed, and the store hangs when close tries it again: close gives
    up after close_timeout with a WARNING that the claims could not be settled, and returns;
    fn is not run again."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> None:
        async with emulator() as fake:
            async with client_of(
                fake, store, lambda j: ran.append(j.id), close_timeout=2.0
            ) as client:
                job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                store.fail("ack", 3)
                await ended(fake, job)
                await until(lambda: len(store.times("ack", job.id)) == 3)
                store.hang("ack")
                began = vloop.time()
            assert vloop.time() - began == pytest.approx(2.0, abs=0.5)
            assert len(store.times("ack", job.id)) == 4
            store.unhang()
        assert ran == [job.id]

    with caplog.at_level(logging.WARNING, logger="lipsync_async"):
        run(vloop, scenario)
    assert warnings_of(caplog)[-1].startswith(
        "closing: on_complete claims could not be settled in the store"
    )


def test_an_ack_failing_while_close_waits_is_tried_again_by_close(vloop: VirtualLoop) -> None:
    """fn still runs when close begins and returns within close_timeout; its ack then fails
    every quick attempt, the store answering again by the time close settles the claims:
    close acknowledges it like any owed ack, so the next client on the same store finds the
    claim done, drops the job's record and runs fn nowhere again."""
    ran: list[str] = []
    store = FlakyStore()

    async def slow(job: Job) -> None:
        ran.append(job.id)
        await asyncio.sleep(1.0)

    async def scenario() -> str:
        async with emulator() as fake:
            async with client_of(fake, store, slow, close_timeout=5.0) as first:
                job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
                await ended(fake, job)
                await until(lambda: ran != [])
                store.fail("ack", 3)  # the ack's quick attempts all fail, during the close
            assert len(store.times("ack", job.id)) == 4
            assert await store.claim(job.id, "someone else") == CLAIM_DONE
            async with client_of(fake, store, lambda j: ran.append(j.id)) as again:
                await again.pending()
                await asyncio.sleep(2 * RETRY)
                assert await store.pending_ids() == []
            return job.id

    job_id = run(vloop, scenario)
    assert ran == [job_id]


def test_an_ack_cut_off_by_close_is_tried_again_by_close(vloop: VirtualLoop) -> None:
    """fn returned but the store has not answered its ack when close_timeout is over: close
    cancels the worker and still acknowledges the claim once the store answers (within
    close's own close_timeout), so the claim is done and fn runs nowhere again."""
    ran: list[str] = []
    store = FlakyStore()

    async def scenario() -> str:
        async with emulator() as fake:
            async with client_of(
                fake, store, lambda j: ran.append(j.id), close_timeout=2.0
            ) as first:
                job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
                store.hang("ack")
                await ended(fake, job)
                await until(lambda: len(store.times("ack", job.id)) == 1)
                asyncio.get_running_loop().call_later(2.5, store.unhang)  # during close
            assert len(store.times("ack", job.id)) == 2
            assert await store.claim(job.id, "someone else") == CLAIM_DONE
            return job.id

    job_id = run(vloop, scenario)
    assert ran == [job_id]


def test_two_clients_on_one_store_observing_one_job_run_fn_once(vloop: VirtualLoop) -> None:
    """Two clients share a store (two workers of one machine, say) and both poll the same job:
    its end is observed twice, and the claim makes fn run once in all. fn takes a while, so
    the second observation comes while the first holds the claim: each client claims under
    its own claimant, and were they the same, the second would get the first's token back and
    run fn too."""
    ran: list[tuple[str, str]] = []
    store = MemoryStore()

    def slow(name: str) -> Callable[[Job], Awaitable[None]]:
        async def fn(job: Job) -> None:
            ran.append((name, job.id))
            await asyncio.sleep(3 * POLL)

        return fn

    async def scenario() -> str:
        async with (
            emulator() as fake,
            client_of(fake, store, slow("a")) as first,
            client_of(fake, store, slow("b")) as second,
        ):
            job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
            twin = second.job(job.id)
            waits = asyncio.gather(job.wait(), twin.wait())
            fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await waits
            await asyncio.sleep(6 * POLL)
            assert job.state is not None and job.state == twin.state
            assert job.state.status == "completed"
            return job.id

    job_id = run(vloop, scenario)
    assert [i for _, i in ran] == [job_id], ran


def test_a_client_reopened_after_closing_in_an_outage_warns_of_its_own_next_outage(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING per outage holds per opening: a client closed while the store was down and
    opened again (the store back meanwhile) warns when the store fails under it again, and
    says the store answers again only once it has seen it fail. (Its "the store is down"
    state once outlived the close: the second outage went unwarned, as mutmut's surviving
    mutant of ``open()`` showed.)"""
    ran: list[str] = []
    store = FlakyStore()

    def failing() -> list[str]:
        return [w for w in warnings_of(caplog) if w.startswith("the store is failing")]

    async def scenario() -> str:
        async with emulator() as fake:
            client = client_of(fake, store, lambda j: ran.append(j.id), close_timeout=1.0)
            async with client:
                first = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                store.down = True
                await ended(fake, first)
                await asyncio.sleep(RETRY / 2)
                assert len(failing()) == 1
            store.down = False
            async with client:
                assert recoveries_of(caplog) == []
                second = await client.lipsync_image(image=IMAGE, audio=AUDIO)
                await asyncio.sleep(RETRY)  # the store answered the submit: no "again" yet
                assert recoveries_of(caplog) == []
                store.down = True
                await ended(fake, second)
                await asyncio.sleep(RETRY / 2)
                assert len(failing()) == 2
                store.down = False
                await asyncio.sleep(2 * RETRY)
                assert len(recoveries_of(caplog)) == 1
                assert await store.pending_ids() == [first.id]  # left for a resume
            return second.id

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        second_id = run(vloop, scenario)
    assert ran == [second_id]
