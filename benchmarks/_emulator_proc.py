"""The emulator in its own process, with a small control API beside it.

Run by the benchmarks as ``python benchmarks/_emulator_proc.py``: it starts a
:class:`~lipsync_async.testing.FakeLipsyncServer` on 127.0.0.1 and a second, tiny aiohttp app
(the control port) that lets the benchmark process change knobs between runs, read the request
counter and this process's CPU time, and forget old jobs. It prints one JSON line with the
addresses and the key, then serves until SIGTERM or SIGINT, or at most ``--max-seconds``.

The client and the server therefore never share a core's Python interpreter: on a 2-core
machine each gets one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from aiohttp import web

from lipsync_async.testing import FakeLipsyncServer

_KNOBS = frozenset(
    {
        "job_duration",
        "rate_limit",
        "server_error_rate",
        "throttle_next",
        "throttle_retry_after",
        "webhook_delay",
        "webhook_loss_rate",
        "webhook_duplicate_rate",
        "webhook_early_rate",
        "webhook_retries",
        "failure_rate",
    }
)


def _control_app(fake: FakeLipsyncServer, stop: asyncio.Event) -> web.Application:
    async def configure(request: web.Request) -> web.Response:
        knobs: dict[str, Any] = await request.json()
        for name, value in knobs.items():
            if name not in _KNOBS:
                return web.json_response({"error": f"unknown knob {name}"}, status=400)
            setattr(fake, name, value)
        if "rate_limit" in knobs:
            fake._tokens = None  # a fresh bucket for the next run
        return web.json_response({"ok": True})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": dict(fake.requests),
                "jobs": len(fake.jobs),
                "deliveries": len(fake.deliveries),
                "cpu": time.process_time(),
            }
        )

    async def reset(_: web.Request) -> web.Response:
        fake.requests.clear()
        fake.jobs.clear()
        fake.deliveries.clear()
        return web.json_response({"ok": True})

    async def quit_(_: web.Request) -> web.Response:
        stop.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/configure", configure)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/quit", quit_)
    return app


async def _main(max_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeLipsyncServer(job_duration=0.0) as fake:
        runner = web.AppRunner(_control_app(fake, stop), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        control_port = int(runner.addresses[0][1])
        line = {
            "base_url": fake.base_url,
            "api_key": fake.api_key,
            "control": f"http://127.0.0.1:{control_port}",
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        try:
            await asyncio.wait_for(stop.wait(), max_seconds)
        except TimeoutError:
            sys.stderr.write("emulator: --max-seconds reached, exiting\n")
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args()
    asyncio.run(_main(args.max_seconds))


if __name__ == "__main__":
    main()
