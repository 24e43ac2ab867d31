"""A client and its receiver under a 1,024 file-descriptor soft limit, for the starvation test.

Run as ``python tests/starvation_worker.py BASE_URL API_KEY COUNT``. It lowers its own
``RLIMIT_NOFILE`` soft limit to 1,024 (as systemd services and containers commonly have),
starts a ``LipsyncClient`` with a ``WebhookReceiver`` (short timeouts: idle 3 s, body 3 s),
prints ``{"event": "listening", "url": ..., "port": ..., "cap": ...}``, waits for a line on
stdin (the test has opened its flood by then), submits COUNT jobs at once, awaits them, and
prints ``{"event": "done", ...}`` with what happened. One JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from typing import Any

from lipsync_async import LipsyncClient, LipsyncError, WebhookReceiver

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"
SOFT_LIMIT = 1024
IDLE_TIMEOUT = 3.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _untraced() -> None:
    """Stop coverage's tracer in this process, if the suite's run started one: traced, the
    receiver accepts 2,000 connections several times slower, and the time they wait in the
    listen queue counts against the receiver's idle timeout in the test."""
    try:
        import coverage
    except ImportError:
        return
    current = coverage.Coverage.current()
    if current is not None:
        current.stop()


async def main(base_url: str, api_key: str, count: int) -> None:
    _untraced()
    loop = asyncio.get_running_loop()
    handler_calls = 0

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal handler_calls
        handler_calls += 1  # asyncio's accept path reports EMFILE here

    loop.set_exception_handler(on_error)
    receiver = WebhookReceiver(idle_timeout=IDLE_TIMEOUT, body_timeout=3.0)
    async with LipsyncClient(
        api_key, base_url=base_url, webhook=receiver, webhook_grace=8.0, poll_interval=0.5
    ) as client:
        emit("listening", url=receiver.url, port=receiver.port, cap=receiver.max_connections)
        await loop.run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(
            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(count)),
            return_exceptions=True,
        )
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        jobs = [r for r in results if not isinstance(r, BaseException)]
        resolved = 0
        try:
            async with asyncio.timeout(40.0):
                for state in await asyncio.gather(*jobs, return_exceptions=True):
                    resolved += not isinstance(state, BaseException)
        except TimeoutError:
            pass
        except LipsyncError:
            pass
        emit(
            "done",
            submitted=len(jobs),
            submit_failures=failed[:5],
            submit_failed=len(failed),
            resolved=resolved,
            delivered=receiver.received,
            refused=receiver.refused,
            status_reads=client.stats["status_reads"],
            exception_handler_calls=handler_calls,
        )


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, hard))
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
