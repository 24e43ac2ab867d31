"""Never lost, never paid twice: lost submit answers settled by their delivery (issue 13).

The emulator drops 10% of submit answers after creating (and billing) the job. N submits go
out through a client with a webhook receiver; each dropped one raises
``SubmissionUncertainError``, and ``await exc.resolve(timeout=...)`` waits for the job's
delivery, whose correlation token names that submit. Then every job is awaited.

Checked against the emulator's own books: every job it created is resolved by the SDK (the
dropped ones through ``resolve()``), none was created twice (one job per submit, each with its
own submit's prompt), none lost. As a baseline in the same run, the same N submits through a
client *without* a receiver: its uncertain submits cannot be settled, so the jobs behind them
are lost to the caller (or paid twice if resubmitted).

Usage: ``python benchmarks/bench_uncertain.py [--jobs 1000] [--drop-rate 0.1]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from lipsync_async import (
    Job,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    SubmissionUncertainError,
    WebhookReceiver,
)
from lipsync_async.testing import FakeLipsyncServer

IMAGE = "https://example.com/media/face.png"
AUDIO = "https://example.com/media/voice.mp3"


async def run(n: int, drop_rate: float, seed: int, *, receiver: bool) -> dict[str, float]:
    async with FakeLipsyncServer(job_duration=0.2, drop_rate=drop_rate, seed=seed) as fake:
        started = time.monotonic()
        async with LipsyncClient(
            fake.api_key,
            base_url=fake.base_url,
            webhook=WebhookReceiver() if receiver else None,
            poll_interval=0.2,
            webhook_grace=30.0,
            max_in_flight=32,
        ) as client:

            async def one(i: int) -> Job | SubmissionUncertainError:
                try:
                    return await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt=f"n{i}")
                except SubmissionUncertainError as exc:
                    return exc

            out = await asyncio.gather(*(one(i) for i in range(n)))
            answered = [x for x in out if isinstance(x, Job)]
            uncertain = [x for x in out if isinstance(x, SubmissionUncertainError)]
            settled: list[Job] = []
            for exc, job in zip(
                uncertain,
                await asyncio.gather(
                    *(exc.resolve(timeout=30) for exc in uncertain), return_exceptions=True
                ),
                strict=True,
            ):
                if isinstance(job, Job):
                    assert fake.jobs[job.id].form_state["prompt"] == exc.request.prompt
                    settled.append(job)
                elif isinstance(job, BaseException) and not isinstance(job, LipsyncError):
                    raise job
            jobs = answered + settled
            states = await asyncio.gather(*(j.wait(timeout=60) for j in jobs))
            completed = sum(s.status is JobStatus.COMPLETED for s in states)
        took = time.monotonic() - started
        created = set(fake.jobs)
        resolved = {j.id for j in jobs}
        prompts = [str(j.form_state.get("prompt")) for j in fake.jobs.values()]
        return {
            "submits": n,
            "created": len(created),
            "twice": len(prompts) - len(set(prompts)),
            "answered": len(answered),
            "uncertain": len(uncertain),
            "settled": len(settled),
            "resolved": len(resolved & created),
            "lost": len(created - resolved),
            "completed": completed,
            "seconds": took,
        }


async def main(n: int, drop_rate: float, seed: int) -> int:
    base = await run(n, drop_rate, seed, receiver=False)
    sdk = await run(n, drop_rate, seed, receiver=True)
    rows = [
        ("submits", "submits"),
        ("jobs the emulator created", "created"),
        ("jobs created twice", "twice"),
        ("submits answered", "answered"),
        ("SubmissionUncertainError", "uncertain"),
        ("settled by exc.resolve()", "settled"),
        ("created jobs resolved by the SDK", "resolved"),
        ("created jobs lost", "lost"),
        ("wall time, s", "seconds"),
    ]
    print(f"drop_rate={drop_rate}: lost submit answers, with and without a receiver")
    print(f"{'':<36}{'no receiver':>14}{'receiver':>12}")
    for label, key in rows:
        b, s = base[key], sdk[key]
        fmt = "{:>14.1f}{:>12.1f}" if key == "seconds" else "{:>14.0f}{:>12.0f}"
        print(f"{label:<36}" + fmt.format(b, s))
    lost_b = base["lost"] / max(base["created"], 1)
    print(
        f"lost per 1,000 created: {1000 * lost_b:.0f} without a receiver, "
        f"{1000 * sdk['lost'] / max(sdk['created'], 1):.0f} with one"
    )
    ok = sdk["lost"] == 0 and sdk["twice"] == 0 and sdk["resolved"] == sdk["created"]
    print("never lost, never paid twice:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--drop-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.jobs, args.drop_rate, args.seed)))
