"""Benchmark 5: under a rate limit.

The emulator (separate process) admits R requests/s over all clients (a token bucket with a
burst of R; over it, 429 with ``Retry-After``). N zero-length jobs are submitted and polled to
completion by: the SDK without a client-side limit (it must learn from the 429s: one pauses
every request of the client), the SDK with its own ``rate_limit=R``, and the naive aiohttp
client (which sleeps ``Retry-After`` in the coroutine that got the 429 and tries again). Each
job needs at least 2 requests, so the best possible time is 2N/R.

Figures: achieved rate of accepted requests (2xx, counted by the server) against R, the 429s
provoked, and the wall time against the 2N/R floor.

First, in the same run, a *blip*: 100 jobs polled every 0.5 s with no rate limit, then two
isolated 429s (``Retry-After: 2``, 4 s apart, from the emulator's ``throttle_next`` knob). The
figure is the status-read rate over the 5 s right after the second pause against the rate over
3 s before the first: a blip should cost its ``Retry-After``, not seconds of throttling after it.

Usage: ``python benchmarks/bench_ratelimit.py [--quick]``
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from _baselines import naive_aiohttp
from _bench import (
    AUDIO,
    IMAGE,
    SERVER_NOTE,
    Emulator,
    Meter,
    bounded,
    emit,
    fmt,
    parse_quick,
    ratio,
    table,
)

from lipsync_async import LipsyncClient

POLL = 0.05
BLIP_JOBS = 100
BLIP_POLL = 0.5


async def _reads(emu: Emulator) -> int:
    return int((await emu.stats())["requests"].get("GET /jobs", 0))


async def _read_rate(emu: Emulator, seconds: float) -> float:
    r0, t0 = await _reads(emu), asyncio.get_running_loop().time()
    await asyncio.sleep(seconds)
    return (await _reads(emu) - r0) / (asyncio.get_running_loop().time() - t0)


async def blip(emu: Emulator) -> tuple[float, float]:
    """Status reads/s before two isolated 429s and in the 5 s after the second pause."""
    await emu.reset(job_duration=3600.0)
    async with LipsyncClient(
        api_key=emu.api_key, base_url=emu.base_url, poll_interval=BLIP_POLL
    ) as client:
        await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(BLIP_JOBS))
        )
        await asyncio.sleep(2.0)  # steady polling
        before = await _read_rate(emu, 3.0)
        await emu.configure(throttle_next=1, throttle_retry_after=2)
        await asyncio.sleep(4.0)  # the 2 s pause, then 2 s of polling
        await emu.configure(throttle_next=1, throttle_retry_after=2)
        await asyncio.sleep(2.1)  # the second pause
        after = await _read_rate(emu, 5.0)
    await emu.configure(throttle_next=0)
    return before, after


async def sdk(emu: Emulator, n: int, limit: float | None) -> Counter[str]:
    async with LipsyncClient(
        api_key=emu.api_key, base_url=emu.base_url, poll_interval=POLL, rate_limit=limit
    ) as client:
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(n))
        )
        stats: Counter[str] = Counter()
        async for _ in client.as_completed(jobs):
            stats["done"] += 1
        stats.update(client.stats)
    return stats


async def main(quick: bool) -> None:
    rate = 100.0 if quick else 200.0
    n = 200 if quick else 1_000
    floor = 2 * n / rate
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    async with Emulator() as emu:
        before, after = await bounded(blip(emu), 90.0, "blip")
        blip_text = table(
            f"Two isolated 429s (Retry-After: 2) in a {BLIP_JOBS}-job polling client "
            f"(poll_interval={BLIP_POLL:g} s, no rate limit)",
            ["status reads/s before", "in the 5 s after the second pause", "after / before"],
            [[fmt(before, 1), fmt(after, 1), ratio(after, before)]],
        )
        for name in ("SDK, no client limit", f"SDK, rate_limit={rate:g}", "naive aiohttp"):
            await emu.reset(job_duration=0.0, rate_limit=rate)
            await asyncio.sleep(1.0)  # a full bucket for everyone
            async with Meter(emu) as m:
                if name.startswith("SDK, no"):
                    stats = await bounded(sdk(emu, n, None), 30 + 5 * floor, name)
                elif name.startswith("SDK"):
                    stats = await bounded(sdk(emu, n, rate), 30 + 5 * floor, name)
                else:
                    stats = Counter()
                    await bounded(
                        naive_aiohttp(emu.base_url, emu.api_key, n, POLL, stats),
                        30 + 5 * floor,
                        name,
                    )
            await emu.configure(rate_limit=None)
            req = m.server_requests
            total = sum(v for k, v in req.items() if k.startswith(("POST", "GET")))
            limited = req.get("429", 0)
            accepted = total - limited
            achieved = accepted / m.wall
            data.append(
                {
                    "client": name,
                    "rate": rate,
                    "n": n,
                    "done": stats["done"],
                    "wall": m.wall,
                    "achieved": achieved,
                    "429": limited,
                    "requests": total,
                }
            )
            rows.append(
                [
                    name,
                    f"{stats['done']:,}/{n:,}",
                    fmt(achieved, 1),
                    ratio(achieved, rate),
                    fmt(limited),
                    fmt(m.wall, 2),
                    ratio(floor, m.wall),
                ]
            )
    text = table(
        f"Under a rate limit R={rate:g} req/s (N={n:,} zero-length jobs, floor 2N/R = "
        f"{floor:.1f} s; {SERVER_NOTE})",
        ["client", "resolved", "accepted req/s", "vs R", "429s", "wall s", "floor / wall"],
        rows,
    )
    emit(
        "ratelimit",
        blip_text + "\n\n" + text,
        {"results": data, "blip": {"before": before, "after": after}},
    )


if __name__ == "__main__":
    asyncio.run(main(parse_quick()))
