"""Every odd answer the service might send, through both ways in: status reads (a small aiohttp
server on loopback answering ``GET /jobs/{id}``) and deliveries (real POSTs to the receiver).

Each row names a variant and the documented outcome (SPEC section 1, ``_wire``'s docstring):
a state with the given fields, or an error (an ``APIError`` from a status read, a 4xx to a
delivery). Nothing the service sends is silently dropped, and no variant hangs.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from lipsync_async import APIError, JobState, JobStatus, LipsyncClient, WebhookReceiver

URL = "https://cdn.example.com/out/result.mp4"
JOB = "550e8400-e29b-41d4-a716-446655440000"


def _state(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "id": JOB,
        "model": "lipsync-image",
        "status": "completed",
        "output": URL,
        "error": "",
        "executionTime": 12345,
        "timings": None,
    }
    body.update(fields)
    return json.dumps(body).encode()


@attrs.frozen
class Variant:
    name: str
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    gzip: bool = False
    # The outcome: the state's fields to check, or the error (read: APIError with this status;
    # delivery: this HTTP status).
    expect: dict[str, Any] | None = None
    read_error: int | None = None
    delivery_status: int = 200


VARIANTS = [
    Variant("string output", _state(), expect={"output": URL, "output_raw": None}),
    Variant(
        "list output",
        _state(output=[URL]),
        expect={"status": JobStatus.COMPLETED, "output": URL, "output_raw": [URL]},
    ),
    Variant(
        "object output",
        _state(output={"url": URL, "format": "mp4"}),
        expect={"output": URL, "output_raw": {"url": URL, "format": "mp4"}},
    ),
    Variant(
        "list of two urls",
        _state(output=[URL, URL + "?v=2"]),
        expect={"output": None, "output_raw": [URL, URL + "?v=2"]},
    ),
    Variant("status upper case", _state(status="COMPLETED"), expect={"status": "completed"}),
    Variant(
        "status failed mixed case",
        _state(status="Failed", output=None, error="No face"),
        expect={"status": JobStatus.FAILED, "error": "No face"},
    ),
    Variant(
        "unknown status",
        _state(status="succeeded"),
        expect={"status": "succeeded", "is_final": False, "output": URL},
    ),
    Variant("extra fields", _state(queue=3, meta={"a": 1}), expect={"output": URL}),
    Variant(
        "float executionTime", _state(executionTime=12345.9), expect={"execution_time_ms": 12345}
    ),
    Variant("text/plain JSON", _state(), content_type="text/plain", expect={"output": URL}),
    Variant("gzip", _state(), gzip=True, expect={"output": URL}),
    Variant("BOM", b"\xef\xbb\xbf" + _state(), expect={"output": URL}),
    Variant("empty 200", b"", read_error=200, delivery_status=400),
    Variant(
        "HTML 502",
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        content_type="text/html",
        status=502,
        read_error=502,
        delivery_status=400,
    ),
]


def _check(state: JobState, expect: dict[str, Any]) -> None:
    assert state.id == JOB
    for field, value in expect.items():
        assert getattr(state, field) == value, (field, getattr(state, field))


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, dict[str, Variant]]]:
    """A loopback server answering ``GET /api/v1/jobs/{id}`` with the current variant."""
    current: dict[str, Variant] = {}

    async def job(request: web.Request) -> web.Response:
        v = current["v"]
        body = gzip.compress(v.body) if v.gzip else v.body
        headers = {"Content-Encoding": "gzip"} if v.gzip else {}
        return web.Response(
            status=v.status, body=body, headers=headers, content_type=v.content_type
        )

    app = web.Application()
    app.router.add_get("/api/v1/jobs/{id}", job)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1", current
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
async def test_status_read_variant(
    variant: Variant,
    api: tuple[str, dict[str, Variant]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A status read of each variant gives its documented state, or an APIError showing the
    status; never a hang, never a dropped output."""
    base, current = api
    current["v"] = variant
    async with LipsyncClient("sk_test_wire", base_url=base, max_retries=0) as client:
        async with asyncio.timeout(10):
            if variant.read_error is not None:
                with pytest.raises(APIError) as info:
                    await client.get_job(JOB)
                assert info.value.status == variant.read_error
                return
            state = await client.get_job(JOB)
    assert variant.expect is not None
    _check(state, variant.expect)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
async def test_delivery_variant(variant: Variant) -> None:
    """A delivery of each variant (a real POST to the receiver) is accepted as its documented
    state, or refused with a 4xx; never a hang, never a 5xx."""
    got: list[JobState] = []
    async with WebhookReceiver(on_delivery=got.append, check_reachable=False) as receiver:
        body = gzip.compress(variant.body) if variant.gzip else variant.body
        headers = {"Content-Type": variant.content_type}
        if variant.gzip:
            headers["Content-Encoding"] = "gzip"
        async with aiohttp.ClientSession() as session, asyncio.timeout(10):
            async with session.post(receiver.url, data=body, headers=headers) as resp:
                assert resp.status == variant.delivery_status, await resp.text()
    if variant.delivery_status >= 400:
        assert not got
        return
    assert variant.expect is not None and len(got) == 1
    _check(got[0], variant.expect)


async def test_unknown_status_is_logged_once_per_value(
    api: tuple[str, dict[str, Variant]], caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown status is a WARNING once per value, however often it is read."""
    caplog.set_level(logging.WARNING, logger="lipsync_async")
    base, current = api
    current["v"] = Variant("x", _state(status="queued-for-review-7f3"))
    async with LipsyncClient("sk_test_wire", base_url=base, max_retries=0) as client:
        for _ in range(5):
            state = await client.get_job(JOB)
    assert state.status == "queued-for-review-7f3" and not state.is_final
    lines = [r for r in caplog.records if "queued-for-review-7f3" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


async def test_list_output_is_what_download_fetches(tmp_path: Any) -> None:
    """A completed state whose output is a list holding one URL downloads that URL, and the
    list survives the state's wire form (stores, the CLI's --json)."""
    from lipsync_async.testing import FakeLipsyncServer

    async with FakeLipsyncServer(job_duration=0.0) as fake:
        async with LipsyncClient(fake.api_key, base_url=fake.base_url) as client:
            job = await client.lipsync_image(
                image="https://m.example/f.png", audio="https://m.example/v.mp3"
            )
            done = await job
            assert done.output is not None
            state = JobState(
                id=done.id,
                status=JobStatus.COMPLETED,
                output=done.output,
                output_raw=[done.output],
            )
            assert state.to_wire()["output"] == [done.output]
            path = await client.download(state, tmp_path)
            assert path.stat().st_size > 0


async def test_list_output_delivered_to_a_tracked_job_is_kept() -> None:
    """A delivery whose output is a list resolves the tracked job with output (the one URL)
    and output_raw (the list) intact, through the job's packed state; an unknown status
    delivered first leaves the job pending."""
    from lipsync_async.testing import FakeLipsyncServer

    async with FakeLipsyncServer(job_duration=60.0) as fake:
        receiver = WebhookReceiver()
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, webhook=receiver, webhook_grace=60.0
        ) as client:
            job = await client.lipsync_image(
                image="https://m.example/f.png", audio="https://m.example/v.mp3"
            )
            async with aiohttp.ClientSession() as session:
                odd = {"id": job.id, "status": "Succeeded-Later", "output": None}
                async with session.post(receiver.url, json=odd) as resp:
                    assert resp.status == 200
                assert not job.done()
                assert job.state is not None and job.state.status == "Succeeded-Later"
                final = {"id": job.id, "status": "COMPLETED", "output": [URL]}
                async with session.post(receiver.url, json=final) as resp:
                    assert resp.status == 200
            state = await asyncio.wait_for(job, 5.0)
    assert state.status is JobStatus.COMPLETED
    assert state.output == URL and state.output_raw == [URL]
