"""FakeLipsyncServer over real sockets: raw aiohttp requests see the service's wire format.

No SDK code here on purpose: these tests pin the emulator itself (SPEC section 1 and 4), so the
client's own tests can trust it. Webhooks land on a tiny aiohttp receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lipsync_async.testing import Delivery, FakeJob, FakeLipsyncServer

FORMS: dict[str, dict[str, Any]] = {
    "lipsync-video": {"video": "https://cdn.example/in.mp4", "audio": "https://cdn.example/a.mp3"},
    "lipsync-image": {
        "image": "https://cdn.example/face.png",
        "audio": "https://cdn.example/a.mp3",
    },
    "lipsync-image-multi": {
        "image": "https://cdn.example/two.png",
        "left_audio": "https://cdn.example/l.mp3",
        "right_audio": "https://cdn.example/r.mp3",
    },
}
ENDPOINTS = list(FORMS)
STATE_KEYS = ["id", "model", "status", "output", "error", "executionTime", "timings"]


# -- helpers and fixtures ---------------------------------------------------------------------


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(
    http: aiohttp.ClientSession,
    fake: FakeLipsyncServer,
    endpoint: str = "lipsync-image",
    *,
    key: str | None = None,
    webhook: str | None = None,
    **fields: Any,
) -> tuple[int, Any]:
    body: dict[str, Any] = {"formState": {**FORMS[endpoint], **fields}}
    if webhook is not None:
        body["webhook"] = webhook
    async with http.post(
        f"{fake.base_url}/{endpoint}", json=body, headers=auth(key or fake.api_key)
    ) as response:
        return response.status, await response.json()


async def get_job(
    http: aiohttp.ClientSession, fake: FakeLipsyncServer, job_id: str, key: str | None = None
) -> tuple[int, Any]:
    async with http.get(f"{fake.base_url}/jobs/{job_id}", headers=auth(key or fake.api_key)) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


async def wait_final(
    http: aiohttp.ClientSession, fake: FakeLipsyncServer, job_id: str, timeout: float = 3.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, state = await get_job(http, fake, job_id)
        if state["status"] != "processing":
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} still processing after {timeout} s")


class Receiver:
    """A webhook endpoint that records what it gets and answers from a script of statuses."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.content_types: list[str] = []
        self.received_at: list[float] = []
        self.answers: list[int] = []  # statuses to answer with, in order; then 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        self.bodies.append(await request.json())
        self.received_at.append(time.monotonic())
        status = self.answers.pop(0) if self.answers else 200
        return web.json_response({"received": True}, status=status)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeLipsyncServer]:
    async with FakeLipsyncServer(job_duration=0.1, seed=7) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


# -- the wire format --------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_submit_then_processing_then_completed(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, endpoint: str
) -> None:
    """A submit answers exactly {id: uuid4, status: processing}; the job reads as the generic
    "lipsync" model while processing, then as the endpoint's model with an output URL."""
    url = f"{fake.base_url}/{endpoint}"
    body = {"formState": FORMS[endpoint]}
    async with http.post(url, json=body, headers=auth(fake.api_key)) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        answer = await response.json()
    assert list(answer) == ["id", "status"]
    assert answer["status"] == "processing"
    job_id = answer["id"]
    assert uuid.UUID(job_id).version == 4

    status, state = await get_job(http, fake, job_id)
    assert status == 200
    assert list(state) == STATE_KEYS
    assert state == {
        "id": job_id,
        "model": "lipsync",
        "status": "processing",
        "output": None,
        "error": "",
        "executionTime": None,
        "timings": None,
    }

    state = await wait_final(http, fake, job_id)
    assert list(state) == STATE_KEYS
    assert isinstance(state["executionTime"], int)
    assert state["executionTime"] >= 100
    assert state == {
        "id": job_id,
        "model": endpoint,
        "status": "completed",
        "output": f"{fake.url}/files/{job_id}.mp4",
        "error": "",
        "executionTime": state["executionTime"],
        "timings": None,
    }
    assert fake.job_state(job_id) == state


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_fail_marker_job_reads_failed(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, endpoint: str
) -> None:
    """A prompt containing the fail marker always fails: model is the endpoint, output and
    executionTime null, error a non-empty message."""
    status, answer = await submit(http, fake, endpoint, prompt="smile [fail] please")
    assert status == 200
    state = await wait_final(http, fake, answer["id"])
    assert list(state) == STATE_KEYS
    assert state["model"] == endpoint
    assert state["status"] == "failed"
    assert state["output"] is None
    assert state["executionTime"] is None
    assert state["timings"] is None
    assert isinstance(state["error"], str)
    assert state["error"]


async def test_failure_rate_fails_jobs_reproducibly_with_a_seed(
    http: aiohttp.ClientSession,
) -> None:
    """failure_rate fails that fraction of jobs with an error message, and the same seed gives
    the same pattern; rate 1.0 fails every job."""
    patterns = []
    for _ in range(2):
        async with FakeLipsyncServer(job_duration=0, failure_rate=0.5, seed=3) as fake:
            for _ in range(12):
                await submit(http, fake)
            patterns.append([job.status for job in fake.jobs.values()])
            assert all(job.error for job in fake.jobs.values() if job.fails)
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {"completed", "failed"}

    async with FakeLipsyncServer(job_duration=0, failure_rate=1.0) as fake:
        _, answer = await submit(http, fake)
        state = await wait_final(http, fake, answer["id"])
        assert state["status"] == "failed"
        assert state["error"]


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "Basic abc"}],
    ids=["missing", "wrong-key", "not-bearer"],
)
async def test_bad_key_is_401_json(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """A missing, unknown or non-Bearer key gets 401 {"error": ...} on submits and reads, and
    creates nothing."""
    url = f"{fake.base_url}/lipsync-image"
    payload = {"formState": FORMS["lipsync-image"]}
    async with http.post(url, json=payload, headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert list(body) == ["error"]
    async with http.get(f"{fake.base_url}/jobs/{uuid.uuid4()}", headers=headers) as response:
        assert response.status == 401
    assert fake.jobs == {}
    assert fake.requests["401"] == 2


async def test_a_key_cannot_read_another_keys_job(http: aiohttp.ClientSession) -> None:
    """Each key sees only its own jobs: another valid key gets 404 "Job not found", exactly as
    for an id that never existed."""
    async with FakeLipsyncServer(extra_keys=["sk_test_other"]) as fake:
        _, answer = await submit(http, fake)
        status, body = await get_job(http, fake, answer["id"], key="sk_test_other")
        assert (status, body) == (404, {"error": "Job not found"})
        status, body = await get_job(http, fake, str(uuid.uuid4()))
        assert (status, body) == (404, {"error": "Job not found"})
        status, _ = await get_job(http, fake, answer["id"])
        assert status == 200


# -- validation -------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("lipsync-image", b"not json", "body must be a JSON object"),
    ("lipsync-image", b"\xff\xfe", "body must be a JSON object"),
    ("lipsync-image", [], "body must be a JSON object"),
    ("lipsync-image", {}, "formState is required"),
    ("lipsync-image", {"formState": "x"}, "formState must be an object"),
    (
        "lipsync-video",
        {"formState": {"audio": "https://a.example/a.mp3"}},
        "formState.video is required",
    ),
    (
        "lipsync-video",
        {"formState": {"video": "https://a.example/v.mp4"}},
        "formState.audio is required",
    ),
    (
        "lipsync-image",
        {"formState": {"audio": "https://a.example/a.mp3"}},
        "formState.image is required",
    ),
    (
        "lipsync-image-multi",
        {"formState": {"image": "https://a/i.png", "right_audio": "https://a/r"}},
        "formState.left_audio is required",
    ),
    (
        "lipsync-image-multi",
        {"formState": {"image": "https://a/i.png", "left_audio": "https://a/l"}},
        "formState.right_audio is required",
    ),
]
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("lipsync-video", {"video": "ftp://a.example/v.mp4"}, "formState.video must be an http(s) URL"),
    ("lipsync-video", {"audio": "voice.mp3"}, "formState.audio must be an http(s) URL"),
    ("lipsync-image", {"image": "https://"}, "formState.image must be an http(s) URL"),
    ("lipsync-image", {"audio": None}, "formState.audio must be an http(s) URL"),
    ("lipsync-image", {"mask_image": 42}, "formState.mask_image must be an http(s) URL"),
    (
        "lipsync-image-multi",
        {"left_audio": "file:///tmp/l.mp3"},
        "formState.left_audio must be an http(s) URL",
    ),
    (
        "lipsync-image-multi",
        {"right_audio": "http://[::1"},
        "formState.right_audio must be an http(s) URL",
    ),
    ("lipsync-video", {"resolution": "1080p"}, "formState.resolution must be one of 480p, 720p"),
    ("lipsync-image-multi", {"resolution": 720}, "formState.resolution must be one of 480p, 720p"),
    (
        "lipsync-image-multi",
        {"order": "both"},
        "formState.order must be one of meanwhile, left_right, right_left",
    ),
    ("lipsync-image", {"seed": True}, "formState.seed must be an integer"),
    ("lipsync-image", {"seed": "42"}, "formState.seed must be an integer"),
    ("lipsync-image", {"seed": 4.2}, "formState.seed must be an integer"),
    ("lipsync-image", {"prompt": 7}, "formState.prompt must be a string"),
]
BAD_WEBHOOKS = ["ftp://hooks.example/x", "https://", "/relative/path", 12, None]


async def _expect_400(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, endpoint: str, body: Any, message: str
) -> None:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(
        f"{fake.base_url}/{endpoint}", headers=auth(fake.api_key), **kwargs
    ) as response:
        assert response.status == 400
        answer = await response.json()
    assert list(answer) == ["error"]
    assert answer["error"].startswith(message)
    assert fake.jobs == {}
    assert fake.requests["400"] == 1


@pytest.mark.parametrize(("endpoint", "body", "message"), BAD_BODIES)
async def test_malformed_body_is_400_naming_the_field(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, endpoint: str, body: Any, message: str
) -> None:
    """A body that is not a JSON object, a missing or non-object formState, or a missing
    required field gets 400 {"error"} naming it, and no job."""
    await _expect_400(fake, http, endpoint, body, message)


@pytest.mark.parametrize(("endpoint", "fields", "message"), BAD_FIELDS)
async def test_bad_field_is_400_naming_the_field(
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    endpoint: str,
    fields: dict[str, Any],
    message: str,
) -> None:
    """Non-http(s) or host-less media URLs, a resolution or order outside the table, a seed
    that is not an integer (a JSON bool is not) and a non-string prompt get 400 naming the
    field."""
    await _expect_400(fake, http, endpoint, {"formState": {**FORMS[endpoint], **fields}}, message)


@pytest.mark.parametrize("webhook", BAD_WEBHOOKS)
async def test_bad_webhook_is_400(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, webhook: Any
) -> None:
    """A webhook that is present but not an http(s) URL with a host gets 400 naming webhook."""
    body = {"webhook": webhook, "formState": FORMS["lipsync-image"]}
    await _expect_400(fake, http, "lipsync-image", body, "webhook must be an http(s) URL")


async def test_optional_and_unknown_fields_are_accepted_and_stored(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession
) -> None:
    """Every optional field of the table is accepted, an http:// webhook too (loopback tests),
    and unknown formState keys pass through to the job unchanged."""
    extra: dict[str, Any] = {
        "resolution": "720p",
        "mask_image": "http://cdn.example/mask.png",
        "prompt": "calm",
        "seed": -3,
        "guidance": {"scale": 1.5},
        "order": "not-checked-outside-multi",
    }
    status, answer = await submit(
        http, fake, "lipsync-video", webhook="http://127.0.0.1:9/hook", **extra
    )
    assert status == 200
    job = fake.jobs[answer["id"]]
    assert job.form_state == {**FORMS["lipsync-video"], **extra}
    assert job.webhook == "http://127.0.0.1:9/hook"
    status, answer = await submit(http, fake, "lipsync-image-multi", order="right_left", seed=0)
    assert status == 200


# -- billing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fields", "clip_seconds", "cost"),
    [
        ("lipsync-image", {}, 5.0, 10.0),  # 480p by default: 2 credits/s
        ("lipsync-video", {"resolution": "720p"}, 5.0, 20.0),  # 4 credits/s
        ("lipsync-image", {}, 2.0, 10.0),  # 5 s minimum
        ("lipsync-video", {"resolution": "720p"}, 10.0, 40.0),
        ("lipsync-image-multi", {}, 6.0, 12.0),  # default order meanwhile: the longer audio
        ("lipsync-image-multi", {"order": "meanwhile"}, 6.0, 12.0),
        ("lipsync-image-multi", {"order": "left_right"}, 6.0, 24.0),  # the sum of both
        ("lipsync-image-multi", {"order": "right_left", "resolution": "720p"}, 3.0, 24.0),
    ],
)
async def test_billing_per_second_resolution_minimum_and_order(
    http: aiohttp.ClientSession,
    endpoint: str,
    fields: dict[str, Any],
    clip_seconds: float,
    cost: float,
) -> None:
    """A submit is charged per second of output (every audio taken as clip_seconds): 2 or 4
    credits/s by resolution, 5 s minimum, multi "meanwhile" one clip, other orders two."""
    async with FakeLipsyncServer(credits=1000, clip_seconds=clip_seconds) as fake:
        status, answer = await submit(http, fake, endpoint, **fields)
        assert status == 200
        assert fake.jobs[answer["id"]].cost == cost
        assert fake.credits_left() == 1000 - cost


async def test_out_of_credits_is_402_per_key(http: aiohttp.ClientSession) -> None:
    """A key whose balance cannot pay a submit gets 402 {"error"} and no job; each key has its
    own balance, and set_credits tops one up."""
    async with FakeLipsyncServer(credits=25, extra_keys=["sk_test_b"]) as fake:
        assert (await submit(http, fake))[0] == 200  # 10
        assert (await submit(http, fake))[0] == 200  # 20
        status, body = await submit(http, fake)
        assert status == 402
        assert list(body) == ["error"]
        assert len(fake.jobs) == 2
        assert fake.credits_left() == 5
        assert fake.requests["402"] == 1
        assert (await submit(http, fake, key="sk_test_b"))[0] == 200
        assert fake.credits_left("sk_test_b") == 15

        fake.set_credits(fake.api_key, 10)
        assert (await submit(http, fake))[0] == 200
        assert fake.credits_left() == 0
        fake.set_credits(fake.api_key, None)
        assert (await submit(http, fake))[0] == 200
        assert fake.credits_left() is None
        with pytest.raises(KeyError):
            fake.set_credits("sk_test_unknown", 5)


# -- injected faults --------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after_before_auth(
    http: aiohttp.ClientSession,
) -> None:
    """Over the token bucket (burst max(1, rate)) every request, keyed or not, gets 429 with an
    integer Retry-After >= 1 and {"error"}; tokens refill at rate_limit per second, and setting
    a new rate_limit starts from a full bucket."""
    async with FakeLipsyncServer(rate_limit=4) as fake:
        for _ in range(4):
            status, _ = await get_job(http, fake, str(uuid.uuid4()))
            assert status == 404
        async with http.get(f"{fake.base_url}/jobs/x") as response:  # no key: still 429 first
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert list(await response.json()) == ["error"]
        assert fake.requests["429"] == 1
        await asyncio.sleep(0.3)  # > 1 token at 4/s
        assert (await submit(http, fake))[0] == 200
        fake.rate_limit = None
        for _ in range(10):
            assert (await get_job(http, fake, str(uuid.uuid4())))[0] == 404
        fake.rate_limit = 2  # a new limit starts with a full bucket (burst 2)
        for _ in range(2):
            assert (await get_job(http, fake, str(uuid.uuid4())))[0] == 404
        assert (await get_job(http, fake, str(uuid.uuid4())))[0] == 429


@pytest.mark.parametrize("server_error_status", [503, 500])
async def test_injected_server_error_creates_nothing(
    http: aiohttp.ClientSession, server_error_status: int
) -> None:
    """server_error_rate answers before auth, validation or any job: a 5xx {"error"}, nothing
    created or charged."""
    async with FakeLipsyncServer(
        server_error_rate=1.0, server_error_status=server_error_status, credits=100
    ) as fake:
        status, body = await submit(http, fake)
        assert status == server_error_status
        assert list(body) == ["error"]
        async with http.post(f"{fake.base_url}/lipsync-image", data=b"junk") as response:
            assert response.status == server_error_status
        assert fake.jobs == {}
        assert fake.credits_left() == 100
        assert fake.requests["5xx"] == 2


async def test_dropped_submit_created_the_job(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_rate creates and charges the job, then closes the connection with no answer: the
    client sees a disconnect, yet the job exists and can be read; the server logs no error."""
    caplog.set_level(logging.DEBUG)
    async with FakeLipsyncServer(drop_rate=1.0, credits=100, job_duration=0) as fake:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await submit(http, fake)
        assert fake.requests["dropped"] == 1
        [job] = fake.jobs.values()
        assert fake.credits_left() == 90
        status, state = await get_job(http, fake, job.id)
        assert (status, state["status"]) == (200, "completed")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- webhooks ---------------------------------------------------------------------------------


async def test_webhook_delivers_the_final_state(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A submit with a webhook gets one POST of the exact seven-key final JSON
    (application/json) once the job finishes, for completed and failed jobs alike."""
    _, ok = await submit(http, fake, webhook=receiver.url)
    _, ko = await submit(http, fake, "lipsync-video", webhook=receiver.url, prompt="[fail]")
    await fake.wait_deliveries(2)
    by_id = {body["id"]: body for body in receiver.bodies}
    assert list(by_id[ok["id"]]) == STATE_KEYS
    assert by_id[ok["id"]] == fake.job_state(ok["id"])
    assert by_id[ok["id"]]["status"] == "completed"
    assert by_id[ko["id"]] == fake.job_state(ko["id"])
    assert by_id[ko["id"]]["status"] == "failed"
    assert receiver.content_types == ["application/json"] * 2
    for delivery in fake.deliveries:
        assert isinstance(delivery, Delivery)
        assert (delivery.url, delivery.status, delivery.attempt, delivery.duplicate) == (
            receiver.url,
            200,
            1,
            False,
        )
        assert delivery.at >= fake.jobs[delivery.job_id].finishes_at


async def test_webhook_duplicate_is_sent_twice(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """webhook_duplicate_rate sends the same body a second time, marked duplicate."""
    async with FakeLipsyncServer(job_duration=0, webhook_duplicate_rate=1.0) as fake:
        await submit(http, fake, webhook=receiver.url)
        await fake.wait_deliveries(2)
    assert receiver.bodies[0] == receiver.bodies[1]
    assert [d.duplicate for d in fake.deliveries] == [False, True]


async def test_webhook_early_arrives_before_the_submit_answer(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """webhook_early_rate completes the job at once and POSTs its delivery, awaited, before the
    submit is answered: the receiver already holds it when the answer arrives."""
    async with FakeLipsyncServer(job_duration=60, webhook_early_rate=1.0) as fake:
        status, answer = await submit(http, fake, webhook=receiver.url)
        answered_at = time.monotonic()
        assert status == 200
        assert answer["status"] == "processing"  # the submit answer itself never changes
        assert [body["id"] for body in receiver.bodies] == [answer["id"]]
        assert receiver.bodies[0]["status"] == "completed"
        assert receiver.received_at[0] < answered_at
        assert fake.jobs[answer["id"]].status == "completed"


async def test_webhook_loss_sends_nothing(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """webhook_loss_rate drops a delivery entirely: no attempt, the job id in lost_deliveries,
    and the job still completes for polling."""
    async with FakeLipsyncServer(job_duration=0.02, webhook_loss_rate=1.0) as fake:
        _, answer = await submit(http, fake, webhook=receiver.url)
        state = await wait_final(http, fake, answer["id"])
        await asyncio.sleep(0.1)
        assert state["status"] == "completed"
        assert fake.deliveries == []
        assert fake.lost_deliveries == [answer["id"]]
        assert receiver.bodies == []
        with pytest.raises(TimeoutError):
            await fake.wait_deliveries(1, timeout=0.05)


async def test_webhook_retries_non_2xx_with_backoff(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A delivery answered non-2xx is re-POSTed with growing backoff until a 2xx, and gives up
    after webhook_retries re-POSTs."""
    async with FakeLipsyncServer(job_duration=0) as fake:
        receiver.answers = [500, 502]
        await submit(http, fake, webhook=receiver.url)
        await fake.wait_deliveries(3)
        assert [(d.attempt, d.status) for d in fake.deliveries] == [(1, 500), (2, 502), (3, 200)]
        gaps = [b.at - a.at for a, b in zip(fake.deliveries, fake.deliveries[1:], strict=False)]
        assert gaps[0] >= 0.05
        assert gaps[1] >= 0.1

        fake.deliveries.clear()
        fake.webhook_retries = 1
        receiver.answers = [500, 500, 500]
        await submit(http, fake, webhook=receiver.url)
        await fake.wait_deliveries(2)
        await asyncio.sleep(0.2)
        assert [(d.attempt, d.status) for d in fake.deliveries] == [(1, 500), (2, 500)]


async def test_webhook_connection_error_is_retried_and_recorded(
    http: aiohttp.ClientSession,
) -> None:
    """A delivery to a receiver that refuses connections is recorded with status None and
    retried like a non-2xx."""
    async with FakeLipsyncServer(job_duration=0, webhook_retries=2) as fake:
        # A port that was free a moment ago: nothing listens on it.
        async with FakeLipsyncServer() as gone:
            dead_url = f"{gone.url}/hook"
        await submit(http, fake, webhook=dead_url)
        await fake.wait_deliveries(3)
        assert [(d.attempt, d.status) for d in fake.deliveries] == [(1, None), (2, None), (3, None)]


async def test_webhook_delay_postpones_delivery(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """webhook_delay adds that many seconds between a job's completion and its delivery."""
    async with FakeLipsyncServer(job_duration=0.02, webhook_delay=0.3) as fake:
        _, answer = await submit(http, fake, webhook=receiver.url)
        await fake.wait_deliveries(1)
        assert fake.deliveries[0].at >= fake.jobs[answer["id"]].finishes_at + 0.3


async def test_complete_and_fail_job_force_the_outcome(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """complete_job/fail_job finish a processing job now and deliver its webhook; a job that
    is already final cannot be changed."""
    async with FakeLipsyncServer(job_duration=60) as fake:
        _, one = await submit(http, fake, webhook=receiver.url)
        _, two = await submit(http, fake, webhook=receiver.url)
        assert fake.job_state(one["id"])["status"] == "processing"
        fake.complete_job(one["id"])
        fake.fail_job(two["id"], "No face detected")
        await fake.wait_deliveries(2)
        states = {body["id"]: body for body in receiver.bodies}
        assert states[one["id"]]["status"] == "completed"
        assert states[two["id"]]["status"] == "failed"
        assert states[two["id"]]["error"] == "No face detected"
        assert (await get_job(http, fake, two["id"]))[1] == states[two["id"]]
        with pytest.raises(ValueError, match="already completed"):
            fake.fail_job(one["id"])
        with pytest.raises(KeyError):
            fake.complete_job("nope")


# -- output files -----------------------------------------------------------------------------


async def test_output_is_a_real_mp4(fake: FakeLipsyncServer, http: aiohttp.ClientSession) -> None:
    """A completed job's output URL serves the shipped MP4 (video/mp4, Content-Length, ftyp box
    first), without a key; before completion, for unknown ids and other names, 404."""
    _, answer = await submit(http, fake)
    output = f"{fake.url}/files/{answer['id']}.mp4"
    async with http.get(output) as response:
        assert response.status == 404
    state = await wait_final(http, fake, answer["id"])
    assert state["output"] == output
    async with http.get(output) as response:
        assert response.status == 200
        assert response.content_type == "video/mp4"
        data = await response.read()
        assert int(response.headers["Content-Length"]) == len(data)
    assert data[4:8] == b"ftyp"
    assert 1000 < len(data) < 16_000
    assert data == files("lipsync_async.testing").joinpath("sample.mp4").read_bytes()
    for missing in (f"{uuid.uuid4()}.mp4", f"{answer['id']}.mov"):
        async with http.get(f"{fake.url}/files/{missing}") as response:
            assert response.status == 404


async def test_failed_job_has_no_file(fake: FakeLipsyncServer, http: aiohttp.ClientSession) -> None:
    """A failed job's would-be output path is 404: only completed jobs have files."""
    _, answer = await submit(http, fake, prompt="[fail]")
    await wait_final(http, fake, answer["id"])
    async with http.get(f"{fake.url}/files/{answer['id']}.mp4") as response:
        assert response.status == 404


# -- inspection, timing, lifecycle ------------------------------------------------------------


async def test_request_counters_per_route_and_outcome(
    fake: FakeLipsyncServer, http: aiohttp.ClientSession
) -> None:
    """requests counts every request per route and every refusal per status."""
    for endpoint in ENDPOINTS:
        await submit(http, fake, endpoint)
    await submit(http, fake, key="sk_bad")
    await submit(http, fake, resolution="4k")
    job_id = next(iter(fake.jobs))
    await get_job(http, fake, job_id)
    await get_job(http, fake, "missing")
    async with http.get(f"{fake.url}/files/{job_id}.mp4"):
        pass
    assert fake.requests == {
        "POST /lipsync-video": 1,
        "POST /lipsync-image": 3,
        "POST /lipsync-image-multi": 1,
        "GET /jobs": 2,
        "GET /files": 1,
        "401": 1,
        "400": 1,
        "404": 2,  # the unknown job and the file of a job still processing
    }
    assert list(fake.jobs) == [job.id for job in fake.jobs.values()]
    assert all(isinstance(job, FakeJob) for job in fake.jobs.values())
    assert fake.api_key not in repr(fake)
    assert fake.api_key not in repr(fake.jobs[job_id])


@pytest.mark.parametrize(("order", "factor"), [("meanwhile", 1), ("left_right", 2)])
async def test_realistic_duration_is_10_to_30_s_per_output_second(
    http: aiohttp.ClientSession, order: str, factor: int
) -> None:
    """realistic=True makes a job take 10 to 30 s per second of output (clip_seconds, twice
    for sequential multi-speaker orders)."""
    async with FakeLipsyncServer(realistic=True, clip_seconds=2.0, seed=1) as fake:
        for _ in range(5):
            await submit(http, fake, "lipsync-image-multi", order=order)
        for job in fake.jobs.values():
            assert 20 * factor <= job.finishes_at - job.created_at <= 60 * factor
            assert job.status == "processing"


async def test_close_leaves_no_task_behind(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    """close() cancels scheduled and in-flight deliveries and closes its session: no task is
    left pending once the server is closed."""
    before = asyncio.all_tasks()
    fake = FakeLipsyncServer(job_duration=0, webhook_retries=50)
    await fake.start()
    receiver.answers = [500] * 100  # keeps one delivery retrying while we close
    await submit(http, fake, webhook=receiver.url)
    fake.webhook_delay = 30
    await submit(http, fake, webhook=receiver.url)  # parked in the scheduler
    await fake.wait_deliveries(1)
    await fake.close()
    await fake.close()  # idempotent
    assert asyncio.all_tasks() == before
    assert fake.port > 0


async def test_pytest_fixture_yields_a_started_emulator(
    lipsync_emulator: FakeLipsyncServer, http: aiohttp.ClientSession
) -> None:
    """The package's pytest plugin provides lipsync_emulator: a started server, ready to take
    a submit with its own key."""
    assert lipsync_emulator.base_url.endswith("/api/v1")
    assert lipsync_emulator.api_key.startswith("sk_test_")
    status, answer = await submit(http, lipsync_emulator)
    assert status == 200
    assert answer["id"] in lipsync_emulator.jobs


async def test_cli_emulator_serves_until_sigint(http: aiohttp.ClientSession) -> None:
    """`lipsync-async emulator` prints its base URL and key, serves requests with that key,
    and exits 130 on SIGINT (Ctrl-C), as the README's exit code table says."""
    script = Path(sys.executable).with_name("lipsync-async")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from lipsync_async.cli import main; main()"]
    )
    process = await asyncio.create_subprocess_exec(
        *command,
        "emulator",
        "--port",
        "0",
        "--api-key",
        "sk_test_cli",
        "--credits",
        "100",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        printed: list[str] = []
        while not any("/api/v1" in line for line in printed):
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            assert line, "the CLI exited before printing its URL"
            printed.append(line.decode())
        base_url = next(line for line in printed if "/api/v1" in line).split()[-1]
        printed.append((await asyncio.wait_for(process.stdout.readline(), 5)).decode())
        assert "sk_test_cli" in printed[-1]
        async with http.post(
            f"{base_url}/lipsync-image",
            json={"formState": FORMS["lipsync-image"]},
            headers=auth("sk_test_cli"),
        ) as response:
            assert response.status == 200
            assert json.loads(await response.read())["status"] == "processing"
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, stderr.decode()
    assert b"stopped" in stdout
