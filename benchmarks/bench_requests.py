"""Benchmark 2: requests per job.

Polling mode: N jobs of ``job_duration`` D seconds, polled every P seconds; status reads per job
against the ideal ``ceil(D / P)`` (the target is at most ideal + 1), for the SDK and the naive
aiohttp client. Webhook mode: the same jobs with a ``WebhookReceiver``, the emulator (separate
process) POSTing each final state to it; target zero reads. A third row loses 10 % of the
deliveries with a short ``webhook_grace``: those jobs must still resolve, by polling.

Usage: ``python benchmarks/bench_requests.py [--quick]``
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

from _baselines import naive_aiohttp
from _bench import AUDIO, IMAGE, SERVER_NOTE, Emulator, bounded, emit, fmt, parse_quick, table

from lipsync_async import LipsyncClient, WebhookReceiver

DURATION = 1.0
POLL = 0.25


async def sdk_run(emu: Emulator, n: int, *, webhook: bool, grace: float = 600.0) -> Counter[str]:
    receiver = WebhookReceiver(port=0) if webhook else None
    async with LipsyncClient(
        api_key=emu.api_key,
        base_url=emu.base_url,
        poll_interval=POLL,
        webhook=receiver,
        webhook_grace=grace,
    ) as client:
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(n))
        )
        done = 0
        async for _ in client.as_completed(jobs):
            done += 1
        stats = Counter(client.stats)
    stats["done"] = done
    return stats


async def main(quick: bool) -> None:
    n = 300 if quick else 1_000
    ideal = math.ceil(DURATION / POLL)
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []

    def add(mode: str, client: str, reads: int, done: int, target: str) -> None:
        per_job = reads / n
        data.append({"mode": mode, "client": client, "reads_per_job": per_job, "done": done})
        rows.append([mode, client, f"{done:,}/{n:,}", fmt(per_job, 2), target])

    async with Emulator() as emu:
        await emu.reset(job_duration=DURATION)
        s = await bounded(sdk_run(emu, n, webhook=False), 120.0, "polling SDK")
        add(
            f"polling, D={DURATION} s, P={POLL} s",
            "SDK",
            s["status_reads"],
            s["done"],
            f"<= {ideal + 1} (ideal {ideal})",
        )
        await emu.reset(job_duration=DURATION)
        naive: Counter[str] = Counter()
        await bounded(
            naive_aiohttp(emu.base_url, emu.api_key, n, POLL, naive), 120.0, "polling naive"
        )
        add(
            f"polling, D={DURATION} s, P={POLL} s",
            "naive aiohttp",
            naive["reads"],
            naive["done"],
            f"ideal {ideal}",
        )
        await emu.reset(job_duration=DURATION)
        s = await bounded(sdk_run(emu, n, webhook=True), 120.0, "webhook SDK")
        add("webhook", "SDK + WebhookReceiver", s["status_reads"], s["done"], "0")
        await emu.reset(job_duration=DURATION, webhook_loss_rate=0.1)
        s = await bounded(sdk_run(emu, n, webhook=True, grace=1.5), 120.0, "webhook lossy SDK")
        await emu.configure(webhook_loss_rate=0.0)
        add(
            "webhook, 10 % lost, grace 1.5 s",
            "SDK + WebhookReceiver",
            s["status_reads"],
            s["done"],
            "lost jobs polled, all resolve",
        )
    text = table(
        f"Requests per job (N={n:,}; {SERVER_NOTE})",
        ["mode", "client", "resolved", "status reads/job", "target"],
        rows,
    )
    emit("requests", text, {"results": data, "ideal": ideal})


if __name__ == "__main__":
    asyncio.run(main(parse_quick()))
