"""RedisStore against a real redis-server: routing between worker processes, resume, outages."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lipsync_async import JobState, JobStatus, WebhookReceiver
from lipsync_async.stores import (
    PendingRecord,
    RedisStore,
    StoreError,
)
from lipsync_async.testing import FakeLipsyncServer

from ._waiting import until
from .conftest import AUDIO, IMAGE, ClientFactory
from .stores_support import REDIS_SERVER, RedisServer, Worker, free_port

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)

SECRET = "shared-secret-of-the-fleet-0123"


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


def _record(job_id: str) -> PendingRecord:
    return PendingRecord(id=job_id, endpoint="lipsync-image", submitted_at=time.time())


async def test_a_delivery_is_routed_to_its_owner_alone(redis_url: str, prefix: str) -> None:
    """Worker B records the final states of jobs worker A owns: A hears each once (duplicates
    and A's own later finish announce nothing), and worker C, listening too, hears nothing."""
    a, b, c = (RedisStore(redis_url, prefix=prefix, worker=w) for w in ("a", "b", "c"))
    heard: dict[str, list[JobState]] = {"a": [], "b": [], "c": []}
    two = asyncio.Event()

    def listener(name: str) -> Callable[[JobState], None]:
        def hear(state: JobState) -> None:
            heard[name].append(state)
            if len(heard["a"]) == 2:
                two.set()

        return hear

    for store in (a, b, c):
        await store.open()
    try:
        for store in (a, b, c):
            store.add_listener(listener(store.worker))
            assert await store.ready()
        await a.add_pending(_record("x"))
        await a.add_pending(_record("y"))
        for _ in range(3):  # a duplicated webhook
            assert await b.record_final(_done("x")) is (_ == 0)
        await b.finish([_done("y"), _done("x")])
        await asyncio.wait_for(two.wait(), 5)
        await a.finish([_done("x"), _done("y")])  # the owner resolved them: nothing new
        await asyncio.sleep(0.2)  # nothing more comes, to anyone
        assert heard == {"a": [_done("x"), _done("y")], "b": [], "c": []}
        assert (b.announced, a.routed, c.routed, a.announced) == (2, 2, 0, 0)
    finally:
        for store in (a, b, c):
            await store.close()


async def test_the_subscriber_survives_an_unexpected_error(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (issue 12): an unexpected exception in the Redis subscriber ended it
    silently, and deliveries stopped reaching this worker. Now it is logged with its traceback
    and the subscriber restarts (with backoff), resyncs, and goes on routing."""
    from lipsync_async.stores import _redis

    real = _redis.load_state  # type: ignore[attr-defined]
    calls = 0

    def flaky(data: bytes) -> JobState | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug while reading one message")
        return real(data)

    monkeypatch.setattr(_redis, "load_state", flaky)
    a, b = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    heard: list[JobState] = []
    resyncs = 0
    got = asyncio.Event()

    def hear(state: JobState) -> None:
        heard.append(state)
        got.set()

    async def resync() -> None:
        nonlocal resyncs
        resyncs += 1

    await a.open()
    await b.open()
    try:
        b.add_listener(hear, resync)
        assert await b.ready()
        for job_id in ("lost-to-the-bug", "after"):  # b owns them: a routes them to b
            await b.add_pending(_record(job_id))
        await a.record_final(_done("lost-to-the-bug"))
        await until(lambda: calls >= 1 and resyncs >= 2, what="the subscriber restarting")
        assert await b.ready()
        await a.record_final(_done("after"))
        await asyncio.wait_for(got.wait(), 5)
        assert heard == [_done("after")]
        assert any("restarting" in r.getMessage() for r in caplog.records)
    finally:
        await a.close()
        await b.close()


class _Racing:
    """A real redis-py client (a subclass, on a real connection) whose command in flight
    swallows the first cancel of its task once armed: what Python 3.11's ``asyncio.wait_for``
    (which redis-py sends commands with) does when the command completes in the loop step the
    cancel arrives in: it returns the result instead of raising."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.armed = False
        self.in_flight = asyncio.Event()
        self.calls = 0
        self.swallowed = 0
        racing = self

        class RacingRedis(aioredis.Redis):
            async def execute_command(self, *args: Any, **options: Any) -> Any:
                racing.calls += 1
                inner = asyncio.ensure_future(super().execute_command(*args, **options))  # type: ignore[no-untyped-call]
                if not racing.armed or racing.swallowed:
                    return await inner
                racing.in_flight.set()
                try:
                    await asyncio.sleep(0.05)  # the cancel lands while the command runs
                    return await asyncio.shield(inner)
                except asyncio.CancelledError:
                    racing.swallowed += 1
                    return await inner  # the result wins over the cancel

        self.client = RacingRedis.from_url(url)


async def test_close_ends_a_lease_task_whose_cancel_a_command_swallowed(
    redis_url: str, prefix: str
) -> None:
    """Regression (CI, lowest deps): on Python 3.11, redis-py sends commands through
    ``asyncio.wait_for``, which returns a command's result instead of raising when its task is
    cancelled in the loop step the command completes in. The lease task, cancelled by
    ``close()`` mid-renewal, went on renewing every third of the lease and ``close()`` waited
    for it (a 56 s test teardown). Now ``close()`` ends at once and the lease is renewed no
    more."""
    racing = _Racing(redis_url)
    store = RedisStore(client=racing.client, prefix=prefix, lease=0.3)
    await store.open()
    try:
        racing.armed = True
        await asyncio.wait_for(racing.in_flight.wait(), 5)  # a renewal is in flight
        async with asyncio.timeout(3):
            await store.close()
        assert racing.swallowed == 1  # the race this test is about did happen
        after = racing.calls
        await asyncio.sleep(0.5)  # five renewal periods
        assert racing.calls == after, "the lease task still renews after close()"
    finally:
        racing.armed = False
        await store.close()
        await racing.client.aclose()


async def test_commands_cancelled_mid_flight_leave_the_store_usable(
    redis_url: str, prefix: str
) -> None:
    """A task cancelled while it awaits store calls ends cancelled, at once. On Python 3.11
    redis-py's ``asyncio.wait_for`` swallows a cancel that arrives in the step its command
    completes in: such a task went on with its next command (300 tasks of up to 1,000
    commands each took 60 s instead of 3), and on redis-py 5.0.2 that next command sometimes
    found its connection torn down (``AttributeError: 'NoneType' object has no attribute
    'writelines'``). Each task is cancelled at a seeded instant; afterwards the store still
    answers."""
    import random

    rng = random.Random(3)
    store = RedisStore(redis_url, prefix=prefix)
    await store.open()
    try:
        outcomes: Counter[str] = Counter()

        async def commands(i: int) -> None:
            for n in range(1000):
                await store.add_pending(_record(f"c{i}.{n}"))

        for i in range(300):
            task = asyncio.ensure_future(commands(i))
            await asyncio.sleep(rng.random() * 0.01)
            task.cancel()
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            outcomes[type(outcome).__name__] += 1
        assert set(outcomes) == {"CancelledError"}, outcomes
        await store.add_pending(_record("after"))
        assert "after" in {r.id for r, _ in await store.pending()}
    finally:
        await store.close()


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
    # Routed to the owner, or (a delivery that beat its submit's answer, recorded before the
    # job had an owner) handed to the submit by the store: never both, never twice.
    assert 0 < stats_a["routed"] <= 250 and 0 < store_b.routed <= 250
    # ...and every delivery did land on the other worker's port.
    landed = Counter(d.url.split("/")[2] for d in fake.deliveries if d.status == 200)
    assert set(landed) == {f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"}


@pytest.mark.slow
async def test_killed_worker_resumes_its_jobs(
    fake: FakeLipsyncServer, make_client: ClientFactory, redis_url: str, prefix: str
) -> None:
    """A worker killed mid-flight comes back under its own worker id: what finished meanwhile
    resolves at once from the store (zero reads), what finishes later reaches it through
    Redis (routed to it, their owner)."""
    fake.job_duration = 3600  # the test finishes jobs itself
    port_a, port_b = free_port(), free_port()
    store_b = RedisStore(redis_url, prefix=prefix)
    receiver_b = WebhookReceiver(port=port_b, secret=SECRET)
    await make_client(store=store_b, webhook=receiver_b)  # worker B, alive throughout
    hooks = (
        "--port", str(port_a), "--public-url", f"http://127.0.0.1:{port_b}", "--secret", SECRET,
        "--poll-interval", "5", "--worker", "worker-a",
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
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert [r.id for r, _ in await store.pending()] == [job.id]
    assert await store.ready(10)
    other = RedisStore(redis_server.url, prefix=prefix)  # another worker's receiver
    await other.open()
    try:
        await other.record_final(_done(job.id))
    finally:
        await other.close()
    assert (await job.wait(5)).id == job.id  # status reads say "processing" for an hour:
    assert store.routed == 1  # the second job ended through the channel


async def test_subscriber_listens_again_after_failed_reconnects(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed reconnects during an outage do not use up the subscriber's pool: with redis-py
    5.0.1 each leaked a connection, and once ``max_connections`` were gone the subscriber never
    listened again (hence the floor ``redis>=5.0.2``)."""
    store = RedisStore(redis_server.url, prefix=prefix, retries=1, timeout=1, max_connections=2)
    await store.open()
    try:
        store.add_listener(lambda state: None)
        assert await store.ready(5)
        redis_server.stop()

        def failures() -> int:
            return sum("lost its connection" in r.message for r in caplog.records)

        async with asyncio.timeout(10):  # more failed reconnects than the pool has connections
            while failures() < 4:  # noqa: ASYNC110 - failures are log records, no event to await
                await asyncio.sleep(0.05)
        redis_server.start()
        assert await store.ready(5)
    finally:
        await store.close()
