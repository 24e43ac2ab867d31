"""Ending the SDK's own background tasks: cancelled until they have ended.

Invariant: :func:`cancel_and_wait` returns only once every task given has ended (or the caller
itself is cancelled), and every exception they ended with is retrieved (no "exception was
never retrieved" at exit).

A single ``task.cancel()`` is not enough for a task that loops: code it awaits can swallow the
cancel. On Python 3.11, ``asyncio.wait_for`` (redis-py sends every command through it) returns
the awaited result instead of raising when the result and the cancel arrive in the same loop
step; a lease task renewing in that instant went on renewing forever, and the close that
gathered it waited for good. A swallowed cancel needs that exact race again to be swallowed
twice, so cancelling again every few milliseconds ends such a task at its next await.

Only for the SDK's own tasks: a task running a user's callback is cancelled once, and its own
cleanup on the way out is not cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["cancel_and_wait"]

#: How often a task still running is cancelled again.
RECANCEL_EVERY: Final = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any still running."""
    tasks = list(tasks)
    running = {t for t in tasks if not t.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=RECANCEL_EVERY)
    await asyncio.gather(*tasks, return_exceptions=True)  # retrieves what they raised
