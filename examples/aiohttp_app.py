"""Mount the webhook receiver in your own aiohttp application, next to your routes.

    python examples/aiohttp_app.py

`receiver.attach(app)` must run before the app's runner is set up: aiohttp freezes the router
then. The client is opened after the site starts, and sees the receiver is already served.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
from _target import AUDIO, IMAGE, target
from aiohttp import web

from lipsync_async import LipsyncClient, WebhookReceiver

CLIENT = web.AppKey("client", LipsyncClient)


async def render(request: web.Request) -> web.Response:
    """An app route that submits a job and answers when it is done (resolved by webhook)."""
    client = request.app[CLIENT]
    job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
    state = await job.wait(timeout=600)
    return web.json_response({"id": state.id, "output": state.output})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


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
        app = web.Application()
        app[CLIENT] = client  # app state is set up front too: it freezes with the router
        app.router.add_get("/health", health)
        app.router.add_post("/render", render)
        receiver.attach(app)  # BEFORE runner.setup(): the router is frozen after that

        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        try:
            async with client:  # sees the receiver is already served: does not start its own
                # Your app is live: call its route the way a user of your app would.
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"http://127.0.0.1:{port}/render") as answer,
                ):
                    body = await answer.json()
                print(f"app rendered job {body['id']} (resolved by the mounted receiver)")
                print(f"status reads: {client.stats['status_reads']}")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
