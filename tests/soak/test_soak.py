"""Soak: thousands of jobs against the emulator with every fault on at once.

Faults, all together: 5% of requests answered 503, a requests/s limit low enough to force 429s,
10% of submits dropped after the job was created (the double-charge case), 20% of webhooks
duplicated, 10% delivered before the submit's answer, 10% lost, 5% of jobs failing, and the
receiver stopped and restarted once in the middle of the run (same secret, same port, so the
URL every pending job carries stays valid).

What must hold:

- every ``Job`` the client returned resolves to the emulator's truth (its final state, field for
  field: completed with the same output, or ``JobFailed`` with the same error);
- no duplicate job: the emulator created exactly one job per successful submit plus one per
  ``SubmissionUncertainError``;
- every dropped submit surfaced as ``SubmissionUncertainError`` (and nothing else did);
- memory flat: traced memory after each of 3 rounds grows by no more than a small bound;
- nothing left open: no task, no file descriptor (socket) beyond those before the run.

Run as a script for the full size and the figures table::

    python -m tests.soak.test_soak --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest

from lipsync_async import (
    JobFailed,
    JobState,
    LipsyncClient,
    LipsyncError,
    SubmissionUncertainError,
    WebhookReceiver,
)
from lipsync_async._job import Job
from lipsync_async.testing import FakeLipsyncServer

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"
VIDEO = "https://media.example.com/clip.mp4"

ROUNDS = 3
#: How far traced memory after the last round may exceed its peak after the earlier rounds.
#: Between rounds it moves by bounded library state: yarl's URL caches filling, and mostly the
#: kept-alive connections on both ends (~4-9 KiB of parser buffers each, their number drifting
#: by a few dozen between rounds). A leak shows instead in the live-object counts (Jobs,
#: JobStates, tasks still alive after a round: they must not grow), and past this bound as soon
#: as it costs ~200 B per job at 1,667 jobs a round.
MEMORY_BOUND = 256 * 1024
#: aiohttp serves each open connection with a task of its own (``RequestHandler.start``), on
#: the emulator (the client's pool: ``max_in_flight`` + ``max_downloads`` = 68) and on the
#: receiver (the emulator's delivery pool: aiohttp's default 100). How many are open after a
#: round depends on which kept-alive connections were idle-closed when (77 to 160 seen on one
#: run), not on the jobs; twice the pools' sum leaves that room, and a task per job (400 a
#: round) still shows past it.
CONNECTION_TASKS_BOUND = 2 * (68 + 100)


@dataclass
class Figures:
    """What a soak run counted and checked."""

    jobs_requested: int = 0
    rounds: int = 0
    seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    jobs_returned: int = 0  # submits that returned a Job
    uncertain: int = 0  # SubmissionUncertainError raised
    refused: int = 0  # other LipsyncError from a submit (retries exhausted): no job
    emulator_jobs: int = 0
    resolved_to_truth: int = 0
    mismatches: list[str] = field(default_factory=list)
    orphans: int = 0  # emulator jobs with no Job: the uncertain submits' jobs
    status_reads: int = 0
    memory: list[int] = field(default_factory=list)  # traced bytes after each round
    early_held: list[int] = field(default_factory=list)  # early-delivery buffer size per round
    live: list[tuple[int, int, int]] = field(default_factory=list)  # Jobs, JobStates, tasks
    connection_tasks: list[int] = field(default_factory=list)  # aiohttp's, one per connection
    leftover_tasks: list[str] = field(default_factory=list)
    fd_delta: int = 0

    @property
    def duplicates(self) -> int:
        return self.emulator_jobs - (self.jobs_returned + self.uncertain)

    @property
    def memory_growth(self) -> int:
        """Last round's traced memory minus the peak of the rounds before it."""
        return self.memory[-1] - max(self.memory[:-1]) if len(self.memory) > 1 else 0

    def failures(self) -> list[str]:
        """Every figure that is not what it must be (empty: the soak passed)."""
        out = []
        if self.resolved_to_truth != self.jobs_returned or self.mismatches:
            out.append(
                f"{self.resolved_to_truth}/{self.jobs_returned} resolved to the truth; "
                f"first mismatches: {self.mismatches[:3]}"
            )
        if self.duplicates != 0:
            out.append(f"{self.duplicates} duplicate jobs")
        if self.uncertain != self.faults.get("submits dropped", -1):
            out.append(f"{self.uncertain} uncertain vs {self.faults.get('submits dropped')} drops")
        if self.orphans != self.uncertain:
            out.append(f"{self.orphans} orphan jobs vs {self.uncertain} uncertain submits")
        if self.refused:
            out.append(f"{self.refused} submits refused after exhausting retries")
        if self.memory_growth > MEMORY_BOUND:
            out.append(f"memory grew {self.memory_growth} B over {self.rounds} rounds")
        # A few Jobs stay referenced for a while after they resolve (stale calendar entries
        # until their due time, at most webhook_grace): they move a little between rounds.
        # A leak grows with the jobs.
        slack = max(20, self.jobs_requested // self.rounds // 10)
        if self.live and any(
            n > first + slack for n, first in zip(self.live[-1], self.live[0], strict=True)
        ):
            out.append(f"live objects (Jobs, JobStates, tasks) grew: {self.live}")
        if any(n > CONNECTION_TASKS_BOUND for n in self.connection_tasks):
            out.append(f"connection tasks past the pools' bound: {self.connection_tasks}")
        if self.leftover_tasks:
            out.append(f"tasks left: {self.leftover_tasks[:5]}")
        if self.fd_delta > 0:
            out.append(f"{self.fd_delta} file descriptors left open")
        return out

    def table(self) -> str:
        """The figures as a plain-text table."""
        rows: list[tuple[str, str]] = [
            ("jobs submitted", f"{self.jobs_requested} in {self.rounds} rounds"),
            ("wall time", f"{self.seconds:.1f} s"),
        ]
        rows += [(f"fault: {k}", str(v)) for k, v in self.faults.items()]
        rows += [
            ("submits that returned a Job", str(self.jobs_returned)),
            ("resolved to the emulator's truth", f"{self.resolved_to_truth}/{self.jobs_returned}"),
            (
                "SubmissionUncertainError",
                f"{self.uncertain} (dropped: {self.faults.get('submits dropped')})",
            ),
            ("submits refused (retries exhausted)", str(self.refused)),
            ("emulator jobs", f"{self.emulator_jobs} = {self.jobs_returned} + {self.uncertain}"),
            ("duplicate jobs", str(self.duplicates)),
            ("status reads (fallback polling)", str(self.status_reads)),
            (
                "traced memory after each round",
                " / ".join(f"{m / 1024:.0f} KiB" for m in self.memory)
                + f" (last minus earlier peak {self.memory_growth / 1024:+.1f} KiB,"
                f" bound {MEMORY_BOUND // 1024} KiB)",
            ),
            ("early-delivery buffer after each round", " / ".join(map(str, self.early_held))),
            (
                "live Jobs, JobStates, tasks after each round",
                " / ".join(f"{j}, {s}, {t}" for j, s, t in self.live),
            ),
            (
                "connection tasks after each round",
                " / ".join(map(str, self.connection_tasks)),
            ),
            ("tasks left after close", str(len(self.leftover_tasks))),
            ("file descriptors left after close", str(self.fd_delta)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the task check still runs
        return 0


def _is_connection_task(task: asyncio.Task[Any]) -> bool:
    """aiohttp's task serving one open connection (it lives as long as the connection)."""
    return getattr(task.get_coro(), "__qualname__", "") == "RequestHandler.start"


def _live() -> tuple[tuple[int, int, int], int]:
    """Jobs, JobStates and tasks alive now (a leak of any per job shows here first), the tasks
    less aiohttp's per-connection ones; and how many of those there are."""
    objects = gc.get_objects()
    jobs = sum(type(o) is Job for o in objects)
    states = sum(type(o) is JobState for o in objects)
    tasks = asyncio.all_tasks()
    connections = sum(map(_is_connection_task, tasks))
    return (jobs, states, len(tasks) - connections), connections


def _wire(state: JobState) -> dict[str, Any]:
    return {
        "id": state.id,
        "model": state.model,
        "status": str(state.status),
        "output": state.output,
        "error": state.error,
        "executionTime": state.execution_time_ms,
        "timings": state.timings,
    }


async def _submit(client: LipsyncClient, i: int) -> Job | BaseException:
    try:
        if i % 3 == 0:
            return await client.lipsync_video(video=VIDEO, audio=AUDIO)
        if i % 3 == 1:
            return await client.lipsync_image(image=IMAGE, audio=AUDIO, seed=i)
        return await client.lipsync_image_multi(
            image=IMAGE, left_audio=AUDIO, right_audio=AUDIO, order="left_right"
        )
    except LipsyncError as exc:  # SubmissionUncertainError, or retries exhausted
        return exc


async def _quiet(fake: FakeLipsyncServer, still: float = 0.3, limit: float = 20.0) -> None:
    """Wait until the emulator has made no delivery attempt for ``still`` seconds."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline:
        now = len(fake.deliveries) + len(fake.lost_deliveries)
        if now == seen:
            return
        seen = now
        await asyncio.sleep(still)


async def _restart(receiver: WebhookReceiver, fake: FakeLipsyncServer, after: int) -> None:
    """Stop the receiver once ``after`` jobs exist, stay down 0.5 s, start it on the same port."""
    while len(fake.jobs) < after:  # noqa: ASYNC110 - the emulator's books have no event to await
        await asyncio.sleep(0.01)
    await receiver.close()
    await asyncio.sleep(0.5)  # longer than the emulator's 3 retries (0.35 s): some deliveries lost
    await receiver.start()


async def soak(
    jobs: int = 5_000,
    *,
    rounds: int = ROUNDS,
    job_duration: float = 0.2,
    rate_limit: float = 100.0,
    seed: int = 7,
) -> Figures:
    """Run the soak and return its figures (check them with :meth:`Figures.failures`)."""
    fig = Figures(jobs_requested=jobs, rounds=rounds)
    faults = {
        "503 answers": 0,
        "429 answers": 0,
        "submits dropped": 0,
        "webhooks duplicated": 0,
        "webhooks early": 0,
        "webhooks lost": 0,
        "delivery attempts refused (receiver down)": 0,
        "jobs failed": 0,
        "receiver restarts": 1,
    }
    # The SDK logs every 429 pause and retried read at WARNING: thousands of lines here, and
    # pytest would keep every record in memory (noise for the memory figure).
    sdk_log = logging.getLogger("lipsync_async")
    level = sdk_log.level
    sdk_log.setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    tasks_before = asyncio.all_tasks()
    fds_before = _open_fds()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    started = time.monotonic()
    per_round = [jobs // rounds + (1 if r < jobs % rounds else 0) for r in range(rounds)]
    try:
        async with FakeLipsyncServer(
            job_duration=job_duration,
            failure_rate=0.05,
            rate_limit=rate_limit,
            server_error_rate=0.05,
            drop_rate=0.10,
            webhook_duplicate_rate=0.20,
            webhook_early_rate=0.10,
            webhook_loss_rate=0.10,
            # Three 429s for sure, whatever the machine's speed: on a loaded machine the client
            # may never outrun `rate_limit`, and the soak must still see the fault.
            throttle_next=3,
            throttle_retry_after=1,
            seed=seed,
        ) as fake:
            receiver = WebhookReceiver(secret="soak-secret-0123456789", port=_free_port())
            async with receiver:
                url = receiver.url
                async with LipsyncClient(
                    fake.api_key,
                    base_url=fake.base_url,
                    webhook=receiver,
                    poll_interval=0.2,
                    webhook_grace=1.0,
                    max_retries=12,
                    backoff_base=0.05,
                    backoff_max=1.0,
                ) as client:
                    for r, count in enumerate(per_round):
                        restart = None
                        if r == rounds // 2:  # mid-run: halfway through the middle round
                            restart = loop.create_task(_restart(receiver, fake, count // 2))
                        await _round(client, fake, count, fig, faults)
                        if restart is not None:
                            await restart
                            assert receiver.url == url
                        # Deliveries for ids the client does not track (a duplicate of a job
                        # already resolved, a dropped submit's job) wait in the tracker's
                        # early-delivery buffer for 300 s in case their submit answer is still
                        # on its way: bounded by count and bytes (see test_fuzz's bound test),
                        # but a 3-round soak only ever sees it fill. Its size is reported, then
                        # it is emptied so the memory figure shows everything else.
                        fig.early_held.append(client.stats["held_deliveries"])
                        client._tracker._early.clear()
                        gc.collect()
                        live, connections = _live()
                        fig.live.append(live)
                        fig.connection_tasks.append(connections)
                        fig.memory.append(tracemalloc.get_traced_memory()[0])
                    fig.status_reads = client.stats["status_reads"]
        await asyncio.sleep(0.1)  # transports close on the next loop iterations
        fig.leftover_tasks = [
            repr(t) for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()
        ]
        fig.fd_delta = _open_fds() - fds_before
    finally:
        if not was_tracing:
            tracemalloc.stop()
        sdk_log.setLevel(level)
    fig.faults = faults
    fig.seconds = time.monotonic() - started
    return fig


async def _round(
    client: LipsyncClient,
    fake: FakeLipsyncServer,
    count: int,
    fig: Figures,
    faults: dict[str, int],
) -> None:
    """Submit ``count`` jobs at once, await them all, compare with the truth, reset the books."""
    results = await asyncio.gather(*(_submit(client, i) for i in range(count)))
    handles = [r for r in results if isinstance(r, Job)]
    fig.jobs_returned += len(handles)
    fig.uncertain += sum(isinstance(r, SubmissionUncertainError) for r in results)
    fig.refused += sum(
        isinstance(r, LipsyncError) and not isinstance(r, SubmissionUncertainError) for r in results
    )
    outcomes = await asyncio.gather(*(j.wait(timeout=60) for j in handles), return_exceptions=True)
    for job, outcome in zip(handles, outcomes, strict=True):
        truth = fake.jobs.get(job.id)
        if truth is None:
            fig.mismatches.append(f"{job.id}: unknown to the emulator")
            continue
        state = outcome.state if isinstance(outcome, JobFailed) else outcome
        if isinstance(state, JobState) and _wire(state) == truth.final_state():
            fig.resolved_to_truth += 1
        else:
            fig.mismatches.append(f"{job.id}: {outcome!r} vs {truth.final_state()}")
    await _quiet(fake)
    returned = {j.id for j in handles}
    fig.orphans += sum(1 for i in fake.jobs if i not in returned)
    fig.emulator_jobs += len(fake.jobs)
    faults["503 answers"] += fake.requests["5xx"]
    faults["429 answers"] += fake.requests["429"]
    faults["submits dropped"] += fake.requests["dropped"]
    faults["webhooks duplicated"] += sum(d.duplicate and d.attempt == 1 for d in fake.deliveries)
    faults["webhooks early"] += sum(j.finishes_at == j.created_at for j in fake.jobs.values())
    faults["webhooks lost"] += len(fake.lost_deliveries)
    faults["delivery attempts refused (receiver down)"] += sum(
        d.status is None for d in fake.deliveries
    )
    faults["jobs failed"] += sum(j.fails for j in fake.jobs.values())
    # The emulator's books grow by design (it remembers every job): reset them so the memory
    # figure is the SDK's (client, tracker, receiver), not the emulator's.
    fake.jobs.clear()
    fake.requests.clear()
    fake.deliveries.clear()
    fake.lost_deliveries.clear()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_soak_every_fault_at_once() -> None:
    """1,200 jobs, every fault at once, receiver restarted mid-run: every Job resolves to the
    emulator's truth, no duplicate job, every dropped submit is a SubmissionUncertainError,
    memory flat over 3 rounds, no task or socket left open."""
    fig = await soak(1_200)
    print("\n" + fig.table())
    assert fig.faults["429 answers"] > 0 and fig.faults["503 answers"] > 0
    assert fig.faults["submits dropped"] > 0 and fig.faults["webhooks lost"] > 0
    assert fig.faults["webhooks duplicated"] > 0 and fig.faults["webhooks early"] > 0
    assert fig.failures() == []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="emulator requests/s")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    fig = asyncio.run(
        soak(args.jobs, rounds=args.rounds, rate_limit=args.rate_limit, seed=args.seed)
    )
    print(fig.table())
    failures = fig.failures()
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
