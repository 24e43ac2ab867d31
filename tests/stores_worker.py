"""A worker process for the store tests: submits or resumes jobs against the test's emulator.

Run as ``python tests/stores_worker.py MODE --base-url ... --api-key ... --store ...``; it prints
one JSON object per line (``{"event": ...}``) for the test to read. Modes:

* ``submit``: submit ``--count`` jobs, print ``submitted``, then either await them all and
  print ``resolved`` or, with ``--hang``, sleep until killed (the test kills it mid-flight);
* ``resume``: ``await client.pending()``, print ``resumed``, await them all, print ``resolved``.

``--store`` is ``sqlite:PATH`` or a ``redis://`` URL (``--prefix`` namespaces the keys,
``--worker`` names the worker, ``--lease`` its lease in seconds; ``--complete-log FILE``
sets an ``on_complete`` that logs ``start``/``end`` lines there, ``--complete-delay`` apart). With
``--port``, the worker runs a receiver there whose public URL is ``--public-url`` (another
worker's address: the load balancer sent the webhook elsewhere) and whose secret is
``--secret``, shared by all workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from lipsync_async import Job, JobFailed, LipsyncClient, WebhookReceiver
from lipsync_async.stores import RedisStore, SQLiteStore, Store

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_store(spec: str, prefix: str, worker: str | None = None, lease: float = 30.0) -> Store:
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"))
    return RedisStore(spec, prefix=prefix, worker=worker, lease=lease)


async def settle(client: LipsyncClient, store: Store, jobs: list[Job], timeout: float) -> None:
    resolved: list[str] = []
    failed: list[str] = []
    async with asyncio.timeout(timeout):
        for job in asyncio.as_completed([j.wait() for j in jobs]):
            try:
                state = await job
                resolved.append(state.id)
            except JobFailed as exc:
                failed.append(exc.state.id)
    emit(
        "resolved",
        ids=resolved,
        failed=failed,
        reads=client.stats["status_reads"],
        announced=getattr(store, "announced", 0),
        routed=getattr(store, "routed", 0),
    )


def completion_log(path: str | None, delay: float) -> Any:
    """``on_complete`` that appends ``start <id> <pid>`` and ``end <id> <pid>`` lines to
    ``path`` (one ``O_APPEND`` write each: lines from several processes never interleave)."""
    if path is None:
        return None
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def on_complete(job: Job) -> None:
        os.write(fd, f"start {job.id} {os.getpid()}\n".encode())
        await asyncio.sleep(delay)
        os.write(fd, f"end {job.id} {os.getpid()}\n".encode())

    return on_complete


async def main(args: argparse.Namespace) -> None:
    store = make_store(args.store, args.prefix, args.worker, args.lease)
    receiver = None
    if args.port:
        # Its public URL is another worker's, which may start later: no start-up check.
        receiver = WebhookReceiver(
            args.public_url, port=args.port, secret=args.secret, check_reachable=False
        )
    client = LipsyncClient(
        args.api_key,
        base_url=args.base_url,
        webhook=receiver,
        store=store,
        poll_interval=args.poll_interval,
        webhook_grace=args.grace,
        on_complete=completion_log(args.complete_log, args.complete_delay),
    )
    async with client:
        emit("ready")
        if args.mode == "submit":
            jobs = list(
                await asyncio.gather(
                    *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(args.count))
                )
            )
            emit("submitted", ids=[j.id for j in jobs])
            if args.hang:
                await asyncio.sleep(3600)
        else:
            jobs = await client.pending()
            emit("resumed", ids=[j.id for j in jobs], done=[j.id for j in jobs if j.done()])
        await settle(client, store, jobs, args.timeout)
        if args.linger:  # keep the receiver up for the other worker's deliveries
            # ...and keep reporting what this worker announced: the other worker's deliveries
            # may still be landing here after this worker's own jobs resolved.
            loop = asyncio.get_running_loop()
            until = loop.time() + args.linger
            while loop.time() < until:
                emit(
                    "stats",
                    announced=getattr(store, "announced", 0),
                    routed=getattr(store, "routed", 0),
                )
                await asyncio.sleep(0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["submit", "resume"])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--prefix", default="lipsync")
    parser.add_argument("--worker", default=None)  # RedisStore(worker=): stable across restarts
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--public-url", default=None)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--complete-log", default=None)  # on_complete appends to this file
    parser.add_argument("--complete-delay", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
