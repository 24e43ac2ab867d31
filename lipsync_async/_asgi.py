"""The webhook receiver as an ASGI application, for FastAPI, Starlette or any ASGI server.

ASGI is a calling convention (``await app(scope, receive, send)``), not a library: this module
imports nothing new. It only translates: it reads the request's method, path and body (at most
``max_body + 1`` bytes, however much the sender sends) and hands them to the receiver's
framework-neutral entry point, which runs the same secret check, size cap, parsing and
``_dispatch`` (tracker, store, ``verify``, ``on_delivery``) as the aiohttp handler. So a delivery
is answered the same way, byte for byte, whichever server took it.

Mounting::

    app = FastAPI()                                   # or Starlette(routes=[Mount(...)])
    receiver = WebhookReceiver("https://api.example.com")
    app.mount(receiver.path, receiver.asgi())         # serves {path}/{secret}
    client = LipsyncClient(webhook=receiver)          # starts no server of its own

The app accepts the route relative to where it is mounted: ``/{secret}`` when mounted at
``receiver.path`` (the usual case), or ``{path}/{secret}`` when mounted at the root or under a
prefix of ``public_url``. Local input files (``pathlib.Path`` media) are served by the aiohttp
receiver only: under ASGI their URLs answer 404, so pass http(s) URLs. A receiver with a
``store=`` of its own and no client: open and close that store in your app's lifespan (a
mounted app gets no lifespan events of its own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from ._webhook import WebhookReceiver

__all__ = ["ASGIApp", "ReceiverASGIApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NOT_FOUND: Final = b'{"error": "not found"}'


class ReceiverASGIApp:
    """An ASGI 3 application serving one :class:`WebhookReceiver`'s delivery route.

    Made by :meth:`WebhookReceiver.asgi`. Lifespan events are acknowledged (for a server that
    runs this app alone); the receiver's lifecycle belongs to its client.
    """

    __slots__ = ("_receiver",)

    def __init__(self, receiver: WebhookReceiver) -> None:
        self._receiver = receiver

    def __repr__(self) -> str:  # the receiver's repr hides its secret
        return f"<ReceiverASGIApp {self._receiver!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind == "websocket":  # not ours: refuse the handshake
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        secret = self._secret_of(scope)
        if secret is None:
            await _answer(send, 404, {"Content-Type": "application/json"}, _NOT_FOUND)
            return
        body = await _read_body(receive, self._receiver.max_body + 1)
        status, headers, raw = await self._receiver._receive_http(
            str(scope.get("method", "")), secret, body, _token_of(scope), _token_of(scope, "tp")
        )
        await _answer(send, status, headers, raw)

    def _secret_of(self, scope: Scope) -> str | None:
        """The one path segment after the route, or None if the path is not the route."""
        path = str(scope.get("path", ""))
        # Starlette's Mount keeps the full path and extends root_path (older versions cut the
        # path instead): take off the mount point either way.
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        route = self._receiver.path
        if path.startswith(route + "/"):
            path = path[len(route) :]
        segment = path[1:] if path.startswith("/") else ""
        if not segment or "/" in segment:
            return None
        return segment


def _token_of(scope: Scope, name: str = "t") -> str | None:
    """The correlation token (``?t=``) of a delivery, if its URL has one (or, ``name="tp"``,
    the traceparent of its submit, with OpenTelemetry on)."""
    raw = scope.get("query_string", b"")
    query = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    values = parse_qs(query).get(name)
    return values[0] if values else None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, cut at ``limit`` bytes (the rest is not read: the answer is a 413)."""
    body = bytearray()
    while len(body) < limit:
        message = await receive()
        if message.get("type") == "http.disconnect":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body[:limit])


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw = [(k, v) for k, v in raw if k != b"content-length"]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message.get("type") == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
