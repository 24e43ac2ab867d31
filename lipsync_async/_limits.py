"""What keeps the receiver's own server from being starved, or from starving its process.

The receiver listens on a public door, so anyone can open connections to it. Three things here:

**A connection cap, enforced at accept.** The receiver's ``TCPSite`` serves through
:class:`ConnectionGate`, a protocol factory in front of aiohttp's: a connection over the cap is
aborted the moment it is accepted (an RST, no bytes read, no handler, no task), and only a count
is kept. We chose "accept, then close at once" over "stop accepting" (pausing the listening
socket): a paused listener leaves the excess in the kernel's backlog, where the real service's
delivery waits behind the flood and times out anyway, and resuming needs a timer; an immediate
close costs one ``accept``/``close`` pair and frees the descriptor in the same loop iteration.

**A listen queue that holds a burst.** The gate only sees what the loop accepts, and a loop busy
with other work accepts nothing for a while; meanwhile the kernel completes handshakes into the
listening socket's queue. When that queue is full, Linux drops the sender's SYN (retried 1 s,
then 3 s later) and, once SYN cookies take over, drops the handshake's last ACK: the sender's
``connect`` has returned, but the receiver has no socket for it, so nothing here can close it
(an idle sender holds it open forever; its first byte or keep-alive probe gets an RST, or, for
a real sender with a fresh cookie, forms the connection then). So the listening socket's queue
is 4,096 (the kernel lowers it to ``net.core.somaxconn``, 4,096 by default since Linux 5.4; Go
uses somaxconn too): queued connections cost kernel memory, no descriptors, and a flood's
burst waits there for the gate, which closes those over the cap at once. Asyncio's own batch
is separate and stays 128: ``create_server(backlog=)`` is also how many sockets it accepts per
wake-up, all holding descriptors before any reaches the gate, so :class:`GatedSite` creates the
server with the batch and then raises the queue with a second ``listen`` on the same socket.
A burst beyond the queue is the kernel's, as above: dropped handshakes hold nothing of ours.

**A reserve of file descriptors for the client.** The cap is derived from the process's soft
``RLIMIT_NOFILE``: ``soft - open now - reserve_fds - accept batch`` (the batch because asyncio
accepts up to that many sockets in one go before any of them reaches the gate), so however
many connections arrive, ``reserve_fds`` descriptors (256 by default) stay free for the
client's own requests: submits and status reads keep working, and only the receiver suffers
(deliveries it refuses are retried by the service, and lost ones fall back to polling after
``webhook_grace``). At the cap a WARNING says so, at most once a minute, with counts.

**Logs that cannot be flooded.** aiohttp's server logs every malformed request (bad request
line, oversized header, broken chunking) with a traceback on its ``aiohttp.server`` logger. Our
server gets its own logger instead (``handler_args``-style, via ``AppRunner(logger=...)``: only
this receiver's server, no global filter touching the user's own aiohttp apps): it turns
those records into counts, and :class:`Summary` writes one WARNING per minute at most, with the
counts and the last message, never a traceback.

The reachability probe (:func:`probe`) lives here too: a minimal HTTP/1.1 GET over a plain
asyncio stream (TLS for ``https``), so the receiver can call itself through its public URL
without a client session of its own (``aiohttp.ClientSession`` stays in ``_http``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import ssl
import time
from collections import Counter
from typing import Final

from aiohttp import web
from yarl import URL

__all__ = ["ConnectionGate", "ServerLog", "Summary", "derive_cap", "probe"]

log = logging.getLogger("lipsync_async.webhook")

LOG_PERIOD: Final = 60.0  # seconds between two summary WARNINGs
_MIN_CAP: Final = 16
_MAX_CAP: Final = 10_000  # an unlimited RLIMIT_NOFILE still gets a sane cap


def open_fds() -> int:
    """Descriptors this process has open now (Linux ``/proc``; a guess of 64 elsewhere)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(where))
    return 64


def derive_cap(reserve_fds: int, accept_batch: int) -> int:
    """The connection cap that leaves ``reserve_fds`` descriptors free (see the docstring)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return _MAX_CAP
    return max(_MIN_CAP, min(_MAX_CAP, soft - open_fds() - reserve_fds - accept_batch))


class Summary:
    """Counts of things a remote peer can cause, logged as one WARNING per ``LOG_PERIOD``."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._counts: Counter[str] = Counter()
        self._last = ""
        self._logged_at = float("-inf")
        self.total = 0

    def note(self, kind: str, message: str = "") -> None:
        self._counts[kind] += 1
        self.total += 1
        if message:
            self._last = message
        now = time.monotonic()
        if now - self._logged_at >= LOG_PERIOD:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log what was counted since the last WARNING (at close, say)."""
        if not self._counts:
            return
        self._logged_at = time.monotonic() if now is None else now
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(self._counts.items()))
        self._counts.clear()
        last, self._last = self._last, ""
        log.warning(
            "webhook receiver: %s (%s)%s; next summary in %.0f s at most",
            self._what,
            counts,
            f"; last: {last!r}" if last else "",
            LOG_PERIOD,
        )


class ServerLog(logging.Logger):
    """The logger our aiohttp server writes to: its errors become counts, not tracebacks.

    Records below WARNING go on to ``lipsync_async.webhook`` as DEBUG lines (without their
    traceback); WARNING and above (aiohttp's "Error handling request" for each malformed
    request) are counted in a :class:`Summary`.
    """

    def __init__(self, summary: Summary, secret: str) -> None:
        super().__init__("lipsync_async.webhook.server")
        self.parent = log
        self._summary = summary
        self._secret = secret

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        message = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()
        # A malformed request to the secret URL may be quoted in aiohttp's message.
        message = message.replace(self._secret, "***")[:200]
        if record.levelno >= logging.WARNING:
            self._summary.note(type(exc).__name__ if exc is not None else "error", message)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("webhook server: %s", message)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one admitted connection, counted while it lives."""

    __slots__ = ("_gate", "_inner")

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.active -= 1
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: aborted as soon as it exists, nothing read."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]  # a Transport: abort() frees the fd now


class ConnectionGate:
    """A protocol factory in front of aiohttp's server that admits at most ``cap`` connections.

    Counted at the factory call, not at ``connection_made``: asyncio calls the factory for a
    whole batch of accepted sockets before any of them is made, and the batch must be capped
    too.
    """

    def __init__(self, server: web.Server, cap: int, summary: Summary) -> None:
        self._server = server
        self.cap = cap
        self.active = 0
        self.refused = 0
        self._summary = summary

    def __call__(self) -> asyncio.Protocol:
        if self.active >= self.cap:
            self.refused += 1
            self._summary.note("connections refused over the cap")
            return _Refused()
        self.active += 1
        return _Counted(self, self._server())


class GatedSite(web.TCPSite):
    """``TCPSite`` serving through a :class:`ConnectionGate`, with a listen queue deeper than
    asyncio's accept batch (see the module docstring)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        gate_cap: int,
        summary: Summary,
        accept_batch: int,
        listen_queue: int,
    ) -> None:
        super().__init__(runner, host, port, backlog=accept_batch)
        self._gate_cap = gate_cap
        self._summary = summary
        self._listen_queue = listen_queue
        self.gate: ConnectionGate | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would bind ungated
        server = self._runner.server
        if server is None:  # setup() not called: TCPSite.start would fail the same way
            raise RuntimeError("call AppRunner.setup() before starting a site")
        self.gate = ConnectionGate(server, self._gate_cap, self._summary)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.gate, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        # asyncio has listened with its batch size; a second listen() on the same socket (a
        # dup shares it) deepens the kernel's queue and leaves asyncio's batch as it is.
        # A platform (or event loop) that refuses it keeps asyncio's queue: never a failed start.
        for listening in self._server.sockets:
            try:
                with listening.dup() as sock:
                    sock.listen(self._listen_queue)
            except OSError as exc:  # pragma: no cover - Linux and macOS accept it
                log.debug("listen queue left at %d: %s", self._backlog, exc)


async def probe(url: URL, expect: str, timeout: float) -> str | None:
    """GET ``url``; ``None`` if it answered 200 with ``expect`` in its body, else why not.

    A minimal HTTP/1.1 client (``Connection: close``, the first 8 KiB read): enough to see our
    own ping route's answer through a tunnel or a load balancer.
    """
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    ctx = ssl.create_default_context() if url.scheme == "https" else None
    default = (url.scheme, port) in (("http", 80), ("https", 443))
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default else f":{port}")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if ctx else None
            )
            try:
                writer.write(
                    f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {host_header}\r\n"
                    "User-Agent: lipsync_async-receiver-check\r\nAccept: text/plain\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                data = b""
                while len(data) < 8192 and (chunk := await reader.read(8192 - len(data))):
                    data += chunk
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"no answer in {timeout:g} s"
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if not status.startswith("HTTP/1.") or status.split(" ")[1:2] != ["200"]:
        return f"answered {status[:60]!r}"
    if expect.encode() not in body:
        return "answered 200, but not as this receiver (another server, or another secret)"
    return None
