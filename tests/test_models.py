"""Request validation and JobStatus: pure, before any socket opens."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lipsync_async import (
    JobStatus,
    LipsyncImageMultiRequest,
    LipsyncImageRequest,
    LipsyncVideoRequest,
    ValidationError,
)

from .conftest import AUDIO, IMAGE, VIDEO


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image": "ftp://x/a.png", "audio": AUDIO}, "image"),
        ({"image": "https://", "audio": AUDIO}, "image"),
        ({"image": "face.png", "audio": AUDIO}, "image"),
        ({"image": None, "audio": AUDIO}, "image"),
        ({"image": IMAGE, "audio": 3}, "audio"),
        ({"image": IMAGE, "audio": AUDIO, "resolution": "1080p"}, "resolution"),
        ({"image": IMAGE, "audio": AUDIO, "seed": True}, "seed"),
        ({"image": IMAGE, "audio": AUDIO, "seed": 1.5}, "seed"),
        ({"image": IMAGE, "audio": AUDIO, "seed": "42"}, "seed"),
        ({"image": IMAGE, "audio": AUDIO, "prompt": 7}, "prompt"),
        ({"image": IMAGE, "audio": AUDIO, "mask_image": "javascript:x"}, "mask_image"),
        ({"image": IMAGE, "audio": AUDIO, "webhook": "not a url"}, "webhook"),
        ({"image": IMAGE, "audio": AUDIO, "extra": {"image": IMAGE}}, "extra"),
        ({"image": IMAGE, "audio": AUDIO, "extra": {"x": float("nan")}}, "extra.x"),
        ({"image": IMAGE, "audio": AUDIO, "extra": {"x": object()}}, "extra.x"),
        ({"image": IMAGE, "audio": AUDIO, "extra": ["a"]}, "extra"),
    ],
)
def test_invalid_image_request_names_field(kwargs: dict[str, Any], field: str) -> None:
    """Each invalid argument raises ValidationError (a ValueError) whose .field names it."""
    with pytest.raises(ValidationError) as info:
        LipsyncImageRequest(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("order", ["sideways", "", "MEANWHILE"])
def test_multi_order_is_checked(order: str) -> None:
    """order accepts only meanwhile, left_right, right_left."""
    with pytest.raises(ValidationError, match="order"):
        LipsyncImageMultiRequest(
            image=IMAGE,
            left_audio=AUDIO,
            right_audio=AUDIO,
            order=order,  # type: ignore[arg-type]
        )


def test_valid_requests_keep_their_fields() -> None:
    """Valid requests of all three endpoints construct and keep what was given."""
    v = LipsyncVideoRequest(video=VIDEO, audio=AUDIO, resolution="720p", seed=0)
    i = LipsyncImageRequest(image=IMAGE, audio=AUDIO, prompt="calm", extra={"fps": 25})
    m = LipsyncImageMultiRequest(
        image=IMAGE, left_audio=AUDIO, right_audio=AUDIO, order="left_right"
    )
    assert (v.endpoint, v.resolution, v.seed) == ("lipsync-video", "720p", 0)
    assert (i.endpoint, i.prompt, dict(i.extra)) == ("lipsync-image", "calm", {"fps": 25})
    assert (m.endpoint, m.order) == ("lipsync-image-multi", "left_right")


def test_extra_is_frozen_copy() -> None:
    """extra is copied and read-only: mutating the caller's dict changes nothing."""
    given_extra: dict[str, Any] = {"a": 1}
    req = LipsyncImageRequest(image=IMAGE, audio=AUDIO, extra=given_extra)
    given_extra["a"] = 2
    assert req.extra["a"] == 1
    with pytest.raises(TypeError):
        req.extra["a"] = 3  # type: ignore[index]


def test_unknown_status_parses_and_is_pending() -> None:
    """An unknown wire status is kept as a JobStatus pseudo-member and is not final."""
    s = JobStatus("queued")
    assert isinstance(s, JobStatus)
    assert s == "queued"
    assert not s.is_final
    assert JobStatus("completed") is JobStatus.COMPLETED
    assert JobStatus.COMPLETED.is_final and JobStatus.FAILED.is_final
    assert not JobStatus.PROCESSING.is_final


@given(st.integers(min_value=-(2**63), max_value=2**63))
def test_any_int_seed_is_accepted(seed: int) -> None:
    """Every integer is a valid seed."""
    assert LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=seed).seed == seed


@given(st.one_of(st.text(), st.integers(), st.none(), st.floats(), st.booleans()))
def test_resolution_validation_is_exact(value: Any) -> None:
    """resolution is valid iff it is None, '480p' or '720p'."""
    if value in (None, "480p", "720p") and not isinstance(value, bool | int | float):
        assert LipsyncImageRequest(image=IMAGE, audio=AUDIO, resolution=value).resolution == value
    else:
        with pytest.raises(ValidationError, match="resolution"):
            LipsyncImageRequest(image=IMAGE, audio=AUDIO, resolution=value)


@given(st.text(max_size=60))
def test_url_validation_never_crashes(value: str) -> None:
    """Arbitrary text as a URL either validates as http(s) with a host or is a ValidationError."""
    try:
        req = LipsyncImageRequest(image=value, audio=AUDIO)
    except ValidationError as exc:
        assert exc.field == "image"
    else:
        assert isinstance(req.image, str)
        assert req.image.lower().startswith(("http://", "https://"))
