"""Where a fan-out's client CPU goes, per job: py-spy samples grouped by what they are in.

Runs one fan-out (``--mode gather``: ``asyncio.gather`` of ``client.lipsync_image`` calls;
``many``: ``client.submit_many``; ``raw``: bare aiohttp POST + GET pairs) of N zero-length
jobs against the emulator in its own process, under ``py-spy record`` (raw collapsed stacks,
``--gil --nonblocking``, 250 Hz or ``--rate``), then attributes each sample to the innermost
frame that belongs to a group: aiohttp, yarl/multidict, JSON, the SDK's own modules,
attrs/cattrs, task machinery (``create_task``, ``Task.__step``, futures, semaphores), the event
loop and selector. Prints a table of microseconds of client CPU per job per group.

``--otel``: the same fan-out with OpenTelemetry on (``bench_fanout``'s provider row: the real
SDK's tracer provider, a batch span processor and an exporter that discards, a meter provider
with an in-memory reader). The groups then split the telemetry's cost into the OpenTelemetry
SDK's own span and metric machinery (``opentelemetry/sdk``, its attributes and utilities), the
API's context and trace helpers (``opentelemetry/context``, ``opentelemetry/trace``: attach,
detach, ``set_span_in_context``, what our calls into it cost) and ours (``_telemetry.py``'s own
frames: attribute dicts, f-strings, traceparent parsing, C calls it makes); a second table
gives each telemetry hook's inclusive cost (the outermost ``_telemetry`` frame of a sample).

``--ref REV`` (with ``--otel``): ``_telemetry.py`` as it is at git revision REV instead of this
tree's (``bench_otel_ab.load_revision``), to profile before and after a change.

Usage: ``python benchmarks/profile_fanout.py --mode gather --n 5000 [--otel [--ref main]]``
(needs ``py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _baselines import raw_pairs
from _bench import AUDIO, CONCURRENCY, HERE, IMAGE, Emulator, bounded, table

from lipsync_async import Job, LipsyncClient, LipsyncImageRequest

POLL = 0.05

GROUPS = (
    # First: an OpenTelemetry frame named like a stdlib file must land in these groups.
    (
        "OTel SDK: spans/metrics",
        ("/opentelemetry/sdk/", "/opentelemetry/attributes/", "/opentelemetry/util/"),
    ),
    ("OTel API: context/trace", ("/opentelemetry/",)),
    ("SDK: _telemetry (ours)", ("lipsync_async/_telemetry.py",)),
    ("aiohttp", ("/aiohttp/",)),
    ("yarl/multidict", ("/yarl/", "/multidict/", "/propcache/")),
    ("JSON", ("/json/", "json.loads", "json.dumps")),
    ("attrs/cattrs", ("/attr/", "/attrs/", "/cattrs/", "<attrs generated", "<cattrs generated")),
    ("SDK: _http", ("lipsync_async/_http.py", "lipsync_async/_pacing.py")),
    ("SDK: _wire/_models", ("lipsync_async/_wire.py", "lipsync_async/_models.py")),
    ("SDK: _client", ("lipsync_async/_client.py",)),
    ("SDK: _tracker/_job", ("lipsync_async/_tracker.py", "lipsync_async/_job.py")),
    ("tasks/futures/locks", ("create_task", "tasks.py", "futures.py", "locks.py")),
    ("event loop/selector", ("base_events.py", "selector_events.py", "selectors.py", "events.py")),
)


def hook(stack: str) -> str | None:
    """The outermost ``_telemetry`` function of a sample (its hook), if it has one."""
    for frame in stack.split(";"):
        if "lipsync_async/_telemetry.py" in frame:
            return frame.split(" (", 1)[0]
    return None


def providers() -> dict[str, Any]:
    """``bench_fanout``'s provider row: what a configured application has, minus the network."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tracer_provider, "meter_provider": meter_provider}


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, marks in GROUPS:
            if any(m in frame for m in marks):
                return name
    return "other (benchmark, stdlib, interpreter)"


async def run(mode: str, n: int, otel: bool = False) -> float:
    kwargs = providers() if otel else {}  # the SDK's import is no per-job cost: before t0
    async with Emulator() as emu:
        await emu.reset(job_duration=0.0)
        t0 = time.process_time()
        if mode == "raw":
            await bounded(raw_pairs(emu.base_url, emu.api_key, n, Counter()), 300.0, "raw")
        else:
            async with LipsyncClient(
                api_key=emu.api_key,
                base_url=emu.base_url,
                poll_interval=POLL,
                max_in_flight=CONCURRENCY,
                **kwargs,
            ) as client:

                async def fan() -> None:
                    if mode == "gather":
                        jobs = await asyncio.gather(
                            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(n))
                        )
                    else:
                        reqs = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(n))
                        jobs = [
                            j
                            async for j in client.submit_many(reqs, concurrency=CONCURRENCY)
                            if isinstance(j, Job)
                        ]
                    async for _ in client.as_completed(jobs):
                        pass

                await bounded(fan(), 300.0, mode)
            for provider in kwargs.values():
                provider.shutdown()  # the batch processor's last export: its CPU counts too
        return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("gather", "many", "raw"), default="gather")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--otel", action="store_true", help="with a tracer and meter provider")
    parser.add_argument("--ref", help="with --otel: _telemetry.py as at this git revision")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        if args.ref:
            from bench_otel_ab import load_revision, telemetry_of

            with telemetry_of(load_revision(args.ref)):
                cpu = asyncio.run(run(args.mode, args.n, args.otel))
        else:
            cpu = asyncio.run(run(args.mode, args.n, args.otel))
        print(f"cpu {cpu:.3f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "stacks.txt")
        cmd = [
            "py-spy",
            "record",
            "--format",
            "raw",
            "--full-filenames",
            "--gil",
            "--nonblocking",
            "--rate",
            str(args.rate),
            "-o",
            str(out),
            "--",
            sys.executable,
            str(HERE / "profile_fanout.py"),
            "--child",
            "--mode",
            args.mode,
            "--n",
            str(args.n),
            *(["--otel"] if args.otel else []),
            *(["--ref", args.ref] if args.ref else []),
        ]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
        cpu = float(next(x for x in res.stdout.splitlines() if x.startswith("cpu")).split()[1])
        samples: collections.Counter[str] = collections.Counter()
        hooks: collections.Counter[str] = collections.Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if "process_time" in stack and "run" not in stack:
                continue
            if "profile_fanout.py:" in stack and ";providers (" in stack:
                continue  # importing the OpenTelemetry SDK: before the measured time
            samples[classify(stack)] += int(count)
            if (name := hook(stack)) is not None:
                hooks[name] += int(count)
    total = sum(samples.values())
    per_job = cpu / args.n * 1e6
    rows = [
        [name, f"{c / total * 100:.1f}%", f"{c / total * per_job:.0f}"]
        for name, c in samples.most_common()
    ]
    rows.append(["total (process_time)", "100%", f"{per_job:.0f}"])
    print(
        table(
            f"Client CPU per job, {args.mode}{' with OpenTelemetry' if args.otel else ''}"
            f"{f' (_telemetry of {args.ref})' if args.ref else ''}, "
            f"N={args.n:,} (py-spy, {total:,} samples; load {os.getloadavg()[0]:.2f})",
            ["group (innermost frame)", "share", "us/job"],
            rows,
        )
    )
    if hooks:
        print(
            table(
                "Telemetry hooks, inclusive (the outermost _telemetry frame of a sample)",
                ["hook", "share", "us/job"],
                [
                    [name, f"{c / total * 100:.1f}%", f"{c / total * per_job:.0f}"]
                    for name, c in hooks.most_common()
                ],
            )
        )


if __name__ == "__main__":
    main()
