"""The conventions users of other Python SDKs expect: public error paths, request ids, wire form.

Through public names only, against the emulator on loopback.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest

import lipsync_async
from lipsync_async import (
    APIError,
    AuthenticationError,
    JobState,
    JobStatus,
    LipsyncClient,
    NotFoundError,
    Order,
    Resolution,
)
from lipsync_async.testing import FakeLipsyncServer

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"


def test_errors_show_their_public_path() -> None:
    """Every exported exception names ``lipsync_async`` as its module, so a traceback reads
    ``lipsync_async.AuthenticationError``, the path users import and catch it by."""
    for name in lipsync_async.__all__:
        obj = getattr(lipsync_async, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert obj.__module__ == "lipsync_async", name
    err = AuthenticationError("bad key", status=401)
    text = "".join(traceback.format_exception_only(err))
    assert text.startswith("lipsync_async.AuthenticationError: HTTP 401: bad key")


def test_literal_types_are_exported() -> None:
    """``Resolution`` and ``Order`` are importable from the package for users' annotations."""
    resolution: Resolution = "720p"
    order: Order = "left_right"
    assert (resolution, order) == ("720p", "left_right")
    assert set(Resolution.__args__) == {"480p", "720p"}  # type: ignore[attr-defined]
    assert set(Order.__args__) == {"meanwhile", "left_right", "right_left"}  # type: ignore[attr-defined]


def test_job_state_to_wire_uses_the_service_names() -> None:
    """``JobState.to_wire()`` gives the service's JSON: camelCase keys, the status as text."""
    state = JobState(
        id="j1",
        status=JobStatus.COMPLETED,
        model="lipsync-image",
        output="https://cdn.example.com/o.mp4",
        execution_time_ms=1234,
    )
    wire = state.to_wire()
    assert wire == {
        "id": "j1",
        "model": "lipsync-image",
        "status": "completed",
        "output": "https://cdn.example.com/o.mp4",
        "error": "",
        "executionTime": 1234,
        "timings": None,
    }
    json.dumps(wire)  # plain JSON types only


def test_api_error_without_an_answer_has_empty_headers() -> None:
    """An ``APIError`` built without an answer has no request id and empty headers."""
    err = APIError("x", status=500)
    assert err.request_id is None and dict(err.headers) == {}
    err = APIError("x", status=500, headers={"X-Request-ID": "req_1"})
    assert err.request_id == "req_1"


async def test_api_error_carries_request_id_and_headers() -> None:
    """A 404 from the service carries its ``X-Request-Id`` as ``.request_id`` and the answer's
    headers (case-insensitive) as ``.headers``; the API key is in neither."""
    async with FakeLipsyncServer() as fake:
        async with LipsyncClient(fake.api_key, base_url=fake.base_url, max_retries=0) as client:
            with pytest.raises(NotFoundError) as info:
                await client.get_job("00000000-0000-0000-0000-000000000000")
        async with LipsyncClient("sk_wrong_key_123456", base_url=fake.base_url) as client:
            with pytest.raises(AuthenticationError) as auth:
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
    err = info.value
    assert err.request_id is not None and err.request_id.startswith("req_")
    assert err.headers["x-request-id"] == err.request_id
    assert err.headers["Content-Type"].startswith("application/json")
    assert auth.value.request_id and auth.value.request_id != err.request_id
    for value in auth.value.headers.values():
        assert fake.api_key not in value and "sk_wrong_key_123456" not in value


def test_packaging_metadata() -> None:
    """The installed distribution declares what users and indexes look for: the MIT license
    with its file, the Python versions CI runs, a project URL, and the cli, testing and redis
    extras (testing brings pytest-asyncio, which the lipsync_emulator fixture needs)."""
    from importlib.metadata import metadata, requires

    meta = metadata("lipsync-async")
    classifiers = meta.get_all("Classifier") or []
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta["License-Expression"] == "MIT" and "LICENSE" in (meta.get_all("License-File") or [])
    assert meta.get_all("Project-URL")
    assert {"cli", "testing", "redis"} <= set(meta.get_all("Provides-Extra") or [])
    testing = [r for r in requires("lipsync-async") or [] if "testing" in r.partition(";")[2]]
    assert any(r.startswith("pytest-asyncio") for r in testing)
    license_file = Path(__file__).resolve().parent.parent / "LICENSE"
    text = license_file.read_text()
    assert text.startswith("MIT License") and "2026 lipsync_async developers" in text
