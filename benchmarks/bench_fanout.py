"""Benchmark 1: fan-out throughput.

N zero-length jobs (the emulator's ``job_duration=0``) submitted and resolved by polling, in
jobs/s, for the SDK (two ways: ``asyncio.gather`` of ``client.lipsync_image`` calls, one task per
submit as users write it, and ``client.submit_many`` on a fixed pool of 64 senders) and three
baselines (see ``_baselines``): raw aiohttp POST + GET pairs, the
naive aiohttp client, the naive httpx client. Same concurrency bound everywhere (64), same
``poll_interval`` for the polling clients. Also shown: client CPU per job (this process) and
server CPU per job (the emulator process), since on 2 cores the server can be the bottleneck
and then jobs/s alone hides how much work the client does.

The naive httpx client runs at the smallest N only. httpx's connection pool (httpcore) scans
every queued request each time a connection frees up, so with thousands of coroutines queued on
64 connections it spends ~25 ms of CPU per job: 1,000 jobs take ~30 s, 20,000 would take over
8 minutes (and cancelling a queued fan-out costs as much again). That is the finding; running
it at every N would only make the benchmark slow.

OpenTelemetry (issue 17), three rows of the same ``gather`` fan-out in the same run: ``SDK``
without the extra (its modules hidden, as in a process that never installed it), ``SDK otel, no
provider`` (the API imported, nothing configured: the no-op telemetry), and ``SDK otel
provider`` (the real SDK's tracer provider with a batch span processor feeding an exporter that
discards, and a meter provider with an in-memory reader): the column "vs SDK" is the ratio.

Every client runs once per round, rounds interleaved (raw, SDK, SDK submit_many, naive, ...),
and the table shows each client's median round (by jobs/s): 5 rounds at full size, 1 with
``--quick``. The machine is shared, so the load average before and after is in the title.

Usage: ``python benchmarks/bench_fanout.py [--quick] [--sizes 5000,20000] [--rounds 5]``
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from _baselines import naive_aiohttp, naive_httpx, raw_pairs
from _bench import (
    AUDIO,
    CONCURRENCY,
    IMAGE,
    SERVER_NOTE,
    Emulator,
    Meter,
    bounded,
    emit,
    fmt,
    ratio,
    table,
)

from lipsync_async import Job, LipsyncClient, LipsyncImageRequest

POLL = 0.05
OTEL_NONE = "SDK otel, no provider"
OTEL_ON = "SDK otel provider"
CLIENTS = (
    "raw aiohttp",
    "SDK",
    OTEL_NONE,
    OTEL_ON,
    "SDK submit_many",
    "naive aiohttp",
    "naive httpx",
)


@contextlib.contextmanager
def without_otel() -> Iterator[None]:
    """As in a process without the ``otel`` extra: ``opentelemetry`` cannot be imported."""
    hidden = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "opentelemetry"}
    for name in hidden:
        del sys.modules[name]
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        del sys.modules["opentelemetry"]
        sys.modules.update(hidden)


class _Discard:
    """A span exporter that drops everything: the cost measured is the SDK's, not a network's."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


async def sdk(
    base_url: str, api_key: str, n: int, stats: Counter[str], otel: str | None = None
) -> None:
    kwargs: dict[str, Any] = {}
    providers: list[Any] = []
    if otel == OTEL_ON:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(_Discard()))  # type: ignore[arg-type]
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        kwargs = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
        providers = [tracer_provider, meter_provider]
    elif otel == OTEL_NONE:
        import opentelemetry.trace  # noqa: F401 - installed and imported, nothing configured
    hidden = without_otel() if otel is None else contextlib.nullcontext()
    with hidden:
        await _sdk(base_url, api_key, n, stats, kwargs)
    for provider in providers:
        provider.shutdown()


async def _sdk(
    base_url: str, api_key: str, n: int, stats: Counter[str], kwargs: dict[str, Any]
) -> None:
    async with LipsyncClient(
        api_key=api_key,
        base_url=base_url,
        poll_interval=POLL,
        max_in_flight=CONCURRENCY,
        **kwargs,
    ) as client:
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(n))
        )
        async for _ in client.as_completed(jobs):
            stats["done"] += 1
        stats.update(client.stats)


async def sdk_many(base_url: str, api_key: str, n: int, stats: Counter[str]) -> None:
    async with LipsyncClient(
        api_key=api_key, base_url=base_url, poll_interval=POLL, max_in_flight=CONCURRENCY
    ) as client:
        requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(n))
        jobs: list[Job] = []
        async for outcome in client.submit_many(requests, concurrency=CONCURRENCY):
            if not isinstance(outcome, Job):
                raise outcome
            jobs.append(outcome)
        async for _ in client.as_completed(jobs):
            stats["done"] += 1
        stats.update(client.stats)


async def measure(emu: Emulator, name: str, n: int, budget: float) -> dict[str, Any]:
    """One run. The httpx client may use up ``budget`` seconds: then jobs/s is done / elapsed."""
    await emu.reset(job_duration=0.0)
    stats: Counter[str] = Counter()
    run: Callable[[], Awaitable[Any]]
    if name == "raw aiohttp":
        run = lambda: raw_pairs(emu.base_url, emu.api_key, n, stats)  # noqa: E731
    elif name == "SDK":
        run = lambda: sdk(emu.base_url, emu.api_key, n, stats)  # noqa: E731
    elif name in (OTEL_NONE, OTEL_ON):
        run = lambda: sdk(emu.base_url, emu.api_key, n, stats, name)  # noqa: E731
    elif name == "SDK submit_many":
        run = lambda: sdk_many(emu.base_url, emu.api_key, n, stats)  # noqa: E731
    elif name == "naive aiohttp":
        run = lambda: naive_aiohttp(emu.base_url, emu.api_key, n, POLL, stats)  # noqa: E731
    else:
        run = lambda: naive_httpx(emu.base_url, emu.api_key, n, POLL, stats)  # noqa: E731
    gc.collect()
    timed_out = False
    async with Meter(emu) as m:
        if name == "naive httpx":
            try:
                async with asyncio.timeout(budget):
                    await run()
            except TimeoutError:
                timed_out = True
        else:
            await bounded(run(), 30.0 + n / 50.0, f"fan-out {name} N={n}")
    done = stats["done"]
    if not timed_out and done != n:
        raise RuntimeError(f"{name}: {done} of {n} jobs resolved")
    server_reqs = sum(v for k, v in m.server_requests.items() if k.startswith(("POST", "GET")))
    result = {
        "client": name,
        "n": n,
        "done": done,
        "timed_out": timed_out,
        "wall": m.wall,
        "jobs_per_s": done / m.wall,
        "client_cpu_us": m.cpu / max(done, 1) * 1e6,
        "server_cpu_us": m.server_cpu / max(done, 1) * 1e6,
        "requests_per_job": server_reqs / max(done, 1),
    }
    print(
        f"  fan-out {name:14s} N={n:>6,}: {result['jobs_per_s']:7.0f} jobs/s"
        f"{' (time budget hit)' if timed_out else ''}",
        file=sys.stderr,
        flush=True,
    )
    return result


async def main(
    quick: bool, sizes_arg: tuple[int, ...] | None = None, rounds: int | None = None
) -> None:
    sizes = sizes_arg or ((500, 2_000) if quick else (1_000, 5_000, 20_000))
    httpx_sizes = sizes[:1] if sizes_arg is None else ()
    reps = rounds or (1 if quick else 5)
    budget = 60.0
    load_before = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    async with Emulator() as emu:
        await measure(emu, "raw aiohttp", 500, budget)  # warm up both processes
        await measure(emu, "SDK", 500, budget)
        for n in sizes:
            runs: dict[str, list[dict[str, Any]]] = {}
            # Interleaved rounds; each client's median round is kept (the machine is shared).
            for _ in range(reps):
                for name in CLIENTS:
                    if name == "naive httpx" and (name in runs or n not in httpx_sizes):
                        continue  # one run, at the smallest N only: see the module docstring
                    runs.setdefault(name, []).append(await measure(emu, name, n, budget))
            for name in CLIENTS:
                if name in runs:
                    ordered = sorted(runs[name], key=lambda r: r["jobs_per_s"])
                    median = dict(ordered[(len(ordered) - 1) // 2])
                    median["rounds"] = [r["jobs_per_s"] for r in runs[name]]
                    median["median_cpu_us"] = statistics.median(
                        r["client_cpu_us"] for r in runs[name]
                    )
                    results.append(median)
            if n not in httpx_sizes:
                results.append({"client": "naive httpx", "n": n, "skipped": True})
    load_after = os.getloadavg()[0]
    rows = []
    for r in results:
        if r.get("skipped"):
            rows.append([f"{r['n']:,}", r["client"], "not run (too slow)"] + [""] * 7)
            continue
        base = next(b for b in results if b["n"] == r["n"] and b["client"] == "raw aiohttp")
        naive = next(b for b in results if b["n"] == r["n"] and b["client"] == "naive aiohttp")
        plain = next(b for b in results if b["n"] == r["n"] and b["client"] == "SDK")
        rows.append(
            [
                f"{r['n']:,}",
                r["client"],
                fmt(r["jobs_per_s"]) + (f" ({r['done']:,} in budget)" if r["timed_out"] else ""),
                ratio(r["jobs_per_s"], base["jobs_per_s"]),
                ratio(r["jobs_per_s"], naive["jobs_per_s"]),
                ratio(r["jobs_per_s"], plain["jobs_per_s"]),
                fmt(r["client_cpu_us"]),
                ratio(r["client_cpu_us"], base["client_cpu_us"]),
                fmt(r["server_cpu_us"]),
                fmt(r["requests_per_job"], 2),
            ]
        )
    text = table(
        f"Fan-out throughput (zero-length jobs, poll_interval={POLL} s, "
        f"concurrency {CONCURRENCY}; median of {reps} interleaved rounds; load average "
        f"{load_before:.2f} before, {load_after:.2f} after; {SERVER_NOTE})",
        [
            "N",
            "client",
            "jobs/s",
            "vs raw",
            "vs naive",
            "vs SDK",
            "client CPU us/job",
            "CPU vs raw",
            "server CPU us/job",
            "HTTP req/job",
        ],
        rows,
    )
    emit("fanout", text, {"results": results})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--sizes", help="comma-separated N (then httpx is not run)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per N (default 5)")
    args = parser.parse_args()
    chosen = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else None
    asyncio.run(main(args.quick, chosen, args.rounds))
