"""Issue 21, the stores' side of the trust table: a local user and a Redis peer.

The SQLite file is its owner's alone; a record anyone could corrupt is reported once and
skipped, never a bare ``UnicodeEncodeError`` for every worker nor a job rescheduled forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from lipsync_async.stores import RedisStore, SQLiteStore
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory

_BAD_ID_RECORD = json.dumps(
    {"id": "\\ud800bad", "endpoint": "lipsync-image", "submitted_at": 1.0, "request": {}},
    ensure_ascii=True,
).replace("\\\\ud800", "\\ud800")  # the JSON escape of a lone surrogate, as a peer writes it


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_store_files_are_created_owner_only(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The SQLite store file and its -wal/-shm are created 0600 (they hold the served-file
    URLs whose tokens are the only protection of input files), not 0644."""
    db = tmp_path / "jobs.db"
    client = await make_client(store=SQLiteStore(db))
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    await job.wait(timeout=5)
    files = {name: _mode(tmp_path / name) for name in os.listdir(tmp_path)}
    assert files["jobs.db"] == 0o600
    assert {name: mode for name, mode in files.items() if name.startswith("jobs.db-")} == {
        "jobs.db-wal": 0o600,
        "jobs.db-shm": 0o600,
    }


async def test_sqlite_bad_pending_record_is_reported_once_and_skipped(
    fake: FakeLipsyncServer,
    make_client: ClientFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pending row whose id holds a lone surrogate (or whose text is not UTF-8) is skipped
    with one WARNING, however often ``pending()`` runs; it is never tracked, so never
    rescheduled with a traceback per poll; the good job beside it resumes."""
    db = tmp_path / "jobs.db"
    fake.job_duration = 0.2
    async with asyncio.timeout(10):
        first = await make_client(store=SQLiteStore(db))
        good = await first.lipsync_image(image=IMAGE, audio=AUDIO)
        await first.close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO pending (id, submitted_at, record) VALUES (?, ?, ?)",
            ("bad-1", time.time(), _BAD_ID_RECORD),
        )
        conn.execute(
            "INSERT INTO pending (id, submitted_at, record) VALUES (?, ?, CAST(x'ff7b' AS TEXT))",
            ("bad-2", time.time()),
        )
    conn.close()
    caplog.set_level(logging.INFO, logger="lipsync_async")
    client = await make_client(store=SQLiteStore(db), poll_interval=0.02)
    jobs = await client.pending()
    assert [j.id for j in jobs] == [good.id]
    await client.pending()
    await jobs[0].wait(timeout=5)
    await asyncio.sleep(0.1)  # several poll intervals: nothing may retry the bad rows
    skipped = [m for m in _warnings(caplog) if "skipped a pending record" in m]
    assert len(skipped) == 2 and any("bad-1" in m for m in skipped)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_redis_bad_pending_record_is_reported_once_and_skipped(
    make_client: ClientFactory, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pending record whose id holds a lone surrogate (written by any Redis peer) made
    every worker's ``pending()`` raise a bare UnicodeEncodeError; now it is skipped with one
    WARNING and the other jobs resume. So is one whose id holds a newline (it would reach
    log lines as it is)."""
    import redis.asyncio as aioredis

    store = RedisStore(redis_url, prefix="bad")
    client = await make_client(store=store)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    peer = aioredis.Redis.from_url(redis_url)
    try:
        await peer.hset("{bad}:pending", "bad-1", _BAD_ID_RECORD)
        await peer.hset("{bad}:pending", "bad-2", b"\xff{")
        forged_line = json.dumps({"id": "x\nERROR forged", "endpoint": "e", "submitted_at": 1})
        await peer.hset("{bad}:pending", "bad-3", forged_line)
        # ...as jobs of this worker (a peer can write the owner index too)
        await peer.sadd(f"{{bad}}:jobs:{store.worker}", "bad-1", "bad-2", "bad-3")
    finally:
        await peer.aclose()
    caplog.set_level(logging.INFO, logger="lipsync_async")
    ids = [j.id for j in await client.pending()]
    assert job.id in ids or job.done()
    assert all(i.isprintable() for i in ids)
    await client.pending()
    skipped = [m for m in _warnings(caplog) if "skipped a pending record" in m]
    assert len(skipped) == 3 and any("bad-1" in m for m in skipped)
