"""WebhookReceiver: real POSTs from the emulator (and forged ones) over loopback sockets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipsync_async import (
    JobFailed,
    JobState,
    JobStatus,
    LipsyncClient,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory


def _state(job_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": job_id,
        "model": "lipsync-image",
        "status": status,
        "output": "https://cdn.example.com/o.mp4" if status == "completed" else None,
        "error": "",
        "executionTime": 10,
        "timings": None,
    }


@pytest.fixture
async def hooked(fake: FakeLipsyncServer, make_client: ClientFactory) -> LipsyncClient:
    """A client whose jobs resolve by webhook; fallback polling only after 5 s."""
    client: LipsyncClient = await make_client(webhook=WebhookReceiver(), webhook_grace=5.0)
    return client


async def test_deliveries_resolve_without_reads(
    fake: FakeLipsyncServer, hooked: LipsyncClient
) -> None:
    """500 jobs resolve from deliveries with zero status reads; each delivery matched once."""
    jobs = await asyncio.gather(
        *(hooked.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(500))
    )
    states = await asyncio.gather(*(j.wait(timeout=10) for j in jobs))
    assert {s.status for s in states} == {JobStatus.COMPLETED}
    assert fake.requests["GET /jobs"] == 0
    receiver = hooked.webhook
    assert receiver is not None
    assert receiver.matched == 500
    # Each submit carries the receiver's URL and a correlation token of its own.
    hooks = [fake.jobs[j.id].webhook or "" for j in jobs]
    assert all(h.startswith(receiver.url + "?t=") for h in hooks)
    assert len(set(hooks)) == 500


async def test_failed_job_by_delivery(fake: FakeLipsyncServer, hooked: LipsyncClient) -> None:
    """A delivery saying failed raises JobFailed to the awaiter."""
    job = await hooked.lipsync_image(image=IMAGE, audio=AUDIO, prompt="[fail]")
    with pytest.raises(JobFailed):
        await job.wait(timeout=5)
    assert fake.requests["GET /jobs"] == 0


async def test_duplicate_and_early_deliveries(
    fake: FakeLipsyncServer, hooked: LipsyncClient
) -> None:
    """Duplicated deliveries are idempotent; deliveries before the submit answer are matched."""
    fake.webhook_duplicate_rate = 1.0
    fake.webhook_early_rate = 0.5
    jobs = await asyncio.gather(
        *(hooked.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(40))
    )
    states = await asyncio.gather(*(j.wait(timeout=10) for j in jobs))
    assert all(s.status is JobStatus.COMPLETED for s in states)
    assert fake.requests["GET /jobs"] == 0
    assert sum(d.duplicate for d in fake.deliveries) > 0
    assert len({j.id for j in jobs}) == 40


async def test_lost_deliveries_fall_back_to_polling(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A job whose delivery never comes is read after webhook_grace and resolves."""
    fake.webhook_loss_rate = 1.0
    client = await make_client(webhook=WebhookReceiver(), webhook_grace=0.2)
    jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(10)]
    states = await asyncio.gather(*(j.wait(timeout=10) for j in jobs))
    assert all(s.status is JobStatus.COMPLETED for s in states)
    assert 10 <= fake.requests["GET /jobs"] <= 20


async def test_delayed_delivery_still_resolves(
    fake: FakeLipsyncServer, hooked: LipsyncClient
) -> None:
    """A delivery that comes late (but within the grace) resolves with no read."""
    fake.webhook_delay = 0.3
    job = await hooked.lipsync_image(image=IMAGE, audio=AUDIO)
    await job.wait(timeout=5)
    assert fake.requests["GET /jobs"] == 0


async def test_processing_delivery_updates_but_does_not_resolve(hooked: LipsyncClient) -> None:
    """A 'processing' delivery updates .state without resolving the job."""
    receiver = hooked.webhook
    assert receiver is not None
    job = hooked.job("job-processing-1")
    async with aiohttp.ClientSession() as s:
        update = _state(job.id, "processing") | {"timings": {"step": 1}}
        async with s.post(receiver.url, json=update) as r:
            assert r.status == 200
        assert job.state is not None and job.state.timings == {"step": 1}
        assert not job.done()
        async with s.post(receiver.url, json=_state(job.id)) as r:
            assert r.status == 200
    assert (await job).status is JobStatus.COMPLETED


async def _post(url: str, method: str = "POST", **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kwargs) as r:
        return r.status, await r.text()


@pytest.mark.parametrize(
    ("suffix", "method", "kwargs", "status"),
    [
        ("", "POST", {"json": _state("J")}, 404),  # no secret
        ("/wrong-secret-wrong-secret", "POST", {"json": _state("J")}, 404),
        ("<secret>", "GET", {}, 405),
        ("<secret>", "PUT", {"json": _state("J")}, 405),
        ("<secret>", "POST", {"data": b"{not json"}, 400),
        ("<secret>", "POST", {"json": [_state("J")]}, 400),
        ("<secret>", "POST", {"json": {"status": "completed"}}, 400),
        ("<secret>", "POST", {"json": {"id": "J"}}, 400),
        ("<secret>", "POST", {"data": b"\xff\xfe"}, 400),
        ("<secret>", "POST", {"data": io.BytesIO(b"x" * (4 * 1024 * 1024))}, 413),
    ],
)
async def test_forged_and_malformed_requests_are_refused(
    hooked: LipsyncClient, suffix: str, method: str, kwargs: dict[str, Any], status: int
) -> None:
    """Requests without the secret, other methods, bad bodies: 4xx, and the job is untouched."""
    receiver = hooked.webhook
    assert receiver is not None
    job = hooked.job("J")
    base = receiver.url.rsplit("/", 1)[0]
    url = receiver.url if suffix == "<secret>" else base + suffix
    got, _ = await _post(url, method, **kwargs)
    assert got == status
    assert not job.done() and job.state is None


async def test_unknown_id_is_acknowledged(
    hooked: LipsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery for an unknown id gets 200 (so the service stops retrying) and a log line."""
    caplog.set_level(logging.INFO, logger="lipsync_async")
    receiver = hooked.webhook
    assert receiver is not None
    status, _ = await _post(receiver.url, json=_state("nobody-knows-me"))
    assert status == 200
    assert "nobody-knows-me" in caplog.text
    assert receiver.url.rsplit("/", 1)[1] not in caplog.text  # never the secret


async def test_attach_to_own_app(fake: FakeLipsyncServer) -> None:
    """receiver.attach(app) serves deliveries from the user's own aiohttp application."""

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = web.Application()
    app.router.add_get("/health", health)
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}")
    receiver.attach(app)  # before the app starts: aiohttp freezes the router then
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, webhook=receiver, webhook_grace=5
        ) as c:
            job = await c.lipsync_image(image=IMAGE, audio=AUDIO)
            assert (await job.wait(timeout=5)).status is JobStatus.COMPLETED
        assert fake.requests["GET /jobs"] == 0
        assert (await _post(f"http://127.0.0.1:{port}/health", "GET"))[0] == 200
    finally:
        await runner.cleanup()


async def test_verify_refuses_forged_completion(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """With verify=True a forged 'completed' delivery is checked against the API and ignored.

    The genuine delivery that follows within ``webhook_grace`` of that read is not read again
    (at most one verification read per job per grace): the fallback poll resolves the job.
    """
    fake.job_duration = 10
    client = await make_client(webhook=WebhookReceiver(verify=True), webhook_grace=0.5)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    receiver = client.webhook
    assert receiver is not None
    forged = _state(job.id) | {"output": "https://evil.example.com/x.mp4"}
    status, _ = await _post(receiver.url, json=forged)
    assert status == 503  # the API says processing: the service should deliver again later
    assert not job.done()
    assert job.state is not None and job.state.status is JobStatus.PROCESSING
    fake.complete_job(job.id)
    state = await job.wait(timeout=5)
    assert state.output is not None and "evil" not in state.output


async def test_closing_client_answers_503(fake: FakeLipsyncServer) -> None:
    """After the client closes, a receiver it did not start answers deliveries with 503."""
    receiver = WebhookReceiver()
    async with receiver:
        async with LipsyncClient(fake.api_key, base_url=fake.base_url, webhook=receiver):
            pass
        status, _ = await _post(receiver.url, json=_state("late"))
        assert status == 503


async def test_close_while_deliveries_arrive(fake: FakeLipsyncServer) -> None:
    """Closing the client while the emulator delivers raises nothing and leaves no 500."""
    fake.webhook_delay = 0.05
    async with LipsyncClient(fake.api_key, base_url=fake.base_url, webhook=WebhookReceiver()) as c:
        await asyncio.gather(*(c.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(50)))
        await asyncio.sleep(0.06)
    await asyncio.sleep(0.3)
    assert all(d.status != 500 for d in fake.deliveries)


async def test_standalone_iteration_and_callback() -> None:
    """Without a client, deliveries come out of `async for` or go to on_delivery."""
    got: list[JobState] = []
    async with WebhookReceiver(on_delivery=got.append) as cb:
        assert (await _post(cb.url, json=_state("a")))[0] == 200
    assert [s.id for s in got] == ["a"]
    async with WebhookReceiver() as rx:
        assert (await _post(rx.url, json=_state("b")))[0] == 503  # nobody listening yet
        stream = rx.deliveries()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        assert (await _post(rx.url, json=_state("c", "failed")))[0] == 200
        state = await asyncio.wait_for(first, 5)
        await stream.aclose()
    assert (state.id, state.status) == ("c", JobStatus.FAILED)


def test_public_url_must_be_https_unless_loopback() -> None:
    """Non-loopback http public URLs are refused unless allow_insecure is set."""
    with pytest.raises(ValidationError, match="public_url"):
        WebhookReceiver("http://hooks.example.com")
    assert WebhookReceiver("http://hooks.example.com", allow_insecure=True).url
    assert WebhookReceiver("http://[::1]:8080").url.startswith(
        "http://[::1]:8080/webhooks/lipsync/"
    )
    rx = WebhookReceiver("https://lb.example.com/prefix/", secret="s" * 20, path="/hooks")
    assert rx.url == "https://lb.example.com/prefix/hooks/" + "s" * 20
    assert "s" * 20 not in repr(rx)
    with pytest.raises(ValidationError, match="secret"):
        WebhookReceiver(secret="short")


async def test_shared_secret_two_receivers() -> None:
    """Two receivers configured with one secret both accept the same path."""
    secret = "shared-secret-for-workers"
    async with WebhookReceiver(secret=secret, on_delivery=lambda s: None) as a:
        async with WebhookReceiver(secret=secret, on_delivery=lambda s: None) as b:
            assert a.url.rsplit("/", 1)[1] == b.url.rsplit("/", 1)[1] == secret
            assert (await _post(a.url, json=_state("x")))[0] == 200
            assert (await _post(b.url, json=_state("x")))[0] == 200


json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(st.binary(max_size=200), json_bodies.map(lambda v: json.dumps(v).encode())),
    ctype=st.sampled_from(
        ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
    ),
    path=st.sampled_from(["<secret>", "", "/x", "/../..", "/%00"]),
)
def test_fuzz_handler_never_500_never_wrong_resolution(body: bytes, ctype: str, path: str) -> None:
    """Arbitrary bodies, content types and paths: never a 500, a pending job never resolved."""

    async def run() -> None:
        resolved: list[JobState] = []
        async with WebhookReceiver(on_delivery=resolved.append) as rx:
            base = rx.url.rsplit("/", 1)[0]
            url = rx.url if path == "<secret>" else base + path
            headers = {"Content-Type": ctype} if ctype else {}
            status, _ = await _post(url, data=body, headers=headers)
        assert status < 500
        if status == 200:
            data = json.loads(body)
            assert [s.id for s in resolved] == [data["id"]]
        else:
            assert resolved == []

    asyncio.run(run())
