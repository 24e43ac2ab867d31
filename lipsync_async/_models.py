"""Frozen models: the three submit requests, ``JobState`` and ``JobStatus``.

Pure data and validation, no network I/O: a bad request fails here, at construction, before any
socket opens. The wire rules (formState layout, camelCase) live in ``_wire``.

The one exception to "no I/O": a media field given as a local file (``pathlib.Path``) is
``stat``-ed here, so a missing file fails at construction like a malformed URL does. A stat is a
cheap syscall; the file's bytes are never read here (the receiver streams them, see ``_files``).
"""

from __future__ import annotations

import enum
import math
import os
import stat
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

import attrs
from yarl import URL

from ._choices import ORDERS as ORDERS
from ._choices import RESOLUTIONS as RESOLUTIONS
from ._errors import ValidationError

__all__ = [
    "ENDPOINTS",
    "JobState",
    "JobStatus",
    "LipsyncImageMultiRequest",
    "LipsyncImageRequest",
    "LipsyncVideoRequest",
    "Request",
    "check_file",
    "check_job_id",
    "check_media",
    "check_url",
    "local_media",
]

Resolution = Literal["480p", "720p"]
Order = Literal["meanwhile", "left_right", "right_left"]


class JobStatus(enum.StrEnum):
    """A job's status. Known values compare case-insensitively (``"COMPLETED"`` is
    ``COMPLETED``); unknown wire values still parse (as pseudo-members, the text kept as sent)
    and count as pending."""

    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @classmethod
    def _missing_(cls, value: object) -> JobStatus | None:
        # The service may grow statuses ("queued", "cancelled"...): keep the value, don't crash.
        # Pseudo-members are not cached, so a hostile stream of values cannot grow the enum.
        if not isinstance(value, str):
            return None
        known = cls.__members__.get(value.upper())
        if known is not None and known.value == value.lower():
            return known
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    @property
    def is_final(self) -> bool:
        """True for ``COMPLETED`` and ``FAILED``; anything else is still pending."""
        # Module globals, not `JobStatus.COMPLETED`: an enum member looked up on its class
        # costs ~180 ns on 3.11, and every status read asks this.
        return self is _COMPLETED or self is _FAILED


_COMPLETED: Final = JobStatus.COMPLETED
_FAILED: Final = JobStatus.FAILED


@attrs.define(frozen=True, kw_only=True, slots=True)
class JobState:
    """A job's state as the service reports it (``GET /jobs/{id}`` or a webhook body).

    ``output`` is the result's URL. The service documents it as one URL string; when it sends
    a list or an object instead, nothing is dropped: ``output_raw`` keeps that value as sent
    (plain JSON: lists, dicts, strings, numbers), and ``output`` is the one http(s) URL found
    in it, if there is exactly one (what ``download()`` fetches), else ``None``. For a string
    ``output``, ``output_raw`` is ``None``.
    """

    id: str
    status: JobStatus
    model: str | None = None
    output: str | None = None
    error: str = ""
    execution_time_ms: int | None = None
    timings: Any = None
    output_raw: Any = attrs.field(default=None, hash=False)

    @property
    def is_final(self) -> bool:
        """True once the job completed or failed."""
        return self.status.is_final

    def to_wire(self) -> dict[str, Any]:
        """The state in the service's own JSON names (``executionTime``, ``status`` as text),
        as ``GET /jobs/{id}`` and the CLI's ``--json`` show it."""
        # Imported here: `_wire` imports this module, and models stay free of cattrs at import.
        from ._wire import state_to_wire

        return state_to_wire(self)


def check_job_id(value: object, field: str = "job_id") -> str:
    """Return ``value`` if it can be a job id: a non-blank string that UTF-8 can carry."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, f"must be a non-empty string, got {value!r:.60}")
    if len(value) > 256:
        raise ValidationError(field, f"is {len(value)} characters long; job ids are short")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValidationError(field, f"is not valid text: {value!r:.60}") from None
    return value


def check_url(field: str, value: object) -> str:
    """Return ``value`` if it is an http(s) URL with a host; else raise ``ValidationError``."""
    if value is None or value == "":
        raise ValidationError(field, "is required")
    if not isinstance(value, str):
        raise ValidationError(field, f"must be an http(s) URL string, got {type(value).__name__}")
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValidationError(field, f"is not a valid URL: {value!r:.80}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValidationError(field, f"must be an http(s) URL with a host, got {value!r:.80}")
    return value


def check_file(field: str, value: os.PathLike[str]) -> str:
    """The path of ``value`` if it names a readable regular file; else ``ValidationError``.

    One ``stat``, no read: a file that vanishes later is the receiver's 404, not ours to guess.
    """
    try:
        name = os.fspath(value)
    except TypeError as exc:
        raise ValidationError(field, f"is not a usable path: {exc}") from None
    if not isinstance(name, str):
        raise ValidationError(field, f"must be a str path, got {type(name).__name__}")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise ValidationError(field, f"no such file: {name!r:.200}") from None
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        raise ValidationError(field, f"cannot use {name!r:.200}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError(field, f"is not a regular file: {name!r:.200}")
    if not os.access(name, os.R_OK):
        raise ValidationError(field, f"is not readable: {name!r:.200}")
    return name


def check_media(field: str, value: object) -> str | os.PathLike[str]:
    """A media input: an http(s) URL string, or a local file (``pathlib.Path``) to be served."""
    if type(value) is str:  # the common case, without the ABC check of os.PathLike
        return check_url(field, value)
    if isinstance(value, os.PathLike):
        check_file(field, value)
        return value
    return check_url(field, value)


def local_media(request: Request) -> dict[str, os.PathLike[str]]:
    """The request's media fields that are local files, by field name (empty for all-URL)."""
    out: dict[str, os.PathLike[str]] = {}
    for name in request.media_fields:
        value = getattr(request, name)
        # `type(...) is str` first: a URL (nearly always) then skips the ABC check.
        if type(value) is not str and value is not None and isinstance(value, os.PathLike):
            out[name] = value
    return out


def _media(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_media(attribute.name, value)


def _optional_media(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_media(attribute.name, value)


def _optional_url(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_url(attribute.name, value)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and value not in choices:
            raise ValidationError(
                attribute.name, f"must be one of {', '.join(choices)}, got {value!r:.40}"
            )

    return check


def _seed(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # bool is an int subclass; a seed of True is a bug, not a seed.
    if value is not None and (type(value) is not int):
        raise ValidationError("seed", f"must be an integer, got {type(value).__name__}")


def _prompt(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError("prompt", f"must be a string, got {type(value).__name__}")


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _freeze_extra(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise ValidationError("extra", f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError("extra", f"keys must be strings, got {key!r:.40}")
    return MappingProxyType(dict(value))


def _finite_json(field: str, value: object, depth: int = 0) -> None:
    """Reject what JSON cannot carry (NaN, objects), so the request never fails mid-send."""
    if depth > 32:
        raise ValidationError(field, "is nested too deeply")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, f"must be finite, got {value!r}")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(field, f"keys must be strings, got {k!r:.40}")
            _finite_json(f"{field}.{k}", v, depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _finite_json(f"{field}[{i}]", v, depth + 1)
        return
    raise ValidationError(field, f"is not JSON-serialisable ({type(value).__name__})")


@attrs.define(frozen=True, kw_only=True, slots=True)
class _RequestBase:
    """Fields every endpoint shares; subclasses add their media and name their endpoint.

    A media field is an http(s) URL, or a local file (``pathlib.Path`` or any ``os.PathLike``)
    that the client's ``WebhookReceiver`` serves at submit (``LipsyncClient.submit``).
    """

    endpoint: ClassVar[str]
    media_fields: ClassVar[tuple[str, ...]]

    resolution: Resolution | None = attrs.field(default=None, validator=_one_of(RESOLUTIONS))
    prompt: str | None = attrs.field(default=None, validator=_prompt)
    seed: int | None = attrs.field(default=None, validator=_seed)
    webhook: str | None = attrs.field(default=None, validator=_optional_url)
    extra: Mapping[str, Any] = attrs.field(
        default=None, converter=_freeze_extra, repr=lambda m: repr(dict(m))
    )

    def __attrs_post_init__(self) -> None:
        if self.extra:
            named = {a.name for a in attrs.fields(type(self))} - {"extra", "webhook"}
            clash = sorted(named & self.extra.keys())
            if clash:
                raise ValidationError(
                    "extra",
                    f"may not overwrite named fields ({', '.join(clash)}); pass them by name",
                )
            _finite_json("extra", dict(self.extra))


@attrs.define(frozen=True, kw_only=True, slots=True)
class LipsyncVideoRequest(_RequestBase):
    """``POST /lipsync-video``: replace a video's audio, keeping the lips in sync."""

    endpoint: ClassVar[str] = "lipsync-video"
    media_fields: ClassVar[tuple[str, ...]] = ("video", "audio", "mask_image")

    video: str | os.PathLike[str] = attrs.field(validator=_media)
    audio: str | os.PathLike[str] = attrs.field(validator=_media)
    mask_image: str | os.PathLike[str] | None = attrs.field(default=None, validator=_optional_media)


@attrs.define(frozen=True, kw_only=True, slots=True)
class LipsyncImageRequest(_RequestBase):
    """``POST /lipsync-image``: one face from an image, speaking an audio."""

    endpoint: ClassVar[str] = "lipsync-image"
    media_fields: ClassVar[tuple[str, ...]] = ("image", "audio", "mask_image")

    image: str | os.PathLike[str] = attrs.field(validator=_media)
    audio: str | os.PathLike[str] = attrs.field(validator=_media)
    mask_image: str | os.PathLike[str] | None = attrs.field(default=None, validator=_optional_media)


@attrs.define(frozen=True, kw_only=True, slots=True)
class LipsyncImageMultiRequest(_RequestBase):
    """``POST /lipsync-image-multi``: a two-speaker conversation from one image, two audios."""

    endpoint: ClassVar[str] = "lipsync-image-multi"
    media_fields: ClassVar[tuple[str, ...]] = ("image", "left_audio", "right_audio")

    image: str | os.PathLike[str] = attrs.field(validator=_media)
    left_audio: str | os.PathLike[str] = attrs.field(validator=_media)
    right_audio: str | os.PathLike[str] = attrs.field(validator=_media)
    order: Order | None = attrs.field(default=None, validator=_one_of(ORDERS))


Request = LipsyncVideoRequest | LipsyncImageRequest | LipsyncImageMultiRequest

ENDPOINTS: Final[Mapping[str, type[Request]]] = MappingProxyType(
    {
        cls.endpoint: cls
        for cls in (LipsyncVideoRequest, LipsyncImageRequest, LipsyncImageMultiRequest)
    }
)
