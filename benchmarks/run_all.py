"""Run every benchmark, then write ``benchmarks/RESULTS.md`` and ``benchmarks/results.png``.

Usage::

    .venv/bin/python benchmarks/run_all.py            # full sizes (~10-15 minutes)
    .venv/bin/python benchmarks/run_all.py --quick    # small sizes, about a minute and a half;
                                                      # add --write to overwrite RESULTS.md

Each benchmark runs in its own interpreter (so one's memory and loop state cannot skew the
next) and starts its own emulator process. A failure or a timeout of one benchmark is reported
and the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    ("fanout", "bench_fanout.py", 1500.0),
    ("gc_shape", "bench_gc_shape.py", 900.0),
    ("requests", "bench_requests.py", 300.0),
    ("memory", "bench_memory.py", 1500.0),
    ("receiver", "bench_receiver.py", 600.0),
    ("ratelimit", "bench_ratelimit.py", 300.0),
    ("scale", "bench_scale.py", 5400.0),
    ("gc_floor", "bench_gc_floor.py", 1800.0),
    ("cli_start", "bench_cli_start.py", 300.0),
)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp

    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "os": platform.platform(),
    }


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.5))
    fan = results.get("fanout", {}).get("results", [])
    for client in ("raw aiohttp", "SDK", "SDK submit_many", "naive aiohttp", "naive httpx"):
        pts = sorted(
            (r["n"], r["jobs_per_s"]) for r in fan if r["client"] == client and "jobs_per_s" in r
        )
        if pts:
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=client)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("jobs (N)")
    ax1.set_ylabel("jobs/s (submit + poll to completion)")
    ax1.set_title("Fan-out throughput")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    mem = results.get("memory", {}).get("results", [])
    for client in ("SDK", "naive aiohttp", "naive httpx", "ids only"):
        for method, style in (("tracemalloc", "-"), ("rss", "--")):
            pts = sorted((r["measured_n"], r[method]) for r in mem if r["client"] == client)
            if pts:
                ax2.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    marker="o",
                    label=f"{client} ({method})",
                )
    ax2.axhline(1024, color="grey", linewidth=0.8, linestyle=":")
    ax2.text(ax2.get_xlim()[0] if mem else 1, 1100, "1 KiB target", color="grey", fontsize=8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("pending jobs")
    ax2.set_ylabel("bytes per pending job")
    ax2.set_title("Memory per pending job")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7)
    scale_curve(ax3, results.get("scale", {}).get("mem", {}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_curve(ax: Any, mem: dict[str, dict[str, float]]) -> None:
    """Bytes per pending job from 10k to 1M (``bench_scale.py``), both modes, with the budget."""
    for mode, colour in (("polling", "tab:blue"), ("webhook", "tab:orange")):
        for key, style, what in (("traced", "-", "tracemalloc"), ("per_job", "--", "RSS")):
            pts = sorted(
                (int(name.split()[1]), row[key])
                for name, row in mem.items()
                if name.split()[0] == mode and key in row
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    color=colour,
                    marker="o",
                    label=f"{mode} ({what})",
                )
    ax.axhline(256, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(300, color="grey", linewidth=0.8, linestyle="-.")
    ax.set_xscale("log")
    ax.set_ylim(0, 520)
    ax.set_xlabel("pending jobs, one process (stub transport)")
    ax.set_ylabel("bytes per pending job")
    ax.set_title("Scale curve: 256 B traced / 300 B RSS budgets")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--write", action="store_true", help="with --quick: write RESULTS.md")
    parser.add_argument("--only", nargs="*", help="run only these (fanout, memory, ...)")
    parser.add_argument(
        "--resume", metavar="DIR", help="keep results DIR holds (<name>.json), run the others"
    )
    args = parser.parse_args()
    write = args.write or not args.quick
    results: dict[str, Any] = {}
    texts: list[str] = []
    failed: list[str] = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.resume or scratch
        env = {**os.environ, "BENCH_RESULTS_DIR": tmp, "PYTHONUNBUFFERED": "1"}
        for name, script, limit in BENCHMARKS:
            if args.only and name not in args.only:
                continue
            saved = Path(tmp, f"{name}.json")
            if args.resume and saved.exists():
                out = json.loads(saved.read_text())
                results[name] = out["data"]
                texts.append(out["text"])
                print(f"== {script}: kept from {tmp}", flush=True)
                continue
            cmd = [sys.executable, str(HERE / script)] + (["--quick"] if args.quick else [])
            print(f"== {script}{' --quick' if args.quick else ''}", flush=True)
            t0 = time.perf_counter()
            try:
                subprocess.run(cmd, env=env, check=True, timeout=limit)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                print(f"!! {script} failed: {exc}", flush=True)
                failed.append(script)
                continue
            print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
            out = json.loads(Path(tmp, f"{name}.json").read_text())
            results[name] = out["data"]
            texts.append(out["text"])
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    if write and results:
        info = machine()
        command = ".venv/bin/python benchmarks/run_all.py" + (
            " --quick --write" if args.quick else ""
        )
        if args.resume:
            command += " --resume DIR"
            when = (
                f"assembled {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the runs "
                "saved in DIR: see the last note; each table gives its own run's load average"
            )
        else:
            when = (
                f"{elapsed / 60:.1f} min, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
                f"; load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}"
            )
        header = [
            "# Benchmark results",
            "",
            f"Command: `{command}` ({when}).",
            "",
            f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
            f"aiohttp {info['aiohttp']}, {info['os']}. The machine can be shared: other "
            "processes may run at the same time, so wall-clock figures are noisy; CPU time per "
            "job is the steadier figure.",
            "",
            "Every benchmark runs the emulator (`lipsync_async.testing.FakeLipsyncServer`) in a "
            "separate process (`benchmarks/_emulator_proc.py`) on 127.0.0.1, so the client and "
            "the server each have a core. Chart: [results.png](results.png).",
            "",
        ]
        notes_path = HERE / "NOTES.md"
        notes = notes_path.read_text() if notes_path.exists() else ""
        (HERE / "RESULTS.md").write_text(
            "\n".join(header) + "\n" + "\n\n".join(texts) + "\n\n" + notes
        )
        (HERE / "results.json").write_text(json.dumps(results, indent=1))
        chart(results, HERE / "results.png")
        print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
