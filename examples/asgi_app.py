"""Mount the webhook receiver in an ASGI app (FastAPI, Starlette) served by uvicorn.

    pip install uvicorn            # the dev extra has it; FastAPI users have it already
    python examples/asgi_app.py

With FastAPI, the whole integration is three lines::

    receiver = WebhookReceiver("https://api.example.com")       # your app's public address
    app.mount(receiver.path, receiver.asgi())                   # serves {path}/{secret}
    client = LipsyncClient(webhook=receiver)                    # opened in your lifespan

This file does the same without FastAPI, to run with only uvicorn: a tiny ASGI app whose
``/render`` route submits a job and answers when the job's delivery has come in, and which
hands ``/webhooks/lipsync/...`` to the receiver, as ``Mount`` does (the full path, and the
mount point in ``root_path``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn
from _target import AUDIO, IMAGE, target

from lipsync_async import ASGIApp, LipsyncClient, WebhookReceiver

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_app(client: LipsyncClient, receiver: WebhookReceiver) -> ASGIApp:
    webhooks = receiver.asgi()  # before the client opens: it then starts no server of its own

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await webhooks(scope, receive, send)  # acknowledges startup and shutdown
            return
        path = scope["path"]
        if path.startswith(receiver.path + "/"):  # Mount(receiver.path, receiver.asgi())
            mounted = {**scope, "root_path": scope.get("root_path", "") + receiver.path}
            await webhooks(mounted, receive, send)
            return
        if path == "/render" and scope["method"] == "POST":
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
            state = await job.wait(timeout=600)  # resolved by the delivery to the mount
            body = json.dumps({"id": state.id, "output": state.output}).encode()
            status = 200
        else:
            body, status = b'{"error": "not found"}', 404
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def main() -> None:
    async with target() as t:
        # Bind first, to know the port before building the receiver's public URL. For the
        # real API, LIPSYNC_PUBLIC_URL is your app's public https address (a tunnel to it).
        sock = socket.socket()
        sock.bind(("127.0.0.1", int(os.environ.get("PORT", "0"))))
        port = sock.getsockname()[1]
        public_url = os.environ.get("LIPSYNC_PUBLIC_URL", f"http://127.0.0.1:{port}")

        receiver = WebhookReceiver(public_url)
        client = LipsyncClient(
            t.api_key, base_url=t.base_url, webhook=receiver, poll_interval=t.poll_interval
        )
        app = make_app(client, receiver)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
                await asyncio.sleep(0.02)
            async with client:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"http://127.0.0.1:{port}/render") as answer,
                ):
                    body = await answer.json()
                print(f"app rendered job {body['id']} (resolved by the ASGI-mounted receiver)")
                print(f"status reads: {client.stats['status_reads']}")
        finally:
            server.should_exit = True
            await serving


if __name__ == "__main__":
    asyncio.run(main())
