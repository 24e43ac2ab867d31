"""Wait for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path


async def until(condition: Callable[[], object], *, timeout: float = 5.0, what: str = "") -> None:
    """Return as soon as ``condition()`` is true; fail the test after ``timeout`` seconds.

    For conditions owned by another component (a server's counters, a store's listeners),
    which offer no event to await. A test waits exactly as long as it must, never a guess.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.005)


def somaxconn() -> int | None:
    """The kernel's cap on a listen queue (``net.core.somaxconn``), where it can be read.

    Tests that open a burst of connections skip below what their burst needs: past the queue,
    the kernel drops handshakes (see ``lipsync_async._limits``), which is the kernel's doing.
    """
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None
