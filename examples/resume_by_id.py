"""Attach to jobs by id after a restart: persist the ids, then `client.job(id)` them back.

    python examples/resume_by_id.py

A job runs at the service whether or not anyone waits for it. A process that submits keeps
the ids somewhere durable; after a restart (or in another process) a new client attaches by
id and awaits the outcome, without submitting (or paying) again. The SDK's stores
(`lipsync_async.stores.SQLiteStore`, `client.pending()`) do the bookkeeping for you; this
example shows the bare mechanism with a JSON file.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from _target import AUDIO, IMAGE, Target, target

from lipsync_async import LipsyncClient


async def before_restart(t: Target, saved: Path) -> None:
    """Submit, write the ids down, and exit without waiting (a deploy, a crash...)."""
    async with LipsyncClient(t.api_key, base_url=t.base_url) as client:
        jobs = [await client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)]
        ids = json.dumps([job.id for job in jobs])
        await asyncio.to_thread(saved.write_text, ids)  # file I/O off the event loop
        print(f"submitted {len(jobs)} jobs, ids saved; exiting without waiting")


async def after_restart(t: Target, saved: Path) -> None:
    """A fresh client attaches by id: no request until awaited, then polling as usual."""
    ids = json.loads(await asyncio.to_thread(saved.read_text))
    async with LipsyncClient(t.api_key, base_url=t.base_url, poll_interval=t.poll_interval) as c:
        states = await asyncio.gather(*(c.job(job_id) for job_id in ids))
        done = sum(state.status == "completed" for state in states)
        print(f"resumed {len(ids)} jobs by id: {done} completed")


async def main() -> None:
    async with target() as t:
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "jobs.json"
            await before_restart(t, saved)
            await after_restart(t, saved)


if __name__ == "__main__":
    asyncio.run(main())
