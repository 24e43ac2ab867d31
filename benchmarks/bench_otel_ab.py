"""What a configured OpenTelemetry provider costs a fan-out, this tree's ``_telemetry`` against
another revision's, in one run.

``bench_fanout``'s ``gather`` fan-out of N zero-length jobs (polling, concurrency 64), four
rows, interleaved round by round so that the shared machine's load falls on all of them alike:

- ``SDK`` (the ``otel`` extra hidden, as in a process that never installed it): the baseline;
- ``no provider`` (the API imported, nothing configured: the no-op telemetry);
- ``provider, <REF>``: ``bench_fanout``'s provider row (the real SDK's tracer provider, a batch
  span processor and an exporter that discards, a meter provider with an in-memory reader)
  with ``lipsync_async/_telemetry.py`` as it is at git revision REF (``main`` by default),
  loaded beside this tree's and put in its place for that row;
- ``provider, this tree``: the same with this tree's ``_telemetry``.

The table shows each row's median round: jobs/s, client CPU per job (the steadier figure on a
shared machine), the cost over ``SDK`` per job, and the part of the CPU the garbage collector
took (``gc.callbacks``: the OpenTelemetry SDK's spans and measurements are many objects, and
the batch processor keeps up to 2,048 spans alive). The title gives the provider's overhead
over ``SDK`` for both revisions, and the median of the paired per-round differences between
the two provider rows (each round runs them back to back: the machine's drift cancels).

``--hooks``: no fan-out, no I/O: the telemetry calls of one polled job (the submit span, the
job tracked, one status read span, the resolution with its job span and measurements) N times,
the two revisions interleaved: what the hooks and the OpenTelemetry SDK work they ask for cost,
without the network's noise (nor the garbage collector's share, nor the batch processor's
thread, which the fan-out rows include).

Usage: ``python benchmarks/bench_otel_ab.py [--n 2000] [--rounds 5] [--ref main] [--hooks]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from _bench import HERE, Emulator, Meter, bounded, emit, fmt, ratio, table
from bench_fanout import OTEL_NONE, OTEL_ON, sdk

import lipsync_async._client as client_module

ROWS = ("SDK", "no provider", "provider, REF", "provider, this tree")


class GCTime:
    """CPU seconds in the garbage collector, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._phase)

    def _phase(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


GC = GCTime()


def load_revision(ref: str) -> ModuleType:
    """``lipsync_async/_telemetry.py`` at ``ref``, as a module of the package (its relative
    imports resolve to this tree's modules, which is what the row compares)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:lipsync_async/_telemetry.py"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = "lipsync_async._telemetry_" + "".join(c if c.isalnum() else "_" for c in ref)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "lipsync_async"
    sys.modules[name] = module
    # The file name a profiler shows: profile_fanout groups frames by it.
    filename = f"<{ref}>/lipsync_async/_telemetry.py"
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
    return module


@contextmanager
def telemetry_of(module: ModuleType | None) -> Iterator[None]:
    """Clients opened inside resolve their telemetry with ``module`` (None: this tree's)."""
    names = vars(client_module)  # where LipsyncClient.__aenter__ looks ``resolve`` up
    saved = names["resolve"]
    if module is not None:
        names["resolve"] = module.resolve
    try:
        yield
    finally:
        names["resolve"] = saved


async def measure(emu: Emulator, row: str, n: int, base: ModuleType) -> dict[str, Any]:
    await emu.reset(job_duration=0.0)
    stats: Counter[str] = Counter()
    otel = {"SDK": None, "no provider": OTEL_NONE}.get(row, OTEL_ON)
    gc.collect()
    with telemetry_of(base if row == "provider, REF" else None):
        gc_before = GC.seconds
        async with Meter(emu) as m:
            await bounded(sdk(emu.base_url, emu.api_key, n, stats, otel), 30 + n / 50, row)
        gc_seconds = GC.seconds - gc_before
    if stats["done"] != n:
        raise RuntimeError(f"{row}: {stats['done']} of {n} jobs resolved")
    print(f"  {row:20s} N={n:,}: {n / m.wall:6.0f} jobs/s", file=sys.stderr, flush=True)
    return {
        "jobs_per_s": n / m.wall,
        "client_cpu_us": m.cpu / n * 1e6,
        "gc_us": gc_seconds / n * 1e6,
    }


def hooks_round(module: ModuleType, n: int) -> float:
    """Client CPU per job of ``module``'s hooks for ``n`` polled jobs, in microseconds."""
    from profile_fanout import providers

    from lipsync_async import LipsyncImageRequest
    from lipsync_async._wire import parse_job_state

    request = LipsyncImageRequest(image="https://example.com/a.png", audio="https://e.com/a.mp3")
    state = parse_job_state({"id": "j", "status": "completed", "output": "https://cdn/j.mp4"})
    kwargs = providers()
    tel = module.resolve(kwargs["tracer_provider"], kwargs["meter_provider"])
    gc.collect()
    t0 = time.process_time()
    for i in range(n):
        job_id = f"job-{i}"
        with tel.submit_span(request) as span:
            tel.job_tracked(job_id, tel.submit_context(), by_webhook=False)
            span.accepted(job_id)
        with tel.read_span(job_id) as read:
            read.read(state)
        tel._end(job_id, "completed", "read")  # what resolved() does, without a Job
    cpu = time.process_time() - t0
    for provider in kwargs.values():
        provider.shutdown()
    return cpu / n * 1e6


def hooks(n: int, rounds: int, ref: str) -> None:
    import lipsync_async._telemetry as tree

    base = load_revision(ref)
    runs: dict[str, list[float]] = {ref: [], "this tree": []}
    for _ in range(rounds):
        runs[ref].append(hooks_round(base, n))
        runs["this tree"].append(hooks_round(tree, n))
    med = {k: statistics.median(v) for k, v in runs.items()}
    text = table(
        f"OpenTelemetry hooks of one polled job, no I/O (N={n:,}, median of {rounds} "
        f"interleaved rounds; load average {os.getloadavg()[0]:.2f})",
        ["_telemetry", "client CPU us/job", "vs " + ref, "CPU us/job by round"],
        [
            [k, fmt(med[k]), ratio(med[k], med[ref]), " ".join(fmt(x) for x in v)]
            for k, v in runs.items()
        ],
    )
    emit("otel_hooks", text, {"n": n, "ref": ref, "runs": runs})


async def main(n: int, rounds: int, ref: str) -> None:
    base = load_revision(ref)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    async with Emulator() as emu:
        for row in ROWS:  # warm up both processes, and import the SDK before any timing
            await measure(emu, row, 300, base)
        for _ in range(rounds):
            for row in ROWS:
                runs[row].append(await measure(emu, row, n, base))
    load_after = os.getloadavg()[0]
    med = {
        row: {k: statistics.median(r[k] for r in runs[row]) for k in runs[row][0]} for row in ROWS
    }
    sdk_cpu = med["SDK"]["client_cpu_us"]
    rows = [
        [
            row.replace("REF", ref),
            fmt(med[row]["jobs_per_s"]),
            ratio(med[row]["jobs_per_s"], med["SDK"]["jobs_per_s"]),
            fmt(med[row]["client_cpu_us"]),
            ratio(med[row]["client_cpu_us"], sdk_cpu),
            fmt(med[row]["client_cpu_us"] - sdk_cpu),
            fmt(med[row]["gc_us"]),
            " ".join(fmt(r["client_cpu_us"]) for r in runs[row]),
        ]
        for row in ROWS
    ]
    before = med["provider, REF"]["client_cpu_us"] - sdk_cpu
    after = med["provider, this tree"]["client_cpu_us"] - sdk_cpu
    paired = statistics.median(
        a["client_cpu_us"] - b["client_cpu_us"]
        for a, b in zip(runs["provider, this tree"], runs["provider, REF"], strict=True)
    )
    text = table(
        f"OpenTelemetry cost, fan-out of N={n:,} zero-length jobs (median of {rounds} "
        f"interleaved rounds; load average {load_before:.2f} before, {load_after:.2f} after); "
        f"provider overhead per job: {fmt(before)} us ({ref}) -> {fmt(after)} us (this tree), "
        f"{ratio(after, before)}; paired per round: {paired:+,.0f} us/job",
        [
            "row",
            "jobs/s",
            "vs SDK",
            "client CPU us/job",
            "CPU vs SDK",
            "over SDK us",
            "GC us/job",
            "CPU us/job by round",
        ],
        rows,
    )
    emit("otel_ab", text, {"n": n, "ref": ref, "runs": runs})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref", default="main", help="the revision the provider row compares")
    parser.add_argument("--hooks", action="store_true", help="the hooks alone, no I/O")
    args = parser.parse_args()
    if args.hooks:
        hooks(args.n, args.rounds, args.ref)
    else:
        asyncio.run(main(args.n, args.rounds, args.ref))
