"""Request pacing: the client-wide 429 pause and the spacing of requests.

With ``rate_limit=R`` the client spaces requests ``1/R`` apart, period. Without it, the client
learns a rate from the service. A 429 opens an *episode*; from its second second on, each 429
sets the pace to 95% of what the service accepted since the episode began (pauses included:
that is the rate it really sustains, where a one-second sample would count the burst a refilled
token bucket lets through after each pause). Every calm second raises the pace by a fifth,
until it falls away. This keeps a fan-out from answering each ``Retry-After`` with a new wave
of 429s (every request that waited out the pause going at once), without any setting.

A blip is not a limit: a 429 that comes more than ``_ISOLATED`` (1 s) after the previous pause
ended starts a new episode instead of teaching a rate. A sustained limit answers the wave that
follows each pause at once (the bucket's refill goes within a fraction of a second), so it is
still learned; a few one-off 429s cost their ``Retry-After`` and nothing after it (before this
rule, two 429s with ``Retry-After: 2`` a few seconds apart set the pace to what the client
achieved *including* the pauses, a fraction of its real rate, for seconds afterwards).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

__all__ = ["Pacer"]

log = logging.getLogger("lipsync_async")

_SHARE: Final = 0.95  # pace at this share of the rate the service sustained
_SPEEDUP: Final = 1.2  # ...and raise it by this factor
_CALM: Final = 1.0  # ...every this many seconds without a 429
_EPISODE_END: Final = 10.0  # seconds without a 429 that close an episode
_ISOLATED: Final = 1.0  # a 429 this long after the last pause ended is a blip, not a limit
_MIN_RATE: Final = 0.5  # requests/s: never slower than this
_UNPACED: Final = 5000.0  # requests/s: above this, learned pacing is dropped


class Pacer:
    """When the next request may go: after any 429 pause, and in its rate slot."""

    __slots__ = (
        "_accepted",
        "_episode_accepted",
        "_episode_start",
        "_fixed",
        "_last_429",
        "_next_slot",
        "_sped_up",
        "interval",
        "pause_until",
    )

    def __init__(self, rate_limit: float | None = None) -> None:
        self._fixed = rate_limit is not None
        self.interval = 1.0 / rate_limit if rate_limit else 0.0
        self._next_slot = 0.0
        self.pause_until = 0.0
        self._accepted = 0  # answers other than 429, ever
        self._episode_start: float | None = None
        self._episode_accepted = 0
        self._last_429 = float("-inf")
        self._sped_up = float("-inf")

    @property
    def rate(self) -> float | None:
        """The current pacing in requests/s (``None``: unpaced)."""
        return 1.0 / self.interval if self.interval else None

    def accepted(self, now: float | None = None) -> None:
        """The service answered something other than 429 (``now``: the loop's time, read here
        only when it matters: while learned pacing is on)."""
        self._accepted += 1
        if self._fixed or not self.interval:
            return
        if now is None:
            now = asyncio.get_running_loop().time()
        if now - self._last_429 >= _CALM and now - self._sped_up >= _CALM:
            rate = _SPEEDUP / self.interval
            self.interval = 0.0 if rate >= _UNPACED else 1.0 / rate
            self._sped_up = now

    def limited(self, now: float, pause: float) -> bool:
        """A 429 came back; hold everyone ``pause`` seconds. True if a new pause began."""
        started = self.pause_until <= now
        resumed_at = self.pause_until  # when the previous pause ended (or ends)
        self.pause_until = max(self.pause_until, now + pause)
        last, self._last_429 = self._last_429, now
        if self._fixed:
            return started
        if (
            self._episode_start is None
            or now - last >= _EPISODE_END
            or now - resumed_at > _ISOLATED
        ):
            self._episode_start = now
            self._episode_accepted = self._accepted
            return started
        elapsed = now - self._episode_start
        if elapsed < 1.0:
            return started
        sustained = (self._accepted - self._episode_accepted) / elapsed
        rate = max(_MIN_RATE, sustained * _SHARE)
        if self.interval and rate > 1.0 / self.interval:
            return started  # already slower than that: keep the pace
        self.interval = 1.0 / rate
        log.debug("rate limited: pacing at %.1f requests/s", rate)
        return started

    async def wait(self) -> None:
        """Return when this request may go."""
        loop = asyncio.get_running_loop()
        if not self.interval and self.pause_until <= loop.time():
            return  # the common case: unpaced, no pause
        while True:
            now = loop.time()
            if self.pause_until > now:
                await asyncio.sleep(self.pause_until - now)
                continue
            if self.interval:
                slot = max(now, self._next_slot)
                self._next_slot = slot + self.interval
                if slot > now:
                    await asyncio.sleep(slot - now)
                    if self.pause_until > loop.time():
                        continue  # a 429 arrived while we waited for our slot
            return
