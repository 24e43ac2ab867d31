"""The store interface: what must outlive a process, and the channel between workers.

A store keeps two things and carries one:

* **pending jobs**: one :class:`PendingRecord` per submit (id, endpoint, when, what was sent),
  written before the submit's ``Job`` is returned and removed once the process tracking the
  job has resolved it (:meth:`Store.finish`). A restarted worker lists them with
  :meth:`Store.pending` and tracks them again;
* **final states**: what a delivery (or a status read) said at the end, kept even when nobody
  tracks the job right now, so a worker that was gone finds the outcome when it resumes;
* **the delivery channel**: the first time a final state is recorded, the store announces it
  to the listeners of *other* processes (:meth:`Store.add_listener`), so a webhook accepted by
  one worker resolves the ``Job`` awaited on another. Announcing only the first record is what
  makes a duplicated webhook resolve nothing twice;
* **completion claims**: :meth:`Store.claim` and :meth:`Store.ack` are how
  ``LipsyncClient(on_complete=...)`` runs its callback once per job among everyone sharing the
  store. The first final observation claims the job with a fencing token; the claim is acked
  (done for good) only after the callback returned. The default keeps claims in this process
  (a bounded table); stores shared between processes override both.

Two store objects with the same :meth:`Store.key` (backend, location, prefix) are one store:
a receiver and a client given equal stores use one of them.

Implementations: :class:`~lipsync_async.stores.MemoryStore` (one process),
:class:`~lipsync_async.stores.SQLiteStore` (one machine, survives restarts) and
:class:`~lipsync_async.stores.RedisStore` (many workers).
"""

from __future__ import annotations

import abc
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._errors import LipsyncError
from .._models import JobState

if TYPE_CHECKING:
    from .._job import Job

__all__ = [
    "CLAIM_DONE",
    "CLAIM_HELD",
    "DeliveryCallback",
    "PendingRecord",
    "ResyncCallback",
    "Store",
    "StoreError",
]

log = logging.getLogger("lipsync_async.stores")

DeliveryCallback = Callable[[JobState], object]
"""Called (synchronously, on the event loop) with each final state announced by another process."""
ResyncCallback = Callable[[], Awaitable[None]]
"""Called after the channel reconnected: announcements made meanwhile may have been missed."""

CLAIM_HELD: Final = 0
""":meth:`Store.claim`: another live claimant holds the job (its callback is running)."""
CLAIM_DONE: Final = -1
""":meth:`Store.claim`: the job's callback ran and was acknowledged."""

_CLAIMS_MAX: Final = 100_000  # acknowledged claims an in-process table remembers


class StoreError(LipsyncError):
    """The store could not be read or written (the database is down, locked, or unreachable).

    On a submit the job may already exist at the service (and be billed) when the store write
    fails: ``.job_id`` names it and ``.job`` is its ``Job``, tracked in memory like any other,
    so the job is never silently lost. ``__cause__`` is the driver's error.
    """

    def __init__(self, message: str, *, job_id: str | None = None, job: Job | None = None) -> None:
        if job_id is not None:
            message = f"{message} (job {job_id} exists at the service and is tracked in memory)"
        super().__init__(message)
        self.job_id = job_id
        self.job = job


@attrs.define(frozen=True, kw_only=True, slots=True)
class PendingRecord:
    """A submitted job the store knows as unfinished.

    ``request`` is the submit's wire form without the receiver URL (it carries the receiver's
    secret, which has no business in a database): ``{"formState": {...}}`` plus ``"webhook"``
    when the caller gave a URL of their own. ``submitted_at`` is Unix time. ``trace`` is the
    W3C ``traceparent`` of the submit's span when OpenTelemetry was on (the ``otel`` extra), so
    the worker that resumes the job continues its trace; ``None`` otherwise. ``owner`` is the
    worker that owns the job, in a store that knows owners (Redis: the worker id); it is
    filled by :meth:`Store.pending`, not part of the stored JSON.
    """

    id: str
    endpoint: str
    submitted_at: float
    request: Mapping[str, Any] = attrs.field(factory=dict)
    trace: str | None = None
    owner: str | None = None


class Store(abc.ABC):
    """Where pending jobs and final states live; see the module docstring for the contract.

    Every method may raise :class:`StoreError`. ``open`` and ``close`` are counted, so a client
    and its receiver can share one store object: it really closes when the last user closes.
    """

    #: True when other processes share this store's data and channel (Redis); the client then
    #: expects deliveries made to other workers to arrive through the channel.
    shared: bool = False

    #: Seconds between two claims of a job whose completion another live claimant holds.
    claim_retry: float = 1.0

    def __init__(self) -> None:
        self._users = 0
        self._listeners: list[tuple[DeliveryCallback, ResyncCallback | None]] = []
        self._orphan_hooks: list[ResyncCallback] = []
        # In-process claims, oldest first: job id -> (token, claimant) while held, or
        # CLAIM_DONE once acknowledged.
        self._claims: OrderedDict[str, tuple[int, str] | int] = OrderedDict()
        self._fence = itertools.count(1)

    # -- identity ----------------------------------------------------------------------------

    def key(self) -> Hashable | None:
        """What makes two store objects one store: backend, location and prefix.

        ``None`` (the default, and :class:`~lipsync_async.stores.MemoryStore`) means only this
        very object is this store.
        """
        return None

    def same_as(self, other: Store) -> bool:
        """True when ``other`` is this store: the same object, or an equal :meth:`key`."""
        if other is self:
            return True
        key = self.key()
        return key is not None and key == other.key()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (the first call) and count one more user."""
        if self._users == 0:
            await self._open()
        self._users += 1

    async def close(self) -> None:
        """Count one user less; disconnect when none is left."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            self._listeners.clear()
            self._orphan_hooks.clear()
            await self._close()

    async def _open(self) -> None:
        """Connect; called by the first :meth:`open`."""
        return  # nothing to connect by default (MemoryStore)

    async def _close(self) -> None:
        """Disconnect; called by the last :meth:`close`."""
        return

    # -- pending jobs ------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_pending(self, record: PendingRecord) -> JobState | None:
        """Record a submitted job; return its final state if one is already known.

        A delivery can beat the submit's own answer, even to another worker: the returned state
        lets the caller resolve the job at once instead of waiting for a poll.
        """

    @abc.abstractmethod
    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        """Every unfinished job, oldest first, with its final state when one was recorded.

        A store with owners (Redis) returns this worker's own jobs and those it adopts now
        from workers whose lease ran out.
        """

    # -- final states ------------------------------------------------------------------------

    @abc.abstractmethod
    async def record_final(self, state: JobState) -> bool:
        """Keep a delivered final state; announce it if it is the first. True if it was.

        The pending record stays: the process tracking the job removes it once resolved.
        """

    @abc.abstractmethod
    async def finish(self, states: Sequence[JobState], dropped: Iterable[str] = ()) -> None:
        """Jobs resolved in this process: keep their states, announce the new ones, and drop
        them (and ``dropped``, jobs whose tracking ended without a state) from pending."""

    @abc.abstractmethod
    async def finals(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The recorded final states among ``job_ids``."""

    # -- correlation tokens ------------------------------------------------------------------

    #: Seconds a recorded token is kept: as long as the receiver keeps an uncertain submit's
    #: token by default (``WebhookReceiver(token_ttl=...)``).
    token_ttl: float = 3600.0

    async def record_token(self, token: str, job_id: str) -> None:
        """A delivery carrying correlation ``token`` named ``job_id``; keep that ``token_ttl``.

        Written by a receiver that got a delivery whose token it does not know: the submit
        may be another worker's, whose answer was lost (``SubmissionUncertainError``), and
        that worker reads it back with :meth:`token_job`. The first job named for a token
        is kept. A store of your own that does not override this records nothing: uncertain
        submits then settle only from deliveries to the submitting worker's own receiver.
        """
        return

    async def token_job(self, token: str) -> str | None:
        """The job id a delivery carrying ``token`` named, if one was recorded (and is fresh)."""
        return None

    # -- completion claims -------------------------------------------------------------------

    async def claim(self, job_id: str, claimant: str = "") -> int:
        """Claim the right to run the completion callback of ``job_id``.

        A fencing token (an int > 0, larger than any given before) when the caller now holds
        the claim; :data:`CLAIM_HELD` when a live claimant holds it; :data:`CLAIM_DONE` when
        the callback ran and was acknowledged. A claim whose holder died (a crashed worker's,
        in a shared store) is taken over with a new token. The holder itself (this store
        object and the same ``claimant``) claiming again gets its own token back: a claim
        retried because its answer was lost (a connection cut after Redis ran it) must not
        find itself "held" forever. This default keeps claims in this process (the last
        100,000 acknowledged ones), which is exactly once per process.
        """
        held = self._claims.get(job_id)
        if isinstance(held, tuple):
            token, holder = held
            return token if holder == claimant else CLAIM_HELD
        if held is not None:
            return CLAIM_DONE
        token = next(self._fence)
        self._claims[job_id] = (token, claimant)
        return token

    async def ack(self, job_id: str, token: int) -> bool:
        """The callback of ``job_id`` returned: mark the claim done, if ``token`` still holds it.

        False when the claim was taken over meanwhile (its holder was thought dead): the
        callback may then have run twice, which the caller logs.
        """
        claims = self._claims
        held = claims.get(job_id)
        if not isinstance(held, tuple) or held[0] != token:
            return False
        claims[job_id] = CLAIM_DONE
        claims.move_to_end(job_id)
        if len(claims) > _CLAIMS_MAX:
            oldest, value = next(iter(claims.items()))
            if value == CLAIM_DONE:  # a claim in progress is never forgotten
                del claims[oldest]
        return True

    async def release(self, job_id: str, token: int) -> None:
        """Give up the claim ``token`` holds on ``job_id`` (its callback did not run to the
        end: the client closed), so the job's next observer claims it at once."""
        held = self._claims.get(job_id)
        if isinstance(held, tuple) and held[0] == token:
            del self._claims[job_id]

    # -- the channel -------------------------------------------------------------------------

    def add_listener(
        self,
        on_state: DeliveryCallback,
        resync: ResyncCallback | None = None,
        orphans: ResyncCallback | None = None,
    ) -> None:
        """Receive final states announced by other users of this store.

        ``orphans`` is awaited when a store with owners (Redis) sees jobs whose owner died:
        the listener adopts them with :meth:`pending`.
        """
        self._listeners.append((on_state, resync))
        if orphans is not None:
            self._orphan_hooks.append(orphans)
        self._listening_changed()

    def remove_listener(
        self, on_state: DeliveryCallback, orphans: ResyncCallback | None = None
    ) -> None:
        # `!=`, not `is not`: a bound method is a new object at each access, equal but not same.
        self._listeners = [pair for pair in self._listeners if pair[0] != on_state]
        if orphans is not None:
            self._orphan_hooks = [hook for hook in self._orphan_hooks if hook != orphans]
        self._listening_changed()

    async def ready(self, timeout: float = 5.0) -> bool:
        """Wait until announcements from other processes reach this one's listeners."""
        return True

    def _listening_changed(self) -> None:
        """Start or stop whatever feeds the listeners (Redis: the subscriber task)."""
        return  # in-process stores call the listeners themselves

    def _announce_local(self, state: JobState) -> None:
        """Hand an announced state to this process's listeners (in-process stores)."""
        for on_state, _ in list(self._listeners):
            try:
                on_state(state)
            except Exception:
                log.exception("store listener failed on job %r", state.id)

    async def _resync_all(self) -> None:
        for _, resync in list(self._listeners):
            if resync is not None:
                try:
                    await resync()
                except Exception:
                    log.exception("store listener failed to resync")
