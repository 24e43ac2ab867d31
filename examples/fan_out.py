"""Fan out hundreds of jobs and take each as it finishes, within one deadline.

python examples/fan_out.py           # 300 jobs on the emulator; 3 on the real API
                                     # (LIPSYNC_EXAMPLE_JOBS=N to change: each is billed)
"""

from __future__ import annotations

import asyncio
import os
import time

from _target import AUDIO, IMAGE, target

from lipsync_async import JobFailed, JobTimeoutError, LipsyncClient


async def main() -> None:
    # The emulator fails 5% of jobs at random, like a real service on a bad day.
    async with target(failure_rate=0.05, seed=3) as t:
        count = int(os.environ.get("LIPSYNC_EXAMPLE_JOBS", "300" if t.fake else "3"))
        # max_in_flight bounds concurrent HTTP requests: the other submits wait their turn
        # instead of failing; rate_limit would cap requests per second as well.
        async with LipsyncClient(
            t.api_key, base_url=t.base_url, poll_interval=t.poll_interval, max_in_flight=32
        ) as client:
            started = time.monotonic()
            jobs = await asyncio.gather(
                *(
                    client.lipsync_image(image=IMAGE, audio=AUDIO, prompt=f"take {i}")
                    for i in range(count)
                )
            )
            print(f"submitted {len(jobs)} jobs in {time.monotonic() - started:.1f} s")
            completed = failed = 0
            try:
                # One deadline for the whole batch; jobs arrive first finished, first served.
                async for job in client.as_completed(jobs, timeout=2 * 3600 if not t.fake else 60):
                    try:
                        await job  # already done: returns the state or raises JobFailed
                        completed += 1
                    except JobFailed:
                        failed += 1
            except JobTimeoutError:
                # The stragglers keep running at the service; their ids are in `jobs`.
                late = [job.id for job in jobs if not job.done()]
                print(f"deadline passed with {len(late)} jobs still running")
            took = time.monotonic() - started
            print(f"{count} jobs: {completed} completed, {failed} failed in {took:.1f} s")
            print(f"status reads: {client.stats['status_reads']}")


if __name__ == "__main__":
    asyncio.run(main())
