"""Deliveries per second routed through Redis between two processes, against in-process baselines.

Two pairs, each measured in the same run:

* **store level**: N final states recorded by one process resolve N ``Job``s awaited in another
  (``RedisStore.record_final`` -> Lua ``SET NX`` + ``PUBLISH`` -> subscriber -> tracker), against
  the same N states matched in-process through a ``MemoryStore``;
* **webhook level**: N webhook POSTs land on worker B's receiver and resolve the jobs awaited on
  worker A through Redis, against the same N POSTs landing on A's own receiver (no store).

Usage: ``python benchmarks/bench_redis_routing.py [--jobs 20000] [--posts 5000]``. Starts its
own ``redis-server`` on a free loopback port unless ``--redis-url`` is given. The routed figure
is what one awaiting worker absorbs; the ratio says what crossing processes costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from lipsync_async import Job, JobState, JobStatus, LipsyncClient, WebhookReceiver
from lipsync_async.stores import MemoryStore, PendingRecord, RedisStore, Store

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a loopback benchmark's URL token
KEY = "sk_bench_not_used"  # no API request is ever made: jobs are attached, not submitted
BASE = "http://127.0.0.1:9"
HERE = str(Path(__file__).resolve())


def _state(job_id: str) -> JobState:
    return JobState(id=job_id, status=JobStatus.COMPLETED, output="https://cdn.example.com/o.mp4")


def _body(job_id: str) -> bytes:
    return json.dumps(
        {"id": job_id, "model": "lipsync-image", "status": "completed",
         "output": "https://cdn.example.com/o.mp4", "error": "", "executionTime": 1,
         "timings": None}
    ).encode()  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server is not installed (apt-get install redis-server), or pass --redis-url"
        )
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(500):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(5)


# -- the other process -----------------------------------------------------------------------


async def _child(args: argparse.Namespace) -> None:
    """``publish``: record N final states when told; ``receive``: a worker's receiver."""
    store = RedisStore(args.redis_url, prefix=args.prefix)
    loop = asyncio.get_running_loop()
    if args.child == "publish":
        await store.open()
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        ids = [f"{args.prefix}-{i}" for i in range(args.jobs)]
        sem = asyncio.Semaphore(64)

        async def one(job_id: str) -> None:
            async with sem:
                await store.record_final(_state(job_id))

        await asyncio.gather(*(one(i) for i in ids))
        await store.close()
    else:
        receiver = WebhookReceiver(port=args.port, secret=SECRET, store=store)
        async with receiver:
            print("ready", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, HERE, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise RuntimeError(f"child failed to start: {line!r}")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    if proc.returncode is None:
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
    await asyncio.wait_for(proc.wait(), 30)


# -- measurements ------------------------------------------------------------------------------


def _countdown(client: LipsyncClient, ids: list[str]) -> asyncio.Event:
    """An event set when every job has resolved.

    Awaiting an attached job would start polling it (there is no service here): a waiter
    callback observes resolution without asking for a status read.
    """
    done = asyncio.Event()
    left = len(ids)

    def one(_: Job) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    for i in ids:
        client.job(i).add_done_callback(one)
    return done


async def _own(store: Store, ids: list[str]) -> None:
    """Record the jobs as this worker's: a RedisStore routes a delivery to its job's owner."""
    sem = asyncio.Semaphore(64)

    async def one(job_id: str) -> None:
        async with sem:
            await store.add_pending(
                PendingRecord(id=job_id, endpoint="lipsync-image", submitted_at=time.time())
            )

    await asyncio.gather(*(one(i) for i in ids))


async def _all_done(done: asyncio.Event, started: float) -> float:
    await asyncio.wait_for(done.wait(), 300)
    return time.perf_counter() - started


async def store_memory(n: int) -> float:
    store = MemoryStore()
    async with LipsyncClient(KEY, base_url=BASE, store=store, poll_interval=3600) as client:
        ids = [f"m-{i}" for i in range(n)]
        done = _countdown(client, ids)
        started = time.perf_counter()
        for i in ids:
            await store.record_final(_state(i))
        return await _all_done(done, started)


async def store_redis(n: int, url: str) -> float:
    prefix = "b" + secrets.token_hex(4)
    store = RedisStore(url, prefix=prefix)
    async with LipsyncClient(KEY, base_url=BASE, store=store, poll_interval=3600) as client:
        ids = [f"{prefix}-{i}" for i in range(n)]
        done = _countdown(client, ids)
        await _own(store, ids)
        child = await _spawn("--child", "publish", "--redis-url", url, "--prefix", prefix,
                             "--jobs", str(n))  # fmt: skip
        assert child.stdin is not None
        started = time.perf_counter()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        elapsed = await _all_done(done, started)
        await asyncio.wait_for(child.wait(), 30)
        return elapsed


async def _post_all(url: str, ids: list[str]) -> None:
    sem = asyncio.Semaphore(64)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def one(job_id: str) -> None:
            async with sem, session.post(url, data=_body(job_id), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"delivery answered {response.status}")

        await asyncio.gather(*(one(i) for i in ids))


async def webhook_direct(n: int) -> float:
    receiver = WebhookReceiver(secret=SECRET)
    async with LipsyncClient(KEY, base_url=BASE, webhook=receiver, poll_interval=3600) as client:
        ids = [f"d-{i}" for i in range(n)]
        done = _countdown(client, ids)
        started = time.perf_counter()
        await _post_all(receiver.url, ids)
        return await _all_done(done, started)


async def webhook_routed(n: int, url: str) -> float:
    prefix = "w" + secrets.token_hex(4)
    port = _free_port()
    store: Store = RedisStore(url, prefix=prefix)
    async with LipsyncClient(KEY, base_url=BASE, store=store, poll_interval=3600) as client:
        ids = [f"{prefix}-{i}" for i in range(n)]
        done = _countdown(client, ids)
        await _own(store, ids)
        child = await _spawn("--child", "receive", "--redis-url", url, "--prefix", prefix,
                             "--port", str(port))  # fmt: skip
        try:
            started = time.perf_counter()
            await _post_all(f"http://127.0.0.1:{port}/webhooks/lipsync/{SECRET}", ids)
            return await _all_done(done, started)
        finally:
            await _stop(child)


async def run(args: argparse.Namespace, url: str) -> None:
    rows: list[tuple[str, str, int, float, float]] = []
    base = await store_memory(args.jobs)
    rows.append(("store", "in-process, MemoryStore (baseline)", args.jobs, base, base))
    routed = await store_redis(args.jobs, url)
    rows.append(("store", "two processes, RedisStore pub/sub", args.jobs, routed, base))
    base = await webhook_direct(args.posts)
    rows.append(("webhook", "POST to the awaiting worker (baseline)", args.posts, base, base))
    routed = await webhook_routed(args.posts, url)
    rows.append(("webhook", "POST to another worker, via Redis", args.posts, routed, base))

    print(f"{'level':<8} {'path':<40} {'deliveries':>10} {'seconds':>8} {'per s':>9} {'ratio':>6}")
    for level, path, n, seconds, baseline in rows:
        ratio = (n / seconds) / (n / baseline)
        print(f"{level:<8} {path:<40} {n:>10} {seconds:>8.3f} {n / seconds:>9,.0f} {ratio:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="store-level deliveries")
    parser.add_argument("--posts", type=int, default=5_000, help="webhook-level deliveries")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--child", choices=["publish", "receive"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args))
    elif args.redis_url:
        asyncio.run(run(args, args.redis_url))
    else:
        with _redis_server() as url:
            asyncio.run(run(args, url))


if __name__ == "__main__":
    main()
