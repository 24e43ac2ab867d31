"""``StoreLink``: the client's side of a store, kept out of ``_client`` so it stays a composer.

It records each submit before its ``Job`` is returned, writes final states as jobs resolve,
turns the store's pending records back into tracked ``Job``s on resume, and hands the tracker
the final states other workers announce.

It subscribes to each job like any user, with ``Job.add_done_callback``, and always with the same
callable, so a pending job holds a reference to it and nothing allocated for it. The callback
only appends to a buffer; one flusher task (started when the buffer fills from empty, awaited
by ``close``) writes everything buffered in one call to the store. A fan-out of 100,000 jobs
costs a list append per job and a handful of batched writes, never a task per job.

What an ending writes: a final state (completed, failed) is recorded; a job the service does
not know (404) or that ``cancel()`` stopped is dropped from the pending records, so no later
``pending()`` resumes it; a job ended by a 401 (this worker's key, not the job) or by the
client closing stays pending, for a resume. With ``on_complete`` (``_complete.Completions``),
a final state is recorded, and the job dropped from pending, only once its completion is
settled: a worker dying inside the callback leaves the job for its adopter.

With a store that has owners (Redis), the store's heartbeat reports workers whose lease
expired and the link adopts their jobs (:meth:`StoreLink.pending`) on its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .._complete import Completions, OnComplete
from .._errors import NotFoundError
from .._job import Job
from .._models import JobState, Request
from .._tasks import cancel_and_wait
from .._telemetry import VIA_WORKER
from ._base import Store, StoreError
from ._records import record_for

if TYPE_CHECKING:
    from .._tracker import Tracker

__all__ = ["StoreLink"]

log = logging.getLogger("lipsync_async.stores")

_WRITE_ATTEMPTS: Final = 3
_CLOSE_TIMEOUT: Final = 10.0

Recorded = tuple[JobState | None, StoreError | None]


class StoreLink:
    """Binds one client's tracker to a store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        tracker: Tracker,
        *,
        vet: Callable[[JobState], None] | None = None,
        on_complete: OnComplete | None = None,
        close_timeout: float = _CLOSE_TIMEOUT,
    ) -> None:
        self.store = store
        self._tracker = tracker
        # With a verify=True receiver, states from the store (heard, resynced, handed over by
        # pending() or add_pending) go to its _vet, which resolves a job only with the API's
        # answer; otherwise straight to the tracker.
        self._vet = vet
        self._deliver: Callable[[JobState], object] = vet or functools.partial(
            tracker.deliver, via=VIA_WORKER
        )
        self._finished: list[JobState] = []
        self._dropped: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        self._open = False
        self._on_done = self._job_done  # one bound method, shared by every job's callbacks
        self._close_timeout = close_timeout
        self.completions = (
            None if on_complete is None else Completions(on_complete, store, release=self._settled)
        )

    async def open(self) -> None:
        await self.store.open()
        self._open = True
        if self.completions is not None:
            self.completions.open()
        self.store.add_listener(self._heard, self._resync, self._adopt)
        if not await self.store.ready():
            log.warning(
                "the store's channel is not listening yet; deliveries to other workers "
                "reach this one after it reconnects, or by polling"
            )

    async def close(self) -> None:
        """Write the outcomes still buffered, then release the store. Never raises."""
        if not self._open:
            return
        await asyncio.sleep(0)  # done callbacks the tracker's close just scheduled run first
        if self.completions is not None:  # settled completions add to what is flushed
            await self.completions.close(self._close_timeout)
        self._open = False
        self.store.remove_listener(self._heard, self._adopt)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                while self._flusher is not None:
                    await asyncio.shield(self._flusher)
        except TimeoutError:
            log.warning(
                "closing: final states not all written to the store within %s s; "
                "those jobs stay pending there and resolve again on resume",
                _CLOSE_TIMEOUT,
            )
            if self._flusher is not None:
                await cancel_and_wait([self._flusher])
        try:
            await self.store.close()
        except Exception:
            log.exception("closing the store failed")

    # -- submits -----------------------------------------------------------------------------

    async def record_submit(
        self, job_id: str, request: Request, trace: str | None = None
    ) -> Recorded:
        """Record the submit; return (a final state already known, or the store's failure).

        ``trace``: the submit span's traceparent, with OpenTelemetry on (see ``_telemetry``).
        """
        try:
            return await self.store.add_pending(record_for(job_id, request, trace)), None
        except StoreError as exc:
            return None, exc

    def submitted(self, job: Job, recorded: Recorded) -> None:
        """After the job is tracked: resolve it if its outcome was known, or raise the failure.

        The error carries the job (tracked in memory like any other), so a job that exists at
        the service is never dropped on the floor because the store was down.
        """
        final, failure = recorded
        job.add_done_callback(self._on_done)
        if failure is not None:
            raise StoreError(
                f"the submit succeeded but the store could not record it: {failure}",
                job_id=job.id,
                job=job,
            ) from failure
        if final is not None:
            self._deliver(final)

    # -- resume ------------------------------------------------------------------------------

    async def pending(self) -> list[Job]:
        """Jobs for the store's unfinished records; those whose outcome is known resolve now.

        A resumed job is polled from the next ``poll_interval`` on, not after the webhook grace:
        its delivery may have come while no process listened.
        """
        tracker = self._tracker
        tel = tracker.tel
        jobs: list[Job] = []
        for record, final in await self.store.pending():
            known = tracker.get(record.id) is not None
            if tel.on and not known:  # its trace goes on here (see _telemetry)
                tel.resumed(record.id, record.trace, record.submitted_at)
            # With verification, a final the store hands over is checked by a read: poll it.
            job = tracker.attach(record.id, poll=final is None or self._vet is not None)
            if not known:
                job.add_done_callback(self._on_done)
            if final is not None:
                self._deliver(final)
            jobs.append(job)
        return jobs

    def watch(self, job: Job) -> None:
        """A job attached by id (``client.job``): its ending is recorded like a submit's."""
        job.add_done_callback(self._on_done)

    async def _adopt(self) -> None:
        """The store saw expired workers: take over their jobs (each goes to one worker)."""
        if self._open:
            await self.pending()

    # -- outcomes ----------------------------------------------------------------------------

    def _job_done(self, job: Job) -> None:
        if job.cancelled():
            self._dropped.append(job.id)  # the user stopped it: never resume it
        else:
            error = job.exception()
            state = job.state
            if error is None or (state is not None and state.is_final):
                assert state is not None  # noqa: S101 - a completed or failed job has its state
                if self.completions is not None:
                    self.completions.job_done(job)  # recorded once settled: _settled
                    return
                self._finished.append(state)
            elif isinstance(error, NotFoundError):
                self._dropped.append(job.id)  # the service does not know it: it never resolves
            else:
                return  # a 401 (this worker's key), or the client closed: keep it pending
        if self._flusher is None and self._open:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="lipsync-store-flush"
            )

    def _settled(self, state: JobState) -> None:
        """The job's completion ran and was acknowledged (or was done elsewhere): record it."""
        self._finished.append(state)
        if self._flusher is None and self._open:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="lipsync-store-flush"
            )

    async def _flush(self) -> None:
        try:
            while self._finished or self._dropped:
                states, self._finished = self._finished, []
                dropped, self._dropped = self._dropped, []
                await self._write(states, dropped)
        finally:
            self._flusher = None

    async def _write(self, states: list[JobState], dropped: list[str]) -> None:
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                await self.store.finish(states, dropped)
            except StoreError as exc:
                if attempt + 1 < _WRITE_ATTEMPTS:
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                log.warning(
                    "could not record %d final states (%s); those jobs stay pending in the "
                    "store and resolve again on resume",
                    len(states) + len(dropped),
                    exc,
                )
            except Exception:
                log.exception("recording final states failed")
            return

    # -- the channel -------------------------------------------------------------------------

    def _heard(self, state: JobState) -> None:
        # Unknown ids are held briefly by the tracker: the announcement can beat our own
        # submit's answer when the delivery landed on another worker.
        self._deliver(state)

    async def _resync(self) -> None:
        ids = [job.id for job in self._tracker.jobs()]
        if not ids:
            return
        for state in (await self.store.finals(ids)).values():
            self._deliver(state)
