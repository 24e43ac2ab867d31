"""OpenTelemetry over the emulator: the spans, attributes and metrics README's Observability
table documents, for each way a job resolves, with the real SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lipsync_async import (
    LipsyncClient,
    LipsyncImageRequest,
    SubmissionUncertainError,
    WebhookReceiver,
)
from lipsync_async._telemetry import NOOP
from lipsync_async.stores import MemoryStore, RedisStore
from lipsync_async.testing import FakeLipsyncServer

from ._waiting import until
from .conftest import AUDIO, IMAGE, ClientFactory
from .stores_support import REDIS_SERVER, free_port
from .test_asgi_functional import bound_socket, mounted, serve

SECRET = "otel-test-secret-0123456789"


class Otel:
    """A tracer and a meter provider of the test's own, with in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.spans.get_finished_spans()]
        return found[0]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, value: sum, gauge value or histogram count)]."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        out.setdefault(metric.name, []).append(
                            (dict(point.attributes or {}), value)
                        )
        return out

    def total(self, name: str, **attributes: Any) -> float:
        return float(
            sum(
                v
                for attrs, v in self.metrics().get(name, [])
                if all(attrs.get(k.replace("__", ".")) == a for k, a in attributes.items())
            )
        )

    def dump(self) -> str:
        """Everything exported, as text: for the no-secrets scan."""
        parts = [span.to_json() for span in self.spans.get_finished_spans()]
        data = self.reader.get_metrics_data()
        parts.append(data.to_json() if data is not None else "")
        return "\n".join(parts)


@pytest.fixture
def otel() -> Iterator[Otel]:
    telemetry = Otel()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def _same_trace(*spans: ReadableSpan) -> bool:
    return len({s.context.trace_id for s in spans if s.context is not None}) == 1


def _no_secrets(otel: Otel, *values: str) -> None:
    text = otel.dump()
    for value in values:
        assert value not in text


async def test_a_webhook_job_traces_submit_delivery_job_and_download(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel, tmp_path: Path
) -> None:
    """A job resolved by its delivery: the submit span, a delivery span and the job span in one
    trace (the delivery a child of the submit), a download span linked to it; the counters
    and histograms of the table; no key or secret anywhere."""
    receiver = WebhookReceiver(secret=SECRET)
    client: LipsyncClient = await make_client(webhook=receiver, **otel.kwargs)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO, resolution="720p")
    state = await job.wait(5)
    await client.download(state, tmp_path / "out.mp4")
    await asyncio.sleep(0.01)  # the wake histogram is recorded a loop turn after the wake

    submit = otel.one("POST /lipsync-image")
    assert submit.attributes is not None
    assert submit.attributes["lipsync.submit.outcome"] == "accepted"
    assert submit.attributes["lipsync.job.id"] == job.id
    assert submit.attributes["lipsync.resolution"] == "720p"
    assert submit.attributes["lipsync.credits.estimated"] == 20.0
    assert submit.attributes["http.request.method"] == "POST"
    assert submit.attributes["http.response.status_code"] == 200
    delivery = otel.one("process /webhooks/lipsync")
    assert delivery.attributes is not None
    assert delivery.attributes["lipsync.delivery.result"] == "accepted"
    assert delivery.attributes["messaging.system"] == "lipsync"
    assert delivery.parent is not None and submit.context is not None
    assert delivery.parent.span_id == submit.context.span_id
    span = otel.one("lipsync.job")
    assert span.attributes is not None
    assert span.attributes["lipsync.job.resolved_by"] == "delivery"
    assert span.attributes["lipsync.job.outcome"] == "completed"
    assert isinstance(span.attributes["lipsync.job.wait"], float)
    assert span.start_time == submit.start_time  # one span from submit to resolution
    download = otel.one("GET")
    assert download.attributes is not None and download.attributes["lipsync.job.id"] == job.id
    assert download.links and download.links[0].context.trace_id == submit.context.trace_id
    assert _same_trace(submit, delivery, span)
    assert not otel.named("GET /jobs/{id}")

    assert otel.total("lipsync.submits", lipsync__submit__outcome="accepted") == 1
    assert otel.total("lipsync.credits.estimated") == 20.0
    assert otel.total("lipsync.deliveries", lipsync__delivery__result="accepted") == 1
    assert otel.total("lipsync.job.duration", lipsync__job__resolved_by="delivery") == 1
    assert otel.total("lipsync.delivery.wake") == 1
    assert otel.total("lipsync.jobs.resolved", lipsync__job__outcome="completed") == 1
    assert "lipsync.jobs.pending" in otel.metrics()
    _no_secrets(otel, fake.api_key, SECRET)


async def test_a_polled_job_traces_its_status_reads(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """Without a receiver: status read spans are children of the submit, the job span says
    ``poll``; status reads are counted; the store record carries the submit's traceparent."""
    fake.job_duration = 0.2
    store = MemoryStore()
    client: LipsyncClient = await make_client(store=store, **otel.kwargs)
    job = await client.lipsync_video(video=IMAGE, audio=AUDIO)
    [(record, _)] = await store.pending()
    await job.wait(5)

    submit = otel.one("POST /lipsync-video")
    assert submit.context is not None
    assert record.trace is not None
    ids = f"{submit.context.trace_id:032x}-{submit.context.span_id:016x}"
    assert record.trace.startswith(f"00-{ids}-")
    reads = otel.named("GET /jobs/{id}")
    assert reads and all(r.parent and r.parent.span_id == submit.context.span_id for r in reads)
    assert reads[-1].attributes is not None
    assert reads[-1].attributes["lipsync.job.status"] == "completed"
    span = otel.one("lipsync.job")
    assert span.attributes is not None and span.attributes["lipsync.job.resolved_by"] == "poll"
    assert _same_trace(submit, span, *reads)
    assert otel.total("lipsync.status_reads") == len(reads)
    assert otel.total("lipsync.job.duration", lipsync__job__resolved_by="poll") == 1
    _no_secrets(otel, fake.api_key)


async def test_a_lost_delivery_resolves_by_fallback_in_the_trace(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """The delivery is lost: no delivery span, the fallback read after the grace resolves the
    job, and the job span says ``fallback``."""
    fake.webhook_loss_rate = 1.0
    client: LipsyncClient = await make_client(
        webhook=WebhookReceiver(secret=SECRET), webhook_grace=0.2, **otel.kwargs
    )
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    await job.wait(5)

    assert fake.lost_deliveries == [job.id]
    assert not otel.named("process /webhooks/lipsync")
    span = otel.one("lipsync.job")
    assert span.attributes is not None
    assert span.attributes["lipsync.job.resolved_by"] == "fallback"
    assert _same_trace(otel.one("POST /lipsync-image"), span, *otel.named("GET /jobs/{id}"))
    assert otel.total("lipsync.job.duration", lipsync__job__resolved_by="fallback") == 1
    _no_secrets(otel, fake.api_key, SECRET)


async def test_an_uncertain_submit_and_the_job_it_settles_into_share_a_trace(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """The submit's answer is dropped: its span says ``uncertain``; the delivery (which carries
    the submit's traceparent in its URL) and the job span it settles into join its trace."""
    fake.drop_rate = 1.0
    client: LipsyncClient = await make_client(webhook=WebhookReceiver(secret=SECRET), **otel.kwargs)
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=IMAGE, audio=AUDIO)
    job = await info.value.resolve(timeout=5)
    assert job is not None
    await job.wait(5)

    submit = otel.one("POST /lipsync-image")
    assert submit.attributes is not None
    assert submit.attributes["lipsync.submit.outcome"] == "uncertain"
    assert submit.attributes["error.type"] == "SubmissionUncertainError"
    delivery = otel.one("process /webhooks/lipsync")
    span = otel.one("lipsync.job")
    assert span.attributes is not None and span.attributes["lipsync.job.id"] == job.id
    assert _same_trace(submit, delivery, span)
    assert otel.total("lipsync.submits", lipsync__submit__outcome="uncertain") == 1
    _no_secrets(otel, fake.api_key, SECRET)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_job_resolved_on_another_worker_joins_the_submit_trace(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel, redis_url: str
) -> None:
    """Two workers on a real redis-server, each one's deliveries landing on the other: the
    delivery span on worker B and the job span on worker A are in the trace of A's submit, and
    the pending record in Redis carries that trace."""
    fake.job_duration = 3600  # finished by the test, once the record is checked
    prefix = "otel" + secrets.token_hex(4)
    port_a, port_b = free_port(), free_port()
    store_a, store_b = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    receiver_a = WebhookReceiver(
        f"http://127.0.0.1:{port_b}", port=port_a, secret=SECRET, check_reachable=False
    )
    receiver_b = WebhookReceiver(port=port_b, secret=SECRET)
    otel_b = Otel()
    try:
        client_a = await make_client(store=store_a, webhook=receiver_a, **otel.kwargs)
        await make_client(store=store_b, webhook=receiver_b, **otel_b.kwargs)
        job = await client_a.lipsync_image(image=IMAGE, audio=AUDIO)
        [(record, _)] = await store_a.pending()
        fake.complete_job(job.id)
        await job.wait(5)

        submit = otel.one("POST /lipsync-image")
        assert submit.context is not None
        assert record.trace is not None and f"{submit.context.span_id:016x}" in record.trace
        # B's span ends once its handler answers, which can be after A heard the outcome.
        await until(lambda: otel_b.named("process /webhooks/lipsync"), what="B's span")
        delivery = otel_b.one("process /webhooks/lipsync")  # on worker B
        assert delivery.attributes is not None
        assert delivery.attributes["lipsync.delivery.result"] == "routed"
        assert not otel.named("process /webhooks/lipsync")
        span = otel.one("lipsync.job")  # on worker A
        assert span.attributes is not None
        assert span.attributes["lipsync.job.resolved_by"] == "another_worker"
        assert _same_trace(submit, delivery, span)
        assert otel_b.total("lipsync.deliveries", lipsync__delivery__result="routed") == 1
        assert otel.total("lipsync.job.duration", lipsync__job__resolved_by="another_worker") == 1
        _no_secrets(otel, fake.api_key, SECRET)
        _no_secrets(otel_b, fake.api_key, SECRET)
    finally:
        otel_b.tracer_provider.shutdown()
        otel_b.meter_provider.shutdown()


async def test_refused_deliveries_and_submits_are_counted_without_secrets(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """A submit the service refuses (402) is ``refused``; a POST with a wrong secret is a
    ``refused`` delivery (counted, no span); a duplicate delivery is ``duplicate``."""
    receiver = WebhookReceiver(secret=SECRET)
    client: LipsyncClient = await make_client(webhook=receiver, **otel.kwargs)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await job.wait(5)
    base = receiver.url.removesuffix(SECRET)
    body = json.dumps(state.to_wire())
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url, data=body) as resp:  # the same delivery again
            assert resp.status == 200
        async with session.post(base + "wrong-secret-0123456789", data=body) as resp:
            assert resp.status == 404
    fake.set_credits(fake.api_key, 0)
    with pytest.raises(Exception, match=r"402|credit"):
        await client.lipsync_image(image=IMAGE, audio=AUDIO)

    assert otel.total("lipsync.deliveries", lipsync__delivery__result="duplicate") == 1
    assert otel.total("lipsync.deliveries", lipsync__delivery__result="refused") == 1
    assert otel.total("lipsync.submits", lipsync__submit__outcome="refused") == 1
    refused = [
        s
        for s in otel.named("POST /lipsync-image")
        if s.attributes and s.attributes["lipsync.submit.outcome"] == "refused"
    ]
    assert refused and refused[0].attributes is not None
    assert refused[0].attributes["http.response.status_code"] == 402
    _no_secrets(otel, fake.api_key, SECRET)


async def test_without_a_provider_nothing_is_instrumented(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """No provider given and none configured globally: the no-op telemetry (a predicate per
    hook), no traceparent in the store or in the webhook URL."""
    store = MemoryStore()
    client: LipsyncClient = await make_client(store=store, webhook=WebhookReceiver())
    assert client._tracker.tel is NOOP and client._transport.tel is NOOP
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    [(record, _)] = await store.pending()
    assert record.trace is None
    await job.wait(5)
    assert all("tp=" not in d.url for d in fake.deliveries)


async def test_429s_and_the_pauses_they_set_are_counted(
    fake: FakeLipsyncServer,
    make_client: ClientFactory,
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three 429s (``Retry-After: 1``) on concurrent submits: ``lipsync.http.rate_limited``
    counts every 429, ``lipsync.http.pauses`` each client-wide pause begun (one WARNING each,
    however many 429s extend it) and ``lipsync.http.pause.duration`` their seconds; the submit
    spans, retries included, end ``accepted``."""
    fake.throttle_next = 3
    fake.throttle_retry_after = 1
    client: LipsyncClient = await make_client(max_retries=5, **otel.kwargs)
    with caplog.at_level(logging.WARNING, logger="lipsync_async"):
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3))
        )
        await asyncio.gather(*(job.wait(5) for job in jobs))
    pauses = [r for r in caplog.records if r.getMessage().startswith("rate limited: pausing")]

    assert fake.requests["429"] == 3
    assert otel.total("lipsync.http.rate_limited") == 3 == client.stats["rate_limited"]
    assert 1 <= len(pauses) <= 3
    assert otel.total("lipsync.http.pauses") == len(pauses)
    assert otel.total("lipsync.http.pause.duration") == 1.0 * len(pauses)
    submits = otel.named("POST /lipsync-image")
    assert len(submits) == 3
    for span in submits:
        assert span.attributes is not None
        assert span.attributes["lipsync.submit.outcome"] == "accepted"
        assert span.attributes["http.response.status_code"] == 200
    assert otel.total("lipsync.submits", lipsync__submit__outcome="accepted") == 3
    _no_secrets(otel, fake.api_key)


async def test_the_asgi_receiver_joins_a_delivery_to_its_submit_trace(
    fake: FakeLipsyncServer, otel: Otel
) -> None:
    """Under uvicorn, the ``tp=`` of a delivery's URL reaches the ASGI receiver: the submit's
    answer is dropped, so nothing here knows the job's trace when its delivery comes, and the
    delivery span is still a child of the submit span; the job it settles into ends in the
    same trace."""
    fake.drop_rate = 1.0
    sock = bound_socket()
    receiver = WebhookReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}", secret=SECRET)
    app = mounted(receiver.path, receiver.asgi())
    async with (
        serve(app, sock),
        LipsyncClient(
            fake.api_key,
            base_url=fake.base_url,
            webhook=receiver,
            poll_interval=0.05,
            **otel.kwargs,
        ) as client,
    ):
        with pytest.raises(SubmissionUncertainError) as info:
            await client.lipsync_image(image=IMAGE, audio=AUDIO)
        job = await info.value.resolve(timeout=5)
        assert job is not None
        await job.wait(5)
        assert client.stats["status_reads"] == 0

    assert [d.status for d in fake.deliveries] == [200]
    assert "&tp=00-" in fake.deliveries[0].url
    submit = otel.one("POST /lipsync-image")
    delivery = otel.one("process /webhooks/lipsync")
    assert submit.context is not None and delivery.parent is not None
    assert delivery.parent.span_id == submit.context.span_id
    assert delivery.parent.is_remote  # from the URL, not from a job tracked here
    span = otel.one("lipsync.job")
    assert span.attributes is not None and span.attributes["lipsync.job.id"] == job.id
    assert _same_trace(submit, delivery, span)
    _no_secrets(otel, fake.api_key, SECRET)


async def test_a_verified_delivery_resolves_its_job_through_a_read_in_its_trace(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """``verify=True``: the delivery resolves its job with the state a verification read
    got; that read's span is a child of the submit (in the delivery's trace), the delivery is
    ``accepted`` and the job span says ``delivery`` (what made the job end; the read is how
    its state was checked)."""
    receiver = WebhookReceiver(secret=SECRET, verify=True)
    client: LipsyncClient = await make_client(webhook=receiver, webhook_grace=30, **otel.kwargs)
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    await job.wait(5)

    assert receiver.verify_reads == 1
    submit = otel.one("POST /lipsync-image")
    read = otel.one("GET /jobs/{id}")
    assert submit.context is not None and read.parent is not None
    assert read.parent.span_id == submit.context.span_id
    delivery = otel.one("process /webhooks/lipsync")
    assert delivery.attributes is not None
    assert delivery.attributes["lipsync.delivery.result"] == "accepted"
    span = otel.one("lipsync.job")
    assert span.attributes is not None
    assert span.attributes["lipsync.job.resolved_by"] == "delivery"
    assert _same_trace(submit, read, delivery, span)
    assert otel.total("lipsync.status_reads", lipsync__read__outcome="ok") == 1
    assert otel.total("lipsync.job.duration", lipsync__job__resolved_by="delivery") == 1
    _no_secrets(otel, fake.api_key, SECRET)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_verified_state_from_another_worker_is_labelled_another_worker(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel, redis_url: str
) -> None:
    """Worker A has ``verify=True``; its job's delivery lands on worker B, which records it in
    Redis. A hears it through the store, reads the job from the API before believing it, and
    resolves it: ``resolved_by`` is ``another_worker`` (how the outcome came), not
    ``delivery`` (no delivery reached A), on the job span and on every metric."""
    fake.job_duration = 3600  # finished by the test
    prefix = "otelv" + secrets.token_hex(4)
    port_a, port_b = free_port(), free_port()
    receiver_a = WebhookReceiver(
        f"http://127.0.0.1:{port_b}", port=port_a, secret=SECRET, check_reachable=False, verify=True
    )
    receiver_b = WebhookReceiver(port=port_b, secret=SECRET)
    client_a = await make_client(
        store=RedisStore(redis_url, prefix=prefix),
        webhook=receiver_a,
        webhook_grace=30,  # no fallback poll within the test: the store is how it resolves
        **otel.kwargs,
    )
    await make_client(store=RedisStore(redis_url, prefix=prefix), webhook=receiver_b)
    job = await client_a.lipsync_image(image=IMAGE, audio=AUDIO)
    fake.complete_job(job.id)
    await job.wait(5)
    await asyncio.sleep(0.01)  # the wake histogram is recorded a loop turn after the wake

    assert receiver_a.verify_reads == 1 and receiver_a.received == 0
    submit = otel.one("POST /lipsync-image")
    read = otel.one("GET /jobs/{id}")  # A's verification read
    assert not otel.named("process /webhooks/lipsync")
    span = otel.one("lipsync.job")
    assert span.attributes is not None
    assert span.attributes["lipsync.job.resolved_by"] == "another_worker"
    assert _same_trace(submit, read, span)
    by = "lipsync.job.resolved_by"
    for name in ("lipsync.jobs.resolved", "lipsync.job.duration", "lipsync.delivery.wake"):
        assert [a.get(by) for a, _ in otel.metrics()[name]] == ["another_worker"], name
    _no_secrets(otel, fake.api_key, SECRET)


async def test_the_submit_span_is_not_current_in_what_the_tracker_schedules(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """The submit span is current for the submit (its HTTP request), not for the timers and
    reader tasks the tracker makes while tracking the job: the status reads' and the
    resolution's measurements carry no exemplar of a submit span (they did: every read ran
    in the context of whichever submit had made its bucket's timer)."""
    client: LipsyncClient = await make_client(**otel.kwargs)
    jobs = await asyncio.gather(*(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(5)))
    await asyncio.gather(*(job.wait(5) for job in jobs))

    submits = {s.context.span_id for s in otel.named("POST /lipsync-image") if s.context}
    assert len(submits) == 5
    data = otel.reader.get_metrics_data()
    assert data is not None
    exemplified = {
        (metric.name, exemplar.span_id)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        for exemplar in getattr(point, "exemplars", None) or ()
        if exemplar.span_id in submits
    }
    assert not exemplified
    assert otel.total("lipsync.status_reads") >= 5


async def test_the_applications_span_is_not_current_in_what_the_tracker_schedules(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """Jobs submitted inside an application span: the tracker's timers and reader tasks do
    not run in that span's context (nor in any context of the application's), so what they
    measure or trace (the reads, the resolutions, an aiohttp instrumentation's spans) is not
    attributed to whatever the application was doing when the job's bucket was made."""
    client: LipsyncClient = await make_client(**otel.kwargs)
    tracer = otel.tracer_provider.get_tracer("the-application")
    with tracer.start_as_current_span("handle a request") as app:
        jobs = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(5))
        )
    await asyncio.gather(*(job.wait(5) for job in jobs))
    app_span = app.get_span_context().span_id
    data = otel.reader.get_metrics_data()
    assert data is not None
    exemplified = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        for exemplar in getattr(point, "exemplars", None) or ()
        if exemplar.span_id == app_span
    }
    assert otel.total("lipsync.status_reads") >= 5
    tracked = {"lipsync.status_reads", "lipsync.jobs.resolved", "lipsync.job.duration"}
    assert not exemplified & tracked


async def test_submit_many_inside_an_application_span_leaves_reads_to_the_tracker(
    fake: FakeLipsyncServer, make_client: ClientFactory, otel: Otel
) -> None:
    """With telemetry on, ``submit_many``'s senders do not read the jobs that come due
    between their submits (without telemetry they do): a sender runs in the context of the
    task that iterates, so its reads would be measured inside the application's span. The
    reads stay with the tracker's reader tasks, in contexts of their own."""
    fake.job_duration = 0.0
    client: LipsyncClient = await make_client(poll_interval=0.01, **otel.kwargs)
    tracer = otel.tracer_provider.get_tracer("the-application")
    with tracer.start_as_current_span("a batch") as app:
        requests = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(150))
        jobs = [j async for j in client.submit_many(requests, concurrency=1)]
    await asyncio.gather(*(job.wait(5) for job in jobs))  # type: ignore[union-attr]
    app_span = app.get_span_context().span_id
    data = otel.reader.get_metrics_data()
    assert data is not None
    exemplars = [
        exemplar.span_id
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "lipsync.status_reads"
        for point in metric.data.data_points
        for exemplar in getattr(point, "exemplars", None) or ()
    ]
    assert otel.total("lipsync.status_reads") >= 150
    assert app_span not in exemplars


async def test_the_pending_gauge_counts_every_client_of_a_meter_provider(
    fake: FakeLipsyncServer, otel: Otel
) -> None:
    """One meter provider, a client closed and then two open at once: the pending-jobs gauge
    reads what the open clients track (it once counted only the first client ever opened on
    the provider, whose gauge callback the SDK kept)."""
    fake.job_duration = 3600

    def pending() -> float:
        return float(sum(value for _, value in otel.metrics().get("lipsync.jobs.pending", [])))

    kwargs = {"base_url": fake.base_url, "poll_interval": 60.0, **otel.kwargs}
    async with LipsyncClient(fake.api_key, **kwargs) as first:
        await first.lipsync_image(image=IMAGE, audio=AUDIO)
        assert pending() == 1
    async with (
        LipsyncClient(fake.api_key, **kwargs) as second,
        LipsyncClient(fake.api_key, **kwargs) as third,
    ):
        await asyncio.gather(*(second.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(3)))
        await asyncio.gather(*(third.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(2)))
        assert pending() == 5
