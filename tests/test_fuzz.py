"""Fuzzing the trust boundaries with hypothesis: what comes in from the network or the caller.

Extends the property tests of test_wire.py (objects with the state's own keys) and the receiver
fuzz of test_webhook_functional.py (bodies to a standalone receiver): here the converter gets
arbitrary bytes and JSON of any shape and depth, the receiver gets arbitrary methods, paths,
headers and bodies over a real socket while bound to a client with jobs to resolve wrongly, and
request models and the client constructor get arbitrary values. The promise each test pins:
nothing escapes the SDK's error tree, the receiver never answers 5xx, and a job only ever
resolves to exactly what an authenticated, well-formed delivery said.

The regression tests at the end pin the defects these fuzzers and the trust-boundary review
found (deep JSON, redirects, the early-delivery buffer's bytes, download names).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import tracemalloc
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from lipsync_async import (
    APIError,
    JobStatus,
    LipsyncClient,
    LipsyncError,
    LipsyncImageMultiRequest,
    LipsyncImageRequest,
    LipsyncVideoRequest,
    SubmissionUncertainError,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async._download import _file_name
from lipsync_async._http import error_for_status
from lipsync_async._wire import dump_request, loads_object, parse_job_state, parse_submit_answer
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from .conftest import AUDIO, IMAGE, ClientFactory

T = TypeVar("T")

# -- strategies ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=20,
)
state_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=40), json_values),
        "status": st.one_of(
            st.sampled_from(["processing", "completed", "failed", "queued", ""]), json_values
        ),
        "model": json_values,
        "output": json_values,
        "error": json_values,
        "executionTime": st.one_of(
            st.integers(), st.floats(), st.sampled_from([math.inf, -math.inf]), json_values
        ),
        "timings": json_values,
    },
)


def _deep(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


raw_answers = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    state_like.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=500, max_value=50_000).map(_deep),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1" * 5000, b"\xef\xbb\xbf{}", b"{}"]),
)

# -- the wire converter against arbitrary input ------------------------------------------------


@given(raw=raw_answers, status=st.integers(min_value=100, max_value=599))
def test_fuzz_answers_parse_or_api_error(raw: bytes, status: int) -> None:
    """Any bytes as a submit answer, a job state or an error page: a result or an APIError
    (with the status it came with), never KeyError, JSONDecodeError, RecursionError..."""
    for parse in (
        lambda: parse_submit_answer(raw, status),
        lambda: parse_job_state(loads_object(raw, status), status=status, raw=raw),
    ):
        try:
            out = parse()
        except APIError as exc:
            assert exc.status == status
            assert len(exc.body) <= 200
        else:
            assert isinstance(out, str) or out.id
    error = error_for_status(status, raw)
    assert isinstance(error, APIError) and error.status == status
    assert len(str(error)) < 1_000


@given(data=st.one_of(state_like, json_values))
def test_fuzz_any_json_value_as_state(data: Any) -> None:
    """Any JSON value (not only objects) as a job state: a JobState true to the input's id and
    status, or an APIError; unknown statuses stay pending."""
    try:
        state = parse_job_state(data)
    except APIError:
        return
    assert isinstance(data, dict)
    assert state.id == data["id"] and state.status == data["status"]
    assert state.is_final == (data["status"] in ("completed", "failed"))
    assert state.execution_time_ms is None or isinstance(state.execution_time_ms, int)


# -- the receiver over a real socket -----------------------------------------------------------

_METHODS = ["POST", "POST", "POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
_header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda h: (
        h.lower()
        not in {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}
    )
)
_header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


def _run_in_one_loop(
    setup: Callable[[], Coroutine[Any, Any, T]],
    teardown: Callable[[T], Coroutine[Any, Any, None]],
    body: Callable[[asyncio.AbstractEventLoop, T], None],
) -> None:
    """One event loop (and so one started receiver) for every example of a hypothesis test."""
    loop = asyncio.new_event_loop()
    try:
        ctx = loop.run_until_complete(setup())
        try:
            body(loop, ctx)
        finally:
            loop.run_until_complete(teardown(ctx))
    finally:
        loop.close()


def _acceptable_id(value: object) -> bool:
    """A job id the SDK takes where ids enter: non-blank text, at most 256 characters, that
    UTF-8 can carry (a JSON escape can make a lone surrogate)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _expected_status(body: bytes, max_body: int) -> int:
    """What an authenticated POST with ``body`` must get, decided without the SDK's parser."""
    if len(body) > max_body:
        return 413
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return 400
    if not isinstance(data, dict):
        return 400
    ok_id = _acceptable_id(data.get("id"))
    ok_status = isinstance(data.get("status"), str) and data["status"] != ""
    return 200 if ok_id and ok_status else 400


@pytest.mark.timeout(120)
def test_fuzz_receiver_bound_to_a_client() -> None:
    """Arbitrary methods, paths, headers and bodies against one running receiver bound to a
    client: never a 5xx; a job resolves only from an authenticated POST of a well-formed body
    naming it, and then to exactly that body's state; anything else changes nothing."""

    async def setup() -> tuple[LipsyncClient, WebhookReceiver, aiohttp.ClientSession]:
        receiver = WebhookReceiver(max_body=4096)
        client = LipsyncClient(
            "sk_fuzz", base_url="http://127.0.0.1:9/api/v1", webhook=receiver, webhook_grace=600
        )
        await client.__aenter__()
        return client, receiver, aiohttp.ClientSession()

    async def teardown(ctx: tuple[LipsyncClient, WebhookReceiver, aiohttp.ClientSession]) -> None:
        await ctx[2].close()
        await ctx[0].close()

    def body(
        loop: asyncio.AbstractEventLoop,
        ctx: tuple[LipsyncClient, WebhookReceiver, aiohttp.ClientSession],
    ) -> None:
        client, receiver, session = ctx
        secret = receiver.url.rsplit("/", 1)[1]
        base = receiver.url.rsplit("/", 1)[0]

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            method=st.sampled_from(_METHODS),
            where=st.sampled_from(["secret", "secret", "secret", "other", "files", "extra"]),
            junk=st.text(max_size=20),
            headers=st.dictionaries(_header_names, _header_values, max_size=4),
            payload=st.one_of(
                state_like,
                st.builds(
                    lambda s, st_: {**s, "status": st_},
                    state_like,
                    st.sampled_from(["completed", "failed", "processing", "weird"]),
                ),
            ),
            own_id=st.booleans(),
            raw=st.one_of(st.none(), st.binary(max_size=100), st.just(b"x" * 5000)),
        )
        def check(
            method: str,
            where: str,
            junk: str,
            headers: dict[str, str],
            payload: dict[str, Any],
            own_id: bool,
            raw: bytes | None,
        ) -> None:
            loop.run_until_complete(
                asyncio.wait_for(one(method, where, junk, headers, payload, own_id, raw), 10)
            )

        async def one(
            method: str,
            where: str,
            junk: str,
            headers: dict[str, str],
            payload: dict[str, Any],
            own_id: bool,
            raw: bytes | None,
        ) -> None:
            job = client.job(f"job-{uuid.uuid4()}")
            if own_id:
                payload = {**payload, "id": job.id}
            data = raw if raw is not None else json.dumps(payload).encode()
            quoted = URL.build(path="/" + junk).raw_path.lstrip("/")
            url = {
                "secret": receiver.url,
                "other": f"{base}/{quoted}",
                "files": f"{base}/files/{quoted}/x.mp4",
                "extra": f"{base}/{secret}/{quoted}",
            }[where]
            async with session.request(
                method, URL(url, encoded=True), data=data, headers=headers
            ) as resp:
                await resp.read()
                status = resp.status
            assert status < 500, (status, method, url, headers, data[:100])
            accepted = where == "secret" and method == "POST"
            if not accepted:
                assert status in (404, 405) or (status == 400 and method != "POST"), status
            if accepted and "content-encoding" not in {h.lower() for h in headers}:
                assert status == _expected_status(data, receiver.max_body), (status, data[:100])
            sent = json.loads(data) if status == 200 else None
            if status == 200 and isinstance(sent, dict) and sent.get("id") == job.id:
                assert job.state is not None
                assert (job.state.id, str(job.state.status)) == (job.id, sent["status"])
                assert job.done() == (sent["status"] in ("completed", "failed"))
                if sent["status"] == "failed":
                    assert job.exception() is not None
            else:
                assert not job.done() and job.state is None
            job.cancel()

        check()

    _run_in_one_loop(setup, teardown, body)


# -- request validation against arbitrary values -----------------------------------------------

anything = st.one_of(
    json_values,
    st.floats(),  # NaN, infinities
    st.binary(max_size=10),
    st.tuples(json_scalars),
    st.builds(object),
    st.sampled_from(
        [
            "https://ok.example.com/a.png",
            "http://[::1]:8080/x",
            "ftp://x/y",
            "https://",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "https://a b/",
            "http://%zz/",
            "HTTPS://UPPER.example.com/A",
            Path("/nonexistent/file.png"),
            Path("/"),
            Path("/etc/hostname"),
            "480p",
            "720p",
            "meanwhile",
            True,
            10**400,
            -1,
        ]
    ),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), json_values, max_size=3),
    st.integers(min_value=1, max_value=60).map(lambda d: {"x": json.loads(_deep(d))}),
)
_FIELDS = {
    LipsyncVideoRequest: ["video", "audio", "mask_image"],
    LipsyncImageRequest: ["image", "audio", "mask_image"],
    LipsyncImageMultiRequest: ["image", "left_audio", "right_audio", "order"],
}
_COMMON = ["resolution", "prompt", "seed", "webhook", "extra"]


@settings(max_examples=400)
@given(
    cls=st.sampled_from(list(_FIELDS)),
    values=st.dictionaries(
        st.sampled_from(sorted({f for fs in _FIELDS.values() for f in fs} | set(_COMMON))),
        anything,
        max_size=4,
    ),
)
def test_fuzz_request_validation(cls: type[Any], values: dict[str, Any]) -> None:
    """Arbitrary values in any field of any request: a ValidationError naming a field, or a
    request whose body serialises (or, for a local file, a ValidationError asking for a
    receiver); never TypeError, OverflowError or anything else."""
    fields = set(_FIELDS[cls]) | set(_COMMON)
    kwargs = {k: v for k, v in values.items() if k in fields}
    media = {"video": IMAGE, "audio": AUDIO, "image": IMAGE, "left_audio": AUDIO}
    media["right_audio"] = AUDIO
    for name in _FIELDS[cls]:
        if name in media:
            kwargs.setdefault(name, media[name])
    try:
        request = cls(**kwargs)
    except ValidationError as exc:
        assert exc.field.split(".")[0].split("[")[0] in fields | {"extra"}
        return
    try:
        body = json.loads(dump_request(request))
    except ValidationError as exc:  # a local file: only a client with a receiver serves it
        assert isinstance(getattr(request, exc.field), Path)
        return
    assert set(body) == {"formState"} | ({"webhook"} if request.webhook else set())


_ctor_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.floats(),
    st.text(max_size=20),
    st.builds(object),
)


@settings(max_examples=300)
@given(
    args=st.dictionaries(
        st.sampled_from(
            [
                "base_url",
                "poll_interval",
                "webhook_grace",
                "max_retries",
                "max_in_flight",
                "rate_limit",
                "timeout",
                "connect_timeout",
                "backoff_base",
                "backoff_max",
                "session",
                "webhook",
                "store",
            ]
        ),
        _ctor_values,
        max_size=4,
    ),
    key=st.one_of(st.just("sk_fuzz_key_123"), _ctor_values),
)
def test_fuzz_client_constructor(args: dict[str, Any], key: Any) -> None:
    """Arbitrary constructor arguments: a ValidationError naming the argument, or a client
    whose repr does not show the key; never TypeError or OverflowError (no loop needed)."""
    try:
        client = LipsyncClient(key, **args)
    except ValidationError as exc:
        assert exc.field in set(args) | {"api_key"}
        return
    assert isinstance(key, str)
    if len(key) >= 8:  # a one-character "key" like "0" is in any repr by chance, not by leak
        assert key not in repr(client)
    for name in ("poll_interval", "webhook_grace", "timeout", "rate_limit"):
        value = args.get(name)
        if value is not None:
            assert math.isfinite(float(value))


# -- regressions: defects found by the fuzzers and the review -----------------------------------


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_answers_are_api_errors(depth: int) -> None:
    """Regression: JSON nested past the recursion limit raised RecursionError (outside the error
    tree) from loads_object; error_for_status raised it too instead of building an APIError.
    Python 3.12+ parse 1,000 levels (an APIError all the same); 100,000 are past every limit."""
    past_every_limit = depth > 50_000
    with pytest.raises(APIError, match="not JSON" if past_every_limit else "JSON"):
        loads_object(_deep(depth), 200)
    with pytest.raises(APIError):
        parse_submit_answer(_deep(depth, '{"a":', "}"), 200)
    error = error_for_status(502, _deep(depth))
    assert error.status == 502
    assert "not JSON" in error.message or not past_every_limit


def test_malformed_state_near_the_recursion_limit_is_api_error() -> None:
    """Regression: a malformed state nested deeply enough that repr() recursed raised
    RecursionError while building the APIError's excerpt."""
    nested: Any = []
    for _ in range(5_000):
        nested = [nested]
    with pytest.raises(APIError, match="malformed"):
        parse_job_state({"status": "completed", "timings": nested})


async def test_receiver_answers_400_to_deeply_nested_body(fake: FakeLipsyncServer) -> None:
    """Regression: a delivery nested past the recursion limit got a 503 (and a logged
    traceback) from the handler's last-resort catch, so the sender would retry it; now 400."""
    async with WebhookReceiver(on_delivery=lambda s: None, max_body=300_000) as rx:
        async with aiohttp.ClientSession() as s:
            async with s.post(rx.url, data=_deep(100_000)) as resp:
                assert resp.status == 400


def _redirect_loop(key_seen: list[str]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        key_seen.append(request.headers.get("Authorization", ""))
        if request.path.endswith("offsite"):
            raise web.HTTPFound("ftp://evil.example.com/x")
        raise web.HTTPFound(request.path + "x")

    return handler


async def test_redirect_trouble_stays_in_the_error_tree_without_the_key() -> None:
    """Regression: a redirect loop or a redirect to a non-http URL raised aiohttp's
    TooManyRedirects / NonHttpUrlRedirectClientError out of the SDK (not a LipsyncError), and
    TooManyRedirects' repr shows the request headers: the API key. API calls no longer follow
    redirects (issue 21): each 3xx is an APIError naming where it pointed, sent once, never
    chained to an aiohttp error."""
    key = "sk_redirect_secret_42"
    seen: list[str] = []
    async with RawServer(_redirect_loop(seen)) as srv:
        async with LipsyncClient(key, base_url=srv.base_url, max_retries=3) as client:
            errors: list[LipsyncError] = []
            with pytest.raises(APIError, match="redirected") as read_info:
                await client.get_job("loop")
            errors.append(read_info.value)
            with pytest.raises(APIError, match=r"ftp://evil\.example\.com"):
                await client.get_job("offsite")
            with pytest.raises(APIError, match="redirected") as sub_info:
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
            errors.append(sub_info.value)
    assert len(seen) == 3  # each failing call made once, not retried, not followed
    for error in errors:
        chain = [error, error.__cause__, error.__context__]
        assert all(key not in repr(e) and key not in str(e) for e in chain)
        assert error.__cause__ is None and error.__context__ is None


async def test_key_echoed_in_a_2xx_answer_is_redacted() -> None:
    """Regression: an answer echoing the request headers (a debug endpoint, a proxy) with a 2xx
    put the key into the APIError's excerpt; redaction ran for error statuses only."""
    key = "sk_echo_secret_77"

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"headers": dict(request.headers)})

    async with RawServer(echo) as srv:
        async with LipsyncClient(key, base_url=srv.base_url) as client:
            with pytest.raises(SubmissionUncertainError) as info:  # a 2xx: the job may exist
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
    cause = info.value.__cause__
    assert isinstance(cause, APIError)
    assert "Bearer" in cause.body and key not in str(cause) and key not in str(info.value)


async def test_early_buffer_is_bounded_in_bytes(
    fake: FakeLipsyncServer, make_client: Callable[..., Any]
) -> None:
    """Regression: deliveries for unknown ids were held as parsed JobStates, bounded only by
    count (10,000): anyone with the secret could park 10,000 x 64 KiB bodies whose free-form
    `timings` parse into objects tens of times their size (gigabytes). Now held as compact
    JSON under a byte budget (oldest first out past it: `test_job_lifecycle`'s
    `..._held_early_...` test); a held delivery still resolves its job."""
    client = await make_client(webhook=WebhookReceiver(), webhook_grace=600)
    receiver = client.webhook
    timings: list[dict[str, Any]] = [{}] * 15_000  # 60 KB sent, ~1 MB once parsed
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                state = {"id": f"unknown-{i}", "status": "completed", "timings": timings}
                async with s.post(receiver.url, json=state) as resp:
                    assert resp.status == 200
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = client.stats
    assert stats["held_deliveries"] == 60
    compact = len(json.dumps(timings, separators=(",", ":")))  # 45 KB: what each one holds
    assert 60 * compact <= stats["held_bytes"] <= 60 * (compact + 1_000)
    assert held < stats["held_bytes"] + 1024 * 1024  # 60 parsed copies would be ~80 MB
    late = client.job("unknown-59")  # its submit answer "arrives" now
    state = await late.wait(timeout=1)
    assert state.status is JobStatus.COMPLETED and state.timings == timings


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/../../etc/passwd", "passwd"),
        ("..", "output.mp4"),
        (".", "output.mp4"),
        ("", "output.mp4"),
        ("../../x.mp4", "x.mp4"),
        ("..\\..\\win.mp4", "win.mp4"),
        ("/abs/path.mp4", "path.mp4"),
        ("ok.mp4", "ok.mp4"),
    ],
)
def test_download_name_stays_in_the_directory(name: str, expected: str) -> None:
    """Regression: downloading into a directory named the file after the URL's last segment,
    which yarl decodes (`%2F` -> `/`), or the job id: `a%2F..%2F..%2Fx` wrote outside it."""
    assert _file_name(name) == expected


async def test_download_url_with_encoded_slashes_lands_inside(
    fake: FakeLipsyncServer, make_client: Callable[..., Any], tmp_path: Path
) -> None:
    """End to end: an output URL whose last segment decodes to `../..` writes inside the
    directory given, never beside it."""
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await job
    assert state.output is not None
    inner = tmp_path / "inner" / "dir"
    inner.mkdir(parents=True)

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x00" * 64)

    async with RawServer(serve) as srv:
        url = f"http://127.0.0.1:{srv.port}/x/..%2F..%2Fescaped.mp4"
        path = await client.download(url, inner)
    assert path.parent == inner and path.name == "escaped.mp4"
    assert not (tmp_path / "escaped.mp4").exists()


def test_infinite_or_huge_durations_are_validation_errors() -> None:
    """Regression: poll_interval=inf (or 1e308) passed validation and later raised
    OverflowError from the scheduler after a job was created; a 10**400 timeout raised
    OverflowError from float(). All are ValidationErrors now, before anything runs."""
    for name in ("poll_interval", "webhook_grace", "timeout", "connect_timeout", "rate_limit"):
        for value in (math.inf, 1e308, 10**400):
            kwargs: dict[str, Any] = {name: value}
            with pytest.raises(ValidationError) as info:
                LipsyncClient("sk_x", **kwargs)
            assert info.value.field == name


async def test_emulator_and_receiver_listen_on_loopback_by_default() -> None:
    """The emulator (a server that accepts any request with its printed key) and the receiver
    bind 127.0.0.1 unless told otherwise: nothing is reachable from another machine."""
    async with FakeLipsyncServer() as fake, WebhookReceiver(on_delivery=lambda s: None) as rx:
        assert fake.host == "127.0.0.1" and fake.base_url.startswith("http://127.0.0.1:")
        assert rx.host == "127.0.0.1" and rx.url.startswith("http://127.0.0.1:")
        assert rx._runner is not None
        hosts = {addr[0] for addr in rx._runner.addresses}
        assert hosts == {"127.0.0.1"}


async def test_unencodable_job_ids_are_refused(make_client: ClientFactory) -> None:
    """A job id UTF-8 cannot carry (a lone surrogate) is a ValidationError on attach and read,
    and an APIError in an answer: never a job rescheduled forever on an encoding error."""
    client = await make_client()
    with pytest.raises(ValidationError, match="job_id"):
        client.job("\ud800")
    with pytest.raises(ValidationError, match="job_id"):
        await client.get_job("x" * 300)
    with pytest.raises(APIError, match="not valid text"):
        parse_submit_answer(b'{"id": "\\ud800", "status": "processing"}', 200)
    with pytest.raises(APIError):
        parse_job_state({"id": "\ud800", "status": "completed"})
