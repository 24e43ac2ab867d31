"""``WebhookReceiver``: the embedded aiohttp server that turns deliveries into resolved jobs.

The service signs nothing, so the receiver is a door into the user's process and is built like
one: only POSTs to a path carrying the receiver's random secret (compared in constant time) get
in, bodies are capped, anything malformed gets a 4xx, and nothing a sender does can raise out of
the handler as a 500. Each accepted delivery is handed to a sink: the client's tracker (which
resolves the job, or holds an early delivery until its submit returns), or, for a process that
only listens, a callback or ``async for``.

``verify=True`` (SECURITY.md's trust table, the rows of a secret holder and a Redis peer) means
that every state resolving a job was read from the API with the user's key, whatever path it
came by: a delivery to this receiver, or a state heard from a shared store (the client hands
those to :meth:`WebhookReceiver._vet`). The reads are bounded so that forged POSTs cannot spend
the user's rate limit: none for an id the bound client does not track (it costs nothing until
a job claims it, and the claim goes through the store or the job's own fallback poll), one in
flight per job that every concurrent delivery shares, and at most one per job per
``webhook_grace``. A receiver with no client bound cannot read the API: with ``verify=True``
it answers 503 and records nothing.

Limits (the receiver is reachable by anyone; SPEC 3.5), when it runs its own server:

- ``idle_timeout`` (15 s): a connection that has not sent a whole request's headers this long
  after it opened or after its last answer is closed. That one deadline covers idle keep-alive
  connections and slow headers (aiohttp's ``keepalive_timeout``, whose timer a trickle of
  header bytes does not reset).
- ``body_timeout`` (15 s): the whole body must arrive within this after the headers, else the
  connection is closed (a 64 KiB delivery takes milliseconds); a sender that disconnects
  mid-body is a DEBUG line, not an error.
- ``handler_timeout`` (30 s): a delivery's processing (verification read, store, callback) past
  this gets 503, which the service retries.
- ``max_connections``: concurrent connections over it are closed as soon as accepted; by
  default derived from ``RLIMIT_NOFILE`` so that ``reserve_fds`` descriptors stay free for the
  client's own requests (see ``_limits``, which also says why close-at-accept, and why the
  kernel's listen queue is 4,096 while asyncio accepts 128 at a time).
- aiohttp's error log for malformed requests, and connections refused at the cap, become one
  WARNING a minute at most, with counts (``_limits.Summary``).

Mounted (``attach``, ``asgi``), the host application's server owns connections: only the body
and handler deadlines apply.

Reachability: on start, unless ``check_reachable=False``, the receiver calls itself once
through its public URL (``GET {path}/ping?c=<random>``, no secret in it; the answer is an HMAC
of the challenge under the secret, so any worker sharing the secret behind one URL passes).
If that fails, or the URL is loopback while the API is not, it logs one WARNING and
:attr:`reachable` is False: the client then polls its jobs from the start (every
``poll_interval``) instead of waiting ``webhook_grace`` for deliveries that cannot come.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from ._errors import APIError, LipsyncError, NotFoundError, ValidationError
from ._files import FileRegistry
from ._http import is_loopback
from ._limits import GatedSite, ServerLog, Summary, derive_cap, probe
from ._models import JobState, check_url
from ._telemetry import NOOP, VIA_DELIVERY, VIA_WORKER, Telemetry, resolve
from ._tokens import TokenBook, check_token
from ._wire import parse_job_state

if TYPE_CHECKING:
    from ._asgi import ASGIApp
    from .stores import Store

__all__ = ["DeliverySink", "WebhookReceiver"]

log = logging.getLogger("lipsync_async.webhook")

_SECRET_RE: Final = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_OK: Final = b'{"received":true}'
_VERIFY_TIMEOUT: Final = 10.0
_VERIFY_PERIOD: Final = 600.0  # a sink without a webhook_grace: the client's default grace
_ACCEPT_BATCH: Final = 128  # asyncio's accepts per wake-up, which the fd reserve must allow
_LISTEN_QUEUE: Final = 4096  # the kernel's listen queue (capped by somaxconn): see _limits
_PING_TIMEOUT: Final = 5.0
_PING_TAG: Final = b"lipsync-ping:"


def _timeout(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ValidationError(name, f"must be seconds > 0, got {value!r:.40}")
    return float(value)


class DeliverySink(Protocol):
    """Where accepted deliveries go when a client is bound (its tracker).

    ``get`` says whether a job is tracked (a verification read is spent on tracked jobs only);
    a ``webhook_grace`` attribute, if the sink has one, is the period of the verify bound.
    ``via`` says how a state came, for telemetry only (``_telemetry``'s ``VIA_*``).
    """

    def deliver(self, state: JobState, via: str = VIA_DELIVERY) -> bool: ...

    async def fetch(self, job_id: str) -> JobState: ...

    def get(self, job_id: str) -> object | None: ...


def _reply(status: int, text: str) -> web.Response:
    body = _OK if status < 300 else json.dumps({"error": text}).encode()
    return web.Response(status=status, body=body, content_type="application/json")


class WebhookReceiver:
    """An embedded webhook server that resolves jobs from the service's deliveries.

    Args:
        public_url: the address the service can reach, e.g. your tunnel or load balancer
            (``https://hooks.example.com``); a path prefix is kept. ``None`` means this
            machine's own bound address, for local use with the emulator.
        host, port: where to listen (port 0 picks a free port, known after start).
        path: the route; the receiver's URL is ``{public_url}{path}/{secret}``.
        secret: the unguessable part of the URL. Random per receiver by default; set the same
            value on every worker behind one public URL. 16-128 URL-safe characters.
        verify: trust no delivery: every state that resolves a job of the bound client is
            read from the API with its key first, whether it came to this receiver or from the
            shared store; at most one read per job per ``webhook_grace`` however many
            deliveries arrive, none for ids the client does not track. Without a client bound
            (listening only, before the client opens, after it closes) deliveries get 503 and
            nothing is recorded. See SECURITY.md's trust table.
        max_body: bodies over this many bytes get 413.
        allow_insecure: accept an ``http://`` public URL that is not a loopback host (the
            service requires HTTPS; this is for development tunnels only).
        on_delivery: for a process that only listens: called with each accepted ``JobState``
            (may be async). Without it and without a client, use ``async for state in receiver``.
        store: a :mod:`lipsync_async.stores` store shared with other workers: a final state
            this receiver accepts and no job of its own client takes is recorded there (the
            service gets 503, and retries, if the store is down), and the store sends it to
            the worker owning the job. A receiver given to a client defaults to its store; a
            store of its own must be that store or an equal one (same backend, location and
            prefix: then the receiver uses the client's object).
        file_grace: seconds a local input file (a ``pathlib.Path`` media field) stays served
            after its job ends, at ``{public_url}{path}/files/{token}/{name}``; then that URL
            is a 404. Files are served by the process that registered them only.
        idle_timeout: seconds a connection may stay open without sending a whole request's
            headers (idle keep-alive, slow headers).
        body_timeout: seconds a request's body may take to arrive, after its headers.
        handler_timeout: seconds a delivery's processing may take before it gets 503.
        max_connections: concurrent connections of the receiver's own server; more are closed
            at once. ``None``: the process's ``RLIMIT_NOFILE`` soft limit minus what is open at
            start, ``reserve_fds`` and asyncio's accept batch of 128 (at least 16, at most 10,000).
        reserve_fds: file descriptors the derived cap leaves for the rest of the process (the
            client's own connections, files, the store).
        check_reachable: on start, call the receiver once through its public URL; if that
            fails, log a WARNING and set :attr:`reachable` False (the client then polls).
        token_ttl: seconds the correlation token of an uncertain submit stays known (see
            ``SubmissionUncertainError.resolve``): each submit's URL is
            ``{url}?t={token}``; a delivery carrying the token of a submit whose answer was
            lost names that submit's job. At most ``max_uncertain`` such tokens are kept,
            oldest dropped first; submits that got their answer keep none.
    """

    def __init__(
        self,
        public_url: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/webhooks/lipsync",
        secret: str | None = None,
        verify: bool = False,
        max_body: int = 64 * 1024,
        allow_insecure: bool = False,
        on_delivery: Callable[[JobState], Awaitable[object] | object] | None = None,
        queue_size: int = 10_000,
        store: Store | None = None,
        file_grace: float = 300.0,
        idle_timeout: float = 15.0,
        body_timeout: float = 15.0,
        handler_timeout: float = 30.0,
        max_connections: int | None = None,
        reserve_fds: int = 256,
        check_reachable: bool = True,
        token_ttl: float = 3600.0,
        max_uncertain: int = 10_000,
    ) -> None:
        if public_url is not None:
            check_url("public_url", public_url)
            pub = URL(public_url)
            if pub.scheme != "https" and not allow_insecure and not is_loopback(pub.host):
                raise ValidationError(
                    "public_url",
                    "must be https (the service requires HTTPS webhooks) unless it is a "
                    "loopback address; pass allow_insecure=True for a development tunnel",
                )
            if pub.query_string or pub.fragment:
                raise ValidationError("public_url", "must not carry a query or fragment")
        if not isinstance(path, str) or not path.startswith("/") or "{" in path or "//" in path:
            raise ValidationError("path", f"must be an absolute route like /webhooks, got {path!r}")
        if secret is None:
            secret = secrets.token_urlsafe(24)
        elif not isinstance(secret, str) or not _SECRET_RE.match(secret):
            raise ValidationError("secret", "must be 16-128 characters of A-Z a-z 0-9 _ -")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValidationError("port", f"must be 0-65535, got {port!r}")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 256:
            raise ValidationError("max_body", f"must be an integer >= 256, got {max_body!r}")
        if (
            isinstance(file_grace, bool)
            or not isinstance(file_grace, int | float)
            or not 0 <= file_grace < float("inf")
        ):
            raise ValidationError("file_grace", f"must be seconds >= 0, got {file_grace!r}")
        for name, value in (("max_connections", max_connections), ("reserve_fds", reserve_fds)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValidationError(name, f"must be an integer >= 1, got {value!r:.40}")
        self.idle_timeout = _timeout("idle_timeout", idle_timeout)
        self.body_timeout = _timeout("body_timeout", body_timeout)
        self.handler_timeout = _timeout("handler_timeout", handler_timeout)
        self._max_connections = max_connections
        self.reserve_fds = reserve_fds
        self.check_reachable = bool(check_reachable)
        self._summary = Summary("requests and connections refused at the door")
        self._site: GatedSite | None = None
        self._reachable: bool | None = None  # None: not checked
        self._api_remote = False  # a loopback receiver URL given to a non-loopback API
        if (
            isinstance(token_ttl, bool)
            or not isinstance(token_ttl, int | float)
            or not 0 < token_ttl < float("inf")
        ):
            raise ValidationError("token_ttl", f"must be seconds > 0, got {token_ttl!r}")
        if (
            isinstance(max_uncertain, bool)
            or not isinstance(max_uncertain, int)
            or max_uncertain < 1
        ):
            raise ValidationError(
                "max_uncertain", f"must be an integer >= 1, got {max_uncertain!r}"
            )
        self._files = FileRegistry(float(file_grace))
        self._tokens = TokenBook(ttl=float(token_ttl), max_uncertain=max_uncertain)
        self._public_url = public_url.rstrip("/") if public_url else None
        self.host = host
        self._port = port
        self.path = path.rstrip("/")
        self._secret = secret.encode()
        self._secret_str = secret
        self.verify = verify
        self.max_body = max_body
        self._on_delivery = on_delivery
        self._store = store
        self._queue: asyncio.Queue[JobState] = asyncio.Queue(maxsize=queue_size)
        self._iterating = 0
        self._sink: DeliverySink | None = None
        # verify: job id -> loop time of its last verification read (oldest first), the reads
        # in flight (shared by concurrent deliveries), and the reads for store states.
        self._verified_at: dict[str, float] = {}
        self._verifying: dict[str, asyncio.Task[JobState]] = {}
        self._vetting: set[asyncio.Task[None]] = set()
        self._warned_unbound = False
        self.verify_reads = 0  # verification reads made (a figure for tests)
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._attached = False
        self.received = 0  # deliveries accepted (a benchmark figure)
        self.matched = 0
        self._tel: Telemetry = NOOP  # its client's (set when the client opens), see _telemetry

    def __repr__(self) -> str:  # never the secret
        where = self._public_url or f"http://{self.host}:{self._bound_port or self._port}"
        return f"<WebhookReceiver {where}{self.path}/*** {'running' if self.running else 'idle'}>"

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The bound port once started (useful with ``port=0``), else the configured one."""
        return self._bound_port if self._bound_port is not None else (self._port or None)

    @property
    def url(self) -> str:
        """The full webhook URL sent to the service, secret included: treat it as a credential."""
        if self._public_url is not None:
            base = self._public_url
        else:
            if self._bound_port is None and not self._port:
                raise RuntimeError("the receiver's port is not known until it is started")
            host = self.host if ":" not in self.host else f"[{self.host}]"
            if host in ("0.0.0.0", "[::]"):  # noqa: S104 - a listen address is not a URL host
                host = "127.0.0.1"
            base = f"http://{host}:{self.port}"
        return f"{base}{self.path}/{self._secret_str}"

    def _hook_url(self, token: str) -> str:
        """The webhook URL for one submit: the receiver's URL and its correlation token."""
        return f"{self.url}?t={token}"

    @property
    def reachable(self) -> bool:
        """False when the start-up check could not reach the receiver through its public URL,
        or its URL is loopback while the API is not: the client then polls jobs from the start.
        True otherwise (checked and reached, not checked, or mounted)."""
        return self._reachable is not False and not self._api_remote

    @property
    def max_connections(self) -> int | None:
        """The connection cap in force (known once started), or the configured one."""
        gate = self._site.gate if self._site is not None else None
        return gate.cap if gate is not None else self._max_connections

    @property
    def connections(self) -> int:
        """Connections open to the receiver's own server now."""
        gate = self._site.gate if self._site is not None else None
        return gate.active if gate is not None else 0

    @property
    def refused(self) -> int:
        """Connections closed at accept because the cap was reached (a figure for tests)."""
        gate = self._site.gate if self._site is not None else None
        return gate.refused if gate is not None else 0

    @property
    def stats(self) -> Mapping[str, int]:
        """Gauges, a fresh dict per call: ``served_files`` (local files served to the service
        now, each until its job ends plus ``file_grace``), ``tokens`` (correlation tokens held:
        one per submit in flight, and one per submit whose answer was lost until a delivery
        or the store settles it; none per tracked job), ``connections`` open now and
        ``refused`` at accept so far."""
        return {
            "served_files": len(self._files),
            "tokens": len(self._tokens),
            "connections": self.connections,
            "refused": self.refused,
        }

    def _note_api(self, base_url: URL) -> None:
        """The client's API root: a loopback receiver URL is useless to a remote API."""
        # Without public_url the URL names the bound host (loopback for a wildcard, see url).
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        mine = URL(self._public_url) if self._public_url else URL.build(scheme="http", host=host)
        if is_loopback(mine.host) and not is_loopback(base_url.host):
            self._api_remote = True
            log.warning(
                "the webhook receiver's URL (%s) is a loopback address but the API (%s) is "
                "not: the service cannot deliver to it, so jobs are polled from the start; "
                "pass public_url= (a tunnel or a public address) to receive deliveries",
                mine.origin(),
                base_url.origin(),
            )

    @property
    def running(self) -> bool:
        """True while serving, on its own server or mounted on an application."""
        return self._runner is not None or self._attached

    def _serve_file(self, field: str, path: os.PathLike[str]) -> tuple[str, str]:
        """Register a local input file; return its token and its URL for the service.

        The URL is ``{public_url}{path}/files/{token}/{name}``: under the receiver's address
        but without its secret (see ``_files``).
        """
        base = self.url.removesuffix(self._secret_str)  # "{public_url}{path}/"
        token, name = self._files.add(field, path)
        return token, f"{base}files/{token}/{name}"

    # -- lifecycle ---------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        """Mount the handler on your own ``aiohttp.web.Application`` instead of a server."""
        # Before the secret route, which would take "/ping" as a (wrong) secret. Secrets are at
        # least 16 characters, so no secret is "ping".
        app.router.add_get(self.path + "/ping", self._ping)
        app.router.add_route("*", self.path + "/{secret}", self._handle)
        # Local input files (GET and HEAD): a route of their own, see _files.
        app.router.add_get(self.path + "/files/{token}/{name}", self._files.handle)
        if self._store is not None:
            app.on_startup.append(self._open_store)
            app.on_cleanup.append(self._close_store)
        self._attached = True

    def asgi(self) -> ASGIApp:
        """This receiver as an ASGI application, to mount in FastAPI or Starlette instead of
        serving it with aiohttp: ``app.mount(receiver.path, receiver.asgi())`` (see ``_asgi``).
        Like :meth:`attach`, a client given this receiver then starts no server of its own."""
        from ._asgi import ReceiverASGIApp

        if self._public_url is None and not self._port:
            raise ValidationError(
                "public_url", "is needed to mount the receiver: the address your app serves at"
            )
        self._attached = True
        return ReceiverASGIApp(self)

    async def _receive_http(
        self,
        method: str,
        secret: str,
        body: bytes,
        token: str | None = None,
        trace: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to ``{path}/{secret}`` from a server that is not aiohttp (the ASGI app):
        the same checks, in the same order, as ``_accept``, then the same ``_dispatch``.
        ``body`` is at most ``max_body + 1`` bytes (the caller stops reading there).
        Returns the status, headers and body to answer with."""

        async def answer() -> web.StreamResponse:
            if not hmac.compare_digest(secret.encode(), self._secret):
                return _reply(404, "not found")
            if method != "POST":
                return web.Response(status=405, headers={"Allow": "POST"})
            if len(body) > self.max_body:
                return _reply(413, f"body over {self.max_body} bytes")
            return await self._deliver_body(bytes(body), token, trace)

        try:
            reply = await answer()
        except asyncio.CancelledError:
            raise
        except Exception:  # as in _handle: a bug of ours is a 503 the service retries
            log.exception("webhook handler error")
            reply = _reply(503, "temporarily unavailable")
        if self._tel.on and 400 <= reply.status < 500:
            self._tel.delivery_refused(reply.status)
        body_out = reply.body if isinstance(reply, web.Response) else None
        return reply.status, dict(reply.headers), body_out if isinstance(body_out, bytes) else b""

    async def start(self) -> None:
        """Listen on ``host:port`` (no access log: the path carries the secret)."""
        if self._runner is not None:
            return
        if self._sink is None and not self._tel.on:
            self._tel = resolve()  # listening alone: the application's global providers
        app = web.Application(client_max_size=self.max_body)
        self.attach(app)
        self._attached = False
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.idle_timeout,  # idle and slow headers: see the docstring
            lingering_time=min(2.0, self.body_timeout),  # reading what a refused body still sends
            logger=ServerLog(self._summary, self._secret_str),
        )
        await runner.setup()
        cap = self._max_connections or derive_cap(self.reserve_fds, _ACCEPT_BATCH)
        try:
            site = GatedSite(
                runner,
                self.host,
                self._port,
                gate_cap=cap,
                summary=self._summary,
                accept_batch=_ACCEPT_BATCH,
                listen_queue=_LISTEN_QUEUE,
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._site = site
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                self._bound_port = int(addr[1])
                break
        log.info(
            "webhook receiver listening on %s:%s (at most %d connections)",
            self.host,
            self._bound_port,
            cap,
        )
        if self.check_reachable:
            await self._check_reachable()

    async def _check_reachable(self) -> None:
        """Call the ping route once through the public URL (see the module docstring)."""
        challenge = secrets.token_hex(16)
        base = self.url.removesuffix(self._secret_str)  # "{public_url}{path}/"
        ping = URL(f"{base}ping").with_query(c=challenge)
        why = await probe(ping, self._ping_answer(challenge), _PING_TIMEOUT)
        self._reachable = why is None
        if why is not None:
            log.warning(
                "the webhook receiver cannot be reached through its public URL (%s): %s; "
                "jobs are polled from the start instead of waiting for deliveries "
                "(check_reachable=False turns this check off)",
                ping.origin(),
                why,
            )

    def _ping_answer(self, challenge: str) -> str:
        return hmac.new(self._secret, _PING_TAG + challenge.encode(), hashlib.sha256).hexdigest()

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        """``GET {path}/ping?c=...``: proof that this is a receiver holding the secret."""
        challenge = request.query.get("c", "")
        if not 8 <= len(challenge) <= 64 or not challenge.isascii():
            return _reply(400, "ping needs a challenge c of 8-64 characters")
        return web.Response(text=self._ping_answer(challenge))

    async def close(self) -> None:
        """Stop serving; deliveries in flight finish first."""
        self._files.clear()  # their URLs die with the server
        runner, self._runner = self._runner, None
        self._site = None
        if runner is not None:
            await runner.cleanup()
        self._summary.flush()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open_store(self, app: web.Application) -> None:
        if self._store is not None:
            await self._store.open()

    async def _close_store(self, app: web.Application) -> None:
        if self._store is not None:
            await self._store.close()

    def _use_store(self, store: Store) -> None:
        """A client's store, for a receiver that has none of its own or an equal one.

        Equal stores (:meth:`Store.same_as`: same backend, location and prefix) are one store:
        the receiver takes the client's object, unless its own is open already (it serves
        on; both objects reach the same data, so deliveries route alike).
        """
        own = self._store
        if own is None or (own is not store and own.same_as(store) and not own._users):
            self._store = store
        elif not own.same_as(store):
            raise ValidationError(
                "store", "the receiver and its client must share one store (or equal ones)"
            )

    async def _record(self, state: JobState, token: str | None = None) -> bool:
        """Record a final state in the shared store; False if the store cannot take it now.

        With the correlation token of a submit this process does not know, also record which
        job the token named: the worker whose submit it was may be waiting to settle it.
        """
        if self._store is None or not state.is_final:
            return True
        try:
            await self._store.record_final(state)
            if token is not None:
                await self._store.record_token(token, state.id)
        except LipsyncError as exc:
            log.warning("delivery for job %r: cannot record it in the store (%s)", state.id, exc)
            return False
        return True

    def _bind(self, sink: DeliverySink) -> None:
        if self._sink is not None and self._sink is not sink:
            raise RuntimeError("this WebhookReceiver already serves another client")
        self._sink = sink

    def _unbind(self, sink: DeliverySink) -> None:
        if self._sink is sink:
            self._sink = None
            self._tokens.clear()  # the client's submits: nobody can settle them now
            for task in (*self._vetting, *self._verifying.values()):
                task.cancel()
            self._verified_at.clear()

    # -- verification ------------------------------------------------------------------------

    def _vet(self, state: JobState) -> None:
        """A state heard from the store: it resolves a job only as the API confirms it.

        Synchronous (the store calls its listeners on the loop): the read runs in a task of
        its own. Not final, not tracked, or no client bound: nothing to do, no read.
        """
        sink = self._sink
        if sink is None or not state.is_final or sink.get(state.id) is None:
            return
        task = asyncio.get_running_loop().create_task(self._vet_read(sink, state.id))
        self._vetting.add(task)
        task.add_done_callback(self._vetting.discard)

    async def _vet_read(self, sink: DeliverySink, job_id: str) -> None:
        try:
            state = await self._verified(sink, job_id)
        except (LipsyncError, TimeoutError):
            return  # logged by _read; the job's own polling goes on
        if state is not None:
            # The API's state, but the outcome came through the store (telemetry's label).
            sink.deliver(state, VIA_WORKER)

    async def _verified(self, sink: DeliverySink, job_id: str) -> JobState | None:
        """The API's state of tracked job ``job_id``; ``None`` if it was read lately.

        One read in flight per job, shared by every caller; a new one only ``webhook_grace``
        after the last began, whatever it found (a failed read counts too, or forged POSTs
        during an outage would each cost one).
        """
        task = self._verifying.get(job_id)
        if task is None:
            loop = asyncio.get_running_loop()
            now = loop.time()
            period = float(getattr(sink, "webhook_grace", _VERIFY_PERIOD))
            seen = self._verified_at
            last = seen.get(job_id)
            if last is not None and now - last < period:
                return None
            seen.pop(job_id, None)
            while seen:  # oldest first: drop what is out of every window
                oldest = next(iter(seen))
                if now - seen[oldest] < period:
                    break
                del seen[oldest]
            seen[job_id] = now
            task = loop.create_task(self._read(sink, job_id))
            self._verifying[job_id] = task
            task.add_done_callback(lambda t: self._read_done(job_id, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise LipsyncError("the client closed during the verification read") from None
            raise

    async def _read(self, sink: DeliverySink, job_id: str) -> JobState:
        """One verification read; its failure logged here, once, however many wait on it."""
        self.verify_reads += 1
        try:
            # Bounded: a webhook handler must not sit in the transport's retries for minutes
            # (and hold up the receiver's close); the service retries a 503.
            async with asyncio.timeout(_VERIFY_TIMEOUT):
                return await sink.fetch(job_id)
        except NotFoundError:
            log.warning("job %r: the API does not know it; states claiming it are ignored", job_id)
            raise
        except (LipsyncError, TimeoutError) as exc:
            log.warning("job %r: cannot verify a delivered state now (%r)", job_id, exc)
            raise

    def _read_done(self, job_id: str, task: asyncio.Task[JobState]) -> None:
        if self._verifying.get(job_id) is task:
            del self._verifying[job_id]
        if not task.cancelled():
            task.exception()  # retrieved: every awaiter may have gone

    # -- standalone consumption ---------------------------------------------------------------

    async def deliveries(self) -> AsyncGenerator[JobState, None]:
        """Accepted deliveries, for a process that only listens (no client bound)."""
        self._iterating += 1
        try:
            while True:
                yield await self._queue.get()
        finally:
            self._iterating -= 1

    def __aiter__(self) -> AsyncIterator[JobState]:
        return self.deliveries()

    # -- the handler -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            reply = await self._accept(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must not become a 500 the service retries forever
            log.exception("webhook handler error")
            return _reply(503, "temporarily unavailable")
        if self._tel.on and 400 <= reply.status < 500:  # refused at the door: no span, a count
            self._tel.delivery_refused(reply.status)
        return reply

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        given = request.match_info.get("secret", "").encode()
        if not hmac.compare_digest(given, self._secret):
            return _reply(404, "not found")
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        if request.content_length is not None and request.content_length > self.max_body:
            return _reply(413, f"body over {self.max_body} bytes")
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    body += chunk
                    if len(body) > self.max_body:
                        return _reply(413, f"body over {self.max_body} bytes")
        except TimeoutError:
            self._summary.note("bodies too slow")
            reply = _reply(408, f"body not received within {self.body_timeout:g} s")
            reply.force_close()
            return reply
        except (ConnectionError, ClientPayloadError, HttpProcessingError) as exc:
            # The sender went away mid-body (or broke its chunking): its problem, not a bug.
            log.debug("webhook body not received whole: %s", type(exc).__name__)
            reply = _reply(400, "body not received whole")
            reply.force_close()
            return reply
        return await self._deliver_body(
            bytes(body), request.query.get("t"), request.query.get("tp")
        )

    async def _deliver_body(
        self, body: bytes, token: str | None, trace: str | None = None
    ) -> web.StreamResponse:
        """A whole, authenticated body (from aiohttp or the ASGI app): parse, then dispatch."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: too deep
            return _reply(400, "body is not JSON")
        if not isinstance(data, dict):
            return _reply(400, "body is not a JSON object")
        try:
            state = parse_job_state(data)
        except APIError as exc:
            return _reply(400, exc.message)
        return await self._dispatch_in_time(state, check_token(token), trace)

    async def _dispatch_in_time(
        self, state: JobState, token: str | None = None, trace: str | None = None
    ) -> web.StreamResponse:
        """``_dispatch`` within ``handler_timeout``; past it, 503 (the service retries).

        ``trace``: the traceparent the delivery's URL carried (``&tp=``), for its span.
        """
        if self._tel.on:
            with self._tel.delivery_span(state, trace, self.path) as span:
                reply = await self._dispatch_timed(state, token, span)
                span.answered(reply.status)
                return reply
        return await self._dispatch_timed(state, token, None)

    async def _dispatch_timed(
        self, state: JobState, token: str | None, span: Any
    ) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.handler_timeout):
                return await self._dispatch(state, token, span)
        except TimeoutError:
            log.warning(
                "delivery for job %r not processed within %g s: answered 503 (retried)",
                state.id,
                self.handler_timeout,
            )
            return _reply(503, "not processed in time, retry later")

    async def _dispatch(
        self, state: JobState, token: str | None = None, span: Any = None
    ) -> web.StreamResponse:
        """Hand an authenticated delivery on; ``span`` (telemetry on) is told its result."""
        # Authenticated: a token of our own submits in flight or uncertain names its job now
        # (tokens correlate, they do not authenticate). Unknown tokens change nothing here;
        # with a store they are recorded for the worker whose submit it was (see _record).
        if token is not None and self._tokens.seen(token, state):
            token = None
        sink = self._sink
        if self.verify and sink is None:
            # Nothing here can read the API: recording or handing on what a secret holder
            # said would let it resolve jobs elsewhere (through the store). Retried later.
            if not self._warned_unbound:
                self._warned_unbound = True
                log.warning(
                    "verify=True but no client is bound to this receiver: deliveries get 503 "
                    "until one is (a receiver cannot verify without the client's key)"
                )
            return _reply(503, "cannot verify deliveries now, retry later")
        if sink is not None:
            if self.verify:
                if sink.get(state.id) is None:
                    if span is not None:
                        span.result = "routed" if self._store is not None else "early"
                    return await self._untracked(state, token)
                try:
                    verified = await self._verified(sink, state.id)
                except NotFoundError:  # logged once per read, not per POST (see _read)
                    return _reply(200, "")
                except (LipsyncError, TimeoutError):
                    return _reply(503, "cannot verify now, retry later")
                if verified is None:
                    # Read within the grace, and not final then (or the job would be gone):
                    # no second read for this POST; the fallback poll takes it from here.
                    return _reply(503, "verified lately and not final, retry later")
                state = verified
                if not state.is_final:
                    # The API lags the delivery: acknowledging would leave the job to the
                    # fallback poll (webhook_grace later). Have the service deliver again.
                    sink.deliver(state)  # still worth a fresher .state
                    return _reply(503, "the job is not final yet at the API, retry later")
            self.received += 1
            known = span is not None and sink.get(state.id) is not None
            matched = sink.deliver(state)
            self.matched += matched
            if span is not None:  # see README, Observability: lipsync.delivery.result
                if matched:
                    span.result = "accepted" if known else "duplicate"
                else:
                    shared = self._store is not None and self._store.shared
                    span.result = "routed" if shared else "early"
            if not matched and not await self._record(state, token):  # another worker's job?
                return _reply(503, "cannot record the delivery now, retry later")
            log.info(
                "delivery job=%r status=%r %s",  # %r: the sender's text, escaped
                state.id,
                state.status.value,
                "matched" if matched else "unknown id (held briefly)",
            )
            return _reply(200, "")
        if span is not None:
            span.result = "routed" if self._store is not None else "accepted"
        if self._store is not None:
            if not await self._record(state, token):
                return _reply(503, "cannot record the delivery now, retry later")
            if self._on_delivery is None and not self._iterating:
                self.received += 1
                return _reply(200, "")
        if self._on_delivery is not None:
            self.received += 1
            try:
                result = self._on_delivery(state)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_delivery callback failed for job %r", state.id)
                return _reply(503, "delivery not processed, retry later")
            return _reply(200, "")
        if self._iterating:
            try:
                self._queue.put_nowait(state)
            except asyncio.QueueFull:
                return _reply(503, "busy, retry later")
            self.received += 1
            return _reply(200, "")
        # Closing, or nobody to take it: the service retries later, to us or another worker.
        return _reply(503, "not accepting deliveries now")

    async def _untracked(self, state: JobState, token: str | None = None) -> web.StreamResponse:
        """``verify=True``, an id the client does not track: no read, and not held.

        The tracker's early-delivery buffer would resolve a job that claims the id later with
        this unverified state, so it is not handed there. With a store it is recorded (for the
        worker tracking the job, whose own receiver verifies it if set so, and for this
        client's submit of the job, whose claim through the store is verified); without one
        it is acknowledged and dropped: the job resolves from a later delivery or its poll.
        """
        self.received += 1
        if not await self._record(state, token):
            return _reply(503, "cannot record the delivery now, retry later")
        log.info(
            "delivery job=%r status=%r not tracked here (unverified)", state.id, state.status.value
        )
        return _reply(200, "")
