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
import contextlib
import email.utils
import json
import logging
import platform
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    excerpt,
)
from ._models import Request
from ._pacing import Pacer
from ._version import __version__

__all__ = ["RetryPolicy", "Stream", "Transport", "error_for_status", "parse_retry_after"]

log = logging.getLogger("lipsync_async")

USER_AGENT: Final = (
    f"lipsync-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)
_MAX_RETRY_AFTER: Final = 300.0  # a hostile or broken Retry-After must not park us for a day
_MAX_ERROR_BODY: Final = 64 * 1024  # what a download's error answer may put in memory


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


def _answer_headers(headers: Mapping[str, str], redact: bytes) -> Mapping[str, str]:
    """An answer's headers for an ``APIError``: a read-only copy, never an echo of the key."""
    key = redact.decode(errors="replace")
    return CIMultiDictProxy(
        CIMultiDict((k, v.replace(key, "sk_***") if key else v) for k, v in headers.items())
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

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise APITimeoutError("download: no data in time") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"download interrupted: {type(exc).__name__}") from exc


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
        rate_limit: float | None = None,
    ) -> None:
        self.base_url = base_url
        self._base = str(base_url).rstrip("/")
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
        self._sem = asyncio.Semaphore(max_in_flight)
        self._pacer = Pacer(rate_limit)
        self._headers: Final = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        self._post_headers: Final = {**self._headers, "Content-Type": "application/json"}
        self._redact = api_key.encode() if api_key else b""
        self.requests_sent = 0  # counters for benchmarks and logs
        self.retries = 0
        self.rate_limited = 0

    def __repr__(self) -> str:
        return f"<Transport {self._base!r} in_flight<={self.max_in_flight}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the owned session (inside the running loop) unless one was borrowed."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=0),
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
        if self._session is None or self._session.closed:
            raise RuntimeError("the client is not open: use `async with LipsyncClient(...)`")
        return self._session

    # -- pacing ------------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request of this client for ``seconds`` (a 429's ``Retry-After``)."""
        if self._pacer.limited(asyncio.get_running_loop().time(), seconds):
            # One warning per pause, not one per 429 of a storm.
            log.warning("rate limited: pausing all requests for %.2f s", seconds)

    # -- the two calls -----------------------------------------------------------------------

    async def submit(self, endpoint: str, body: bytes, request: Request) -> tuple[int, bytes]:
        """POST a submit; retried only while the service surely did not take it."""
        return await self._call("POST", f"{self._base}/{endpoint}", body, submit=request)

    async def read(self, path: str, *, job_id: str | None = None) -> tuple[int, bytes]:
        """GET ``path`` under the base URL, retried on connection errors, timeouts, 429, 5xx."""
        return await self._call("GET", f"{self._base}/{path}", None, job_id=job_id)

    async def _call(
        self,
        method: str,
        url: str,
        body: bytes | None,
        *,
        submit: Request | None = None,
        job_id: str | None = None,
    ) -> tuple[int, bytes]:
        session = self.session
        headers = self._post_headers if body is not None else self._headers
        attempt = 0
        while True:
            error: Exception
            retry_after: float | None = None
            unusable: str | None = None
            async with self._sem:
                # Paced inside the in-flight bound: a request admitted before a 429 arrived
                # must still honour the pause it set, not go out with the next wave.
                await self._pacer.wait()
                if session.closed:  # the client closed while this request waited its turn
                    raise APIConnectionError(f"{method} {self._path(url)}: the client was closed")
                self.requests_sent += 1
                try:
                    async with session.request(
                        method, url, data=body, headers=headers, timeout=self._timeout
                    ) as resp:
                        status = resp.status
                        answer_headers = resp.headers
                        raw = await resp.read()
                        if status == 429 or status >= 500:
                            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                except aiohttp.ClientConnectorError as exc:
                    # No connection was made: the request never left us, safe to send again.
                    error = APIConnectionError(
                        f"{method} {self._path(url)}: cannot connect ({exc.os_error})"
                    )
                    error.__cause__ = exc
                except aiohttp.ConnectionTimeoutError as exc:
                    error = APITimeoutError(f"{method} {self._path(url)}: connect timed out")
                    error.__cause__ = exc
                except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                    if submit is not None:
                        raise SubmissionUncertainError(submit, "no answer in time") from exc
                    error = APITimeoutError(f"{method} {self._path(url)}: no answer in time")
                    error.__cause__ = exc
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                    if submit is not None:
                        raise SubmissionUncertainError(
                            submit, f"connection lost: {type(exc).__name__}"
                        ) from exc
                    error = APIConnectionError(
                        f"{method} {self._path(url)}: connection lost ({type(exc).__name__})"
                    )
                    error.__cause__ = exc
                except aiohttp.ClientError as exc:
                    # A redirect loop, a redirect off http(s) (TooManyRedirects,
                    # NonHttpUrlRedirectClientError...): the service answered, not with an
                    # answer, and asking again will not change that. Raised below, outside this
                    # block and unchained: a ClientResponseError's repr carries the request's
                    # headers, the API key among them.
                    unusable = f"{method} {self._path(url)}: {type(exc).__name__}"
                else:
                    # Before any use of the body, success included: an answer that echoes our
                    # headers (a proxy, a debug endpoint) must not carry the key into an error.
                    if self._redact and self._redact in raw:
                        raw = raw.replace(self._redact, b"sk_***")
                    if status != 429:
                        self._pacer.accepted(asyncio.get_running_loop().time())
                    if status < 400:
                        return status, raw
                    error = error_for_status(
                        status,
                        raw,
                        job_id=job_id,
                        retry_after=retry_after,
                        headers=_answer_headers(answer_headers, self._redact),
                    )
                    if status == 429:
                        self.rate_limited += 1
                        self.pause(
                            retry_after if retry_after is not None else self.retry.delay(attempt)
                        )
                    elif status < 500 or (submit is not None and status != 503):
                        if submit is not None and status >= 500:
                            # A 500/502/504 may come after the job was created: not ours to guess.
                            raise SubmissionUncertainError(submit, f"HTTP {status}") from error
                        raise error
            if unusable is not None:
                if submit is not None:
                    raise SubmissionUncertainError(submit, unusable)
                raise APIConnectionError(unusable)
            if attempt >= self.retry.max_retries:
                raise error
            delay = self.retry.delay(attempt, retry_after)
            attempt += 1
            self.retries += 1
            log.debug("retrying %s %s in %.2f s after %s", method, self._path(url), delay, error)
            await asyncio.sleep(delay)

    def _path(self, url: str) -> str:
        return url[len(self._base) :] if url.startswith(self._base) else URL(url).path

    # -- downloads ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_stream(self, url: str) -> AsyncIterator[Stream]:
        """GET ``url`` for streaming; the key is sent only to the API's own origin."""
        target = URL(url)
        same_origin = target.origin() == self.base_url.origin()
        headers = self._headers if same_origin else {"User-Agent": USER_AGENT}
        attempt = 0
        while True:
            retry_after: float | None = None
            async with self._sem:
                await self._pacer.wait()
                try:
                    resp = await self.session.get(
                        target, headers=headers, timeout=self._stream_timeout
                    )
                except aiohttp.ClientConnectorError as exc:
                    error: Exception = APIConnectionError(
                        f"download: cannot connect to {target.host}"
                    )
                    error.__cause__ = exc
                except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                    error = APITimeoutError(f"download: no answer from {target.host} in time")
                    error.__cause__ = exc
                except aiohttp.ClientError as exc:
                    error = APIConnectionError(f"download: {type(exc).__name__} from {target.host}")
                    if not isinstance(exc, aiohttp.ClientResponseError):
                        error.__cause__ = exc  # (that one's repr carries the request's headers)
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
                    if self._redact and self._redact in raw:
                        raw = raw.replace(self._redact, b"sk_***")
                    if resp.status == 429 or resp.status >= 500:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    error = error_for_status(resp.status, raw, retry_after=retry_after)
                    if resp.status != 429 and resp.status < 500:
                        raise error
            if attempt >= self.retry.max_retries:
                raise error
            attempt += 1
            await asyncio.sleep(self.retry.delay(attempt - 1, retry_after))
