"""Why a fan-out's shape costs collector time: gen-0 collections per job, by who reads.

A fan-out of zero-length jobs (submit, then one status read) on 64 connections, four ways, on
the emulator in its own process, ``gc.callbacks`` timing every collection:

- ``raw pairs``: 64 aiohttp workers, each a POST then at once the GET (``_baselines.raw_pairs``);
- ``raw split``: 64 POST workers and 64 GET workers on 64 slots, the GETs 50 ms after (the shape
  of any poller whose reads come from tasks apart from its submits);
- ``raw hybrid``: 64 workers, each a POST, then the GET of one job that is due (50 ms after
  its submit), if any: the split's timing in the pairs' shape;
- ``SDK submit_many``: ``client.submit_many(..., concurrency=64)`` then ``as_completed``
  (``poll_interval=0.05``).

The young generation is collected when allocations outnumber deallocations by 700 since the
last collection, and a deallocation only counts while that balance is above zero. A task that
frees a request's objects in one step and allocates the next request's in another (a reader
that exits, a new reader started at the next tick) leaves the balance to climb; each
collection then walks every object of the ~64 requests in flight (3,000-5,000 objects).

Each way runs 3 rounds at 5,000 jobs and 2 at 20,000, interleaved; the table shows medians.
Usage: ``python benchmarks/bench_gc_shape.py [--quick | --n N]`` (``run_all.py`` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import statistics
import time
from collections import Counter
from typing import Any

from _baselines import BODY, _headers, aiohttp_session, raw_pairs
from _bench import AUDIO, CONCURRENCY, IMAGE, Emulator, bounded, emit, table

from lipsync_async import Job, LipsyncClient, LipsyncImageRequest

GAP = 0.05  # seconds from a submit to its read (the SDK's poll_interval)


class Collections:
    """Counts collections and their CPU time while entered."""

    def __init__(self) -> None:
        self.count = 0
        self.cpu = 0.0
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.count += 1
            self.cpu += time.process_time() - self._t0

    def __enter__(self) -> Collections:
        gc.collect()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def raw_split(base_url: str, api_key: str, n: int) -> None:
    headers = _headers(api_key)
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[str | None] = asyncio.Queue()
    slots = asyncio.Semaphore(CONCURRENCY)
    todo = iter(range(n))
    async with aiohttp_session() as session:

        async def poster() -> None:
            for _ in todo:
                async with (
                    slots,
                    session.post(f"{base_url}/lipsync-image", data=BODY, headers=headers) as resp,
                ):
                    job_id = json.loads(await resp.read())["id"]
                loop.call_later(GAP, due.put_nowait, job_id)

        async def getter() -> None:
            while (job_id := await due.get()) is not None:
                async with slots, session.get(f"{base_url}/jobs/{job_id}", headers=headers) as r:
                    json.loads(await r.read())

        getters = [asyncio.create_task(getter()) for _ in range(CONCURRENCY)]
        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
        await asyncio.sleep(GAP * 1.5)  # the last reads come due
        for _ in getters:
            due.put_nowait(None)
        await asyncio.gather(*getters)


async def raw_hybrid(base_url: str, api_key: str, n: int) -> None:
    headers = _headers(api_key)
    loop = asyncio.get_running_loop()
    due: collections.deque[tuple[float, str]] = collections.deque()
    todo = iter(range(n))
    async with aiohttp_session() as session:

        async def get(job_id: str) -> None:
            async with session.get(f"{base_url}/jobs/{job_id}", headers=headers) as resp:
                json.loads(await resp.read())

        async def worker() -> None:
            for _ in todo:
                async with session.post(
                    f"{base_url}/lipsync-image", data=BODY, headers=headers
                ) as resp:
                    due.append((loop.time() + GAP, json.loads(await resp.read())["id"]))
                if due[0][0] <= loop.time():
                    await get(due.popleft()[1])
            while due:
                when, job_id = due.popleft()
                await asyncio.sleep(max(0.0, when - loop.time()))
                await get(job_id)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def sdk_many(base_url: str, api_key: str, n: int) -> None:
    async with LipsyncClient(
        api_key=api_key, base_url=base_url, poll_interval=GAP, max_in_flight=CONCURRENCY
    ) as client:
        requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(n))
        jobs = [j async for j in client.submit_many(requests, concurrency=CONCURRENCY)]
        async for _ in client.as_completed(jobs):  # type: ignore[arg-type]
            pass
        assert all(isinstance(j, Job) for j in jobs)


WAYS = {
    "raw pairs": lambda url, key, n: raw_pairs(url, key, n, Counter()),
    "raw split": raw_split,
    "raw hybrid": raw_hybrid,
    "SDK submit_many": sdk_many,
}


async def measure(emu: Emulator, n: int, rounds: int) -> tuple[list[list[str]], dict[str, Any]]:
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in WAYS}
    for _ in range(rounds):
        for name, way in WAYS.items():
            await emu.reset(job_duration=0.0)
            with Collections() as seen:
                c0 = time.process_time()
                await bounded(way(emu.base_url, emu.api_key, n), 30.0 + n / 50.0, name)
                cpu = time.process_time() - c0
            runs[name].append((cpu / n * 1e6, seen.cpu / n * 1e6, seen.count))
    base = statistics.median(c for c, _, _ in runs["raw pairs"])
    rows = []
    for name, got in runs.items():
        cpu = statistics.median(c for c, _, _ in got)
        rows.append(
            [
                f"{n:,}",
                name,
                f"{statistics.median(k for _, _, k in got):,.0f}",
                f"{statistics.median(g for _, g, _ in got):.1f}",
                f"{cpu:.0f}",
                f"{cpu / base:.2f}x",
            ]
        )
    return rows, runs


async def main(sizes: list[tuple[int, int]]) -> None:
    rows: list[list[str]] = []
    data: dict[str, Any] = {}
    load = os.getloadavg()[0]
    async with Emulator() as emu:
        for way in WAYS.values():  # warm both processes up
            await emu.reset(job_duration=0.0)
            await way(emu.base_url, emu.api_key, 300)
        for n, rounds in sizes:
            got, runs = await measure(emu, n, rounds)
            rows += got
            data[str(n)] = runs
    per_size = ", ".join(f"{r} at {n:,}" for n, r in sizes)
    text = table(
        f"Collections in a fan-out of zero-length jobs, by who reads (medians of rounds: "
        f"{per_size}; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; server: "
        "the emulator in a separate process)",
        ["N", "shape", "collections", "collector CPU us/job", "client CPU us/job", "vs raw pairs"],
        rows,
    )
    emit("gc_shape", text, data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, one round")
    parser.add_argument("--n", type=int, help="one size, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main([(1000, 1)]))
    elif args.n:
        asyncio.run(main([(args.n, 3)]))
    else:
        asyncio.run(main([(5000, 3), (20000, 2)]))
