"""What the emulator remembers: jobs, whose state is computed from the clock, and deliveries.

A job never runs anything. It records when it was created and when it will be final, and its
status is computed lazily on every read (``processing`` before ``finishes_at``, then
``completed`` or ``failed``), so 20,000 jobs cost 20,000 small objects and no timers. Forcing a
job to finish (:meth:`FakeJob.finish`) just moves ``finishes_at`` to now.

The JSON a job renders is exactly the service's seven keys, in the service's order::

    {"id", "model", "status", "output", "error", "executionTime", "timings"}
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

__all__ = ["COMPLETED", "FAILED", "PROCESSING", "Delivery", "FakeJob"]

PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"

#: The service's page shows this generic model name while a job runs, the endpoint's after.
_GENERIC_MODEL = "lipsync"
_PROCESSING_BODY = (
    b'{"id":"%s","model":"lipsync","status":"processing",'
    b'"output":null,"error":"","executionTime":null,"timings":null}'
)


@attrs.define(kw_only=True, eq=False)
class FakeJob:
    """One job the emulator accepted; its status is a function of the clock.

    Attributes are the emulator's bookkeeping, readable (and, with care, writable) by tests:
    ``form_state`` is the submitted ``formState`` as received (unknown keys included), ``fails``
    and ``error`` the outcome decided at submit, ``cost`` the credits charged.
    """

    id: str
    endpoint: str
    api_key: str = attrs.field(repr=False)
    form_state: dict[str, Any] = attrs.field(repr=False)
    webhook: str | None
    created_at: float
    finishes_at: float
    fails: bool
    error: str
    cost: float
    output_url: str = attrs.field(repr=False)
    #: Set once a webhook delivery for this job was started (or decided lost): never twice.
    delivery_started: bool = attrs.field(default=False, repr=False)
    _final_body: bytes | None = attrs.field(default=None, init=False, repr=False)

    @property
    def status(self) -> str:
        """``"processing"``, ``"completed"`` or ``"failed"``, as a GET would say now."""
        return self.status_at(time.monotonic())

    def status_at(self, now: float) -> str:
        """The status at monotonic time ``now``."""
        if now < self.finishes_at:
            return PROCESSING
        return FAILED if self.fails else COMPLETED

    def is_final(self, now: float | None = None) -> bool:
        """Whether the job has completed or failed (at ``now``, default the current time)."""
        return (time.monotonic() if now is None else now) >= self.finishes_at

    def state(self, now: float | None = None) -> dict[str, object]:
        """The seven-key job JSON, as a dict, at ``now`` (default the current time)."""
        if (time.monotonic() if now is None else now) < self.finishes_at:
            return {
                "id": self.id,
                "model": _GENERIC_MODEL,
                "status": PROCESSING,
                "output": None,
                "error": "",
                "executionTime": None,
                "timings": None,
            }
        return self.final_state()

    def final_state(self) -> dict[str, object]:
        """The state the job has once final, whatever the clock says (webhook bodies)."""
        if self.fails:
            return {
                "id": self.id,
                "model": self.endpoint,
                "status": FAILED,
                "output": None,
                "error": self.error,
                "executionTime": None,
                "timings": None,
            }
        return {
            "id": self.id,
            "model": self.endpoint,
            "status": COMPLETED,
            "output": self.output_url,
            "error": "",
            "executionTime": round((self.finishes_at - self.created_at) * 1000),
            "timings": None,
        }

    def body(self, now: float) -> bytes:
        """:meth:`state` serialised: the hot path of ``GET /jobs/{id}``, so templated/cached."""
        if now < self.finishes_at:
            return _PROCESSING_BODY % self.id.encode()
        return self.final_body()

    def final_body(self) -> bytes:
        """:meth:`final_state` serialised once: a final job never changes."""
        if self._final_body is None:
            self._final_body = json.dumps(self.final_state(), separators=(",", ":")).encode()
        return self._final_body

    def finish(self, now: float, *, fails: bool, error: str = "") -> None:
        """Make the job final at ``now`` with the given outcome (``complete_job``/``fail_job``)."""
        self.finishes_at = now
        self.fails = fails
        self.error = error if fails else ""
        self._final_body = None


@attrs.define(frozen=True, kw_only=True)
class Delivery:
    """One webhook POST attempt the emulator made.

    ``status`` is the receiver's HTTP status, or ``None`` when the connection failed or timed
    out; ``attempt`` counts from 1 within one delivery (retries after a non-2xx answer);
    ``duplicate`` marks the second copy of a duplicated delivery; ``at`` is
    :func:`time.monotonic` when the attempt was sent.
    """

    job_id: str
    url: str
    status: int | None
    attempt: int
    duplicate: bool
    at: float
