"""Benchmark 4: the webhook receiver.

Three processes: the emulator, the receiving side (a child process), and this process as the
load generator. The receiving side is either

- ``SDK``: a ``LipsyncClient`` with a ``WebhookReceiver`` that submitted M jobs to the emulator
  (one-hour jobs, so the emulator itself never delivers); the generator POSTs one completed
  state per job to the receiver's secret URL, and the jobs resolve; or
- ``bare handler``: an aiohttp app whose handler only reads the body and parses the JSON.

Throughput: M deliveries with 64 connections, as fast as they are answered; the SDK side
consumes its jobs with ``as_completed``. Latency: deliveries paced at ~1,000/s, each job awaited
by its own coroutine (``state = await job``); the generator stamps ``timings.sent``
(``time.monotonic()``, system-wide on Linux) in each body and the woken coroutine subtracts it,
so the figure covers the HTTP hop, the handler, the match and the wake-up. For the bare handler
the same stamp is read in the handler (no coroutine to wake): the floor for the hop.

Usage: ``python benchmarks/bench_receiver.py [--quick]``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from _bench import (
    AUDIO,
    CONCURRENCY,
    HERE,
    IMAGE,
    SERVER_NOTE,
    Emulator,
    bounded,
    emit,
    fmt,
    parse_quick,
    percentile,
    ratio,
    run_workers,
    table,
)
from aiohttp import web

from lipsync_async import Job, LipsyncClient, WebhookReceiver

RATE = 1_000.0


# -- the receiving side (child process) -------------------------------------------------------


async def _commands() -> Any:
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def sdk_side(m: int, mode: str, base_url: str, api_key: str) -> None:
    latencies: list[float] = []

    async def waiter(job: Job) -> None:
        state = await job
        timings = state.timings
        if isinstance(timings, dict):
            latencies.append(time.monotonic() - float(timings["sent"]))

    async with LipsyncClient(
        api_key=api_key,
        base_url=base_url,
        webhook=WebhookReceiver(port=0),
        poll_interval=3600.0,
    ) as client:
        jobs: list[Job] = []

        async def submit(_: int) -> None:
            jobs.append(await client.lipsync_image(image=IMAGE, audio=AUDIO))

        await run_workers(m, CONCURRENCY, submit)
        assert client.webhook is not None
        ids = HERE / f".receiver-ids-{id(jobs)}.json"
        ids.write_text(json.dumps([j.id for j in jobs]))
        tasks = [asyncio.ensure_future(waiter(j)) for j in jobs] if mode == "latency" else []
        _say({"url": client.webhook.url, "ids": str(ids)})
        await _commands()  # "start"
        cpu0 = time.process_time()
        resolved = 0
        if mode == "throughput":
            async for _ in client.as_completed(jobs, timeout=120.0):
                resolved += 1
        else:
            await asyncio.wait_for(asyncio.gather(*tasks), 120.0)
            resolved = len(tasks)
        cpu = time.process_time() - cpu0
        ids.unlink()
        await _commands()  # "report"
        _say(
            {
                "resolved": resolved,
                "cpu": cpu,
                "latencies": latencies,
                "reads": client.stats["status_reads"],
            }
        )


async def bare_side(m: int) -> None:
    latencies: list[float] = []
    got = asyncio.Event()
    count = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal count
        data = json.loads(await request.read())
        latencies.append(time.monotonic() - float(data["timings"]["sent"]))
        count += 1
        if count == m:
            got.set()
        return web.Response(body=b'{"received":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/webhooks/lipsync/{secret}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    ids = HERE / f".receiver-ids-bare-{port}.json"
    ids.write_text(json.dumps([f"bare-{i}" for i in range(m)]))
    _say({"url": f"http://127.0.0.1:{port}/webhooks/lipsync/bare", "ids": str(ids)})
    await _commands()
    cpu0 = time.process_time()
    await asyncio.wait_for(got.wait(), 120.0)
    cpu = time.process_time() - cpu0
    ids.unlink()
    await _commands()
    _say({"resolved": count, "cpu": cpu, "latencies": latencies, "reads": 0})
    await runner.cleanup()


# -- the load generator (this process) -------------------------------------------------------


def _body(job_id: str) -> bytes:
    return json.dumps(
        {
            "id": job_id,
            "model": "lipsync-image",
            "status": "completed",
            "output": "https://example.com/out.mp4",
            "error": "",
            "executionTime": 12345,
            "timings": {"sent": time.monotonic()},
        }
    ).encode()


async def generate(url: str, ids: list[str], mode: str) -> tuple[float, int]:
    """POST one delivery per id; returns (seconds, non-2xx answers)."""
    bad = 0
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=30.0),
    ) as session:

        async def post(i: int) -> None:
            nonlocal bad
            async with session.post(url, data=_body(ids[i]), headers=headers) as resp:
                await resp.read()
                bad += resp.status >= 300

        t0 = time.perf_counter()
        if mode == "throughput":
            await run_workers(len(ids), CONCURRENCY, post)
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks: set[asyncio.Task[None]] = set()
            for i in range(len(ids)):
                delay = start + i / RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(post(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
        return time.perf_counter() - t0, bad


async def measure(emu: Emulator, side: str, mode: str, m: int) -> dict[str, Any]:
    await emu.reset(job_duration=3600.0)
    args = [
        sys.executable,
        str(HERE / "bench_receiver.py"),
        "--side",
        side,
        mode,
        str(m),
        emu.base_url,
        emu.api_key,
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**26
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120.0))
        ids: list[str] = json.loads(await asyncio.to_thread(Path(ready["ids"]).read_text))
        proc.stdin.write(b"start\n")
        await proc.stdin.drain()
        seconds, bad = await bounded(generate(ready["url"], ids, mode), 120.0, f"{side} {mode}")
        proc.stdin.write(b"report\n")
        await proc.stdin.drain()
        report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120.0))
    finally:
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    if report["resolved"] != m or bad:
        raise RuntimeError(f"{side} {mode}: {report['resolved']}/{m} resolved, {bad} non-2xx")
    lat = report["latencies"]
    result = {
        "side": side,
        "mode": mode,
        "m": m,
        "per_s": m / seconds,
        "cpu_us": report["cpu"] / m * 1e6,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3 if lat else float("nan"),
        "reads": report["reads"],
    }
    print(
        f"  receiver {side:12s} {mode:10s}: {result['per_s']:7.0f}/s "
        f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


async def main(quick: bool) -> None:
    m_tp = 3_000 if quick else 20_000
    m_lat = 1_500 if quick else 5_000
    reps = 1 if quick else 3
    best: dict[tuple[str, str], dict[str, Any]] = {}
    async with Emulator() as emu:
        for _ in range(reps):
            for side in ("bare handler", "SDK"):
                r = await measure(emu, side, "throughput", m_tp)
                key = (side, "throughput")
                if key not in best or r["per_s"] > best[key]["per_s"]:
                    best[key] = r
        for side in ("bare handler", "SDK"):
            best[(side, "latency")] = await measure(emu, side, "latency", m_lat)
    bare_tp = best[("bare handler", "throughput")]
    rows = []
    for side in ("bare handler", "SDK"):
        tp, lat = best[(side, "throughput")], best[(side, "latency")]
        rows.append(
            [
                side,
                fmt(tp["per_s"]),
                ratio(tp["per_s"], bare_tp["per_s"]),
                fmt(tp["cpu_us"]),
                fmt(lat["per_s"]),
                fmt(lat["p50_ms"], 2),
                fmt(lat["p99_ms"], 2),
                fmt(lat["max_ms"], 2),
            ]
        )
    text = table(
        f"Webhook receiver (throughput: {m_tp:,} deliveries, 64 connections, best of {reps}; "
        f"latency: {m_lat:,} deliveries paced at {RATE:,.0f}/s; generator = the benchmark "
        f"process; {SERVER_NOTE})",
        [
            "receiver",
            "deliveries/s",
            "vs bare",
            "receiver CPU us/delivery",
            "paced rate/s",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        rows,
    )
    emit("receiver", text, {"results": list(best.values())})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        _, _, side_, mode_, m_, url_, key_ = sys.argv
        if side_ == "SDK":
            asyncio.run(sdk_side(int(m_), mode_, url_, key_))
        else:
            asyncio.run(bare_side(int(m_)))
    else:
        asyncio.run(main(parse_quick()))
