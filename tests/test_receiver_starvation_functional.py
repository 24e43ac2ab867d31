"""The receiver cannot starve its client: a connection flood under a 1,024 fd limit.

The client and its receiver run in a subprocess whose ``RLIMIT_NOFILE`` soft limit is 1,024
(``tests/starvation_worker.py``); this process runs the emulator and the attacker, which holds
2,000 idle connections and a few slowloris connections (trickled headers, never-ending chunked
bodies on the real URL) against the receiver while the worker submits 200 jobs.

The attacker counts a connection as open once its ``connect`` returns, which on Linux means the
handshake completed on the attacker's side only. Until the receiver's listen queue was deepened
(see ``_limits``), a burst overflowed its 128 places and, under SYN cookies, the kernel dropped
the last ACK of some handshakes: the receiver never had those connections, so it could never
close them, and the test waited 45 s for them (every such run had as many SYN cookies sent as
connections left open). ``tests/test_receiver_limits_functional.py`` pins the queue; here, a
run that fails says what the kernel dropped (``/proc/net/netstat``), so the two are told apart.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lipsync_async.testing import FakeLipsyncServer

from ._waiting import somaxconn

WORKER = Path(__file__).with_name("starvation_worker.py")
IDLE = 2_000
JOBS = 200
IDLE_TIMEOUT = 3.0  # the worker's receiver setting
QUEUE = 2_048  # listen queue the burst needs: 2,000 idle, 10 slow and deliveries, less accepted


def _kernel_drops() -> Counter[str]:
    """This network namespace's counts of handshakes the kernel dropped or answered with a SYN
    cookie (Linux; empty elsewhere)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return Counter()
    wanted = ("ListenOverflows", "ListenDrops", "SyncookiesSent")
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return Counter({k: int(row[k]) for k in wanted if k in row})
    return Counter()


async def _hold(port: int, opened: list[float], closed: list[float]) -> None:
    """One idle connection: note that it opened, and how long until the receiver closed it
    (counted from before the connect, so a slow accept counts against the receiver)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return  # refused (a full queue elsewhere than Linux, which drops the SYN instead)
    opened.append(t0)
    try:
        while await reader.read(1024):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()  # also when cancelled at the deadline: no transport left to the GC
    closed.append(time.monotonic() - t0)


async def _slowloris(port: int, path: str, chunked: bool, closed: list[float]) -> None:
    """Trickle a request forever: headers one byte at a time, or a chunked body that never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        if chunked:
            writer.write((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            while not reader.at_eof():
                writer.write(b"1\r\n \r\n")
                await writer.drain()
                await asyncio.sleep(0.2)
        else:
            for byte in head.encode() * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    break
            await reader.read()
    except ConnectionError:
        pass
    closed.append(time.monotonic() - t0)
    writer.close()


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
async def test_connection_flood_under_fd_limit_starves_only_the_receiver() -> None:
    """2,000 idle connections and slowloris senders against a receiver under a 1,024 fd soft
    limit, while 200 jobs run: no submit fails, all 200 resolve (by delivery, or by the
    fallback poll for a delivery the flood cost), no EMFILE reaches asyncio, and every idle
    or slow connection is closed within the documented timeouts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + 1_000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors here, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    if (queue := somaxconn()) is not None and queue < QUEUE:
        pytest.skip(f"net.core.somaxconn is {queue}: the kernel would drop part of the burst")
    drops_before = _kernel_drops()
    try:
        async with FakeLipsyncServer(job_duration=1.0, webhook_retries=7) as fake:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                fake.base_url,
                fake.api_key,
                str(JOBS),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                info: dict[str, Any] = json.loads(line)
                port, cap = int(info["port"]), int(info["cap"])
                assert cap + 256 + 128 <= 1024
                path = info["url"].split(f":{port}", 1)[1]
                opened: list[float] = []
                closed: list[float] = []
                slow_closed: list[float] = []
                holders = [asyncio.create_task(_hold(port, opened, closed)) for _ in range(IDLE)]
                await asyncio.sleep(0.5)
                slow = [
                    asyncio.create_task(_slowloris(port, path, chunked, slow_closed))
                    for chunked in (False, True) * 5
                ]
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
                try:
                    async with asyncio.timeout(45):
                        await asyncio.gather(*holders, *slow)
                except TimeoutError:
                    # Counted from the lists: by now the timeout has cancelled every task.
                    drops = _kernel_drops() - drops_before
                    raise AssertionError(
                        f"still open after 45 s: {len(opened) - len(closed)} of {len(opened)} "
                        f"idle, {10 - len(slow_closed)} of 10 slow; kernel: {dict(drops)}"
                    ) from None
                done: dict[str, Any] = json.loads(
                    await asyncio.wait_for(proc.stdout.readline(), 60)
                )
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert done["submit_failed"] == 0, done["submit_failures"]
    assert done["resolved"] == JOBS, done
    assert done["exception_handler_calls"] == 0, done
    assert len(closed) == len(opened) and len(opened) > cap
    assert max(closed) < IDLE_TIMEOUT + 2.0, max(closed)
    assert len(slow_closed) == 10 and max(slow_closed) < IDLE_TIMEOUT + 3.0, slow_closed
    assert done["refused"] > 0
