"""``on_complete``: a callback run once per job, however many ways the job's end is observed.

A job's end can be observed many times over: a delivery and a poll, a duplicated webhook, two
workers tracking one job (an attach, an adoption while its owner was only cut off), a restart
that resumes a job whose outcome is known. Users' most expensive bugs in this field are side
effects run twice (a second asset, a second refund), so the callback is guarded by a claim in
the store (:meth:`Store.claim <lipsync_async.stores.Store.claim>`):

1. the first final observation of a job claims it atomically and gets a fencing token
   (tokens only grow); any later observation finds the claim held or done and runs nothing;
2. the callback runs; whatever it returns or raises (an exception is logged), the claim is then
   acknowledged (:meth:`~lipsync_async.stores.Store.ack`: *done*, if the token still holds it);
3. only then is the job's pending record dropped from the store. A worker that dies inside the
   callback leaves the record and a claim whose holder is dead (Redis: its lease expires); the
   worker that adopts the job observes its end again, takes the claim over with a larger token
   and runs the callback again.

So the callback runs **exactly once per job** unless a worker dies (or is cut off from Redis
for longer than its lease, or its client is closed) while the callback runs: then it runs
again on the adopter, **at least once** per such crash. A claim found held by another live
worker is checked again every ``claim_retry`` seconds until it is done (the pending record is
kept until then, so a holder that dies is covered too).

**A store outage loses nothing.** A claim or an acknowledgement the store cannot take (after
a few quick retries) joins the same retry set and is tried again every ``claim_retry``
seconds for as long as the client is open: a job that ends while Redis is down gets its
callback once Redis is back, and a callback that ran is only acknowledged, never run again
by this process. One WARNING says the store is failing and an INFO that it answers again (not
one per job). Closed before the store came back, the claims stay where they are and the
records stay pending: the worker's next run (or the adopter) completes them, at least once.

Where the claims live: Redis, fleet-wide; SQLite, per machine and across restarts (a claim
whose holder process is gone is taken over); MemoryStore, or no store, this process (the
last 100,000 acknowledged claims are remembered).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from ._job import Job
from ._models import JobState
from ._tasks import cancel_and_wait
from .stores._base import CLAIM_DONE, CLAIM_HELD, Store, StoreError

__all__ = ["Completions", "OnComplete"]

log = logging.getLogger("lipsync_async")

OnComplete = Callable[[Job], "Awaitable[object] | object"]
"""``fn(job)``, sync or async; ``job.state`` is the final state (completed or failed)."""

_ATTEMPTS: Final = 3
#: Completions (a claim, the callback, the acknowledgement) in progress at once: a burst of
#: ends is worked through by this many tasks, never a task per job.
CONCURRENCY: Final = 64


class Completions:
    """Runs ``fn`` once per finished job, guarded by ``store``'s claims (see the docstring).

    ``release(state)`` is called once the job's completion is settled (acked, or found done),
    so that the caller drops its pending record then and not before.
    """

    def __init__(
        self,
        fn: OnComplete,
        store: Store,
        *,
        release: Callable[[JobState], None] | None = None,
    ) -> None:
        self._fn = fn
        self._store = store
        self._release = release
        self._queue: deque[Callable[[], Awaitable[None]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()  # the workers, at most CONCURRENCY
        # Workers that have not decided to exit: counted down in the step a worker sees the
        # queue empty (not by a done callback a later iteration runs), so a completion queued
        # in between always has a worker coming.
        self._workers = 0
        # Claims taken and not yet acknowledged: released by close, so that a claim this
        # client cannot finish does not stay "held" by a holder that looks alive (this
        # process, its lease still renewed by another user of the store).
        self._claimed: dict[str, int] = {}
        # Acknowledgements owed: the callback ran and the store has not yet taken its ack (in
        # flight, failed and waiting for its retry, or failed during close): close tries each
        # once more, however far it got, so that a claim whose callback ran is not left held.
        self._owed: dict[str, int] = {}
        # Completions to try again: None, a claim (held by a live peer, or the store failed);
        # a token, an acknowledgement the store failed to take after the callback ran.
        self._held: dict[str, tuple[Job, JobState, int | None]] = {}
        self._retrier: asyncio.Task[None] | None = None
        self._down = False  # the store failed since its last success: warned once
        # This object's name in the store's claims (a retried claim whose answer was lost gets
        # its own token back), and the jobs it is completing: a second observation of one of
        # them (a job attached twice, a delivery and a poll) is dropped here, not claimed again.
        self._claimant = uuid.uuid4().hex
        self._active: set[str] = set()
        self._closed = False
        self.ran = 0  # callbacks run in this process (a figure for tests)
        self.on_done = self.job_done  # one bound method, shared by every job's callbacks

    def job_done(self, job: Job) -> None:
        """A job ended: a final one is queued to be claimed and completed."""
        state = job.state
        if self._closed or job.cancelled() or state is None or not state.is_final:
            return
        if job.id in self._active:
            return
        self._active.add(job.id)
        self._start(partial(self._complete, job, state))

    def _start(self, step: Callable[[], Awaitable[None]]) -> None:
        self._queue.append(step)
        if self._workers < CONCURRENCY:
            self._workers += 1
            task = asyncio.get_running_loop().create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        queue = self._queue
        try:
            while queue:
                step = queue.popleft()
                try:
                    await step()
                except Exception:  # a store's bug must not end the worker, the queue unserved
                    log.exception("on_complete: a completion step failed")
        finally:
            self._workers -= 1  # in the step that saw the queue empty (or on cancellation)

    async def _store_call(self, what: str, call: Callable[[], Awaitable[int | bool]]) -> int | bool:
        for attempt in range(_ATTEMPTS):
            try:
                result = await call()
            except StoreError as exc:
                if attempt + 1 == _ATTEMPTS:
                    raise
                log.debug("%s failed (%s); retrying", what, exc)
                await asyncio.sleep(0.1 * 2**attempt)
            else:
                if self._down:
                    self._down = False
                    log.info("the store answers again; waiting completions go ahead")
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _complete(self, job: Job, state: JobState) -> None:
        try:
            token = await self._store_call(
                "claiming a completion", lambda: self._store.claim(job.id, self._claimant)
            )
        except StoreError as exc:
            self._later(job, state, None, f"cannot claim the completion of job {job.id!r}", exc)
            return
        if token == CLAIM_DONE:
            self._settled(state)
            return
        if token == CLAIM_HELD:
            self._later(job, state, None)
            return
        self._claimed[job.id] = int(token)
        await self._run(job, state, int(token))

    async def _run(self, job: Job, state: JobState, token: int) -> None:
        try:
            result = self._fn(job)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # close() cancels this worker: the claim is released there
            # The callback's own CancelledError (it awaited a cancelled job): a failure of
            # the callback like any other, not the end of this worker.
            log.exception("on_complete failed for job %r (it is not run again)", job.id)
        except Exception:
            log.exception("on_complete failed for job %r (it is not run again)", job.id)
        self._claimed.pop(job.id, None)  # ran: from now on only the ack is owed
        self._owed[job.id] = token
        self.ran += 1
        await self._ack(job, state, token)

    async def _ack(self, job: Job, state: JobState, token: int) -> None:
        try:
            acked = await self._store_call(
                "acknowledging a completion", lambda: self._store.ack(job.id, token)
            )
        except StoreError as exc:
            # The callback ran: only the acknowledgement is tried again, never the callback.
            what = f"on_complete ran for job {job.id!r} but cannot be acknowledged"
            self._later(job, state, token, what, exc)
            return
        self._owed.pop(job.id, None)
        if not acked:
            log.warning(
                "job %r: its completion claim was taken over while on_complete ran (this "
                "worker was thought dead): on_complete may have run twice",
                job.id,
            )
        self._settled(state)

    def _later(
        self,
        job: Job,
        state: JobState,
        token: int | None,
        what: str = "",
        exc: StoreError | None = None,
    ) -> None:
        """Try the claim (``token`` None) or the acknowledgement again in ``claim_retry`` s."""
        if self._closed:
            return
        if exc is not None:
            if not self._down:
                log.warning(
                    "the store is failing (%s: %s); completions are retried every %s s "
                    "while this client is open",
                    what,
                    exc,
                    self._store.claim_retry,
                )
            else:
                log.debug("%s (%s); retried", what, exc)
            self._down = True
        self._held[job.id] = (job, state, token)
        if self._retrier is None:
            self._retrier = asyncio.get_running_loop().create_task(self._retry_held())

    def _settled(self, state: JobState) -> None:
        self._active.discard(state.id)
        if self._release is not None:
            self._release(state)

    async def _retry_held(self) -> None:
        try:
            while self._held:
                await asyncio.sleep(self._store.claim_retry)
                batch, self._held = self._held, {}
                for job, state, token in batch.values():
                    if token is None:
                        self._start(partial(self._complete, job, state))
                    else:
                        self._start(partial(self._ack, job, state, token))
        finally:
            self._retrier = None

    def open(self) -> None:
        """(Re)open: a client closed and opened again completes its jobs again, under a new
        claimant (claims left by the previous opening were released or acknowledged)."""
        self._closed = False
        self._down = False
        self._claimant = uuid.uuid4().hex

    async def close(self, timeout: float) -> None:
        """Let running completions finish within ``timeout``, then cancel them.

        Acknowledgements still owed (the callback ran, the store failed or had not answered
        yet, including while this waited for the running completions) are tried once more;
        claims of callbacks that did not finish are released, so the job's next observer (a
        resume, an adopter, another client of this process) claims it again at once.
        """
        self._closed = True
        if self._retrier is not None:
            await cancel_and_wait([self._retrier])
        self._held.clear()
        self._active.clear()
        if self._tasks:
            _, running = await asyncio.wait(set(self._tasks), timeout=timeout)
        else:
            running = set()
        if running or self._queue:
            log.warning(
                "closing: %d on_complete completion(s) still running or queued after %s s "
                "were cancelled; their jobs stay pending, and run where they are resumed",
                len(running) + len(self._queue),
                timeout,
            )
            self._queue.clear()
            # Cancelled once: they run the user's callback, whose own cleanup on the way out
            # must not be cut short by a second cancel.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        # Read only now: an ack failing while the workers finished, or cut off by their
        # cancellation, is owed too.
        owed, self._owed = self._owed, {}
        claimed, self._claimed = self._claimed, {}
        try:
            async with asyncio.timeout(timeout):
                for job_id, token in owed.items():
                    await self._store.ack(job_id, token)
                for job_id, token in claimed.items():
                    await self._store.release(job_id, token)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "closing: on_complete claims could not be settled in the store (%s); they "
                "are taken over when their holder's lease ends, or by this worker's next run",
                exc,
            )
