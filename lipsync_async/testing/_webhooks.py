"""Webhook deliveries: one timer for all jobs, one client session, faults on demand.

Jobs due for delivery sit in a heap keyed by due time; a single ``loop.call_later`` handle is
armed for the earliest. When it fires, every due job gets a delivery task (kept in a set,
cancelled on close), and the handle is re-armed for the next one. So 20,000 pending webhook jobs
cost 20,000 heap entries, not 20,000 sleeping tasks.

A delivery POSTs the job's final seven-key JSON through the one ``aiohttp.ClientSession`` the
dispatcher owns, re-POSTs on a non-2xx answer or a connection error (``webhook_retries`` times,
backoff 0.05 s, 0.1 s, 0.2 s, ...), and may be lost, duplicated or delayed according to the
server's knobs, read at the moment they apply so tests can change them while running.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import aiohttp

from ._jobs import Delivery, FakeJob

__all__ = ["WebhookDispatcher"]

_log = logging.getLogger("lipsync_async.testing")

_HEADERS = {"Content-Type": "application/json"}
_FIRST_BACKOFF = 0.05
#: Per attempt: a receiver that hangs must not hold a delivery (or an early submit) forever.
_ATTEMPT_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
#: call_later may fire a hair early (clock resolution); final bodies ignore the clock anyway.
_SLACK = 0.001


class _Knobs(Protocol):
    """The server attributes deliveries read (FakeLipsyncServer provides them)."""

    webhook_duplicate_rate: float
    webhook_loss_rate: float
    webhook_delay: float
    webhook_retries: int
    rng: random.Random


class WebhookDispatcher:
    """Schedules and makes the webhook deliveries of one emulator."""

    def __init__(self, knobs: _Knobs) -> None:
        self._knobs = knobs
        self.deliveries: list[Delivery] = []
        self.lost: list[str] = []
        self._heap: list[tuple[float, int, FakeJob]] = []
        self._seq = 0  # heap tie-breaker: jobs do not compare
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._progress = asyncio.Event()

    async def start(self) -> None:
        """Open the delivery session (inside the running loop)."""
        self._session = aiohttp.ClientSession(timeout=_ATTEMPT_TIMEOUT)

    async def close(self) -> None:
        """Stop the timer, cancel deliveries in flight, close the session."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, job: FakeJob) -> None:
        """Deliver ``job``'s final state when it finishes, plus ``webhook_delay``."""
        if self._closed or job.webhook is None or job.delivery_started:
            return
        due = job.finishes_at + self._knobs.webhook_delay
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, job))
        if due < self._timer_due:
            self._arm(due)

    async def deliver_now(self, job: FakeJob) -> None:
        """Deliver ``job`` immediately and wait for it (early deliveries, before the answer)."""
        task = self._start(job)
        if task is not None:
            # asyncio.wait, not await: a close() that cancels the delivery must not turn into
            # a CancelledError inside the submit handler.
            await asyncio.wait({task}, timeout=_ATTEMPT_TIMEOUT.total)

    async def wait(self, count: int, timeout: float) -> None:
        """Return once ``count`` attempts were made; ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(self.deliveries)} webhook delivery attempts after {timeout} s,"
                    f" expected {count}"
                )
            progress = self._progress
            try:
                await asyncio.wait_for(progress.wait(), remaining)
            except TimeoutError:
                continue

    # -- internals ---------------------------------------------------------------------------

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._fire)
        self._timer_due = due

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = float("inf")
        heap = self._heap
        limit = time.monotonic() + _SLACK
        while heap and heap[0][0] <= limit:
            _, _, job = heapq.heappop(heap)
            self._start(job)
        if heap:
            self._arm(heap[0][0])

    def _start(self, job: FakeJob) -> asyncio.Task[None] | None:
        if self._closed or job.webhook is None or job.delivery_started:
            return None
        job.delivery_started = True
        if self._knobs.rng.random() < self._knobs.webhook_loss_rate:
            self.lost.append(job.id)
            return None
        return self._spawn(self._deliver(job, job.webhook))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("webhook delivery crashed", exc_info=exc)

    async def _deliver(self, job: FakeJob, url: str) -> None:
        duplicate = self._knobs.rng.random() < self._knobs.webhook_duplicate_rate
        body = job.final_body()
        await self._post(job.id, url, body, duplicate=False)
        if duplicate:
            await self._post(job.id, url, body, duplicate=True)

    async def _post(self, job_id: str, url: str, body: bytes, *, duplicate: bool) -> None:
        session = self._session
        if session is None:
            return
        retries = max(0, self._knobs.webhook_retries)
        for attempt in range(1, retries + 2):
            at = time.monotonic()
            status: int | None
            try:
                async with session.post(url, data=body, headers=_HEADERS) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                status = None
            self._record(
                Delivery(
                    job_id=job_id,
                    url=url,
                    status=status,
                    attempt=attempt,
                    duplicate=duplicate,
                    at=at,
                )
            )
            if status is not None and 200 <= status < 300:
                return
            if attempt <= retries:
                await asyncio.sleep(_FIRST_BACKOFF * 2 ** (attempt - 1))

    def _record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        # Wake every waiter, then give later waiters a fresh event to sleep on.
        self._progress.set()
        self._progress = asyncio.Event()
