"""The SDK's own client CPU per status read and per submit, without sockets (branch perf2).

Over real HTTP, a round's CPU per read swings by 10-20% on a shared machine, more than what
one change to the SDK's own code moves. Here both sides go through the same in-process stub
``ClientSession`` (``request()`` answers canned JSON after one loop yield, as
``bench_scale.StubSession`` does), so aiohttp's connection handling is out of both and the
difference between them is the SDK's own work:

- ``reads``: the client's scheduler reading 2,000 jobs due every 50 ms (64 in flight) against
  64 workers looping ``session.request("GET", ...)`` + ``json.loads``;
- ``submits``: ``client.submit_many`` of a generator building ``LipsyncImageRequest`` s (as
  ``bench_fanout.py`` does) against 64 workers posting one pre-serialised body.

Each round is one SDK run beside one raw run (interleaved); printed: the medians of the SDK's
and the raw side's CPU per operation and of their per-round difference (the SDK's own cost).
To compare two trees, run it once per tree with ``PYTHONPATH=<tree>``, alternating.

Usage: ``python benchmarks/bench_own_cpu.py {reads,submits} [--rounds 5] [--n 5000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
import warnings
from typing import Any

import aiohttp
from _bench import AUDIO, CONCURRENCY, IMAGE
from bench_scale import _READ, _Answer, _Exchange, sdk_read_round

from lipsync_async import Job, LipsyncClient, LipsyncImageRequest

BASE = "http://127.0.0.1:9/api/v1"

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # aiohttp discourages subclassing

    class _Stub(aiohttp.ClientSession):
        """A fresh job per POST; ``processing`` for the id a GET names."""

        def request(self, method: str, str_or_url: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if method == "POST":
                raw = b'{"id":"%s","status":"processing"}' % str(uuid.uuid4()).encode()
            else:
                raw = _READ % str(str_or_url).rsplit("/", 1)[1].encode()
            return _Exchange(_Answer(raw))


async def _raw(session: aiohttp.ClientSession, what: str, ops: list[str], window: float) -> float:
    """CPU per operation of 64 raw workers: ``len(ops)`` POSTs, or GETs for ``window`` s."""
    count = 0
    stop = time.perf_counter() + window
    it = iter(ops * (1 if what == "submits" else 1000))
    headers = {"Authorization": "Bearer sk_bench", "Content-Type": "application/json"}
    body = json.dumps({"formState": {"image": IMAGE, "audio": AUDIO}}).encode()

    async def worker() -> None:
        nonlocal count
        for job_id in it:
            if what == "submits":
                async with session.request(
                    "POST", f"{BASE}/lipsync-image", data=body, headers=headers
                ) as r:
                    json.loads(await r.read())
            else:
                if time.perf_counter() >= stop:
                    return
                async with session.request("GET", f"{BASE}/jobs/{job_id}", headers=headers) as r:
                    json.loads(await r.read())
            count += 1

    c0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - c0) / count * 1e6


async def _sdk(client: LipsyncClient, what: str, ops: list[str], window: float) -> float:
    """CPU per operation of the SDK: ``len(ops)`` submits, or its reads for ``window`` s."""
    if what != "submits":
        cpu, count = await sdk_read_round(client, ops, window, warm=0.2, settle=0.05)
        return cpu / count * 1e6
    c0 = time.process_time()
    outcomes = [
        outcome
        async for outcome in client.submit_many(
            (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in ops),
            concurrency=CONCURRENCY,
        )
    ]
    cpu = time.process_time() - c0
    count = len(outcomes)
    for job in outcomes:
        if isinstance(job, Job):
            job.cancel()
    await asyncio.sleep(0.05)
    return cpu / count * 1e6


async def main(what: str, rounds: int, n: int) -> None:
    ops = [str(uuid.uuid4()) for _ in range(n if what == "submits" else 2000)]
    session = _Stub()
    try:
        async with LipsyncClient(
            api_key="sk_bench",
            base_url=BASE,
            session=session,
            poll_interval=0.05 if what == "reads" else 3600.0,
            max_in_flight=CONCURRENCY,
        ) as client:
            await _raw(session, what, ops, 1.0)  # warm both
            await _sdk(client, what, ops, 1.0)
            raw: list[float] = []
            sdk: list[float] = []
            for _ in range(rounds):
                raw.append(await _raw(session, what, ops, 1.0))
                sdk.append(await _sdk(client, what, ops, 1.0))
    finally:
        await session.close()
    own = [s - r for s, r in zip(sdk, raw, strict=True)]
    print(
        json.dumps(
            {
                "what": what,
                "sdk_us": round(statistics.median(sdk), 1),
                "raw_us": round(statistics.median(raw), 1),
                "sdk_own_us": round(statistics.median(own), 1),
                "own_per_round": [round(x, 1) for x in own],
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("reads", "submits"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000, help="submits per round")
    args = parser.parse_args()
    asyncio.run(main(args.what, args.rounds, args.n))
