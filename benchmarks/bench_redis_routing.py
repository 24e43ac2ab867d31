"""Deliveries routed through Redis by fleet size: owner's channel against broadcast, one run.

A fleet of K worker processes (K = 2, 4, 8), each light: one ``LipsyncClient`` with a
``WebhookReceiver`` and a ``RedisStore``, holding its share of M pending jobs (recorded in the
store as its own, attached with ``client.job(id)``; no API request is ever made). The benchmark
process POSTs one webhook per job, always to a worker that does not own the job (worker
``owner + 1``: the load balancer's worst case), so every delivery crosses Redis: the receiving
worker records it and the owner's job resolves. Two designs, measured alike, interleaved:

* **routed** (the store today): the record script publishes to the owner's channel only;
  each worker subscribes to its own;
* **broadcast** (the store before issue 14, kept here as the baseline): the same store, but
  every worker also listens to every worker's channel (one ``PSUBSCRIBE``), so each delivery
  reaches every worker, as the old single ``{prefix}:deliveries`` channel did.

Per design and K: deliveries per second (first POST to the last job resolved at its owner),
Redis commands per delivery (``INFO commandstats`` deltas, ``info`` itself excluded; the
commands a script runs count, and so do the script calls: a receiver records the deliveries
that arrive while its previous call is in flight in one call, so smaller batches on more
receivers add a fraction of a call per delivery), channel
messages the workers received per delivery, and CPU per delivery of redis-server and of the
workers together. The ratio column is routed against broadcast at the same K.

Usage: ``python benchmarks/bench_redis_routing.py [--deliveries 3000] [--sizes 2,4,8]``
(``--quick``: 1,200). Starts its own ``redis-server`` on a free loopback port. Every wait is
bounded in time (``--max-seconds`` per measurement).
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
from typing import Any

import aiohttp
from _bench import emit, fmt, table

from lipsync_async import Job, LipsyncClient, WebhookReceiver
from lipsync_async.stores import PendingRecord, RedisStore

SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a loopback benchmark's URL token
KEY = "sk_bench_not_used"  # no API request is ever made: jobs are attached, not submitted
BASE = "http://127.0.0.1:9"
HERE = str(Path(__file__).resolve())
DESIGNS = ("broadcast", "routed")
CONCURRENCY = 64


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
def _redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
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
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


# -- the broadcast baseline --------------------------------------------------------------------


class BroadcastStore(RedisStore):
    """The store as it was before issue 14: every delivery reaches every worker.

    Same scripts and keys as :class:`RedisStore`; its subscriber listens to every worker's
    channel (``PSUBSCRIBE {prefix}:to:*``) instead of its own. Redis then sends each delivery
    to all K workers, and each one parses it and drops what it does not track: what the single
    ``{prefix}:deliveries`` channel cost. ``heard`` counts every message received. (No
    reconnects or resync: the benchmark's Redis does not go away.)
    """

    heard = 0

    async def _subscribe_forever(self) -> None:
        client = self._client(0)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(self._head + "to:*")
            self._subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "pmessage":
                    self.heard += 1
                    self._on_message(message["data"])
        finally:
            self._subscribed.clear()
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()


# -- a worker process ----------------------------------------------------------------------------


def _store(design: str, url: str, prefix: str) -> RedisStore:
    return (BroadcastStore if design == "broadcast" else RedisStore)(url, prefix=prefix)


def _heard(store: RedisStore) -> int:
    return int(getattr(store, "heard", 0) or store.routed)


async def _worker(args: argparse.Namespace) -> None:
    """Hold ``args.ids`` pending (owned by this worker), receive on ``args.port``; report."""
    store = _store(args.design, args.redis_url, args.prefix)
    receiver = WebhookReceiver(port=args.port, secret=SECRET, store=store)
    client = LipsyncClient(
        KEY, base_url=BASE, webhook=receiver, store=store, poll_interval=3600,
        webhook_grace=3600,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    ids: list[str] = json.loads(args.ids)
    left = len(ids)
    finished = 0.0

    def one(_: Job) -> None:
        nonlocal left, finished
        left -= 1
        if left == 0:
            finished = time.time()
            print(json.dumps({"done": finished}), flush=True)

    async with client:
        sem = asyncio.Semaphore(32)

        async def record(job_id: str) -> None:
            async with sem:
                await store.add_pending(
                    PendingRecord(id=job_id, endpoint="lipsync-image", submitted_at=time.time())
                )

        await asyncio.gather(*(record(i) for i in ids))
        for job_id in ids:
            client.job(job_id).add_done_callback(one)  # a callback: awaiting would poll
        cpu0 = time.process_time()
        print(json.dumps({"ready": True}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
        report = {"cpu": time.process_time() - cpu0, "heard": _heard(store), "left": left}
        print(json.dumps(report), flush=True)


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    async def line(self, limit: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), limit)
        if not raw:
            raise RuntimeError(f"worker exited ({await self.proc.wait()})")
        out: dict[str, Any] = json.loads(raw)
        return out

    async def stop(self, limit: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        report = await self.line(limit)
        await asyncio.wait_for(self.proc.wait(), limit)
        return report


async def _spawn(design: str, url: str, prefix: str, ids: list[str]) -> Worker:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, HERE, "--child", design, "--redis-url", url, "--prefix", prefix,
        "--port", str(port), "--ids", json.dumps(ids),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return Worker(proc, port)


# -- measuring -----------------------------------------------------------------------------------


def _redis_counters(port: int) -> tuple[int, int, float]:
    """Commands executed so far (``info`` excluded; a script's own commands included), of
    which script calls (``EVALSHA``/``EVAL``), and redis-server's CPU seconds."""
    import redis

    with redis.Redis(port=port) as r:
        stats: dict[str, Any] = r.info("commandstats")
        cpu: dict[str, Any] = r.info("cpu")
    calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    scripts = sum(
        int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    return calls, scripts, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _post_all(targets: list[tuple[str, str]]) -> None:
    it = iter(targets)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def poster() -> None:
            for url, job_id in it:
                async with session.post(url, data=_body(job_id), headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"delivery answered {response.status}")

        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))


async def measure(design: str, size: int, n: int, port: int, limit: float) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "r" + secrets.token_hex(4)
    ids = [f"{prefix}-{i}" for i in range(n)]
    owned = [ids[w::size] for w in range(size)]
    workers = [await _spawn(design, url, prefix, owned[w]) for w in range(size)]
    try:
        for w in workers:
            ready = await w.line(limit)
            assert ready.get("ready"), ready
        # Delivery i goes to the worker after its owner's: every one crosses Redis.
        targets = [
            (f"http://127.0.0.1:{workers[(i + 1) % size].port}/webhooks/lipsync/{SECRET}", job)
            for i, job in enumerate(ids)
        ]
        calls0, scripts0, cpu0 = await asyncio.to_thread(_redis_counters, port)
        started = time.time()
        async with asyncio.timeout(limit):
            await _post_all(targets)
            done = [await w.line(limit) for w in workers]
        elapsed = max(d["done"] for d in done) - started
        calls1, scripts1, cpu1 = await asyncio.to_thread(_redis_counters, port)
        reports = [await w.stop(limit) for w in workers]
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
    assert all(r["left"] == 0 for r in reports), reports
    return {
        "design": design,
        "workers": size,
        "deliveries": n,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "commands": (calls1 - calls0) / n,
        "scripts": (scripts1 - scripts0) / n,
        "messages": sum(r["heard"] for r in reports) / n,
        "redis_us": (cpu1 - cpu0) / n * 1e6,
        "workers_us": sum(r["cpu"] for r in reports) / n * 1e6,
    }


async def run(args: argparse.Namespace, port: int) -> None:
    results: list[dict[str, Any]] = []
    for size in args.sizes:
        for design in DESIGNS:
            row = await measure(design, size, args.deliveries, port, args.max_seconds)
            print(
                f"  {design:<9} K={size}: {row['per_s']:,.0f}/s, {row['commands']:.2f} "
                f"commands, {row['messages']:.2f} messages per delivery",
                file=sys.stderr,
            )
            results.append(row)
    by = {(r["design"], r["workers"]): r for r in results}
    rows = []
    for size in args.sizes:
        for design in DESIGNS:
            r, base = by[(design, size)], by[("broadcast", size)]
            rows.append([
                design, str(size), fmt(r["deliveries"]), fmt(r["per_s"]),
                f"{r['per_s'] / base['per_s']:.2f}x", fmt(r["commands"], 2), fmt(r["scripts"], 2),
                fmt(r["messages"], 2), fmt(r["redis_us"]), fmt(r["workers_us"]),
            ])  # fmt: skip
    title = (
        f"Routing by fleet size ({args.deliveries:,} webhook deliveries per run, each POSTed "
        "to a worker that does not own the job; redis-server on 127.0.0.1; ratio: deliveries/s "
        "against broadcast at the same K)"
    )
    headers = [
        "design", "workers", "deliveries", "deliveries/s", "ratio", "Redis cmds/delivery",
        "of which script calls",
        "messages/delivery", "Redis CPU us/delivery", "workers CPU us/delivery",
    ]  # fmt: skip
    emit("redis_routing", table(title, headers, rows), {"results": results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--quick", action="store_true", help="1,200 deliveries per run")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per wait")
    parser.add_argument("--child", choices=DESIGNS, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.design = args.child
        asyncio.run(_worker(args))
        return
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.deliveries = 1200
    with _redis_server() as port:
        asyncio.run(run(args, port))


if __name__ == "__main__":
    main()
