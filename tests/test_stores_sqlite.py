"""SQLiteStore: pending jobs that survive a process restart on one machine."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from lipsync_async import JobStatus, WebhookReceiver
from lipsync_async.stores import SQLiteStore, StoreError
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory
from .stores_support import Worker


@pytest.mark.slow
async def test_killed_worker_resumes_after_restart(fake: FakeLipsyncServer, tmp_path: Path) -> None:
    """A worker SIGKILLed with 30 jobs in flight restarts on the same file and resolves them
    all, without submitting any again; its webhooks went nowhere while it was dead."""
    fake.job_duration = 1.0
    db = tmp_path / "jobs.db"
    common = ["--base-url", fake.base_url, "--api-key", fake.api_key, "--store", f"sqlite:{db}"]
    worker = await Worker.spawn("submit", *common, "--count", "30", "--port", "0", "--hang")
    # --port 0 means no receiver: jobs would poll; the kill comes long before they finish.
    try:
        ids = (await worker.event("submitted"))["ids"]
    finally:
        await worker.kill()
    assert len(ids) == 30

    worker = await Worker.spawn("resume", *common, "--poll-interval", "0.1")
    try:
        resumed = await worker.event("resumed")
        result = await worker.event("resolved")
        assert await worker.exited() == 0
    finally:
        await worker.kill()
    assert sorted(resumed["ids"]) == sorted(ids)
    assert sorted(result["ids"]) == sorted(ids)
    assert len(fake.jobs) == 30
    with closing(sqlite3.connect(db)) as conn:  # `with` on a connection does not close it
        assert conn.execute("SELECT count(*) FROM pending").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM finals").fetchone() == (30,)


async def test_deliveries_while_nobody_awaits_resolve_on_resume(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A client closes with jobs pending; the receiver keeps recording their deliveries in
    SQLite; the next client's pending() resolves them at once, with no status read."""
    fake.job_duration = 3600
    db = tmp_path / "jobs.db"
    store = SQLiteStore(db)
    receiver = WebhookReceiver(store=store)
    async with receiver:
        first = await make_client(store=store, webhook=receiver)
        jobs = await asyncio.gather(
            *(first.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(10))
        )
        await first.close()  # "restart": nobody tracks these jobs now
        for job in jobs:
            fake.complete_job(job.id)
        await fake.wait_deliveries(10)
        assert {d.status for d in fake.deliveries} == {200}
    second = await make_client(store=SQLiteStore(db), poll_interval=30)
    resumed = await second.pending()
    assert sorted(j.id for j in resumed) == sorted(j.id for j in jobs)
    assert all(j.done() for j in resumed)
    assert {(await j).status for j in resumed} == {JobStatus.COMPLETED}
    assert second.stats["status_reads"] == 0


async def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    """WAL: readers never block the writer, and a commit costs no fsync (synchronous=NORMAL)."""
    store = SQLiteStore(tmp_path / "jobs.db")
    await store.open()
    await store.close()
    with closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_unusable_path_fails_on_open_with_store_error(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A database that cannot be opened fails the client's start, not its first submit."""
    with pytest.raises(StoreError, match="cannot open"):
        await make_client(store=SQLiteStore(tmp_path / "missing-dir" / "jobs.db"))


@pytest.mark.slow
async def test_on_complete_once_per_machine_and_again_after_a_crash_inside_it(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """With a SQLite file, ``on_complete`` runs once per job across restarts: a worker killed
    inside the callback leaves the job pending and claimed by a dead process, so the
    restarted worker runs it again (and only then drops it); a later restart runs nothing."""
    fake.job_duration = 0.1
    db, log = tmp_path / "jobs.db", tmp_path / "done.log"
    common = [
        "--base-url", fake.base_url, "--api-key", fake.api_key, "--store", f"sqlite:{db}",
        "--poll-interval", "0.05", "--complete-log", str(log),
    ]  # fmt: skip
    worker = await Worker.spawn("submit", *common, "--count", "2", "--complete-delay", "30")
    try:
        await worker.event("submitted")
        async with asyncio.timeout(10):
            while log.read_text().count("start") < 2 if log.exists() else True:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await worker.kill()  # inside both callbacks
    for attempt in range(2):
        worker = await Worker.spawn("resume", *common)
        try:
            resumed = await worker.event("resumed")
            await worker.event("resolved")
            assert await worker.exited() == 0
        finally:
            await worker.kill()
        assert len(resumed["ids"]) == (2 if attempt == 0 else 0)
    lines = [line.split()[0] for line in log.read_text().splitlines()]
    assert lines.count("start") == 4 and lines.count("end") == 2
