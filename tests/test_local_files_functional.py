"""Local files as inputs, served by the webhook receiver, over real sockets.

The emulator never fetches media, so each test plays the service's fetcher itself: it reads the
URLs the emulator was given (``fake.jobs[id].form_state``) with a real aiohttp client.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from yarl import URL

from lipsync_async import (
    AuthenticationError,
    LipsyncImageRequest,
    LipsyncVideoRequest,
    SubmissionUncertainError,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async._files import safe_name
from lipsync_async._wire import dump_request, form_state
from lipsync_async.testing import FakeLipsyncServer

from .conftest import AUDIO, IMAGE, VIDEO, ClientFactory

pytestmark = pytest.mark.timeout(15)


@pytest.fixture
def media(tmp_path: Path) -> dict[str, tuple[Path, bytes]]:
    """A few small files with distinct random bytes, by role."""
    out = {}
    for role, name, size in (
        ("image", "face.png", 70_001),
        ("audio", "voice one.mp3", 150_003),
        ("video", "clip.mp4", 90_000),
        ("mask", "mask.png", 1_000),
    ):
        data = os.urandom(size)
        path = tmp_path / name
        path.write_bytes(data)
        out[role] = (path, data)
    return out


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client: the service's media fetcher."""
    async with aiohttp.ClientSession() as session:
        yield session


async def _get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def _raw_status(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalisation); return status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_local_files_reach_the_service_as_served_urls(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """Path inputs are sent as URLs under the receiver that return the files' exact bytes."""
    receiver = WebhookReceiver()
    client = await make_client(webhook=receiver)
    (image, image_data), (audio, audio_data) = media["image"], media["audio"]
    job = await client.lipsync_image(image=image, audio=audio)
    form = fake.jobs[job.id].form_state
    secret = receiver.url.rsplit("/", 1)[1]  # the URL's last segment
    base = receiver.url.removesuffix(secret) + "files/"
    for field, data, ctype in (
        ("image", image_data, "image/png"),
        ("audio", audio_data, "audio/mpeg"),
    ):
        url = form[field]
        assert url.startswith(base) and str(image.parent) not in url
        assert secret not in url  # an input URL leaking forges no deliveries
        status, body, headers = await _get(http, url)
        assert status == 200 and body == data
        assert headers["Content-Type"] == ctype
        assert headers["Cache-Control"] == "no-store"
    assert form["image"].endswith("/face.png") and form["audio"].endswith("/voice_one.mp3")
    await job.wait(5)


@pytest.mark.parametrize("endpoint", ["video", "image_multi"])
async def test_every_media_field_takes_a_path(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
    endpoint: str,
) -> None:
    """video, mask_image, left_audio, right_audio take paths too, each with its own token."""
    client = await make_client(webhook=WebhookReceiver())
    if endpoint == "video":
        job = await client.lipsync_video(
            video=media["video"][0], audio=AUDIO, mask_image=media["mask"][0]
        )
        expect = {"video": media["video"][1], "mask_image": media["mask"][1]}
    else:
        job = await client.lipsync_image_multi(
            image=IMAGE, left_audio=media["audio"][0], right_audio=media["audio"][0]
        )
        expect = {"left_audio": media["audio"][1], "right_audio": media["audio"][1]}
    form = fake.jobs[job.id].form_state
    assert form["audio" if endpoint == "video" else "image"] in (AUDIO, IMAGE)
    for field, data in expect.items():
        status, body, _ = await _get(http, form[field])
        assert status == 200 and body == data, field
    if endpoint == "image_multi":  # the same file twice still gets two unguessable URLs
        assert form["left_audio"] != form["right_audio"]


async def test_ranges_and_head(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """Range requests get 206 with Content-Range and the exact slice; HEAD gets headers only."""
    client = await make_client(webhook=WebhookReceiver())
    path, data = media["video"]
    job = await client.lipsync_video(video=path, audio=AUDIO)
    url = fake.jobs[job.id].form_state["video"]
    size = len(data)

    status, body, headers = await _get(http, url, Range="bytes=100-4195")
    assert status == 206 and body == data[100:4196]
    assert headers["Content-Range"] == f"bytes 100-4195/{size}"
    status, body, headers = await _get(http, url, Range="bytes=-10")
    assert status == 206 and body == data[-10:]
    status, body, headers = await _get(http, url, Range=f"bytes={size - 5}-")
    assert status == 206 and body == data[-5:]
    status, _, _ = await _get(http, url, Range=f"bytes={size + 10}-")
    assert status == 416

    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        assert resp.headers["Content-Type"] == "video/mp4"
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert await resp.read() == b""
    async with http.post(url, data=b"x") as resp:
        assert resp.status == 405  # GET and HEAD only


async def test_unregistered_and_traversal_urls_404(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """Only registered tokens with their own name are served; traversal attempts are 404s."""
    receiver = WebhookReceiver()
    client = await make_client(webhook=receiver)
    job = await client.lipsync_image(image=media["image"][0], audio=AUDIO)
    url = URL(fake.jobs[job.id].form_state["image"])
    token = url.parts[-2]
    files = url.path.rsplit("/", 2)[0]  # /webhooks/lipsync/files

    status, _, _ = await _get(http, str(url.with_path(f"{files}/{'A' * 43}/face.png")))
    assert status == 404  # a token never registered
    status, _, _ = await _get(http, str(url.with_path(f"{files}/{token}/other.png")))
    assert status == 404  # the right token, another name

    port = receiver.port
    assert port is not None
    secret_file = media["image"][0].parent / "secret.txt"
    secret_file.write_text("root:x:0:0")
    here = str(media["image"][0].parent).lstrip("/")
    for target in (
        f"{files}/../../../../../etc/passwd",
        f"{files}/{token}/../../../../../../{here}/secret.txt",
        f"{files}/%2e%2e/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"{files}/{token}/%2e%2e%2f%2e%2e%2f{here}%2fsecret.txt",
        f"{files}/{token}/..%2fsecret.txt",
        f"{files}/{token}/%2F{here}%2Fsecret.txt",
        f"{files}//{here}/secret.txt",
        f"{files}/%2F{here}%2Fsecret.txt/secret.txt",
        f"/{here}/secret.txt",
        f"http://127.0.0.1:{port}/{here}/secret.txt",
        f"{files}/..%5c..%5c{here}%5csecret.txt/x",
    ):
        status, body = await _raw_status(port, target)
        assert status == 404, target
        assert b"root:" not in body, target
    await job.wait(5)


async def test_files_expire_after_the_job_ends_plus_grace(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """A file is served while its job runs and for file_grace after it ends, then 404s."""
    receiver = WebhookReceiver(file_grace=0.3)
    client = await make_client(webhook=receiver)
    fake.job_duration = 0.2
    job = await client.lipsync_image(image=media["image"][0], audio=media["audio"][0])
    url = fake.jobs[job.id].form_state["image"]
    assert (await _get(http, url))[0] == 200  # running
    assert receiver.stats["served_files"] == 2  # the image and the audio
    await job.wait(5)
    assert (await _get(http, url))[0] == 200  # ended, within the grace
    await asyncio.sleep(0.5)
    assert (await _get(http, url))[0] == 404
    assert receiver.stats["served_files"] == 0


async def test_cancelled_job_and_grace_zero_expire_at_once(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """Expiry follows every way a job ends, cancel() included; file_grace=0 means at once."""
    receiver = WebhookReceiver(file_grace=0)
    client = await make_client(webhook=receiver)
    fake.job_duration = 30
    job = await client.lipsync_image(image=media["image"][0], audio=AUDIO)
    url = fake.jobs[job.id].form_state["image"]
    assert (await _get(http, url))[0] == 200
    job.cancel()
    assert (await _get(http, url))[0] == 404


async def test_refused_submit_unregisters_its_files(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """A submit the service refused (no job) leaves no file registered."""
    receiver = WebhookReceiver()
    client = await make_client(webhook=receiver, api_key="sk_wrong_key")
    with pytest.raises(AuthenticationError):
        await client.lipsync_image(image=media["image"][0], audio=media["audio"][0])
    assert fake.requests["POST /lipsync-image"] == 1
    assert receiver.stats["served_files"] == 0


async def test_uncertain_submit_keeps_its_files_for_the_grace(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """A submit that may have created a job keeps its files served for the grace; .request
    carries the served URLs."""
    receiver = WebhookReceiver(file_grace=0.3)
    client = await make_client(webhook=receiver)
    fake.server_error_rate = 1.0
    fake.server_error_status = 500  # may have created the job (a 503 surely did not)
    with pytest.raises(SubmissionUncertainError) as info:
        await client.lipsync_image(image=media["image"][0], audio=AUDIO)
    request = info.value.request
    assert isinstance(request, LipsyncImageRequest) and isinstance(request.image, str)
    assert (await _get(http, request.image))[1] == media["image"][1]
    await asyncio.sleep(0.5)
    assert (await _get(http, request.image))[0] == 404


async def test_path_without_receiver_is_refused_before_any_request(
    make_client: ClientFactory, fake: FakeLipsyncServer, media: dict[str, tuple[Path, bytes]]
) -> None:
    """Without a receiver a Path is a ValidationError naming the field; nothing is sent."""
    client = await make_client()
    with pytest.raises(ValidationError, match="receiver") as info:
        await client.lipsync_image(image=IMAGE, audio=media["audio"][0])
    assert info.value.field == "audio"
    with pytest.raises(ValidationError, match="receiver"):
        await client.submit(LipsyncVideoRequest(video=media["video"][0], audio=AUDIO))
    assert sum(fake.requests.values()) == 0


async def test_missing_or_vanished_file_names_the_field(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    media: dict[str, tuple[Path, bytes]],
    tmp_path: Path,
) -> None:
    """A missing file or a directory fails at construction; one deleted before the submit
    fails at submit; both name the field, send nothing and leave nothing registered."""
    with pytest.raises(ValidationError, match="no such file") as info:
        LipsyncImageRequest(image=IMAGE, audio=tmp_path / "nope.mp3")
    assert info.value.field == "audio"
    with pytest.raises(ValidationError, match="not a regular file") as info:
        LipsyncVideoRequest(video=VIDEO, audio=AUDIO, mask_image=tmp_path)
    assert info.value.field == "mask_image"

    receiver = WebhookReceiver()
    client = await make_client(webhook=receiver)
    with pytest.raises(ValidationError) as info:
        await client.lipsync_video(video=tmp_path / "gone.mp4", audio=AUDIO)
    assert info.value.field == "video"
    doomed = tmp_path / "doomed.mp3"
    doomed.write_bytes(b"x")
    request = LipsyncImageRequest(image=media["image"][0], audio=doomed)
    doomed.unlink()
    with pytest.raises(ValidationError, match="no such file") as info:
        await client.submit(request)
    assert info.value.field == "audio"
    assert sum(fake.requests.values()) == 0
    assert receiver.stats["served_files"] == 0  # the image registered first is gone too


async def test_large_sparse_file_streams_without_loading_it(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A 200 MB file is served by range and in full from disk; the process never holds it."""
    size = 200 * 1024 * 1024
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
    client = await make_client(webhook=WebhookReceiver())
    job = await client.lipsync_video(video=big, audio=AUDIO)
    url = fake.jobs[job.id].form_state["video"]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    status, body, headers = await _get(http, url, Range=f"bytes={size - 1000}-")
    assert status == 206 and body == bytes(996) + b"tail"
    assert headers["Content-Range"] == f"bytes {size - 1000}-{size - 1}/{size}"
    received = 0
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.content_length == size
        async for chunk in resp.content.iter_chunked(1 << 20):
            received += len(chunk)
    assert received == size

    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 64 * 1024, f"peak memory grew {grown_kib} KiB serving a 200 MB file"


async def test_attach_mounts_the_file_route(
    fake: FakeLipsyncServer,
    make_client: ClientFactory,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """A receiver mounted on the user's own application serves local files there too."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}", path="/hooks")
    app = web.Application()
    receiver.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        client = await make_client(webhook=receiver)
        job = await client.lipsync_image(image=media["image"][0], audio=AUDIO)
        url = fake.jobs[job.id].form_state["image"]
        assert url.startswith(f"http://127.0.0.1:{port}/hooks/files/")
        status, body, _ = await _get(http, url)
        assert status == 200 and body == media["image"][1]
        await job.wait(5)
    finally:
        await runner.cleanup()


@given(st.text(max_size=300))
def test_served_names_are_always_one_safe_segment(name: str) -> None:
    """Whatever the file is called, its URL name is [A-Za-z0-9._-], at most 100 characters,
    never empty and never starting with a dot."""
    out = safe_name(Path("/x") / name.replace("/", "_").replace("\0", "_"))
    assert out and len(out) <= 100 and not out.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in out)


async def test_compressed_sibling_is_never_served_instead(
    make_client: ClientFactory,
    fake: FakeLipsyncServer,
    http: aiohttp.ClientSession,
    media: dict[str, tuple[Path, bytes]],
) -> None:
    """A fetcher accepting gzip still gets the registered file, not a ``.gz`` beside it."""
    path, data = media["image"]
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(b"stale copy"))
    client = await make_client(webhook=WebhookReceiver())
    job = await client.lipsync_image(image=path, audio=AUDIO)
    url = fake.jobs[job.id].form_state["image"]
    status, body, headers = await _get(http, url, **{"Accept-Encoding": "gzip, br"})
    assert status == 200 and body == data and "Content-Encoding" not in headers


def test_wire_body_never_carries_a_path(media: dict[str, tuple[Path, bytes]]) -> None:
    """dump_request refuses a request still holding a path (the client swaps in URLs first);
    form_state keeps it, so a dry run can show what would be served."""
    request = LipsyncImageRequest(image=media["image"][0], audio=AUDIO)
    with pytest.raises(ValidationError, match="local file") as info:
        dump_request(request, "https://hooks.example.com/x")
    assert info.value.field == "image"
    assert form_state(request)["image"] == str(media["image"][0])
