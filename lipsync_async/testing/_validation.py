"""The service's input rules: a submit body in, a ``formState`` and webhook out, or a 400 message.

One function, :func:`parse_submit`, checks a raw body the way SPEC section 1 describes and raises
:class:`InvalidRequest` with a message that names the offending field
(``"formState.resolution must be one of 480p, 720p"``), which the server sends back as
``400 {"error": message}``. Rules are checked in a fixed order and the first broken one wins, so
answers are deterministic.

Two deliberate differences from the real service, both for loopback tests:

- ``webhook`` may be ``http://`` as well as ``https://`` (the service asks for HTTPS; tests
  receive deliveries on ``http://127.0.0.1``).
- the emulator never fetches media, so a media URL only has to look right (http(s), a host).

Fields the table does not know pass through unchanged and are stored on the job, as the service
forwards model-specific parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ENDPOINTS", "InvalidRequest", "parse_submit"]

#: Required formState fields per endpoint, in the order they are checked.
ENDPOINTS: Mapping[str, tuple[str, ...]] = {
    "lipsync-video": ("video", "audio"),
    "lipsync-image": ("image", "audio"),
    "lipsync-image-multi": ("image", "left_audio", "right_audio"),
}
_MEDIA_FIELDS = ("video", "image", "audio", "left_audio", "right_audio", "mask_image")
_RESOLUTIONS = ("480p", "720p")
_ORDERS = ("meanwhile", "left_right", "right_left")


class InvalidRequest(Exception):
    """A submit the service would answer with 400; ``str(exc)`` is the message to send."""


def parse_submit(endpoint: str, raw: bytes) -> tuple[dict[str, Any], str | None]:
    """Validate a submit body for ``endpoint``; return its ``formState`` and ``webhook``."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequest("body must be a JSON object (could not parse JSON)") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    if "formState" not in body:
        raise InvalidRequest("formState is required")
    form_state = body["formState"]
    if not isinstance(form_state, dict):
        raise InvalidRequest("formState must be an object")
    webhook = body.get("webhook")
    if "webhook" in body and not _is_http_url(webhook):
        raise InvalidRequest("webhook must be an http(s) URL with a host")
    for name in ENDPOINTS[endpoint]:
        if name not in form_state:
            raise InvalidRequest(f"formState.{name} is required")
    for name in _MEDIA_FIELDS:
        if name in form_state and not _is_http_url(form_state[name]):
            raise InvalidRequest(f"formState.{name} must be an http(s) URL with a host")
    _check_choice(form_state, "resolution", _RESOLUTIONS)
    if endpoint == "lipsync-image-multi":
        _check_choice(form_state, "order", _ORDERS)
    seed = form_state.get("seed")
    # JSON true/false decode to bool, a subclass of int: the service wants a real integer.
    if "seed" in form_state and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidRequest("formState.seed must be an integer")
    if "prompt" in form_state and not isinstance(form_state["prompt"], str):
        raise InvalidRequest("formState.prompt must be a string")
    return form_state, webhook


def _check_choice(form_state: Mapping[str, object], name: str, allowed: tuple[str, ...]) -> None:
    if name in form_state and form_state[name] not in allowed:
        raise InvalidRequest(f"formState.{name} must be one of {', '.join(allowed)}")


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" in the netloc
        return False
    return parts.scheme.lower() in ("http", "https") and bool(host)
