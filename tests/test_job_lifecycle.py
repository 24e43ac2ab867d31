"""The job lifecycle's promises, on a virtual clock: every awaited job ends, exactly once, and
nothing of a finished job stays behind.

These drive the tracker (the scheduler) through the same calls the client and the receiver
make, with a scripted service at the transport boundary (``tests/_vclock.py``), and look at jobs
through their public API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import traceback
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lipsync_async import (
    APIError,
    ClientClosedError,
    Job,
    JobFailed,
    JobState,
    JobStatus,
    JobTimeoutError,
    LipsyncClient,
    LipsyncImageRequest,
    NotFoundError,
    WebhookReceiver,
)
from lipsync_async._tracker import Tracker
from lipsync_async.stores import MemoryStore
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from ._vclock import ScriptedService, Stranded, VirtualLoop, run
from ._waiting import until


def tracker_on(
    loop: VirtualLoop, service: ScriptedService, *, poll: float = 1.0, grace: float = 60.0
) -> Tracker:
    tracker = Tracker(service, poll_interval=poll, webhook_grace=grace, jitter=0.0)  # type: ignore[arg-type]
    run(loop, lambda: _start(tracker))
    return tracker


async def _start(tracker: Tracker) -> None:
    tracker.start()


def final(service: ScriptedService, job_id: str, *, failed: bool = False) -> JobState:
    data = service.finish(job_id, failed=failed)
    return JobState(
        id=job_id,
        status=JobStatus(data["status"]),
        model=data["model"],
        output=data["output"],
        error=data["error"],
        execution_time_ms=data["executionTime"],
    )


def test_a_read_ending_as_the_next_bucket_fires_strands_no_job() -> None:
    """Regression (issue 12): with one reader allowed, a bucket falling due between the step in
    which the reader saw the queue empty and the step in which it stopped being counted left
    that bucket's job queued with no reader, forever (the old scheduler counted a reader that
    had returned but whose done-callback had not run yet). Each loop turn here costs 1 ms of
    virtual time and the read's length sweeps the window, so one run lands the bucket exactly
    there; both jobs must end in every run."""
    for tenth_ms in range(300, 460, 2):
        loop = VirtualLoop(step=0.001)
        try:
            states = _two_jobs_one_reader(loop, tenth_ms / 10_000)
            assert [s.status for s in states] == [JobStatus.COMPLETED] * 2, tenth_ms
        finally:
            loop.close()


def _two_jobs_one_reader(loop: VirtualLoop, read: float) -> list[JobState]:
    service = ScriptedService(max_in_flight=1, read_delay=read)
    tracker = tracker_on(loop, service, poll=1.0, grace=1.04)

    async def scenario() -> list[JobState]:
        service.create("A")
        service.create("B")
        a = tracker.submitted("A", webhook=False)  # read from ~1.0 s, for `read` seconds
        b = tracker.submitted("B", webhook=True)  # due two ticks after A: as A's read ends
        final(service, "A")  # A's one read ends it: no later poll of A can rescue B
        await asyncio.sleep(1.2)
        final(service, "B")
        async with asyncio.timeout(30):  # a stranded job: nothing else would end this wait
            states = list(await asyncio.gather(a, b))
        await tracker.close()
        return states

    return run(loop, scenario)


def test_finished_jobs_are_released_while_their_fallback_is_far_away(vloop: VirtualLoop) -> None:
    """Regression (issue 12): 2,000 jobs resolved by delivery stayed referenced by their
    fallback bucket until the webhook grace (up to 720 s). Now nothing of the tracker's holds a
    finished job: every weakref dies at once, long before the grace."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service, grace=600.0)

    async def scenario() -> list[weakref.ref[Job]]:
        refs = []
        for i in range(2000):
            service.create(f"j{i}")
            job = tracker.submitted(f"j{i}", webhook=True)
            refs.append(weakref.ref(job))
        del job
        for i in range(2000):
            assert tracker.deliver(final(service, f"j{i}")) is True
        await asyncio.sleep(1.0)
        return refs

    refs = run(vloop, scenario)
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    assert tracker.pending == 0 and service.reads == []
    run(vloop, tracker.close)


def test_reawaiting_a_failed_job_raises_a_fresh_traceback_each_time(vloop: VirtualLoop) -> None:
    """Regression (issue 12): `raise self._error` grew the traceback with every await (600
    frames after 200). Each await now raises with a traceback of its own length."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service)

    async def scenario() -> list[int]:
        service.create("F")
        job = tracker.submitted("F", webhook=True)
        tracker.deliver(final(service, "F", failed=True))
        depths = []
        for _ in range(200):
            try:
                await job
            except JobFailed as exc:
                assert exc.state.error == "scripted failure"
                depths.append(len(traceback.extract_tb(exc.__traceback__)))
        return depths

    depths = run(vloop, scenario)
    assert len(depths) == 200 and len(set(depths)) == 1 and depths[0] <= 10
    run(vloop, tracker.close)


def test_a_refused_read_ends_the_job_and_its_error_is_raised_fresh(vloop: VirtualLoop) -> None:
    """A 404 on a status read ends the job with NotFoundError; raising it twice does not chain
    the tracebacks."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service)

    async def scenario() -> tuple[int, int]:
        job = tracker.attach("ghost")
        depths = []
        for _ in range(2):
            with pytest.raises(NotFoundError) as info:
                await job
            depths.append(len(traceback.extract_tb(info.value.__traceback__)))
        assert job.done() and isinstance(job.exception(), NotFoundError)
        return depths[0], depths[1]

    first, second = run(vloop, scenario)
    assert first == second
    run(vloop, tracker.close)


def test_done_callbacks_run_once_each_in_order_whatever_ends_the_job(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """add_done_callback: many subscribers, each called once with the job, in the order added,
    soon after the end; one that raises is logged and the others still run; one added after
    the end is scheduled at once; remove_done_callback removes every registration."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service)
    calls: list[tuple[str, str]] = []

    def boom(job: Job) -> None:
        raise ValueError("subscriber bug")

    async def scenario() -> None:
        endings: dict[str, Callable[[Job], Any]] = {
            "delivered": lambda j: tracker.deliver(final(service, j.id)),
            "cancelled": lambda j: j.cancel(),
            "refused": lambda j: tracker.refuse(j, NotFoundError("x", status=404)),
        }
        for name, end in endings.items():
            service.create(name)
            job = tracker.submitted(name, webhook=True)
            job.add_done_callback(lambda j: calls.append(("first", j.id)))
            job.add_done_callback(boom)
            job.add_done_callback(lambda j: calls.append(("second", j.id)))
            job.add_done_callback(boom)
            assert job.remove_done_callback(boom) == 2  # both registrations of boom
            job.add_done_callback(boom)
            end(job)
            end(job)  # a second ending changes nothing
            assert calls[-2:] != [("first", name), ("second", name)]  # not synchronous
            await asyncio.sleep(0)
            assert calls[-2:] == [("first", name), ("second", name)]
            job.add_done_callback(lambda j: calls.append(("late", j.id)))
            await asyncio.sleep(0)
            assert calls[-1] == ("late", name)

    with caplog.at_level(logging.ERROR, logger="lipsync_async"):
        run(vloop, scenario)
    assert len(calls) == 9
    assert sum("subscriber bug" in r.exc_text for r in caplog.records if r.exc_text) == 3
    run(vloop, tracker.close)


def test_cancelling_one_awaiter_leaves_the_job_to_the_others(vloop: VirtualLoop) -> None:
    """An awaiter's cancellation (a timeout) never cancels the job; job.cancel() gives every
    awaiter CancelledError and stops its reads."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service, poll=1.0)

    async def scenario() -> None:
        service.create("S")
        job = tracker.submitted("S", webhook=False)
        with pytest.raises(TimeoutError):
            await job.wait(timeout=0.5)
        assert not job.done()
        other = asyncio.ensure_future(job.wait())
        await asyncio.sleep(2.0)
        reads = len(service.reads)
        assert reads >= 1 and not other.done()
        assert job.cancel() is True and job.cancel() is False
        with pytest.raises(asyncio.CancelledError):
            await other
        await asyncio.sleep(10.0)
        assert len(service.reads) == reads and job.cancelled()

    run(vloop, scenario)
    run(vloop, tracker.close)


def test_close_ends_every_wait_with_its_own_closed_error(vloop: VirtualLoop) -> None:
    """close() ends every pending job; each awaiter raises its own ClientClosedError naming the
    job; a job made after close is born closed; no reader task is left."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service, poll=0.05)

    async def scenario() -> None:
        jobs = []
        for i in range(50):
            service.create(f"c{i}")
            jobs.append(tracker.submitted(f"c{i}", webhook=False))
        waits = [asyncio.ensure_future(j.wait()) for j in jobs]
        await asyncio.sleep(0.06)  # reads in flight
        await tracker.close()
        errors = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(e, ClientClosedError) for e in errors)
        assert len({id(e) for e in errors}) == 50
        assert all(e.job_id == j.id for e, j in zip(errors, jobs, strict=True))  # type: ignore[union-attr]
        late = tracker.submitted("late", webhook=False)
        assert late.done() and isinstance(late.exception(), ClientClosedError)
        current = asyncio.current_task()
        assert {t for t in asyncio.all_tasks() if t is not current} == set()

    run(vloop, scenario)


def test_a_wait_with_nothing_to_end_it_is_detected(vloop: VirtualLoop) -> None:
    """The virtual loop's own check: a wait that nothing can end raises Stranded instead of
    hanging the suite (what the strand regression relies on)."""

    async def forever() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(Stranded):
        vloop.run_until_complete(forever())


def tracked_per_job(make: Callable[[int], list[Job]], n: int) -> float:
    gc.collect()
    before = len(gc.get_objects())
    jobs = make(n)
    gc.collect()
    after = len(gc.get_objects())
    assert len(jobs) == n
    return (after - before - 1) / n  # -1: the list holding them


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "polling"])
def test_a_pending_job_is_one_tracked_object(vloop: VirtualLoop, webhook: bool) -> None:
    """The per-job budget (issue 20): a pending job adds at most one object the garbage
    collector walks (the Job), so a full collection stays one object per job; a status read
    that changes nothing keeps nothing new, and one that changes the state keeps only what
    the collector untracks."""
    service = ScriptedService(max_in_flight=64)
    tracker = tracker_on(vloop, service, poll=1.0)
    counter = iter(range(10**9))

    def make(n: int) -> list[Job]:
        ids = [f"{next(counter):08d}-0000-4000-8000-000000000000" for _ in range(n)]
        for i in ids:
            service.create(i)
        return [tracker.submitted(i, webhook=webhook) for i in ids]

    assert tracked_per_job(make, 20_000) <= 1.02
    run(vloop, tracker.close)


def _container_visits() -> int:
    """What a full collection visits from the tracked containers and the SDK's own objects.

    Not from every tracked object: ``gc.get_referents`` on some interpreter internals crashes
    CPython 3.12.1 (a segmentation fault in this test); the containers a job could be kept in
    (built-in ones, and any of the SDK's) are the ones that matter here.
    """
    kinds = (dict, list, set, frozenset, tuple, deque)
    return sum(
        len(gc.get_referents(o))
        for o in gc.get_objects()
        if isinstance(o, kinds) or str(type(o).__module__).startswith("lipsync_async")
    )


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "polling"])
def test_a_pending_job_gives_the_collector_little_to_visit(
    vloop: VirtualLoop, webhook: bool
) -> None:
    """The other half of the budget (issue 20: the stall at 1M): a gen-2 collection visits each
    reference a tracked object holds, so a pending job nobody waits on holds at most four (its
    type, its id, its state, where it is), and the only tracked objects among them are shared
    by many jobs (the initial state, a calendar bucket or the tracker's idle place), never one
    per job: what the collector walks per job is the job itself. Counted over every tracked
    object, a pending job adds six visits: its four, the user's list entry and the job table's
    entry (the calendar's entries are in dicts the collector untracks: a dict subclass there
    made it seven)."""
    service = ScriptedService(max_in_flight=64)
    tracker = tracker_on(vloop, service, poll=1.0, grace=60.0)
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(5000)]
    for i in ids:
        service.create(i)
    jobs: list[Job] = []
    gc.collect()
    visits = _container_visits()
    jobs.extend(tracker.submitted(i, webhook=webhook) for i in ids)
    jobs.append(tracker.attach("attached-0000-4000-8000-000000000000"))  # idle, not awaited
    gc.collect()
    added = _container_visits() - visits
    assert added / len(jobs) < 6.1, added / len(jobs)
    shared: set[int] = set()
    for job in jobs:
        referents = gc.get_referents(job)
        assert len(referents) <= 4, referents
        shared.update(id(r) for r in referents if gc.is_tracked(r))
    assert len(shared) <= 20, len(shared)  # a few buckets, the idle place, the type
    run(vloop, tracker.close)


def test_status_reads_that_change_nothing_keep_nothing(vloop: VirtualLoop) -> None:
    """A status read that changes nothing keeps no new object; one that changes the state (the
    first read: the model becomes known) keeps only what the collector untracks. Measured over
    2,000 polled jobs, two rounds of reads each."""
    service = ScriptedService(max_in_flight=64, read_delay=0.001)
    tracker = tracker_on(vloop, service, poll=1.0)
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(2000)]
    for i in ids:
        service.create(i)

    async def polls() -> list[int]:
        jobs = [tracker.submitted(i, webhook=False) for i in ids]
        gc.collect()
        counts = [len(gc.get_objects())]
        for _ in range(2):
            await asyncio.sleep(1.2)
            gc.collect()
            counts.append(len(gc.get_objects()))
        assert all(not j.done() for j in jobs)
        assert {j.state.model for j in jobs if j.state} == {"lipsync"}
        return counts

    start, first, second = run(vloop, polls)
    assert len(service.reads) >= 2 * 2000
    # In flight at each count: the readers (64 tasks, their frames and futures), the same
    # number each time; per job, nothing.
    assert abs(first - start) < 400 and abs(second - first) < 400
    run(vloop, tracker.close)


def test_what_a_job_tells_through_each_ending(vloop: VirtualLoop) -> None:
    """The public view of one job through its life: `.state` (the last known state, its own
    id, kept when a refused read ends tracking), `result()`, `exception()`, `done()`,
    `cancelled()` and the repr, for pending, completed, failed, refused, cancelled and closed."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service, poll=1.0)

    async def scenario() -> None:
        for name in ("p", "c", "f", "r", "x"):
            service.create(name)
        jobs = {name: tracker.submitted(name, webhook=False) for name in "pcfrx"}
        p = jobs["p"]
        assert p.state == JobState(id="p", status=JobStatus.PROCESSING)
        assert not p.done() and not p.cancelled() and repr(p) == "<Job p processing>"
        for probe in (p.result, p.exception):
            with pytest.raises(asyncio.InvalidStateError):
                probe()
        await asyncio.sleep(1.5)  # one read each: the model is now known
        assert p.state is not None and (p.state.id, p.state.model) == ("p", "lipsync")

        tracker.deliver(final(service, "c"))
        c = jobs["c"]
        assert c.done() and c.exception() is None and c.result() is c.state
        assert c.result().output == "https://cdn.example.com/c.mp4"
        assert repr(c) == "<Job c completed>"

        tracker.deliver(final(service, "f", failed=True))
        f = jobs["f"]
        failed = f.exception()
        assert isinstance(failed, JobFailed) and failed.state is f.state
        with pytest.raises(JobFailed):
            f.result()

        del service.truth["r"]  # the service forgot it: the next read is a 404
        await asyncio.sleep(1.5)
        r = jobs["r"]
        assert r.done() and isinstance(r.exception(), NotFoundError)
        assert r.state is not None and (r.state.id, r.state.model) == ("r", "lipsync")
        assert repr(r) == "<Job r error=NotFoundError>"

        x = jobs["x"]
        assert x.cancel() and x.cancelled() and x.done()
        for probe in (x.result, x.exception):
            with pytest.raises(asyncio.CancelledError):
                probe()
        assert repr(x) == "<Job x cancelled>"

        await tracker.close()
        assert isinstance(p.exception(), ClientClosedError) and repr(p) == "<Job p closed>"
        assert c.exception() is None  # an ending is never replaced

    run(vloop, scenario)


def test_removing_done_callbacks_and_late_subscribers(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """remove_done_callback: a lone callback is removed (returns 1) and never called; an
    unknown one returns 0; of several, the others stay. A subscriber added after the end that
    raises is logged like any other, naming the job."""
    service = ScriptedService()
    tracker = tracker_on(vloop, service)
    calls: list[str] = []

    def keep(job: Job) -> None:
        calls.append("keep")

    def drop(job: Job) -> None:
        calls.append("drop")

    def late(job: Job) -> None:
        raise ValueError("late subscriber bug")

    async def scenario() -> None:
        lone = tracker.attach("lone")
        lone.add_done_callback(drop)
        assert lone.remove_done_callback(keep) == 0
        assert lone.remove_done_callback(drop) == 1
        assert lone.remove_done_callback(drop) == 0
        pair = tracker.attach("pair")
        pair.add_done_callback(keep)
        pair.add_done_callback(drop)
        assert pair.remove_done_callback(drop) == 1
        pair.add_done_callback(keep)
        for job in (lone, pair):
            service.create(job.id)
            tracker.deliver(final(service, job.id))
        await asyncio.sleep(0)
        assert calls == ["keep", "keep"]
        lone.add_done_callback(late)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="lipsync_async"):
        run(vloop, scenario)
    assert any("lone" in r.getMessage() and r.exc_info for r in caplog.records)
    run(vloop, tracker.close)


def test_as_completed_yields_every_job_that_ends_in_time(vloop: VirtualLoop) -> None:
    """as_completed(timeout=) yields each job as it ends, first ended first, when all end
    before the deadline; past the deadline it raises JobTimeoutError naming the timeout, and
    the jobs left stay tracked."""
    from lipsync_async._job import iter_completed

    service = ScriptedService()
    tracker = tracker_on(vloop, service, grace=600.0)

    async def scenario() -> None:
        jobs = []
        for name in ("a", "b", "c"):
            service.create(name)
            jobs.append(tracker.submitted(name, webhook=True))

        async def deliver_later() -> None:
            for name, delay in (("c", 1.0), ("a", 2.0), ("b", 3.0)):
                await asyncio.sleep(delay)
                tracker.deliver(final(service, name))

        later = asyncio.ensure_future(deliver_later())
        seen = [job.id async for job in iter_completed(jobs, timeout=10.0)]
        await later
        assert seen == ["c", "a", "b"]
        service.create("slow")
        slow = tracker.submitted("slow", webhook=True)
        with pytest.raises(JobTimeoutError) as info:
            async for _ in iter_completed([slow], timeout=5.0):
                pass
        assert info.value.timeout == 5.0 and not slow.done() and tracker.pending == 1

    run(vloop, scenario)
    run(vloop, tracker.close)


# -- Through the client, on the virtual clock ------------------------------------------------
# The promises below were found unguarded by mutation testing (benchmarks/RESULTS.md, "Mutation
# testing"): each test fails on at least one surviving mutant of _tracker, _job or _complete.
# They use only public names: a LipsyncClient against the emulator over real loopback sockets,
# on the virtual loop, so that minutes of polling and webhook grace pass in milliseconds.

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"


@contextlib.asynccontextmanager
async def served(**client_kwargs: Any) -> AsyncIterator[tuple[FakeLipsyncServer, LipsyncClient]]:
    """The emulator (jobs that never end by themselves) and a client of it."""
    async with FakeLipsyncServer(job_duration=10**6, seed=1) as fake:
        client_kwargs.setdefault("poll_interval", 5.0)
        async with LipsyncClient(fake.api_key, base_url=fake.base_url, **client_kwargs) as client:
            yield fake, client


def reads(fake: FakeLipsyncServer) -> int:
    return fake.requests["GET /jobs"]


def test_one_id_attached_while_submitted_is_one_job_that_ends(vloop: VirtualLoop) -> None:
    """`client.job(id)` of a job this client tracks is that job: awaited through either handle,
    it ends once, when the service finishes it (a second Job for the id would replace the
    first in the scheduler, and the first would never end)."""

    async def scenario() -> None:
        async with served() as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            again = client.job(job.id)
            assert again is job and client.stats["pending"] == 1
            waits = [asyncio.ensure_future(j.wait()) for j in (job, again)]
            await asyncio.sleep(12)
            fake.complete_job(job.id)
            async with asyncio.timeout(60):
                states = await asyncio.gather(*waits)
            assert [s.status for s in states] == [JobStatus.COMPLETED] * 2
            assert client.stats["pending"] == 0

    run(vloop, scenario)


def test_after_submit_many_a_due_job_is_read_at_its_tick(vloop: VirtualLoop) -> None:
    """Once every ``submit_many`` sender has ended (two runs of several senders here), none
    is still counted as one that will read due jobs: a job awaited is read within the 20 ms
    tick it is due in, as before any ``submit_many``, not after the backstop's two ticks
    that cover for senders that are busy."""

    async def scenario() -> None:
        async with served() as (fake, client):
            for concurrency in (3, 2):
                requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(5)]
                outcomes = [o async for o in client.submit_many(requests, concurrency=concurrency)]
                assert all(isinstance(o, Job) for o in outcomes)
            loop = asyncio.get_running_loop()
            before, start = reads(fake), loop.time()
            with pytest.raises(NotFoundError):
                async with asyncio.timeout(1):
                    await client.job("job-from-elsewhere")
            assert reads(fake) == before + 1
            assert loop.time() - start <= 0.025

    run(vloop, scenario)


def test_a_webhook_jobs_first_read_comes_within_its_jittered_grace(vloop: VirtualLoop) -> None:
    """A job submitted with a receiver is first read after `webhook_grace` lengthened by its
    jitter (at most a fifth), rounded up to a grain of grace/1024 (0.59 s for 600 s) so that
    many jobs share few timers: never before the grace, and never past 720 s plus one grain
    and one 20 ms tick. 500 jobs spread over the whole jitter (seeded), both ends are seen."""
    grain = 600 / 1024

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver, webhook_grace=600.0, poll_interval=1000.0) as (
            fake,
            client,
        ):
            random.seed(20261128)
            start = asyncio.get_running_loop().time()
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(500)]
            assert asyncio.get_running_loop().time() - start < 0.02  # submits take no time here
            await asyncio.sleep(600 - 0.001)
            assert reads(fake) == 0  # nothing before the grace
            await asyncio.sleep(600 * 0.2 + grain + 0.02 + 0.002)
            assert reads(fake) == 500  # each once, by 720 s + a grain + a tick
            assert not any(job.done() for job in jobs)

    run(vloop, scenario)


@pytest.mark.parametrize("webhook", [False, True])
async def test_a_job_attached_before_its_submit_answer_is_the_job_submitted(webhook: bool) -> None:
    """`client.job(id)` called while that id's submit is still in flight (ids are predictable
    here, as a store's or a delivery's may bring one early) is the Job the submit returns:
    one handle, polled from the answer on without being awaited, ending once; sent with a
    receiver, it waits the webhook grace for its delivery first, as any submitted job."""
    release = asyncio.Event()
    reads_of: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            await release.wait()
            return web.json_response({"id": "job-1", "status": "processing"})
        reads_of.append(request.path.rsplit("/", 1)[1])
        return web.json_response({"id": "job-1", "status": "completed", "output": "https://o/x"})

    async with RawServer(answer) as srv:
        async with LipsyncClient(
            "sk_x",
            base_url=srv.base_url,
            poll_interval=0.05,
            webhook=WebhookReceiver() if webhook else None,
            webhook_grace=60.0,
        ) as client:
            submit = asyncio.ensure_future(client.lipsync_image(image=IMAGE, audio=AUDIO))
            try:
                await until(lambda: bool(srv.hits), what="the submit sent")
                early = client.job("job-1")
                assert not early.done()
            finally:
                release.set()
                job = await submit
            assert job is early and client.stats["pending"] == 1
            if webhook:
                await asyncio.sleep(0.3)  # six poll intervals, well inside the grace
                assert reads_of == [] and not job.done()
                return
            await until(job.done, what="the job polled without anyone awaiting it")
            assert job.result().output == "https://o/x" and reads_of == ["job-1"]


def test_an_attached_job_is_read_only_once_awaited(vloop: VirtualLoop) -> None:
    """`client.job(id)` makes no request until the job is awaited (README: a delivery resolves
    it meanwhile); awaited, it is read at once. Its repr says its state is unknown until then."""

    async def scenario() -> None:
        async with served() as (fake, client):
            other = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            fake.complete_job(other.id)
            await other
            before = reads(fake)
            job = client.job("job-from-elsewhere")
            assert repr(job) == "<Job job-from-elsewhere unknown>" and job.state is None
            await asyncio.sleep(120)
            assert reads(fake) == before and not job.done()
            with pytest.raises(NotFoundError):
                async with asyncio.timeout(1):
                    await job
            assert reads(fake) == before + 1

    run(vloop, scenario)


def test_attaching_a_job_waiting_for_its_delivery_keeps_its_grace(vloop: VirtualLoop) -> None:
    """A submitted job waits `webhook_grace` for its delivery before any read; attaching it
    again by id (`client.job`) must not move its first read earlier. Its delivery then
    resolves it with no read at all."""

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver, webhook_grace=600.0) as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            assert client.job(job.id) is job
            await asyncio.sleep(300)
            assert reads(fake) == 0 and not job.done()
            fake.complete_job(job.id)
            async with asyncio.timeout(5):
                assert (await job).status is JobStatus.COMPLETED
            assert reads(fake) == 0

    run(vloop, scenario)


def test_jobs_resumed_from_a_store_are_polled_without_being_awaited(vloop: VirtualLoop) -> None:
    """`client.pending()` resumes a store's unfinished jobs: each is read after one poll
    interval whether or not anyone awaits it (its delivery may have come while no process
    listened), so its done callbacks and on_complete run."""

    async def scenario() -> None:
        store = MemoryStore()
        async with served(store=store) as (fake, first):
            job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
            job_id = job.id
            fake.complete_job(job_id)  # while no worker is open to hear of it
            completed: list[str] = []
            async with LipsyncClient(
                fake.api_key,
                base_url=fake.base_url,
                store=store,
                poll_interval=5.0,
                on_complete=lambda j: completed.append(j.id),
            ) as second:
                await first.close()
                (resumed,) = await second.pending()
                ended: list[Job] = []
                resumed.add_done_callback(ended.append)
                await asyncio.sleep(15)
                assert ended == [resumed] and resumed.result().status is JobStatus.COMPLETED
                assert completed == [job_id]

    run(vloop, scenario)


def test_removed_callbacks_are_never_called(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """remove_done_callback of a job's only callback, or of one registered twice, leaves the
    job nothing to call when it ends: no call, no error logged."""
    calls: list[str] = []

    def fn(job: Job) -> None:
        calls.append(job.id)

    async def scenario() -> None:
        async with served() as (fake, client):
            lone = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            twice = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            lone.add_done_callback(fn)
            assert lone.remove_done_callback(fn) == 1
            twice.add_done_callback(fn)
            twice.add_done_callback(fn)
            assert twice.remove_done_callback(fn) == 2
            for job in (lone, twice):
                fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await asyncio.gather(lone, twice)
            await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="lipsync_async"):
        run(vloop, scenario)
    assert calls == []
    assert [r.getMessage() for r in caplog.records] == []


def test_as_completed_yields_the_jobs_already_ended_first_even_at_timeout_zero(
    vloop: VirtualLoop,
) -> None:
    """Jobs that ended before the iteration come first, in the order given, deadline or not
    (a timeout concerns the jobs still pending: here it raises after them); the others follow
    as they end."""

    async def scenario() -> None:
        async with served() as (fake, client):
            a, b, c = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)]
            for job in (c, a):
                fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await asyncio.gather(a, c)
            seen: list[Job] = []

            async def take() -> None:
                async for job in client.as_completed([a, b, c], timeout=0):
                    seen.append(job)  # noqa: PERF401 - kept as they come: it raises after them

            with pytest.raises(JobTimeoutError):
                await take()
            assert seen == [a, c] and not b.done()
            fake.complete_job(b.id)
            assert [job async for job in client.as_completed([b, c, a], timeout=60)] == [c, a, b]

    run(vloop, scenario)


def test_as_completed_stopped_early_leaves_nothing_on_the_jobs(vloop: VirtualLoop) -> None:
    """as_completed removes its callback from every job when the iteration stops (here by its
    deadline) with jobs left: a job that ends afterwards is not held (by the iterator's queue,
    through a job still pending), and pending jobs cost no more tracked objects than before."""

    async def scenario() -> tuple[weakref.ref[Job], Job]:
        async with served(on_complete=lambda j: None) as (fake, client):
            a, b, c = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)]
            fake.complete_job(a.id)

            async def consume(jobs: list[Job]) -> None:
                async for job in client.as_completed(jobs, timeout=1.0):
                    assert job is a  # the one ended: b and c are pending past the deadline

            with pytest.raises(JobTimeoutError):
                await consume([a, b, c])
            fake.complete_job(b.id)
            async with asyncio.timeout(60):
                await b
            await asyncio.sleep(0)  # b's done callbacks run
            gone = weakref.ref(b)
            del b

            attached = [client.job(f"attached-{i}") for i in range(2000)]
            gc.collect()
            before = len(gc.get_objects())
            with pytest.raises(JobTimeoutError):
                async for _ in client.as_completed(attached, timeout=0):
                    pass
            gc.collect()
            assert len(gc.get_objects()) - before < 200  # 2,000 jobs: not one object each
            return gone, c

    gone, pending = run(vloop, scenario)
    gc.collect()
    assert gone() is None
    assert pending.done()  # closed with its client


def test_get_job_is_one_status_read_about_that_job(vloop: VirtualLoop) -> None:
    """get_job makes one status read (`stats["status_reads"]` counts it once); an unknown id
    raises NotFoundError naming the job."""

    async def scenario() -> None:
        async with served() as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            fake.complete_job(job.id)
            state = await client.get_job(job.id)
            assert state.status is JobStatus.COMPLETED and state.id == job.id
            assert client.stats["status_reads"] == 1 and reads(fake) == 1
            await client.get_job(job.id)
            assert client.stats["status_reads"] == 2
            with pytest.raises(NotFoundError) as info:
                await client.get_job("no-such-job")
            assert info.value.job_id == "no-such-job"

    run(vloop, scenario)


def test_get_job_refuses_an_answer_about_another_job_or_malformed(vloop: VirtualLoop) -> None:
    """A status answer about another job, or one that is not a job state, is an APIError that
    names the job asked about, the HTTP status and (malformed) the body; no job takes it."""
    answers = {
        "mixed": json.dumps({"id": "someone-else", "status": "completed"}),
        "bogus": json.dumps({"id": "bogus", "status": 42}),
        "notjson": "<html>oops</html>",
    }

    async def handler(request: web.Request) -> web.Response:
        # 203: a success other than 200, so that the status the error names is the answer's
        return web.Response(status=203, text=answers[request.path.rsplit("/", 1)[1]])

    async def scenario() -> None:
        async with (
            RawServer(handler) as srv,
            LipsyncClient("sk_test_raw", base_url=srv.base_url, max_retries=0) as client,
        ):
            with pytest.raises(APIError) as info:
                await client.get_job("mixed")
            assert "asked for job mixed, the answer is about someone-else" in str(info.value)
            assert (info.value.status, info.value.job_id) == (203, "mixed")
            with pytest.raises(APIError) as info:
                await client.get_job("bogus")
            assert "malformed job state" in str(info.value) and info.value.status == 203
            assert info.value.body == answers["bogus"]  # the answer as sent
            with pytest.raises(APIError) as info:
                await client.get_job("notjson")
            assert (info.value.status, info.value.job_id) == (203, "notjson")
            assert client.stats["status_reads"] == 3

    run(vloop, scenario)


def test_a_verified_delivery_resolves_long_before_the_grace(vloop: VirtualLoop) -> None:
    """With `verify=True`, a genuine delivery is checked by one status read and resolves its
    job at once, not after the webhook grace."""

    async def scenario() -> None:
        receiver = WebhookReceiver(verify=True)
        async with served(webhook=receiver, webhook_grace=600.0) as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            fake.complete_job(job.id)
            async with asyncio.timeout(30):
                assert (await job).status is JobStatus.COMPLETED
            assert reads(fake) == 1 and receiver.verify_reads == 1

    run(vloop, scenario)


def test_every_delivery_of_a_finished_job_is_acknowledged_as_known(vloop: VirtualLoop) -> None:
    """Duplicated deliveries (the service retries, proxies repeat): the first resolves the job,
    each later copy is recognised as an outcome the client already has (the ring of recent
    ids), for the first job finished as for the others, and none of it costs a read."""

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver, webhook_grace=600.0) as (fake, client):
            fake.webhook_duplicate_rate = 1.0
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(12)]
            for job in jobs:
                fake.complete_job(job.id)
                async with asyncio.timeout(5):
                    await job
            await fake.wait_deliveries(2 * len(jobs))
            await asyncio.sleep(1)
            assert receiver.matched == len(fake.deliveries) == 2 * len(jobs)
            assert reads(fake) == 0

    run(vloop, scenario)


def test_jobs_resolved_by_delivery_leave_no_timer_behind(vloop: VirtualLoop) -> None:
    """Jobs waiting for their delivery sit in calendar buckets, each with a timer at the end
    of the grace; a bucket its last job leaves is dropped with its timer at once, so a wave of
    jobs resolved by delivery leaves nothing armed for the next ten minutes."""

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver, webhook_grace=600.0) as (fake, client):
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(50)]
            now = vloop.time()

            def at_graces_end() -> list[float]:  # 600 s, lengthened by up to 20% of jitter
                return [t for t in vloop.armed() if now + 590 < t < now + 730]

            assert len(at_graces_end()) >= 10
            for job in jobs:
                fake.complete_job(job.id)
            async with asyncio.timeout(5):
                await asyncio.gather(*jobs)
            await asyncio.sleep(1)
            assert at_graces_end() == []

    run(vloop, scenario)


def test_on_complete_runs_once_for_each_job_of_a_long_sequence(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a store: on_complete runs once per job that completes or fails, for more jobs
    than completions run at once (64), ending one after another; a job the service does not
    know (a 404 ends it) runs nothing, nor does a finished job attached and read again;
    nothing is logged at WARNING or above, and no "store answers again" news for a store that
    never failed. `client.pending()` lists the jobs tracked."""
    ran: list[str] = []

    async def scenario() -> None:
        async with served(on_complete=lambda j: ran.append(j.id)) as (fake, client):
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(70)]
            assert set(await client.pending()) == set(jobs)
            for i, job in enumerate(jobs):
                if i % 7:
                    fake.complete_job(job.id)
                else:
                    fake.fail_job(job.id)
                async with asyncio.timeout(60):
                    await job.wait() if i % 7 else await _failed(job)
                await until(lambda: len(ran) == i + 1)  # noqa: B023 - awaited here
            again = client.job(jobs[1].id)  # its end observed again, by a new handle
            assert again is not jobs[1] and (await again).status is JobStatus.COMPLETED
            ghost = client.job("unknown-to-the-service")
            with pytest.raises(NotFoundError):
                await ghost
            await asyncio.sleep(1)
            assert await client.pending() == []

    with caplog.at_level(logging.INFO, logger="lipsync_async"):
        run(vloop, scenario)
    assert len(ran) == 70 and len(set(ran)) == 70
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "'unknown-to-the-service': status read refused" in warned[0]
    assert not any("answers again" in r.getMessage() for r in caplog.records)


async def _failed(job: Job) -> None:
    with pytest.raises(JobFailed):
        await job


def test_on_complete_with_a_store_settles_each_job_in_it(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """With a store: once on_complete has run (or raised: logged, naming the job, not run
    again) and its claim is acknowledged, the job's pending record is dropped, so a restart
    resumes nothing; a finished job attached and read again runs nothing and is not pending."""
    ran: list[str] = []

    def fn(job: Job) -> None:
        ran.append(job.id)
        if len(ran) == 1:
            raise ValueError("user bug")

    async def scenario() -> list[str]:
        store = MemoryStore()
        async with served(store=store, on_complete=fn) as (fake, client):
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)]
            assert len(await store.pending()) == 3
            for job in jobs:
                fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await asyncio.gather(*jobs)
            await until(lambda: len(ran) == 3)
            await asyncio.sleep(1)
            assert await store.pending() == []
            again = client.job(jobs[0].id)
            assert (await again).status is JobStatus.COMPLETED
            await asyncio.sleep(1)
            assert await store.pending() == []
            return [j.id for j in jobs]

    with caplog.at_level(logging.ERROR, logger="lipsync_async"):
        ids = run(vloop, scenario)
    assert sorted(ran) == sorted(ids)
    (failed,) = [r.getMessage() for r in caplog.records]
    assert failed == f"on_complete failed for job {ran[0]!r} (it is not run again)"


def test_errors_of_unfinished_and_cancelled_jobs_name_the_job(vloop: VirtualLoop) -> None:
    """result() before the end and after cancel() raise errors that name the job."""

    async def scenario() -> None:
        async with served() as (_, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            with pytest.raises(asyncio.InvalidStateError, match=f"job {job.id} is not done"):
                job.result()
            job.cancel()
            with pytest.raises(asyncio.CancelledError, match=f"job {job.id} tracking was"):
                job.result()

    run(vloop, scenario)


def test_close_cancels_an_on_complete_that_outlives_close_timeout(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """close() gives running on_complete callbacks `close_timeout` seconds, then cancels them
    and says how many were cut short (running and queued); the close itself neither hangs nor
    raises, and nothing of theirs runs on after it."""
    started: list[str] = []
    finished: list[str] = []

    async def slow(job: Job) -> None:
        started.append(job.id)
        await asyncio.sleep(3600)
        finished.append(job.id)

    async def scenario() -> None:
        async with served(on_complete=slow, close_timeout=2.0) as (fake, client):
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(65)]
            for job in jobs:
                fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await asyncio.gather(*jobs)
            await until(lambda: len(started) == 64)  # at most 64 at once: one queued
            began = vloop.time()
            async with asyncio.timeout(60):
                await client.close()
            assert 2.0 <= vloop.time() - began < 3.0
        await asyncio.sleep(3600)
        assert finished == []

    with caplog.at_level(logging.WARNING, logger="lipsync_async"):
        run(vloop, scenario)
    (warning,) = [r.getMessage() for r in caplog.records if "on_complete" in r.getMessage()]
    assert warning.startswith("closing: 65 on_complete completion(s) still running or queued")
    assert "after 2.0 s" in warning


def test_a_late_subscriber_that_raises_is_logged_by_the_sdk(
    vloop: VirtualLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback added after the end runs soon, like one added before; either, if it raises,
    is logged by the SDK (naming the callback and the job), and the wait's deadline error
    carries the job and the timeout."""

    def late(job: Job) -> None:
        raise ValueError("late bug")

    def early(job: Job) -> None:
        raise ValueError("early bug")

    async def scenario() -> str:
        async with served() as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            with pytest.raises(JobTimeoutError) as info:
                await job.wait(0.5)
            assert (info.value.job_id, info.value.timeout) == (job.id, 0.5)
            job.add_done_callback(early)
            fake.complete_job(job.id)
            async with asyncio.timeout(60):
                await job
            job.add_done_callback(late)
            await asyncio.sleep(0)
            return job.id

    with caplog.at_level(logging.ERROR):
        job_id = run(vloop, scenario)
    records = [r for r in caplog.records if r.exc_info]
    assert [r.name for r in records] == ["lipsync_async"] * 2
    for record, name in zip(records, ("early", "late"), strict=True):
        assert record.getMessage().startswith("done callback <function")
        assert name in record.getMessage() and record.getMessage().endswith(f"{job_id} failed")


def test_early_deliveries_are_held_within_their_byte_bound_newest_kept(
    vloop: VirtualLoop,
) -> None:
    """Final states delivered for ids this client does not track yet are held (16 MiB at most,
    oldest out first) and matched when the job is tracked (`client.job`). A delivery repeated
    for one id replaces its copy without counting it twice; past the bound the oldest go, the
    newest stay."""
    pad = "x" * 60_000  # ~60 KB a delivery: 300 of them are past the 16 MiB bound

    def final(job_id: str) -> dict[str, Any]:
        return {"id": job_id, "status": "completed", "output": "https://cdn.example.com/o.mp4"}

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver) as (_, client):
            async with aiohttp.ClientSession() as http:

                async def post(body: dict[str, Any]) -> None:
                    async with http.post(receiver.url, json=body) as answer:
                        assert answer.status == 200

                await post(final("early-small"))
                for _ in range(300):  # one id, delivered again and again
                    await post(final("early-repeated") | {"timings": {"pad": pad}})
                small = client.job("early-small")
                assert small.done() and small.result().status is JobStatus.COMPLETED
                assert client.job("early-repeated").done()

                for i in range(300):
                    await post(final(f"early-{i:03d}") | {"timings": {"pad": pad}})
                held = client.stats
                assert 16 * 1024 * 1024 - 61_000 < held["held_bytes"] <= 16 * 1024 * 1024
                assert held["held_deliveries"] < 300
                assert not client.job("early-000").done()  # the oldest went
                assert not client.job("early-002").done()
                assert all(client.job(f"early-{i:03d}").done() for i in range(40, 300))

    run(vloop, scenario)


def _final(job_id: str, pad: str = "") -> dict[str, Any]:
    """A final state as the service delivers it; ``pad`` sizes it (free-form ``timings``)."""
    body: dict[str, Any] = {"id": job_id, "status": "completed", "output": "https://o.example/x"}
    return body | {"timings": {"pad": pad}} if pad else body


@contextlib.asynccontextmanager
async def _poster(receiver: WebhookReceiver) -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    """POST deliveries to ``receiver`` over one keep-alive connection; each must be taken."""
    async with aiohttp.ClientSession() as http:

        async def post(body: dict[str, Any]) -> None:
            async with http.post(receiver.url, json=body) as answer:
                assert answer.status == 200

        yield post


def test_early_deliveries_are_held_for_300_seconds(vloop: VirtualLoop) -> None:
    """A delivery for an id not tracked yet is held 300 s (virtual clock): its job, tracked
    299 s later, ends with it at once; one tracked 301 s later does not (it is polled), and
    a delivery arriving after the 300 s pushes the expired one out of the buffer."""

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver) as (_, client), _poster(receiver) as post:
            await post(_final("held-a", "x" * 100))  # not the size of the other
            await post(_final("held-b"))
            two = client.stats["held_bytes"]
            await post(_final("held-b"))  # delivered again: replaces its copy
            assert client.stats["held_deliveries"] == 2 and client.stats["held_bytes"] == two
            await asyncio.sleep(299)
            assert client.stats["held_deliveries"] == 2
            a = client.job("held-a")
            assert a.done() and a.result().status is JobStatus.COMPLETED
            await asyncio.sleep(2)  # 301 s after "held-b" came
            b = client.job("held-b")
            assert not b.done()  # expired: not taken from the buffer
            b.cancel()
            await post(_final("held-c"))
            await post(_final("held-d"))
            await asyncio.sleep(301)
            await post(_final("held-e"))  # "held-c" and "held-d" expired: both pushed out
            assert client.stats["held_deliveries"] == 1
            assert not client.job("held-c").done() and not client.job("held-d").done()

    run(vloop, scenario)


def test_early_deliveries_fill_their_byte_bound_exactly(vloop: VirtualLoop) -> None:
    """Held deliveries take up to 16 MiB, to the byte: 256 of exactly 64 KiB all stay (their
    bytes are the bound), the 257th pushes out the oldest one only; `held_bytes` counts them."""
    bound = 16 * 1024 * 1024

    async def scenario() -> None:
        receiver = WebhookReceiver(max_body=1024 * 1024)
        async with served(webhook=receiver) as (_, client), _poster(receiver) as post:
            # The held size of one delivery (compact JSON), to pad it to 64 KiB exactly.
            await post(_final("size-000", "x" * 60_000))
            size = client.stats["held_bytes"]
            pad = "x" * (60_000 + 65_536 - size)
            assert client.job("size-000").done() and client.stats["held_bytes"] == 0
            for i in range(256):
                await post(_final(f"full-{i:03d}", pad))
            assert client.stats["held_bytes"] == bound
            assert client.stats["held_deliveries"] == 256
            await post(_final("full-256", pad))
            assert client.stats["held_bytes"] == bound
            assert client.stats["held_deliveries"] == 256
            assert not client.job("full-000").done()  # the oldest, and only it, went
            assert all(client.job(f"full-{i:03d}").done() for i in range(1, 257))
            assert client.stats["held_bytes"] == 0

    run(vloop, scenario)


def test_early_deliveries_are_at_most_10000(vloop: VirtualLoop) -> None:
    """At most 10,000 deliveries are held, however small: the 10,001st pushes out the oldest;
    a delivery repeated for a held id replaces its copy (counted once, kept as the newest)."""

    async def scenario() -> None:
        receiver = WebhookReceiver()
        async with served(webhook=receiver) as (_, client), _poster(receiver) as post:
            for i in range(10_000):
                await post(_final(f"n-{i:05d}"))
            await post(_final("n-00000"))  # again: now the newest
            assert client.stats["held_deliveries"] == 10_000
            await post(_final("n-10000"))
            assert client.stats["held_deliveries"] == 10_000
            assert client.job("n-00000").done()  # renewed, so not the oldest any more
            assert not client.job("n-00001").done()  # the oldest went
            assert client.job("n-00002").done() and client.job("n-10000").done()

    run(vloop, scenario)


def test_a_refused_read_does_not_strand_the_jobs_queued_behind_it(vloop: VirtualLoop) -> None:
    """With one read at a time, a job whose read is refused (404: tracking ends) must not stop
    the reading: the job queued behind it in the same tick is read next and ends."""

    async def scenario() -> None:
        async with served(max_in_flight=1) as (fake, client):
            async with LipsyncClient(fake.api_key, base_url=fake.base_url) as elsewhere:
                real = await elsewhere.lipsync_image(image=IMAGE, audio=AUDIO)
            fake.complete_job(real.id)
            known = client.job(real.id)  # submitted by another process
            ghost = client.job("no-such-job-anywhere")
            waits = [asyncio.ensure_future(j.wait()) for j in (known, ghost)]  # one tick
            async with asyncio.timeout(3):  # well before the next poll of `real` (5 s)
                done = await asyncio.gather(*waits, return_exceptions=True)
            assert isinstance(done[0], JobState) and done[0].status is JobStatus.COMPLETED
            assert isinstance(done[1], NotFoundError)

    run(vloop, scenario)


def test_polls_come_one_interval_apart_lengthened_by_at_most_a_fifth(vloop: VirtualLoop) -> None:
    """The scheduler's jitter only lengthens a poll interval, by up to 20%: a job pending for
    120 s at `poll_interval=5` is read between 120/6 and 120/5 times, and each read counts
    once in `stats["status_reads"]`."""

    async def scenario() -> None:
        async with served(poll_interval=5.0) as (fake, client):
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(10)]
            await asyncio.sleep(120.01)
            assert 10 * 120 // 6 <= reads(fake) <= 10 * 120 // 5
            assert client.stats["status_reads"] == reads(fake)
            assert not any(j.done() for j in jobs)

    run(vloop, scenario)


def test_waits_that_time_out_leave_nothing_on_the_job(vloop: VirtualLoop) -> None:
    """A `wait(timeout)` that passes its deadline unsubscribes its awaiter: a job waited on a
    thousand times with a short timeout holds no more than it did (nothing grows per wait)."""

    async def scenario() -> None:
        async with served() as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            for _ in range(5):
                with pytest.raises(JobTimeoutError):
                    await job.wait(0.001)
            gc.collect()
            before = len(gc.get_objects())
            for _ in range(1000):
                with pytest.raises(JobTimeoutError):
                    await job.wait(0.001)
            gc.collect()
            assert len(gc.get_objects()) - before < 100
            fake.complete_job(job.id)
            async with asyncio.timeout(60):
                assert (await job).status is JobStatus.COMPLETED

    run(vloop, scenario)


def test_awaiters_closed_without_cancelling_leave_nothing_on_the_job(vloop: VirtualLoop) -> None:
    """An awaiting coroutine can also end by being closed, not cancelled (a task collected
    while pending, a framework closing the coroutines it drives): its awaiter leaves the job
    too. A job awaited a thousand times that way holds no more than before, and still ends."""

    async def scenario() -> None:
        async with served() as (fake, client):
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)

            def await_then_close() -> None:
                awaiting = job.wait()
                waits_on = awaiting.send(None)  # suspended: on a future the job's end sets
                assert isinstance(waits_on, asyncio.Future) and not waits_on.done()
                awaiting.close()

            for _ in range(5):
                await_then_close()
            gc.collect()
            before = len(gc.get_objects())
            for _ in range(1000):
                await_then_close()
            gc.collect()
            grown = len(gc.get_objects()) - before
            assert grown < 100, f"{grown} more objects after 1,000 closed awaiters"
            fake.complete_job(job.id)
            async with asyncio.timeout(60):
                assert (await job).status is JobStatus.COMPLETED

    run(vloop, scenario)
