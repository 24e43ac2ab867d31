"""The one error tree of lipsync_async.

Every exception the SDK raises on purpose derives from :class:`LipsyncError`::

    LipsyncError
    ├── ValidationError            bad input, caught before any request (also a ValueError)
    ├── APIError                   the service answered, and not with what we asked for
    │   ├── BadRequestError        400, 422
    │   ├── AuthenticationError    401, 403
    │   ├── InsufficientCreditsError  402
    │   ├── NotFoundError          404
    │   ├── RateLimitError         429 (.retry_after)
    │   └── ServerError            5xx
    ├── APIConnectionError         no usable answer: refused, reset, DNS
    │   └── APITimeoutError        no answer in time
    ├── SubmissionUncertainError   a submit may have created a job; never retried blindly
    ├── JobFailed                  the job ran and failed (.state)
    ├── JobTimeoutError            a wait's deadline passed; the job goes on (also a TimeoutError)
    └── ClientClosedError          the client closed while the job was awaited; attach again

The split follows replicate-python: the service's failure (``APIError``) is apart from the job's
failure (``JobFailed``). Errors carry the job id and HTTP status where known, never the API key:
messages are built from the service's answer and the request path only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import JobState, Request

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "InsufficientCreditsError",
    "JobFailed",
    "JobTimeoutError",
    "LipsyncError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "SubmissionUncertainError",
    "ValidationError",
    "excerpt",
]

_EXCERPT = 200


def excerpt(body: str | bytes | None, limit: int = _EXCERPT) -> str:
    """A short, printable excerpt of what the service sent back, for error messages."""
    if body is None:
        return ""
    if isinstance(body, bytes | bytearray):
        body = bytes(body[: limit * 4]).decode("utf-8", "replace")
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_REQUEST_ID_HEADERS = ("x-request-id", "request-id")


def _request_id(headers: Mapping[str, str]) -> str | None:
    # By lowered name: a plain dict is case-sensitive, aiohttp's CIMultiDictProxy is not.
    found = {k.lower(): v for k, v in headers.items() if k.lower() in _REQUEST_ID_HEADERS}
    for name in _REQUEST_ID_HEADERS:
        if found.get(name):
            return excerpt(found[name], 100)
    return None


class LipsyncError(Exception):
    """Base of every error lipsync_async raises on purpose."""


class ValidationError(LipsyncError, ValueError):
    """Bad input, caught before any request; ``.field`` names the offending argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class APIError(LipsyncError):
    """The service answered with an error status or with something that is not its protocol.

    ``.status`` is the HTTP status, ``.message`` the service's ``error`` text (or a description
    of what was wrong with the answer), ``.body`` a short excerpt of the raw answer.
    ``.headers`` are the answer's headers (case-insensitive lookups; empty when the error was
    built without an answer) and ``.request_id`` the service's ``X-Request-Id`` when it sent
    one: quote it when you ask the service's support about a failed call.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.body = body
        self.job_id = job_id
        self.headers: Mapping[str, str] = headers if headers is not None else _NO_HEADERS
        self.request_id: str | None = _request_id(self.headers)
        text = f"HTTP {status}: {message}"
        if job_id:
            text += f" (job {job_id})"
        if body and body != message:
            text += f" [answer: {body}]"
        super().__init__(text)


class BadRequestError(APIError):
    """400 or 422: the service refused the input."""


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, wrong, or may not see this job."""


class InsufficientCreditsError(APIError):
    """402: the key has run out of credits. Never retried."""


class NotFoundError(APIError):
    """404: no such job for this key."""


class RateLimitError(APIError):
    """429: too many requests; ``.retry_after`` is the service's wait in seconds, if it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        body: str = "",
        job_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body, job_id=job_id, headers=headers)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the service (or a proxy in front of it) failed."""


class APIConnectionError(LipsyncError):
    """No usable answer: the connection was refused, reset or dropped."""


class APITimeoutError(APIConnectionError):
    """The service did not answer in time."""


class SubmissionUncertainError(LipsyncError):
    """A submit reached the service, or may have, and its answer was lost.

    The API has no idempotency key, so sending it again could create (and bill) a second job.
    ``.request`` is what was sent, for the caller to reconcile (for example by looking for the
    job's webhook delivery, or by deciding to submit again knowingly). ``__cause__`` is the
    underlying connection error, timeout or 5xx.
    """

    def __init__(self, request: Request, reason: str) -> None:
        super().__init__(
            f"{request.endpoint}: the submit may have created a job but its answer was lost "
            f"({reason}); it was not sent again"
        )
        self.request = request
        self.reason = reason


class JobFailed(LipsyncError):
    """The job ran and the service reported it failed; ``.state`` holds its last state."""

    def __init__(self, state: JobState) -> None:
        super().__init__(f"job {state.id} failed: {state.error or 'no error message'}")
        self.state = state

    @property
    def job_id(self) -> str:
        return self.state.id


class JobTimeoutError(LipsyncError, TimeoutError):
    """A wait's deadline passed before the job finished. The job itself goes on."""

    def __init__(self, job_id: str | None, timeout: float | None) -> None:
        what = f"job {job_id}" if job_id else "jobs"
        super().__init__(f"{what} not finished after {timeout} s (still tracked)")
        self.job_id = job_id
        self.timeout = timeout


class ClientClosedError(LipsyncError):
    """The client closed while the job was awaited; the job goes on at the service.

    Attach again with ``client.job(id)`` from an open client (``.job_id``). Also raised, with
    ``.job_id`` ``None``, by a submit that ``close()`` stopped before it was sent: nothing was
    submitted, so sending it again later is safe.
    """

    def __init__(self, job_id: str | None) -> None:
        super().__init__(
            f"the client was closed before job {job_id} finished; "
            "attach again with client.job(id)"
            if job_id is not None
            else "the client was closed before this submit was sent: nothing was submitted"
        )
        self.job_id = job_id


# Tracebacks and reprs name the public path users import from (``lipsync_async.NotFoundError``),
# not this private module, like httpx and stamina do.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "lipsync_async"
del _name, _obj
