"""Quick start: submit one job, wait for it, download the result.

python examples/quickstart.py        # real API with LIPSYNC_API_KEY, else the emulator
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from _target import AUDIO, IMAGE, target

from lipsync_async import JobFailed, LipsyncClient


async def main() -> None:
    async with (
        target() as t,
        LipsyncClient(t.api_key, base_url=t.base_url, poll_interval=t.poll_interval) as client,
    ):
        # A submit returns at once with an awaitable Job; the job itself runs at the service.
        job = await client.lipsync_image(image=IMAGE, audio=AUDIO, resolution="720p", seed=42)
        print(f"submitted {job.id}")
        try:
            # Awaiting polls (one scheduler for all jobs). A real 10 s clip takes minutes, so
            # bound the wait: JobTimeoutError leaves the job running and still tracked.
            state = await job.wait(timeout=30 * 60)
        except JobFailed as exc:
            print(f"failed: {exc.state.error}")
            return
        with tempfile.TemporaryDirectory() as tmp:
            # Streams to a temp file beside the target, renamed when complete.
            path = await client.download(state, Path(tmp) / "result.mp4")
            print(f"completed {state.id}: {path.stat().st_size} bytes downloaded")


if __name__ == "__main__":
    asyncio.run(main())
