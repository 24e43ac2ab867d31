"""Pending jobs and the one polling scheduler.

All jobs share one scheduler task and a calendar of due times (buckets of ``_TICK`` seconds in
a dict, their keys in a heap), not a task or a sleep loop per job: a pending job costs one list
slot in its bucket plus the ``Job`` itself. Due reads go to a small pool of reader tasks, at most
``max_in_flight`` of them, which exit when the queue is empty. A job's ``due`` attribute says
which bucket entry is current, so rescheduling never searches: stale entries are skipped.

Whatever learns a job's state first resolves it: a status read here, or a delivery handed to
:meth:`Tracker.deliver` by the webhook receiver (or another worker through a store). A delivery
for a job we do not know yet (it can beat the submit's own answer) waits in a bounded,
time-limited buffer and is matched when the job is tracked.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from ._errors import APIError, AuthenticationError, LipsyncError, NotFoundError
from ._job import Job, JobOwner
from ._models import JobState
from ._wire import loads_object, parse_job_state, state_to_wire

if TYPE_CHECKING:
    from ._http import Transport

__all__ = ["Tracker"]

log = logging.getLogger("lipsync_async")

_TICK: Final = 0.02  # calendar resolution, seconds
_GRAIN: Final = 1.0 / 1024  # long delays are rounded up to this fraction of themselves
_READING: Final = -1.0  # job.due while a read is in flight
_RECENT_MAX: Final = 10_000
_SAFE_ID: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def job_path(job_id: str) -> str:
    """``jobs/{id}``, with the id escaped if it is not already URL-safe (ids are UUIDs)."""
    if _SAFE_ID.issuperset(job_id) and job_id not in (".", ".."):
        return "jobs/" + job_id
    return "jobs/" + quote(job_id, safe="")


class Tracker(JobOwner):
    """Tracks pending jobs until each resolves, by status reads or by deliveries."""

    __slots__ = (
        "_buckets",
        "_closed",
        "_closed_reason",
        "_early",
        "_early_bytes",
        "_early_max",
        "_early_max_bytes",
        "_early_ttl",
        "_heap",
        "_jitter",
        "_jobs",
        "_loop",
        "_max_readers",
        "_queue",
        "_readers",
        "_recent",
        "_scheduler",
        "_sleeper",
        "_transport",
        "on_final",
        "poll_interval",
        "reads",
        "webhook_grace",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        poll_interval: float,
        webhook_grace: float,
        jitter: float = 0.2,
        early_max: int = 10_000,
        early_ttl: float = 300.0,
        early_max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._transport = transport
        self.poll_interval = poll_interval
        self.webhook_grace = webhook_grace
        self._jitter = jitter
        self._jobs: dict[str, Job] = {}
        self._buckets: dict[int, list[Job]] = {}
        self._heap: list[int] = []
        self._queue: deque[Job] = deque()
        self._readers: set[asyncio.Task[None]] = set()
        self._max_readers = transport.max_in_flight
        self._scheduler: asyncio.Task[None] | None = None
        self._sleeper: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._early_max = early_max
        self._early_ttl = early_ttl
        self._early_max_bytes = early_max_bytes
        self._early_bytes = 0
        self._closed = False
        self._closed_reason = "the client was closed"
        # Ids of jobs finished lately: their duplicate deliveries (and a store's echo of their
        # own outcome) are acknowledged without a trip through the early-delivery buffer.
        self._recent: dict[str, None] = {}
        self.reads = 0  # status reads made (a benchmark figure)
        self.on_final: Callable[[Job], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._scheduler = self._loop.create_task(self._schedule(), name="lipsync-scheduler")

    async def close(self, reason: str = "the client was closed") -> None:
        """Stop polling, end reader tasks, and end pending jobs' waits with a clear error.

        Everything but the final wait for the tasks happens before the first ``await``, so a
        close that is itself cancelled still leaves no waiter hanging.
        """
        self._closed = True
        self._closed_reason = reason
        tasks = [t for t in (self._scheduler, *self._readers) if t is not None]
        for task in tasks:
            task.cancel()
        self._scheduler = None
        self._readers.clear()
        self._buckets.clear()
        self._heap.clear()
        self._queue.clear()
        self._early.clear()
        self._early_bytes = 0
        jobs, self._jobs = self._jobs, {}
        for job in jobs.values():
            self._refuse(job)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _refuse(self, job: Job) -> None:
        """End a job's wait because this tracker is closed (or closing)."""
        job.due = 0.0
        job._fail(
            LipsyncError(
                f"{self._closed_reason} before job {job.id} finished; "
                "attach again with client.job(id)"
            )
        )

    @property
    def pending(self) -> int:
        """How many jobs are tracked and not finished."""
        return len(self._jobs)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    # -- tracking ----------------------------------------------------------------------------

    def track(self, job: Job, *, webhook: bool) -> None:
        """Track a freshly submitted job; its first read is due after a poll or the grace."""
        if self._closed:  # a submit whose answer came back while the client closed
            self._refuse(job)
            return
        self._jobs[job.id] = job
        if self._match_early(job):
            return
        delay = self.webhook_grace if webhook else self.poll_interval
        self._schedule_in(job, delay)

    def attach(self, job: Job) -> None:
        """Know ``job`` (deliveries will resolve it) without reading it until someone waits."""
        if self._closed:
            self._refuse(job)
        elif job.id not in self._jobs:
            self._jobs[job.id] = job
            self._match_early(job)

    def _job_awaited(self, job: Job) -> None:
        if job.due == 0.0 and not job.done():
            if self._closed:
                self._refuse(job)
                return
            self._jobs.setdefault(job.id, job)
            self._schedule_at(job, self._now())

    def _job_cancelled(self, job: Job) -> None:
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        job.due = 0.0

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the client is not open: use `async with LipsyncClient(...)`")
        return loop.time()

    def _schedule_in(self, job: Job, delay: float) -> None:
        # Jitter only lengthens an interval: reads per job stay <= ceil(duration / interval),
        # and 10,000 jobs submitted together spread out instead of polling in lockstep.
        due = self._now() + delay * (1.0 + self._jitter * random.random())
        # Long delays (the 600 s webhook grace, slow polls) snap up to a grain of delay/1024:
        # the jitter still spreads jobs over ~200 buckets, but 100,000 jobs share those
        # instead of each owning a 20 ms bucket (a list, a dict slot, a heap key: ~140 B/job).
        grain = delay * _GRAIN
        if grain > _TICK:
            due = (int(due / grain) + 1) * grain
        self._schedule_at(job, due)

    def _schedule_at(self, job: Job, due: float) -> None:
        if self._closed:
            return
        job.due = due
        key = int(due / _TICK) + 1  # the bucket ending at or after `due`
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [job]
            heapq.heappush(self._heap, key)
            if self._heap[0] == key and self._sleeper is not None and not self._sleeper.done():
                self._sleeper.set_result(None)  # an earlier wake-up than the scheduler planned
        else:
            bucket.append(job)

    # -- resolution from outside -------------------------------------------------------------

    def deliver(self, state: JobState) -> bool:
        """Apply a delivered state. True if a tracked job took it (or already had it)."""
        job = self._jobs.get(state.id)
        if job is None:
            if state.id in self._recent:
                return True  # a duplicate (or a store's echo) of an outcome we already have
            if state.is_final:
                self._keep_early(state)
            return False
        self._apply(job, state)
        return True

    def _apply(self, job: Job, state: JobState) -> None:
        if job._update(state):
            self._finished(job)

    def fail(self, job: Job, error: LipsyncError) -> None:
        if job._fail(error):
            self._finished(job)

    def _finished(self, job: Job) -> None:
        """The job just got its outcome: stop tracking it and tell the store, if any."""
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        job.due = 0.0
        recent = self._recent
        recent[job.id] = None
        if len(recent) > _RECENT_MAX:
            del recent[next(iter(recent))]  # oldest first: dicts keep insertion order
        if self.on_final is not None:
            self.on_final(job)

    def _keep_early(self, state: JobState) -> None:
        # Held as compact JSON, not as the parsed JobState: these are deliveries for ids nobody
        # here tracks, so anyone with the receiver's secret can send them, and a 64 KiB body
        # of free-form ``timings`` parses into objects tens of times its size. Bounded by
        # count and by bytes; oldest (and expired) first out.
        try:
            blob = json.dumps(state_to_wire(state), separators=(",", ":")).encode()
        except (ValueError, TypeError, RecursionError):
            return  # not representable: polling resolves its job, if it is ours
        if len(blob) > self._early_max_bytes:
            return
        now = self._now()
        early = self._early
        replaced = early.pop(state.id, None)  # re-inserted at the end: the order stays by age
        if replaced is not None:
            self._early_bytes -= len(replaced[1])
        while early:
            key, (expires, held) = next(iter(early.items()))
            if (
                expires > now
                and len(early) < self._early_max
                and self._early_bytes + len(blob) <= self._early_max_bytes
            ):
                break
            del early[key]
            self._early_bytes -= len(held)
        early[state.id] = (now + self._early_ttl, blob)
        self._early_bytes += len(blob)

    def _match_early(self, job: Job) -> bool:
        held = self._early.pop(job.id, None)
        if held is None:
            return False
        self._early_bytes -= len(held[1])
        if held[0] < self._now():
            return False
        log.debug("job %s: matched a delivery that arrived before its submit answer", job.id)
        self._apply(job, parse_job_state(json.loads(held[1])))
        return True

    # -- polling -----------------------------------------------------------------------------

    async def fetch(self, job_id: str) -> JobState:
        """One status read (retried by the transport on transient errors)."""
        status, raw = await self._transport.read(job_path(job_id), job_id=job_id)
        self.reads += 1
        state = parse_job_state(loads_object(raw, status, job_id=job_id), status=status, raw=raw)
        if state.id != job_id:
            raise APIError(
                f"asked for job {job_id}, the answer is about {state.id}",
                status=status,
                job_id=job_id,
            )
        return state

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        heap, buckets, queue = self._heap, self._buckets, self._queue
        while True:
            if heap:
                key = heap[0]
                wake_at = key * _TICK
                if wake_at <= loop.time():
                    heapq.heappop(heap)
                    for job in buckets.pop(key, ()):
                        if job.due > 0.0 and int(job.due / _TICK) + 1 == key and not job.done():
                            job.due = _READING
                            queue.append(job)
                    self._spawn_readers()
                    continue
            else:
                wake_at = None
            sleeper = self._sleeper = loop.create_future()
            timer = loop.call_at(wake_at, _wake, sleeper) if wake_at is not None else None
            try:
                await sleeper
            finally:
                self._sleeper = None
                if timer is not None:
                    timer.cancel()

    def _spawn_readers(self) -> None:
        assert self._loop is not None  # noqa: S101 - started
        want = min(len(self._queue), self._max_readers) - len(self._readers)
        for _ in range(want):
            task = self._loop.create_task(self._reader())
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

    async def _reader(self) -> None:
        queue = self._queue
        while queue:
            job = queue.popleft()
            if job.done():
                continue
            try:
                state = await self.fetch(job.id)
            except (NotFoundError, AuthenticationError) as exc:
                log.warning("job %s: status read refused, tracking ends: %s", job.id, exc)
                self.fail(job, exc)
                continue
            except LipsyncError as exc:
                # A failed read is not a failed job: read again at the next interval.
                log.warning("job %s: status read failed, will retry: %s", job.id, exc)
                if not job.done():
                    self._schedule_in(job, self.poll_interval)
                continue
            except Exception:
                # A bug must not strand the job (its due would stay "reading" forever) nor kill
                # this reader with an exception nobody retrieves.
                log.exception("job %s: unexpected error during a status read", job.id)
                if not job.done():
                    self._schedule_in(job, self.poll_interval)
                continue
            if job.done():
                continue
            self._apply(job, state)
            if not job.done():
                self._schedule_in(job, self.poll_interval)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
