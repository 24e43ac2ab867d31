"""The HTTP layer: the only user of ``aiohttp.ClientSession``.

Everything above it sees two calls, :meth:`Transport.submit` and :meth:`Transport.read`, plus
:meth:`Transport.open_stream` for downloads. Here live auth, the ``User-Agent``, timeouts, the
bound on requests in flight, the optional client-side rate limit, the client-wide pause a 429
imposes, retries with exponential backoff and full jitter, and the mapping of statuses to the
error tree.

The rule that matters most: a submit costs credits and the API has no idempotency key, so a
submit is retried only when the service surely did not take it (the connection was never made,
or a 429/503 refused it). Once the request may have reached the service, a lost answer raises
``SubmissionUncertainError`` instead of a second submit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import email.utils
import ipaddress
import json
import logging
import platform
import random
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator, Mapping
from typing import Any, Final, cast

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    ValidationError,
    excerpt,
)
from ._models import Request
from ._pacing import Pacer
from ._retry import Verdict, judge_error, judge_status
from ._telemetry import NOOP, Telemetry
from ._version import __version__

__all__ = [
    "KEEPALIVE_IDLE",
    "RetryPolicy",
    "Stream",
    "Transport",
    "check_base_url",
    "error_for_status",
    "is_loopback",
    "parse_retry_after",
]

log = logging.getLogger("lipsync_async")

USER_AGENT: Final = (
    f"lipsync-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)
_MAX_RETRY_AFTER: Final = 300.0  # a hostile or broken Retry-After must not park us for a day
_MAX_ERROR_BODY: Final = 64 * 1024  # what a download's error answer may put in memory
_DOTS: Final = {".": "%2E", "..": "%2E%2E"}
# Seconds an idle pooled connection may be reused. Servers close idle connections on their own
# clock (gunicorn 2 s, uvicorn 5 s, nginx 75 s by default, often set lower behind proxies);
# a request sent on one they have just closed fails after it was written, which for a submit
# means SubmissionUncertainError. aiohttp drops a pooled connection idle longer than its
# connector's keepalive_timeout when it is next taken (aiohttp's default: 15 s), so keeping
# this under the shortest common server timeout makes that race rare (benchmarks/
# bench_keepalive.py measures it behind nginx). The price: a fresh connection (a TCP, and
# for https a TLS handshake) after every idle gap over 1.5 s.
KEEPALIVE_IDLE: Final = 1.5


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback IP literals."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base: str, *, allow_insecure: bool) -> URL:
    """The API's base URL, refused when it would carry the key in clear off this machine."""
    url = URL(base.rstrip("/"))
    if url.scheme != "https" and not allow_insecure and not is_loopback(url.host):
        raise ValidationError(
            "base_url",
            f"must be https unless its host is loopback (the key travels in every request); "
            f"got {url.scheme}://{url.host}; pass allow_insecure=True to accept it",
        )
    return url


class RetryPolicy:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**attempt))."""

    __slots__ = ("base", "cap", "max_retries")

    def __init__(self, max_retries: int = 5, base: float = 0.5, cap: float = 30.0) -> None:
        self.max_retries = max_retries
        self.base = base
        self.cap = cap

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        # 2.0**attempt overflows past attempt 1023 (max_retries may be any int): cap it first.
        jitter = random.uniform(0.0, min(self.cap, self.base * (2.0 ** min(attempt, 64))))
        if retry_after is not None:
            # The service said when: wait at least that long, spread a little so a burst of
            # paused requests does not come back in lockstep.
            return retry_after + jitter * 0.1
        return jitter


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; capped; ``None`` if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


_STATUS_ERRORS: Final[Mapping[int, type[APIError]]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    402: InsufficientCreditsError,
    404: NotFoundError,
}


def error_for_status(
    status: int,
    raw: bytes,
    *,
    job_id: str | None = None,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> APIError:
    """Map a non-2xx answer to the error tree, with the service's ``error`` text if it sent one."""
    message = ""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested
        data = None
    if isinstance(data, dict):
        err = data.get("error") or data.get("message")
        if isinstance(err, str):
            message = excerpt(err)
    body = excerpt(raw)
    if not message:
        message = (
            "the service answered with an error"
            if data is not None
            else ("the service's answer is not JSON")
        )
    if status == 429:
        return RateLimitError(
            message,
            status=status,
            body=body,
            job_id=job_id,
            retry_after=retry_after,
            headers=headers,
        )
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(message, status=status, body=body, job_id=job_id, headers=headers)


def _answer_headers(
    headers: Mapping[str, str], secrets: list[tuple[bytes, bytes]]
) -> Mapping[str, str]:
    """An answer's headers for an ``APIError``: a read-only copy, never an echo of the key or
    the receiver's secret."""
    masks = [(k.decode(errors="replace"), m.decode()) for k, m in secrets]

    def clean(value: str) -> str:
        for known, mask in masks:
            value = value.replace(known, mask)
        return value

    return CIMultiDictProxy(CIMultiDict((k, clean(v)) for k, v in headers.items()))


def _redirect_error(
    method: str, path: str, status: int, raw: bytes, location: str | None, job_id: str | None
) -> APIError:
    """A 3xx to an API call: an error naming where it pointed (its origin only: the rest of
    a ``Location`` may carry anything)."""
    where = "no Location"
    if location:
        try:
            target = URL(location)
            where = str(target.origin()) if target.is_absolute() else "the same origin"
        except (ValueError, TypeError):
            where = "an unreadable Location"
    return APIError(
        f"{method} {path}: redirected to {where}; API calls do not follow redirects "
        "(check base_url)",
        status=status,
        body=excerpt(raw),
        job_id=job_id,
    )


class Stream:
    """A response body being streamed; aiohttp's errors become the SDK's."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    @property
    def encoded(self) -> bool:
        """True when the body has a ``Content-Encoding`` (gzip...): aiohttp decompresses it,
        so ``content_length`` is not the number of bytes the chunks add up to."""
        encoding = self._resp.headers.get("Content-Encoding", "").strip().lower()
        return encoding not in ("", "identity")

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise APITimeoutError("download: no data in time") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"download interrupted: {type(exc).__name__}") from exc


class _Ready:
    """An awaitable that is already done: ``await`` on it returns ``None`` at once."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())  # an iterator that ends at once: the await's value is None


# An iterator is all `await` asks of `__await__`; typeshed's Awaitable asks for a generator.
_READY: Final = cast("Awaitable[None]", _Ready())


class _Bound:
    """The bound on requests in flight: ``asyncio.Semaphore``'s contract (first come, first
    served; a waiter cancelled after it was given the slot passes it on), for less.

    Every API call takes it, so its free path is what matters: a free slot is taken without a
    coroutine (``asyncio.Semaphore`` makes three per ``async with`` and, once it has ever had
    waiters, a generator per ``locked()`` check: ~1-3 us of a ~250 us status read).
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> bool:
        """Take a free slot now if there is one (and nobody queues for it); else False."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in line for a slot (after ``take`` said no)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # given the slot, then cancelled: hand it on
            else:
                # Still in line, unless a release popped it (skipping it: it was done) in the
                # iteration the cancellation came in.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def __aenter__(self) -> Awaitable[None]:
        return _READY if self.take() else self.wait()

    def __aexit__(self, *exc: object) -> Awaitable[None]:
        self.release()
        return _READY

    def release(self) -> None:
        """Give the slot back: to the first in line, if anyone waits."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes to the next waiter directly
                return
        self._free += 1


class Transport:
    """Sends the SDK's requests; owns (or borrows) one ``ClientSession``."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: URL,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 64,
        max_downloads: int = 4,
        rate_limit: float | None = None,
    ) -> None:
        self.base_url = base_url
        self._base = str(base_url).rstrip("/")
        # Each call's URL is this one with its path replaced: a yarl ``with_path`` (no parsing),
        # ~4 us less per request than parsing the joined string (issue 20: reads at the
        # transport's limit).
        self._base_path = base_url.raw_path.rstrip("/")
        self._api_key = api_key
        self._borrowed = session
        self._session: aiohttp.ClientSession | None = session
        # API calls answer small JSON: one deadline per attempt (a single timer) is cheaper
        # than a socket-read timeout that aiohttp re-arms per chunk. The clock starts after
        # our in-flight bound admits the request, so queueing never counts against it.
        # Downloads stream large bodies: for them, a stall (no byte for `timeout`) is the limit.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max_in_flight
        self._sem = _Bound(max_in_flight)
        self.max_downloads = max_downloads
        self._downloads = asyncio.Semaphore(max_downloads)
        self._closing = False  # close() began: submits not yet sent are refused
        self._pacer = Pacer(rate_limit)
        # Read-only multidicts, built once: aiohttp copies a plain dict into one per request.
        self._headers: Final = CIMultiDictProxy(
            CIMultiDict(
                {
                    "Authorization": f"Bearer {api_key}",
                    "User-Agent": USER_AGENT,
                    "Accept": "application/json",
                }
            )
        )
        self._post_headers: Final = CIMultiDictProxy(
            CIMultiDict({**self._headers, "Content-Type": "application/json"})
        )
        # Credentials an answer may echo (the key; the receiver's secret via redact()): each is
        # replaced before anything reads the answer, so no error, log or CLI line shows it.
        self._secrets: list[tuple[bytes, bytes]] = []
        if api_key:
            self._secrets.append((api_key.encode(), b"sk_***"))
        self._root = self  # a with_options view counts and closes with the transport it copies
        self.requests_sent = 0  # counters for benchmarks and logs
        self.retries = 0
        self.rate_limited = 0
        self.tel: Telemetry = NOOP  # the client's, set when it opens (read on the root)

    def __repr__(self) -> str:
        return f"<Transport {self._base!r} in_flight<={self.max_in_flight}>"

    def redact(self, value: str) -> None:
        """Also scrub ``value`` (the webhook receiver's secret) from every answer read."""
        raw = value.encode()
        if raw and all(raw != known for known, _ in self._secrets):
            self._secrets.append((raw, b"***"))

    def _scrub(self, raw: bytes) -> bytes:
        for known, mask in self._secrets:
            if known in raw:
                raw = raw.replace(known, mask)
        return raw

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the owned session (inside the running loop) unless one was borrowed."""
        self._closing = False
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_in_flight + self.max_downloads,
                    limit_per_host=0,
                    keepalive_timeout=KEEPALIVE_IDLE,
                ),
                timeout=self._timeout,
                raise_for_status=False,
            )

    async def close(self) -> None:
        """Close the session if we own it; a borrowed session is the lender's to close."""
        session, self._session = self._session, self._borrowed
        if session is not None and session is not self._borrowed:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._root._session
        if session is None or session.closed:
            raise RuntimeError("the client is not open: use `async with LipsyncClient(...)`")
        return session

    # -- pacing ------------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request of this client for ``seconds`` (a 429's ``Retry-After``)."""
        if self._pacer.limited(asyncio.get_running_loop().time(), seconds):
            # One warning per pause, not one per 429 of a storm.
            log.warning("rate limited: pausing all requests for %.2f s", seconds)
            if self._root.tel.on:
                self._root.tel.paused(seconds)

    # -- the two calls -----------------------------------------------------------------------

    # `submit` and `read` are plain functions returning `_call`'s coroutine, not coroutines of
    # their own: a frame in an await chain is crossed again at every resumption of the request
    # (each chunk, each wake-up), which at thousands of reads a second is measurable.

    def submit(
        self, endpoint: str, body: bytes, request: Request
    ) -> Coroutine[Any, Any, tuple[int, bytes]]:
        """POST a submit; retried only while the service surely did not take it."""
        return self._call("POST", endpoint, body, submit=request)

    def read(
        self, path: str, *, job_id: str | None = None, retry: bool = True
    ) -> Coroutine[Any, Any, tuple[int, bytes]]:
        """GET ``path`` under the base URL, retried on connection errors, timeouts, 429, 5xx
        (one attempt with ``retry=False``).

        ``path`` is already escaped. A ``.`` or ``..`` segment in it (an id nobody escaped)
        is escaped here, so no path can climb out of the API's base.
        """
        if "." in path:
            path = "/".join(_DOTS.get(seg, seg) for seg in path.split("/"))
        return self._call("GET", path, None, job_id=job_id, retry=retry)

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        submit: Request | None = None,
        job_id: str | None = None,
        retry: bool = True,
    ) -> tuple[int, bytes]:
        session = self.session
        pacer = self._pacer
        # Escaped by us (see `read`): never re-normalised.
        url = self.base_url.with_path(f"{self._base_path}/{path}", encoded=True)
        where = f"/{path}"  # for messages: the path under the base URL
        headers = self._post_headers if body is not None else self._headers
        is_submit = submit is not None
        attempt = 0
        while True:
            error: Exception
            retry_after: float | None = None
            final: Verdict | None = None
            location: str | None = None
            reason = ""
            bound = self._sem
            if not bound.take():
                await bound.wait()
            try:  # `async with bound`, without its two awaits on the free path
                # Paced inside the in-flight bound: a request admitted before a 429 arrived
                # must still honour the pause it set, not go out with the next wave. (Never
                # paced nor paused, there is nothing to wait for: no coroutine for it.)
                if pacer.interval or pacer.pause_until:
                    await pacer.wait()
                if self._root._closing and is_submit:
                    # close() began while this submit waited its turn: it was never sent.
                    raise ClientClosedError(None)
                if session.closed:  # the client closed while this request waited its turn
                    raise APIConnectionError(f"{method} {where}: the client was closed")
                self._root.requests_sent += 1
                try:
                    # No redirects: a submit's body carries the receiver's secret and the
                    # served files' URLs, which aiohttp would re-send to any origin a 307 names.
                    async with session.request(
                        method,
                        url,
                        data=body,
                        headers=headers,
                        timeout=self._timeout,
                        allow_redirects=False,
                    ) as resp:
                        status = resp.status
                        answer_headers = resp.headers
                        raw = await resp.read()
                        if status == 429 or status >= 500:
                            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        elif 300 <= status < 400:
                            location = resp.headers.get("Location")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    verdict, what = judge_error(exc, submit=is_submit)
                    reason = f"{what} ({type(exc).__name__})"
                    error = _connection_error(f"{method} {where}", what, exc)
                    if verdict is not Verdict.RETRY:
                        # Raised below, outside this `except`: a ClientResponseError must not
                        # ride along as __context__ (its repr carries the request's headers).
                        final = verdict
                else:
                    # Before any use of the body, success included: an answer that echoes our
                    # headers (a proxy, a debug endpoint) must not carry the key into an error.
                    raw = self._scrub(raw)
                    if status != 429:
                        pacer.accepted()
                    if status < 300:
                        return status, raw
                    if status < 400:
                        redirect = _redirect_error(
                            method, where, status, raw, location, job_id
                        )
                        if submit is not None and status == 303:
                            # "See Other" after a POST is how a server says "created, look
                            # there": the job may exist. Other 3xx say the request belongs
                            # elsewhere, and it was not sent there: no job was created.
                            raise SubmissionUncertainError(submit, redirect.message) from redirect
                        raise redirect
                    error = error_for_status(
                        status,
                        raw,
                        job_id=job_id,
                        retry_after=retry_after,
                        headers=_answer_headers(answer_headers, self._secrets),
                    )
                    if status == 429:
                        self._root.rate_limited += 1
                        if self._root.tel.on:
                            self._root.tel.rate_limited()
                        self.pause(
                            retry_after if retry_after is not None else self.retry.delay(attempt)
                        )
                    verdict = judge_status(status, submit=is_submit)
                    if verdict is Verdict.UNCERTAIN:
                        # A 500/502/504 may come after the job was created: not ours to guess.
                        assert submit is not None  # noqa: S101 - only submits are uncertain
                        raise SubmissionUncertainError(submit, f"HTTP {status}") from error
                    if verdict is Verdict.FAIL:
                        raise error
            finally:
                bound.release()
            if final is Verdict.UNCERTAIN:
                assert submit is not None  # noqa: S101 - only submits are uncertain
                uncertain = SubmissionUncertainError(submit, reason)
                uncertain.__cause__ = error.__cause__
                raise uncertain
            if final is Verdict.FAIL:
                raise error
            if not retry or attempt >= self.retry.max_retries:
                raise error
            delay = self.retry.delay(attempt, retry_after)
            attempt += 1
            self._root.retries += 1
            log.debug("retrying %s %s in %.2f s after %s", method, where, delay, error)
            await asyncio.sleep(delay)

    @property
    def closing(self) -> bool:
        """True once :meth:`refuse_submits` was called."""
        return self._closing

    def with_options(
        self, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Transport:
        """A view sharing this transport's session, bounds, pacing, redaction and counters,
        with its own per-attempt ``timeout`` and ``max_retries``."""
        view = copy.copy(self)
        view._root = self._root
        if timeout is not None:
            view._timeout = aiohttp.ClientTimeout(
                total=timeout, sock_connect=self._timeout.sock_connect
            )
            view._stream_timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout.sock_connect, sock_read=timeout
            )
        if max_retries is not None:
            view.retry = RetryPolicy(max_retries, self.retry.base, self.retry.cap)
        return view

    def refuse_submits(self) -> None:
        """From now on, submits not yet sent raise ``ClientClosedError`` (``close()`` began)."""
        self._closing = True

    # -- downloads ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_stream(self, url: str) -> AsyncIterator[Stream]:
        """GET ``url`` for streaming; the key is sent only to the API's own origin.

        Downloads have their own bound (``max_downloads``), apart from the API calls' one: a
        status read never waits behind a slow stream. Only the API's origin is paced.
        """
        target = URL(url)
        same_origin = target.origin() == self.base_url.origin()
        headers = self._headers if same_origin else {"User-Agent": USER_AGENT}
        attempt = 0
        while True:
            retry_after: float | None = None
            async with self._downloads:
                if same_origin:
                    await self._pacer.wait()
                try:
                    resp = await self.session.get(
                        target, headers=headers, timeout=self._stream_timeout
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    verdict, what = judge_error(exc, submit=False)
                    error: Exception = _connection_error(f"download from {target.host}", what, exc)
                    if verdict is Verdict.FAIL:
                        raise error from None
                else:
                    if resp.status < 400:
                        try:
                            yield Stream(resp)
                        finally:
                            resp.release()
                        return
                    # An error page from any host: only its start, whatever its size, and never
                    # an echo of the key.
                    raw = b""
                    try:
                        while len(raw) < _MAX_ERROR_BODY and (
                            chunk := await resp.content.read(_MAX_ERROR_BODY - len(raw))
                        ):
                            raw += chunk
                    except (aiohttp.ClientError, TimeoutError):
                        pass  # the status is the error; its page is a courtesy
                    resp.release()
                    raw = self._scrub(raw)
                    if resp.status == 429 or resp.status >= 500:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    error = error_for_status(resp.status, raw, retry_after=retry_after)
                    if judge_status(resp.status, submit=False) is Verdict.FAIL:
                        raise error
            if attempt >= self.retry.max_retries:
                raise error
            attempt += 1
            await asyncio.sleep(self.retry.delay(attempt - 1, retry_after))


def _connection_error(what: str, reason: str, exc: BaseException) -> APIConnectionError:
    """The SDK's error for a request that got no usable answer, chained to aiohttp's.

    Not chained to a ``ClientResponseError``: its repr carries the request's headers, the API
    key among them.
    """
    cls = APITimeoutError if "timed out" in reason or "in time" in reason else APIConnectionError
    error = cls(f"{what}: {reason} ({type(exc).__name__})")
    if not isinstance(exc, aiohttp.ClientResponseError):
        error.__cause__ = exc
    return error
