"""Issue 21: ``verify=True`` means every state that resolves a job was read from the API with
the user's key, whatever path it came by, at a bounded cost in reads.

The parties of SECURITY.md's trust table played here: a holder of the receiver's secret who
POSTs forged states, and a Redis peer who writes or publishes them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp

from lipsync_async import JobStatus, LipsyncClient, WebhookReceiver
from lipsync_async.stores import RedisStore, SQLiteStore
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory

EVIL = "http://169.254.169.254/latest/meta-data/"
SECRET = "shared-fleet-secret-0123456789"


def _forged(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "model": "lipsync-image", "status": "completed", "output": EVIL}


async def _post_all(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(body: dict[str, Any]) -> int:
            async with session.post(url, data=json.dumps(body)) as resp:
                return resp.status

        return list(await asyncio.gather(*(one(b) for b in bodies)))


async def test_verify_receiver_without_client_records_nothing(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str
) -> None:
    """A listen-only receiver with verify=True cannot read the API: a forged POST gets 503
    and is not recorded in the shared store, so it cannot resolve a worker's job there (it
    answered 200 and the worker's job completed with the forged output)."""
    fake.job_duration = 30
    worker = await make_client(
        webhook=WebhookReceiver(secret=SECRET, verify=True),
        store=RedisStore(redis_url, prefix="v1"),
        webhook_grace=30,
    )
    job = await worker.lipsync_image(image=IMAGE, audio=AUDIO)
    listener_store = RedisStore(redis_url, prefix="v1")
    async with WebhookReceiver(secret=SECRET, verify=True, store=listener_store) as listener:
        assert await _post_all(listener.url, [_forged(job.id)]) == [503]
        assert await listener_store.finals([job.id]) == {}
    await asyncio.sleep(0.2)
    assert not job.done()
    assert fake.job_state(job.id)["status"] == "processing"


async def test_verify_reads_once_per_job_however_many_forged_posts(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """100 forged POSTs for a tracked job cost one status read (not 100: enough of those push
    the client into 429s); 100 for ids the client does not track cost none."""
    fake.job_duration = 30
    client = await make_client(webhook=WebhookReceiver(verify=True), webhook_grace=30)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    receiver = client.webhook
    assert receiver is not None
    statuses = await _post_all(receiver.url, [_forged(job.id)] * 100)
    assert set(statuses) == {503}  # the API says processing: deliver again later
    statuses = await _post_all(receiver.url, [_forged(f"other-{i}") for i in range(100)])
    assert set(statuses) == {200}
    assert fake.requests["GET /jobs"] == 1
    assert not job.done()


async def test_verify_covers_states_published_on_the_redis_channel(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str
) -> None:
    """A final state PUBLISHed (or SET) by anyone who can write to Redis does not resolve a
    job of a verify=True worker: it is read from the API first, which says processing."""
    import redis.asyncio as aioredis

    fake.job_duration = 30
    store = RedisStore(redis_url, prefix="v2")
    client = await make_client(
        webhook=WebhookReceiver(verify=True),
        store=store,
        webhook_grace=1,  # the genuine outcome comes by the fallback poll (see below)
    )
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    peer = aioredis.Redis.from_url(redis_url)
    try:
        body = json.dumps(_forged(job.id))
        await peer.set(f"{{v2}}:final:{job.id}", body)
        for _ in range(5):  # on the channel of the job's owner
            await peer.publish(f"{{v2}}:to:{store.worker}", body)
    finally:
        await peer.aclose()
    for _ in range(250):  # the verification read runs in a task of its own
        if fake.requests["GET /jobs"]:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert fake.requests["GET /jobs"] == 1
    assert not job.done()
    # The genuine delivery comes within the grace of that read: it is not read again (the
    # bound), so the job resolves by its fallback poll, with what the API says.
    fake.complete_job(job.id)
    state = await job.wait(timeout=5)
    assert state.status is JobStatus.COMPLETED and state.output != EVIL


async def test_verify_covers_finals_handed_over_by_pending(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """A final state written into the store file (a local user, or a worker without
    verify) is not how a resumed job of a verify=True client resolves: ``pending()`` reads
    the job from the API first."""
    fake.job_duration = 30
    db = tmp_path / "jobs.db"
    async with LipsyncClient(fake.api_key, base_url=fake.base_url, store=SQLiteStore(db)) as c:
        job = await c.lipsync_image(image=IMAGE, audio=AUDIO)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO finals (id, recorded_at, state) VALUES (?, ?, ?)",
            (job.id, time.time(), json.dumps(_forged(job.id))),
        )
    conn.close()
    async with LipsyncClient(
        fake.api_key,
        base_url=fake.base_url,
        store=SQLiteStore(db),
        webhook=WebhookReceiver(verify=True),
        poll_interval=0.05,
    ) as client:
        (resumed,) = await client.pending()
        await asyncio.sleep(0.2)
        assert not resumed.done()
        assert fake.requests["GET /jobs"] >= 1
        fake.complete_job(resumed.id)
        state = await resumed.wait(timeout=5)
    assert state.status is JobStatus.COMPLETED and state.output != EVIL


async def test_verify_covers_states_resynced_after_a_reconnect(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str
) -> None:
    """A forged final key found by the resync that follows a subscriber reconnect is read
    from the API before it resolves anything (it resolved the job as it was)."""
    import redis.asyncio as aioredis

    fake.job_duration = 30
    store = RedisStore(redis_url, prefix="v3")
    client = await make_client(webhook=WebhookReceiver(verify=True), store=store, webhook_grace=30)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    peer = aioredis.Redis.from_url(redis_url)
    try:
        await peer.set(f"{{v3}}:final:{job.id}", json.dumps(_forged(job.id)))  # no PUBLISH
        await peer.client_kill_filter(_type="pubsub")  # the subscriber reconnects, resyncs
    finally:
        await peer.aclose()
    for _ in range(250):
        if fake.requests["GET /jobs"]:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert fake.requests["GET /jobs"] == 1
    assert not job.done()
