"""Handle `SubmissionUncertainError`: a submit whose answer was lost is never sent twice.

    python examples/uncertain_submit.py

The API has no idempotency key. When a submit reached the service but its answer did not come
back (a dropped connection, a timeout), the job may exist and be billed: resending it blindly
could pay twice, so the SDK raises `SubmissionUncertainError` with `.request` instead, and you
decide. The emulator here drops 30% of submit answers after creating the job.
"""

from __future__ import annotations

import asyncio

from _target import AUDIO, IMAGE, target

from lipsync_async import Job, LipsyncClient, SubmissionUncertainError

# Resubmitting an uncertain request is a business decision: it may create a second, billed
# job. Leave False unless a duplicate costs less than a missing output.
RESUBMIT_UNCERTAIN = False


async def main() -> None:
    async with target(drop_rate=0.3, seed=11) as t:
        async with LipsyncClient(
            t.api_key, base_url=t.base_url, poll_interval=t.poll_interval
        ) as client:
            confirmed: list[Job] = []
            uncertain: list[SubmissionUncertainError] = []
            for i in range(20):
                try:
                    confirmed.append(
                        await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt=f"take {i}")
                    )
                except SubmissionUncertainError as exc:
                    # exc.request is exactly what was sent: keep it, reconcile it later (its
                    # webhook delivery, your dashboard), or resubmit it knowingly below.
                    uncertain.append(exc)
            print(f"submitted 20: {len(confirmed)} confirmed, {len(uncertain)} uncertain")
            if RESUBMIT_UNCERTAIN:
                confirmed += [await client.submit(exc.request) for exc in uncertain]
            await asyncio.gather(*confirmed)
            print(f"{len(confirmed)} confirmed jobs completed")
        if t.fake is not None:
            # Only the emulator can show it: every uncertain submit did create a job.
            print(
                f"the service created {len(t.fake.jobs)} jobs: resending the uncertain ones "
                "would have paid twice for them"
            )


if __name__ == "__main__":
    asyncio.run(main())
