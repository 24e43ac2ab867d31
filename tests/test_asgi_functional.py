"""The webhook receiver as an ASGI app, served by a real uvicorn on loopback.

Deliveries are real HTTP POSTs (from the emulator, and from the test), answered by the same
checks and dispatch as the aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import uvicorn

from lipsync_async import (
    ASGIApp,
    JobState,
    LipsyncClient,
    SubmissionUncertainError,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE

Scope = MutableMapping[str, Any]


@asynccontextmanager
async def serve(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    """uvicorn serving ``app`` on an already bound loopback socket, in this event loop."""
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", http="h11", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def mounted(prefix: str, inner: ASGIApp) -> ASGIApp:
    """What Starlette's ``Mount(prefix, app)`` hands the app: the full path, and the mount
    point added to ``root_path``; anything else is the host app's 404."""

    async def app(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(prefix + "/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"host app"})
            return
        if scope["type"] == "http":
            scope = {**scope, "root_path": scope.get("root_path", "") + prefix}
        await inner(scope, receive, send)

    return app


async def test_jobs_resolve_through_the_asgi_receiver_under_uvicorn() -> None:
    """A client whose receiver is mounted as an ASGI app under uvicorn: the emulator's
    deliveries reach it over HTTP and resolve every job with no status read, and the client
    starts no aiohttp server of its own."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}")
    app = mounted(receiver.path, receiver.asgi())
    async with FakeLipsyncServer(job_duration=0.05) as fake, serve(app, sock):
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, webhook=receiver, poll_interval=0.05
        ) as client:
            jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(5)]
            states = [await job.wait(timeout=10) for job in jobs]
            assert client.stats["status_reads"] == 0
        assert receiver.port == 0 or receiver.port is None  # never bound a port itself
    assert all(s.status.value == "completed" for s in states)
    assert receiver.received == 5 and receiver.matched == 5
    assert {d.status for d in fake.deliveries} == {200}


async def test_asgi_answers_like_the_aiohttp_receiver() -> None:
    """Over real POSTs: a wrong secret is 404, a GET 405 with Allow, bad JSON 400, a body over
    max_body 413 (without reading it all), a path outside the route 404; a good delivery
    reaches on_delivery and gets 200 with the receiver's JSON."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    got: list[JobState] = []
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}", on_delivery=got.append, max_body=1024)
    state = {"id": "job-1", "model": "lipsync-image", "status": "completed",
             "output": "https://cdn.example.com/1.mp4", "error": "", "executionTime": 5,
             "timings": None}  # fmt: skip
    async with serve(receiver.asgi(), sock), aiohttp.ClientSession() as http:
        url = receiver.url
        base = url.rsplit("/", 1)[0]
        async with http.post(url, json=state) as r:
            assert (r.status, await r.json()) == (200, {"received": True})
        async with http.post(base + "/wrong-secret-0000000000", json=state) as r:
            assert r.status == 404
        async with http.get(url) as r:
            assert (r.status, r.headers["Allow"]) == (405, "POST")
        async with http.post(url, data=b"{nope") as r:
            assert r.status == 400 and "not JSON" in (await r.json())["error"]
        async with http.post(url, data=b"[1]") as r:
            assert r.status == 400
        async with http.post(url, data=b"x" * 200_000) as r:
            assert r.status == 413
        async with http.post(f"http://127.0.0.1:{port}/elsewhere", json=state) as r:
            assert r.status == 404
        async with http.post(url + "/extra", json=state) as r:
            assert r.status == 404
    assert [s.id for s in got] == ["job-1"]


@pytest.mark.parametrize("mount", ["", "/webhooks/lipsync"])
async def test_asgi_route_relative_to_the_mount_point(mount: str) -> None:
    """The app serves ``{path}/{secret}`` when mounted at the root and ``/{secret}`` under a
    mount at ``receiver.path`` (Starlette's root_path), so both mounting styles work."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    got: list[JobState] = []
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}", on_delivery=got.append)
    app = mounted(mount, receiver.asgi()) if mount else receiver.asgi()
    body = json.dumps({"id": "j2", "status": "failed", "error": "no face"})
    async with serve(app, sock), aiohttp.ClientSession() as http:
        async with http.post(receiver.url, data=body) as r:
            assert r.status == 200
    assert [(s.id, s.error) for s in got] == [("j2", "no face")]


def test_asgi_needs_a_public_url() -> None:
    """A receiver mounted in another server has no address of its own: asgi() without a
    public_url (or a port) is a ValidationError naming public_url."""
    with pytest.raises(ValidationError, match="public_url"):
        WebhookReceiver(None).asgi()
    assert WebhookReceiver(None, port=8080).asgi() is not None


async def test_asgi_receiver_settles_an_uncertain_submit_by_its_token() -> None:
    """Under uvicorn, the correlation token in the delivery's query string reaches the
    receiver: a submit whose answer was dropped is settled by exc.resolve()."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}")
    app = mounted(receiver.path, receiver.asgi())
    async with FakeLipsyncServer(job_duration=0.05, drop_rate=1.0) as fake, serve(app, sock):
        async with LipsyncClient(
            fake.api_key, base_url=fake.base_url, webhook=receiver, poll_interval=0.05
        ) as client:
            with pytest.raises(SubmissionUncertainError) as info:
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
            job = await info.value.resolve(timeout=10)
            assert job is not None and job.id in fake.jobs
            assert (await job.wait(timeout=10)).id == job.id
