"""``LipsyncClient``: composes the transport, the tracker and the optional webhook receiver.

Data flows one way: a submit goes ``_models`` (validation) -> ``_wire`` (body) -> ``_http``
(send) and comes back as a ``Job`` that ``_tracker`` resolves, from status reads or from the
receiver's deliveries. Nothing below this module imports it.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import Any, Final, Self

import aiohttp
import attrs
from yarl import URL

from ._complete import Completions, OnComplete
from ._download import download_to, refetch_expired
from ._errors import (
    APIError,
    ClientClosedError,
    LipsyncError,
    SubmissionUncertainError,
    ValidationError,
)
from ._http import RetryPolicy, Transport, check_base_url
from ._job import Job, iter_completed
from ._models import (
    JobState,
    JobStatus,
    LipsyncImageMultiRequest,
    LipsyncImageRequest,
    LipsyncVideoRequest,
    Order,
    Request,
    Resolution,
    check_job_id,
    check_url,
    local_media,
)
from ._tasks import cancel_and_wait
from ._telemetry import NOOP, VIA_USER_READ, resolve
from ._tracker import Tracker
from ._webhook import WebhookReceiver
from ._wire import dump_request, parse_submit_answer
from .stores._base import Store, StoreError
from .stores._link import StoreLink
from .stores._memory import MemoryStore

__all__ = ["DEFAULT_BASE_URL", "LipsyncClient"]

log = logging.getLogger("lipsync_async")

DEFAULT_BASE_URL: Final = "https://lipsync.studio/api/v1"
_MAX_NUMBER: Final = 1e15  # seconds (31 million years), requests/s or bytes: finite and sane


def _retries(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError("max_retries", f"must be an integer >= 0, got {value!r}")
    return value


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValidationError(name, f"must be a number, got {value!r:.40}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValidationError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r:.40}")
    # Infinity, 1e308 or 10**400 seconds would pass the checks above and then overflow in the
    # scheduler's arithmetic (or float()) long after the call that took them.
    if value > _MAX_NUMBER:
        raise ValidationError(name, f"must be at most {_MAX_NUMBER:g}, got {value!r:.40}")
    return float(value)


def _output_of(state: JobState) -> str:
    if state.status is not JobStatus.COMPLETED or not state.output:
        kept = " (its output is kept in output_raw)" if state.output_raw is not None else ""
        raise ValidationError(
            "target", f"job {state.id} has no output URL (status {state.status}){kept}"
        )
    return check_url("target", state.output)


class _Life:
    """A client's lifecycle, shared by the client and its ``with_options`` views."""

    __slots__ = ("closing", "drained", "loop", "submits")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        self.submits = 0  # submit() calls in progress: close() lets them finish first
        self.drained: asyncio.Future[None] | None = None


class LipsyncClient:
    """An async client for lipsync.studio; use it as ``async with LipsyncClient() as client:``.

    Submits return awaitable :class:`Job` handles at once; one scheduler polls every pending job
    at the service's cadence (``poll_interval``, default 5 s, jittered), or, with a
    :class:`WebhookReceiver`, jobs resolve from deliveries and are polled only if their delivery
    has not come ``webhook_grace`` seconds after the submit.

    Args:
        api_key: the ``sk_...`` key; defaults to ``LIPSYNC_API_KEY``. Never shown in a repr,
            a log line or an error.
        base_url: defaults to ``LIPSYNC_BASE_URL``, then ``https://lipsync.studio/api/v1``.
        session: an ``aiohttp.ClientSession`` to borrow; the client never closes it.
        webhook: a :class:`WebhookReceiver`; the client starts it on enter (unless it is already
            running or mounted with ``attach``), stops it on exit, and sends its URL with every
            submit that names no ``webhook`` of its own.
        poll_interval: seconds between two status reads of one job (the service asks 5-10 s).
        webhook_grace: seconds a job with a receiver waits for its delivery before polling takes
            over. The default, 600 s, covers most jobs (the service needs 10-30 s of work per
            second of output, so a 20 s clip takes up to 10 minutes) with zero status reads,
            and bounds what a lost delivery costs to ten minutes of delay, never the job.
        max_retries: retries of one request on transient errors (reads only, and submits the
            service surely did not take).
        max_in_flight: bound on concurrent API requests (submits and status reads); more
            wait their turn.
        max_downloads: bound on concurrent downloads, apart from ``max_in_flight``: a status
            read never waits behind a slow stream.
        close_timeout: seconds :meth:`close` lets submits already sent get their answers (so
            they become jobs, not ``SubmissionUncertainError``) before it closes the session.
        rate_limit: optional cap on requests per second, for all requests of this client.
        timeout: seconds to wait for an answer (socket read) before giving up on an attempt.
        connect_timeout: seconds to establish a connection.
        store: a :mod:`lipsync_async.stores` store; every submit is recorded in it before its
            ``Job`` is returned and every final state when the job resolves, so
            :meth:`pending` can resume them after a restart, and final states other workers
            record resolve this client's jobs. A ``webhook`` receiver without a store of its
            own uses this one. ``None`` (the default) keeps everything in this process.
        on_complete: ``fn(job)``, sync or async, run once per job that ends completed or
            failed (``job.state`` is the final state; a job cancelled, unknown to the service
            or left pending at close runs nothing). Once per job **across every worker sharing
            the store**, whatever mix of deliveries, polls, duplicates and restarts observes
            the end: the first observation claims the job atomically (a fencing token), the
            claim is acknowledged after ``fn`` returns (or raises: logged, not retried), and
            only then is the job dropped from the store's pending records. If the worker dies
            inside ``fn`` (or is cut off from Redis longer than its lease, or closes before
            ``fn`` returns: ``close_timeout``), the adopter of the job runs ``fn`` again: at
            least once per such crash, exactly once otherwise. Scope of "once": the fleet with
            a ``RedisStore``; the machine, across restarts, with a ``SQLiteStore``; this
            process with a ``MemoryStore`` or no store. At most 64 completions run at once
            (a burst of ends queues, never a task per job); a store outage delays ``fn``,
            never drops it (retried while the client is open). A sync ``fn`` runs on the event
            loop: keep it short or hand blocking work to a thread.
        allow_insecure: accept an ``http://`` ``base_url`` on a host that is not loopback
            (the key then travels in clear); refused by default.
        tracer_provider, meter_provider: OpenTelemetry providers for this client's spans and
            metrics (the ``otel`` extra; README, Observability). ``None``: the global ones
            the application configured, if any, looked up when the client opens; with none,
            the SDK emits nothing and pays nothing.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        webhook: WebhookReceiver | None = None,
        poll_interval: float = 5.0,
        webhook_grace: float = 600.0,
        max_retries: int = 5,
        max_in_flight: int = 64,
        max_downloads: int = 4,
        rate_limit: float | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        store: Store | None = None,
        close_timeout: float = 10.0,
        allow_insecure: bool = False,
        on_complete: OnComplete | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("LIPSYNC_API_KEY")
        if not key or not isinstance(key, str):
            raise ValidationError("api_key", "missing: pass api_key= or set LIPSYNC_API_KEY")
        if any(c.isspace() for c in key):
            raise ValidationError("api_key", "must not contain whitespace")
        base = base_url or os.environ.get("LIPSYNC_BASE_URL") or DEFAULT_BASE_URL
        check_url("base_url", base)
        _retries(max_retries)
        if (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise ValidationError(
                "max_in_flight", f"must be an integer >= 1, got {max_in_flight!r}"
            )
        if (
            isinstance(max_downloads, bool)
            or not isinstance(max_downloads, int)
            or max_downloads < 1
        ):
            raise ValidationError(
                "max_downloads", f"must be an integer >= 1, got {max_downloads!r}"
            )
        if rate_limit is not None:
            _positive("rate_limit", rate_limit)
        if webhook is not None and not isinstance(webhook, WebhookReceiver):
            raise ValidationError(
                "webhook", "must be a WebhookReceiver (per-submit URLs go to submit calls)"
            )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise ValidationError("session", "must be an aiohttp.ClientSession")
        self._base_url = check_base_url(base, allow_insecure=allow_insecure)
        self._transport = Transport(
            api_key=key,
            base_url=self._base_url,
            session=session,
            timeout=_positive("timeout", timeout),
            connect_timeout=_positive("connect_timeout", connect_timeout),
            retry=RetryPolicy(
                max_retries,
                _positive("backoff_base", backoff_base, allow_zero=True),
                _positive("backoff_max", backoff_max, allow_zero=True),
            ),
            max_in_flight=max_in_flight,
            max_downloads=max_downloads,
            rate_limit=rate_limit,
        )
        self._close_timeout = _positive("close_timeout", close_timeout, allow_zero=True)
        if webhook is not None:
            self._transport.redact(webhook._secret_str)  # an answer echoing its URL
            webhook._note_api(self._base_url)  # a loopback receiver for a remote API: warned
        self._tracker = Tracker(
            self._transport,
            poll_interval=_positive("poll_interval", poll_interval),
            webhook_grace=_positive("webhook_grace", webhook_grace, allow_zero=True),
        )
        self._receiver = webhook
        self._started_receiver = False
        if store is not None and not isinstance(store, Store):
            raise ValidationError("store", "must be a lipsync_async.stores store")
        if on_complete is not None and not callable(on_complete):
            raise ValidationError("on_complete", "must be a callable taking the Job")
        vet = webhook._vet if webhook is not None and webhook.verify else None
        self._store_link = (
            None
            if store is None
            else StoreLink(
                store,
                self._tracker,
                vet=vet,
                on_complete=on_complete,
                close_timeout=self._close_timeout,
            )
        )
        # Without a store, completions are claimed in a table of this process's own.
        self._completions = (
            Completions(on_complete, MemoryStore())
            if store is None and on_complete is not None
            else None
        )
        if store is not None and webhook is not None:
            webhook._use_store(store)
        self._providers = (tracer_provider, meter_provider)
        # Shared with the views `with_options` makes: one lifecycle for all of them.
        self._life = _Life()
        self._view = False

    def __repr__(self) -> str:
        state = "open" if self._life.loop is not None and not self._life.closing else "closed"
        return f"<LipsyncClient {str(self._base_url)!r} {state} pending={self._tracker.pending}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._view:
            raise RuntimeError("a with_options view shares its client's lifecycle: open that")
        if self._life.loop is not None:
            raise RuntimeError("this LipsyncClient is already open")
        self._life.loop = asyncio.get_running_loop()
        self._life.closing = False
        # Telemetry is looked up now, not at construction: an application may configure its
        # providers after making the client. NOOP (one attribute check per hook) if none.
        tel = resolve(*self._providers)
        self._tracker.tel = self._transport.tel = tel
        if self._receiver is not None:
            self._receiver._tel = tel
        tel.track(self._tracker)
        await self._transport.open()
        self._tracker.start()
        if self._completions is not None:
            self._completions.open()
        if self._store_link is not None:
            try:
                await self._store_link.open()
            except BaseException:
                await self.close()
                raise
        if self._receiver is not None:
            try:
                self._receiver._bind(self._tracker)
                if not self._receiver.running:
                    await self._receiver.start()
                    self._started_receiver = True
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Let sent submits answer, end polling, stop the receiver we started, close the session.

        In order: submits not sent yet fail with :class:`ClientClosedError` (nothing was
        submitted); submits already sent get up to ``close_timeout`` seconds to be answered,
        so they become jobs rather than :class:`SubmissionUncertainError`; then jobs still
        pending end with :class:`ClientClosedError` for whoever awaits them (they keep running
        at the service: attach again with :meth:`job`), and the session is closed.
        """
        if self._view or self._life.loop is None or self._life.closing:
            return
        self._life.closing = True
        # Each step in its own `finally`: a close cancelled halfway (a second Ctrl-C, an outer
        # timeout) still ends every wait and closes the session.
        try:
            self._transport.refuse_submits()
            if self._life.submits:
                self._life.drained = self._life.loop.create_future()
                try:
                    async with asyncio.timeout(self._close_timeout):
                        await self._life.drained
                except TimeoutError:
                    log.warning(
                        "closing: %d submit(s) still unanswered after %s s; they end as "
                        "SubmissionUncertainError",
                        self._life.submits,
                        self._close_timeout,
                    )
        finally:
            self._life.drained = None
            await self._close_rest()

    async def _close_rest(self) -> None:
        try:
            if self._receiver is not None:
                self._receiver._unbind(self._tracker)  # deliveries now get 503: retried later
                if self._started_receiver:
                    self._started_receiver = False
                    await self._receiver.close()
        finally:
            try:
                await self._tracker.close()
                if self._completions is not None:
                    await asyncio.sleep(0)  # done callbacks of the close run first
                    await self._completions.close(self._close_timeout)
            finally:
                try:
                    if self._store_link is not None:
                        await self._store_link.close()  # buffered final states first
                finally:
                    await self._transport.close()
                    self._life.loop = None
                    tel = self._tracker.tel
                    tel.untrack(self._tracker)
                    self._tracker.tel = self._transport.tel = NOOP

    def _check_open(self) -> None:
        if self._life.loop is None or self._life.closing:
            raise RuntimeError("the client is not open: use `async with LipsyncClient(...)`")
        if asyncio.get_running_loop() is not self._life.loop:
            raise RuntimeError(
                "this LipsyncClient belongs to another event loop; create one per loop"
            )

    # -- properties --------------------------------------------------------------------------

    @property
    def base_url(self) -> URL:
        """The API root, e.g. ``https://lipsync.studio/api/v1``."""
        return self._base_url

    @property
    def webhook(self) -> WebhookReceiver | None:
        """The receiver this client sends with its submits, if any."""
        return self._receiver

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters and gauges, a fresh dict per call.

        ``requests`` sent, ``retries``, ``rate_limited`` (429s seen), ``status_reads``;
        ``pending`` jobs; ``held_deliveries`` and ``held_bytes``: deliveries (or a store's
        outcomes) for job ids this client does not track yet, kept for a while in case their
        submit's answer is still on its way (bounded in count and bytes; see the README).
        """
        t = self._transport
        held, held_bytes = self._tracker.held
        return {
            "requests": t.requests_sent,
            "retries": t.retries,
            "rate_limited": t.rate_limited,
            "status_reads": self._tracker.reads,
            "pending": self._tracker.pending,
            "held_deliveries": held,
            "held_bytes": held_bytes,
        }

    @property
    def _receiver_reachable(self) -> bool:
        return self._receiver is not None and self._receiver.reachable

    # -- submits -----------------------------------------------------------------------------

    async def submit(self, request: Request) -> Job:
        """Submit a request model (``LipsyncImageRequest`` ...) and return its ``Job``.

        Raises ``SubmissionUncertainError`` when the request may have reached the service but
        its answer was lost: it is never sent twice. With a ``store``, raises ``StoreError``
        when the job was created but could not be recorded; ``.job`` is still tracked.

        Media given as local files (``pathlib.Path``) are served by the ``webhook`` receiver
        (a ``ValidationError`` without one, before any request): the service gets their URLs,
        and ``Job.request`` (or ``SubmissionUncertainError.request``) is the request as sent,
        with those URLs in place of the paths.
        """
        if self._life.closing and self._life.loop is not None:
            raise ClientClosedError(None)
        self._check_open()
        self._life.submits += 1
        try:
            tel = self._tracker.tel
            if tel.on:
                with tel.submit_span(request) as span:
                    job = await self._submit(request)
                    span.accepted(job.id)
                    return job
            return await self._submit(request)
        finally:
            self._life.submits -= 1
            drained = self._life.drained
            if not self._life.submits and drained is not None and not drained.done():
                drained.set_result(None)

    async def _submit(self, request: Request) -> Job:
        if local_media(request):
            return await self._submit_local(request)
        receiver = self._receiver
        if receiver is None or request.webhook is not None:
            body = dump_request(request, None)
            return await self._answered(request, await self._send(request, body), False)
        # A fresh correlation token per submit (see _tokens): kept while the submit is in
        # flight, and after it only if its answer is lost, so its delivery can settle it.
        tokens = receiver._tokens
        token = tokens.issue()
        tel = self._tracker.tel
        try:
            url = receiver._hook_url(token)
            if tel.on:
                url = tel.hook_url(url)  # the submit's traceparent, for the delivery's span
            body = dump_request(request, url)
            job_id = await self._send(request, body)
        except SubmissionUncertainError as exc:
            tokens.uncertain(token)
            context = tel.submit_context() if tel.on else None
            exc._settle = functools.partial(self._settle, token, request, context)
            raise
        finally:
            tokens.answered(token)  # a no-op for an uncertain one (moved aside above)
        return await self._answered(request, job_id, True)

    async def _send(self, request: Request, body: bytes) -> str:
        """Send one submit; the new job's id, or ``SubmissionUncertainError``."""
        status, raw = await self._transport.submit(request.endpoint, body, request)
        try:
            return parse_submit_answer(raw, status)
        except APIError as exc:
            # A 2xx means the service took the request: a job almost surely exists, and a
            # caller retrying on APIError would pay twice. The APIError (what came back) is
            # the cause.
            raise SubmissionUncertainError(request, f"unreadable answer: {exc}") from exc

    async def _answered(
        self,
        request: Request,
        job_id: str,
        by_webhook: bool,
        context: tuple[str, int] | None = None,
    ) -> Job:
        """Track a job whose submit is known to have created it (answered, or settled).

        ``context``: an uncertain submit's trace context, for the job it settled into (else
        the submit span's, current here).
        """
        link = self._store_link
        tel = self._tracker.tel
        if tel.on and context is None:
            context = tel.submit_context()
        trace = context[0] or None if context is not None else None
        recorded = await link.record_submit(job_id, request, trace) if link is not None else None
        # A receiver its own check could not reach: poll from the start, not after the grace.
        by_webhook = by_webhook and self._receiver_reachable
        new = self._tracker.get(job_id) is None
        if tel.on:  # before the tracker: a delivery held early may resolve the job at once
            tel.job_tracked(job_id, context, by_webhook=by_webhook)
        job = self._tracker.submitted(job_id, webhook=by_webhook)
        if tel.on and self._life.closing and job.done():
            tel.forget(job_id)  # answered as the client closed: its entry would outlive it
        if new and self._completions is not None:
            job.add_done_callback(self._completions.on_done)
        if link is not None and recorded is not None:
            link.submitted(job, recorded)  # a known outcome resolves it; a store failure raises
        return job

    async def _settle(
        self, token: str, request: Request, context: tuple[str, int] | None, timeout: float
    ) -> Job | None:
        """``SubmissionUncertainError.resolve``: the job a delivery carrying ``token`` named.

        The job is then tracked as if its submit had been answered. The delivery itself waits
        in the tracker's early-delivery buffer (or the store) and resolves it at once; if it
        is gone from there (or the receiver verifies: it holds nothing unverified), the job is
        read from the API after ``poll_interval``, not after ``webhook_grace``: its delivery
        has come already. An id the API does not know then ends it with ``NotFoundError``.
        """
        receiver = self._receiver
        if receiver is None or self._life.loop is None or self._life.closing:
            raise LipsyncError(
                "cannot settle this uncertain submit: its client is closed (its receiver no "
                "longer listens for the token)"
            )
        link = self._store_link
        lookup = link.store.token_job if link is not None else None
        try:
            job_id = await receiver._tokens.wait(token, timeout, lookup)
        except StoreError as exc:
            raise LipsyncError(f"cannot settle this uncertain submit now: {exc}") from exc
        if job_id is None:
            if self._life.closing or self._life.loop is None:
                raise LipsyncError("cannot settle this uncertain submit: the client closed")
            return None
        receiver._tokens.forget(token)
        job = await self._answered(request, job_id, False, context)
        log.info("job %r: an uncertain submit settled by its delivery's token", job_id)
        return job

    async def _submit_local(self, request: Request) -> Job:
        """Serve the request's local files from the receiver, then submit it with their URLs.

        Each file gets a fresh token; the files stay served until the job ends plus the
        receiver's ``file_grace``. A submit that surely created no job unregisters them at
        once; one that may have (``SubmissionUncertainError``, or a submit cancelled in flight)
        keeps them for the grace, and
        one whose job exists despite the error (``.job``, a store failure) ties them to it.
        """
        local = local_media(request)
        receiver = self._receiver
        if receiver is None:
            raise ValidationError(
                next(iter(local)),
                "is a local file, and the service fetches inputs by URL: serving it needs a "
                "public receiver (LipsyncClient(webhook=WebhookReceiver(public_url=...))), "
                "or pass an http(s) URL instead",
            )
        files = receiver._files
        tokens: list[str] = []
        try:
            urls: dict[str, Any] = {}  # Any: evolve's per-field kwargs cannot take a str dict
            for field, path in local.items():
                token, urls[field] = receiver._serve_file(field, path)
                tokens.append(token)
            job = await self._submit(attrs.evolve(request, **urls))
        except (SubmissionUncertainError, asyncio.CancelledError):
            files.expire(tokens)  # a job may exist and be fetching them
            raise
        except BaseException as exc:
            created = getattr(exc, "job", None)
            if isinstance(created, Job):
                files.expire_with(created, tokens)
            else:
                files.discard(tokens)
            raise
        files.expire_with(job, tokens)
        return job

    async def submit_many(
        self,
        requests: Iterable[Request] | AsyncIterable[Request],
        *,
        concurrency: int = 64,
    ) -> AsyncGenerator[Job | LipsyncError, None]:
        """Submit many requests; yield one outcome per request, in the order given.

        Each outcome is the request's :class:`Job`, or the :class:`LipsyncError` its submit
        ended with, *returned, not raised*: a :class:`ValidationError` (an item that is not a
        request model, a local file without a receiver), a :class:`SubmissionUncertainError`
        (the job may exist: never resubmit it blindly), an :class:`APIError` (the service
        refused this one), :class:`ClientClosedError`. One bad request never stops the others,
        and the outcomes line up with the input, so ``zip(requests, outcomes)`` pairs them.
        Why values rather than exceptions: an ``async for`` cannot go on after a raise, and
        why in order rather than as they finish: the caller can zip, resume and journal by
        position without carrying ids around.

        ``concurrency`` sender tasks (a fixed pool, not one task per request) take requests
        from ``requests`` lazily (a generator of a million requests is never materialised),
        at most ``4 * concurrency`` ahead of the outcome the caller is reading; the transport's
        ``max_in_flight`` still bounds requests on the wire, status reads included. Between
        two submits, a sender reads up to two jobs that are due (any of the client's, in one
        attempt: a failed read is read again at the next interval), so a fan-out's reads
        interleave with its submits instead of coming from reader tasks of their own; what
        the senders leave (all of it while they wait for the caller) goes to reader tasks
        within a tick or two.

        Leaving early (``break``, an exception in the loop body, cancellation) stops taking
        requests and cancels the submits in flight, as cancelling ``await client.submit()``
        does (one already sent may have created a job; the client tracks it if its answer
        came). The sender tasks end when the iterator is closed: at once with
        ``contextlib.aclosing(client.submit_many(...))``, else when the event loop finalises
        the abandoned iterator (the next loop turns).

        An exception raised by ``requests`` itself (a generator building a request model
        with a bad field raises ``ValidationError`` there) is raised here at its position:
        the requests taken before it are submitted to the end and their outcomes come first,
        so no job created is left without a handle; nothing after it is taken.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        self._check_open()
        loop = asyncio.get_running_loop()
        window = 4 * concurrency
        outcomes: dict[int, Job | LipsyncError] = {}
        source = _Source(requests)
        # Shared counters in a list: [next index to take, next index to yield, senders alive].
        pos = [0, 0, concurrency]
        failure: list[BaseException] = []  # a sender's own crash: raised at once
        broken: list[tuple[int, BaseException]] = []  # where `requests` raised, and what
        tracker = self._tracker
        wake: list[asyncio.Future[None] | None] = [None]  # the reader, parked for pos[1]
        room: list[asyncio.Future[None] | None] = [None]  # senders, parked for the window

        def ping(which: list[asyncio.Future[None] | None]) -> None:
            fut = which[0]
            if fut is not None and not fut.done():
                fut.set_result(None)
            which[0] = None

        async def sender() -> None:
            tracker.lend()
            lent = True
            try:
                while True:
                    while pos[0] - pos[1] >= window:
                        fut = room[0]
                        if fut is None:
                            fut = room[0] = loop.create_future()
                        tracker.unlend()  # parked until the caller takes outcomes: not helping
                        lent = False
                        await fut
                        tracker.lend()
                        lent = True
                    if broken:  # `requests` raised: nothing after it is taken
                        return
                    # A plain iterable is read with no coroutine per item.
                    it = source.plain
                    try:
                        request = next(it, _END) if it is not None else await source.next()
                    except (Exception, asyncio.CancelledError) as exc:
                        task = asyncio.current_task()
                        if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                            raise  # this sender is cancelled, not `requests` failing
                        # Raised to the caller after the outcomes of the requests before it.
                        if not broken:
                            broken.append((pos[0], exc))
                        return
                    if request is _END:
                        return
                    index = pos[0]
                    pos[0] += 1
                    outcome: Job | LipsyncError
                    if not isinstance(request, _REQUEST_TYPES):
                        outcome = ValidationError(
                            "requests", f"item {index} is not a request model: {request!r:.60}"
                        )
                    elif self._life.closing or self._life.loop is None:  # close() began or ended
                        outcome = ClientClosedError(None)
                    else:
                        try:
                            outcome = await self.submit(request)
                        except LipsyncError as exc:
                            outcome = exc.with_traceback(None)  # its frames hold this pool
                    outcomes[index] = outcome
                    if index == pos[1]:
                        ping(wake)
                    # A submit, then a read of a job already due, as POST + GET pairs go: see
                    # Tracker.read_due.
                    for _ in range(2):  # two: the senders catch up on a backlog
                        read = tracker.read_due()
                        if read is None:
                            break
                        await read
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    failure.append(exc)
                raise
            finally:
                if lent:
                    tracker.unlend()
                pos[2] -= 1
                ping(wake)

        tasks = [loop.create_task(sender(), name="lipsync-submit-many") for _ in range(concurrency)]
        try:
            while True:
                index = pos[1]
                outcome_or_none = outcomes.pop(index, None)
                if outcome_or_none is not None:
                    pos[1] = index + 1
                    if room[0] is not None and pos[0] - pos[1] < window:
                        ping(room)
                    yield outcome_or_none
                    continue
                if failure:
                    raise failure[0]
                if broken and index == broken[0][0]:
                    raise broken[0][1]
                if pos[2] == 0:  # every sender returned: nothing left to take
                    return
                fut = wake[0] = loop.create_future()
                await fut
        finally:
            await cancel_and_wait(tasks)  # senders wait on the store too (see _tasks)

    async def lipsync_video(
        self,
        *,
        video: str | os.PathLike[str],
        audio: str | os.PathLike[str],
        resolution: Resolution | None = None,
        mask_image: str | os.PathLike[str] | None = None,
        prompt: str | None = None,
        seed: int | None = None,
        webhook: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Job:
        """Replace a video's audio, keeping the lips in sync (``POST /lipsync-video``)."""
        return await self.submit(
            LipsyncVideoRequest(
                video=video,
                audio=audio,
                resolution=resolution,
                mask_image=mask_image,
                prompt=prompt,
                seed=seed,
                webhook=webhook,
                extra=extra,
            )
        )

    async def lipsync_image(
        self,
        *,
        image: str | os.PathLike[str],
        audio: str | os.PathLike[str],
        resolution: Resolution | None = None,
        mask_image: str | os.PathLike[str] | None = None,
        prompt: str | None = None,
        seed: int | None = None,
        webhook: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Job:
        """Animate one face from an image and an audio (``POST /lipsync-image``)."""
        return await self.submit(
            LipsyncImageRequest(
                image=image,
                audio=audio,
                resolution=resolution,
                mask_image=mask_image,
                prompt=prompt,
                seed=seed,
                webhook=webhook,
                extra=extra,
            )
        )

    async def lipsync_image_multi(
        self,
        *,
        image: str | os.PathLike[str],
        left_audio: str | os.PathLike[str],
        right_audio: str | os.PathLike[str],
        order: Order | None = None,
        resolution: Resolution | None = None,
        prompt: str | None = None,
        seed: int | None = None,
        webhook: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Job:
        """Two speakers from one image and two audios (``POST /lipsync-image-multi``)."""
        return await self.submit(
            LipsyncImageMultiRequest(
                image=image,
                left_audio=left_audio,
                right_audio=right_audio,
                order=order,
                resolution=resolution,
                prompt=prompt,
                seed=seed,
                webhook=webhook,
                extra=extra,
            )
        )

    def with_options(
        self, *, timeout: float | None = None, max_retries: int | None = None
    ) -> LipsyncClient:
        """A view of this client with other per-call settings, for the calls made through it.

        The view shares this client's session, tracker, receiver, store, bounds, pacing and
        lifecycle (it is open while the client is; closing the client ends it; ``async with``
        and ``close()`` belong to the client): only ``timeout`` (seconds per API attempt) and
        ``max_retries`` differ, for its submits, status reads and downloads. Cheap: make one
        per call site, e.g. ``await client.with_options(timeout=5).get_job(job_id)``.
        """
        view = copy.copy(self)
        view._view = True
        view._transport = self._transport.with_options(
            timeout=None if timeout is None else _positive("timeout", timeout),
            max_retries=_retries(max_retries) if max_retries is not None else None,
        )
        return view

    async def run(self, request: Request, *, timeout: float | None = None) -> JobState:
        """Submit ``request`` and wait for its outcome: the completed ``JobState``.

        One call where a script wants one result: ``JobFailed`` if the job failed,
        ``JobTimeoutError`` after ``timeout`` seconds (the job stays tracked: ``exc.job_id``),
        and every error ``submit`` raises (``SubmissionUncertainError``: nothing is sent twice).
        For many jobs, submit them all first (``submit_many``, ``gather``) and then wait.
        """
        job = await self.submit(request)
        return await job.wait(timeout)

    # -- jobs --------------------------------------------------------------------------------

    async def pending(self) -> list[Job]:
        """The jobs the store knows as unfinished, tracked again: how a restarted worker resumes.

        Each resolves by webhook or polling like any other (the first read comes after one
        ``poll_interval``: a delivery made while no worker listened is gone); one whose final
        state the store already holds resolves at once. Without a ``store``, the jobs this
        client tracks now.
        """
        self._check_open()
        if self._store_link is None:
            return self._tracker.jobs()
        return await self._store_link.pending()

    def job(self, job_id: str) -> Job:
        """Attach to a job submitted earlier (another process, before a restart).

        No request is made until the job is awaited; a delivery to this client's receiver
        resolves it meanwhile.
        """
        check_job_id(job_id)
        self._check_open()
        new = self._tracker.get(job_id) is None
        job = self._tracker.attach(job_id)
        if new:  # its ending is recorded, and completed, like a submitted job's
            if self._store_link is not None:
                self._store_link.watch(job)
            elif self._completions is not None:
                job.add_done_callback(self._completions.on_done)
        return job

    async def get_job(self, job_id: str) -> JobState:
        """One status read. A tracked job with that id takes the state too."""
        check_job_id(job_id)
        self._check_open()
        state = await self._tracker.fetch(job_id, self._transport)
        self._tracker.deliver(state, VIA_USER_READ)
        return state

    async def as_completed(
        self, jobs: Iterable[Job], *, timeout: float | None = None
    ) -> AsyncIterator[Job]:
        """Yield each job as it finishes (completed, failed, or ended), first done first.

        Jobs already finished when the iteration starts come first, in the order given. With
        ``timeout``, raises :class:`JobTimeoutError` once that many seconds have passed and
        jobs remain (after yielding the finished ones, even at ``timeout=0``); those jobs stay
        tracked.
        """
        self._check_open()
        if timeout is not None:
            _positive("timeout", timeout, allow_zero=True)
        async for job in iter_completed(jobs, timeout=timeout):
            yield job

    async def download(
        self,
        target: Job | JobState | str,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[int, int | None], object] | None = None,
        max_bytes: int | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Stream a job's output (or any http(s) URL) to ``path``, atomically.

        A ``Job`` is awaited first. The bytes go to a temporary file beside ``path`` and are
        renamed into place only when complete; a failed download leaves nothing behind. Disk
        writes run in a thread, never on the event loop. ``progress(done, total_or_None)`` is
        called as bytes arrive. If ``path`` is a directory, the file is named after the job.
        The API key is sent only to the API's own origin, never to a CDN.

        Output URLs expire: when the output of a ``Job`` or ``JobState`` answers 403, 404 or
        410, the job is read again (:meth:`get_job`) and its fresh URL tried once more; if
        that fails too, the error says so. A ``JobState`` whose ``output`` was a list or an
        object holding exactly one URL downloads that URL (``JobState.output_raw``).
        """
        self._check_open()
        name = None
        if isinstance(target, Job):
            target = await target
        job_id = None
        if isinstance(target, JobState):
            url = _output_of(target)
            name, job_id = f"{target.id}.mp4", target.id
        else:
            url = target
        check_url("target", url)
        if max_bytes is not None:
            _positive("max_bytes", max_bytes)

        async def fetch(url: str) -> Path:
            return await download_to(
                self._transport,
                url,
                Path(path),
                name=name,
                progress=progress,
                max_bytes=max_bytes,
                overwrite=overwrite,
            )

        tel = self._tracker.tel
        if tel.on:
            with tel.download_span(url, job_id) as span:
                if job_id is None:
                    written = await fetch(url)
                else:
                    written = await refetch_expired(fetch, url, job_id, self.get_job, _output_of)
                span.wrote(written.stat().st_size)
                return written
        if job_id is None:
            return await fetch(url)
        return await refetch_expired(fetch, url, job_id, self.get_job, _output_of)


_REQUEST_TYPES: Final = (LipsyncVideoRequest, LipsyncImageRequest, LipsyncImageMultiRequest)
_END: Final[Any] = object()


class _Source:
    """The requests of a ``submit_many``, from a plain or an async iterable, one at a time.

    A plain iterator is read without an await (no suspension per item); an async one under a
    lock, so two senders never step it at once.
    """

    __slots__ = ("_aiter", "_lock", "plain")

    def __init__(self, requests: Iterable[Request] | AsyncIterable[Request]) -> None:
        self.plain: Iterator[Any] | None = None  # a plain iterable's iterator: read it directly
        self._aiter: Any = None
        if isinstance(requests, AsyncIterable):
            self._aiter = aiter(requests)
            self._lock = asyncio.Lock()
        else:
            self.plain = iter(requests)

    async def next(self) -> Any:
        if self.plain is not None:
            return next(self.plain, _END)
        async with self._lock:
            if self._aiter is None:
                return _END
            try:
                return await anext(self._aiter)
            except StopAsyncIteration:
                self._aiter = None
                return _END
            except BaseException:
                # Raised once (submit_many raises it at its position); never asked again,
                # though an iterator that is not a generator might go on.
                self._aiter = None
                raise
