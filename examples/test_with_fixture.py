"""Test your own code against the emulator with the `lipsync_emulator` pytest fixture.

    pytest examples/test_with_fixture.py      # or: python examples/test_with_fixture.py

The fixture ships with lipsync-async (a pytest11 plugin; it needs pytest-asyncio) and yields
a started `FakeLipsyncServer` on a free port: point your client at `.base_url` with `.api_key`,
turn its knobs (`failure_rate`, `server_error_rate`, `job_duration`...) to test the bad days,
and inspect `.jobs` and `.requests` to check what your code sent.
"""

from __future__ import annotations

import sys

import pytest

from lipsync_async import JobFailed, LipsyncClient
from lipsync_async.testing import FakeLipsyncServer


async def make_talking_heads(client: LipsyncClient, faces: list[str], voice: str) -> list[str]:
    """The code under test: one job per face; the outputs of those that completed."""
    jobs = [await client.lipsync_image(image=face, audio=voice) for face in faces]
    outputs = []
    for job in jobs:
        try:
            state = await job
        except JobFailed:
            continue
        assert state.output is not None
        outputs.append(state.output)
    return outputs


def client_for(fake: FakeLipsyncServer) -> LipsyncClient:
    # Short polls: emulated jobs take 0.05 s, not minutes.
    return LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.05)


@pytest.mark.asyncio
async def test_every_face_gets_a_video(lipsync_emulator: FakeLipsyncServer) -> None:
    """Each face becomes one job at the image endpoint, and each output is returned."""
    faces = [f"https://media.example.com/face{i}.png" for i in range(3)]
    async with client_for(lipsync_emulator) as client:
        outputs = await make_talking_heads(client, faces, "https://media.example.com/hi.mp3")
    assert len(outputs) == 3
    assert lipsync_emulator.requests["POST /lipsync-image"] == 3


@pytest.mark.asyncio
async def test_failed_jobs_are_left_out(lipsync_emulator: FakeLipsyncServer) -> None:
    """A job the service fails is skipped, not fatal to the others."""
    lipsync_emulator.failure_rate = 1.0  # every job fails
    async with client_for(lipsync_emulator) as client:
        outputs = await make_talking_heads(
            client, ["https://media.example.com/a.png"], "https://media.example.com/hi.mp3"
        )
    assert outputs == []


if __name__ == "__main__":
    # lipsync_async is imported already, so pytest cannot rewrite its asserts: say that's fine.
    ignore = "ignore::pytest.PytestAssertRewriteWarning"
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", ignore]))
