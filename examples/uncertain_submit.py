"""Settle `SubmissionUncertainError`: a submit whose answer was lost is never sent twice.

    python examples/uncertain_submit.py

The API has no idempotency key. When a submit reached the service but its answer did not come
back (a dropped connection, a timeout), the job may exist and be billed: resending it blindly
could pay twice, so the SDK raises `SubmissionUncertainError` instead of sending it again.

With a webhook receiver, every submit's webhook URL carries a fresh correlation token, so the
job's delivery names the submit even though its id never came back: `await exc.resolve(
timeout=...)` returns that `Job` (tracked like any other) once the delivery proves it exists,
or `None` if nothing came in time (most likely no job; not a proof). Without a receiver,
`resolve()` raises at once: nothing could settle it. The emulator here drops 30% of submit
answers after creating the job.
"""

from __future__ import annotations

import asyncio

from _target import AUDIO, IMAGE, target

from lipsync_async import Job, LipsyncClient, SubmissionUncertainError, WebhookReceiver

# Resubmitting a submit that stayed unsettled is a business decision: it may create a second,
# billed job (the delivery may just be late or lost). Leave False unless a duplicate costs less
# than a missing output.
RESUBMIT_UNSETTLED = False
SETTLE_TIMEOUT = 120.0  # a delivery comes when the job ends: allow for its run time


async def main() -> None:
    async with target(drop_rate=0.3, seed=11) as t:
        # With the real API, the receiver needs a public https URL the service can reach
        # (WebhookReceiver("https://hooks.example.com", port=8080)); the emulator is local.
        receiver = WebhookReceiver() if t.fake is not None else None
        async with LipsyncClient(
            t.api_key, base_url=t.base_url, poll_interval=t.poll_interval, webhook=receiver
        ) as client:
            confirmed: list[Job] = []
            uncertain: list[SubmissionUncertainError] = []
            for i in range(20):
                try:
                    confirmed.append(
                        await client.lipsync_image(image=IMAGE, audio=AUDIO, prompt=f"take {i}")
                    )
                except SubmissionUncertainError as exc:
                    uncertain.append(exc)  # exc.request is exactly what was sent
            print(f"submitted 20: {len(confirmed)} confirmed, {len(uncertain)} uncertain")
            unsettled: list[SubmissionUncertainError] = []
            for lost in uncertain:
                if not lost.resolvable:  # no receiver: only your own records can tell
                    unsettled.append(lost)
                    continue
                job = await lost.resolve(timeout=SETTLE_TIMEOUT)
                if job is None:
                    unsettled.append(lost)
                else:
                    confirmed.append(job)  # the job its own delivery proved: no second submit
            print(
                f"settled {len(uncertain) - len(unsettled)} uncertain submit(s) through their "
                f"delivery; {len(unsettled)} left unsettled"
            )
            if RESUBMIT_UNSETTLED:
                confirmed += [await client.submit(u.request) for u in unsettled]
            await asyncio.gather(*confirmed)
            print(f"{len(confirmed)} jobs completed")
        if t.fake is not None:
            # Only the emulator can show it: every uncertain submit did create a job, and each
            # was found, none paid twice.
            created = set(t.fake.jobs)
            missing = len(created - {job.id for job in confirmed})
            print(
                f"the service created {len(t.fake.jobs)} jobs for 20 submits: "
                f"{len(created) - 20} paid twice, {missing} lost to this program"
            )


if __name__ == "__main__":
    asyncio.run(main())
