"""The main job: a fan-out of real jobs against the embedded emulator, by webhook and by polling.

Run it with ``./.ci/demo`` (sets up .venv on first use). It starts a local lipsync.studio
(``FakeLipsyncServer``) with a few of the real service's bad habits switched on (failed jobs,
duplicated, early and lost webhook deliveries, 503s), then:

1. fans out jobs across the three endpoints with an embedded ``WebhookReceiver``: they resolve
   from deliveries, and the lost ones fall back to polling after ``webhook_grace``;
2. fans out the same number by polling only, with one scheduler for every job;
3. prints what happened (completed, failed, status reads per job, time), and downloads one output.

Options: ``--jobs N`` (per mode, default 150), ``--duration S`` (seconds per job, default 1.0),
``--otel``: record OpenTelemetry spans and metrics in memory (the SDK's own exporters, no
collector) and print a compact timeline of a few jobs of each mode, then the metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from lipsync_async import Job, JobFailed, LipsyncClient, WebhookReceiver
from lipsync_async.testing import FakeLipsyncServer

MEDIA = "https://media.example.com"


async def fan_out(client: LipsyncClient, n: int) -> list[Job]:
    """Submit ``n`` jobs, cycling through the three endpoints (a few marked to fail)."""

    async def one(i: int) -> Job:
        prompt = "[fail] demo" if i % 25 == 7 else None  # the emulator fails these on purpose
        if i % 3 == 0:
            return await client.lipsync_video(
                video=f"{MEDIA}/clip{i}.mp4", audio=f"{MEDIA}/voice{i}.mp3", prompt=prompt
            )
        if i % 3 == 1:
            return await client.lipsync_image(
                image=f"{MEDIA}/face{i}.png",
                audio=f"{MEDIA}/voice{i}.mp3",
                resolution="720p",
                prompt=prompt,
            )
        return await client.lipsync_image_multi(
            image=f"{MEDIA}/duo{i}.png",
            left_audio=f"{MEDIA}/left{i}.mp3",
            right_audio=f"{MEDIA}/right{i}.mp3",
            order="left_right",
            prompt=prompt,
        )

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def run_mode(
    name: str, fake: FakeLipsyncServer, n: int, duration: float, **kwargs: Any
) -> tuple[str, int, int, float, float]:
    reads_before = fake.requests["GET /jobs"]
    started = time.perf_counter()
    async with LipsyncClient(fake.api_key, base_url=fake.base_url, **kwargs) as client:
        jobs = await fan_out(client, n)
        completed = failed = 0
        async for job in client.as_completed(jobs, timeout=60):
            try:
                await job
                completed += 1
            except JobFailed:
                failed += 1
        elapsed = time.perf_counter() - started
        if name == "polling":
            ok = next(j for j in jobs if j.done() and j.exception() is None)
            with tempfile.TemporaryDirectory() as tmp:
                path = await client.download(ok, Path(tmp) / "result.mp4")
                head = path.read_bytes()[:12]
                print(f"downloaded {ok.id}: {path.stat().st_size} bytes, box {head[4:8]!r}")
    reads = (fake.requests["GET /jobs"] - reads_before) / n
    return name, completed, failed, reads, elapsed


class Recorder:
    """``--otel``: a tracer and a meter provider with in-memory exporters, and their printout."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def timeline(self, per_kind: int = 3) -> None:
        """Per job (one trace each): each span's start after the submit, its length, its gist."""
        traces: dict[int, list[Any]] = {}
        for span in self.spans.get_finished_spans():
            if span.context is not None:
                traces.setdefault(span.context.trace_id, []).append(span)
            for link in span.links:  # a download: its own trace, linked to its job's
                traces.setdefault(link.context.trace_id, []).append(span)
        shown: dict[str, int] = {}
        print("\nper-job timelines (OpenTelemetry spans, ms after the submit began):")
        # The job with a download first, so that one of the timelines shows every span kind.
        for spans in sorted(traces.values(), key=lambda spans: all(s.name != "GET" for s in spans)):
            job = next((s for s in spans if s.name == "lipsync.job"), None)
            if job is None or job.attributes is None:
                continue
            how = str(job.attributes.get("lipsync.job.resolved_by"))
            if shown.get(how, 0) >= per_kind:
                continue
            shown[how] = shown.get(how, 0) + 1
            t0 = min(s.start_time or 0 for s in spans)
            print(f"  job {job.attributes.get('lipsync.job.id')} ({how})")
            for span in sorted(spans, key=lambda s: (s.start_time or 0, s.name != "lipsync.job")):
                a = span.attributes or {}
                gist = " ".join(
                    f"{k.rsplit('.', 1)[-1]}={a[k]}"
                    for k in (
                        "lipsync.submit.outcome",
                        "lipsync.job.status",
                        "lipsync.delivery.result",
                        "lipsync.job.outcome",
                        "http.response.status_code",
                        "http.response.body.size",
                    )
                    if k in a
                )
                start = ((span.start_time or 0) - t0) / 1e6
                took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
                print(f"    {start:8.1f} ms  {span.name:<26} {took:8.1f} ms  {gist}")

    def metrics(self) -> None:
        data = self.reader.get_metrics_data()
        if data is None:
            return
        print("\nmetrics:")
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:  # a histogram: count and mean
                            count, total = getattr(point, "count", 0), getattr(point, "sum", 0)
                            value = f"count={count} mean={total / max(count, 1):.3f}"
                        labels = ",".join(
                            k.rsplit(".", 1)[-1] + "=" + str(v)
                            for k, v in (point.attributes or {}).items()
                        )
                        print(f"  {metric.name:<28} {labels:<50} {value}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--otel", action="store_true", help="print OpenTelemetry timelines")
    args = parser.parse_args()
    n, duration, poll = args.jobs, args.duration, 0.25
    recorder = Recorder() if args.otel else None
    otel = recorder.kwargs() if recorder is not None else {}

    async with FakeLipsyncServer(
        job_duration=duration,
        webhook_duplicate_rate=0.2,
        webhook_early_rate=0.1,
        webhook_loss_rate=0.1,
        server_error_rate=0.02,
        seed=7,
    ) as fake:
        print(f"emulator at {fake.base_url}; {n} jobs per mode, {duration} s each\n")
        rows = [
            await run_mode(
                "webhook",
                fake,
                n,
                duration,
                webhook=WebhookReceiver(),
                webhook_grace=duration * 3,
                poll_interval=poll,
                **otel,
            ),
            await run_mode("polling", fake, n, duration, poll_interval=poll, **otel),
        ]
        ideal = math.ceil(duration / poll)
        print(f"\n{'mode':<9} {'completed':>9} {'failed':>6} {'reads/job':>9} {'seconds':>8}")
        for name, completed, failed, reads, elapsed in rows:
            print(f"{name:<9} {completed:>9} {failed:>6} {reads:>9.2f} {elapsed:>8.2f}")
        lost = len(fake.lost_deliveries)
        dups = sum(d.duplicate for d in fake.deliveries)
        print(
            f"\nwebhook mode: {lost} deliveries lost (resolved by fallback polling), "
            f"{dups} duplicated (ignored); polling ideal is {ideal} reads/job"
        )
        print(f"jobs created at the service: {len(fake.jobs)} (one per submit, none twice)")
        if recorder is not None:
            recorder.timeline()
            recorder.metrics()


if __name__ == "__main__":
    asyncio.run(main())
