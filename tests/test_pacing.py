"""The pacer: the client-wide 429 pause, a fixed rate, and the rate learned from 429s."""

from __future__ import annotations

import asyncio

import pytest

from lipsync_async._pacing import Pacer
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory


def test_fixed_rate_never_changes() -> None:
    """With rate_limit set, 429s pause but never change the pace."""
    pacer = Pacer(50.0)
    assert pacer.limited(10.0, 1.0)
    assert not pacer.limited(10.5, 1.0)  # same pause, extended
    assert pacer.rate == 50.0
    assert pacer.pause_until == 11.5


def test_learns_sustained_rate_from_episode() -> None:
    """The pace becomes 95% of what was accepted since the episode's first 429, pauses included."""
    pacer = Pacer()
    assert pacer.rate is None
    for i in range(200):
        pacer.accepted(i * 0.001)
    pacer.limited(0.2, 1.0)  # episode opens: no pace yet, a one-off burst says nothing
    assert pacer.rate is None
    for i in range(200):
        pacer.accepted(1.2 + i * 0.0005)
    pacer.limited(1.3, 1.0)  # 200 accepted in 1.1 s of episode
    assert pacer.rate == pytest.approx(0.95 * 200 / 1.1)


def test_calm_seconds_speed_up_until_unpaced() -> None:
    """Each calm second raises the pace by a fifth; past 5,000/s pacing is dropped."""
    pacer = Pacer()
    pacer.limited(0.0, 0.1)
    for i in range(20):
        pacer.accepted(0.5 + i * 0.025)
    pacer.limited(1.05, 0.1)  # within a second of the pause's end: a limit, not a blip
    first = pacer.rate
    assert first is not None
    pacer.accepted(2.6)
    assert pacer.rate == pytest.approx(first * 1.2)
    now = 2.6
    while pacer.rate is not None and now < 100:
        now += 1.0
        pacer.accepted(now)
    assert pacer.rate is None


def test_isolated_429s_cost_their_pause_and_teach_no_rate() -> None:
    """A 429 more than a second after the previous pause ended is a blip: it pauses everyone
    for its Retry-After and sets no pace, however slow the client was across the pauses."""
    pacer = Pacer()
    for i in range(400):
        pacer.accepted(i * 0.005)  # 200/s
    assert pacer.limited(2.0, 2.0)
    for i in range(200):
        pacer.accepted(4.0 + i * 0.005)
    assert pacer.limited(6.0, 2.0)  # 2 s after the pause ended: isolated
    assert pacer.rate is None
    assert pacer.pause_until == 8.0
    for i in range(100):
        pacer.accepted(8.0 + i * 0.005)
    pacer.limited(8.6, 1.0)  # straight after the pause: the limit is real now
    assert pacer.rate is not None


async def test_learned_pacing_keeps_429s_few(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Under a service rate limit and no client limit, 429s stay a small share of requests."""
    fake.rate_limit = 100.0
    fake.job_duration = 0.2
    client = await make_client(max_retries=20, poll_interval=0.1)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(300))
    )
    await asyncio.gather(*jobs)
    total = fake.requests["POST /lipsync-image"] + fake.requests["GET /jobs"]
    assert len(fake.jobs) == 300
    assert fake.requests["429"] < 0.15 * total, (fake.requests["429"], total)
