"""``LipsyncClient.submit_many`` against the emulator over loopback sockets."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lipsync_async import (
    ClientClosedError,
    InsufficientCreditsError,
    Job,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    LipsyncImageRequest,
    Request,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from ._vclock import VirtualLoop, run
from .conftest import AUDIO, IMAGE, ClientFactory

SENDER = "lipsync-submit-many"


def senders() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == SENDER and not t.done()]


async def until_no_senders() -> None:
    """Wait (bounded) for the loop to finalise an abandoned iterator and end its senders."""
    async with asyncio.timeout(5.0):
        while senders():  # noqa: ASYNC110 - no event to wait on: the loop's finaliser ends them
            await asyncio.sleep(0)


async def test_outcomes_come_in_request_order_with_bad_items_in_place(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """One outcome per request, in input order, though 8 senders finish out of order; a bad
    item (not a request model, a local file without a receiver) is a ValidationError in its
    place and the others still go through."""
    client: LipsyncClient = await make_client()
    requests: list[object] = [
        LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=i) for i in range(120)
    ]
    requests[3] = {"image": IMAGE}
    face = tmp_path / "face.png"
    face.write_bytes(b"\x89PNG")
    requests[50] = LipsyncImageRequest(image=face, audio=AUDIO, seed=50)
    outcomes = [o async for o in client.submit_many(requests, concurrency=8)]  # type: ignore[arg-type]
    assert len(outcomes) == 120
    assert isinstance(outcomes[3], ValidationError)
    assert isinstance(outcomes[50], ValidationError)
    for i, outcome in enumerate(outcomes):
        if i in (3, 50):
            continue
        assert isinstance(outcome, Job)
        assert fake.jobs[outcome.id].form_state["seed"] == i
    jobs = [o for o in outcomes if isinstance(o, Job)]
    async for _ in client.as_completed(jobs, timeout=30.0):
        pass
    assert not senders()


async def test_refused_submits_are_reported_per_item() -> None:
    """The service refusing some submits (402, out of credits) yields the API error for those
    items, and the iterator goes on to the end; an async iterable of requests works too."""
    async with FakeLipsyncServer(job_duration=0.05, credits=30) as fake:  # 3 jobs of 10 credits
        async with LipsyncClient(fake.api_key, base_url=fake.base_url, poll_interval=0.05) as c:

            async def requests() -> AsyncIterator[Request]:
                for i in range(5):
                    yield LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=i)

            outcomes = [o async for o in c.submit_many(requests(), concurrency=1)]
    assert [type(o) for o in outcomes[:3]] == [Job, Job, Job]
    assert all(isinstance(o, InsufficientCreditsError) for o in outcomes[3:])


class _GoesOnAfterItsError:
    """An async iterator of requests whose item ``bad`` raises and that would go on after
    it (as a class-based ``__anext__`` may: a generator ends at its first raise); it counts
    the items asked of it."""

    def __init__(self, build: Callable[[int], Request], n: int) -> None:
        self.build = build
        self.n = n
        self.asked = 0

    def __aiter__(self) -> _GoesOnAfterItsError:
        return self

    async def __anext__(self) -> Request:
        i = self.asked
        self.asked += 1
        if i >= self.n:
            raise StopAsyncIteration
        await asyncio.sleep(0)  # senders queue up behind the one asking
        return self.build(i)


@pytest.mark.parametrize("source", ["generator", "async generator", "async iterator"])
@pytest.mark.parametrize("concurrency", [8, 2])
async def test_an_error_of_the_requests_iterable_comes_after_every_request_taken(
    fake: FakeLipsyncServer, make_client: ClientFactory, source: str, concurrency: int
) -> None:
    """A request model validates when it is built: an iterable that builds a bad one raises
    there. Every request taken before it still gets its outcome, in order (the submits in
    flight finish: each job they created is handed over, none is left unseen and paid for),
    then the error is raised at its position, and nothing after it is taken, even from an
    iterator that would go on. With 2 senders (a window of 8) and a caller slower than them,
    senders wait for room as it happens."""
    client: LipsyncClient = await make_client()

    def build(i: int) -> Request:
        return LipsyncImageRequest(image=IMAGE, audio=AUDIO if i != 20 else "ftp://x", seed=i)

    async def agen() -> AsyncIterator[Request]:
        for i in range(40):
            yield build(i)

    goes_on = _GoesOnAfterItsError(build, 40)
    requests: Iterable[Request] | AsyncIterable[Request] = goes_on
    if source == "generator":
        requests = (build(i) for i in range(40))
    elif source == "async generator":
        requests = agen()
    outcomes: list[Job | LipsyncError] = []

    async def take_all() -> None:
        async for outcome in client.submit_many(requests, concurrency=concurrency):
            outcomes.append(outcome)
            if concurrency == 2:
                await asyncio.sleep(0.005)

    with pytest.raises(ValidationError, match="audio"):
        await take_all()
    jobs = [o for o in outcomes if isinstance(o, Job)]
    assert len(jobs) == len(outcomes)
    assert [fake.jobs[job.id].form_state["seed"] for job in jobs] == list(range(20))
    assert len(fake.jobs) == 20  # every job created was handed over, none after the error
    if source == "async iterator":
        assert goes_on.asked == 21  # nothing asked after the error
    assert not senders()


async def test_a_cancelled_error_raised_by_the_requests_iterable_is_not_an_end(
    make_client: ClientFactory,
) -> None:
    """An async iterable of requests that raises ``CancelledError`` itself (it awaited
    something cancelled), while nobody cancels the iteration, has failed: the outcomes before
    it come, then it is raised, never a quiet end of the iteration with requests left out."""
    client: LipsyncClient = await make_client()

    async def requests() -> AsyncIterator[Request]:
        for i in range(10):
            if i == 5:
                raise asyncio.CancelledError
            yield LipsyncImageRequest(image=IMAGE, audio=AUDIO, seed=i)

    outcomes: list[Job | LipsyncError] = []

    async def take_all() -> None:
        async for outcome in client.submit_many(requests(), concurrency=4):
            outcomes.append(outcome)  # noqa: PERF401 - what came before the raise is kept

    task = asyncio.ensure_future(take_all())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(outcomes) == 5 and all(isinstance(o, Job) for o in outcomes)
    assert not senders()


async def test_early_break_leaves_no_task(make_client: ClientFactory) -> None:
    """Breaking out after the first outcome stops the senders: none is left once the loop has
    finalised the iterator, and at once with ``contextlib.aclosing``."""
    client: LipsyncClient = await make_client()
    requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(500)]
    async for outcome in client.submit_many(requests, concurrency=16):
        assert isinstance(outcome, Job)
        break
    await until_no_senders()
    async with contextlib.aclosing(client.submit_many(requests, concurrency=16)) as outcomes:
        async for _ in outcomes:
            break
    assert not senders()


async def test_cancelling_the_reader_ends_the_senders(make_client: ClientFactory) -> None:
    """Cancelling the task that iterates cancels the pool with it: no sender outlives it."""
    client: LipsyncClient = await make_client()
    started = asyncio.Event()

    async def consume() -> None:
        requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(10_000))
        async for _ in client.submit_many(requests, concurrency=16):
            started.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10.0):
        await started.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not senders()


async def test_a_closed_client_is_reported_per_item(make_client: ClientFactory) -> None:
    """Submits after close() began are ClientClosedError outcomes (nothing was sent), and the
    error of an item never aborts the iteration."""
    client: LipsyncClient = await make_client()
    requests: list[Request] = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(64)]
    outcomes: list[Job | LipsyncError] = []
    async for outcome in client.submit_many(requests, concurrency=4):
        outcomes.append(outcome)
        if len(outcomes) == 4:
            closing = asyncio.ensure_future(client.close())
    await closing
    assert len(outcomes) == 64
    assert any(isinstance(o, ClientClosedError) for o in outcomes)
    assert not senders()


# -- the senders read the jobs that come due while they submit (issue 18) ------------------------


def _sdk_tasks() -> tuple[list[str], contextlib.AbstractContextManager[None]]:
    """Names of the coroutines of the tasks the SDK starts while the context is entered (a
    task factory: asyncio's public hook; aiohttp's own tasks are not counted)."""
    started: list[str] = []
    loop = asyncio.get_running_loop()

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        code = getattr(coro, "cr_code", None)
        if code is not None and "lipsync_async" in code.co_filename:
            started.append(code.co_name)
        return asyncio.Task(coro, loop=loop, **kwargs)

    @contextlib.contextmanager
    def counting() -> Iterator[None]:
        loop.set_task_factory(factory)  # type: ignore[arg-type]  # kwargs: 3.12+ passes context
        try:
            yield
        finally:
            loop.set_task_factory(None)

    return started, counting()


def _job_json(job_id: str, status: str) -> dict[str, object]:
    return {"id": job_id, "model": "lipsync", "status": status, "output": None, "error": "",
            "executionTime": None, "timings": None}  # fmt: skip


def _job_id(request: web.Request) -> str:
    return request.match_info["tail"].rsplit("/", 1)[1]


class _Submits:
    """Answers submits as the service does, each after 5 ms, with ids job-1, job-2, ..."""

    def __init__(self) -> None:
        self.count = 0

    async def answer(self) -> web.Response:
        self.count += 1
        job_id = f"job-{self.count}"
        await asyncio.sleep(0.005)
        return web.json_response({"id": job_id, "status": "processing"})


async def test_the_senders_read_what_comes_due_instead_of_a_task_per_read() -> None:
    """Jobs that come due while submits go on are read by the senders between two submits
    (a submit, then a read, as POST + GET pairs go): the fan-out starts few tasks besides its
    senders, where a reader task per read made about one per job and kept the collector's
    young generation filling ~8x as often (benchmarks/HISTORY.md). Every job resolves."""
    n = 200
    submits = _Submits()

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            # Submits of 5 ms, 2 at a time: 8 jobs come due per 20 ms tick, and the senders
            # can take 2 after each submit, 16 per tick.
            return await submits.answer()
        return web.json_response(_job_json(_job_id(request), "completed"))

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, poll_interval=0.01) as client:
            started, counting = _sdk_tasks()
            with counting:
                requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(n))
                jobs = [j async for j in client.submit_many(requests, concurrency=2)]
                async for _ in client.as_completed(jobs, timeout=30.0):  # type: ignore[arg-type]
                    pass
            reads = client.stats["status_reads"]
    assert all(isinstance(j, Job) for j in jobs)
    assert reads == n
    others = len(started) - 2  # besides the 2 senders: readers (for the last jobs, due after)
    print(f"{others} reader tasks for {n} jobs")
    assert others <= n // 4, f"{others} tasks for {n} jobs: {collections.Counter(started)}"


async def test_a_due_job_is_read_while_every_sender_is_stuck_in_a_slow_submit() -> None:
    """The senders take due jobs only between submits; while all of them wait on submits that
    do not answer, a backstop starts readers within a few ticks: an awaited job resolves on
    time, not when the slow submits end."""
    release = asyncio.Event()
    posts = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal posts
        if request.method == "POST":
            posts += 1
            if posts > 2:
                await release.wait()
            return web.json_response({"id": f"job-{posts}", "status": "processing"})
        return web.json_response(_job_json(_job_id(request), "completed"))

    async with RawServer(answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, poll_interval=0.05) as client:
            requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(4)]
            async with contextlib.aclosing(client.submit_many(requests, concurrency=2)) as it:
                first = await anext(it)
                assert isinstance(first, Job)
                async with asyncio.timeout(1.0):  # both senders hang in submits 3 and 4
                    state = await first
                assert state.status is JobStatus.COMPLETED
                assert posts == 4
                release.set()


class _FirstReadHangs:
    """A service whose submits answer as `_Submits` does and whose first status read hangs
    until `release` is set (`started` is set when it begins); every read answers `status`."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.reads: list[str] = []
        self._submits = _Submits()

    async def answer(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            # The senders come back every few ms: they take a job as soon as it is due, well
            # before the backstop's readers would (two ticks, 40 ms, after it is due).
            return await self._submits.answer()
        job_id = _job_id(request)
        self.reads.append(job_id)
        if len(self.reads) == 1:
            self.started.set()
            await self.release.wait()
        return web.json_response(_job_json(job_id, self.status))

    async def submit_until_the_read_starts(
        self, client: LipsyncClient, then: Callable[[], Awaitable[None]] | None = None
    ) -> list[Job]:
        """``submit_many`` of 50 on two senders: while one is stuck in the read that hangs,
        the other submits, and its next outcome after the read began breaks the loop (after
        ``then()``). The jobs taken so far."""
        requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(50)]
        jobs: list[Job] = []
        async with contextlib.aclosing(client.submit_many(requests, concurrency=2)) as it:
            async for outcome in it:
                assert isinstance(outcome, Job)
                jobs.append(outcome)
                if self.started.is_set():
                    if then is not None:
                        await then()
                    break
        return jobs


async def test_a_sender_cancelled_mid_read_leaves_its_job_to_the_readers() -> None:
    """Breaking out of ``submit_many`` while a sender reads a due job cancels that read; the
    job goes back to the calendar, due at once, and still resolves (it must not stay marked
    as being read, which no reader would ever take again)."""
    service = _FirstReadHangs("completed")
    reads = service.reads
    async with RawServer(service.answer) as srv:
        async with LipsyncClient("sk_x", base_url=srv.base_url, poll_interval=0.01) as client:
            jobs = await service.submit_until_the_read_starts(client)
            assert not senders()
            service.release.set()
            async with asyncio.timeout(5.0):
                states = await asyncio.gather(*jobs)
    assert all(s.status is JobStatus.COMPLETED for s in states)
    assert reads.count(reads[0]) == 2  # the sender's read, cancelled; then a reader's


async def test_a_job_delivered_while_a_cancelled_sender_read_it_stays_ended() -> None:
    """A job whose delivery comes while a sender is reading it, the sender then cancelled (the
    caller broke out of ``submit_many``): the job stays completed, with the delivered state,
    and is not read again (putting it back in the calendar would make an ended job pending)."""
    service = _FirstReadHangs("processing")
    reads = service.reads
    receiver = WebhookReceiver()
    async with RawServer(service.answer) as srv:
        async with LipsyncClient(
            "sk_x", base_url=srv.base_url, webhook=receiver, webhook_grace=0.01, poll_interval=60
        ) as client:
            attached: list[Job] = []

            async def deliver_the_job_being_read() -> None:
                first = client.job(reads[0])
                attached.append(first)
                delivered = _job_json(first.id, "completed") | {"output": "https://o/x"}
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(receiver.url, json=delivered) as posted,
                ):
                    assert posted.status == 200
                assert first.done()

            await service.submit_until_the_read_starts(client, deliver_the_job_being_read)
            [first] = attached
            assert not senders()
            service.release.set()
            await asyncio.sleep(0.2)  # a read of it, if it were put back, would come now
            assert first.done() and first.result().output == "https://o/x"
            assert reads.count(first.id) == 1


async def test_a_failing_status_read_does_not_hold_up_the_senders_submits() -> None:
    """A sender's read of a due job is one attempt: while every status read fails with a
    503, the submits still go on at their own pace (the transport's retries, with their
    backoff of up to 30 s, would hold each sender); the failed job is read again later."""
    submits = _Submits()

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST":
            return await submits.answer()
        return web.json_response({"error": "busy"}, status=503)

    async with RawServer(answer) as srv:
        async with LipsyncClient(
            "sk_x", base_url=srv.base_url, poll_interval=0.01, backoff_base=5.0, backoff_max=30.0
        ) as client:
            requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(60)]
            async with asyncio.timeout(3.0):  # 60 submits of 5 ms, 2 at a time: ~0.2 s
                jobs = [j async for j in client.submit_many(requests, concurrency=2)]
            reads = [path for method, path in srv.hits if method == "GET"]
    assert all(isinstance(j, Job) for j in jobs)
    assert len(reads) > len(set(reads))  # the senders met failing reads, and read again


def test_jobs_the_last_sender_left_queued_get_readers_at_the_backstops_next_look(
    vloop: VirtualLoop,
) -> None:
    """A bucket that falls due while a ``submit_many`` sender is busy waits for the senders,
    with a backstop looking every 20 ms tick. When the last sender ends within that tick,
    having read only two of the three due jobs, the backstop's next look starts a reader for
    the third at once (no sender is left to take it), not one look later."""
    seen: dict[str, float] = {}
    answered: list[float] = []
    posts = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal posts
        loop = asyncio.get_running_loop()
        if request.method == "POST":
            posts += 1
            if posts == 4:  # the last submit is slow: jobs 1-3 fall due while it is sent
                await asyncio.sleep(0.07)
                answered.append(loop.time())
            return web.json_response({"id": f"job-{posts}", "status": "processing"})
        job_id = request.path.rsplit("/", 1)[1]
        seen.setdefault(job_id, loop.time())
        return web.json_response(_job_json(job_id, "completed"))

    async def scenario() -> None:
        async with RawServer(answer) as srv:
            async with LipsyncClient("sk_x", base_url=srv.base_url, poll_interval=0.05) as client:
                requests = [LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(4)]
                jobs = [o async for o in client.submit_many(requests, concurrency=1)]
                async with asyncio.timeout(1):
                    states = await asyncio.gather(*jobs)  # type: ignore[arg-type]
        assert [s.status for s in states] == [JobStatus.COMPLETED] * 4
        # The sender read two due jobs after its last submit, then ended; the third was read
        # by a reader the backstop started at its next look, within one tick.
        times = sorted(seen[j] for j in ("job-1", "job-2", "job-3"))
        assert times[1] - answered[0] < 0.001, seen  # two read by the sender, at once
        assert times[2] - answered[0] <= 0.02 + 0.001, seen  # one look later, not two

    run(vloop, scenario)
