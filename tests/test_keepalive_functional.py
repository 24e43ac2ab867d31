"""Stale keep-alive connections behind a real nginx (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import random

import pytest

from lipsync_async import LipsyncClient, SubmissionUncertainError
from lipsync_async.testing import FakeLipsyncServer

from ._nginx import NGINX, NO_NGINX, nginx_proxy
from .conftest import AUDIO, IMAGE

pytestmark = pytest.mark.skipif(NGINX is None, reason=NO_NGINX)


@pytest.mark.timeout(90)
async def test_bursts_after_idle_gaps_around_nginx_keepalive_are_never_uncertain() -> None:
    """Behind nginx with keepalive_timeout 2s, bursts of 5 submits after idle gaps of
    1.9-2.1 s: the SDK never reuses a connection idle past 1.5 s, so no submit is uncertain,
    and the emulator created exactly one job per submit."""
    rng = random.Random(3)
    async with FakeLipsyncServer(job_duration=3600.0, seed=3) as fake:
        upstream = int(fake.base_url.split(":")[2].split("/")[0])
        async with nginx_proxy(upstream, keepalive_timeout=2.0) as port:
            base = fake.base_url.replace(f":{upstream}/", f":{port}/")
            async with LipsyncClient(fake.api_key, base_url=base, poll_interval=1e6) as client:
                uncertain = answered = 0
                for _ in range(6):
                    await asyncio.sleep(rng.uniform(1.9, 2.1))
                    out = await asyncio.gather(
                        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(5)),
                        return_exceptions=True,
                    )
                    for item in out:
                        if isinstance(item, SubmissionUncertainError):
                            uncertain += 1
                        elif isinstance(item, BaseException):
                            raise item
                        else:
                            answered += 1
                            item.cancel()
    assert uncertain == 0
    assert answered == 30 == len(fake.jobs)
