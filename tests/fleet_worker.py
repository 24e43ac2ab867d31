"""One worker of the fleet test (``tests/test_fleet_functional.py``), driven over stdin.

Run as ``python tests/fleet_worker.py --base-url ... --api-key ... --redis-url ... --port ...
--public-url ... --secret ...``. The worker opens a :class:`LipsyncClient` with a
:class:`WebhookReceiver` on ``--port`` (the load balancer's upstream) whose public URL is the
balancer's, and a :class:`RedisStore` shared by the fleet. It then reads one JSON command per
line on stdin and prints one JSON event per line on stdout:

* ``{"cmd": "submit", "count": N, "rate": R}``: submit N jobs, R per second at most (0: all at
  once), then print ``submitted`` with their ids;
* ``{"cmd": "resume"}``: ``await client.pending()``, print ``resumed`` with the ids (and which
  were already done);
* ``{"cmd": "stats"}``: print ``stats`` (status reads, store counters);
* ``{"cmd": "stop"}`` or end of input: close the client (a clean close) and print ``closed``.

Every job this worker tracks prints ``done`` when it ends, with its final state in the
service's JSON names (and ``complete`` from ``on_complete``, which runs once per job
fleet-wide), so the test can compare it with the emulator's record even for a worker
it later kills. Every wait is bounded: a submit by the client's own timeouts, the whole
process by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from lipsync_async import Job, LipsyncClient, WebhookReceiver
from lipsync_async.stores import RedisStore, StoreError

IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def on_done(job: Job) -> None:
    state = job.state
    if job.cancelled() or state is None or not state.is_final:
        emit("ended", id=job.id, why=repr(job.exception()) if not job.cancelled() else "cancel")
        return
    emit("done", id=job.id, state=state.to_wire())


def on_complete(job: Job) -> None:
    """The fleet-wide once-per-job callback: the test counts these across all workers."""
    emit("complete", id=job.id)


def store_stats(client: LipsyncClient, store: RedisStore) -> dict[str, Any]:
    return {
        "reads": client.stats["status_reads"],
        "announced": store.announced,
        "routed": store.routed,
    }


async def submit(client: LipsyncClient, count: int, rate: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    jobs: list[Job] = []
    store_errors: list[str] = []

    async def one(i: int) -> None:
        if rate > 0:
            await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
        try:
            job = await client.lipsync_image(image=IMAGE, audio=AUDIO)
        except StoreError as exc:  # recorded nowhere, but tracked here: the test sees it
            store_errors.append(f"{time.time():.3f} {exc}")
            if exc.job is None:
                raise
            job = exc.job
        job.add_done_callback(on_done)
        jobs.append(job)

    await asyncio.gather(*(one(i) for i in range(count)))
    emit("submitted", ids=[j.id for j in jobs], store_errors=len(store_errors), why=store_errors)


async def commands(client: LipsyncClient, store: RedisStore) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        cmd: dict[str, Any] = json.loads(line)
        if cmd["cmd"] == "submit":
            task = loop.create_task(submit(client, int(cmd["count"]), float(cmd["rate"])))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif cmd["cmd"] == "resume":
            jobs = await client.pending()
            for job in jobs:
                job.add_done_callback(on_done)
            emit("resumed", ids=[j.id for j in jobs], done=[j.id for j in jobs if j.done()])
        elif cmd["cmd"] == "stats":
            emit("stats", **store_stats(client, store))
        elif cmd["cmd"] == "stop":
            break
    await asyncio.gather(*tasks)


def store_options(pairs: list[str]) -> dict[str, Any]:
    """``--store-opt name=json`` pairs: keywords of the fleet's RedisStore (lease, ...)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name] = json.loads(value)
    return out


async def main(args: argparse.Namespace) -> None:
    store = RedisStore(
        args.redis_url, prefix=args.prefix, retries=args.retries, **store_options(args.store_opt)
    )
    # Its public URL is the balancer's, whose other upstreams may start later: no start check.
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
        on_complete=on_complete,
    )
    async with asyncio.timeout(args.max_seconds):
        async with client:
            emit("ready")
            await commands(client, store)
            stats = store_stats(client, store)
        emit("closed", **stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--retries", type=int, default=10)
    parser.add_argument("--store-opt", action="append", default=[])
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    asyncio.run(main(parser.parse_args()))
