"""Where a status read's client CPU goes: the SDK's scheduler against a raw aiohttp GET loop.

The same pattern as ``bench_scale.py``'s read-CPU row (issue 20: a status read costs the client
<= 1.1x a raw GET): 2,000 jobs at the emulator (in its own process, jobs that never finish),
then for ``--window`` seconds either the SDK's scheduler reads them (``--mode sdk``:
``poll_interval=0.05``, 64 in flight, so its readers never idle) or 64 workers ``GET`` them
with bare aiohttp (``--mode raw``, same connection limit). Under ``py-spy record`` (raw
collapsed stacks, ``--gil --nonblocking``, 250 Hz) each sample taken inside the window is
attributed to the innermost frame of a group (``profile_fanout.GROUPS``); the table gives
microseconds of client CPU per read per group. ``--cprofile`` prints call counts instead.

Usage: ``python benchmarks/profile_reads.py --mode {sdk,raw} [--window 10] [--cprofile]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _bench import AUDIO, CONCURRENCY, HERE, IMAGE, Emulator, table
from profile_fanout import classify

from lipsync_async import LipsyncClient

JOBS = 2000


async def _ids(base_url: str, api_key: str) -> list[str]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    body = json.dumps({"formState": {"image": IMAGE, "audio": AUDIO}}).encode()
    async with aiohttp.ClientSession() as session:

        async def one() -> str:
            async with session.post(f"{base_url}/lipsync-image", data=body, headers=headers) as r:
                job_id: str = json.loads(await r.read())["id"]
                return job_id

        return list(await asyncio.gather(*(one() for _ in range(JOBS))))


def _go(window: float) -> None:
    """Tell the parent the window starts now (it attaches py-spy for ``window`` seconds)."""
    print(f"go {os.getpid()} {window}", flush=True)


async def raw(base_url: str, api_key: str, ids: list[str], window: float) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {api_key}"}
    count = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        it = iter(ids * 1000)

        async def worker() -> None:
            nonlocal count
            for job_id in it:
                if time.perf_counter() >= stop:
                    return
                async with s.get(f"{base_url}/jobs/{job_id}", headers=headers) as r:
                    json.loads(await r.read())
                count += 1

        # Warm: every connection open, as the SDK's one-second warm-up leaves it.
        stop = time.perf_counter() + 1.0
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        count = 0
        _go(window)
        stop = time.perf_counter() + window
        c0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.process_time() - c0, count


async def sdk(base_url: str, api_key: str, ids: list[str], window: float) -> tuple[float, int]:
    async with LipsyncClient(
        api_key=api_key, base_url=base_url, poll_interval=0.05, max_in_flight=CONCURRENCY
    ) as client:
        jobs = [client.job(i) for i in ids]
        for job in jobs:
            client._tracker.awaited(job)  # start polling without awaiting (private)
        await asyncio.sleep(1.0)
        r0 = client.stats["status_reads"]
        _go(window)
        c0 = time.process_time()
        await asyncio.sleep(window)
        return time.process_time() - c0, client.stats["status_reads"] - r0


async def child(mode: str, window: float, use_cprofile: bool) -> None:
    async with Emulator() as emu:
        await emu.reset(job_duration=3600.0)
        ids = await _ids(emu.base_url, emu.api_key)
        fn = sdk if mode == "sdk" else raw
        if use_cprofile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            cpu, reads = await fn(emu.base_url, emu.api_key, ids, window)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        else:
            cpu, reads = await fn(emu.base_url, emu.api_key, ids, window)
        print(f"cpu {cpu:.4f} reads {reads}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("sdk", "raw"), default="sdk")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--top", type=int, default=0, help="also the N hottest functions")
    args = parser.parse_args()
    if args.child or args.cprofile:
        asyncio.run(child(args.mode, args.window, args.cprofile))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "stacks.txt")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "profile_reads.py"), "--child", "--mode", args.mode,
             "--window", str(args.window)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        go = proc.stdout.readline().split()
        if not go or go[0] != "go":
            raise RuntimeError(f"the child did not start: {go}")
        # Attached for the window only: the emulator's start and the 2,000 submits are left out.
        spy = subprocess.run(
            ["py-spy", "record", "--format", "raw", "--full-filenames", "--gil", "--nonblocking",
             "--rate", "250", "--duration", str(max(1, int(args.window) - 1)), "-o", str(out),
             "--pid", go[1]],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        line = proc.stdout.readline()
        proc.wait(60)
        if not out.exists():
            raise RuntimeError(spy.stderr)
        cpu, reads = float(line.split()[1]), int(line.split()[3])
        samples: collections.Counter[str] = collections.Counter()
        hottest: collections.Counter[str] = collections.Counter()  # innermost frame, by function
        inclusive: collections.Counter[str] = collections.Counter()  # SDK functions on the stack
        for x in out.read_text().splitlines():
            stack, _, count = x.rpartition(" ")
            samples[classify(stack)] += int(count)
            frames = stack.split(";")
            hottest[frames[-1]] += int(count)
            for f in {f.rsplit(":", 1)[0] for f in frames if "lipsync_async/" in f}:
                inclusive[f] += int(count)
    total = sum(samples.values())
    per_read = cpu / reads * 1e6
    for title, counter in (("innermost", hottest), ("inclusive, SDK", inclusive)):
        print(f"-- {title}")
        for name, c in counter.most_common(args.top):
            print(f"{c / total * per_read:7.1f} us  {name}")
    rows = [
        [name, f"{c / total * 100:.1f}%", f"{c / total * per_read:.1f}"]
        for name, c in samples.most_common()
    ]
    rows.append(["total (process_time)", "100%", f"{per_read:.1f}"])
    print(
        table(
            f"Client CPU per status read, {args.mode}, {reads:,} reads in {args.window:.0f} s "
            f"(py-spy, {total:,} samples; load {os.getloadavg()[0]:.2f})",
            ["group (innermost frame)", "share", "us/read"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
