"""The public face: exported names, version, error tree, retry arithmetic."""

from __future__ import annotations

import email.utils
import time

import pytest

import lipsync_async
from lipsync_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    JobFailed,
    JobTimeoutError,
    LipsyncError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    ValidationError,
)
from lipsync_async._http import RetryPolicy, error_for_status, parse_retry_after

SPEC_NAMES = {
    "LipsyncClient", "WebhookReceiver", "Job", "JobState", "JobStatus", "LipsyncError",
    "APIError", "BadRequestError", "AuthenticationError", "InsufficientCreditsError",
    "NotFoundError", "RateLimitError", "ServerError", "APIConnectionError", "APITimeoutError",
    "SubmissionUncertainError", "JobFailed", "JobTimeoutError", "ValidationError",
    "Resolution", "Order",
}  # fmt: skip


def test_all_is_sorted_and_covers_spec() -> None:
    """__all__ is sorted, every name resolves, and every SPEC section 2 name is exported."""
    names = lipsync_async.__all__
    assert names == sorted(names)
    assert set(names) >= SPEC_NAMES
    for name in names:
        assert getattr(lipsync_async, name) is not None


def test_version_is_lazy_string() -> None:
    """__version__ resolves lazily to a version string; unknown attributes still fail."""
    assert lipsync_async.__version__.count(".") >= 2
    with pytest.raises(AttributeError):
        _ = lipsync_async.no_such_name  # type: ignore[attr-defined]  # mypy sees it too


def test_error_tree() -> None:
    """Every error derives from LipsyncError, as drawn in _errors' docstring."""
    for cls in (BadRequestError, AuthenticationError, InsufficientCreditsError, NotFoundError,
                RateLimitError, ServerError):  # fmt: skip
        assert issubclass(cls, APIError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(JobTimeoutError, TimeoutError)
    for base in (
        APIError,
        APIConnectionError,
        SubmissionUncertainError,
        JobFailed,
        JobTimeoutError,
    ):
        assert issubclass(base, LipsyncError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (422, BadRequestError), (401, AuthenticationError),
     (403, AuthenticationError), (402, InsufficientCreditsError), (404, NotFoundError),
     (429, RateLimitError), (500, ServerError), (503, ServerError), (418, APIError)],
)  # fmt: skip
def test_status_mapping(status: int, cls: type[APIError]) -> None:
    """Each HTTP status maps to its error class, keeping the service's error text."""
    err = error_for_status(status, b'{"error": "said so"}', job_id="j1")
    assert type(err) is cls
    assert (err.status, err.message, err.job_id) == (status, "said so", "j1")


def test_retry_after_forms() -> None:
    """Retry-After parses seconds and HTTP dates, caps absurd values, ignores garbage."""
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("99999") == 300.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = parse_retry_after(future)
    assert delay is not None and 25 <= delay <= 31


def test_full_jitter_bounds() -> None:
    """Backoff is uniform in [0, min(cap, base*2**n)]; Retry-After is a floor."""
    policy = RetryPolicy(max_retries=3, base=0.5, cap=2.0)
    for attempt in range(6):
        for _ in range(50):
            assert 0 <= policy.delay(attempt) <= min(2.0, 0.5 * 2**attempt)
    assert all(policy.delay(0, retry_after=1.0) >= 1.0 for _ in range(50))
