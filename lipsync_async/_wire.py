"""The one converter: every rule about what goes on the wire and how answers are read.

Models stay plain (``_models``); this module knows that ``executionTime`` is ``execution_time_ms``,
that a request becomes ``{"webhook": ..., "formState": {...}}``, and how to read an answer that is
not what the protocol promises (an HTML page from a proxy, a missing ``id``): those become
``APIError`` showing the status and an excerpt, never a ``KeyError`` or ``JSONDecodeError``.

Answers that differ from the documentation lose nothing (SPEC section 1): a status in another
case is the known status (``"COMPLETED"`` is completed); an unknown status (``"succeeded"``) is
kept as sent, counts as pending, and is logged once per value (a WARNING, at most
``_MAX_WARNED`` distinct values per process, so a hostile sender cannot flood the log); an
``output`` that is a list or an object is kept in ``JobState.output_raw``, and the one http(s)
URL inside it, if there is exactly one, becomes ``output``; extra keys are ignored; a float
``executionTime`` is truncated to whole milliseconds. Decoding takes UTF-8 with or without a
BOM (``json.loads`` on bytes), whatever the ``Content-Type`` says.
"""

from __future__ import annotations

import json
import logging
import reprlib
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any, Final
from urllib.parse import quote

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import APIError, ValidationError, excerpt
from ._models import (
    JobState,
    JobStatus,
    LipsyncImageMultiRequest,
    LipsyncImageRequest,
    LipsyncVideoRequest,
    Request,
    check_job_id,
    local_media,
)

__all__ = [
    "converter",
    "dump_request",
    "form_state",
    "job_path",
    "loads_object",
    "parse_job_state",
    "parse_submit_answer",
    "read_job_state",
    "state_to_wire",
]

converter: Final = cattrs.Converter()

log = logging.getLogger("lipsync_async")

_MAX_WARNED: Final = 64  # distinct unknown statuses logged; then silence (bounded memory)
_warned_statuses: set[str] = set()

# -- requests -> formState -------------------------------------------------------------------

_NOT_FORM_STATE = ("webhook", "extra")


def _form_state_hook(cls: type[Request]) -> Any:
    base = make_dict_unstructure_fn(
        cls,
        converter,
        _cattrs_omit_if_default=True,
        **{name: override(omit=True) for name in _NOT_FORM_STATE},  # type: ignore[arg-type]
    )

    def unstructure(req: Request) -> dict[str, Any]:
        # None means "not given": omit it, the service applies its defaults.
        out: dict[str, Any] = {k: v for k, v in base(req).items() if v is not None}
        if req.extra:
            out.update(req.extra)  # extra cannot clash with named fields (checked by the model)
        return out

    return unstructure


for _cls in (LipsyncVideoRequest, LipsyncImageRequest, LipsyncImageMultiRequest):
    converter.register_unstructure_hook(_cls, _form_state_hook(_cls))


def form_state(request: Request) -> dict[str, Any]:
    """The request's ``formState`` object (named fields, then ``extra``).

    A local file stays a ``Path`` here (a dry run may show it); only :func:`dump_request`,
    which builds what goes on the wire, insists on URLs.
    """
    out: dict[str, Any] = converter.unstructure(request)
    return out


def _quick_form_state(cls: type[Request]) -> Callable[[Request], str | None]:
    """What :func:`form_state` plus the JSON encoder make of a request of ``cls``, written
    directly (its keys pre-encoded), for the common request: every value given a plain
    ``str`` (a URL, a choice, a prompt) or ``int`` (a seed), no ``extra``. ``None`` for any
    other request, which takes the general path. The same text, byte for byte (a test
    compares the two): fields in the converter's order, ``None`` and defaults omitted, strings
    escaped as the encoder does (``ensure_ascii``). ~1 us where the general path takes ~10.
    """
    # The converter's own key order, read off a probe (cattrs puts required fields first, and
    # that is its business): a request of ``cls`` made without its validators, every field a
    # distinct marker, unstructured once.
    by_name = {f.name: f for f in attrs.fields(cls)}
    probe = object.__new__(cls)
    for name in by_name:
        object.__setattr__(probe, name, _EMPTY_EXTRA if name == "extra" else f"<{name}>")
    fields = [by_name[name] for name in converter.unstructure(probe)]
    keys = [encode_basestring_ascii(f.name) + ":" for f in fields]
    # cattrs omits a value equal to its field's default (omit_if_default); a required field
    # has none, so a sentinel no value equals stands in.
    defaults = [object() if f.default is attrs.NOTHING else f.default for f in fields]
    meta = list(zip(keys, defaults, strict=True))
    values = attrgetter(*(f.name for f in fields))

    def quick(request: Request) -> str | None:
        parts = []
        for (key, default), value in zip(meta, values(request), strict=True):
            if value is None or value == default:
                continue
            kind = type(value)
            if kind is str:
                parts.append(key + encode_basestring_ascii(value))
            elif kind is int:
                parts.append(key + int.__repr__(value))
            else:  # a local file, a float, an enum: the general path (and its checks)
                return None
        return ",".join(parts)

    return quick


_EMPTY_EXTRA: Final[Any] = {}

_QUICK: Final = {
    cls: _quick_form_state(cls)
    for cls in (LipsyncVideoRequest, LipsyncImageRequest, LipsyncImageMultiRequest)
}


def dump_request(request: Request, webhook: str | None = None) -> bytes:
    """The submit body, serialised: ``{"webhook"?: ..., "formState": {...}}``.

    Media must be URLs by now: the client swaps local files for their served URLs before
    this point, so a path here is a caller's mistake, not something to put on the wire.
    """
    quick = _QUICK.get(type(request))
    if quick is not None and not request.extra:
        inner = quick(request)  # media all strings here: no local file to refuse
        if inner is not None:
            hook = request.webhook or webhook
            if hook:
                head = f'{{"webhook":{encode_basestring_ascii(hook)},'
                return f'{head}"formState":{{{inner}}}}}'.encode()
            return f'{{"formState":{{{inner}}}}}'.encode()
    return _dump_request(request, webhook)


def _dump_request(request: Request, webhook: str | None) -> bytes:
    """``dump_request`` through the converter and the JSON encoder: any request."""
    for field in local_media(request):
        raise ValidationError(
            field, "is a local file; LipsyncClient.submit serves it first (it needs a receiver)"
        )
    body: dict[str, Any] = {}
    hook = request.webhook or webhook
    if hook:
        body["webhook"] = hook
    body["formState"] = form_state(request)
    return _ENCODE(body).encode()


# One encoder for every submit: `json.dumps` with any option builds a new JSONEncoder per call.
_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


# -- paths -----------------------------------------------------------------------------------

_SAFE_ID: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def job_path(job_id: str) -> str:
    """``jobs/{id}``, the id one path segment whatever it holds (ids are UUIDs).

    ``quote`` leaves ``.`` alone (it is unreserved), so the ids ``.`` and ``..`` would be dot
    segments and ``jobs/..`` would read ``/api/v1/``: every dot of an id that is only dots is
    escaped as ``%2E``, which the transport sends as is (it never re-normalises an API path).
    """
    if job_id.isascii() and job_id.replace("-", "").isalnum():  # a UUID: nothing to escape
        return "jobs/" + job_id
    if not job_id.strip("."):
        return "jobs/" + "%2E" * len(job_id)
    if _SAFE_ID.issuperset(job_id):
        return "jobs/" + job_id
    return "jobs/" + quote(job_id, safe="")


# -- answers -> models -----------------------------------------------------------------------


def loads_object(raw: bytes, status: int, *, job_id: str | None = None) -> dict[str, Any]:
    """Decode a JSON object answer; anything else is an ``APIError`` showing what came back."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested
        raise APIError(
            "the service's answer is not JSON", status=status, body=excerpt(raw), job_id=job_id
        ) from None
    if not isinstance(data, dict):
        raise APIError(
            "the service's answer is not a JSON object",
            status=status,
            body=excerpt(raw),
            job_id=job_id,
        )
    return data


def _opt_int(value: Any) -> int | None:
    # Tolerant: the page says milliseconds as an integer; accept a float, drop anything else.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    return None


def _urls_in(value: Any, found: list[str], depth: int = 0) -> None:
    """Collect the http(s) URL strings in a JSON value (bounded: depth 8, 3 found is plenty)."""
    if depth > 8 or len(found) > 2:
        return
    if isinstance(value, str):
        if value[:8].lower().startswith(("http://", "https://")):
            found.append(value)
    elif isinstance(value, list):
        for item in value[:64]:
            _urls_in(item, found, depth + 1)
    elif isinstance(value, dict):
        for item in list(value.values())[:64]:
            _urls_in(item, found, depth + 1)


def _output(value: Any) -> tuple[str | None, Any]:
    """``output`` and ``output_raw`` from the wire value (see ``JobState``)."""
    if value is None or isinstance(value, str):
        return value, None
    found: list[str] = []
    _urls_in(value, found)
    distinct = set(found)
    return (found[0] if len(distinct) == 1 else None), value


def _status(text: str) -> JobStatus:
    status = JobStatus(text)  # case-insensitive for the known ones
    if (
        not status.is_final
        and status is not _PROCESSING
        and text not in _warned_statuses
        and len(_warned_statuses) < _MAX_WARNED
    ):
        _warned_statuses.add(text)
        log.warning(
            "the service sent an unknown job status %r: kept as is, the job stays pending "
            "(logged once per value)",
            text[:100],
        )
    return status


_PROCESSING: Final = JobStatus.PROCESSING  # a global: a lookup on the enum class costs more


def _state_fields(
    data: Any, known_id: str | None = None
) -> tuple[str, JobStatus, tuple[Any, ...]]:
    """A job state's id, status and the rest of its fields in ``JobState``'s order (``model``,
    ``output``, ``error``, ``execution_time_ms``, ``timings``, ``output_raw``): every rule of
    reading one, without building the ``JobState`` (a status read that changes nothing never
    needs it). ``known_id``: an id already checked (the job's own), not checked again."""
    if not isinstance(data, dict):
        raise TypeError("a job state must be a JSON object")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("a job state needs a non-empty string 'id'")
    if job_id != known_id:
        check_job_id(job_id, "id")  # a ValueError too: text UTF-8 can carry, of a sane length
    text = data.get("status")
    if text == "processing":  # what nearly every read says: no enum lookup
        status = _PROCESSING
    elif not isinstance(text, str) or not text:
        raise ValueError("a job state needs a string 'status'")
    else:
        status = _status(text)
    # The common values (a string or None) are taken inline: a read calls this thousands of
    # times a second, and each helper call costs more than the check it makes.
    error = data.get("error")
    if not isinstance(error, str):
        error = "" if error is None else str(error)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        model = None
    output = data.get("output")
    output_raw = None
    if output is not None and not isinstance(output, str):
        output, output_raw = _output(output)
    execution_time_ms = data.get("executionTime")
    if execution_time_ms is not None:
        execution_time_ms = _opt_int(execution_time_ms)
    return (
        job_id,
        status,
        (model, output, error, execution_time_ms, data.get("timings"), output_raw),
    )


def _state(job_id: str, status: JobStatus, rest: tuple[Any, ...]) -> JobState:
    """The ``JobState`` of ``_state_fields``'s answer."""
    model, output, error, execution_time_ms, timings, output_raw = rest
    return JobState(
        id=job_id,
        status=status,
        model=model,
        output=output,
        error=error,
        execution_time_ms=execution_time_ms,
        timings=timings,
        output_raw=output_raw,
    )


def _structure_state(data: Any, _: type[JobState]) -> JobState:
    return _state(*_state_fields(data))


def _unstructure_state(state: JobState) -> dict[str, Any]:
    return {
        "id": state.id,
        "model": state.model,
        "status": state.status.value,
        # The value as the service sent it: a list or object round-trips through stores.
        "output": state.output if state.output_raw is None else state.output_raw,
        "error": state.error,
        "executionTime": state.execution_time_ms,
        "timings": state.timings,
    }


converter.register_structure_hook(JobState, _structure_state)
converter.register_unstructure_hook(JobState, _unstructure_state)


def parse_job_state(data: Any, *, status: int = 200, raw: bytes | None = None) -> JobState:
    """Structure a job state; a payload that is not one becomes an ``APIError``."""
    try:
        return converter.structure(data, JobState)
    except (TypeError, ValueError) as exc:
        # reprlib: bounded in depth and length, where repr() of a payload nested near the
        # recursion limit would raise RecursionError out of the error tree.
        body = excerpt(raw) if raw is not None else excerpt(reprlib.repr(data))
        raise APIError(f"malformed job state: {exc}", status=status, body=body) from None


def read_job_state(
    raw: bytes, status: int, job_id: str
) -> tuple[JobStatus, tuple[Any, ...]] | JobState:
    """A status read's answer for ``job_id``: the ``JobState`` if the job is final, else its
    status and the other fields (see ``_state_fields``), which is all a pending job keeps.

    The scheduler's path (``Tracker``): same rules and errors as :func:`parse_job_state` on
    :func:`loads_object`, plus an ``APIError`` when the answer is about another job; a pending
    answer allocates no ``JobState`` (issue 20: a read that changes nothing keeps nothing, and
    reads cost the client <= 1.1x a raw GET).
    """
    data = loads_object(raw, status, job_id=job_id)
    try:
        got, job_status, rest = _state_fields(data, job_id)
    except (TypeError, ValueError) as exc:
        raise APIError(f"malformed job state: {exc}", status=status, body=excerpt(raw)) from None
    if got != job_id:
        raise APIError(
            f"asked for job {job_id}, the answer is about {got}", status=status, job_id=job_id
        )
    if job_status is not _PROCESSING and job_status.is_final:  # nearly every read: processing
        return _state(got, job_status, rest)
    return job_status, rest


def state_to_wire(state: JobState) -> dict[str, Any]:
    """The 7-key wire form of a state (for stores and re-delivery)."""
    out: dict[str, Any] = converter.unstructure(state)
    return out


def parse_submit_answer(raw: bytes, status: int) -> str:
    """The job id from a submit answer ``{"id": ..., "status": "processing"}``."""
    data = loads_object(raw, status)
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise APIError("the submit answer has no job 'id'", status=status, body=excerpt(raw))
    try:
        check_job_id(job_id, "id")
    except ValidationError as exc:
        raise APIError(f"the submit answer's job {exc}", status=status, body=excerpt(raw)) from None
    return job_id
