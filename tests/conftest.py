"""Shared fixtures: a started emulator and a client factory bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from lipsync_async import LipsyncClient
from lipsync_async.testing import FakeLipsyncServer

from ._vclock import VirtualLoop
from .stores_support import REDIS_SERVER

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"
VIDEO = "https://media.example.com/clip.mp4"

ClientFactory = Callable[..., Any]


@pytest.fixture
def vloop() -> Iterator[VirtualLoop]:
    """A loop on a virtual clock (``tests/_vclock.py``), closed after the test."""
    loop = VirtualLoop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeLipsyncServer]:
    """An emulator with short jobs, on a free loopback port."""
    async with FakeLipsyncServer(job_duration=0.05, seed=1) as server:
        yield server


@pytest.fixture
async def make_client(fake: FakeLipsyncServer) -> AsyncIterator[ClientFactory]:
    """Open clients against ``fake`` with test-speed timings; all closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> LipsyncClient:
            kwargs.setdefault("base_url", fake.base_url)
            kwargs.setdefault("poll_interval", 0.05)
            kwargs.setdefault("backoff_base", 0.01)
            kwargs.setdefault("backoff_max", 0.1)
            key = kwargs.pop("api_key", fake.api_key)
            client = LipsyncClient(key, **kwargs)
            return await stack.enter_async_context(client)

        yield make


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line on how to run the Redis tests, when this machine skipped them."""
    if REDIS_SERVER is None:
        terminalreporter.write_line(
            "Redis store tests skipped: redis-server is not on PATH; install it "
            "(apt-get install redis-server) and rerun ./.ci/test to run them."
        )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One redis-server for the whole run, started only if a test asks for it; tests keep apart
    by key prefix. Skips (one line) where redis-server is not installed."""
    from .stores_support import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it: .ci/run)")
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()
