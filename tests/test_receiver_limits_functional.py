"""The receiver under hostile networks: timeouts, the connection cap, logs that cannot be
flooded, the reachability check, and expired outputs fetched again. Real sockets throughout."""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from lipsync_async import APIError, LipsyncClient, WebhookReceiver
from lipsync_async.testing import FakeLipsyncServer

from ._waiting import somaxconn, until
from .conftest import AUDIO, IMAGE, ClientFactory


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF or reset); fails past ``seconds``."""
    t0 = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
    return time.monotonic() - t0


async def _open(receiver: WebhookReceiver) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert receiver.port is not None
    return await asyncio.open_connection("127.0.0.1", receiver.port)


async def test_idle_connection_and_slow_headers_close_after_idle_timeout() -> None:
    """A connection that sends nothing, and one that trickles its headers, are both closed
    about idle_timeout after they opened (the trickle does not reset the deadline)."""
    async with WebhookReceiver(idle_timeout=0.5, check_reachable=False) as receiver:
        idle_r, idle_w = await _open(receiver)
        slow_r, slow_w = await _open(receiver)

        async def trickle() -> None:
            for byte in b"POST /webhooks/lipsync/x HTTP/1.1\r\nHost: a\r\n":
                slow_w.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        try:
            idle = await _closed_within(idle_r, 3.0)
            slow = await _closed_within(slow_r, 3.0)
        finally:
            trickler.cancel()
            idle_w.close()
            slow_w.close()
        assert 0.3 < idle < 2.0
        assert slow < 2.0


async def test_slow_body_is_cut_off_after_body_timeout() -> None:
    """A delivery whose body never finishes is answered 408 and closed after body_timeout."""
    async with WebhookReceiver(
        body_timeout=0.5, idle_timeout=10.0, check_reachable=False
    ) as receiver:
        path = receiver.url.split(f":{receiver.port}", 1)[1]
        reader, writer = await _open(receiver)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )
        t0 = time.monotonic()
        head = await asyncio.wait_for(reader.read(200), 5.0)
        assert head.startswith(b"HTTP/1.1 408"), head
        await _closed_within(reader, 5.0)
        assert time.monotonic() - t0 < 4.0
        writer.close()


async def test_connections_over_the_cap_are_closed_at_once_and_deliveries_resume() -> None:
    """Over max_connections, a new connection is closed as soon as accepted; once the holders
    go, a delivery gets through again."""
    async with WebhookReceiver(max_connections=5, check_reachable=False) as receiver:
        held = [await _open(receiver) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert receiver.connections == 5
        extra_r, extra_w = await _open(receiver)
        assert await _closed_within(extra_r, 2.0) < 1.0
        extra_w.close()
        assert receiver.refused >= 1
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session:
            body = {"id": "job-1", "status": "completed", "output": "https://cdn.example/x.mp4"}
            async with session.post(receiver.url, json=body) as resp:
                assert resp.status == 503  # reached the handler: nobody listens, retry later


def _connect_burst(port: int, count: int, wait: float) -> tuple[list[socket.socket], int]:
    """Start ``count`` connects to ``port`` and count the handshakes completed within ``wait``.

    Synchronous on purpose: called from a coroutine, it keeps the event loop (and so the
    receiver) from accepting anything meanwhile, as a loop busy with other work would.
    """
    socks: list[socket.socket] = []
    with selectors.DefaultSelector() as sel:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sel.register(sock, selectors.EVENT_WRITE)  # writable: the handshake is done
        connected = 0
        deadline = time.monotonic() + wait
        while connected < count and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                connected += 1
    return socks, connected


@pytest.mark.skipif(sys.platform == "win32", reason="listen queues differ on Windows")
async def test_burst_while_the_loop_is_busy_waits_in_the_listen_queue() -> None:
    """A burst of connections bigger than asyncio's accept batch (128), arriving while the
    receiver's loop is busy, is held by the kernel's listen queue (every handshake completes)
    and reaches the gate once the loop is back, where those over the cap are closed. With a
    128 backlog the kernel dropped the rest: SYNs retried a second later, or, under SYN
    cookies, handshakes only the sender believed complete, never seen by the receiver."""
    import resource  # POSIX only, as in test_default_cap_leaves_the_fd_reserve

    burst, cap = 300, 16
    if (queue := somaxconn()) is not None and queue < burst:
        pytest.skip(f"net.core.somaxconn is {queue}: listen queues hold fewer than {burst}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2 * burst + 256:
        pytest.skip(f"needs {2 * burst + 256} file descriptors, the soft limit is {soft}")
    async with WebhookReceiver(max_connections=cap, check_reachable=False) as receiver:
        assert receiver.port is not None
        socks, connected = _connect_burst(receiver.port, burst, wait=0.5)
        try:
            assert connected == burst
            await until(lambda: receiver.refused + receiver.connections >= burst, what="gate")
            assert receiver.connections == cap
            assert receiver.refused == burst - cap
        finally:
            for sock in socks:
                sock.close()


def test_default_cap_leaves_the_fd_reserve() -> None:
    """The derived cap plus the reserve and the accept batch fit under RLIMIT_NOFILE."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main() -> int | None:
        async with WebhookReceiver(reserve_fds=300, check_reachable=False) as receiver:
            return receiver.max_connections

    cap = asyncio.run(main())
    assert cap is not None
    if soft != resource.RLIM_INFINITY and soft < 10_000:
        assert cap + 300 + 128 <= soft


async def test_sender_disconnecting_mid_body_is_debug_not_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender that goes away mid-body leaves no ERROR and no traceback in the log."""
    caplog.set_level(logging.DEBUG)
    async with WebhookReceiver(check_reachable=False) as receiver:
        path = receiver.url.split(f":{receiver.port}", 1)[1]
        for _ in range(5):
            _, writer = await _open(receiver)
            writer.write(
                f'POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n{{"id"'.encode()
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
        await asyncio.sleep(0.2)
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def test_malformed_requests_are_summarised_not_logged_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A burst of malformed requests (bad request lines, broken chunking, huge headers)
    yields at most one WARNING with counts while running, and no traceback."""
    caplog.set_level(logging.DEBUG)
    garbage = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /webhooks/lipsync/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
    ]
    async with WebhookReceiver(check_reachable=False) as receiver:
        for i in range(60):
            reader, writer = await _open(receiver)
            writer.write(garbage[i % len(garbage)])
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(100), 2.0)  # a 400, then the close
            except ConnectionError:
                pass
            writer.close()
        during = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(during) <= 2, [r.getMessage() for r in during]
    assert not [r for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert any("refused at the door" in r.getMessage() for r in during)


async def test_unreachable_public_url_polls_from_the_start(
    fake: FakeLipsyncServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A public_url the receiver cannot reach itself through (a closed loopback port) gives
    one WARNING, reachable=False, and jobs polled from the start, not after webhook_grace."""
    probe_sock = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_port = probe_sock.sockets[0].getsockname()[1]
    probe_sock.close()
    await probe_sock.wait_closed()
    receiver = WebhookReceiver(f"http://127.0.0.1:{closed_port}")
    client = await make_client(webhook=receiver, webhook_grace=600.0, poll_interval=0.05)
    assert receiver.reachable is False
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 1
    assert receiver.url.rsplit("/", 1)[1] not in warnings[0].getMessage()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await asyncio.wait_for(job, 5.0)  # polled: a grace of 600 s would time out here
    assert state.output


async def test_reachable_receiver_and_check_off(make_client: ClientFactory) -> None:
    """The default loopback receiver reaches itself; check_reachable=False skips the check."""
    on = WebhookReceiver()
    await make_client(webhook=on)
    assert on.reachable is True
    off = WebhookReceiver("http://127.0.0.1:9", check_reachable=False)
    async with off:
        assert off.reachable is True


async def test_ping_route_needs_no_secret_and_reveals_none() -> None:
    """GET {path}/ping answers an HMAC of the challenge: never the secret, and 400 without one."""
    async with WebhookReceiver(check_reachable=False) as receiver:
        base = f"http://127.0.0.1:{receiver.port}{receiver.path}/ping"
        async with aiohttp.ClientSession() as session:
            async with session.get(base) as resp:
                assert resp.status == 400
            async with session.get(base, params={"c": "abcdefgh12345678"}) as resp:
                text = await resp.text()
                assert resp.status == 200
                assert receiver.url.rsplit("/", 1)[1] not in text and len(text) == 64


def test_loopback_receiver_with_remote_api_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    """A loopback receiver URL given to a client of a non-loopback API is warned about and
    counts as unreachable (the service could never deliver to it)."""
    receiver = WebhookReceiver()
    LipsyncClient("sk_test_x", base_url="https://api.example.com/api/v1", webhook=receiver)
    assert receiver.reachable is False
    assert any("loopback" in r.getMessage() for r in caplog.records)


async def test_expired_output_is_fetched_again(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """download() of a job whose output URL expired (403) re-reads the job and fetches the
    fresh URL."""
    fake.output_ttl = 0.3
    client = await make_client()
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await job
    await asyncio.sleep(0.4)  # the URL the job resolved with has expired
    path = await client.download(state, tmp_path / "out.mp4")
    assert path.stat().st_size > 0
    assert fake.requests["403"] == 1


async def test_expired_output_refused_twice_says_so(
    fake: FakeLipsyncServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    """When the fresh URL is refused too, the error says the job was read again."""
    fake.output_ttl = 0.0  # every URL is already expired
    client = await make_client()
    state = await (await client.lipsync_image(image=IMAGE, audio=AUDIO))
    with pytest.raises(APIError, match="read again") as info:
        await client.download(state, tmp_path / "out.mp4")
    assert info.value.status == 403
    assert not (tmp_path / "out.mp4").exists()


async def test_malformed_request_to_the_secret_url_never_logs_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp's message for a malformed request may quote the request line: the summary
    WARNING (and the DEBUG lines) show *** where the secret was."""
    caplog.set_level(logging.DEBUG)
    async with WebhookReceiver(check_reachable=False) as receiver:
        path = receiver.url.split(f":{receiver.port}", 1)[1]
        reader, writer = await _open(receiver)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: x{path}\r\n\r\n".encode())
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(100), 2.0)
        except ConnectionError:
            pass
        writer.close()
        secret = receiver.url.rsplit("/", 1)[1]
    assert any("refused at the door" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if secret in r.getMessage()]


async def test_delivery_processing_past_handler_timeout_gets_503() -> None:
    """A delivery whose processing (here a slow on_delivery callback) outlasts
    handler_timeout is answered 503, which the service retries, instead of holding the
    connection."""

    async def slow(state: object) -> None:
        await asyncio.sleep(10)

    async with WebhookReceiver(
        on_delivery=slow, handler_timeout=0.3, check_reachable=False
    ) as receiver:
        body = {"id": "job-1", "status": "completed", "output": "https://cdn.example/x.mp4"}
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            async with session.post(receiver.url, json=body) as resp:
                assert resp.status == 503
        assert time.monotonic() - t0 < 3.0


def test_limits_are_validated() -> None:
    """Timeouts must be positive seconds, connection figures positive integers."""
    from lipsync_async import ValidationError

    for kwargs in (
        {"idle_timeout": 0},
        {"body_timeout": -1},
        {"handler_timeout": float("inf")},
        {"max_connections": 0},
        {"reserve_fds": True},
    ):
        with pytest.raises(ValidationError):
            WebhookReceiver(**kwargs)
