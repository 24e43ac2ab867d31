"""The one converter: formState, camelCase, tolerant parsing, malformed answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lipsync_async import (
    APIError,
    JobState,
    JobStatus,
    LipsyncImageMultiRequest,
    LipsyncImageRequest,
    LipsyncVideoRequest,
)
from lipsync_async._choices import ORDERS, RESOLUTIONS
from lipsync_async._wire import (
    _dump_request,
    dump_request,
    loads_object,
    parse_job_state,
    parse_submit_answer,
    state_to_wire,
)

from .conftest import AUDIO, IMAGE


def test_submit_body_layout() -> None:
    """A request becomes {"webhook", "formState"}; None fields are omitted; extra merged in."""
    req = LipsyncImageRequest(image=IMAGE, audio=AUDIO, resolution="720p", seed=42, extra={"k": 1})
    body = json.loads(dump_request(req, "https://hooks.example.com/w/s"))
    assert body == {
        "webhook": "https://hooks.example.com/w/s",
        "formState": {"image": IMAGE, "audio": AUDIO, "resolution": "720p", "seed": 42, "k": 1},
    }


urls = st.sampled_from(
    [IMAGE, AUDIO, "https://cdn.example.com/caf\u00e9 \u2028.mp3", "http://127.0.0.1:8/a?b=\"c\"&d"]
)
optional = {
    "resolution": st.none() | st.sampled_from(RESOLUTIONS),
    "prompt": st.none() | st.text(max_size=20),
    "seed": st.none() | st.integers(min_value=-(2**70), max_value=2**70),
    "webhook": st.none() | urls,
    "extra": st.none() | st.dictionaries(st.sampled_from(["x", "yy"]), st.integers(), max_size=2),
}
requests = (
    st.builds(LipsyncImageRequest, image=urls, audio=urls, mask_image=st.none() | urls, **optional)
    | st.builds(LipsyncVideoRequest, video=urls, audio=urls, **optional)
    | st.builds(
        LipsyncImageMultiRequest,
        image=urls,
        left_audio=urls,
        right_audio=urls,
        order=st.none() | st.sampled_from(ORDERS),
        **optional,
    )
)


@given(requests, st.none() | urls)
def test_quick_submit_body_is_the_converters_byte_for_byte(
    req: LipsyncImageRequest | LipsyncVideoRequest | LipsyncImageMultiRequest,
    webhook: str | None,
) -> None:
    """The pre-encoded submit body (strings and ints written directly) is exactly what the
    converter and the JSON encoder make: same keys, same order, same escapes."""
    assert dump_request(req, webhook) == _dump_request(req, webhook)


def test_explicit_webhook_wins_and_none_omits() -> None:
    """A request's own webhook beats the receiver's; without either there is no webhook key."""
    req = LipsyncImageMultiRequest(
        image=IMAGE, left_audio=AUDIO, right_audio=AUDIO, webhook="https://mine.example.com/h"
    )
    assert (
        json.loads(dump_request(req, "https://other/x"))["webhook"] == "https://mine.example.com/h"
    )
    plain = LipsyncImageRequest(image=IMAGE, audio=AUDIO)
    assert "webhook" not in json.loads(dump_request(plain))


def test_state_camel_case() -> None:
    """executionTime maps to execution_time_ms and back."""
    wire = {
        "id": "j1",
        "model": "lipsync-image",
        "status": "completed",
        "output": "https://cdn/x.mp4",
        "error": "",
        "executionTime": 12345,
        "timings": {"a": 1},
    }
    state = parse_job_state(wire)
    assert state.execution_time_ms == 12345
    assert state.status is JobStatus.COMPLETED
    assert state_to_wire(state) == wire


@pytest.mark.parametrize(
    "raw",
    [b"<html><body>502 Bad Gateway</body></html>", b"", b"[1, 2]", b'"id"', b'{"status": "x"}'],
)
def test_malformed_submit_answer_is_api_error(raw: bytes) -> None:
    """Non-JSON, non-object, or id-less submit answers raise APIError showing what came back."""
    with pytest.raises(APIError) as info:
        parse_submit_answer(raw, 200)
    assert info.value.status == 200
    assert info.value.body == raw.decode().strip()[:200] or raw == b""


def test_not_json_shows_excerpt() -> None:
    """The excerpt of an HTML page is in the error message, whitespace collapsed."""
    with pytest.raises(APIError, match="502 Bad Gateway"):
        loads_object(b"<html>\n<h1>502 Bad Gateway</h1>\n</html>", 502)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "model", "status", "output", "error", "executionTime", "timings", "x"]
        ),
        json_values,
    )
)
def test_parse_arbitrary_objects(data: dict[str, Any]) -> None:
    """Any JSON object either parses to a JobState with the same id/status or is an APIError."""
    try:
        state = parse_job_state(data)
    except APIError as exc:
        assert exc.status == 200
    else:
        assert state.id == data["id"] and state.status == data["status"]
        assert state.execution_time_ms is None or isinstance(state.execution_time_ms, int)
        assert isinstance(state.error, str)


states = st.builds(
    JobState,
    id=st.text(min_size=1, max_size=64).filter(str.strip),
    status=st.sampled_from(["processing", "completed", "failed", "queued"]).map(JobStatus),
    model=st.none() | st.text(),
    output=st.none() | st.text(),
    error=st.text(),
    execution_time_ms=st.none() | st.integers(min_value=0, max_value=10**12),
    timings=st.none() | st.dictionaries(st.text(), st.integers(), max_size=2),
)


@given(states)
def test_state_round_trip(state: JobState) -> None:
    """state -> wire JSON -> state is the identity."""
    assert parse_job_state(json.loads(json.dumps(state_to_wire(state)))) == state
