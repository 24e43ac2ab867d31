"""Serialising what stores keep: records and states as compact JSON, requests rebuilt on resume.

Stores hold JSON text (a SQLite column, a Redis hash field), so a record written by one version
of the SDK reads back in another, and a human can inspect it with ``redis-cli`` or ``sqlite3``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import APIError, ValidationError
from .._models import ENDPOINTS, JobState, Request
from .._wire import form_state, parse_job_state, state_to_wire
from ._base import PendingRecord

__all__ = [
    "dump_record",
    "dump_state",
    "load_record",
    "load_state",
    "record_for",
    "request_from_record",
]


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def record_for(job_id: str, request: Request) -> PendingRecord:
    """The record of a submit: its formState and the caller's own webhook, never ours."""
    wire: dict[str, Any] = {"formState": form_state(request)}
    if request.webhook:
        wire["webhook"] = request.webhook
    return PendingRecord(
        id=job_id, endpoint=request.endpoint, submitted_at=time.time(), request=wire
    )


def dump_record(record: PendingRecord) -> str:
    return _dumps(
        {
            "id": record.id,
            "endpoint": record.endpoint,
            "submitted_at": record.submitted_at,
            "request": dict(record.request),
        }
    )


def load_record(text: str | bytes) -> PendingRecord | None:
    """Read a record back; ``None`` (and the caller skips it) if it is not one."""
    try:
        data = json.loads(text)
        request = data.get("request")
        return PendingRecord(
            id=str(data["id"]),
            endpoint=str(data["endpoint"]),
            submitted_at=float(data["submitted_at"]),
            request=request if isinstance(request, dict) else {},
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def dump_state(state: JobState) -> str:
    return _dumps(state_to_wire(state))


def load_state(text: str | bytes) -> JobState | None:
    """Read a state back; ``None`` if it is not one."""
    try:
        return parse_job_state(json.loads(text))
    except (ValueError, APIError):
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
