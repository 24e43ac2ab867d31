"""Benchmark 3: memory per pending job, at 10,000 and 100,000 pending jobs.

Real submits against the emulator (separate process) with ``job_duration=3600`` and a one-hour
``poll_interval``, so every job stays pending and no status read happens while we measure. What
is measured is everything the client process holds for those jobs after all submits answered
and ``gc.collect()``: the ``Job`` handles (kept in a list, as a user does), the SDK's tracker
entries, the answers' ids, and for the naive clients their per-job coroutine, task and timer.

Each (client, N, method) runs in a fresh child process: ``tracemalloc`` (Python allocations
traced from just before the first submit) and RSS (``/proc/self/statm`` delta over the same
span, which also shows allocator overhead and fragmentation) are separate runs because tracing
itself costs memory. Baselines:

- ``ids only``: bare aiohttp submits keeping nothing but the job id strings, the floor;
- ``naive aiohttp`` / ``naive httpx``: the per-job ``while True: sleep; GET`` coroutines.

``naive httpx`` is measured only up to 1,000 jobs (not at all with ``--quick``): httpx's pool
re-scans every waiting request for each one it serves, so 10,000 queued submits take many
minutes (see benchmark 1).

Usage: ``python benchmarks/bench_memory.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

from _baselines import BODY, _headers, aiohttp_session, httpx_client, naive_aiohttp, naive_httpx
from _bench import (
    AUDIO,
    CONCURRENCY,
    HERE,
    IMAGE,
    SERVER_NOTE,
    Emulator,
    emit,
    fmt,
    ratio,
    rss_bytes,
    run_workers,
    table,
)

from lipsync_async import Job, LipsyncClient

PENDING_POLL = 3600.0
CLIENTS = ("SDK", "ids only", "naive aiohttp", "naive httpx")
HTTPX_MAX = 1_000


class Probe:
    """Baseline and end measurements, by tracemalloc or by RSS."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.start = 0

    def begin(self) -> None:
        gc.collect()
        if self.method == "tracemalloc":
            tracemalloc.start()
            self.start = tracemalloc.get_traced_memory()[0]
        else:
            self.start = rss_bytes()

    def end(self) -> int:
        gc.collect()
        if self.method == "tracemalloc":
            used = tracemalloc.get_traced_memory()[0] - self.start
            tracemalloc.stop()
            return used
        return rss_bytes() - self.start


async def child(client: str, n: int, method: str, base_url: str, api_key: str) -> dict[str, Any]:
    probe = Probe(method)
    t0 = time.perf_counter()
    if client == "SDK":
        async with LipsyncClient(
            api_key=api_key, base_url=base_url, poll_interval=PENDING_POLL
        ) as sdk:
            warm = [await sdk.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(CONCURRENCY)]
            for job in warm:
                job.cancel()
            del warm
            jobs: list[Job] = []

            async def submit(_: int) -> None:
                jobs.append(await sdk.lipsync_image(image=IMAGE, audio=AUDIO))

            probe.begin()
            await run_workers(n, CONCURRENCY, submit)
            used = probe.end()
            assert sdk.stats["pending"] == n
            assert sdk.stats["status_reads"] == 0
    elif client == "ids only":
        headers = _headers(api_key)
        async with aiohttp_session() as session:
            ids: list[str] = []

            async def post(_: int) -> None:
                async with session.post(
                    f"{base_url}/lipsync-image", data=BODY, headers=headers
                ) as resp:
                    ids.append(json.loads(await resp.read())["id"])

            await run_workers(CONCURRENCY, CONCURRENCY, post)
            ids.clear()
            probe.begin()
            await run_workers(n, CONCURRENCY, post)
            used = probe.end()
    else:
        stats: Counter[str] = Counter()
        all_in = asyncio.Event()

        def submitted() -> None:
            stats["submitted"] += 1
            if stats["submitted"] == n:
                all_in.set()

        if client == "naive aiohttp":
            session = aiohttp_session()
            async with session:
                async with session.post(
                    f"{base_url}/lipsync-image", data=BODY, headers=_headers(api_key)
                ) as resp:
                    await resp.read()
                probe.begin()
                run = asyncio.ensure_future(
                    naive_aiohttp(
                        base_url,
                        api_key,
                        n,
                        PENDING_POLL,
                        stats,
                        on_submitted=submitted,
                        session=session,
                    )
                )
                await all_in.wait()
                used = probe.end()
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
        else:
            async with httpx_client() as hc:
                await hc.post(f"{base_url}/lipsync-image", content=BODY, headers=_headers(api_key))
                probe.begin()
                run = asyncio.ensure_future(
                    naive_httpx(
                        base_url,
                        api_key,
                        n,
                        PENDING_POLL,
                        stats,
                        on_submitted=submitted,
                        client=hc,
                    )
                )
                await all_in.wait()
                used = probe.end()
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
    return {"bytes": used, "per_job": used / n, "seconds": time.perf_counter() - t0}


def run_child(client: str, n: int, method: str, emu: Emulator, timeout: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter (bounded by ``timeout``)."""
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "bench_memory.py"),
            "--child",
            client,
            str(n),
            method,
            emu.base_url,
            emu.api_key,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def main(quick: bool) -> None:
    sizes = (2_000,) if quick else (10_000, 100_000)
    clients = CLIENTS[:3] if quick else CLIENTS
    results: list[dict[str, Any]] = []
    async with Emulator() as emu:
        for n in sizes:
            for client in clients:
                row: dict[str, Any] = {"client": client, "n": n}
                m = min(n, HTTPX_MAX) if client == "naive httpx" else n
                row["measured_n"] = m
                for method in ("tracemalloc", "rss"):
                    await emu.reset(job_duration=3600.0)
                    r = await asyncio.to_thread(
                        run_child, client, m, method, emu, 120.0 + m / 100.0
                    )
                    row[method] = r["per_job"]
                    print(
                        f"  memory {client:14s} N={m:>7,} {method:11s}: "
                        f"{r['per_job']:8.0f} B/job ({r['seconds']:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
                results.append(row)
    rows = []
    for r in results:
        naive = next(b for b in results if b["n"] == r["n"] and b["client"] == "naive aiohttp")
        rows.append(
            [
                f"{r['n']:,}",
                r["client"] + (f" (at {r['measured_n']:,})" if r["measured_n"] != r["n"] else ""),
                fmt(r["tracemalloc"]),
                fmt(r["rss"]),
                ratio(r["tracemalloc"], naive["tracemalloc"]),
                ratio(r["rss"], naive["rss"]),
            ]
        )
    text = table(
        f"Memory per pending job, bytes (real submits, jobs kept pending; {SERVER_NOTE})",
        ["pending", "client", "tracemalloc B/job", "RSS B/job", "traced vs naive", "RSS vs naive"],
        rows,
    )
    emit("memory", text, {"results": results})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, who, count, how, url, key = sys.argv
        res = asyncio.run(child(who, int(count), how, url, key))
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        os.environ.setdefault("PYTHONHASHSEED", "0")
        asyncio.run(main(parser.parse_args().quick))
