"""Per-call options (`client.with_options`) and the one-call submit-and-wait (`client.run`)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from lipsync_async import (
    APITimeoutError,
    JobFailed,
    JobStatus,
    LipsyncClient,
    LipsyncImageRequest,
    ServerError,
    ValidationError,
)
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from .conftest import AUDIO, IMAGE, ClientFactory


async def test_with_options_changes_only_the_calls_made_through_the_view() -> None:
    """A view's timeout and max_retries apply to its own calls; the client keeps its own. The
    view shares the client's session, counters and lifecycle: it cannot be opened or closed on
    its own, and it ends with the client."""
    hits: list[str] = []

    async def slow_or_failing(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path.endswith("/slow"):
            await asyncio.sleep(0.5)
            return web.json_response({"id": "slow", "status": "processing"})
        return web.json_response({"error": "down"}, status=503)

    async with RawServer(slow_or_failing) as srv:
        client = LipsyncClient(
            "sk_x", base_url=srv.base_url, max_retries=3, backoff_base=0.0, timeout=5.0
        )
        async with client:
            quick = client.with_options(timeout=0.1, max_retries=0)
            with pytest.raises(APITimeoutError):
                await quick.get_job("slow")
            state = await client.get_job("slow")  # the client's own 5 s timeout
            assert state.id == "slow"
            hits.clear()
            with pytest.raises(ServerError):
                await quick.get_job("down")
            assert len(hits) == 1  # max_retries=0: one attempt
            hits.clear()
            with pytest.raises(ServerError):
                await client.get_job("down")
            assert len(hits) == 4  # the client's own: 1 + 3 retries
            assert client.stats["requests"] >= 7  # the view's requests count for the client
            with pytest.raises(RuntimeError, match="lifecycle"):
                await quick.__aenter__()
            await quick.close()  # a view's close is the client's business: nothing happens
            assert (await client.get_job("slow")).id == "slow"
        with pytest.raises(RuntimeError, match="not open"):
            await quick.get_job("slow")


async def test_with_options_validates_before_any_request(make_client: ClientFactory) -> None:
    """Bad per-call options are a ValidationError naming the option."""
    client = await make_client()
    with pytest.raises(ValidationError) as info:
        client.with_options(timeout=-1)
    assert info.value.field == "timeout"
    with pytest.raises(ValidationError) as info:
        client.with_options(max_retries=-2)
    assert info.value.field == "max_retries"


async def test_run_submits_and_waits(fake: FakeLipsyncServer, make_client: ClientFactory) -> None:
    """client.run(request) returns the completed state; a failed job raises JobFailed."""
    client = await make_client()
    state = await client.run(LipsyncImageRequest(image=IMAGE, audio=AUDIO), timeout=10)
    assert state.status is JobStatus.COMPLETED and state.output
    with pytest.raises(JobFailed):
        await client.run(LipsyncImageRequest(image=IMAGE, audio=AUDIO, prompt="x [fail]"))
    assert len(fake.jobs) == 2
