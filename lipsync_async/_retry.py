"""The one table that decides what is retried: API calls and downloads read the same rules.

Three verdicts. ``RETRY``: the request surely did not reach the service, or it is a read, which
is safe to send again. ``UNCERTAIN``: a submit that may have reached the service (it costs
credits and the API has no idempotency key): never sent again, the caller gets
``SubmissionUncertainError``. ``FAIL``: asking again will not change the answer.

=========================================  =========  ================
what happened                              a read     a submit
=========================================  =========  ================
no connection made (refused, DNS, TLS)     RETRY      RETRY
connect timed out                          RETRY      RETRY
answer timed out                           RETRY      UNCERTAIN
connection lost after sending              RETRY      UNCERTAIN
unusable answer (redirect loop, ...)       FAIL       UNCERTAIN
429, 503                                   RETRY      RETRY (not taken)
other 5xx                                  RETRY      UNCERTAIN
other 4xx                                  FAIL       FAIL
=========================================  =========  ================
"""

from __future__ import annotations

import enum

import aiohttp

__all__ = ["Verdict", "judge_error", "judge_status"]


class Verdict(enum.Enum):
    RETRY = "retry"
    UNCERTAIN = "uncertain"
    FAIL = "fail"


# Ordered: the first class an exception is an instance of decides (subclasses first).
_ERRORS: tuple[tuple[type[BaseException], Verdict, Verdict, str], ...] = (
    # (exception, verdict for a read, verdict for a submit, what to call it)
    (aiohttp.ConnectionTimeoutError, Verdict.RETRY, Verdict.RETRY, "connect timed out"),
    (aiohttp.ClientConnectorError, Verdict.RETRY, Verdict.RETRY, "cannot connect"),
    (aiohttp.ServerTimeoutError, Verdict.RETRY, Verdict.UNCERTAIN, "no answer in time"),
    (TimeoutError, Verdict.RETRY, Verdict.UNCERTAIN, "no answer in time"),
    (aiohttp.ClientConnectionError, Verdict.RETRY, Verdict.UNCERTAIN, "connection lost"),
    (aiohttp.ClientPayloadError, Verdict.RETRY, Verdict.UNCERTAIN, "connection lost"),
)


def judge_error(exc: BaseException, *, submit: bool) -> tuple[Verdict, str]:
    """The verdict on an exception raised while sending or reading, and a short description."""
    for cls, read, sent, what in _ERRORS:
        if isinstance(exc, cls):
            return (sent if submit else read), what
    # Anything else aiohttp raises (a redirect loop, a redirect off http(s)...): the service
    # answered, not with an answer, and asking again will not change that.
    return (Verdict.UNCERTAIN if submit else Verdict.FAIL), "unusable answer"


def judge_status(status: int, *, submit: bool) -> Verdict:
    """The verdict on an error status (>= 400)."""
    if status == 429 or status == 503:
        return Verdict.RETRY
    if status >= 500:
        return Verdict.UNCERTAIN if submit else Verdict.RETRY
    return Verdict.FAIL
