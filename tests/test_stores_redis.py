"""RedisStore against a real redis-server: routing between worker processes, resume, outages."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from lipsync_async import JobState, JobStatus, WebhookReceiver
from lipsync_async.stores import (
    RedisStore,
    StoreError,
)
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory
from .stores_support import REDIS_SERVER, RedisServer, Worker, free_port

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)

SECRET = "shared-secret-of-the-fleet-0123"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """One redis-server for the module; tests keep apart by key prefix."""
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and start again."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def prefix() -> str:
    return "t" + secrets.token_hex(4)


def _done(job_id: str) -> JobState:
    return JobState(id=job_id, status=JobStatus.COMPLETED, output="https://cdn.example.com/o.mp4")


def _worker_args(fake: FakeLipsyncServer, store: str, prefix: str, *extra: str) -> list[str]:
    return [
        "--base-url", fake.base_url, "--api-key", fake.api_key,
        "--store", store, "--prefix", prefix, *extra,
    ]  # fmt: skip


# The store contract (memory, SQLite and Redis alike) is in test_stores_contract.py, so memory
# and SQLite run where redis-server is not installed.


async def test_announcements_reach_other_processes_stores(redis_url: str, prefix: str) -> None:
    """Two RedisStore instances (two processes' worth): one records, the other hears, once."""
    a, b = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    heard: list[JobState] = []
    two = asyncio.Event()

    def hear(state: JobState) -> None:
        heard.append(state)
        if len(heard) == 2:
            two.set()

    await a.open()
    await b.open()
    try:
        b.add_listener(hear)
        assert await b.ready()
        for _ in range(3):  # a duplicated webhook
            await a.record_final(_done("x"))
        await a.finish([_done("y"), _done("x")])
        await asyncio.wait_for(two.wait(), 5)
        await asyncio.sleep(0.1)  # nothing more comes
        assert heard == [_done("x"), _done("y")]
        assert (a.announced, b.routed) == (2, 2)
    finally:
        await a.close()
        await b.close()


# -- two worker processes ----------------------------------------------------------------------


@pytest.mark.slow
async def test_two_processes_resolve_each_others_deliveries(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str, prefix: str
) -> None:
    """500 jobs over two processes, every webhook landing on the other one: all resolve, once.

    This process is worker B, a subprocess is worker A; each one's receiver is published under
    the other's address, as a load balancer would do at worst. 20% of deliveries come twice.
    Nothing is polled (a 30 s grace), so every job resolves through Redis.
    """
    fake.job_duration = 0.3
    fake.webhook_duplicate_rate = 0.2
    port_a, port_b = free_port(), free_port()
    worker_a = await Worker.spawn(
        "submit",
        *_worker_args(fake, redis_url, prefix, "--count", "250", "--port", str(port_a)),
        "--public-url", f"http://127.0.0.1:{port_b}", "--secret", SECRET, "--linger", "60",
    )  # fmt: skip
    try:
        store_b = RedisStore(redis_url, prefix=prefix)
        receiver_b = WebhookReceiver(  # its public URL is worker A's, maybe not up yet
            f"http://127.0.0.1:{port_a}", port=port_b, secret=SECRET, check_reachable=False
        )
        client_b = await make_client(store=store_b, webhook=receiver_b, webhook_grace=30)
        await worker_a.event("ready")
        jobs_b = await asyncio.gather(
            *(client_b.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(250))
        )
        states_b = await asyncio.gather(*(j.wait(30) for j in jobs_b))
        result_a = await worker_a.event("resolved")
        # Worker A's "resolved" is a snapshot taken when its own jobs were done; B's jobs all
        # resolving means A announced them all, so A's reports must come to show it (older
        # reports may still sit in the pipe: read on until one does, or time out).
        stats_a = await worker_a.event("stats")
        async with asyncio.timeout(10):
            while stats_a["announced"] < 250:
                stats_a = await worker_a.event("stats")
    finally:
        await worker_a.kill()

    ids_a, ids_b = result_a["ids"], [s.id for s in states_b]
    assert len(ids_a) == len(set(ids_a)) == 250
    assert len(ids_b) == len(set(ids_b)) == 250
    assert set(ids_a) | set(ids_b) == set(fake.jobs)  # none lost
    assert not set(ids_a) & set(ids_b)  # each resolved by its own worker only
    assert result_a["reads"] == client_b.stats["status_reads"] == 0
    # Exactly once: every outcome announced by the receiving worker, none twice.
    assert stats_a["announced"] + store_b.announced == 500
    assert stats_a["routed"] == store_b.routed == 250
    # ...and every delivery did land on the other worker's port.
    landed = Counter(d.url.split("/")[2] for d in fake.deliveries if d.status == 200)
    assert set(landed) == {f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"}


@pytest.mark.slow
async def test_killed_worker_resumes_its_jobs(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str, prefix: str
) -> None:
    """A worker killed mid-flight comes back: what finished meanwhile resolves at once from
    the store (zero reads), what finishes later reaches it through Redis."""
    fake.job_duration = 3600  # the test finishes jobs itself
    port_a, port_b = free_port(), free_port()
    store_b = RedisStore(redis_url, prefix=prefix)
    receiver_b = WebhookReceiver(port=port_b, secret=SECRET)
    await make_client(store=store_b, webhook=receiver_b)  # worker B, alive throughout
    hooks = (
        "--port", str(port_a), "--public-url", f"http://127.0.0.1:{port_b}", "--secret", SECRET,
        "--poll-interval", "5",
    )  # fmt: skip
    worker = await Worker.spawn(
        "submit", *_worker_args(fake, redis_url, prefix, "--count", "40", *hooks), "--hang"
    )
    try:
        ids = (await worker.event("submitted"))["ids"]
    finally:
        await worker.kill()
    early, late = ids[:20], ids[20:]
    for job_id in early:  # delivered to B while A is dead: kept in Redis
        fake.complete_job(job_id)
    await fake.wait_deliveries(20)

    worker = await Worker.spawn("resume", *_worker_args(fake, redis_url, prefix, *hooks))
    try:
        resumed = await worker.event("resumed")
        assert sorted(resumed["ids"]) == sorted(ids)
        assert sorted(resumed["done"]) == sorted(early)
        for job_id in late:
            fake.complete_job(job_id)
        result = await worker.event("resolved")
    finally:
        await worker.kill()
    assert sorted(result["ids"]) == sorted(ids)
    assert result["reads"] == 0
    assert result["routed"] == 20
    assert len(fake.jobs) == 40  # resuming never submits again


# -- outages -----------------------------------------------------------------------------------


async def test_redis_down_on_submit_then_back(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_server: RedisServer, prefix: str
) -> None:
    """Redis down: a submit raises StoreError naming the job (which still resolves), and a
    delivery to the receiver gets 503; Redis back: submits record again and the subscriber
    has reconnected, so deliveries route again."""
    store = RedisStore(redis_server.url, prefix=prefix, retries=1, timeout=1)
    client = await make_client(store=store)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert time.monotonic() - started < 5
    assert info.value.job_id in fake.jobs
    assert info.value.job is not None
    assert (await info.value.job.wait(5)).status is JobStatus.COMPLETED

    redis_server.start()
    fake.job_duration = 3600
    reads = client.stats["status_reads"]  # the first job resolved by polling
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert [r.id for r, _ in await store.pending()] == [job.id]
    assert await store.ready(10)
    other = RedisStore(redis_server.url, prefix=prefix)  # another worker's receiver
    await other.open()
    try:
        await other.record_final(_done(job.id))
    finally:
        await other.close()
    assert (await job.wait(5)).id == job.id
    assert client.stats["status_reads"] == reads  # the second through the channel
