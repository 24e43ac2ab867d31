"""Resolve jobs from webhook deliveries with an embedded receiver: no polling at all.

    python examples/webhook_receiver.py

For the real API the service must reach this machine: run a tunnel (ngrok, cloudflared) to
port 8080 and set LIPSYNC_PUBLIC_URL to its https address. With the emulator, deliveries go
to 127.0.0.1 directly.
"""

from __future__ import annotations

import asyncio
import os

from _target import AUDIO, VIDEO, target

from lipsync_async import LipsyncClient, WebhookReceiver


async def main() -> None:
    # The emulator duplicates some deliveries: the receiver ignores the second copy.
    async with target(webhook_duplicate_rate=0.2, seed=5) as t:
        public_url = os.environ.get("LIPSYNC_PUBLIC_URL")
        if t.fake is None and not public_url:
            raise SystemExit("set LIPSYNC_PUBLIC_URL to a tunnel to port 8080 for webhooks")
        # None: this machine's own address, fine for the emulator on loopback.
        receiver = WebhookReceiver(public_url, port=8080 if public_url else 0)
        # The client starts the receiver, sends its URL (which carries a random secret) with
        # every submit, and stops it on exit. A job whose delivery is late falls back to
        # polling after webhook_grace seconds, so a lost webhook costs time, not the job.
        async with LipsyncClient(
            t.api_key, base_url=t.base_url, webhook=receiver, poll_interval=t.poll_interval
        ) as client:
            jobs = [
                await client.lipsync_video(video=VIDEO, audio=AUDIO, prompt=f"take {i}")
                for i in range(10)
            ]
            states = await asyncio.gather(*jobs)
            done = sum(state.status == "completed" for state in states)
            print(f"{done} jobs completed by webhook; {receiver.received} deliveries accepted")
            print(f"status reads: {client.stats['status_reads']}")  # 0 on the happy path


if __name__ == "__main__":
    asyncio.run(main())
