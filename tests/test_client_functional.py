"""LipsyncClient against the emulator (and scripted servers) over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lipsync_async import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ClientClosedError,
    InsufficientCreditsError,
    JobFailed,
    JobStatus,
    JobTimeoutError,
    LipsyncClient,
    LipsyncImageRequest,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    ValidationError,
)
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from ._waiting import until
from .conftest import AUDIO, IMAGE, VIDEO, ClientFactory


async def test_three_endpoints_resolve(fake: FakeLipsyncServer, make_client: ClientFactory) -> None:
    """Each endpoint's submit returns a Job that resolves to a completed JobState."""
    client = await make_client()
    jobs = [
        await client.lipsync_video(video=VIDEO, audio=AUDIO, resolution="720p"),
        await client.lipsync_image(image=IMAGE, audio=AUDIO, seed=42),
        await client.lipsync_image_multi(
            image=IMAGE, left_audio=AUDIO, right_audio=AUDIO, order="left_right"
        ),
    ]
    states = [await job for job in jobs]
    assert [s.model for s in states] == ["lipsync-video", "lipsync-image", "lipsync-image-multi"]
    assert all(s.status is JobStatus.COMPLETED and s.output for s in states)
    assert [j.state for j in jobs] == states
    assert fake.jobs[jobs[1].id].form_state == {"image": IMAGE, "audio": AUDIO, "seed": 42}


async def test_fan_out_reads_per_job_within_ideal(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """1,000 jobs resolve through one scheduler with <= ceil(duration/interval) + 1 reads each."""
    fake.job_duration = 0.3
    client = await make_client(poll_interval=0.1, max_in_flight=64)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(1000))
    )
    states = await asyncio.gather(*jobs)
    assert {s.status for s in states} == {JobStatus.COMPLETED}
    assert len(fake.jobs) == 1000
    reads = fake.requests["GET /jobs"]
    ideal = math.ceil(0.3 / 0.1)
    assert reads / 1000 <= ideal + 1, reads
    assert client.stats["pending"] == 0


async def test_failed_job_raises_job_failed(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A job the service fails raises JobFailed carrying the failed state and its error."""
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt="please [fail]")
    with pytest.raises(JobFailed) as info:
        await job
    assert info.value.state.status is JobStatus.FAILED
    assert info.value.state.error
    again = job.exception()
    assert job.done() and isinstance(again, JobFailed) and again.state == info.value.state


async def test_wrong_key_is_authentication_error(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """401 on submit raises AuthenticationError, not retried, without the key in the message."""
    client = await make_client(api_key="sk_wrong_secret_key_123")
    with pytest.raises(AuthenticationError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert info.value.status == 401
    assert "sk_wrong_secret_key_123" not in str(info.value)
    assert fake.requests["401"] == 1


async def test_out_of_credits_is_not_retried(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """402 raises InsufficientCreditsError after exactly one request."""
    fake.set_credits(fake.api_key, 1)
    client = await make_client()
    with pytest.raises(InsufficientCreditsError):
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert fake.requests["POST /lipsync-image"] == 1
    assert not fake.jobs


async def test_validation_happens_before_any_request(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Bad arguments raise ValidationError and nothing reaches the service."""
    client = await make_client()
    with pytest.raises(ValidationError, match="resolution"):
        await client.lipsync_image(image=IMAGE, audio=AUDIO, resolution="4k")
    with pytest.raises(ValidationError, match="seed"):
        await client.lipsync_video(video=VIDEO, audio=AUDIO, seed=False)
    assert sum(fake.requests.values()) == 0


async def test_rate_limit_storm_pauses_everyone_and_all_resolve(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Under a 429 storm every job still resolves, and the client-wide pause keeps 429s few."""
    fake.rate_limit = 100.0
    # The bucket alone throttles only a client that outruns 100 requests/s, which a loaded
    # 2-core machine may not: the first three answers are 429s whatever the machine's speed.
    fake.throttle_next = 3
    client = await make_client(max_in_flight=32, max_retries=10)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(150))
    )
    await asyncio.gather(*jobs)
    assert len(fake.jobs) == 150  # no duplicate from a retried submit
    assert client.stats["rate_limited"] > 0
    total = sum(v for k, v in fake.requests.items() if k.startswith(("POST", "GET")))
    assert fake.requests["429"] < total / 2  # paused, not hammering


async def test_server_errors_are_retried_without_duplicates(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """503 bursts on submits and reads are retried; each submit creates exactly one job."""
    fake.server_error_rate = 0.3
    client = await make_client(max_retries=12)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(100))
    )
    await asyncio.gather(*jobs)
    assert fake.requests["5xx"] > 0
    assert len(fake.jobs) == 100
    assert client.stats["retries"] >= fake.requests["5xx"] - 1


async def test_dropped_submit_raises_uncertain_never_resubmits(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A connection dropped after the job was created raises SubmissionUncertainError, once."""
    fake.drop_rate = 1.0
    client = await make_client()
    req = LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=7)
    with pytest.raises(SubmissionUncertainError) as info:
        await client.submit(req)
    assert info.value.request is req
    assert len(fake.jobs) == 1
    assert fake.requests["POST /lipsync-image"] == 1


async def test_submit_to_refused_port_is_retried_then_connection_error() -> None:
    """Connection refused means the service never saw it: retried, then APIConnectionError."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with LipsyncClient(
        "sk_x", base_url=f"http://127.0.0.1:{port}/api/v1", max_retries=2, backoff_base=0.01
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.lipsync_image(image=IMAGE, audio=AUDIO)
        assert not isinstance(info.value, SubmissionUncertainError)
        assert client.stats["retries"] == 2


async def test_submit_timeout_is_uncertain() -> None:
    """A submit whose answer does not come in time is uncertain and sent only once."""

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"id": "late", "status": "processing"})

    async with RawServer(hang) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, timeout=0.2) as client:
            with pytest.raises(SubmissionUncertainError, match="no answer in time"):
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
        assert len(srv.hits) == 1


@pytest.mark.parametrize(
    ("status", "body", "ctype", "error", "excerpt"),
    [
        # A 2xx took the request: unreadable, it is uncertain (APIError showing it is the cause)
        (200, b"<html>oops</html>", "text/html", SubmissionUncertainError, "oops"),
        (
            200,
            b'{"status": "processing"}',
            "application/json",
            SubmissionUncertainError,
            "no job 'id'",
        ),
        (400, b'{"error": "formState.audio is bad"}', "application/json", APIError, "audio is bad"),
        (
            502,
            b"<html><h1>502 Bad Gateway</h1></html>",
            "text/html",
            SubmissionUncertainError,
            "HTTP 502",
        ),
        (422, b"[]", "application/json", APIError, "422"),
    ],
)
async def test_malformed_and_error_answers(
    status: int, body: bytes, ctype: str, error: type[Exception], excerpt: str
) -> None:
    """Malformed or error answers raise the mapped error showing what came back; never KeyError."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=ctype)

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, max_retries=0) as client:
            with pytest.raises(error) as info:
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
    message = str(info.value) + str(getattr(info.value, "__cause__", ""))
    assert excerpt in message
    if status < 300:
        assert isinstance(info.value.__cause__, APIError)


async def test_html_502_on_reads_is_server_error_after_retries() -> None:
    """A status read that keeps getting an HTML 502 retries, then raises ServerError with it."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    async with RawServer(answer) as srv:
        async with LipsyncClient(
            "sk_x", base_url=srv.base_url, max_retries=2, backoff_base=0.01
        ) as client:
            with pytest.raises(ServerError, match="Bad Gateway") as info:
                await client.get_job("abc")
        assert info.value.status == 502
        assert len(srv.hits) == 3


async def test_retry_after_is_honoured_on_reads() -> None:
    """A 429 with Retry-After delays the retry by at least that long."""
    calls: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "0.3"}
            )
        return web.json_response(
            {
                "id": "abc",
                "model": "lipsync",
                "status": "processing",
                "output": None,
                "error": "",
                "executionTime": None,
                "timings": None,
            }
        )

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url) as client:
            state = await client.get_job("abc")
    assert state.status is JobStatus.PROCESSING
    assert calls[1] - calls[0] >= 0.3


async def test_rate_limit_error_when_retries_exhausted() -> None:
    """Exhausted retries on 429 raise RateLimitError with retry_after."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "slow"}, status=429, headers={"Retry-After": "0"})

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, max_retries=1) as client:
            with pytest.raises(RateLimitError) as info:
                await client.get_job("abc")
    assert info.value.retry_after == 0


async def test_wait_deadline_keeps_job(fake: FakeLipsyncServer, make_client: ClientFactory) -> None:
    """wait(timeout) raises JobTimeoutError; the job stays tracked and resolves later."""
    fake.job_duration = 0.4
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    with pytest.raises(JobTimeoutError) as info:
        await job.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError) and info.value.job_id == job.id
    assert not job.done()
    state = await job.wait(timeout=5)
    assert state.status is JobStatus.COMPLETED


async def test_cancelling_one_awaiter_spares_others(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Cancelling one task awaiting a Job leaves the job and its other awaiters intact."""
    fake.job_duration = 0.2
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    first = asyncio.create_task(job.wait())
    second = asyncio.create_task(job.wait())
    await asyncio.sleep(0)  # both tasks are now awaiting the job
    first.cancel()
    state = await second
    assert first.cancelled()
    assert state.status is JobStatus.COMPLETED
    assert await job is state


async def test_job_cancel_stops_tracking(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """job.cancel() ends tracking: awaiters get CancelledError and no more reads are made."""
    fake.job_duration = 0.5
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    waiter = asyncio.create_task(job.wait())
    await asyncio.sleep(0)  # the task is now awaiting the job
    assert job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    reads = fake.requests["GET /jobs"]
    await asyncio.sleep(0.2)
    assert fake.requests["GET /jobs"] == reads
    assert job.cancelled() and not job.cancel()


async def test_attach_by_id_from_another_client(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """client.job(id) makes no request until awaited, then resolves the job submitted elsewhere."""
    first = await make_client()
    job = await first.lipsync_image(image=IMAGE, audio=AUDIO)
    second = await make_client()
    before = fake.requests["GET /jobs"]
    attached = second.job(job.id)
    assert attached.state is None and fake.requests["GET /jobs"] == before
    state = await attached
    assert state.id == job.id and state.status is JobStatus.COMPLETED
    assert second.job(job.id) is not attached  # finished jobs are no longer tracked


async def test_attach_unknown_id_ends_with_not_found(make_client: ClientFactory) -> None:
    """Awaiting an attached id the service does not know raises NotFoundError."""
    client = await make_client()
    with pytest.raises(NotFoundError):
        await client.job("00000000-0000-0000-0000-000000000000").wait(timeout=5)


async def test_get_job_reads_state(fake: FakeLipsyncServer, make_client: ClientFactory) -> None:
    """get_job returns the current state; 'lipsync' model while processing."""
    fake.job_duration = 5
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await client.get_job(job.id)
    assert (state.status, state.model, state.output) == (JobStatus.PROCESSING, "lipsync", None)
    job.cancel()


async def test_as_completed_yields_in_finish_order(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """as_completed yields every job once, failures included, earliest first."""
    client = await make_client()
    ok = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(5)]
    bad = await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt="[fail]")
    seen = [job async for job in client.as_completed([*ok, bad, ok[0]])]
    assert sorted(j.id for j in seen) == sorted(j.id for j in [*ok, bad])
    assert isinstance(bad.exception(), JobFailed)


async def test_as_completed_deadline(fake: FakeLipsyncServer, make_client: ClientFactory) -> None:
    """as_completed(timeout=) raises JobTimeoutError when jobs remain; they stay tracked."""
    fake.job_duration = 5
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    with pytest.raises(JobTimeoutError):
        async for _ in client.as_completed([job], timeout=0.1):
            pass
    assert not job.done() and client.stats["pending"] == 1
    job.cancel()


async def test_download_atomic_with_progress(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """download streams the output to the path, reports progress, leaves no temp file."""
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    seen: list[tuple[int, int | None]] = []
    path = await client.download(
        job, tmp_path / "out.mp4", progress=lambda d, t: seen.append((d, t))
    )
    data = path.read_bytes()
    assert data[4:8] == b"ftyp"
    assert seen and seen[-1] == (len(data), len(data))
    assert os.listdir(tmp_path) == ["out.mp4"]
    into_dir = await client.download(job.state, tmp_path)
    assert into_dir == tmp_path / f"{job.id}.mp4"


async def test_failed_download_leaves_nothing(tmp_path: Path) -> None:
    """A download cut mid-stream raises APIConnectionError and leaves no partial file."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()
        return resp

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url) as client:
            with pytest.raises(APIConnectionError):
                await client.download(f"http://127.0.0.1:{srv.port}/x.mp4", tmp_path / "o.mp4")
            with pytest.raises(ValidationError):
                await client.download("file:///etc/passwd", tmp_path / "p.mp4")
    assert os.listdir(tmp_path) == []


async def test_download_sends_key_only_to_api_origin(tmp_path: Path) -> None:
    """The Authorization header goes to the API's origin, never to another host's URL."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"data")

    async with RawServer(answer) as api, RawServer(answer) as cdn:
        async with LipsyncClient("sk_topsecret", base_url=api.base_url) as client:
            await client.download(f"http://127.0.0.1:{cdn.port}/o.mp4", tmp_path / "a")
            await client.download(f"http://127.0.0.1:{api.port}/o.mp4", tmp_path / "b")
    assert seen == [None, "Bearer sk_topsecret"]


async def test_borrowed_session_is_not_closed(fake: FakeLipsyncServer) -> None:
    """A user-supplied ClientSession is used and left open."""
    async with aiohttp.ClientSession() as session:
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, session=session, poll_interval=0.05
        ) as client:
            await (await client.lipsync_image(image=IMAGE, audio=AUDIO))
        assert not session.closed


async def test_close_ends_pending_waits(fake: FakeLipsyncServer) -> None:
    """Closing the client ends polling; awaiters of pending jobs get a LipsyncError, not a hang."""
    fake.job_duration = 10
    client = LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.05)
    async with client:
        job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
        waiter = asyncio.create_task(job.wait())
        await until(lambda: fake.requests["GET /jobs"] >= 1, what="a read")
    with pytest.raises(ClientClosedError, match="closed"):
        await waiter
    with pytest.raises(RuntimeError, match="not open"):
        await client.lipsync_image(image=IMAGE, audio=AUDIO)


async def test_close_under_load_finishes(fake: FakeLipsyncServer) -> None:
    """Closing while hundreds of reads are in flight returns promptly with no task left behind."""
    fake.job_duration = 10
    before = asyncio.all_tasks()
    client = LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.01)
    async with client:
        await asyncio.gather(*(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(300)))
        await until(lambda: fake.requests["GET /jobs"] >= 300, what="300 reads")
    async with asyncio.timeout(2):
        await asyncio.sleep(0)
    # The emulator's own per-connection handler tasks wind down on their own; ours must be gone.
    left = [t for t in asyncio.all_tasks() - before if "RequestHandler" not in repr(t)]
    assert left == []


async def test_client_from_another_loop_is_refused(fake: FakeLipsyncServer) -> None:
    """Using a client from a loop other than the one that opened it is a clear RuntimeError."""
    async with LipsyncClient(fake.api_key, base_url=fake.base_url) as client:

        def other_loop() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                asyncio.run(client.get_job("x"))

        await asyncio.to_thread(other_loop)


async def test_key_never_in_repr_or_logs(
    fake: FakeLipsyncServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The API key appears in no repr, log record or error message."""
    caplog.set_level(logging.DEBUG, logger="lipsync_async")
    fake.server_error_rate = 0.5
    client = await make_client(max_retries=8)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    await job
    texts = [repr(client), repr(job), repr(client._transport), caplog.text]
    with pytest.raises(AuthenticationError) as info:
        await (await make_client(api_key="sk_leak_me")).get_job(job.id)
    texts.append(str(info.value))
    assert caplog.records  # retries were logged
    assert all(fake.api_key not in t and "sk_leak_me" not in t for t in texts)


def test_missing_key_is_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without api_key and LIPSYNC_API_KEY the constructor raises ValidationError naming it."""
    monkeypatch.delenv("LIPSYNC_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="api_key"):
        LipsyncClient()
    monkeypatch.setenv("LIPSYNC_API_KEY", "sk_env")
    monkeypatch.setenv("LIPSYNC_BASE_URL", "http://127.0.0.1:9/api/v1")
    assert str(LipsyncClient().base_url) == "http://127.0.0.1:9/api/v1"


async def test_a_status_read_never_waits_behind_slow_downloads(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Regression (issue 12): downloads held an API in-flight slot for the whole stream, so a
    status read waited behind four slow downloads. Downloads now have their own bound
    (max_downloads): with max_in_flight=4 and four downloads streaming, a status read (and a
    submit) completes while every download is still in flight."""
    client = await make_client(max_in_flight=4, max_downloads=4)
    jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(4)]
    states = [await job.wait(5) for job in jobs]
    fake.download_delay = 3.0
    downloads = [
        asyncio.create_task(client.download(s, tmp_path / f"{i}.mp4"))
        for i, s in enumerate(states)
    ]
    await until(lambda: fake.requests["GET /files"] >= 4, what="four downloads streaming")
    state = await client.get_job(jobs[0].id)
    extra = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert state.status is JobStatus.COMPLETED and extra.id
    assert not any(d.done() for d in downloads)
    paths = await asyncio.gather(*downloads)
    assert all(p.stat().st_size > 0 for p in paths)


async def test_cancelling_a_request_waiting_for_a_slot_raises_cancelled_error() -> None:
    """Two reads, one holding the only in-flight slot and one waiting for it, cancelled in
    the same loop iteration (a TaskGroup failing, one ``asyncio.timeout`` around both): both
    end with ``CancelledError``, nothing else (the waiter once got ``ValueError``), and the
    slot is free for the next read."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"id": request.match_info["id"], "status": "processing"})

    app = web.Application()
    app.router.add_get("/api/v1/jobs/{id}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with LipsyncClient(
            "sk_test_123456", base_url=f"http://127.0.0.1:{port}/api/v1", max_in_flight=1
        ) as client:
            holder = asyncio.create_task(client.get_job("job-a"))
            await asyncio.sleep(0.1)  # the holder's request is at the server
            waiter = asyncio.create_task(client.get_job("job-b"))
            await asyncio.sleep(0.05)  # the waiter queues for the slot
            holder.cancel()
            waiter.cancel()
            outcomes = await asyncio.gather(holder, waiter, return_exceptions=True)
            assert [type(o) for o in outcomes] == [asyncio.CancelledError] * 2
            release.set()
            state = await asyncio.wait_for(client.get_job("job-c"), 5)
            assert state.id == "job-c"
    finally:
        release.set()
        await runner.cleanup()
