"""Uncertain submits settled by their delivery's correlation token (issue 13), over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lipsync_async import (
    Job,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    SubmissionUncertainError,
    WebhookReceiver,
)
from lipsync_async.stores import MemoryStore, SQLiteStore
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, ClientFactory


async def _submit_all(
    client: LipsyncClient, n: int
) -> tuple[list[Job], list[SubmissionUncertainError]]:
    async def one(i: int) -> Job | SubmissionUncertainError:
        try:
            return await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt=f"take {i}")
        except SubmissionUncertainError as exc:
            return exc

    out = await asyncio.gather(*(one(i) for i in range(n)))
    jobs = [x for x in out if isinstance(x, Job)]
    uncertain = [x for x in out if isinstance(x, SubmissionUncertainError)]
    return jobs, uncertain


async def test_dropped_answers_settle_never_lost_never_twice() -> None:
    """drop_rate=0.1, 200 submits with a receiver: every job the emulator created is resolved
    by the SDK (the dropped ones through exc.resolve()), none created twice, none lost."""
    async with FakeLipsyncServer(job_duration=0.05, drop_rate=0.1, seed=5) as fake:
        receiver = WebhookReceiver()
        async with LipsyncClient(
            fake.api_key,
            base_url=fake.base_url,
            webhook=receiver,
            poll_interval=0.05,
            webhook_grace=5.0,
        ) as client:
            jobs, uncertain = await _submit_all(client, 200)
            assert len(uncertain) == fake.requests["dropped"] > 0
            assert all(exc.resolvable for exc in uncertain)
            settled = await asyncio.gather(*(exc.resolve(timeout=10) for exc in uncertain))
            assert all(isinstance(j, Job) for j in settled)
            everything = jobs + [j for j in settled if j is not None]
            states = await asyncio.gather(*(j.wait(timeout=10) for j in everything))
            assert {s.status for s in states} == {JobStatus.COMPLETED}
            # Calling resolve again gives the same Job.
            assert await uncertain[0].resolve(timeout=0) is settled[0]
        # The emulator's books: one job per submit, and each one resolved by the SDK.
        assert len(fake.jobs) == 200
        assert sorted(j.id for j in everything) == sorted(fake.jobs)
        # Every settled job is the one its own submit created (its prompt).
        for exc, job in zip(uncertain, settled, strict=True):
            assert job is not None
            assert fake.jobs[job.id].form_state["prompt"] == getattr(exc.request, "prompt", None)


async def test_resolve_without_receiver_says_so_at_once(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Without a receiver, resolve() raises LipsyncError at once: nothing can settle it."""
    fake.drop_rate = 1.0
    client: LipsyncClient = await make_client()
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert not info.value.resolvable
    with pytest.raises(LipsyncError, match="cannot settle"):
        await asyncio.wait_for(info.value.resolve(timeout=30), 1)


async def test_resolve_returns_none_when_no_delivery_comes(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """A dropped answer whose delivery is lost: resolve() returns None after its timeout,
    and the token is forgotten once the client closes (resolve then raises)."""
    fake.drop_rate = 1.0
    fake.webhook_loss_rate = 1.0
    client: LipsyncClient = await make_client(webhook=WebhookReceiver(), webhook_grace=5.0)
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert await info.value.resolve(timeout=0.3) is None
    assert len(fake.jobs) == 1  # the job exists: None is "no sign of it", not proof
    await client.close()
    with pytest.raises(LipsyncError, match="closed"):
        await info.value.resolve(timeout=0.1)


async def test_tokens_are_kept_only_for_uncertain_submits(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """Answered submits keep no token: 100 tracked jobs leave the token book empty; an
    uncertain one keeps exactly one until it is settled."""
    receiver = WebhookReceiver()
    client: LipsyncClient = await make_client(webhook=receiver, webhook_grace=5.0)
    fake.job_duration = 30.0
    jobs = await asyncio.gather(
        *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(100))
    )
    assert client.stats["pending"] == 100
    assert receiver.stats["tokens"] == 0
    fake.drop_rate = 1.0
    fake.job_duration = 0.05
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    assert receiver.stats["tokens"] == 1
    job = await info.value.resolve(timeout=10)
    assert job is not None
    assert receiver.stats["tokens"] == 0
    for j in jobs:
        j.cancel()


async def test_delivery_to_another_worker_settles_through_the_store(tmp_path: Path) -> None:
    """The delivery of an uncertain submit lands on another process's receiver (sharing the
    SQLite store): that receiver records the token, and the submitting worker's resolve()
    finds the job there."""
    path = tmp_path / "jobs.db"
    async with FakeLipsyncServer(job_duration=0.05, drop_rate=1.0, seed=2) as fake:
        listener = WebhookReceiver(secret="s" * 24, store=SQLiteStore(path))
        async with listener:
            # The submitting worker's URL points at the other worker (one public URL).
            worker = WebhookReceiver(
                public_url=listener.url.rsplit("/webhooks", 1)[0], secret="s" * 24
            )
            async with LipsyncClient(
                fake.api_key,
                base_url=fake.base_url,
                webhook=worker,
                store=SQLiteStore(path),
                poll_interval=0.05,
                webhook_grace=5.0,
            ) as client:
                with pytest.raises(SubmissionUncertainError) as info:
                    await client.lipsync_image(image=IMAGE, audio=AUDIO)
                job = await info.value.resolve(timeout=10)
                assert job is not None
                assert job.id in fake.jobs
                state = await job.wait(timeout=10)
                assert state.status is JobStatus.COMPLETED
        assert len(fake.jobs) == 1


async def test_memory_store_records_tokens_for_its_listeners() -> None:
    """MemoryStore keeps a token's job id (first one wins) and forgets unknown tokens."""
    store = MemoryStore()
    await store.record_token("t" * 16, "job-1")
    await store.record_token("t" * 16, "job-2")
    assert await store.token_job("t" * 16) == "job-1"
    assert await store.token_job("u" * 16) is None


async def test_verify_receiver_settles_by_reading_the_api(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """With verify=True, the token only names the job: resolve() tracks it and its state is
    read from the API (a status read), never taken from the delivery."""
    fake.drop_rate = 1.0
    client: LipsyncClient = await make_client(
        webhook=WebhookReceiver(verify=True), webhook_grace=5.0
    )
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    job = await info.value.resolve(timeout=10)
    assert job is not None and job.id in fake.jobs
    state = await job.wait(timeout=10)
    assert state.status is JobStatus.COMPLETED
    assert fake.requests["GET /jobs"] >= 1


async def test_uncertain_tokens_are_bounded_by_count_and_time(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """max_uncertain: a token pushed out by newer uncertain submits cannot settle anything
    (resolve returns None at once); token_ttl: a delivery arriving after its token expired
    settles nothing either (it falls back to id matching, and nobody tracks the id)."""
    fake.drop_rate = 1.0
    fake.webhook_delay = 0.6
    receiver = WebhookReceiver(max_uncertain=2, token_ttl=0.3)
    client: LipsyncClient = await make_client(webhook=receiver, webhook_grace=5.0)
    errors: list[SubmissionUncertainError] = []
    for _ in range(3):
        with pytest.raises(SubmissionUncertainError) as info:
            await client.lipsync_image(image=IMAGE, audio=AUDIO)
        errors.append(info.value)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await errors[0].resolve(timeout=5) is None  # pushed out by the two newer ones
    assert loop.time() - started < 1.0
    # The other two expire (0.3 s) before their deliveries come (0.6 s after the job ends).
    assert await errors[2].resolve(timeout=2) is None
    assert len(fake.jobs) == 3
