"""``estimate_credits``: the SPEC's billing rules, before anything is submitted."""

from __future__ import annotations

import math

import pytest

from lipsync_async import ValidationError, estimate_credits


@pytest.mark.parametrize(
    ("kwargs", "credits"),
    [
        ({"seconds": 12}, 24.0),  # 480p by default, 2 credits/s
        ({"resolution": "720p", "seconds": 12}, 48.0),  # 4 credits/s
        ({"seconds": 3}, 10.0),  # 5 s minimum
        ({"resolution": "720p", "seconds": 2.5}, 20.0),
        ({"seconds": 7.5}, 15.0),  # partial seconds pro rata, like the emulator
        ({"left_seconds": 6, "right_seconds": 4}, 12.0),  # meanwhile (default): the longer
        ({"left_seconds": 6, "right_seconds": 4, "order": "meanwhile"}, 12.0),
        ({"left_seconds": 6, "right_seconds": 4, "order": "left_right"}, 20.0),  # the sum
        ({"left_seconds": 1, "right_seconds": 2, "order": "right_left"}, 10.0),  # minimum
        ({"resolution": "720p", "left_seconds": 6, "right_seconds": 9}, 36.0),
    ],
)
def test_billing_rules(kwargs: dict[str, object], credits: float) -> None:
    """Per second of output by resolution, 5 s minimum; multi bills the longer audio when
    both speak at once ("meanwhile", the default) and the sum otherwise."""
    assert estimate_credits(**kwargs) == credits  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resolution": "1080p", "seconds": 5}, "resolution"),
        ({}, "seconds"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": math.nan}, "seconds"),
        ({"seconds": True}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": 5, "order": "left_right"}, "order"),
        ({"seconds": 5, "left_seconds": 3, "right_seconds": 3}, "seconds"),
        ({"left_seconds": 3}, "right_seconds"),
        ({"left_seconds": 3, "right_seconds": 3, "order": "sideways"}, "order"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict[str, object], field: str) -> None:
    """Bad input raises ValidationError (a ValueError) naming the argument."""
    with pytest.raises(ValidationError) as info:
        estimate_credits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
