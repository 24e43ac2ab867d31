"""How a job's ending reaches the store: what a later ``pending()`` resumes, and what not."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync_async import ClientClosedError, LipsyncClient
from lipsync_async.stores import MemoryStore, SQLiteStore, Store
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_cancelled_job_is_not_resumed_and_a_closed_one_is(
    fake: FakeLipsyncServer, tmp_path: Path, kind: str
) -> None:
    """Regression (issue 12): job.cancel() never reached the store, so a new client's
    pending() resumed the cancelled job and the store's pending records grew. Now a cancel
    drops the record; a job ended only by the client closing stays pending for a resume."""
    fake.job_duration = 60
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "jobs.db")

    def client() -> LipsyncClient:
        return LipsyncClient(fake.api_key, base_url=fake.base_url, store=store, poll_interval=30)

    async with client() as first:
        kept = await first.lipsync_image(image=IMAGE, audio=AUDIO)
        dropped = await first.lipsync_image(image=IMAGE, audio=AUDIO)
        assert dropped.cancel() is True
    assert kept.done() and isinstance(kept.exception(), ClientClosedError)
    async with client() as second:
        resumed = await second.pending()
        assert [job.id for job in resumed] == [kept.id]
        for job in resumed:
            job.cancel()
    async with client() as third:
        assert await third.pending() == []
