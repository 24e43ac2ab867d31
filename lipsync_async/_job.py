"""``Job``: the awaitable handle of one submitted job, resolved exactly once.

Invariants (tested in ``tests/test_job_lifecycle.py`` and the stateful scheduler test):

* **One ending.** A job leaves *pending* once, for exactly one of: completed, failed (the
  service said so), ended (a status read was refused: 404, 401), cancelled (``cancel()``),
  closed (its client closed). Every later outcome is ignored; ``done()`` never goes back.
* **Everyone hears it once.** Each awaiter, and each ``add_done_callback`` subscriber, is told
  once, whatever ended the job; a subscriber added after the end is called soon, like
  ``asyncio.Future``. Cancelling one awaiter never cancels the job for the others.
* **Fresh errors.** Each ``await`` of a job that did not complete raises an exception with a
  traceback of its own: re-awaiting a failed job 200 times does not grow a 600-frame chain.
  The errors a close or a failure produce are built when raised, not when the job ends, so
  closing a client with a million pending jobs builds no million messages.

The per-job budget (issue *A million pending jobs in half the bytes*): a pending job is this one
object, GC-tracked, and nothing else the collector walks. It has three slots, because a full
collection visits every slot of every tracked object (1M jobs: each non-empty slot adds ~8 ms,
each slot ~3 ms to a gen-2 pause): the id (the string the submit answer carried), the last
known state (``INITIAL``, shared by every fresh job; a plain tuple, which the collector
untracks, after a read changed it; the final ``JobState`` once completed or failed), and the
``_slot``: where the job is (a calendar bucket, or one of its tracker's two places: idle or
being read) while pending, and how it ended (a :class:`Done` mark) after. Each of those names
the tracker, so the job needs no slot of its own for it; the phase is the mark's, shared by
every job that ended the same way (a refused read's mark is its own: it carries the error).
Done callbacks and awaiters' futures are kept by the tracker (``Tracker.waiters``, keyed by
job), so a job nobody waits on pays nothing for them. What was submitted is not kept: the store
records it, and ``SubmissionUncertainError.request`` carries it when it matters. See
``_tracker`` for the bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import ClientClosedError, JobFailed, JobTimeoutError, LipsyncError
from ._models import JobState, JobStatus

if TYPE_CHECKING:
    from ._tracker import Bucket, Tracker

__all__ = ["Done", "Job", "Place", "close_all", "iter_completed", "pack_state"]

log = logging.getLogger("lipsync_async")

# How a job ended (``Done.phase``); a pending job has no phase, its slot is a place.
_COMPLETED: Final = 1
_FAILED: Final = 2
_ENDED: Final = 3  # a status read was refused (404, 401): the error is kept in _state
_CANCELLED: Final = 4
_CLOSED: Final = 5

_FIELDS: Final = tuple(f.name for f in attrs.fields(JobState) if f.name != "id")
_STATUS: Final = _FIELDS.index("status")
# `Job._keep` packs a read's fields in this order without building a JobState (`_wire`'s
# `read_job_state` returns them so): a new JobState field must be added to both.
assert _FIELDS == (  # noqa: S101 - a layout shared with _wire, checked once at import
    "status", "model", "output", "error", "execution_time_ms", "timings", "output_raw"
), _FIELDS
_pack = attrgetter(*_FIELDS)


def pack_state(state: JobState) -> tuple[Any, ...]:
    """A state without its id, as a plain tuple: what a pending job keeps of it.

    The status is kept as its plain string (an enum member is an object the collector tracks),
    so the collector untracks the tuple the first time it sees it: a million pending jobs whose
    state a read changed add nothing to a full collection.
    """
    packed: tuple[Any, ...] = _pack(state)
    return (*packed[:_STATUS], str(state.status.value), *packed[_STATUS + 1 :])


def unpack_state(job_id: str, packed: tuple[Any, ...]) -> JobState:
    fields = dict(zip(_FIELDS, packed, strict=True))
    fields["status"] = JobStatus(fields["status"])
    return JobState(id=job_id, **fields)


INITIAL: Final = pack_state(JobState(id="", status=JobStatus.PROCESSING))
"""What a freshly submitted job knows of itself: shared by every such job."""

Callback = Callable[["Job"], object]
# An awaiter's own future is kept among the callbacks and set directly (see ``_notify``).
_Waiter = Callback | asyncio.Future[None]


class Place:
    """Where a pending job is when it is in no calendar bucket: ``idle`` (waiting for a
    delivery, or attached by id and not awaited) or ``reading`` (its status read is in flight).

    One of each per tracker, shared by all its jobs there; like a bucket, it names the tracker.
    """

    __slots__ = ("name", "tracker")

    def __init__(self, tracker: Tracker, name: str) -> None:
        self.tracker = tracker
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Done:
    """How a job ended, kept in its ``_slot``: the phase, and the error of a refused read.

    One per tracker and phase, shared by every job that ended so (closing a million jobs
    allocates nothing), except a refused read's, which carries its own error.
    """

    __slots__ = ("error", "phase", "tracker")

    def __init__(self, tracker: Tracker, phase: int, error: LipsyncError | None = None) -> None:
        self.tracker = tracker
        self.phase = phase
        self.error = error

    @staticmethod
    def marks(tracker: Tracker) -> tuple[Done, ...]:
        """The shared marks of ``tracker``, indexed by phase (``_ENDED``'s is never used)."""
        return tuple(Done(tracker, phase) for phase in range(_CLOSED + 1))


class Job:
    """An awaitable handle on a lipsync job: ``state = await job``.

    Awaiting returns the completed :class:`JobState` or raises :class:`JobFailed` (with
    ``.state``), the API error that ended tracking (a 404 or 401 on a status read), or
    :class:`ClientClosedError` when its client closed first (attach again with
    ``client.job(id)``). ``.state`` is the last known state, ``.done()`` tells whether the outcome
    is in, ``await job.wait(timeout)`` bounds one wait without ending the job, ``.cancel()`` stops
    tracking (the API has no cancel call: the job itself goes on at the service), and
    ``add_done_callback(fn)`` calls ``fn(job)`` once it ends, however it ends.

    Jobs are made by a client (a submit, ``client.job(id)``, ``client.pending()``), never
    directly.
    """

    __slots__ = ("__weakref__", "_id", "_slot", "_state")

    def __init__(self, job_id: str, tracker: Tracker, state: tuple[Any, ...] | None) -> None:
        self._id = job_id
        self._state: Any = state  # tuple | None while pending; see the module docstring
        # Where the job is (a bucket, or the tracker's idle or reading place) or how it ended.
        self._slot: Bucket | Place | Done = tracker.idle

    @property
    def _tracker(self) -> Tracker:
        return self._slot.tracker

    # -- public ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The service's job id."""
        return self._id

    @property
    def state(self) -> JobState | None:
        """The last known state (``None`` for a job attached by id and not read yet)."""
        state = self._state
        if state is None or type(state) is JobState:
            return state
        return unpack_state(self._id, state)

    def done(self) -> bool:
        """True once the job ended: completed, failed, tracking refused, cancelled or closed."""
        return type(self._slot) is Done

    def cancelled(self) -> bool:
        """True if ``cancel()`` stopped tracking this job before it finished."""
        slot = self._slot
        return type(slot) is Done and slot.phase == _CANCELLED

    def cancel(self) -> bool:
        """Stop tracking the job; its awaiters get ``asyncio.CancelledError``.

        The service has no cancel call, so the job runs on (and is billed) there; with a store,
        the job is no longer pending there either (``pending()`` will not resume it). Returns
        False if the job had already ended.
        """
        if type(self._slot) is Done:
            return False
        self._slot.tracker.forget(self)
        self._end(_CANCELLED)
        return True

    def result(self) -> JobState:
        """The outcome, without waiting: the completed state, or raise what ended the job.

        Each call raises a new exception (or the same one with a fresh traceback), so raising
        it again and again never grows its traceback.
        """
        slot = self._slot
        if type(slot) is Done and slot.phase == _COMPLETED:
            state: JobState = self._state
            return state
        raise self._error()

    def exception(self) -> BaseException | None:
        """What ended the job unsuccessfully, ``None`` if it completed (raises if not done)."""
        slot = self._slot
        if type(slot) is not Done or slot.phase == _CANCELLED:
            raise self._error()
        if slot.phase == _COMPLETED:
            return None
        return self._error()

    def add_done_callback(self, fn: Callback) -> None:
        """Call ``fn(job)`` once this job ends, however it ends.

        Like ``asyncio.Future``: callbacks run on the event loop, soon after the end, in the
        order they were added; a callback added after the end is scheduled at once. An
        exception in one is logged and does not stop the others.
        """
        if type(self._slot) is Done:
            self._slot.tracker.loop.call_soon(_run_callback, fn, self)
        else:
            self._subscribe(fn)

    def remove_done_callback(self, fn: Callback) -> int:
        """Remove every registration of ``fn``; return how many were removed."""
        return self._unsubscribe(fn)

    def _subscribe(self, fn: _Waiter) -> None:
        # Kept by the tracker, not on the job: most pending jobs have none, and a slot holding
        # None would still be one more reference for every gen-2 collection to visit.
        waiters = self._slot.tracker.waiters
        callbacks = waiters.get(self)
        if callbacks is None:
            waiters[self] = fn
        elif isinstance(callbacks, list):
            callbacks.append(fn)
        else:
            waiters[self] = [callbacks, fn]

    def _unsubscribe(self, fn: _Waiter) -> int:
        if type(self._slot) is Done:
            return 0
        waiters = self._slot.tracker.waiters
        callbacks = waiters.get(self)
        if callbacks is None:
            return 0
        if not isinstance(callbacks, list):
            if callbacks == fn:  # ==, not is: bound methods are made anew on each access
                del waiters[self]
                return 1
            return 0
        kept = [cb for cb in callbacks if cb != fn]
        removed = len(callbacks) - len(kept)
        if len(kept) > 1:
            waiters[self] = kept
        elif kept:
            waiters[self] = kept[0]
        else:
            del waiters[self]
        return removed

    def __await__(self) -> Generator[Any, None, JobState]:
        slot = self._slot
        if type(slot) is not Done:
            tracker = slot.tracker
            fut: asyncio.Future[None] = tracker.loop.create_future()
            self._subscribe(fut)  # set directly when the job ends, see _notify
            tracker.awaited(self)
            try:
                yield from fut.__await__()
            finally:
                # This awaiter was cancelled (a timeout, its task cancelled): the job goes on for
                # the others, without this future. Cancelling it made it done, so `done()` alone
                # cannot tell it from one the job's end set (each timed-out `wait` left one).
                if fut.cancelled() or not fut.done():
                    self._unsubscribe(fut)
        return self.result()

    async def wait(self, timeout: float | None = None) -> JobState:
        """Await the outcome for at most ``timeout`` seconds.

        Raises :class:`JobTimeoutError` when the deadline passes; the job stays tracked and can
        be awaited again.
        """
        if timeout is None or type(self._slot) is Done:
            return await self
        try:
            async with asyncio.timeout(timeout):
                return await self
        except TimeoutError:
            if type(self._slot) is Done:  # finished in the same loop turn as the deadline
                return self.result()
            raise JobTimeoutError(self._id, timeout) from None

    def __repr__(self) -> str:
        slot = self._slot
        phase = slot.phase if type(slot) is Done else None
        if phase == _CANCELLED:
            what = "cancelled"
        elif phase == _CLOSED:
            what = "closed"
        elif phase == _ENDED:
            what = f"error={type(slot.error).__name__}"  # type: ignore[union-attr]
        else:
            state = self.state
            what = str(state.status) if state is not None else "unknown"
        return f"<Job {self._id} {what}>"

    # -- the tracker's side ------------------------------------------------------------------
    # Only ``_tracker`` calls these: a Job and its tracker are one unit split for reading.

    def _take(self, state: JobState) -> None:
        """Take a state read or delivered; end the job if it is final.

        A state equal to the one held is not stored again: a read that changes nothing leaves
        nothing new behind for the collector.
        """
        if type(self._slot) is Done:
            return
        status = state.status
        if status is JobStatus.COMPLETED:
            self._state = state
            self._end(_COMPLETED)
        elif status is JobStatus.FAILED:
            self._state = state
            self._end(_FAILED)
        else:
            packed = pack_state(state)
            if packed != self._state:
                self._state = packed

    def _keep(self, status: JobStatus, rest: tuple[Any, ...]) -> None:
        """Take a pending state read (its status, and the other fields in ``_FIELDS`` order)
        without a ``JobState``: what ``_take`` does for a pending one, minus the model object.

        Unchanged (nearly every read), nothing is stored; changed, a plain tuple the
        collector untracks.
        """
        if type(self._slot) is not Done:
            packed = (status._value_, *rest)
            if packed != self._state:
                self._state = packed

    def _refuse(self, error: LipsyncError) -> None:
        """End tracking with the error a read got (404, 401); the last state stays."""
        if type(self._slot) is Done:
            return
        # Without the read's traceback: its frames hold the tracker, the reader and this job.
        self._end(_ENDED, error.with_traceback(None))

    def _close(self) -> None:
        """The client closed: end the wait (the error is built when someone raises it)."""
        if type(self._slot) is not Done:
            self._end(_CLOSED)

    def _end(self, phase: int, error: LipsyncError | None = None) -> None:
        # The tracker has already taken the job out of its calendar and its table: it does
        # that before it ends a job, so a finished job is referenced by nothing of the
        # client's but its mark (shared) and, until they run, its callbacks.
        tracker = self._slot.tracker
        self._slot = tracker.ends[phase] if error is None else Done(tracker, phase, error)
        waiters = tracker.waiters
        if waiters:
            callbacks = waiters.pop(self, None)
            if callbacks is not None:
                self._notify_all(callbacks)

    def _notify_all(self, callbacks: _Waiter | list[_Waiter]) -> None:
        if isinstance(callbacks, list):
            for cb in callbacks:
                self._notify(cb)
        else:
            self._notify(callbacks)

    def _notify(self, cb: Callback | asyncio.Future[None]) -> None:
        if isinstance(cb, asyncio.Future):
            # An awaiter's own future: set at once (one hop fewer than a scheduled callback,
            # and the same as asyncio.Future waking the task that awaits it).
            if not cb.done():
                cb.set_result(None)
        else:
            self._slot.tracker.loop.call_soon(_run_callback, cb, self)

    def _error(self) -> BaseException:
        slot = self._slot
        phase = slot.phase if type(slot) is Done else None
        if phase == _FAILED:
            return JobFailed(self._state)
        if phase == _ENDED:
            return _fresh(slot.error)  # type: ignore[union-attr,arg-type]
        if phase == _CLOSED:
            return ClientClosedError(self._id)
        if phase == _CANCELLED:
            return asyncio.CancelledError(f"job {self._id} tracking was cancelled")
        return asyncio.InvalidStateError(f"job {self._id} is not done")


def close_all(jobs: Iterable[Job], tracker: Tracker) -> None:
    """End every pending job of ``jobs``, and any other job ``tracker`` holds callbacks for,
    as closed: what ``Tracker.close`` does to each.

    One loop over the jobs' slots rather than a method call or two per job: a job nobody awaits
    (most of a million pending) costs one attribute store (its shared mark), so ``close()``
    stays well under a second at a million jobs. A job with awaiters or callbacks has them
    notified, in the order of ``jobs``.
    """
    mark = tracker.ends[_CLOSED]
    waiters = tracker.waiters
    for job in jobs:
        if type(job._slot) is not Done:
            job._slot = mark
            if waiters:
                callbacks = waiters.pop(job, None)
                if callbacks is not None:
                    job._notify_all(callbacks)
    for job in list(waiters):  # none by the tracker's invariants; never left waiting if so
        if type(job._slot) is not Done:
            job._end(_CLOSED)


async def iter_completed(
    jobs: Iterable[Job], *, timeout: float | None = None
) -> AsyncGenerator[Job, None]:
    """Yield each job as it ends, first ended first (``LipsyncClient.as_completed``).

    The jobs already ended come first, in the order given, without a callback each (after a
    fan-out, most are); then the others as they end. One shared callback for those, removed
    from every job when the iteration stops, early (``break``) or not: nothing of the iterator
    stays behind on a job. A timeout concerns the jobs still pending: ended ones are yielded.
    """
    unique = list(dict.fromkeys(jobs))
    if not unique:
        return
    loop = unique[0]._tracker.loop
    deadline = None if timeout is None else loop.time() + timeout
    ready: asyncio.Queue[Job] = asyncio.Queue()
    put = ready.put_nowait
    ended: list[Job] = []
    pending: list[Job] = []
    for job in unique:
        if job.done():
            ended.append(job)
        else:
            pending.append(job)
            job.add_done_callback(put)
            job._tracker.awaited(job)
    try:
        for job in ended:
            yield job
        for _ in range(len(pending)):
            if deadline is None:
                job = await ready.get()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        job = await ready.get()
                except TimeoutError:
                    raise JobTimeoutError(None, timeout) from None
            yield job
    finally:
        for job in pending:  # the ended ones never had it
            job.remove_done_callback(put)


def _fresh(error: LipsyncError) -> LipsyncError:
    """A copy of ``error`` to raise: same type, message and attributes, no traceback yet.

    Raising the stored object itself would hang each raise's traceback on it (growing, and
    holding the frames of whoever awaited: a cycle through the job). ``__new__`` without
    ``__init__``, because the error classes' constructors take keyword-only details.
    """
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    copy.__cause__ = error.__cause__
    return copy


def _run_callback(fn: Callback, job: Job) -> None:
    try:
        fn(job)
    except Exception:
        log.exception("done callback %r of job %s failed", fn, job.id)
