"""The job lifecycle's promises, on a virtual clock: every awaited job ends, exactly once, and
nothing of a finished job stays behind.

These drive the tracker (the scheduler) through the same calls the client and the receiver
make, with a scripted service at the transport boundary (``tests/_vclock.py``), and look at jobs
through their public API only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from lipsync_async import ClientClosedError, Job, JobFailed, JobState, JobStatus, NotFoundError
from lipsync_async._tracker import Tracker

from ._vclock import ScriptedService, Stranded, VirtualLoop

T = TypeVar("T")


@pytest.fixture
def vloop() -> Iterator[VirtualLoop]:
    loop = VirtualLoop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def run(loop: VirtualLoop, make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return loop.run_until_complete(main())


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


@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "polling"])
def test_a_pending_job_gives_the_collector_little_to_visit(
    vloop: VirtualLoop, webhook: bool
) -> None:
    """The other half of the budget (issue 20: the stall at 1M): a gen-2 collection visits each
    reference a tracked object holds, so a pending job nobody waits on holds at most four (its
    type, its id, its state, where it is), and the only tracked objects among them are shared
    by many jobs (the initial state, a calendar bucket or the tracker's idle place), never one
    per job: what the collector walks per job is the job itself."""
    service = ScriptedService(max_in_flight=64)
    tracker = tracker_on(vloop, service, poll=1.0, grace=60.0)
    ids = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(5000)]
    for i in ids:
        service.create(i)
    jobs = [tracker.submitted(i, webhook=webhook) for i in ids]
    jobs.append(tracker.attach("attached-0000-4000-8000-000000000000"))  # idle, not awaited
    gc.collect()
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
    from lipsync_async import JobTimeoutError
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
