"""The store contract, for every store: memory and SQLite always, Redis with a redis-server.

Apart from ``test_stores_redis.py`` (whose every test needs a real redis-server and is skipped
without one), so a machine without Redis still checks the memory and SQLite stores.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lipsync_async import JobState, JobStatus
from lipsync_async.stores import (
    CLAIM_DONE,
    CLAIM_HELD,
    MemoryStore,
    PendingRecord,
    RedisStore,
    SQLiteStore,
    Store,
)

from .stores_support import REDIS_SERVER

NO_REDIS = "redis-server is not installed (apt-get install redis-server, then rerun)"


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS)),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store, open."""
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "jobs.db")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, prefix="t" + secrets.token_hex(4))
    await s.open()
    yield s
    await s.close()


def _done(job_id: str) -> JobState:
    return JobState(id=job_id, status=JobStatus.COMPLETED, output="https://cdn.example.com/o.mp4")


async def test_store_contract(store: Store) -> None:
    """Every store: records, first-final-only announcements, finish and drop, final lookups."""
    heard: list[JobState] = []
    store.add_listener(heard.append)
    assert await store.ready()
    first = PendingRecord(id="a", endpoint="lipsync-image", submitted_at=2)
    assert await store.add_pending(first) is None
    await store.add_pending(
        PendingRecord(
            id="b", endpoint="lipsync-video", submitted_at=1, request={"formState": {"seed": 1}}
        )
    )
    assert await store.record_final(_done("a")) is True
    assert await store.record_final(_done("a")) is False
    assert await store.record_final(JobState(id="c", status=JobStatus.PROCESSING)) is False
    rows = await store.pending()
    assert [(r.id, f) for r, f in rows] == [("b", None), ("a", _done("a"))]
    assert rows[0][0].request == {"formState": {"seed": 1}}
    assert await store.add_pending(PendingRecord(id="a", endpoint="x", submitted_at=3)) == _done(
        "a"
    )
    await store.finish([_done("a"), _done("d")], dropped=["b"])
    assert await store.pending() == []
    assert set(await store.finals(["a", "b", "d"])) == {"a", "d"}
    if isinstance(store, RedisStore):  # a process does not hear itself: others do
        assert heard == []
        assert store.announced == 2
    else:
        assert heard == [_done("a"), _done("d")]


async def test_correlation_tokens_contract(store: Store) -> None:
    """record_token keeps the first job a token named and token_job reads it back; an
    unknown token is None."""
    await store.record_token("tok_" + "a" * 12, "job-1")
    await store.record_token("tok_" + "a" * 12, "job-2")  # first one wins
    assert await store.token_job("tok_" + "a" * 12) == "job-1"
    assert await store.token_job("tok_" + "b" * 12) is None


async def test_completion_claims_contract(store: Store) -> None:
    """The first claim of a job gets a fencing token; another claimant finds it held, the
    holder claiming again (a retry whose answer was lost) gets its own token back; an ack with
    another token fails, with the holder's it makes the claim done for good; tokens grow."""
    first = await store.claim("job-1", "a")
    assert first > 0
    assert await store.claim("job-1", "b") == CLAIM_HELD
    assert await store.claim("job-1", "a") == first
    assert await store.ack("job-1", first + 1000) is False
    assert await store.ack("job-1", first) is True
    assert await store.claim("job-1", "a") == CLAIM_DONE
    assert await store.claim("job-1", "b") == CLAIM_DONE
    assert await store.ack("job-1", first) is False  # done: nothing to ack
    assert await store.claim("job-2", "b") > first
    # A claim released by its holder (its client closed mid-callback) is claimable at once;
    # a release with a token that no longer holds it changes nothing.
    third = await store.claim("job-3", "a")
    await store.release("job-3", third + 1000)
    assert await store.claim("job-3", "b") == CLAIM_HELD
    await store.release("job-3", third)
    assert await store.claim("job-3", "b") > third


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS)),
    ],
)
def test_equal_stores_are_one_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two objects for one backend, location and prefix are one store (``same_as``, and the
    receiver takes the client's object); another file or prefix is another store, which the
    client refuses with a ValidationError naming ``store``. MemoryStores are only themselves."""
    from lipsync_async import LipsyncClient, ValidationError, WebhookReceiver

    def make(variant: str = "") -> Store:
        if kind == "sqlite":
            return SQLiteStore(tmp_path / f"jobs{variant}.db")
        return RedisStore(request.getfixturevalue("redis_url"), prefix=f"eq{variant}")

    a, b = make(), make()
    assert a.same_as(b) and b.same_as(a) and a.key() == b.key()
    assert not a.same_as(make("-other"))
    assert not MemoryStore().same_as(MemoryStore())
    LipsyncClient("sk_test", webhook=WebhookReceiver(store=a), store=b)  # accepted
    with pytest.raises(ValidationError) as info:
        LipsyncClient("sk_test", webhook=WebhookReceiver(store=make("-other")), store=b)
    assert info.value.field == "store"
