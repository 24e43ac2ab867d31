"""Pending jobs and the one polling scheduler.

Whatever learns a job's state first resolves it: a status read here, or a delivery handed to
:meth:`Tracker.deliver` by the webhook receiver (or another worker through a store). A delivery
for a job we do not know yet (it can beat the submit's own answer) waits in a bounded,
time-limited buffer and is matched when the job is tracked.

The calendar: due reads are grouped in buckets of ``_TICK`` seconds, each a ``dict`` of the
jobs' ids with one ``loop.call_at`` timer; there is no scheduler task, heap or sleeper of our
own. When a bucket's timer fires, the bucket joins the ready queue and readers are started, at
most ``max_in_flight`` of them; each reader takes jobs from the ready buckets until none is
left, then exits. A job's ``_slot`` names the bucket it sits in (or the tracker's ``idle`` or
``_reading`` place), so rescheduling and finishing are O(1) dict deletions, never a search.

Helpers: while ``submit_many`` runs, its senders are lent to the tracker (``lend``; ``unlend``
while one is parked or when it ends) and each reads up to two queued jobs after each of its
submits (``read_due``). A bucket that fires while senders are lent starts no reader; it arms
the backstop: a timer that looks again every tick while jobs stay queued and starts readers
for those that were queued at its previous look and that the senders have not taken since
(all of them once no sender is lent). So a queued job waits for a sender at most about
two ticks before a reader is started for it. Why: reads from reader tasks of their own, apart
from the submits, made the collector's young generation fill ~8x as often in a fan-out
(``benchmarks/HISTORY.md``).

Invariants (the stateful test in ``tests/test_scheduler_stateful.py`` checks them after every
step of random interleavings, with a virtual clock):

1. A pending job is in ``_jobs`` and in exactly one of these places:

   * **waiting for a delivery**: in the ``idle`` place (attached by id, not awaited yet);
   * **scheduled at t**: in the bucket of t, whose timer is armed;
   * **queued**: in a fired bucket of the ready queue, and at least one reader is active
     (a reader decides to exit only in the same step in which it sees the ready queue empty,
     and its count drops in that step: no reader that is about to exit is counted), or the
     backstop is armed (helpers were lent when its bucket fired);
   * **being read**: in the ``_reading`` place; a reader or a lent sender awaits its status
     read; when the read ends, the job is rescheduled (or finished), whatever the read
     raised; a sender's read that is cancelled (its ``submit_many`` closed) puts the job back
     in the calendar, due at once.

2. A finished job (completed, failed, refused, cancelled, closed) is in no bucket, not in
   ``_jobs`` nor ``waiters``, and referenced by nothing of the tracker's: the only things kept
   of it are an 8-byte fingerprint of its id (in a fixed ring of recent ids that acknowledges
   duplicate deliveries) and what its own callbacks keep. A bucket its last job leaves is
   dropped with its timer, and the job table is renewed when the last pending job ends, so
   nothing of a finished wave stays behind (``bench_scale.py``: 2% of what it held pending,
   1 s after).
3. ``close()`` ends every pending job's wait (``ClientClosedError``), cancels every timer and
   reader, and leaves no task behind.

The budget of one pending job (measured by ``benchmarks/bench_scale.py``; the tracked-object
count is a test, ``test_a_pending_job_is_one_tracked_object``): the ``Job`` (64 B, the one
object the collector tracks, three slots: ``_job`` says why), its id string (85 B for a UUID),
one entry in ``_jobs`` and one in its bucket (about 30-40 B each, string-keyed dicts): about
215 B. What a gen-2 collection visits per pending job is the job, its three slots and type,
and its entry in ``_jobs`` (``test_a_pending_job_gives_the_collector_little_to_visit``); its
entry in a bucket is in a plain ``dict`` of ids the collector untracks, so it is never
visited. The buckets and their timers are shared by all the jobs due in the same tick, and
long delays (the 600 s webhook grace) are snapped to a coarser grain so that 100,000 jobs
share a few hundred buckets.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final

from ._errors import APIError, AuthenticationError, LipsyncError, NotFoundError
from ._job import INITIAL, Done, Job, Place, close_all
from ._models import JobState, JobStatus
from ._tasks import cancel_and_wait
from ._telemetry import NOOP, VIA_DELIVERY, VIA_READ, Telemetry
from ._wire import job_path, loads_object, parse_job_state, read_job_state, state_to_wire

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._http import Transport

__all__ = ["Tracker"]

log = logging.getLogger("lipsync_async")

_TICK: Final = 0.02  # calendar resolution, seconds
_GRAIN: Final = 1.0 / 1024  # long delays are rounded up to this fraction of themselves
_RECENT_MAX: Final = 10_000


class _RecentIds:
    """The last ``size`` finished ids, as 8-byte fingerprints in one fixed ring buffer.

    Held as a dict of id strings, 10,000 recent ids cost ~1.3 MB, a quarter of what 20,000
    pending jobs hold, for as long as the process lives (issue 12: memory held after jobs
    finish). Here they cost 80 KB, allocated once. A lookup is a C-level scan of the buffer
    (microseconds), made only for deliveries of ids no pending job has. Fingerprints are the
    str hash (salted per process, never all zero); two ids sharing one is a 2**-64 chance per
    pair, and its cost is a delivery acknowledged instead of held as early.
    """

    __slots__ = ("_next", "_ring", "_size")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(8 * size)
        self._size = size
        self._next = 0

    @staticmethod
    def _fingerprint(job_id: str) -> bytes:
        return (hash(job_id) | 1).to_bytes(8, "little", signed=True)

    def add(self, job_id: str) -> None:
        at = 8 * self._next
        self._ring[at : at + 8] = self._fingerprint(job_id)
        self._next = (self._next + 1) % self._size

    def __contains__(self, job_id: str) -> bool:
        fingerprint = self._fingerprint(job_id)
        ring = self._ring
        at = ring.find(fingerprint)
        while at >= 0:
            if at % 8 == 0:
                return True
            at = ring.find(fingerprint, at + 1)
        return False


class Bucket:
    """The ids of the jobs due in one tick; knows its tick so that, emptied, it can be dropped.

    Ids, not ``Job`` s: the job table already holds each pending job, and a full collection
    walks every reference to a tracked object, so a calendar that also held the jobs made
    every gen-2 pause walk each job twice more than needed (issue 20: the stall at 1M). A
    read takes the ``Job`` from the table by id.

    The ids are a plain ``dict`` of ``str`` to ``None`` beside the bucket, not the bucket
    itself: the collector untracks such a dict and never walks it again, where a ``dict``
    subclass stays tracked and each collection visits every entry (1M pending: ~6.5 ms of each
    full collection, for nothing).
    """

    __slots__ = ("ids", "key", "tracker")

    def __init__(self, key: int, tracker: Tracker) -> None:
        self.ids: dict[str, None] = {}
        self.key = key
        self.tracker = tracker  # a job in this bucket finds its tracker here (see _job)

    def __repr__(self) -> str:
        return f"<Bucket {self.key}: {len(self.ids)} jobs>"


class Tracker:
    """Tracks pending jobs until each resolves, by status reads or by deliveries."""

    __slots__ = (
        "__weakref__",  # the otel pending gauge holds trackers weakly
        "_active",
        "_backlog",
        "_backstop",
        "_buckets",
        "_closed",
        "_context",
        "_early",
        "_early_bytes",
        "_early_max",
        "_early_max_bytes",
        "_early_ttl",
        "_helpers",
        "_jitter",
        "_jobs",
        "_loop",
        "_max_readers",
        "_readers",
        "_reading",
        "_ready",
        "_recent",
        "_taken",
        "_timers",
        "_transport",
        "ends",
        "idle",
        "poll_interval",
        "reads",
        "tel",
        "waiters",
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
        # A job's ``_slot`` when in no bucket: idle (waiting for a delivery, or attached and
        # not awaited) or being read; and, once it ended, the shared mark of how (see _job).
        self.idle = Place(self, "idle")
        self._reading = Place(self, "reading")
        self.ends = Done.marks(self)
        # The done callbacks and awaiters' futures of pending jobs (most have none): here and
        # not on each job, so a job nobody waits on has no slot for them to visit.
        self.waiters: dict[Job, Any] = {}
        self._buckets: dict[int, Bucket] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ready: deque[Bucket] = deque()
        self._readers: set[asyncio.Task[None]] = set()
        # The timers' context: empty, and the same for all (a timer sets no context var).
        self._context = contextvars.Context()
        self._active = 0  # readers that have not decided to exit (see invariant 1)
        self._helpers = 0  # submit_many senders that read a due job after each submit
        self._backstop: asyncio.TimerHandle | None = None  # readers for what helpers left
        self._taken = 0  # jobs the helpers took since the backstop last looked
        self._backlog = 0  # jobs queued when it last looked
        self._max_readers = transport.max_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._early_max = early_max
        self._early_ttl = early_ttl
        self._early_max_bytes = early_max_bytes
        self._early_bytes = 0
        self._closed = False
        # Ids of jobs finished lately: their duplicate deliveries (and a store's echo of their
        # own outcome) are acknowledged without a trip through the early-delivery buffer.
        self._recent = _RecentIds(_RECENT_MAX)
        self.reads = 0  # status reads made (a benchmark figure)
        self.tel: Telemetry = NOOP  # the client's, set when it opens (see _telemetry)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the client is not open: use `async with LipsyncClient(...)`")
        return loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def close(self) -> None:
        """Stop polling, end reader tasks, and end pending jobs' waits (``ClientClosedError``).

        Everything but the final wait for the readers happens before the first ``await``, so a
        close that is itself cancelled still leaves no waiter hanging. No error object is built
        here: each awaiter builds its own when it raises.
        """
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        self._buckets.clear()
        self._ready.clear()
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        self._early.clear()
        self._early_bytes = 0
        jobs, self._jobs = self._jobs, {}
        close_all(jobs.values(), self)
        if self.tel.on:
            self.tel.forget_all()
        if readers:
            await cancel_and_wait(readers)

    @property
    def pending(self) -> int:
        """How many jobs are tracked and not finished."""
        return len(self._jobs)

    @property
    def held(self) -> tuple[int, int]:
        """Deliveries held for ids not (yet) tracked, and their bytes (the early buffer)."""
        return len(self._early), self._early_bytes

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """The pending jobs."""
        return list(self._jobs.values())

    # -- tracking ----------------------------------------------------------------------------

    def submitted(self, job_id: str, *, webhook: bool) -> Job:
        """The ``Job`` of a fresh submit; its first read is due after a poll or the grace."""
        job = self._jobs.get(job_id)
        if job is not None:  # its delivery (through a store) made us attach it already
            if job._slot is self.idle:
                self._schedule_in(job, self.webhook_grace if webhook else self.poll_interval)
            return job
        job = Job(job_id, self, INITIAL)
        if self._closed:  # a submit whose answer came back while the client closed
            job._close()
            return job
        self._jobs[job_id] = job
        if not self._match_early(job):
            self._schedule_in(job, self.webhook_grace if webhook else self.poll_interval)
        return job

    def attach(self, job_id: str, *, poll: bool = False) -> Job:
        """The ``Job`` for an id known from elsewhere; no read until it is awaited (or ``poll``).

        ``poll`` (jobs resumed from a store) schedules the first read after one interval: their
        delivery may have come while no process listened.
        """
        job = self._jobs.get(job_id)
        if job is None:
            job = Job(job_id, self, None)
            if self._closed:
                job._close()
                return job
            self._jobs[job_id] = job
            if self._match_early(job):
                return job
        if poll and job._slot is self.idle:  # idle: pending, in no bucket
            self._schedule_in(job, self.poll_interval)
        return job

    def awaited(self, job: Job) -> None:
        """Someone waits on ``job``: an attached job not yet scheduled is read now."""
        if job._slot is self.idle and self._jobs.get(job.id) is job:
            self._schedule_at(job, self.loop.time())

    def forget(self, job: Job) -> None:
        """Stop tracking ``job`` (``cancel()``); its callbacks are the job's to run."""
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
            self._shrink()
        self._unslot(job)
        if self.tel.on:
            self.tel.ended(job.id, "cancelled")

    def _unslot(self, job: Job) -> None:
        slot = job._slot
        if type(slot) is Bucket:
            self._leave(slot, job.id)
        job._slot = self.idle

    def _leave(self, bucket: Bucket, job_id: str) -> None:
        ids = bucket.ids
        del ids[job_id]
        if not ids:
            # Emptied (its jobs finished by delivery, or cancelled): dropped with its timer
            # (cancelling a TimerHandle is O(1)). Kept, an emptied dict keeps its table until
            # the timer fires, 600 s later for the webhook grace: memory held by jobs that
            # are gone.
            key = bucket.key
            if self._buckets.get(key) is bucket:
                del self._buckets[key]
                self._timers.pop(key).cancel()

    def _shrink(self) -> None:
        if not self._jobs:
            # Dicts never shrink as entries go: a fresh one drops the table of the last wave.
            self._jobs = {}

    def _schedule_in(self, job: Job, delay: float) -> None:
        # Jitter only lengthens an interval: reads per job stay <= ceil(duration / interval),
        # and 10,000 jobs submitted together spread out instead of polling in lockstep.
        due = self.loop.time() + delay * (1.0 + self._jitter * random.random())
        # Long delays (the 600 s webhook grace, slow polls) snap up to a grain of delay/1024:
        # the jitter still spreads jobs over ~200 buckets, but 100,000 jobs share those
        # instead of each owning a 20 ms bucket (a dict and a timer each).
        grain = delay * _GRAIN
        if grain > _TICK:
            due = (int(due / grain) + 1) * grain
        self._schedule_at(job, due)

    def _schedule_at(self, job: Job, due: float) -> None:
        key = int(due / _TICK) + 1  # the bucket ending at or after `due`
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(key, self)
            # In a context of the tracker's own, not the caller's (a submit inside the
            # application's span or request context): see _spawn.
            self._timers[key] = self.loop.call_at(
                key * _TICK, self._fire, key, context=self._context
            )
        slot = job._slot
        if slot is not bucket:
            if type(slot) is Bucket:
                self._leave(slot, job.id)
            bucket.ids[job.id] = None
            job._slot = bucket

    def _fire(self, key: int) -> None:
        del self._timers[key]
        bucket = self._buckets.pop(key)
        if bucket.ids:
            self._ready.append(bucket)
            if not self._helpers:
                self._spawn(len(bucket.ids))
            elif self._backstop is None:
                # Left to the submit_many senders (see read_due), with a backstop for what
                # they do not take in time (invariant 1).
                self._backlog = self._taken = 0
                self._arm_backstop()

    def _arm_backstop(self) -> None:
        self._backstop = self.loop.call_at(
            self.loop.time() + _TICK, self._unhelped, context=self._context
        )

    def _unhelped(self) -> None:
        """One tick on: readers for the queued jobs the senders did not keep pace with."""
        self._backstop = None
        queued = sum(len(bucket.ids) for bucket in self._ready)
        if not queued:
            return
        if not self._helpers:  # every sender parked or ended
            self._spawn(queued)
            return
        # Readers for the jobs queued a tick ago that the senders have not taken since (they
        # take the oldest first): all of them if the senders are stuck in slow submits. The
        # newer ones are left to the senders for one more tick.
        self._spawn(self._backlog - self._taken)
        self._backlog = queued
        self._taken = 0
        self._arm_backstop()

    def _spawn(self, wanted: int) -> None:
        loop = self.loop
        for _ in range(min(wanted, self._max_readers - self._active)):
            self._active += 1
            # A fresh, empty context per reader: no reader inherits the application's context
            # vars (its current span, its request) from whichever call made the bucket, and
            # what one reader sets (the read span it makes current) stays its own.
            task = loop.create_task(
                self._reader(), name="lipsync-reader", context=contextvars.Context()
            )
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

    # -- resolution --------------------------------------------------------------------------

    def deliver(self, state: JobState, via: str = VIA_DELIVERY) -> bool:
        """Apply a delivered state. True if a tracked job took it (or already had it).

        ``via``: how the state came (a delivery, another worker through the store, a read),
        for telemetry only.
        """
        job = self._jobs.get(state.id)
        if job is None:
            if state.id in self._recent:
                return True  # a duplicate (or a store's echo) of an outcome we already have
            if state.is_final:
                self._keep_early(state)
            return False
        self._apply(job, state, via)
        return True

    def _apply(self, job: Job, state: JobState, via: str = VIA_DELIVERY) -> None:
        if state.is_final:
            tel = self.tel
            since = self.loop.time() if tel.on else 0.0
            self._release(job)
            job._take(state)
            if tel.on:
                tel.resolved(job, via, since)
        else:
            job._take(state)

    def refuse(self, job: Job, error: LipsyncError) -> None:
        """End ``job``'s tracking with the error a read got (404, 401)."""
        if not job.done():
            self._release(job)
            job._refuse(error)
            if self.tel.on:
                self.tel.ended(job.id, "refused")

    def _release(self, job: Job) -> None:
        """Take a job that is about to end out of everything the tracker holds (invariant 2)."""
        job_id = job.id
        if self._jobs.get(job_id) is job:
            del self._jobs[job_id]
            self._shrink()
        self._unslot(job)
        self._recent.add(job_id)

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
        now = self.loop.time()
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
        if held[0] < self.loop.time():
            return False
        log.debug("job %r: matched a delivery that arrived before its submit answer", job.id)
        self._apply(job, parse_job_state(json.loads(held[1])))
        return True

    # -- polling -----------------------------------------------------------------------------

    async def fetch(self, job_id: str, transport: Transport | None = None) -> JobState:
        """One status read (retried by the transport on transient errors); ``transport``: a
        ``with_options`` view's, for a read made through it."""
        if self.tel.on:
            with self.tel.read_span(job_id) as span:
                state = await self._fetch(job_id, transport)
                span.read(state.status)
                return state
        return await self._fetch(job_id, transport)

    async def _fetch(self, job_id: str, transport: Transport | None) -> JobState:
        via = self._transport if transport is None else transport
        status, raw = await via.read(job_path(job_id), job_id=job_id)
        self.reads += 1
        state = parse_job_state(loads_object(raw, status, job_id=job_id), status=status, raw=raw)
        if state.id != job_id:
            raise APIError(
                f"asked for job {job_id}, the answer is about {state.id}",
                status=status,
                job_id=job_id,
            )
        return state

    def _next(self) -> Job | None:
        """The next queued job, now marked as being read; ``None`` when the queue is empty."""
        ready = self._ready
        jobs = self._jobs
        while ready:
            ids = ready[0].ids
            if ids:
                job = jobs.get(ids.popitem()[0])
                if job is None:  # cannot be (invariant 1: a slotted job is in the table)
                    continue
                job._slot = self._reading
                return job
            ready.popleft()
        return None

    # -- helpers: submit_many's senders read due jobs between their submits -------------------

    def lend(self) -> None:
        """A sender will read a due job after each of its submits (see ``read_due``)."""
        self._helpers += 1

    def unlend(self) -> None:
        """A sender parks, or ends: the readers (and the backstop) cover for it."""
        self._helpers -= 1

    def read_due(self) -> Coroutine[Any, Any, None] | None:
        """The read of the next queued job, for a sender to await; ``None`` if none is due.

        Why: a fan-out whose reads come from reader tasks of their own allocates each read's
        objects in bursts apart from the submits' and makes the collector's young generation
        fill ~8x as often as one whose tasks alternate a submit and a read, as raw POST + GET
        pairs do (``benchmarks/HISTORY.md``, "Why submit_many's senders read").
        With telemetry on, no: a read span must not be a child of the submitting task's span.
        """
        if not self._ready or self.tel.on:
            return None
        job = self._next()
        if job is None:
            return None
        self._taken += 1
        return self._read(job, lent=True)

    async def _reader(self) -> None:
        try:
            while (job := self._next()) is not None:
                await self._read(job)
        finally:
            # In the step that saw the queue empty (or on cancellation): see invariant 1.
            self._active -= 1

    async def _read(self, job: Job, *, lent: bool = False) -> None:
        """Read ``job`` (taken by ``_next``), then reschedule or finish it, whatever happens.

        ``lent``: by a ``submit_many`` sender, whose submits wait while it reads: one attempt,
        no retries with their backoff (a failed read is read again at the next interval).
        """
        transport = self._transport
        reading = self._reading
        job_id = job.id
        try:
            if self.tel.on:
                read = await self._traced_read(transport, job_id)
            else:
                status, raw = await transport.read(job_path(job_id), job_id=job_id, retry=not lent)
                self.reads += 1
                read = read_job_state(raw, status, job_id)
        except (NotFoundError, AuthenticationError) as exc:
            log.warning("job %r: status read refused, tracking ends: %s", job_id, str(exc))
            self.refuse(job, exc)
            return
        except LipsyncError as exc:
            # A failed read is not a failed job: read again at the next interval.
            # str(exc): a record kept by a handler must not keep the traceback (and the job).
            # A sender's single attempt is a debug record: the transport would have retried
            # it without a word.
            log.log(
                logging.DEBUG if lent else logging.WARNING,
                "job %r: status read failed, will retry: %s",
                job_id,
                str(exc),
            )
        except asyncio.CancelledError:
            # A sender cancelled mid-read (its submit_many was closed): the job is due again
            # at once, for a reader. (A reader is cancelled only by close(), which ended it.)
            if job._slot is reading and not self._closed:
                self._schedule_at(job, self.loop.time())
            raise
        except Exception:
            # A bug must not strand the job (it would stay "being read" forever) nor kill
            # the reader with an exception nobody retrieves.
            log.exception("job %r: unexpected error during a status read", job_id)
        else:
            if job._slot is reading:  # not finished (or rescheduled) while we read
                if isinstance(read, JobState):  # final
                    self._apply(job, read, VIA_READ)
                else:
                    job._keep(*read)
        if job._slot is reading:  # still pending, and not rescheduled meanwhile
            self._schedule_in(job, self.poll_interval)

    async def _traced_read(
        self, transport: Transport, job_id: str
    ) -> tuple[JobStatus, tuple[Any, ...]] | JobState:
        """The reader's read inside a status-read span (telemetry on)."""
        with self.tel.read_span(job_id) as span:
            status, raw = await transport.read(job_path(job_id), job_id=job_id)
            self.reads += 1
            read = read_job_state(raw, status, job_id)
            span.read(read.status if isinstance(read, JobState) else read[0])
            return read
