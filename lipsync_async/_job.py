"""``Job``: the awaitable handle of one submitted job, resolved exactly once.

A ``Job`` is what a fan-out of 100,000 holds in memory, so it is lean: slots, no task and no
future of its own. Each awaiter gets its own future (created on demand), so cancelling one
awaiter never cancels the job for the others, and an outcome nobody awaited is never reported
as "exception was never retrieved". Whoever learns the outcome first (the poller, the webhook
receiver, another worker through a store) calls ``_finish``; later outcomes are ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from ._errors import JobFailed, JobTimeoutError, LipsyncError
from ._models import JobState, JobStatus

if TYPE_CHECKING:
    from ._models import Request

__all__ = ["Job", "JobOwner"]

_PENDING = 0
_DONE = 1
_CANCELLED = 2


class JobOwner:
    """What a ``Job`` needs from whoever tracks it (the client's tracker)."""

    __slots__ = ()

    def _job_awaited(self, job: Job) -> None:
        """Someone waits on ``job``: make sure it is tracked (attached jobs start lazily)."""

    def _job_cancelled(self, job: Job) -> None:
        """``job.cancel()`` was called: stop tracking it."""


class Job:
    """An awaitable handle on a lipsync job: ``state = await job``.

    Awaiting returns the completed :class:`JobState` or raises :class:`JobFailed` (with
    ``.state``), or the API error that ended tracking (a 404 or 401 on a status read).
    ``.state`` is the last known state, ``.done()`` tells whether the outcome is in,
    ``await job.wait(timeout)`` bounds one wait without ending the job, and ``.cancel()`` stops
    tracking (the API has no cancel call: the job itself goes on at the service).
    """

    __slots__ = ("_error", "_id", "_owner", "_phase", "_request", "_state", "_waiters", "due")

    def __init__(
        self,
        job_id: str,
        owner: JobOwner,
        *,
        request: Request | None = None,
        state: JobState | None = None,
    ) -> None:
        self._id = job_id
        self._owner = owner
        self._request = request
        self._state = state
        self._error: BaseException | None = None
        self._phase = _PENDING
        # None, one callback, or a list: most jobs have zero or one waiter, so no list for them.
        self._waiters: Callable[[Job], None] | list[Callable[[Job], None]] | None = None
        self.due = 0.0  # the tracker's next status read, in loop time (0: not scheduled)

    # -- public ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The service's job id."""
        return self._id

    @property
    def state(self) -> JobState | None:
        """The last known state (``None`` for a job attached by id and not read yet)."""
        return self._state

    @property
    def request(self) -> Request | None:
        """What was submitted, when this process submitted it."""
        return self._request

    def done(self) -> bool:
        """True once the outcome is in (completed, failed, tracking ended) or after ``cancel()``."""
        return self._phase != _PENDING

    def cancelled(self) -> bool:
        """True if ``cancel()`` stopped tracking this job before it finished."""
        return self._phase == _CANCELLED

    def cancel(self) -> bool:
        """Stop tracking the job; its awaiters get ``asyncio.CancelledError``.

        The service has no cancel call, so the job runs on (and is billed) there. Returns False
        if the job was already done.
        """
        if self._phase != _PENDING:
            return False
        self._phase = _CANCELLED
        self._owner._job_cancelled(self)
        self._wake()
        return True

    def result(self) -> JobState:
        """The outcome, without waiting: the completed state, or raise what ended the job."""
        if self._phase == _CANCELLED:
            raise asyncio.CancelledError(f"job {self._id} tracking was cancelled")
        if self._phase == _PENDING:
            raise asyncio.InvalidStateError(f"job {self._id} is not done")
        if self._error is not None:
            raise self._error
        assert self._state is not None  # noqa: S101 - a done job without error has its state
        return self._state

    def exception(self) -> BaseException | None:
        """What ended the job unsuccessfully, ``None`` if it completed (raises if not done)."""
        if self._phase == _PENDING:
            raise asyncio.InvalidStateError(f"job {self._id} is not done")
        if self._phase == _CANCELLED:
            raise asyncio.CancelledError(f"job {self._id} tracking was cancelled")
        return self._error

    def __await__(self) -> Generator[Any, None, JobState]:
        if self._phase == _PENDING:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()

            def wake(_: Job) -> None:
                if not fut.done():
                    fut.set_result(None)

            self._add_waiter(wake)
            self._owner._job_awaited(self)
            try:
                yield from fut.__await__()
            finally:
                if not fut.done():  # this awaiter was cancelled; the job goes on for others
                    self._remove_waiter(wake)
        return self.result()

    async def wait(self, timeout: float | None = None) -> JobState:
        """Await the outcome for at most ``timeout`` seconds.

        Raises :class:`JobTimeoutError` when the deadline passes; the job stays tracked and can
        be awaited again.
        """
        if timeout is None or self._phase != _PENDING:
            return await self
        try:
            async with asyncio.timeout(timeout):
                return await self
        except TimeoutError:
            if self._phase != _PENDING:  # finished in the same loop turn as the deadline
                return self.result()
            raise JobTimeoutError(self._id, timeout) from None

    def __repr__(self) -> str:
        if self._phase == _CANCELLED:
            what = "cancelled"
        elif self._error is not None and not isinstance(self._error, JobFailed):
            what = f"error={type(self._error).__name__}"
        elif self._state is not None:
            what = str(self._state.status)
        else:
            what = "unknown"
        return f"<Job {self._id} {what}>"

    # -- for the tracker ---------------------------------------------------------------------

    def _update(self, state: JobState) -> bool:
        """Take a state; finish the job if it is final. True if this call finished it."""
        if self._phase != _PENDING:
            return False
        self._state = state
        if state.status is JobStatus.COMPLETED:
            self._phase = _DONE
        elif state.status is JobStatus.FAILED:
            self._phase = _DONE
            self._error = JobFailed(state)
        else:
            return False
        self._wake()
        return True

    def _fail(self, error: LipsyncError) -> bool:
        """End tracking with an error (a 404 or 401 on read). True if this call finished it."""
        if self._phase != _PENDING:
            return False
        self._phase = _DONE
        self._error = error
        self._wake()
        return True

    def _add_waiter(self, callback: Callable[[Job], None]) -> None:
        if self._phase != _PENDING:
            callback(self)
        elif self._waiters is None:
            self._waiters = callback
        elif isinstance(self._waiters, list):
            self._waiters.append(callback)
        else:
            self._waiters = [self._waiters, callback]

    def _remove_waiter(self, callback: Callable[[Job], None]) -> None:
        waiters = self._waiters
        if waiters is callback:
            self._waiters = None
        elif isinstance(waiters, list):
            try:
                waiters.remove(callback)
            except ValueError:
                pass

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        if waiters is None:
            return
        if isinstance(waiters, list):
            for cb in waiters:
                cb(self)
        else:
            waiters(self)
