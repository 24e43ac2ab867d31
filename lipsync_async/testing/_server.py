"""FakeLipsyncServer: a faithful local lipsync.studio on aiohttp.web.

Same routes, auth, validation, answers and webhook deliveries as the service (SPEC section 1),
plus knobs for the ways the real one misbehaves. Every request to an API route goes through the
same gate, in this order:

1. the rate limit: a token bucket over all requests of all keys, ``rate_limit`` requests/s with
   a burst of ``max(1, rate_limit)``; over it, ``429`` with an integer ``Retry-After`` (whole
   seconds, at least 1, as HTTP defines the header) and ``{"error": ...}``;
2. injected server errors: ``server_error_rate`` of requests get ``server_error_status`` (503)
   before anything else happens, so no job is created and nothing is charged;
3. auth (``Authorization: Bearer <key>``, 401), then validation (400), then credits (402);
4. the endpoint. A submit may then be *dropped* (``drop_rate``): the job is created and charged,
   then the connection is closed without an answer, the case that makes a retried submit a
   double charge.

``GET /files/{id}.mp4`` (the ``output`` URLs, at the root like a CDN) is public and outside the
gate: no key, no injected faults. With ``output_ttl`` set, output URLs expire like a CDN's
signed URLs: each status read hands out a fresh one (``?issued=...``), and a URL older than
``output_ttl`` seconds (a webhook body's counts from the job's end) gets ``403``.

``throttle_next = n`` answers the next ``n`` API requests ``429`` with
``Retry-After: throttle_retry_after`` whatever the rate limit: isolated rate-limit blips.

Jobs finish ``job_duration`` s after their submit (or, with ``realistic=True``, 10 to 30 s per
second of output, as the service's page says), computed lazily from the clock on each read.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from ._billing import output_seconds, price
from ._jobs import COMPLETED, Delivery, FakeJob
from ._media import SAMPLE_MP4
from ._validation import ENDPOINTS, InvalidRequest, parse_submit
from ._webhooks import WebhookDispatcher

__all__ = ["FakeLipsyncServer"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Error messages a randomly failing job picks from (the first is the service page's example).
_RANDOM_ERRORS = (
    "Invalid audio format",
    "No face detected in the image",
    "Upstream model timed out",
)
_MARKER_ERROR = "Generation failed (the prompt asked for a failure)"


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # Like the service (and most APIs): an id per answer, for `APIError.request_id`.
    response.headers.setdefault("X-Request-Id", "req_" + secrets.token_hex(8))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


#: Hosts that mean "every interface" (CLI --host): URLs handed out name loopback instead.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - not a bind
_NOT_FOUND_JOB = b'{"error":"Job not found"}'
_NOT_FOUND_FILE = b'{"error":"File not found"}'


class FakeLipsyncServer:
    """A local lipsync.studio: ``async with FakeLipsyncServer() as fake:`` then
    ``fake.base_url`` and ``fake.api_key``.

    Every knob is a plain attribute as well as a keyword, read when it applies, so a test or a
    soak run can change it while the server runs (``seed`` only matters at construction).

    ``clip_seconds`` stands in for media length, which the emulator cannot know since it never
    fetches media: every audio is taken to last that long, for billing (2 credits/s at 480p,
    4 at 720p, 5 s minimum, multi ``order="meanwhile"`` bills one clip and other orders two)
    and for ``realistic`` durations. ``credits`` is each key's starting balance (``None``:
    unlimited); :meth:`set_credits` gives one key its own balance.

    Webhook URLs may be ``http://`` (the service wants HTTPS) so tests can receive deliveries on
    loopback. An *early* delivery (``webhook_early_rate``) completes the job at once and is
    POSTed, and awaited, before the submit is answered; it ignores ``webhook_delay``.
    ``download_delay`` makes each output file trickle out over that many seconds (a slow CDN).

    Inspection: ``jobs`` (every job by id, in creation order), ``requests`` (a Counter per route
    key such as ``"POST /lipsync-image"``, ``"GET /jobs"``, ``"GET /files"``, counting every
    request that reached the route, and per outcome: ``"429"``, ``"5xx"``, ``"401"``, ``"400"``,
    ``"402"``, ``"404"``, ``"dropped"``), ``deliveries`` (every webhook POST attempt) and
    ``lost_deliveries`` (ids of jobs whose delivery was dropped by ``webhook_loss_rate``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        extra_keys: Iterable[str] = (),
        job_duration: float = 0.05,
        realistic: bool = False,
        clip_seconds: float = 5.0,
        failure_rate: float = 0.0,
        fail_marker: str = "[fail]",
        credits: float | None = None,
        rate_limit: float | None = None,
        server_error_rate: float = 0.0,
        server_error_status: int = 503,
        drop_rate: float = 0.0,
        webhook_duplicate_rate: float = 0.0,
        webhook_early_rate: float = 0.0,
        webhook_loss_rate: float = 0.0,
        webhook_delay: float = 0.0,
        webhook_retries: int = 3,
        download_delay: float = 0.0,
        seed: int | None = None,
        output_ttl: float | None = None,
        throttle_next: int = 0,
        throttle_retry_after: int = 2,
    ) -> None:
        self.host = host
        self.api_key = api_key if api_key is not None else "sk_test_" + secrets.token_hex(8)
        self.extra_keys = frozenset(extra_keys)
        self.job_duration = job_duration
        self.realistic = realistic
        self.clip_seconds = clip_seconds
        self.failure_rate = failure_rate
        self.fail_marker = fail_marker
        self.credits = credits
        self.rate_limit = rate_limit  # a property: also (re)fills the token bucket
        self.server_error_rate = server_error_rate
        self.server_error_status = server_error_status
        self.drop_rate = drop_rate
        self.webhook_duplicate_rate = webhook_duplicate_rate
        self.webhook_early_rate = webhook_early_rate
        self.webhook_loss_rate = webhook_loss_rate
        self.webhook_delay = webhook_delay
        self.webhook_retries = webhook_retries
        self.download_delay = download_delay
        self.seed = seed
        self.rng = random.Random(seed)
        self.output_ttl = output_ttl
        self.throttle_next = throttle_next
        self.throttle_retry_after = throttle_retry_after

        self.jobs: dict[str, FakeJob] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self._requested_port = port
        self._bound_port: int | None = None
        self._balances: dict[str, float | None] = {}  # keys given their own balance
        self._spent: dict[str, float] = {}
        self._files_prefix = ""
        self._runner: web.AppRunner | None = None
        self._dispatcher = WebhookDispatcher(self)

    def __repr__(self) -> str:  # never the key
        where = self.base_url if self._bound_port is not None else "not started"
        return f"<FakeLipsyncServer {where} jobs={len(self.jobs)}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve (port 0 picks a free port; read it from :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("FakeLipsyncServer already started")
        app = web.Application()
        for endpoint in ENDPOINTS:
            app.router.add_post(f"/api/v1/{endpoint}", self._submit_handler(endpoint))
        app.router.add_get("/api/v1/jobs/{job_id}", self._get_job)
        app.router.add_get("/files/{name}", self._get_file)
        app.on_response_prepare.append(_add_request_id)
        # No access log: benchmarks push tens of thousands of requests through here.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=1024)
            await site.start()
            await self._dispatcher.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        self._files_prefix = f"{self.url}/files/"

    async def close(self) -> None:
        """Stop serving; cancel deliveries in flight; close the delivery session. Idempotent."""
        runner, self._runner = self._runner, None
        await self._dispatcher.close()
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- knobs with side effects -------------------------------------------------------------

    @property
    def rate_limit(self) -> float | None:
        """Requests/s over all keys before 429 (``None``: no limit)."""
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        # A new limit starts from a full bucket: a benchmark's next run is not charged for the
        # previous run's burst.
        self._rate_limit = value
        self._tokens: float | None = None  # filled to the burst on first use
        self._bucket_at = 0.0

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._bound_port is None:
            raise RuntimeError("FakeLipsyncServer not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The root URL, ``http://127.0.0.1:PORT`` (a wildcard host is shown as loopback)."""
        host = _WILDCARDS.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, ``http://127.0.0.1:PORT/api/v1``: pass it as ``base_url``."""
        return f"{self.url}/api/v1"

    # -- inspection and control --------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook delivery attempt made, in order."""
        return self._dispatcher.deliveries

    @property
    def lost_deliveries(self) -> list[str]:
        """Ids of jobs whose delivery ``webhook_loss_rate`` dropped (never attempted)."""
        return self._dispatcher.lost

    def credits_left(self, key: str | None = None) -> float | None:
        """Credits ``key`` (default :attr:`api_key`) has left; ``None`` when unlimited."""
        key = self.api_key if key is None else key
        if key in self._balances:
            return self._balances[key]
        if self.credits is None:
            return None
        return self.credits - self._spent.get(key, 0.0)

    def set_credits(self, key: str, credits: float | None) -> None:
        """Give ``key`` a balance of its own, ``credits`` left from now (``None``: unlimited)."""
        if not self._is_key(key):
            raise KeyError("not a key of this emulator")
        self._balances[key] = credits

    def complete_job(self, job_id: str) -> None:
        """Finish a processing job now as completed, and deliver its webhook (if any)."""
        self._force(job_id, fails=False, error="")

    def fail_job(self, job_id: str, error: str = "Invalid audio format") -> None:
        """Finish a processing job now as failed with ``error``, and deliver its webhook."""
        self._force(job_id, fails=True, error=error)

    def job_state(self, job_id: str) -> dict[str, object]:
        """The exact seven-key JSON a ``GET /jobs/{id}`` would answer now."""
        return self.jobs[job_id].state()

    async def wait_deliveries(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` delivery attempts were made (``TimeoutError`` otherwise)."""
        await self._dispatcher.wait(count, timeout)

    def _force(self, job_id: str, *, fails: bool, error: str) -> None:
        job = self.jobs[job_id]
        now = time.monotonic()
        if job.is_final(now):
            raise ValueError(f"job {job_id} is already {job.status_at(now)}")
        job.finish(now, fails=fails, error=error)
        self._dispatcher.schedule(job)

    # -- the gate ----------------------------------------------------------------------------

    def _is_key(self, key: str) -> bool:
        return key == self.api_key or key in self.extra_keys

    def _admit(self, request: web.Request, route: str) -> str | web.Response:
        """Count, rate-limit, inject 5xx, authenticate: the key, or the answer to send."""
        requests = self.requests
        requests[route] += 1
        if self.throttle_next > 0:
            self.throttle_next -= 1
            requests["429"] += 1
            return _error(
                429,
                "Rate limit exceeded, retry later",
                {"Retry-After": str(self.throttle_retry_after)},
            )
        rate = self.rate_limit
        if rate is not None and (retry_after := self._take_token(rate)) is not None:
            requests["429"] += 1
            return _error(
                429, "Rate limit exceeded, retry later", {"Retry-After": str(retry_after)}
            )
        if self.server_error_rate and self.rng.random() < self.server_error_rate:
            requests["5xx"] += 1
            return _error(self.server_error_status, "Service temporarily unavailable")
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            requests["401"] += 1
            return _error(401, "Missing API key: send Authorization: Bearer <key>")
        key = auth[7:].strip()
        if not self._is_key(key):
            requests["401"] += 1
            return _error(401, "Invalid API key")
        return key

    def _take_token(self, rate: float) -> int | None:
        """Take one token from the bucket; ``None`` if granted, else Retry-After seconds."""
        burst = max(1.0, rate)
        now = time.monotonic()
        if self._tokens is None:
            self._tokens = burst
        elif rate > 0:
            self._tokens = min(burst, self._tokens + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        if rate <= 0:
            return 1
        # Whole seconds (HTTP's Retry-After is an integer), rounded up, never 0.
        return max(1, math.ceil((1.0 - self._tokens) / rate))

    # -- handlers ----------------------------------------------------------------------------

    def _submit_handler(self, endpoint: str) -> _Handler:
        route = f"POST /{endpoint}"

        async def submit(request: web.Request) -> web.StreamResponse:
            return await self._submit(request, endpoint, route)

        return submit

    async def _submit(self, request: web.Request, endpoint: str, route: str) -> web.StreamResponse:
        admitted = self._admit(request, route)
        if not isinstance(admitted, str):
            return admitted
        key = admitted
        try:
            form_state, webhook = parse_submit(endpoint, await request.read())
        except InvalidRequest as exc:
            self.requests["400"] += 1
            return _error(400, str(exc))
        seconds = output_seconds(endpoint, form_state, self.clip_seconds)
        cost = price(form_state, seconds)
        left = self.credits_left(key)
        if left is not None and cost > left:
            self.requests["402"] += 1
            return _error(402, f"Insufficient credits: this job costs {cost:g}, {left:g} left")
        self._charge(key, cost)
        rng = self.rng
        early = webhook is not None and rng.random() < self.webhook_early_rate
        job = self._create_job(endpoint, key, form_state, webhook, seconds, cost, early=early)
        if early:
            await self._dispatcher.deliver_now(job)
        else:
            self._dispatcher.schedule(job)
        if self.drop_rate and rng.random() < self.drop_rate:
            return self._drop(request)
        return web.Response(
            body=b'{"id":"%s","status":"processing"}' % job.id.encode(),
            content_type="application/json",
        )

    def _charge(self, key: str, cost: float) -> None:
        self._spent[key] = self._spent.get(key, 0.0) + cost
        balance = self._balances.get(key)
        if balance is not None:
            self._balances[key] = balance - cost

    def _create_job(
        self,
        endpoint: str,
        key: str,
        form_state: dict[str, Any],
        webhook: str | None,
        seconds: float,
        cost: float,
        *,
        early: bool,
    ) -> FakeJob:
        rng = self.rng
        prompt = form_state.get("prompt")
        error = ""
        if self.fail_marker and isinstance(prompt, str) and self.fail_marker in prompt:
            error = _MARKER_ERROR
        elif self.failure_rate and rng.random() < self.failure_rate:
            error = rng.choice(_RANDOM_ERRORS)
        if early:
            duration = 0.0
        elif self.realistic:
            duration = seconds * rng.uniform(10.0, 30.0)
        else:
            duration = self.job_duration
        job_id = str(uuid.uuid4())
        now = time.monotonic()
        job = FakeJob(
            id=job_id,
            endpoint=endpoint,
            api_key=key,
            form_state=form_state,
            webhook=webhook,
            created_at=now,
            finishes_at=now + duration,
            fails=bool(error),
            error=error,
            cost=cost,
            output_url=f"{self._files_prefix}{job_id}.mp4",
        )
        self.jobs[job_id] = job
        return job

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection with no answer; aiohttp then fails to write the response.

        Writing to a closed transport raises a ConnectionError inside aiohttp's own
        ``finish_response``, which it treats as a premature client disconnection and logs at
        debug level only: no traceback, no warning. Raising from the handler instead would be
        logged as an unhandled error.
        """
        self.requests["dropped"] += 1
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=204)

    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        admitted = self._admit(request, "GET /jobs")
        if not isinstance(admitted, str):
            return admitted
        job = self.jobs.get(request.match_info["job_id"])
        if job is None or job.api_key != admitted:  # another key's job does not exist for you
            self.requests["404"] += 1
            return web.Response(status=404, body=_NOT_FOUND_JOB, content_type="application/json")
        now = time.monotonic()
        if self.output_ttl is not None and job.status_at(now) == COMPLETED:
            state = job.final_state()
            state["output"] = f"{job.output_url}?issued={now:.6f}"  # a freshly signed URL
            return web.json_response(state)
        return web.Response(body=job.body(now), content_type="application/json")

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /files"] += 1
        name = request.match_info["name"]
        job = self.jobs.get(name[:-4]) if name.endswith(".mp4") else None
        if job is None or job.status != COMPLETED:
            self.requests["404"] += 1
            return web.Response(status=404, body=_NOT_FOUND_FILE, content_type="application/json")
        if self.output_ttl is not None:
            try:
                issued = float(request.query.get("issued", job.finishes_at))
            except ValueError:
                issued = job.finishes_at
            if time.monotonic() - issued >= self.output_ttl:
                self.requests["403"] += 1
                return _error(403, "Request has expired")
        if self.download_delay <= 0:
            return web.Response(body=SAMPLE_MP4, content_type="video/mp4")
        # A slow CDN: the file trickles out in 8 parts over `download_delay` seconds.
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        resp.content_length = len(SAMPLE_MP4)
        await resp.prepare(request)
        part = -(-len(SAMPLE_MP4) // 8)
        for start in range(0, len(SAMPLE_MP4), part):
            await asyncio.sleep(self.download_delay / 8)
            await resp.write(SAMPLE_MP4[start : start + part])
        await resp.write_eof()
        return resp
