"""Where a fan-out's client CPU goes, per job: py-spy samples grouped by what they are in.

Runs one fan-out (``--mode gather``: ``asyncio.gather`` of ``client.lipsync_image`` calls;
``many``: ``client.submit_many``; ``raw``: bare aiohttp POST + GET pairs) of N zero-length
jobs against the emulator in its own process, under ``py-spy record`` (raw collapsed stacks,
``--gil --nonblocking``, 250 Hz), then attributes each sample to the innermost frame that belongs to
a group: aiohttp, yarl/multidict, JSON, the SDK's own modules, attrs/cattrs, task machinery
(``create_task``, ``Task.__step``, futures, semaphores), the event loop and selector. Prints
a table of microseconds of client CPU per job per group.

Usage: ``python benchmarks/profile_fanout.py --mode gather --n 5000`` (needs ``py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _baselines import raw_pairs
from _bench import AUDIO, CONCURRENCY, HERE, IMAGE, Emulator, bounded, table

from lipsync_async import Job, LipsyncClient, LipsyncImageRequest

POLL = 0.05

GROUPS = (
    ("aiohttp", ("/aiohttp/",)),
    ("yarl/multidict", ("/yarl/", "/multidict/", "/propcache/")),
    ("JSON", ("/json/", "json.loads", "json.dumps")),
    ("attrs/cattrs", ("/attr/", "/attrs/", "/cattrs/", "<attrs generated", "<cattrs generated")),
    ("SDK: _http", ("lipsync_async/_http.py", "lipsync_async/_pacing.py")),
    ("SDK: _wire/_models", ("lipsync_async/_wire.py", "lipsync_async/_models.py")),
    ("SDK: _client", ("lipsync_async/_client.py",)),
    ("SDK: _tracker/_job", ("lipsync_async/_tracker.py", "lipsync_async/_job.py")),
    ("tasks/futures/locks", ("create_task", "tasks.py", "futures.py", "locks.py")),
    ("event loop/selector", ("base_events.py", "selector_events.py", "selectors.py", "events.py")),
)


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, marks in GROUPS:
            if any(m in frame for m in marks):
                return name
    return "other (benchmark, stdlib, interpreter)"


async def run(mode: str, n: int) -> float:
    async with Emulator() as emu:
        await emu.reset(job_duration=0.0)
        t0 = time.process_time()
        if mode == "raw":
            await bounded(raw_pairs(emu.base_url, emu.api_key, n, Counter()), 300.0, "raw")
        else:
            async with LipsyncClient(
                api_key=emu.api_key,
                base_url=emu.base_url,
                poll_interval=POLL,
                max_in_flight=CONCURRENCY,
            ) as client:

                async def fan() -> None:
                    if mode == "gather":
                        jobs = await asyncio.gather(
                            *(client.lipsync_image(image=IMAGE, audio=AUDIO) for _ in range(n))
                        )
                    else:
                        reqs = (LipsyncImageRequest(image=IMAGE, audio=AUDIO) for _ in range(n))
                        jobs = [
                            j
                            async for j in client.submit_many(reqs, concurrency=CONCURRENCY)
                            if isinstance(j, Job)
                        ]
                    async for _ in client.as_completed(jobs):
                        pass

                await bounded(fan(), 300.0, mode)
        return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("gather", "many", "raw"), default="gather")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        cpu = asyncio.run(run(args.mode, args.n))
        print(f"cpu {cpu:.3f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "stacks.txt")
        cmd = [
            "py-spy",
            "record",
            "--format",
            "raw",
            "--full-filenames",
            "--gil",
            "--nonblocking",
            "--rate",
            "250",
            "-o",
            str(out),
            "--",
            sys.executable,
            str(HERE / "profile_fanout.py"),
            "--child",
            "--mode",
            args.mode,
            "--n",
            str(args.n),
        ]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
        cpu = float(next(x for x in res.stdout.splitlines() if x.startswith("cpu")).split()[1])
        samples: collections.Counter[str] = collections.Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if "process_time" in stack and "run" not in stack:
                continue
            samples[classify(stack)] += int(count)
    total = sum(samples.values())
    per_job = cpu / args.n * 1e6
    rows = [
        [name, f"{c / total * 100:.1f}%", f"{c / total * per_job:.0f}"]
        for name, c in samples.most_common()
    ]
    rows.append(["total (process_time)", "100%", f"{per_job:.0f}"])
    print(
        table(
            f"Client CPU per job, {args.mode}, N={args.n:,} (py-spy, {total:,} samples; "
            f"load {os.getloadavg()[0]:.2f})",
            ["group (innermost frame)", "share", "us/job"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
