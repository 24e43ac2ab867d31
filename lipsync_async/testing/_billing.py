"""What a job costs: the service's per-second billing rules (SPEC section 1).

Output is billed per second, 480p at 2 credits/s and 720p at 4 credits/s, with a 5 s minimum;
a two-speaker job bills the longer audio when the speakers talk at the same time
(``order="meanwhile"``, the default) and the sum of both otherwise.

The emulator never downloads media, so it cannot know how long an audio is: every audio counts
as the server's ``clip_seconds`` knob. Both audios of a multi job therefore have the same
length, and "the longer of the two" is ``clip_seconds``, "the sum" ``2 * clip_seconds``.

Private on purpose: the SDK owns the public cost function; this module only makes the fake
charge like the service.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_RESOLUTION", "MINIMUM_SECONDS", "RATES", "output_seconds", "price"]

RATES: Mapping[str, float] = {"480p": 2.0, "720p": 4.0}
DEFAULT_RESOLUTION = "480p"
MINIMUM_SECONDS = 5.0


def output_seconds(endpoint: str, form_state: Mapping[str, object], clip_seconds: float) -> float:
    """Seconds of video a job produces, every audio assumed ``clip_seconds`` long."""
    if endpoint == "lipsync-image-multi" and form_state.get("order", "meanwhile") != "meanwhile":
        return 2.0 * clip_seconds
    return clip_seconds


def price(form_state: Mapping[str, object], seconds: float) -> float:
    """Credits charged for ``seconds`` of output at the job's resolution (validated before)."""
    resolution = form_state.get("resolution", DEFAULT_RESOLUTION)
    return max(MINIMUM_SECONDS, seconds) * RATES[str(resolution)]
