"""Benchmark 7: how long the command line takes to start (issue 18: under 150 ms).

Wall time of ``lipsync-async --help`` and ``lipsync-async cost --resolution 720p --seconds 12``
(offline commands: neither needs aiohttp or the client), median of 10 rounds (wall, and the
child's user + system CPU, steadier on a loaded machine), interleaved with
two baselines measured in the same rounds: the bare interpreter (``python -c pass``, the floor)
and ``python -c "import aiohttp"`` (what every command paid when the package imported its
client eagerly). ``python -X importtime`` shows where the rest goes. The package's bytecode is
compiled first (``compileall``), as installing a wheel does: with ``PYTHONDONTWRITEBYTECODE``
set (this machine sets it) an editable install would otherwise compile every module per run.

Usage: ``python benchmarks/bench_cli_start.py [--quick] [--before DIR]`` (``--quick``: 3 rounds)
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bench import emit, table

BIN = Path(sys.executable).parent
TARGET_MS = 150.0
RUNS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    'python -c "import aiohttp"': [sys.executable, "-c", "import aiohttp"],
    "lipsync-async --help": [str(BIN / "lipsync-async"), "--help"],
    "lipsync-async cost ...": [
        str(BIN / "lipsync-async"),
        "cost",
        "--resolution",
        "720p",
        "--seconds",
        "12",
    ],
}


def before(tree: str) -> dict[str, list[str]]:
    """The same two commands on another checkout of the package (``--before DIR``: a tree
    holding ``lipsync_async/``, e.g. ``git archive <commit> lipsync_async | tar -x -C DIR``)."""
    run = f"import sys; sys.path.insert(0, {tree!r}); from lipsync_async.cli import main; main()"
    return {
        "before: --help": [sys.executable, "-c", run, "--help"],
        "before: cost ...": [sys.executable, "-c", run, *RUNS["lipsync-async cost ..."][1:]],
    }


def once(cmd: list[str]) -> tuple[float, float]:
    """Wall ms and CPU ms (user + system) of one run."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    wall = (time.perf_counter() - t0) * 1e3
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1e3


def main(quick: bool, tree: str | None) -> None:
    rounds = 3 if quick else 10
    runs = {**RUNS, **(before(tree) if tree else {})}
    package = Path(__file__).resolve().parent.parent / "lipsync_async"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    load_before = os.getloadavg()[0]
    if tree:
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], check=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, cmd in runs.items():
            wall, used = once(cmd)
            times[name].append(wall)
            cpu[name].append(used)
    load_after = os.getloadavg()[0]
    floor = statistics.median(times["python -c pass (floor)"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        is_cli = name.startswith(("lipsync-async", "before"))
        rows.append(
            [
                name,
                f"{median:.0f}",
                f"{min(values):.0f}-{max(values):.0f}",
                f"+{median - floor:.0f}",
                f"{statistics.median(cpu[name]):.0f}",
                f"< {TARGET_MS:.0f}" if is_cli else "",
                ("yes" if median < TARGET_MS else "**no**") if is_cli else "",
            ]
        )
    text = table(
        f"Command-line start, wall ms, median of {rounds} interleaved rounds (load average "
        f"{load_before:.2f} before, {load_after:.2f} after)",
        ["command", "median ms", "range", "over the floor", "CPU ms", "target", "holds"],
        rows,
    )
    emit("cli_start", text, {"times_ms": times, "cpu_ms": cpu})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", help="a tree holding an older lipsync_async/ to compare")
    args = parser.parse_args()
    main(args.quick, args.before)
