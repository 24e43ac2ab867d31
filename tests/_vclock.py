"""A virtual clock and a scripted transport, for testing the scheduler without sleeping.

``VirtualLoop`` is an ordinary selector event loop whose ``time()`` is a number the loop
advances itself: when it would block waiting for a timer, it jumps to that timer instead of
sleeping (trio's "autojump" clock). A test therefore runs hours of polling in milliseconds,
deterministically. When the loop would block with *nothing* scheduled, it raises
:class:`Stranded`: in these tests, that is a wait that can never end.

``ScriptedService`` plays lipsync.studio at the transport boundary (the tracker's only
dependency): it holds each job's truth, answers status reads after a scripted delay, and
injects the faults a test queues (5xx after retries, 404, 401, a bug). It asserts the
tracker's bound on reads in flight.
"""

from __future__ import annotations

import asyncio
import json
import selectors
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lipsync_async import AuthenticationError, NotFoundError, ServerError

T = TypeVar("T")


class Stranded(RuntimeError):
    """The loop had nothing left to run and nothing scheduled: a wait that never ends."""


class _AutojumpSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        # Each loop turn costs `step` of virtual time (0 by default): with a step, a timer can
        # fall due between two turns of one task, as on a real clock.
        self._vloop.now += self._vloop.step
        events: list[tuple[Any, int]] = super().select(0)
        if events:
            return events
        if timeout is None:
            raise Stranded("nothing is scheduled and nothing can happen: a wait never ends")
        if timeout > 0:
            # Jump to the due timer's own float, not now + timeout: that sum can fall an ulp
            # short, and code comparing `when <= loop.time()` would then see it not yet due.
            # (`_scheduled` is asyncio's private timer heap: this is test scaffolding.)
            scheduled = self._vloop._scheduled  # type: ignore[attr-defined]
            target = self._vloop.now + timeout
            if scheduled:
                target = max(target, scheduled[0].when())
            self._vloop.now = target
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring)."""

    def __init__(self, *, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step
        super().__init__(_AutojumpSelector(self))

    def time(self) -> float:
        return self.now

    def armed(self) -> list[float]:
        """When each timer still armed on this loop is due (cancelled ones excluded)."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return sorted(h.when() for h in scheduled if not h.cancelled())


class ScriptedService:
    """Job truths, status reads with scripted delays and faults (see the module docstring)."""

    def __init__(
        self, *, max_in_flight: int = 4, read_delay: float = 0.01, align: float | None = None
    ) -> None:
        self.max_in_flight = max_in_flight
        self.read_delay = read_delay
        # With ``align``, a read ends exactly on a multiple of it (the scheduler's tick), the
        # same float the scheduler computes for a bucket's timer: a read's end and a bucket
        # falling due then share one loop turn, the interleaving that used to strand a job.
        self.align = align
        self.truth: dict[str, dict[str, Any]] = {}
        self.faults: deque[tuple[str, float]] = deque()
        self.reads: list[str] = []
        self.in_flight = 0
        self.max_seen = 0

    def create(self, job_id: str) -> None:
        self.truth[job_id] = {
            "id": job_id,
            "model": "lipsync",
            "status": "processing",
            "output": None,
            "error": "",
            "executionTime": None,
            "timings": None,
        }

    def finish(self, job_id: str, *, failed: bool = False) -> dict[str, Any]:
        state = self.truth[job_id]
        if state["status"] == "processing":
            state.update(
                model="lipsync-image",
                status="failed" if failed else "completed",
                output=None if failed else f"https://cdn.example.com/{job_id}.mp4",
                error="scripted failure" if failed else "",
                executionTime=1234,
            )
        return state

    async def read(
        self, path: str, *, job_id: str | None = None, retry: bool = True
    ) -> tuple[int, bytes]:
        """The tracker's one call: ``GET jobs/{id}`` (one attempt, ``retry`` or not)."""
        assert job_id is not None and path == f"jobs/{job_id}"
        self.in_flight += 1
        self.max_seen = max(self.max_seen, self.in_flight)
        assert self.in_flight <= self.max_in_flight, "more reads in flight than the bound"
        try:
            kind, delay = self.faults.popleft() if self.faults else ("ok", self.read_delay)
            if self.align is None:
                await asyncio.sleep(delay)
            else:
                loop = asyncio.get_running_loop()
                until = loop.create_future()
                key = int((loop.time() + delay) / self.align) + 1
                loop.call_at(key * self.align, until.set_result, None)
                await until
            self.reads.append(job_id)
            if kind == "5xx":
                raise ServerError("scripted outage", status=503, job_id=job_id)
            if kind == "401":
                raise AuthenticationError("scripted bad key", status=401, job_id=job_id)
            if kind == "bug":
                raise RuntimeError("scripted bug in a read")
            state = self.truth.get(job_id)
            if kind == "404" or state is None:
                raise NotFoundError("no such job", status=404, job_id=job_id)
            return 200, json.dumps(state).encode()
        finally:
            self.in_flight -= 1


def run(loop: VirtualLoop, make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` to its end on ``loop`` (its coroutine is made inside the loop)."""

    async def main() -> T:
        return await make()

    return loop.run_until_complete(main())
