"""What a job will cost, in credits, from the service's billing rules (SPEC section 1).

Output is billed per second: 480p at 2 credits/s, 720p at 4 credits/s (480p is the default),
with a 5 s minimum. A two-speaker job bills the longer audio when the speakers talk at the same
time (``order="meanwhile"``, the service's default) and the sum of both audios otherwise.

The service's page does not say whether a partial second rounds up; this estimate bills it pro
rata, as the emulator charges. Pure arithmetic, no I/O: ``lipsync-async cost`` and the CLI's
``--dry-run`` print it before anything is spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._choices import ORDERS, RESOLUTIONS
from ._errors import ValidationError

__all__ = ["CREDITS_PER_SECOND", "MINIMUM_SECONDS", "estimate_credits"]

CREDITS_PER_SECOND: Final[Mapping[str, float]] = MappingProxyType({"480p": 2.0, "720p": 4.0})
MINIMUM_SECONDS: Final = 5.0
_DEFAULT_RESOLUTION: Final = "480p"
_DEFAULT_ORDER: Final = "meanwhile"


def _duration(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(field, f"must be a finite number of seconds, got {value!r:.40}")
    if value <= 0:
        raise ValidationError(field, f"must be > 0, got {value!r}")
    return float(value)


def estimate_credits(
    resolution: str | None = None,
    seconds: float | None = None,
    *,
    left_seconds: float | None = None,
    right_seconds: float | None = None,
    order: str | None = None,
) -> float:
    """Credits a job producing ``seconds`` of output costs, before it is submitted.

    For a one-speaker job pass ``seconds`` (the audio's length). For a two-speaker job pass
    ``left_seconds`` and ``right_seconds`` (and ``order``, default ``"meanwhile"``): the output
    lasts the longer audio when both speak at once, the sum otherwise. ``resolution`` defaults
    to 480p. Raises :class:`ValidationError` naming the argument on bad input.

    >>> estimate_credits("720p", 12)
    48.0
    >>> estimate_credits(seconds=3)  # 480p, 5 s minimum
    10.0
    >>> estimate_credits("480p", left_seconds=6, right_seconds=4, order="left_right")
    20.0
    """
    rate = CREDITS_PER_SECOND.get(resolution or _DEFAULT_RESOLUTION)
    if rate is None:
        raise ValidationError(
            "resolution", f"must be one of {', '.join(RESOLUTIONS)}, got {resolution!r:.40}"
        )
    multi = left_seconds is not None or right_seconds is not None
    if multi:
        if seconds is not None:
            raise ValidationError(
                "seconds", "pass either seconds (one speaker) or left/right_seconds, not both"
            )
        left = _duration("left_seconds", left_seconds)
        right = _duration("right_seconds", right_seconds)
        chosen = order or _DEFAULT_ORDER
        if chosen not in ORDERS:
            raise ValidationError("order", f"must be one of {', '.join(ORDERS)}, got {order!r:.40}")
        output = max(left, right) if chosen == "meanwhile" else left + right
    else:
        if order is not None:
            raise ValidationError(
                "order", "applies to two-speaker jobs: pass left_seconds and right_seconds"
            )
        if seconds is None:
            raise ValidationError("seconds", "is required (the audio's length in seconds)")
        output = _duration("seconds", seconds)
    return max(MINIMUM_SECONDS, output) * rate
