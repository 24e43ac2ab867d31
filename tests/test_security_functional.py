"""Issue 21: trust boundaries. One regression test per finding of the security review, each
over real loopback sockets through public names, each failing on the code before the fix.

SECURITY.md's trust table names the party each test plays: the service (or whatever answers
at ``base_url``), the output host, a local user.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest
from aiohttp import web

from lipsync_async import (
    APIError,
    BadRequestError,
    LipsyncClient,
    NotFoundError,
    SubmissionUncertainError,
    ValidationError,
    WebhookReceiver,
)
from lipsync_async._wire import job_path
from lipsync_async.testing import FakeLipsyncServer

from ._rawserver import RawServer
from .conftest import AUDIO, IMAGE, ClientFactory

KEY = "sk_trust_boundary_key_1"

# -- what the SDK sends and follows -----------------------------------------------------------


async def test_api_calls_do_not_follow_redirects() -> None:
    """A cross-origin 307 on a submit is an APIError naming the other origin, and the submit
    body (receiver URL with its secret) never reaches that origin; a 3xx on a status read is
    an APIError too; a 303 on a submit (the job may exist) is SubmissionUncertainError."""
    offsite_hits: list[bytes] = []

    async def offsite(request: web.Request) -> web.StreamResponse:
        offsite_hits.append(await request.read())
        return web.json_response({"id": "stolen", "status": "processing"})

    async with RawServer(offsite) as evil:
        evil_origin = f"http://127.0.0.1:{evil.port}"

        async def redirecting(request: web.Request) -> web.StreamResponse:
            if request.path.endswith("/lipsync-video"):
                raise web.HTTPSeeOther(evil_origin + "/created")
            status = 302 if request.method == "GET" else 307
            return web.Response(status=status, headers={"Location": evil_origin + "/x?k=1"})

        async with RawServer(redirecting) as api:
            receiver = WebhookReceiver()
            async with LipsyncClient(KEY, base_url=api.base_url, webhook=receiver) as client:
                with pytest.raises(APIError) as submit_info:
                    await client.lipsync_image(image=IMAGE, audio=AUDIO)
                assert not isinstance(submit_info.value, SubmissionUncertainError)
                assert submit_info.value.status == 307
                assert evil_origin in str(submit_info.value)
                assert "k=1" not in str(submit_info.value)  # the origin only
                with pytest.raises(APIError, match="redirected") as read_info:
                    await client.get_job("job-1")
                assert read_info.value.status == 302
                with pytest.raises(SubmissionUncertainError, match="redirected"):
                    await client.lipsync_video(video=IMAGE, audio=AUDIO)
            assert len(api.hits) == 3  # each call once: a redirect is not retried
    assert offsite_hits == []


async def test_receiver_secret_redacted_from_api_errors() -> None:
    """An API error answer echoing the submit body (the receiver's URL with its secret) shows
    neither in ``str(exc)`` nor in ``exc.body``; the key is redacted as before."""

    async def echo(request: web.Request) -> web.StreamResponse:
        sent = await request.json()
        return web.json_response(
            {"error": f"bad webhook {sent['webhook']} for {request.headers['Authorization']}"},
            status=400,
        )

    async with RawServer(echo) as api:
        receiver = WebhookReceiver()
        async with LipsyncClient(KEY, base_url=api.base_url, webhook=receiver) as client:
            secret = receiver.url.rsplit("/", 1)[-1]
            with pytest.raises(BadRequestError) as info:
                await client.lipsync_image(image=IMAGE, audio=AUDIO)
    exc = info.value
    assert "bad webhook" in exc.message
    for text in (str(exc), exc.body, exc.message, repr(exc)):
        assert secret not in text and KEY not in text


async def test_dot_job_ids_do_not_read_the_api_root(
    fake: FakeLipsyncServer, make_client: ClientFactory
) -> None:
    """The ids ``.`` and ``..`` are one escaped path segment: the emulator sees a status read
    of an unknown job (404), never a GET of ``/api/v1/`` or ``/api/v1/jobs/``."""
    assert job_path("..") == "jobs/%2E%2E" and job_path(".") == "jobs/%2E"
    assert job_path("a.b") == "jobs/a.b" and job_path("a/b") == "jobs/a%2Fb"
    client = await make_client()
    for job_id in (".", ".."):
        with pytest.raises(NotFoundError):
            await client.get_job(job_id)
    assert fake.requests["GET /jobs"] == 2


def test_insecure_base_url_is_refused() -> None:
    """An ``http://`` base URL on a non-loopback host would send the key in clear: refused
    (ValidationError naming base_url) unless ``allow_insecure=True``; loopback stays fine."""
    with pytest.raises(ValidationError, match="base_url"):
        LipsyncClient(KEY, base_url="http://api.example.com/api/v1")
    LipsyncClient(KEY, base_url="http://api.example.com/api/v1", allow_insecure=True)
    LipsyncClient(KEY, base_url="http://127.0.0.1:9/api/v1")
    LipsyncClient(KEY, base_url="http://localhost:9/api/v1")
    LipsyncClient(KEY, base_url="https://api.example.com/api/v1")


# -- what it writes -------------------------------------------------------------------------


async def _serve_output(request: web.Request) -> web.StreamResponse:
    data = b"\x00\x00\x00\x18ftypmp42" + b"frame" * 20_000
    if request.path.endswith(".gz.mp4"):
        return web.Response(body=gzip.compress(data), headers={"Content-Encoding": "gzip"})
    return web.Response(body=data)


async def test_download_into_a_folder_never_writes_a_dotfile(tmp_path: Path) -> None:
    """An output URL ending in ``/.bashrc`` writes ``output.mp4`` into the folder, not a
    ``.bashrc``."""
    async with RawServer(_serve_output) as cdn:
        async with LipsyncClient(KEY, base_url=cdn.base_url) as client:
            written = await client.download(f"http://127.0.0.1:{cdn.port}/o/.bashrc", tmp_path)
    assert written == tmp_path / "output.mp4"
    assert sorted(os.listdir(tmp_path)) == ["output.mp4"]


async def test_download_into_a_folder_never_overwrites_unless_asked(tmp_path: Path) -> None:
    """A second download of the same name into a folder is a ValidationError and leaves the
    first file as it was; ``overwrite=True`` replaces it."""
    (tmp_path / "clip.mp4").write_bytes(b"mine")
    async with RawServer(_serve_output) as cdn:
        url = f"http://127.0.0.1:{cdn.port}/o/clip.mp4"
        async with LipsyncClient(KEY, base_url=cdn.base_url) as client:
            with pytest.raises(ValidationError, match="overwrite"):
                await client.download(url, tmp_path)
            assert (tmp_path / "clip.mp4").read_bytes() == b"mine"
            written = await client.download(url, tmp_path, overwrite=True)
    assert written.read_bytes().startswith(b"\x00\x00\x00\x18ftyp")
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # no temp file left


async def test_gzip_encoded_download_is_not_truncated(tmp_path: Path) -> None:
    """A download sent with ``Content-Encoding: gzip`` writes the decompressed bytes (it used
    to fail as "truncated": decompressed size vs compressed Content-Length); ``max_bytes``
    counts decompressed bytes."""
    async with RawServer(_serve_output) as cdn:
        url = f"http://127.0.0.1:{cdn.port}/o/clip.gz.mp4"
        async with LipsyncClient(KEY, base_url=cdn.base_url) as client:
            written = await client.download(url, tmp_path / "a.mp4")
            assert written.stat().st_size == 12 + 5 * 20_000
            with pytest.raises(APIError, match="max_bytes"):
                await client.download(url, tmp_path / "b.mp4", max_bytes=50_000)
    assert not (tmp_path / "b.mp4").exists()


# -- what it logs ---------------------------------------------------------------------------


async def test_newline_in_delivered_job_id_cannot_forge_a_log_line(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivered job id holding a newline is logged escaped: no log record's message
    contains a line break a reader would take for another record."""
    import aiohttp

    client = await make_client(webhook=WebhookReceiver(), webhook_grace=5)
    receiver = client.webhook
    assert receiver is not None
    forged_id = "x\nINFO lipsync_async.webhook delivery job=VICTIM status=completed matched"
    body = {"id": forged_id, "status": "completed", "output": "https://cdn.example.com/o.mp4"}
    caplog.set_level(logging.DEBUG, logger="lipsync_async")
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.url, data=json.dumps(body)) as resp:
            assert resp.status == 200
    messages = [r.getMessage() for r in caplog.records]
    assert any("VICTIM" in m for m in messages)
    assert all("\n" not in m for m in messages)


# -- what it serves -------------------------------------------------------------------------


async def test_served_file_swapped_for_a_symlink_is_not_followed(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """A registered input file later replaced by a symlink to a private file (or by another
    file) is a 404: the route serves the inode registered, never what the path names now."""
    import aiohttp

    private = tmp_path / "id_rsa"
    private.write_bytes(b"-----BEGIN PRIVATE KEY-----")
    private.chmod(0o600)
    face, voice = tmp_path / "face.png", tmp_path / "voice.mp3"
    face.write_bytes(b"\x89PNG face")
    voice.write_bytes(b"ID3 voice")
    fake.job_duration = 10
    client = await make_client(webhook=WebhookReceiver(), webhook_grace=5)
    job = await client.lipsync_image(image=face, audio=voice)
    form = fake.jobs[job.id].form_state
    async with aiohttp.ClientSession() as http:
        async with http.get(form["image"]) as resp:
            assert resp.status == 200 and await resp.read() == b"\x89PNG face"
        face.unlink()
        face.symlink_to(private)
        async with http.get(form["image"]) as resp:
            body = await resp.read()
            assert resp.status == 404 and b"PRIVATE" not in body
        other = tmp_path / "other.mp3"
        other.write_bytes(b"not the registered bytes")
        other.replace(voice)
        async with http.get(form["audio"]) as resp:
            assert resp.status == 404


async def test_cli_stderr_never_shows_the_receiver_secret() -> None:
    """The CLI with a receiver (``--public-url``), against a service whose 400 answer echoes
    the submit's webhook URL: stderr shows the error, never the receiver's secret."""
    import asyncio
    import socket
    import sys

    sent: list[str] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        hook = (await request.json())["webhook"]
        sent.append(hook)
        return web.json_response({"error": f"cannot reach {hook}"}, status=400)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with RawServer(echo) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
        env.update(LIPSYNC_API_KEY=KEY, LIPSYNC_BASE_URL=api.base_url, PYTHONUNBUFFERED="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lipsync_async.cli", "image", "--image", IMAGE,
            "--audio", AUDIO, "--public-url", f"http://127.0.0.1:{port}",
            "--listen-port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0
    (hook,) = sent
    secret = hook.rsplit("/", 1)[-1]
    assert len(secret) >= 16
    assert "cannot reach" in err.decode()
    assert secret not in err.decode() and secret not in out.decode()
    assert KEY not in err.decode()
