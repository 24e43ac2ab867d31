"""User code with the mistakes a type checker must catch: read by ``tests/test_typing.py``.

Each line that must fail carries ``# E: <mypy error code>``; every other line must pass
``mypy --strict``. Never imported or run (it would fail on purpose).
"""

from __future__ import annotations

import lipsync_async
from lipsync_async import LipsyncClinet  # E: attr-defined
from lipsync_async import Job, JobState, LipsyncClient, NotFoundError, Order, Resolution
from lipsync_async.stores import RedisStore


def on_progress(done: int) -> None:  # the SDK calls progress(done, total_or_None)
    print(done)


async def main() -> None:
    async with LipsyncClient() as client:
        await client.lipsync_image(image="https://x.example/f.png", audio="https://x.example/a.mp3", resolution="1080p")  # E: arg-type
        await client.lipsync_image_multi(image="https://x.example/f.png", left_audio="https://x.example/a.mp3", right_audio="https://x.example/b.mp3", order="together")  # E: arg-type
        await client.lipsync_image(image="https://x.example/f.png", audio="https://x.example/a.mp3", sed=42)  # E: call-arg
        job = await client.lipsync_video(video="https://x.example/v.mp4", audio="https://x.example/a.mp3", resolution="720p")
        state: JobState = await job
        state.output.upper()  # E: union-attr
        await client.download(state, "out.mp4", progress=on_progress)  # E: arg-type
        try:
            await client.get_job(job.id)
        except NotFoundError as exc:
            status: str = exc.status  # E: assignment
            request_id: str | None = exc.request_id
            print(status, request_id, exc.headers.get("Retry-After"))
    resolution: Resolution = "720p"
    wrong: Resolution = "1080p"  # E: assignment
    order: Order = "left_right"
    version: str = lipsync_async.__version__
    lipsync_async.__versoin__  # E: attr-defined
    print(LipsyncClinet, resolution, wrong, order, version)


def completed(job: Job) -> None:
    print(job.state)


async def completed_later(job: Job) -> None:
    print(job.id)


def completed_wrong(state: JobState) -> None:  # on_complete gets the Job, not its state
    print(state.output)


def fleet() -> None:
    store = RedisStore("redis://127.0.0.1:6379/0", worker="w1", lease=30.0)
    LipsyncClient(store=store, on_complete=completed)
    LipsyncClient(store=store, on_complete=completed_later)
    LipsyncClient(store=store, on_complete=completed_wrong)  # E: arg-type
    RedisStore(lease="30")  # E: arg-type
