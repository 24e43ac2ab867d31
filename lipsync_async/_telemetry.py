"""OpenTelemetry spans and metrics for the job lifecycle: the only module that knows OpenTelemetry.

The rest of the SDK holds a :class:`Telemetry` and calls it only behind ``if tel.on:``. The
default, :data:`NOOP`, has ``on = False``: without the ``otel`` extra, or with it but no tracer
or meter provider configured, the hot path pays that one attribute check and nothing else, and
``opentelemetry`` is not even imported (a process that configured a provider has imported
``opentelemetry.trace`` or ``opentelemetry.metrics`` already: :func:`resolve` looks there first).

**Why a job is not one long span held open.** A job waits minutes, a fan-out holds 100,000 of
them, and its end may happen in another process (a restart, another worker). A live SDK span
per pending job costs kilobytes (attributes, events, a lock), is lost unexported if the process
dies, and cannot be ended by the worker that resumes the job. So nothing span-shaped is held
while a job waits: the *submit* span ends when the submit is answered, and its W3C
``traceparent`` is what travels: in a side table here (job id -> a tuple of the traceparent,
the submit's start time and whether a delivery is expected), in the store's pending record
(:attr:`PendingRecord.trace`, so a resumed job rejoins its trace), and in the webhook URL of
the submit (``&tp=``, beside the correlation token, so the delivery handled by any worker
joins it without a store read; the record may not even exist yet when a delivery beats the
submit's answer). The one **job span** (``lipsync.job``) is then made when the job resolves,
on whichever worker tracks it then, with its start time set back to the submit's: one span
from submit to resolution, a child of the submit span, with how it resolved, the wait and the
outcome. A job that never resolves in a live process (closed, then never resumed) has no job
span, only its submit span.

The submit span is the current span while its submit runs (an instrumented aiohttp's spans of
the request nest under it), and stops being current once the job is tracked: the timers and
reader tasks the tracker makes from then copy the context they are made in, and the reads of
every job in their bucket would otherwise run "inside" that one submit (the metrics' exemplars
naming its trace, its span kept alive).

Per pending job, with a provider configured: one dict entry and one tuple of three atoms
(which the collector untracks) plus the 55-character traceparent, about 270 B; nothing when
no provider is configured (the ``Job`` itself is unchanged: ``test_job_lifecycle``'s budget).

Secrets: no span or attribute holds the API key, the receiver's secret or a full URL of the
API or the receiver (``url.template`` and ``server.address`` instead); a download's URL is
recorded without its query (signed CDN URLs carry credentials there).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from ._errors import SubmissionUncertainError

if TYPE_CHECKING:
    from ._job import Job
    from ._models import JobState, JobStatus, Request
    from ._tracker import Tracker

__all__ = [
    "NOOP",
    "VIA_DELIVERY",
    "VIA_READ",
    "VIA_USER_READ",
    "VIA_WORKER",
    "Telemetry",
    "resolve",
]

SCOPE: Final = "lipsync_async"

# How a final state reached the tracker (``Tracker.deliver(via=...)``); "read" becomes "poll"
# or "fallback" depending on whether the job was waiting for a delivery.
VIA_DELIVERY: Final = "delivery"
VIA_READ: Final = "read"
VIA_USER_READ: Final = "get_job"
VIA_WORKER: Final = "another_worker"

_TRACEPARENT: Final = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_RECENT_MAX: Final = 10_000  # resolved jobs whose trace a later download links to
_API_TRACE: Final = "opentelemetry.trace"
_API_METRICS: Final = "opentelemetry.metrics"
_JOB_BUCKETS: Final = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
_WAKE_BUCKETS: Final = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
_MIN_CREDITS_SECONDS: Final = 5.0  # the billing minimum: what a submit surely costs at least

# Set by the submit span for the code it wraps, until the job is tracked (see _SubmitSpan).
_SUBMIT: contextvars.ContextVar[_SubmitSpan | None] = contextvars.ContextVar(
    "lipsync_submit", default=None
)
_READ_OK: Final = {"lipsync.read.outcome": "ok"}
_READ_ERROR: Final = {"lipsync.read.outcome": "error"}
_WAKE: Final = {via: {"lipsync.job.resolved_by": via} for via in ("delivery", "another_worker")}


def check_traceparent(value: object) -> str | None:
    """``value`` if it is a W3C traceparent (version 00, valid ids), else ``None``.

    A traceparent can come from a delivery's URL (anyone holding the receiver's secret) or a
    store record (a store peer): nothing else is ever made of it than a parent or a link.
    """
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.match(value)
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return value


class Telemetry:
    """The no-op: every hook does nothing; callers check ``on`` first and skip the call."""

    on = False

    def track(self, tracker: Tracker) -> None: ...

    def untrack(self, tracker: Tracker) -> None: ...

    def submit_span(self, request: Request) -> Any:
        raise NotImplementedError

    def submit_context(self) -> tuple[str, int] | None:
        return None

    def hook_url(self, url: str) -> str:
        return url

    def job_tracked(
        self, job_id: str, context: tuple[str, int] | None, *, by_webhook: bool
    ) -> None: ...

    def resumed(self, job_id: str, trace: str | None, submitted_at: float) -> None: ...

    def read_span(self, job_id: str) -> Any:
        raise NotImplementedError

    def resolved(self, job: Job, via: str, since: float) -> None: ...

    def ended(self, job_id: str, outcome: str) -> None: ...

    def forget(self, job_id: str) -> None: ...

    def forget_all(self) -> None: ...

    def delivery_span(self, state: JobState, trace: str | None, path: str) -> Any:
        raise NotImplementedError

    def delivery_refused(self, status: int) -> None: ...

    def download_span(self, url: str, job_id: str | None) -> Any:
        raise NotImplementedError

    def rate_limited(self) -> None: ...

    def paused(self, seconds: float) -> None: ...


NOOP: Final = Telemetry()

#: meter provider -> the trackers of the clients using it (see ``_Otel.__init__``).
_PENDING: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Tracker]] = weakref.WeakKeyDictionary()


def _observe_pending(trackers: weakref.WeakSet[Tracker], options: Any) -> Iterable[Any]:
    from opentelemetry.metrics import Observation

    return [Observation(sum(t.pending for t in list(trackers)))]


def resolve(tracer_provider: Any = None, meter_provider: Any = None) -> Telemetry:
    """The telemetry for a client opening now: explicit providers, else the global ones.

    :data:`NOOP` when nothing is configured: the ``otel`` extra not installed, or installed
    but no provider set (the API's proxy providers are what an unconfigured process has).
    """
    configured = tracer_provider is not None or meter_provider is not None
    if not configured and not (_API_TRACE in sys.modules or _API_METRICS in sys.modules):
        return NOOP  # nobody imported the API, so nobody configured it
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return NOOP
    if tracer_provider is None:
        found = trace.get_tracer_provider()
        if not isinstance(found, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            tracer_provider = found
    if meter_provider is None:
        found_meter = metrics.get_meter_provider()
        # The API's own proxy before anything is set; its no-op when set to nothing.
        if type(found_meter).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider"):
            meter_provider = found_meter
    if tracer_provider is None and meter_provider is None:
        return NOOP
    return _Otel(tracer_provider, meter_provider)


class _Otel(Telemetry):
    """Telemetry with OpenTelemetry: one per client (its providers), shared by its parts."""

    on = True

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import context, metrics, trace

        from ._version import __version__

        self._trace = trace
        self._attach = context.attach
        self._detach = context.detach
        self._in_context = trace.set_span_in_context
        self._root = context.Context()
        self._SpanContext = trace.SpanContext
        self._NonRecordingSpan = trace.NonRecordingSpan
        # sampled and random-trace-id (W3C level 2) bits: the flags a traceparent here has
        self._flags = {f"{i:02x}": trace.TraceFlags(i) for i in range(4)}
        # Per (endpoint, resolution) and per (outcome, resolved_by): the attribute dicts each
        # span and measurement takes, built once (a few dozen at most; the SDK copies them).
        self._kinds: dict[tuple[str, str], _SubmitKind] = {}
        self._ends: dict[tuple[str, str | None], dict[str, str]] = {}
        # A tracer from a NoOp provider when only metrics are configured (and vice versa):
        # the calls stay the same, and cost nothing where nothing listens.
        tp = tracer_provider if tracer_provider is not None else trace.NoOpTracerProvider()
        mp = meter_provider if meter_provider is not None else metrics.NoOpMeterProvider()
        self.tracer = tp.get_tracer(SCOPE, __version__)
        meter = mp.get_meter(SCOPE, __version__)
        # job id -> (traceparent or "", submit start ns, expects a delivery)
        self._jobs: dict[str, tuple[str, int, bool]] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()  # resolved id -> traceparent
        self._submits = meter.create_counter(
            "lipsync.submits", unit="{submit}", description="Submits, by outcome"
        )
        self._credits = meter.create_counter(
            "lipsync.credits.estimated",
            unit="{credit}",
            description="Credits the submits accepted (or uncertain) cost at least",
        )
        self._reads = meter.create_counter(
            "lipsync.status_reads", unit="{read}", description="Status reads (GET /jobs/{id})"
        )
        self._throttled = meter.create_counter(
            "lipsync.http.rate_limited", unit="{response}", description="429 answers"
        )
        self._pauses = meter.create_counter(
            "lipsync.http.pauses", unit="{pause}", description="Client-wide pauses a 429 set"
        )
        self._pause_time = meter.create_counter(
            "lipsync.http.pause.duration", unit="s", description="Seconds of client-wide pauses"
        )
        self._deliveries = meter.create_counter(
            "lipsync.deliveries", unit="{delivery}", description="Webhook deliveries, by result"
        )
        self._jobs_ended = meter.create_counter(
            "lipsync.jobs.resolved", unit="{job}", description="Jobs that ended, by outcome"
        )
        self._duration = meter.create_histogram(
            "lipsync.job.duration",
            unit="s",
            description="From a job's submit to its resolution",
            explicit_bucket_boundaries_advisory=list(_JOB_BUCKETS),
        )
        self._wake = meter.create_histogram(
            "lipsync.delivery.wake",
            unit="s",
            description="From a final state reaching the tracker to the job's awaiters running",
            explicit_bucket_boundaries_advisory=list(_WAKE_BUCKETS),
        )
        # The gauge is registered once per meter provider (the SDK keeps the first callback
        # of a name and ignores later ones): every client on the provider adds its tracker to
        # that provider's set, which the one callback sums. The callback holds the set, not
        # this object, so a closed client's telemetry is not kept alive by it.
        try:
            trackers = _PENDING.get(mp)
        except TypeError:  # a provider that cannot be weakly referenced
            trackers = None
        if trackers is None:
            trackers = weakref.WeakSet()
            meter.create_observable_gauge(
                "lipsync.jobs.pending",
                callbacks=[partial(_observe_pending, trackers)],
                unit="{job}",
                description="Jobs tracked and not finished",
            )
            with contextlib.suppress(TypeError):
                _PENDING[mp] = trackers
        self._trackers = trackers

    # -- the pending gauge -------------------------------------------------------------------

    def track(self, tracker: Tracker) -> None:
        self._trackers.add(tracker)

    def untrack(self, tracker: Tracker) -> None:
        self._trackers.discard(tracker)


    # -- trace context -----------------------------------------------------------------------

    def _context(self, traceparent: str | None) -> Any:
        """A context whose parent is ``traceparent`` (``None``: no parent, a new trace).

        Sliced, not matched: every traceparent here was made by :meth:`_format` or went
        through :func:`check_traceparent` where it came in (a store record, a URL).
        """
        if not traceparent:
            return None
        flags = traceparent[53:55]
        parent = self._SpanContext(
            trace_id=int(traceparent[3:35], 16),
            span_id=int(traceparent[36:52], 16),
            is_remote=True,
            trace_flags=self._flags.get(flags) or self._trace.TraceFlags(int(flags, 16)),
        )
        # On an empty context, not the current one: only the parent span matters to
        # start_span, and the current context need not be looked up and copied.
        return self._in_context(self._NonRecordingSpan(parent), self._root)

    def _link(self, traceparent: str | None) -> list[Any]:
        context = self._context(traceparent)
        if context is None:
            return []
        return [self._trace.Link(self._trace.get_current_span(context).get_span_context())]

    @staticmethod
    def _format(span: Any) -> str:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return ""
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    # -- submits -----------------------------------------------------------------------------

    def submit_span(self, request: Request) -> _SubmitSpan:
        return _SubmitSpan(self, request)

    def submit_context(self) -> tuple[str, int] | None:
        submit = _SUBMIT.get()
        return submit.context if submit is not None else None

    def hook_url(self, url: str) -> str:
        submit = _SUBMIT.get()
        return f"{url}&tp={submit.context[0]}" if submit is not None and submit.context[0] else url

    def job_tracked(
        self, job_id: str, context: tuple[str, int] | None, *, by_webhook: bool
    ) -> None:
        trace, started = context if context is not None else ("", time.time_ns())
        self._jobs[job_id] = (trace, started, by_webhook)
        submit = _SUBMIT.get()
        if submit is not None:
            # The tracker is about to schedule the job: its timers and reader tasks copy the
            # context they are made in, and must not carry this submit's span (their reads'
            # metrics would get exemplars of this trace, an instrumented aiohttp's spans
            # would nest under it) nor keep the span alive.
            submit.release()

    def resumed(self, job_id: str, trace: str | None, submitted_at: float) -> None:
        """A job from the store's pending records (``pending()``): its trace goes on here."""
        if job_id not in self._jobs:
            self._jobs[job_id] = (check_traceparent(trace) or "", int(submitted_at * 1e9), False)

    # -- status reads ------------------------------------------------------------------------

    def read_span(self, job_id: str) -> _ReadSpan:
        return _ReadSpan(self, job_id)

    # -- resolution --------------------------------------------------------------------------

    def resolved(self, job: Job, via: str, since: float) -> None:
        """``job`` just ended with a final state that came ``via``; ``since``: loop time the
        state reached the tracker (for the wake histogram)."""
        state = job.state
        outcome = state.status.value if state is not None else "unknown"
        self._end(job.id, outcome, via)
        if via in (VIA_DELIVERY, VIA_WORKER):  # a delivery, here or through the store
            loop = job._tracker.loop
            # Scheduled now, run after the awaiters the job just woke (they were readied first).
            loop.call_soon(self._woken, loop, since, via)

    def _woken(self, loop: Any, since: float, via: str) -> None:
        self._wake.record(loop.time() - since, _WAKE[via])

    def ended(self, job_id: str, outcome: str) -> None:
        """Tracking ended without a final state: ``refused`` (404, 401) or ``cancelled``."""
        self._end(job_id, outcome, None)

    def forget(self, job_id: str) -> None:
        """Drop a job's entry without a span (tracked as the client closed)."""
        self._jobs.pop(job_id, None)

    def _end(self, job_id: str, outcome: str, via: str | None) -> None:
        entry = self._jobs.pop(job_id, None)
        how = via
        if entry is not None and via == VIA_READ:
            how = "fallback" if entry[2] else "poll"
        attributes = self._ends.get((outcome, how))
        if attributes is None:
            attributes = {"lipsync.job.outcome": outcome}
            if how is not None:
                attributes["lipsync.job.resolved_by"] = how
            self._ends[outcome, how] = attributes
        self._jobs_ended.add(1, attributes)
        if entry is None:
            return  # attached by id: no submit known here, no job span
        trace, started, _ = entry
        now = time.time_ns()
        wait = max(0.0, (now - started) / 1e9)
        self._duration.record(wait, attributes)
        span = self.tracer.start_span(
            "lipsync.job",
            context=self._context(trace),
            start_time=started,
            attributes={**attributes, "lipsync.job.id": job_id, "lipsync.job.wait": wait},
        )
        if outcome in ("failed", "refused"):
            span.set_status(self._trace.StatusCode.ERROR, outcome)
        span.end(end_time=now)
        if trace:
            recent = self._recent
            recent[job_id] = trace
            if len(recent) > _RECENT_MAX:
                recent.popitem(last=False)

    def forget_all(self) -> None:
        """The client closed: its pending jobs end unresolved here (no job span)."""
        self._jobs.clear()

    def trace_of(self, job_id: str) -> str | None:
        entry = self._jobs.get(job_id)
        if entry is not None:
            return entry[0] or None
        return self._recent.get(job_id)

    # -- deliveries --------------------------------------------------------------------------

    def delivery_span(self, state: JobState, trace: str | None, path: str) -> _DeliverySpan:
        return _DeliverySpan(self, state, trace, path)

    def delivery_refused(self, status: int) -> None:
        self._deliveries.add(
            1, {"lipsync.delivery.result": "refused", "http.response.status_code": status}
        )

    # -- downloads and HTTP ------------------------------------------------------------------

    def download_span(self, url: str, job_id: str | None) -> _DownloadSpan:
        return _DownloadSpan(self, url, job_id)

    def rate_limited(self) -> None:
        self._throttled.add(1)

    def paused(self, seconds: float) -> None:
        self._pauses.add(1)
        self._pause_time.add(seconds)


# -- the spans -------------------------------------------------------------------------------
# Context managers that set the span's attributes from what the wrapped code did or raised.


def _error_type(exc: BaseException) -> str:
    return type(exc).__name__


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class _SubmitKind:
    """What every submit to one endpoint at one resolution shares: its span's name and start
    attributes, its credits and its measurements' attributes by outcome (built once)."""

    __slots__ = ("attributes", "by_outcome", "credits", "name")

    def __init__(self, endpoint: str, resolution: str) -> None:
        self.name = f"POST /{endpoint}"
        self.credits = _MIN_CREDITS_SECONDS * (4.0 if resolution == "720p" else 2.0)
        common = {"lipsync.endpoint": endpoint, "lipsync.resolution": resolution}
        self.attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.template": f"/{endpoint}",
            "lipsync.operation": "submit",
            "lipsync.credits.estimated": self.credits,
            **common,
        }
        self.by_outcome = {
            outcome: {**common, "lipsync.submit.outcome": outcome}
            for outcome in ("accepted", "refused", "uncertain")
        }


class _SubmitSpan:
    """``POST /{endpoint}``: one submit, retries included; its outcome and the job id.

    Current (the OpenTelemetry context's span, and :data:`_SUBMIT`) from its start until the
    job is tracked (:meth:`release`, from ``job_tracked``) or the submit fails: the HTTP
    request and the store write are its children, what the tracker schedules is not.
    """

    __slots__ = ("_job_id", "_kind", "_otel_token", "_span", "_tel", "_token", "context")

    def __init__(self, tel: _Otel, request: Request) -> None:
        self._tel = tel
        resolution = getattr(request, "resolution", None) or "480p"
        kind = tel._kinds.get((request.endpoint, resolution))
        if kind is None:
            kind = tel._kinds[request.endpoint, resolution] = _SubmitKind(
                request.endpoint, resolution
            )
        self._kind = kind
        self._span: Any = None
        self._token: Any = None
        self._otel_token: Any = None
        self._job_id: str | None = None
        self.context: tuple[str, int] = ("", 0)  # (traceparent, start in ns since the epoch)

    def __enter__(self) -> _SubmitSpan:
        tel, kind = self._tel, self._kind
        span = self._span = tel.tracer.start_span(
            kind.name, kind=tel._trace.SpanKind.CLIENT, attributes=kind.attributes
        )
        self._otel_token = tel._attach(tel._in_context(span))
        self.context = (tel._format(span), getattr(span, "start_time", None) or time.time_ns())
        self._token = _SUBMIT.set(self)
        return self

    def accepted(self, job_id: str) -> None:
        self._job_id = job_id

    def release(self) -> None:
        """Stop being current: once, and only in the context that entered (a task copied
        from it has its own copy of both variables, and nothing to undo)."""
        if self._token is not None:
            try:
                _SUBMIT.reset(self._token)
            except ValueError:  # another context: not this one's to reset
                return
            self._tel._detach(self._otel_token)
            self._token = None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        tel, span, kind = self._tel, self._span, self._kind
        self.release()  # an exception is recorded here, not by the context
        job = getattr(exc, "job", None)  # a StoreError after the job was created
        job_id = self._job_id or getattr(job, "id", None)
        if exc is None or job_id is not None:  # the job exists (a store failure is not a refusal)
            outcome = "accepted"
        elif isinstance(exc, SubmissionUncertainError):
            outcome = "uncertain"
        else:
            outcome = "refused"
        attributes: dict[str, Any] = {"lipsync.submit.outcome": outcome}
        if job_id is not None:
            attributes["lipsync.job.id"] = job_id
        if exc is None:
            attributes["http.response.status_code"] = 200
        else:
            attributes["error.type"] = _error_type(exc)
            status = _http_status(exc)
            if status is not None:
                attributes["http.response.status_code"] = status
            span.set_status(tel._trace.StatusCode.ERROR, _error_type(exc))
        span.set_attributes(attributes)
        span.end()
        measured = kind.by_outcome[outcome]
        tel._submits.add(1, measured)
        if outcome != "refused":
            tel._credits.add(kind.credits, measured)


class _ReadSpan:
    """``GET /jobs/{id}``: one status read, a child of the job's submit when it is known.

    Made whole when the read ends (its start time set back): never current, it needs no live
    span while the read runs, and one ``start_span`` with every attribute costs the SDK less
    than a span started, then given attributes under its lock.
    """

    __slots__ = ("_job_id", "_start", "_status", "_tel")

    def __init__(self, tel: _Otel, job_id: str) -> None:
        self._tel = tel
        self._job_id = job_id
        self._status: str | None = None
        self._start = 0

    def __enter__(self) -> _ReadSpan:
        self._start = time.time_ns()
        return self

    def read(self, status: JobStatus) -> None:
        self._status = status.value

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        tel = self._tel
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.template": "/jobs/{id}",
            "lipsync.operation": "status_read",
            "lipsync.job.id": self._job_id,
        }
        if self._status is not None:
            attributes["lipsync.job.status"] = self._status
        if exc is None:
            attributes["http.response.status_code"] = 200
        else:
            attributes["error.type"] = _error_type(exc)
            status = _http_status(exc)
            if status is not None:
                attributes["http.response.status_code"] = status
        trace = tel.trace_of(self._job_id)
        span = tel.tracer.start_span(
            "GET /jobs/{id}",
            context=tel._context(trace) if trace else None,
            kind=tel._trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=self._start,
        )
        if exc is not None:
            span.set_status(tel._trace.StatusCode.ERROR, _error_type(exc))
        span.end()
        tel._reads.add(1, _READ_OK if exc is None else _READ_ERROR)


class _DeliverySpan:
    """``process {path}``: one authenticated delivery, in the trace of the job's submit."""

    def __init__(self, tel: _Otel, state: JobState, trace: str | None, path: str) -> None:
        self._tel = tel
        self._state = state
        self._trace = trace
        self._path = path
        self.result = "refused"
        self._span: Any = None

    def __enter__(self) -> _DeliverySpan:
        tel, state = self._tel, self._state
        # The job's own trace when this worker tracks it; else what the delivery's URL
        # carried (the submit was another worker's, or its answer was lost).
        trace = tel.trace_of(state.id) or check_traceparent(self._trace)
        self._span = tel.tracer.start_span(
            f"process {self._path}",
            context=tel._context(trace) if trace else None,
            kind=tel._trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "lipsync",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": self._path,
                "messaging.message.id": state.id,
                "lipsync.job.id": state.id,
                "lipsync.job.status": state.status.value,
            },
        )
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        tel, span = self._tel, self._span
        if exc is not None:
            self.result = "refused"
            span.set_attribute("error.type", _error_type(exc))
            span.set_status(tel._trace.StatusCode.ERROR, _error_type(exc))
        span.set_attribute("lipsync.delivery.result", self.result)
        span.end()
        tel._deliveries.add(1, {"lipsync.delivery.result": self.result})

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 300:
            self.result = "refused"


class _DownloadSpan:
    """``GET``: one download (a CDN's URL: no template), linked to the job's trace."""

    def __init__(self, tel: _Otel, url: str, job_id: str | None) -> None:
        self._tel = tel
        self._url = url
        self._job_id = job_id
        self._span: Any = None

    def __enter__(self) -> _DownloadSpan:
        from yarl import URL

        tel = self._tel
        url = URL(self._url)
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "lipsync.operation": "download",
            "server.address": url.host or "",
            # Without query, fragment or user info: signed URLs carry credentials there.
            "url.full": str(url.with_query(None).with_fragment(None).with_user(None)),
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        links = []
        if self._job_id is not None:
            attributes["lipsync.job.id"] = self._job_id
            links = tel._link(tel.trace_of(self._job_id))
        self._span = tel.tracer.start_span(
            "GET", kind=tel._trace.SpanKind.CLIENT, attributes=attributes, links=links
        )
        self._use = tel._trace.use_span(self._span, end_on_exit=False)
        self._use.__enter__()
        return self

    def wrote(self, size: int) -> None:
        self._span.set_attribute("http.response.body.size", size)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._use.__exit__(None, None, None)
        span = self._span
        if exc is not None:
            span.set_attribute("error.type", _error_type(exc))
            status = _http_status(exc)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            span.set_status(self._tel._trace.StatusCode.ERROR, _error_type(exc))
        else:
            span.set_attribute("http.response.status_code", 200)
        span.end()
