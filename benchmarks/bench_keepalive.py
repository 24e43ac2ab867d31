"""Uncertain submits from stale keep-alive connections, behind nginx (issue 13, item 3).

A pooled connection that the server closed while it sat idle makes the next request on it
fail after it was written: for a submit, ``SubmissionUncertainError`` (the SDK cannot know the
server never read it). nginx is started here from ``tests/nginx/keepalive.conf`` with
``keepalive_timeout 2s``, on loopback, proxying to the emulator. Two clients run side by side
in the same run, each sending bursts of 5 submits after idle gaps drawn from 1.9-2.1 s:

* **before**: the SDK over an aiohttp connector with aiohttp's default ``keepalive_timeout``
  (15 s, what the SDK used to keep idle connections);
* **after**: the SDK's own session (``keepalive_timeout`` 1.5 s: an idle connection older than
  that is never reused, so every burst after a gap opens fresh connections).

Figures: uncertain submits per 1,000, each way, and how many of those the server never saw
(the emulator's job count tells). Requires nginx (``apt-get install nginx``).

Usage: ``python benchmarks/bench_keepalive.py [--submits 1000] [--keepalive 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests._nginx

from lipsync_async import LipsyncClient, SubmissionUncertainError
from lipsync_async.testing import FakeLipsyncServer
from tests._nginx import NGINX, NO_NGINX, nginx_proxy

IMAGE = "https://example.com/media/face.png"
AUDIO = "https://example.com/media/voice.mp3"
BURST = 5


async def run_bursts(
    client: LipsyncClient, submits: int, gap: tuple[float, float], rng: random.Random
) -> tuple[int, int]:
    """Bursts of ``BURST`` submits after idle gaps; returns (answered, uncertain)."""
    answered = uncertain = 0
    for _ in range(submits // BURST):
        await asyncio.sleep(rng.uniform(*gap))

        async def one() -> bool:
            try:
                job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            except SubmissionUncertainError:
                return False
            job.cancel()  # not awaited: no status read may touch the pool between bursts
            return True

        results = await asyncio.gather(*(one() for _ in range(BURST)))
        answered += sum(results)
        uncertain += len(results) - sum(results)
    return answered, uncertain


async def main(submits: int, keepalive: float, seed: int) -> int:
    if NGINX is None:
        print(f"skipped: {NO_NGINX}")
        return 0
    gap = (keepalive - 0.1, keepalive + 0.1)
    async with FakeLipsyncServer(job_duration=3600.0, seed=seed) as fake:
        upstream = int(fake.base_url.split(":")[2].split("/")[0])
        async with nginx_proxy(upstream, keepalive_timeout=keepalive) as port:
            base = fake.base_url.replace(f":{upstream}/", f":{port}/")
            # aiohttp's default connector: keeps idle connections 15 s (the SDK's old setting).
            old = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=15.0))
            opts: dict[str, Any] = {"base_url": base, "poll_interval": 1e6, "max_retries": 3}
            started = time.monotonic()
            try:
                async with (
                    LipsyncClient(fake.api_key, session=old, **opts) as before,
                    LipsyncClient(fake.api_key, **opts) as after,
                ):
                    (b_ok, b_unc), (a_ok, a_unc) = await asyncio.gather(
                        run_bursts(before, submits, gap, random.Random(seed)),
                        run_bursts(after, submits, gap, random.Random(seed + 1)),
                    )
            finally:
                await old.close()
            took = time.monotonic() - started
    created = len(fake.jobs)
    unseen = (b_ok + b_unc + a_ok + a_unc) - created
    n = b_ok + b_unc
    print(
        f"keep-alive behind nginx (keepalive_timeout {keepalive:g}s), bursts of {BURST} after "
        f"idle gaps of {gap[0]:.1f}-{gap[1]:.1f} s, {n} submits each way, {took:.0f} s"
    )
    print(f"{'connector':<44}{'uncertain':>10}{'per 1,000':>11}")
    print(f"{'before: aiohttp default (idle kept 15 s)':<44}{b_unc:>10}{1000 * b_unc / n:>11.1f}")
    print(f"{'after: SDK default (idle kept 1.5 s)':<44}{a_unc:>10}{1000 * a_unc / n:>11.1f}")
    print(
        f"jobs the emulator created: {created} of {2 * n} submits; {unseen} uncertain submit(s) "
        "never reached it (stale connection, nothing sent twice)"
    )
    ratio = "n/a" if not b_unc else f"{a_unc / b_unc:.2f}x"
    print(f"ratio after/before: {ratio}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submits", type=int, default=1000, help="submits each way")
    parser.add_argument("--keepalive", type=float, default=2.0, help="nginx keepalive_timeout")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.submits, args.keepalive, args.seed)))
