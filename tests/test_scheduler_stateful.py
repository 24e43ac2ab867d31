"""A stateful property test of the job lifecycle: random interleavings, checked after every step.

Hypothesis drives the tracker (submits, attaches, deliveries early / duplicated / lost / for
unknown ids / not final, status reads ok / 5xx / 404 / 401 / buggy / slow / out of order,
``cancel()``, ``wait(timeout=)``, ``as_completed`` broken early, ``close()``, and ``submit_many``'s
senders lent to the tracker: reading due jobs between submits fast, slow or stuck, cancelled
mid-read) on a virtual clock
(``tests/_vclock.py``), so hours of polling run in milliseconds and a wait that can never end
raises instead of hanging. After every step:

* no job ended twice (each job's done callback ran at most once, and exactly once when done);
* every ``wait(timeout)`` that passed its deadline has ended;
* the tracker's pending count is the number of tracked jobs not done;
* the scripted service never saw more reads in flight than the bound.

At the end: the service finishes every job, and every job ends within its bound (the webhook
grace or a poll interval, plus the slow reads queued); then every finished job is released
(its weakref dies after ``gc.collect()``), and closing leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lipsync_async import Job, JobState, JobStatus
from lipsync_async._job import iter_completed
from lipsync_async._tracker import Tracker

from ._vclock import ScriptedService, VirtualLoop

POLL = 1.0
GRACE = 5.0
JITTER = 0.2


def _state(data: dict[str, Any]) -> JobState:
    return JobState(
        id=data["id"],
        status=JobStatus(data["status"]),
        model=data["model"],
        output=data["output"],
        error=data["error"],
        execution_time_ms=data["executionTime"],
    )


class Lifecycle(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        # The SDK's warnings go nowhere here: pytest's capture keeps every record, and a
        # record of an exception keeps its traceback, whose frames hold the job being read.
        self.sdk_log = logging.getLogger("lipsync_async")
        self.sdk_log.propagate = False
        self.loop = VirtualLoop()
        self.service = ScriptedService(max_in_flight=3, read_delay=0.01)
        self.tracker = Tracker(
            self.service,  # type: ignore[arg-type]
            poll_interval=POLL,
            webhook_grace=GRACE,
            jitter=JITTER,
        )
        self.jobs: dict[str, Job] = {}  # the latest Job per id (a finished id can be attached anew)
        self.all: list[Job] = []
        self.ends: dict[Job, int] = {}
        self.waits: list[tuple[asyncio.Future[Any], float | None]] = []
        self.iterators: list[asyncio.Future[Any]] = []
        self.senders: list[asyncio.Task[None]] = []
        self.closed = False
        self.count = 0
        self.slow = 0.0  # total scripted read delay queued: part of the end bound

    # -- plumbing ----------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        async def turns() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        self.run(turns())

    def _ended(self, job: Job) -> None:
        self.ends[job] += 1

    def _adopt(self, job: Job) -> None:
        if job not in self.ends:
            self.jobs[job.id] = job
            self.all.append(job)
            self.ends[job] = 0
            job.add_done_callback(self._ended)

    def _new_id(self) -> str:
        self.count += 1
        return f"job-{self.count}"

    # -- rules -------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        async def go() -> None:
            self.tracker.start()

        self.run(go())

    @rule(webhook=st.booleans(), early=st.booleans(), failed=st.booleans())
    def submit(self, webhook: bool, early: bool, failed: bool) -> None:
        job_id = self._new_id()
        self.service.create(job_id)
        if early:  # the job finished and its delivery beat the submit's answer
            self.tracker.deliver(_state(self.service.finish(job_id, failed=failed)))
        self._adopt(self.tracker.submitted(job_id, webhook=webhook))
        self.settle()

    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        if not self.service.truth:
            return
        job_id = data.draw(st.sampled_from(sorted(self.service.truth)))
        self._adopt(self.tracker.attach(job_id))

    @rule(data=st.data(), failed=st.booleans())
    def service_finishes(self, data: st.DataObject, failed: bool) -> None:
        if self.service.truth:
            job_id = data.draw(st.sampled_from(sorted(self.service.truth)))
            self.service.finish(job_id, failed=failed)

    @rule(data=st.data(), copies=st.integers(1, 3))
    def deliver(self, data: st.DataObject, copies: int) -> None:
        if not self.service.truth:
            return
        truth = self.service.truth[data.draw(st.sampled_from(sorted(self.service.truth)))]
        for _ in range(copies):  # duplicates; a lost delivery is one never made
            self.tracker.deliver(_state(truth))
        self.settle()

    @rule(final=st.booleans())
    def deliver_unknown(self, final: bool) -> None:
        state = JobState(
            id=f"stranger-{self.count}",
            status=JobStatus.COMPLETED if final else JobStatus.PROCESSING,
        )
        assert self.tracker.deliver(state) is False

    @rule(
        kind=st.sampled_from(["ok", "5xx", "404", "401", "bug"]),
        delay=st.sampled_from([0.001, 0.01, 0.3, 2.5]),
    )
    def next_read(self, kind: str, delay: float) -> None:
        self.service.faults.append((kind, delay))  # slow reads end out of order
        self.slow += delay

    @rule(dt=st.sampled_from([0.01, 0.1, 0.7, 1.5, 6.0]))
    def advance(self, dt: float) -> None:
        self.run(asyncio.sleep(dt))

    @rule(data=st.data(), timeout=st.sampled_from([None, 0.0, 0.5, 3.0]))
    def await_job(self, data: st.DataObject, timeout: float | None) -> None:
        if not self.jobs:
            return
        job = self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))]
        task = asyncio.ensure_future(job.wait(timeout), loop=self.loop)
        deadline = None if timeout is None else self.loop.time() + timeout
        self.waits.append((task, deadline))
        self.settle()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.jobs:
            job = self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))]
            assert job.cancel() is not job.done() or job.cancelled()
            self.settle()

    @rule(data=st.data(), take=st.integers(0, 3), timeout=st.sampled_from([None, 1.0]))
    def as_completed_broken_early(
        self, data: st.DataObject, take: int, timeout: float | None
    ) -> None:
        if not self.jobs:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.jobs)), max_size=5))
        jobs = [self.jobs[i] for i in chosen]

        async def consume() -> int:
            seen = 0
            # aclosing: a `break` then closes the iterator at once (as user code should),
            # rather than when the collector finalizes it, which on 3.13 schedules its close
            # on the loop and keeps its jobs alive until then.
            async with contextlib.aclosing(iter_completed(jobs, timeout=timeout)) as ending:
                async for _ in ending:
                    seen += 1
                    if seen >= take:
                        break
            return seen

        self.iterators.append(asyncio.ensure_future(consume(), loop=self.loop))
        self.settle()

    @rule(submit=st.sampled_from([0.005, 0.05, 1e9]))
    def sender_starts(self, submit: float) -> None:
        """A ``submit_many`` sender: submits of ``submit`` s each (1e9: stuck in one), and
        after each, up to two reads of due jobs, as ``_client.submit_many`` does."""
        tracker = self.tracker

        async def sender() -> None:
            tracker.lend()
            try:
                while True:
                    await asyncio.sleep(submit)
                    for _ in range(2):
                        read = tracker.read_due()
                        if read is None:
                            break
                        await read
            finally:
                tracker.unlend()

        self.senders.append(asyncio.ensure_future(sender(), loop=self.loop))
        self.settle()

    @rule(data=st.data())
    def sender_cancelled(self, data: st.DataObject) -> None:
        """Its ``submit_many`` closed: cancelled wherever it is, mid-read included."""
        if self.senders:
            task = self.senders.pop(data.draw(st.integers(0, len(self.senders) - 1)))
            task.cancel()
            self.settle()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.closed = True
        self.run(self.tracker.close())
        self.settle()
        assert all(job.done() for job in self.all)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def ended_once(self) -> None:
        self.settle()  # done callbacks run soon after the end: give them their turn
        for job, ends in self.ends.items():
            assert ends <= 1, f"{job} ended {ends} times"
            assert ends == (1 if job.done() else 0), f"{job}: done={job.done()}, ends={ends}"

    @invariant()
    def waits_end_by_their_deadline(self) -> None:
        now = self.loop.time()
        for task, deadline in self.waits:
            if deadline is not None and now > deadline + 0.05:
                assert task.done(), "a wait(timeout) outlived its deadline"

    @invariant()
    def pending_count_is_the_jobs_not_done(self) -> None:
        assert self.tracker.pending == sum(not j.done() for j in self.all)

    @invariant()
    def callbacks_are_kept_for_pending_jobs_only(self) -> None:
        # Invariant 2 of _tracker: an ended job's callbacks and futures are not kept.
        assert not any(job.done() for job in self.tracker.waiters)

    def teardown(self) -> None:
        try:
            if not self.closed:
                self._every_job_ends_and_is_released()
                self.run(self.tracker.close())
            self._retrieve_and_drop()
            leftover = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            assert leftover == [], leftover
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.sdk_log.propagate = True

    def _retrieve_and_drop(self) -> None:
        """Retrieve every task's outcome, then drop the tasks and jobs the test holds.

        In a method of its own: a loop variable left in the caller's frame would keep the last
        task (and, through its exception's traceback, a job) alive.
        """
        for task, _ in self.waits:
            if task.done() and not task.cancelled():
                task.exception()
        for task in self.iterators + self.senders:
            if not task.done():
                task.cancel()
        self.run(asyncio.sleep(0))
        for task in self.iterators:
            if not task.cancelled():
                task.exception()
        self.jobs.clear()
        self.all.clear()
        self.ends.clear()
        self.waits.clear()
        self.iterators.clear()
        self.senders.clear()

    def _every_job_ends_and_is_released(self) -> None:
        for job_id in list(self.service.truth):
            self.service.finish(job_id)
        pending = [j for j in self.all if not j.done()]
        bound = (GRACE + POLL) * (1 + JITTER) + self.slow + 5 * POLL

        async def all_end(jobs: list[Job]) -> None:
            async with asyncio.timeout(bound):
                await asyncio.gather(*jobs, return_exceptions=True)

        self.run(all_end(pending))  # a stranded job raises TimeoutError (or Stranded) here
        self.settle()
        refs = [weakref.ref(j) for j in self.all]
        self._retrieve_and_drop()
        del pending
        # A full pass: an awaiter's CancelledError or JobFailed can sit in a cycle with the
        # task that raised it (garbage, not held by the client), and which generation that
        # cycle reached depends on the interpreter's collector (3.13 differs).
        gc.collect()
        alive = [r() for r in refs if r() is not None]
        assert alive == [], f"finished jobs still referenced: {alive[:3]}"


Lifecycle.TestCase.settings = settings(
    max_examples=int(os.environ.get("LIFECYCLE_EXAMPLES", "300")),
    stateful_step_count=30,
    deadline=None,
    derandomize=True,  # the same 300 interleavings on every run: CI never flakes on a new one
)
TestLifecycle = pytest.mark.timeout(240)(Lifecycle.TestCase)
