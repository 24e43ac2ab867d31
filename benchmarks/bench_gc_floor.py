"""What a full collection costs per pending job, against the floor, in one process (issue 20).

Issue 20 asks for the longest stall at 1M pending within 1.5x of "a full collection with as many
bare slotted objects alive". This benchmark splits the gap between that floor and the SDK into
what any design that keeps one object per pending job must pay and what is the SDK's own:

1. **bare**: N objects of a class with one empty slot, in a list: the issue's floor.
2. **minimal job**: N objects shaped like the least a pending job can be (three slots and a weak
   reference slot: its id, state and place, the state and place shared), each holding its own
   UUID string, kept in a list (the user's) and a ``dict`` from id to object (a delivery must
   find its job by id): what a job costs the collector in *any* design with one object per job.
3. **SDK jobs**: N jobs submitted through ``LipsyncClient.lipsync_image`` on the stub transport
   of ``bench_scale.py`` (the real validation, converter, tracker and ``Job``; a one-hour poll
   interval so nothing resolves), kept in a list as a user does.

All three are measured in the same child process, after the SDK's submits (the heap of a process
that made a million requests is part of what a collection pays for), with everything else set
aside by ``gc.freeze()`` (a measuring tool here; the library never calls it): the interpreter's
own objects before the submits are frozen before the jobs are made, the jobs are frozen before
the bare and minimal objects are. Figure: the CPU time (``time.thread_time``) of a full
``gc.collect()``, the best of seven, per case; three child processes, the median child shown.

Usage: ``python benchmarks/bench_gc_floor.py [--n 1000000] [--children 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

from _bench import emit, table
from bench_scale import STUB_NOTE, StubSession, _client, _submits

from lipsync_async import Job


class _Bare:
    __slots__ = ("a",)


class _Minimal:
    __slots__ = ("__weakref__", "id", "place", "state")

    def __init__(self, job_id: str, state: object, place: object) -> None:
        self.id = job_id
        self.state = state
        self.place = place


def collect_ms(times: int = 7) -> float:
    """The CPU time of a full collection, the best of ``times``, in ms."""
    best = float("inf")
    for _ in range(times):
        t0 = time.thread_time()
        gc.collect()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


async def child(n: int) -> dict[str, float]:
    session = StubSession()
    out: dict[str, float] = {}
    try:
        client = _client(session, "polling", 3600.0)
        await client.__aenter__()
        gc.collect()
        gc.freeze()  # the interpreter, the modules and the client: set aside
        empty = collect_ms()
        jobs: list[Job] = []
        t0 = time.perf_counter()
        async with asyncio.timeout(120.0 + n / 1000.0):
            await _submits(client, n, jobs)
        out["submit_s"] = time.perf_counter() - t0
        assert client.stats["pending"] == n, client.stats
        gc.collect()
        out["sdk_ms"] = collect_ms() - empty
        gc.freeze()  # the jobs: set aside too

        empty = collect_ms()
        bare = [_Bare() for _ in range(n)]
        out["bare_ms"] = collect_ms() - empty
        del bare
        gc.collect()

        state, place = (), object()
        objs: list[_Minimal] = []
        table_: dict[str, _Minimal] = {}
        for _ in range(n):
            obj = _Minimal(str(uuid.uuid4()), state, place)
            objs.append(obj)
            table_[obj.id] = obj
        out["minimal_ms"] = collect_ms() - empty
        del objs, table_, obj
        gc.unfreeze()
        for job in jobs:
            job.cancel()
        await client.__aexit__(None, None, None)
    finally:
        await session.close()
    return out


def main(n: int, children: int) -> None:
    load_before = os.getloadavg()[0]
    runs = []
    for _ in range(children):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(n)],
            capture_output=True,
            text=True,
            timeout=600.0 + n / 500.0,
            check=True,
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  gc floor child: {runs[-1]}", flush=True)
    load_after = os.getloadavg()[0]
    by_sdk = sorted(runs, key=lambda r: r["sdk_ms"])
    mid = by_sdk[(len(by_sdk) - 1) // 2]
    bare = mid["bare_ms"]
    rows = [
        [
            "bare slotted objects, in a list (the issue's floor)",
            f"{bare:.1f}",
            "1.00x",
            ", ".join(f"{r['bare_ms']:.1f}" for r in runs),
        ],
        [
            "minimal job: 3 slots + weakref, its own id string, in a list and an id dict",
            f"{mid['minimal_ms']:.1f}",
            f"{mid['minimal_ms'] / bare:.2f}x",
            ", ".join(f"{r['minimal_ms']:.1f}" for r in runs),
        ],
        [
            "SDK pending jobs (submitted through the client)",
            f"{mid['sdk_ms']:.1f}",
            f"{mid['sdk_ms'] / bare:.2f}x (vs minimal {mid['sdk_ms'] / mid['minimal_ms']:.2f}x)",
            ", ".join(f"{r['sdk_ms']:.1f}" for r in runs),
        ],
    ]
    text = table(
        f"A full collection with {n:,} pending, CPU ms (best of 7 per child, the median child "
        f"of {children} by the SDK row; load average {load_before:.2f} before, "
        f"{load_after:.2f} after; {STUB_NOTE})",
        ["what is alive (all else frozen)", "full gc.collect(), ms CPU", "vs floor", "children"],
        rows,
    )
    print(text)
    emit(
        "gc_floor",
        text,
        {
            "n": n,
            "runs": runs,
            "median": mid,
            "median_sdk_ms": statistics.median(r["sdk_ms"] for r in runs),
        },
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.stdout.write(json.dumps(asyncio.run(child(int(sys.argv[2])))) + "\n")
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--n", type=int, default=1_000_000)
        parser.add_argument("--children", type=int, default=3)
        parser.add_argument("--quick", action="store_true", help="N=100,000, one child")
        args = parser.parse_args()
        if args.quick:
            main(100_000, 1)
        else:
            main(args.n, args.children)
