"""Stores, in one process: the client's side of the contract with MemoryStore (and friends)."""

from __future__ import annotations

import asyncio

import pytest

from lipsync_async import JobState, JobStatus, LipsyncImageMultiRequest, WebhookReceiver
from lipsync_async.stores import MemoryStore, PendingRecord, StoreError
from lipsync_async.stores._records import record_for, request_from_record
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory
from .stores_support import free_port

SECRET = "shared-secret-of-the-fleet-0123"


def _done(job_id: str) -> JobState:
    return JobState(id=job_id, status=JobStatus.COMPLETED, output="https://cdn.example.com/o.mp4")


async def test_submit_is_recorded_before_the_job_is_returned(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """The record is there when submit returns, without the receiver's secret URL in it."""
    store = MemoryStore()
    fake.job_duration = 30
    receiver = WebhookReceiver()
    client = await make_client(store=store, webhook=receiver)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO, seed=3)
    [(record, final)] = await store.pending()
    assert record.id == job.id
    assert record.endpoint == "lipsync-image"
    assert record.request == {"formState": {"image": IMAGE, "audio": AUDIO, "seed": 3}}
    assert final is None
    assert receiver.url.rsplit("/", 1)[1] not in repr(record)


async def test_final_states_are_recorded_and_pending_cleared(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A job resolved by polling leaves its final state in the store and its record gone."""
    store = MemoryStore()
    client = await make_client(store=store)
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(20))
    )
    await asyncio.gather(*(j.wait(5) for j in jobs))
    await client.close()  # awaits the buffered writes
    assert await store.pending() == []
    finals = await store.finals([j.id for j in jobs])
    assert {s.status for s in finals.values()} == {JobStatus.COMPLETED}
    assert len(finals) == 20


async def test_delivery_to_another_receiver_resolves_through_the_store(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """The load balancer sends the webhook to another receiver: the shared store routes it."""
    port = free_port()
    store = MemoryStore()
    other = WebhookReceiver(port=port, secret=SECRET, store=store)  # a process that only listens
    mine = WebhookReceiver(f"http://127.0.0.1:{port}", secret=SECRET)
    async with other:
        client = await make_client(store=store, webhook=mine, webhook_grace=30)
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(50))
        )
        states = await asyncio.gather(*(j.wait(5) for j in jobs))
    assert {s.status for s in states} == {JobStatus.COMPLETED}
    assert fake.requests["GET /jobs"] == 0
    assert other.received == 50
    assert mine.received == 0


async def test_pending_resolves_known_outcomes_at_once(make_client: ClientFactory) -> None:
    """A resumed job whose final state the store holds resolves without a status read."""
    store = MemoryStore()
    await store.add_pending(PendingRecord(id="job-1", endpoint="lipsync-image", submitted_at=1.0))
    await store.record_final(_done("job-1"))
    client = await make_client(store=store, poll_interval=30)
    [job] = await client.pending()
    assert job.done()
    assert (await job).status is JobStatus.COMPLETED
    assert client.stats["status_reads"] == 0
    await client.close()
    assert await store.pending() == []


async def test_pending_without_store_lists_tracked_jobs(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Without a store, pending() is what this client tracks now (the in-memory store)."""
    fake.job_duration = 30
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert await client.pending() == [job]


class _DownStore(MemoryStore):
    async def add_pending(self, record: PendingRecord) -> JobState | None:
        raise StoreError("the database is down")


async def test_store_down_on_submit_raises_with_the_job(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A store failure after the service took the submit names the job and still tracks it."""
    client = await make_client(store=_DownStore())
    with pytest.raises(StoreError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    err = info.value
    assert err.job_id in fake.jobs
    assert err.job_id in str(err)
    assert err.job is not None
    assert (await err.job.wait(5)).status is JobStatus.COMPLETED


async def test_receiver_answers_503_when_the_store_cannot_record() -> None:
    """A delivery the store cannot keep is refused with 503, so the service sends it again."""
    import aiohttp

    class Broken(MemoryStore):
        async def record_final(self, state: JobState) -> bool:
            raise StoreError("down")

    receiver = WebhookReceiver(secret=SECRET, store=Broken())
    async with receiver, aiohttp.ClientSession() as session:
        body = {"id": "j", "status": "completed", "output": None, "error": ""}
        async with session.post(receiver.url, json=body) as response:
            assert response.status == 503


def test_requests_round_trip_through_records() -> None:
    """A resumed job's request is rebuilt from its record, extra fields included."""
    request = LipsyncImageMultiRequest(
        image=IMAGE,
        left_audio=AUDIO,
        right_audio=AUDIO,
        order="left_right",
        seed=7,
        webhook="https://hooks.example.com/x",
        extra={"guidance": 1.5},
    )
    assert request_from_record(record_for("id-1", request)) == request


async def test_listeners_hear_only_the_first_final_state() -> None:
    """Duplicated deliveries are announced once; finish() drops pending records."""
    store = MemoryStore()
    heard: list[JobState] = []
    store.add_listener(heard.append)
    await store.add_pending(PendingRecord(id="a", endpoint="lipsync-image", submitted_at=2.0))
    await store.add_pending(PendingRecord(id="b", endpoint="lipsync-image", submitted_at=1.0))
    assert await store.record_final(_done("a")) is True
    assert await store.record_final(_done("a")) is False
    assert await store.add_pending(PendingRecord(id="a", endpoint="x", submitted_at=3)) == _done(
        "a"
    )
    assert [r.id for r, _ in await store.pending()] == ["b", "a"]
    await store.finish([_done("a")], dropped=["b"])
    assert await store.pending() == []
    assert heard == [_done("a")]
