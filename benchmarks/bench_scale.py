"""Benchmark 6: the scale curve, one process, up to a million pending jobs (issues 18, 20, 12).

Every figure is measured in a fresh child interpreter, one per (what, N, mode), so one
measurement's heap cannot skew the next:

- **memory** (``mem``): N submits through the public API (``client.lipsync_image``, 64
  concurrent), the jobs kept in a list as a user does, with a one-hour ``poll_interval``
  (polling mode) or a running :class:`WebhookReceiver` and its 600 s grace (webhook mode), so
  nothing resolves while we measure. ``tracemalloc`` and RSS (``/proc/self/statm``) are
  separate runs, because tracing costs memory itself. The RSS run also times the submits,
  records the longest event-loop stall while they go on (a 1 ms ticker task: its lateness), the
  gen-2 collections (``gc.callbacks``) in the same window, a full ``gc.collect()`` with the N
  jobs pending, and ``close()`` (``async with`` exit) with the N jobs pending. The floor of one
  tracked object per job is measured in the same process before the submits: a full collection
  with N bare slotted objects alive.
- **polled** (``poll``): 100,000 jobs polled every 5 s for 15 s; the longest stall and its p99,
  the gen-2 pauses beside it, client CPU per status read.
- **read CPU** (``reads``): status reads made by the scheduler (2,000 jobs due every 50 ms,
  so its 64 readers never idle) against a raw aiohttp ``GET`` loop on 64 workers with the same
  connection limit: client CPU per read, seven 2 s rounds of each, alternating in one process
  (one client, its jobs tracked only in its rounds), the median of each SDK round's ratio to
  the raw round just before it.
- **held after webhooks** (``held``, issue 12): 5,000 and 20,000 jobs resolved by real
  deliveries to the receiver over loopback; the memory still held 1 s after the last one
  finished (the user's list of jobs dropped), against what they held while pending, and its
  growth from 5,000 to 20,000 per finished job (what a finished job leaves behind: none).

To reach a million jobs in minutes, ``mem``, ``poll`` and ``held`` submit through a *stub
transport*: an ``aiohttp.ClientSession`` subclass lent to the client (``session=``) that answers
canned JSON in process (a fresh UUID per submit, ``processing`` per read) and yields to the loop
once per request, as a socket would. Everything above the session (validation, the converter,
the transport's bounds and retries, the tracker, ``Job``) is the real code. ``reads`` runs
against the emulator in its own process, like every other benchmark.

Usage: ``python benchmarks/bench_scale.py [--quick] [--sizes 1000000]`` (``--quick``: 10k and
100k only, no 1M; ``--sizes``: the memory, traced-bytes and stall rows at those N only, e.g. the
1M rows alone). Beside the longest stall the table prints the floor (a full collection with as
many bare slotted objects alive, measured in the same process), the longest gen-2 pause, and
the longest stall that no gen-2 collection overlaps (what else blocks the loop).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
import warnings
from dataclasses import asdict, dataclass
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
    emit,
    fmt,
    percentile,
    rss_bytes,
    run_workers,
    table,
)
from yarl import URL

from lipsync_async import Job, LipsyncClient, WebhookReceiver

STUB_NOTE = "stub transport: ClientSession subclass answering canned JSON in process"

# -- the stub transport ----------------------------------------------------------------------

_READ = (
    b'{"id":"%s","model":"lipsync","status":"processing",'
    b'"output":null,"error":"","executionTime":null,"timings":null}'
)


class _Answer:
    __slots__ = ("_raw", "status")

    headers: dict[str, str] = {}  # noqa: RUF012 - read-only, shared

    def __init__(self, raw: bytes) -> None:
        self.status = 200
        self._raw = raw

    async def read(self) -> bytes:
        return self._raw


class _Exchange:
    __slots__ = ("_answer",)

    def __init__(self, answer: _Answer) -> None:
        self._answer = answer

    async def __aenter__(self) -> _Answer:
        await asyncio.sleep(0)  # a socket yields to the loop at least once per request
        return self._answer

    async def __aexit__(self, *exc: object) -> None:
        return None


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp discourages subclassing

    class StubSession(aiohttp.ClientSession):
        """Answers the client's requests in process: a fresh job per POST, ``processing``."""

        hooks: dict[str, str] | None = None  # job id -> webhook URL of its submit, if kept

        def request(self, method: str, str_or_url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if method == "POST":
                job_id = str(uuid.uuid4())
                if self.hooks is not None:
                    self.hooks[job_id] = json.loads(kwargs["data"])["webhook"]
                raw = b'{"id":"%s","status":"processing"}' % job_id.encode()
            else:
                raw = _READ % URL(str_or_url).path.rsplit("/", 1)[1].encode()
            return _Exchange(_Answer(raw))


# -- measuring inside a child ----------------------------------------------------------------


class Stalls:
    """The loop's lateness (a 1 ms ticker) and the gen-2 collections, over a window."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.lag_ends: list[float] = []
        self.gen2: list[float] = []
        self.gen2_spans: list[tuple[float, float]] = []
        self._gc_t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            end = time.perf_counter()
            self.gen2.append(end - self._gc_t0)
            self.gen2_spans.append((self._gc_t0, end))

    async def _tick(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            end = time.perf_counter()
            self.lags.append(end - t0 - 0.001)
            self.lag_ends.append(end)

    def __enter__(self) -> Stalls:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> dict[str, float]:
        # The stalls no gen-2 collection overlaps: what else blocks the loop (dict resizes,
        # bursts of callbacks), told apart from the collector's pauses.
        other = [
            lag
            for lag, end in zip(self.lags, self.lag_ends, strict=True)
            if not any(a < end and b > end - lag for a, b in self.gen2_spans)
        ]
        return {
            "stall_max_ms": max(self.lags, default=0.0) * 1e3,
            "stall_max_no_gen2_ms": max(other, default=0.0) * 1e3,
            "stall_p99_ms": percentile(self.lags, 99) * 1e3,
            "gen2_n": len(self.gen2),
            "gen2_max_ms": max(self.gen2, default=0.0) * 1e3,
        }


class _Bare:
    __slots__ = ("a",)


def full_gc_ms() -> float:
    """The shortest of three full collections, in ms."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def gc_with_jobs_and_floor(n: int, base_ms: float) -> tuple[float, float]:
    """A full collection with the ``n`` jobs pending, and the floor beside it, interleaved.

    The floor is this process before the submits (``base_ms``) plus a full collection of
    ``n`` bare slotted objects, measured now, beside the jobs (so both figures see the same
    machine load): one tracked object per job and nothing else. The jobs are set aside with
    ``gc.freeze()`` while the bare objects are timed (here, in the harness, as a measuring
    tool; never in the library): subtracting two collections of the whole heap, as this did
    before, left the floor in the noise at 1M (7.6 ms where 1M bare objects take ~47 ms).
    """
    with_jobs = []
    bare = []
    for _ in range(3):
        with_jobs.append(full_gc_ms())
        gc.freeze()
        try:
            objs = [_Bare() for _ in range(n)]
            bare.append(full_gc_ms())
            del objs
        finally:
            gc.unfreeze()
    return min(with_jobs), base_ms + min(bare)


async def _submits(client: LipsyncClient, n: int, jobs: list[Job]) -> None:
    async def one(_: int) -> None:
        jobs.append(await client.lipsync_image(image=IMAGE, audio=AUDIO))

    await run_workers(n, CONCURRENCY, one)


def _client(session: aiohttp.ClientSession, mode: str, poll: float) -> LipsyncClient:
    receiver = WebhookReceiver() if mode == "webhook" else None
    return LipsyncClient(
        api_key="sk_bench",
        base_url="http://127.0.0.1:9/api/v1",
        session=session,
        webhook=receiver,
        poll_interval=poll,
        # Not the default 600 s: a million submits under load can take longer than that, and
        # the first jobs would then fall back to polling while we measure.
        webhook_grace=3600.0,
    )


async def child_mem(mode: str, n: int, method: str) -> dict[str, Any]:
    """Memory per pending job; with ``rss``, also submit time, stalls, full GC and close()."""
    out: dict[str, Any] = {}
    session = StubSession()
    try:
        client = _client(session, mode, 3600.0)
        await client.__aenter__()
        warm: list[Job] = []
        await _submits(client, 1000, warm)
        for job in warm:
            job.cancel()
        del warm, job
        base_ms = full_gc_ms() if method == "rss" else 0.0
        jobs: list[Job] = []
        gc.collect()
        if method == "tracemalloc":
            tracemalloc.start()
            start = tracemalloc.get_traced_memory()[0]
        else:
            start = rss_bytes()
        with Stalls() as stalls:
            t0 = time.perf_counter()
            async with asyncio.timeout(60.0 + n / 1000.0):
                await _submits(client, n, jobs)
            out["submit_s"] = time.perf_counter() - t0
            await asyncio.sleep(0.05)
        gc.collect()
        if method == "tracemalloc":
            used = tracemalloc.get_traced_memory()[0] - start
            tracemalloc.stop()
        else:
            used = rss_bytes() - start
            out.update(stalls.summary())
            out["full_gc_ms"], out["floor_ms"] = gc_with_jobs_and_floor(n, base_ms)
        out["per_job"] = used / n
        assert client.stats["pending"] == n, client.stats
        assert client.stats["status_reads"] == 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        await client.__aexit__(None, None, None)
        out["close_s"] = time.perf_counter() - t0
        out["close_cpu_s"] = time.process_time() - c0
        assert all(job.done() for job in jobs[:100])
    finally:
        await session.close()
    return out


async def child_poll(n: int, window: float) -> dict[str, Any]:
    """``n`` jobs polled every 5 s (stub transport): stalls, gen-2 pauses, CPU per read."""
    session = StubSession()
    out: dict[str, Any] = {}
    try:
        async with _client(session, "polling", 5.0) as client:
            jobs: list[Job] = []
            t0 = time.perf_counter()
            async with asyncio.timeout(60.0 + n / 1000.0):
                await _submits(client, n, jobs)
            out["submit_s"] = time.perf_counter() - t0
            await asyncio.sleep(6.5)  # every job read once: steady state
            reads0 = client.stats["status_reads"]
            cpu0 = time.process_time()
            with Stalls() as stalls:
                await asyncio.sleep(window)
            cpu = time.process_time() - cpu0
            reads = client.stats["status_reads"] - reads0
            out.update(stalls.summary())
            out["reads"] = reads
            out["reads_per_s"] = reads / window
            out["cpu_per_read_us"] = cpu / max(reads, 1) * 1e6
            out["cpu_share"] = cpu / window
            assert client.stats["pending"] == n
    finally:
        await session.close()
    return out


async def _deliver_all(client: LipsyncClient, session: StubSession, jobs: list[Job]) -> None:
    """Deliver every job the stub created (real POSTs to the receiver); wait for them all."""
    assert session.hooks is not None
    hooks = list(session.hooks.items())
    session.hooks.clear()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as sender:

        async def deliver(_: int) -> None:
            job_id, url = hooks.pop()
            body = {
                "id": job_id,
                "model": "lipsync-image",
                "status": "completed",
                "output": f"https://cdn.example.com/{job_id}.mp4",
                "error": "",
                "executionTime": 1234,
            }
            async with sender.post(url, json=body) as resp:
                assert resp.status == 200, resp.status

        async with asyncio.timeout(600.0):
            await run_workers(len(hooks), CONCURRENCY, deliver)
            async for _ in client.as_completed(jobs):
                pass


async def child_held(n: int) -> dict[str, Any]:
    """Issue 12: memory held 1 s after ``n`` webhook-resolved jobs finish, vs while pending.

    The warm-up resolves 1,000 jobs the same way first, so that what aiohttp and yarl keep in
    their bounded caches (parsed URLs and queries: ~400 KB, whatever the number of jobs) is in
    the baseline, not counted as held by the SDK.
    """
    session = StubSession()
    session.hooks = {}
    out: dict[str, Any] = {}
    try:
        async with _client(session, "webhook", 3600.0) as client:
            warm: list[Job] = []
            await _submits(client, 1000, warm)
            await _deliver_all(client, session, warm)
            del warm
            gc.collect()
            tracemalloc.start()
            start = tracemalloc.get_traced_memory()[0]
            jobs: list[Job] = []
            async with asyncio.timeout(60.0 + n / 1000.0):
                await _submits(client, n, jobs)
            gc.collect()
            # What the stub kept for the deliveries (its own id and URL strings) is not the
            # SDK's: subtracted.
            stub = sys.getsizeof(session.hooks) + sum(
                sys.getsizeof(k) + sys.getsizeof(v) for k, v in session.hooks.items()
            )
            pending = tracemalloc.get_traced_memory()[0] - start - stub
            await _deliver_all(client, session, jobs)
            del jobs
            await asyncio.sleep(1.0)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - start
            tracemalloc.stop()
            out.update(pending=pending, held=held, ratio=held / pending)
    finally:
        await session.close()
    return out


async def sdk_read_round(
    client: LipsyncClient, ids: list[str], window: float, *, warm: float, settle: float
) -> tuple[float, int]:
    """The client's CPU and status reads over ``window`` s while it polls the jobs ``ids``.

    ``warm``: seconds first, so that reads are under way on every connection; ``settle``:
    seconds after the jobs are cancelled, so that reads in flight end before the next round.
    """
    jobs = [client.job(i) for i in ids]
    for job in jobs:
        client._tracker.awaited(job)  # start polling without awaiting (private)
    await asyncio.sleep(warm)
    r0 = client.stats["status_reads"]
    c0 = time.process_time()
    await asyncio.sleep(window)
    cpu = time.process_time() - c0
    count = client.stats["status_reads"] - r0
    for job in jobs:
        job.cancel()
    await asyncio.sleep(settle)
    return cpu, count


async def child_reads(base_url: str, api_key: str, rounds: int, window: float) -> dict[str, Any]:
    """Client CPU per status read: the SDK's scheduler vs a raw aiohttp GET loop (emulator)."""
    ids: list[str] = []
    sdk_us: list[float] = []
    raw_us: list[float] = []
    rates: dict[str, list[float]] = {"sdk": [], "raw": []}
    headers = {"Authorization": f"Bearer {api_key}"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY)
    ) as raw_session:
        body = json.dumps({"formState": {"image": IMAGE, "audio": AUDIO}}).encode()
        for _ in range(2000):
            async with raw_session.post(
                f"{base_url}/lipsync-image",
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as resp:
                ids.append(json.loads(await resp.read())["id"])

        async def raw_round() -> tuple[float, int]:
            count = 0
            stop = time.perf_counter() + window
            it = iter(ids * 100)

            async def worker() -> None:
                nonlocal count
                for job_id in it:
                    if time.perf_counter() >= stop:
                        return
                    async with raw_session.get(f"{base_url}/jobs/{job_id}", headers=headers) as r:
                        json.loads(await r.read())
                    count += 1

            c0 = time.process_time()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return time.process_time() - c0, count

        # One client for all rounds, its jobs tracked only during its own rounds: raw and SDK
        # rounds alternate a few seconds apart, so both see the same load on a shared machine
        # (a client per round, with its own warm-up, put tens of seconds between the two).
        async with LipsyncClient(
            api_key=api_key, base_url=base_url, poll_interval=0.05, max_in_flight=CONCURRENCY
        ) as client:

            async def sdk_round() -> tuple[float, int]:
                return await sdk_read_round(client, ids, window, warm=0.3, settle=0.1)

            async with asyncio.timeout(rounds * (window + 5.0) * 2 + 60.0):
                await raw_round()  # warm up both processes
                for _ in range(rounds):
                    for name, fn in (("raw", raw_round), ("sdk", sdk_round)):
                        cpu, count = await fn()
                        (raw_us if name == "raw" else sdk_us).append(cpu / max(count, 1) * 1e6)
                        rates[name].append(count / window)
    return {
        "raw_us": raw_us,
        "sdk_us": sdk_us,
        "raw_rate": rates["raw"],
        "sdk_rate": rates["sdk"],
    }


# -- the parent ------------------------------------------------------------------------------


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "bench_scale.py"), "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  scale {' '.join(args[:3])}: {result}", file=sys.stderr, flush=True)
    return result


def _ok(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


async def main(sizes: tuple[int, ...]) -> None:
    load_before = os.getloadavg()
    mem: dict[tuple[str, int], dict[str, Any]] = {}
    poll: dict[str, Any] = {}
    held: dict[str, Any] = {}
    reads: dict[str, Any] = {}
    # Cheapest first, 1M last (each 1M child takes minutes): a partial run still reports.
    for n in sizes:
        for mode in ("polling", "webhook"):
            mem[(mode, n)] = run_child(["mem", mode, str(n), "rss"], 300.0 + n / 500.0)
        if n == 100_000:
            poll = run_child(["poll", "100000", "15"], 400.0)
            held = measure_held()
            async with Emulator() as emu:
                await emu.reset(job_duration=3600.0)
                reads = await asyncio.to_thread(
                    run_child, ["reads", emu.base_url, emu.api_key, "7", "2"], 300.0
                )
        for mode in ("polling", "webhook"):
            traced = run_child(["mem", mode, str(n), "tracemalloc"], 300.0 + n / 200.0)
            mem[(mode, n)]["traced"] = traced["per_job"]
    render(Run(sizes, load_before, os.getloadavg(), mem, poll, held, reads))


def measure_held() -> dict[str, Any]:
    held = run_child(["held", "20000"], 900.0)
    held["small"] = run_child(["held", "5000"], 600.0)
    return held


@dataclass
class Run:
    """One run's figures: what ``render`` prints, and what ``--render`` reads back."""

    sizes: tuple[int, ...]
    load_before: tuple[float, ...]
    load_after: tuple[float, ...]
    mem: dict[tuple[str, int], dict[str, Any]]
    poll: dict[str, Any]
    held: dict[str, Any]
    reads: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        saved = asdict(self)
        saved["mem"] = {f"{k[0]} {k[1]}": v for k, v in self.mem.items()}
        return saved

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Run:
        mem = {(k.split()[0], int(k.split()[1])): v for k, v in saved["mem"].items()}
        return cls(
            tuple(saved["sizes"]),
            tuple(saved["load_before"]),
            tuple(saved["load_after"]),
            mem,
            saved["poll"],
            saved["held"],
            saved["reads"],
        )


def render(run: Run) -> None:
    """Print and emit the table of one run's figures (also from a saved run: ``--render``)."""
    sizes, mem, poll, held, reads = run.sizes, run.mem, run.poll, run.held, run.reads
    big = sizes[-1]
    rows: list[list[str]] = []
    issue = {  # figures of the code before the redesign (issue 20's study), for comparison
        "traced": "448-461",
        "rss": "471-492",
        "stall1m": "435-537",
        "close100k": "140-170",
        "close1m": "2,000-2,400",
        "poll": "131-245",
    }
    for n in sizes:
        for mode in ("polling", "webhook"):
            r = mem[(mode, n)]
            targeted = n >= 100_000
            rows.append(
                [
                    f"traced B/job, {n:,} pending, {mode}",
                    fmt(r["traced"]),
                    "<= 256" if targeted else "-",
                    _ok(r["traced"], 256) if targeted else "",
                    issue["traced"],
                    "",
                ]
            )
            rows.append(
                [
                    f"RSS B/job, {n:,} pending, {mode}",
                    fmt(r["per_job"]),
                    "<= 300" if targeted else "-",
                    _ok(r["per_job"], 300) if targeted else "",
                    issue["rss"],
                    "",
                ]
            )
            rows.append(
                [
                    f"submit time, {n:,}, {mode} (stub)",
                    f"{r['submit_s']:.2f} s",
                    "-",
                    "",
                    "",
                    f"{n / r['submit_s']:,.0f} submits/s",
                ]
            )
    for mode in ("polling", "webhook"):
        r = mem[(mode, big)]
        floor = r["floor_ms"]
        stall_target = 100.0
        rows.append(
            [
                f"longest stall, submitting to {big:,} pending, {mode} (stub)",
                f"{r['stall_max_ms']:.1f} ms",
                f"<= {stall_target:.0f} ms or <= 1.5x floor",
                "yes" if r["stall_max_ms"] <= max(stall_target, 1.5 * floor) else "**no**",
                issue["stall1m"] + " ms",
                f"gen-2 floor ({big:,} bare slotted objects, full collection) {floor:.1f} ms: "
                f"{r['stall_max_ms'] / floor:.2f}x; longest gen-2 {r['gen2_max_ms']:.1f} ms; "
                f"longest stall outside gen-2 {r.get('stall_max_no_gen2_ms', 0.0):.1f} ms",
            ]
        )
        rows.append(
            [
                f"gen-2 pauses in that window, {mode}",
                f"{r['gen2_n']:.0f}, longest {r['gen2_max_ms']:.1f} ms",
                "-",
                "",
                "",
                f"full gc.collect() at {big:,} pending: {r['full_gc_ms']:.1f} ms "
                f"({r['full_gc_ms'] / floor:.2f}x the floor)",
            ]
        )
    for n in (100_000, big) if big != 100_000 else (100_000,):
        for mode in ("polling", "webhook"):
            r = mem[(mode, n)]
            limit = 0.05 if n == 100_000 else 0.5
            rows.append(
                [
                    f"close() with {n:,} pending, {mode}",
                    f"{r['close_s'] * 1e3:,.0f} ms (CPU {r.get('close_cpu_s', 0.0) * 1e3:,.0f})",
                    f"<= {limit * 1e3:,.0f} ms",
                    _ok(r["close_s"], limit),
                    (issue["close100k"] if n == 100_000 else issue["close1m"]) + " ms",
                    "",
                ]
            )
    if 100_000 not in sizes:  # `--sizes` without 100k: only the memory and stall rows
        _emit(rows, run)
        return
    floor100k = mem[("polling", 100_000)]["floor_ms"]
    rows.append(
        [
            "longest stall, 100,000 polled every 5 s (stub, 15 s)",
            f"{poll['stall_max_ms']:.1f} ms (p99 {poll['stall_p99_ms']:.2f})",
            "<= 20 ms or <= 1.5x floor",
            "yes" if poll["stall_max_ms"] <= max(20.0, 1.5 * floor100k) else "**no**",
            issue["poll"] + " ms",
            f"floor {floor100k:.1f} ms; gen-2: {poll['gen2_n']:.0f}, "
            f"longest {poll['gen2_max_ms']:.1f} ms",
        ]
    )
    rows.append(
        [
            "client CPU per status read, 100,000 polled (stub)",
            f"{poll['cpu_per_read_us']:.1f} us",
            "-",
            "",
            "",
            f"{poll['reads_per_s']:,.0f} reads/s, {poll['cpu_share'] * 100:.0f}% of a core",
        ]
    )
    sdk_us = statistics.median(reads["sdk_us"])
    raw_us = statistics.median(reads["raw_us"])
    # Each SDK round against the raw round just before it (seconds apart, the same load).
    read_ratio = statistics.median(
        s / r for s, r in zip(reads["sdk_us"], reads["raw_us"], strict=True)
    )
    rows.append(
        [
            "client CPU per status read vs raw GET (emulator, median of paired rounds)",
            f"{sdk_us:.0f} us ({read_ratio:.2f}x)",
            "<= 1.10x",
            _ok(read_ratio, 1.10),
            "~190 us",
            f"raw GET loop {raw_us:.0f} us; reads/s SDK "
            f"{statistics.median(reads['sdk_rate']):,.0f}, raw "
            f"{statistics.median(reads['raw_rate']):,.0f}",
        ]
    )
    small = held["small"]
    growth = (held["held"] - small["held"]) / (20_000 - 5_000)
    rows.append(
        [
            "held 1 s after 20,000 webhook jobs finish; growth from 5,000",
            f"{held['held'] / 1024:,.0f} KiB ({held['ratio'] * 100:.1f}% of pending); "
            f"{growth:+.2f} B per finished job",
            "no growth with N (<= 1 B/job)",
            "yes" if growth <= 1.0 else "**no**",
            "733 B/job, no plateau",
            f"5,000 finished: {small['held'] / 1024:,.0f} KiB held. The constant part is "
            "aiohttp's and yarl's bounded URL caches turning over (tracemalloc counts the new "
            "entries, not the freed ones made before it started)",
        ]
    )
    _emit(rows, run)


def _emit(rows: list[list[str]], run: Run) -> None:
    text = table(
        f"Scale, one process (load average {run.load_before[0]:.2f} before, "
        f"{run.load_after[0]:.2f} after; memory, stalls and close(): {STUB_NOTE}; status read "
        f"CPU: {SERVER_NOTE})",
        ["figure", "measured", "target", "holds", "before (issue 20)", "baseline, same run"],
        rows,
    )
    emit("scale", text, run.to_json())


def _child(argv: list[str]) -> dict[str, Any]:
    what = argv[0]
    if what == "mem":
        return asyncio.run(child_mem(argv[1], int(argv[2]), argv[3]))
    if what == "poll":
        return asyncio.run(child_poll(int(argv[1]), float(argv[2])))
    if what == "held":
        return asyncio.run(child_held(int(argv[1])))
    return asyncio.run(child_reads(argv[1], argv[2], int(argv[3]), float(argv[4])))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.stdout.write(json.dumps(_child(sys.argv[2:])) + "\n")
    else:
        import argparse

        os.environ.setdefault("PYTHONHASHSEED", "0")
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true", help="10k and 100k only")
        parser.add_argument(
            "--sizes",
            help="comma-separated N, e.g. 1000000: the memory (traced and RSS) and stall rows "
            "at those N only (the polled, held and read-CPU rows need 100000 among them)",
        )
        parser.add_argument(
            "--render",
            metavar="JSON",
            help="print a saved run's table again (run_all's scale.json) instead of measuring",
        )
        parser.add_argument(
            "--remeasure-held",
            action="store_true",
            help="with --render: measure the held-after-webhooks rows again (about 2 minutes)",
        )
        args = parser.parse_args()
        if args.render:
            run = Run.from_json(json.loads(Path(args.render).read_text())["data"])
            if args.remeasure_held:
                run.held = measure_held()
            render(run)
            raise SystemExit(0)
        if args.sizes:
            chosen = tuple(sorted(int(x) for x in args.sizes.split(",")))
        else:
            chosen = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
        asyncio.run(main(chosen))
