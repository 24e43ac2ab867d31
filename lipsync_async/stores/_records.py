"""Serialising what stores keep: records and states as compact JSON, requests rebuilt on resume.

Stores hold JSON text (a SQLite column, a Redis hash field), so a record written by one version
of the SDK reads back in another, and a human can inspect it with ``redis-cli`` or ``sqlite3``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import APIError, ValidationError
from .._models import ENDPOINTS, JobState, Request, check_job_id
from .._telemetry import check_traceparent
from .._wire import form_state, parse_job_state, state_to_wire
from ._base import PendingRecord

__all__ = [
    "Unreadable",
    "dump_record",
    "dump_state",
    "load_record",
    "load_state",
    "record_for",
    "request_from_record",
]


log = logging.getLogger("lipsync_async.stores")

_UNREADABLE_MAX = 10_000


class Unreadable:
    """The records a store skipped because they cannot be read, each reported once.

    A record anyone with write access to the store can corrupt (an id holding a lone
    surrogate, JSON that is not a record) must not fail every ``pending()`` of every worker,
    nor be tracked and fail its status read forever: it is skipped, with one WARNING per
    record per store object (bounded: past 10,000 distinct ones, the oldest are forgotten).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._seen: dict[str, None] = {}

    def report(self, key: object) -> None:
        shown = repr(key)[:120]  # a peer's bytes: escaped, and short
        if shown in self._seen:
            return
        self._seen[shown] = None
        if len(self._seen) > _UNREADABLE_MAX:
            del self._seen[next(iter(self._seen))]
        log.warning("%s: skipped a pending record that cannot be read: %s", self.where, shown)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def record_for(job_id: str, request: Request, trace: str | None = None) -> PendingRecord:
    """The record of a submit: its formState and the caller's own webhook, never ours."""
    wire: dict[str, Any] = {"formState": form_state(request)}
    if request.webhook:
        wire["webhook"] = request.webhook
    return PendingRecord(
        id=job_id, endpoint=request.endpoint, submitted_at=time.time(), request=wire, trace=trace
    )


def dump_record(record: PendingRecord) -> str:
    data = {
        "id": record.id,
        "endpoint": record.endpoint,
        "submitted_at": record.submitted_at,
        "request": dict(record.request),
    }
    if record.trace is not None:  # absent otherwise: records without telemetry are unchanged
        data["trace"] = record.trace
    return _dumps(data)


def load_record(text: str | bytes) -> PendingRecord | None:
    """Read a record back; ``None`` (and the caller skips it) if it is not one.

    The id must be one the SDK could have written (``check_job_id``: text UTF-8 can carry,
    and printable): a lone surrogate would fail later, in a Redis key or a status read's URL,
    far from here, and a newline would reach log lines as it is.
    """
    try:
        data = json.loads(text)
        request = data.get("request")
        job_id = check_job_id(data["id"], "id")
        if not job_id.isprintable():
            return None
        return PendingRecord(
            id=job_id,
            endpoint=str(data["endpoint"]),
            submitted_at=float(data["submitted_at"]),
            request=request if isinstance(request, dict) else {},
            trace=check_traceparent(data.get("trace")),  # a store peer's text: checked
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def dump_state(state: JobState) -> str:
    return _dumps(state_to_wire(state))


def load_state(text: str | bytes) -> JobState | None:
    """Read a state back; ``None`` if it is not one."""
    try:
        return parse_job_state(json.loads(text))
    except (ValueError, APIError, RecursionError):
        return None


def request_from_record(record: PendingRecord) -> Request | None:
    """Rebuild the request model of a resumed job (for ``Job.request``), if it still validates.

    formState keys are the models' field names; the rest went there through ``extra``.
    """
    cls = ENDPOINTS.get(record.endpoint)
    fields = record.request.get("formState")
    if cls is None or not isinstance(fields, Mapping):
        return None
    names = {a.name for a in attrs.fields(cls)} - {"extra", "webhook"}
    kwargs: dict[str, Any] = {k: v for k, v in fields.items() if k in names}
    extra = {k: v for k, v in fields.items() if k not in names}
    webhook = record.request.get("webhook")
    try:
        request: Request = cls(
            **kwargs, extra=extra or None, webhook=webhook if isinstance(webhook, str) else None
        )
    except (ValidationError, TypeError):
        return None
    return request
