"""Shared pieces of the benchmarks: the emulator process, the baselines, tables and results.

Every benchmark runs the emulator (:mod:`_emulator_proc`) in a separate process and drives it
over 127.0.0.1 only. Every load loop is bounded twice: by a count (N jobs, M deliveries) and by
a hard deadline (``asyncio.timeout``), so a regression makes a benchmark fail, never hang.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

HERE = Path(__file__).resolve().parent
IMAGE = "https://example.com/media/face.png"
AUDIO = "https://example.com/media/voice.mp3"
SERVER_NOTE = (
    "server: lipsync_async.testing.FakeLipsyncServer in a separate process "
    "(benchmarks/_emulator_proc.py), 127.0.0.1"
)
#: Same bound on concurrent requests for the SDK (its default max_in_flight) and every baseline.
CONCURRENCY = 64


class Emulator:
    """The emulator subprocess and its control port."""

    def __init__(self, *, max_seconds: float = 1800.0) -> None:
        self._max_seconds = max_seconds
        self._proc: asyncio.subprocess.Process | None = None
        self.base_url = ""
        self.api_key = ""
        self.control = ""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "_emulator_proc.py"),
            "--max-seconds",
            str(self._max_seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30.0)
        if not line:
            raise RuntimeError("the emulator process did not start")
        info = json.loads(line)
        self.base_url, self.api_key, self.control = (
            info["base_url"],
            info["api_key"],
            info["control"],
        )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, self.control + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def configure(self, **knobs: Any) -> None:
        await self._call("POST", "/configure", knobs)

    async def reset(self, **knobs: Any) -> None:
        """Forget jobs and counters, then set ``knobs`` (unset ones go back to neutral)."""
        await self._call("POST", "/reset")
        neutral: dict[str, Any] = {
            "job_duration": 0.0,
            "rate_limit": None,
            "server_error_rate": 0.0,
            "webhook_delay": 0.0,
        }
        neutral.update(knobs)
        await self.configure(**neutral)

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("GET", "/stats")
        return out


# -- measuring -------------------------------------------------------------------------------


class Meter:
    """Wall time and this process's CPU time over a block, and the server's CPU time."""

    def __init__(self, emulator: Emulator | None = None) -> None:
        self._emulator = emulator
        self.wall = 0.0
        self.cpu = 0.0
        self.server_cpu = 0.0
        self.server_requests: dict[str, int] = {}

    async def __aenter__(self) -> Self:
        if self._emulator is not None:
            self._s0 = await self._emulator.stats()
        self._w0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w0
        self.cpu = time.process_time() - self._c0
        if self._emulator is not None:
            s1 = await self._emulator.stats()
            self.server_cpu = s1["cpu"] - self._s0["cpu"]
            before = self._s0["requests"]
            self.server_requests = {k: v - before.get(k, 0) for k, v in s1["requests"].items()}


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


async def bounded(coro: Awaitable[Any], seconds: float, what: str) -> Any:
    """Await ``coro`` for at most ``seconds``: every load loop has a hard deadline."""
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except TimeoutError:
        raise RuntimeError(f"{what}: hard timeout of {seconds:.0f} s hit") from None


async def run_workers(count: int, workers: int, one: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``one(i)`` for i in range(count) on ``workers`` tasks (a bounded submit loop)."""
    it: Iterator[int] = iter(range(count))

    async def worker() -> None:
        for i in it:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(workers, count))))


# -- output ----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    if value != value:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(value: float, base: float) -> str:
    if not base or value != value or base != base:
        return "n/a"
    return f"{value / base:.2f}x"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [f"### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emit(name: str, text: str, data: dict[str, Any]) -> None:
    """Print the table; if BENCH_RESULTS_DIR is set, also save text and data for run_all."""
    print(text)
    print()
    out = os.environ.get("BENCH_RESULTS_DIR")
    if out:
        Path(out, f"{name}.json").write_text(json.dumps({"text": text, "data": data}, indent=1))


def parse_quick(argv: Sequence[str] | None = None) -> bool:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    return bool(parser.parse_args(argv).quick)
