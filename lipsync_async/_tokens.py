"""Correlation tokens: how a delivery names the submit that asked for it, even when the submit's
own answer (the job id) was lost.

Each submit sent with the receiver's URL carries a fresh random token beside the secret
(``{public_url}{path}/{secret}?t={token}``). The secret authenticates; the token only correlates.
A :class:`TokenBook` remembers tokens for two kinds of submits, and no others:

* **in flight**: sent, not answered yet. Answered, the token is forgotten at once: from then
  on deliveries match the job by its id, as they always did;
* **uncertain**: the answer was lost (``SubmissionUncertainError``). The token is kept until a
  delivery names the job, or ``ttl`` seconds pass, or ``max_uncertain`` newer uncertain submits
  push it out (oldest first).

So a million tracked jobs cost nothing here; only submits in flight or uncertain do (an entry
of two slots and the token string, about 200 B). A delivery whose token is unknown (its
submit was answered, the token expired, or it came to another worker) falls back to id
matching; with a store, the receiver that got it records ``token -> job id`` there
(:meth:`~lipsync_async.stores.Store.record_token`) so that the submitting worker finds it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._models import JobState

__all__ = ["TokenBook", "check_token"]

_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_STORE_POLL_MIN: Final = 0.2
_STORE_POLL_MAX: Final = 2.0


def check_token(token: str | None) -> str | None:
    """The token if it looks like one of ours (16 URL-safe characters), else ``None``."""
    if token is None or len(token) != 16 or not _ALPHABET.issuperset(token):
        return None
    return token


class _Expected:
    """One submit's token: the job a delivery carrying it named, and who waits for that.

    Only the id is kept, never the delivered state: a state (up to ``max_body`` of free-form
    ``timings``) waits in the tracker's early-delivery buffer, bounded in bytes, like any
    delivery for an id nobody tracks yet.
    """

    __slots__ = ("job_id", "waiter")

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class TokenBook:
    """The tokens of submits in flight or uncertain (see the module docstring)."""

    __slots__ = ("_in_flight", "_uncertain", "max_uncertain", "ttl")

    def __init__(self, *, ttl: float = 3600.0, max_uncertain: int = 10_000) -> None:
        self.ttl = ttl
        self.max_uncertain = max_uncertain
        self._in_flight: dict[str, _Expected] = {}
        # Oldest uncertain first: (expiry on the monotonic clock, entry).
        self._uncertain: OrderedDict[str, tuple[float, _Expected]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._uncertain)

    def issue(self) -> str:
        """A fresh token for a submit about to be sent (96 random bits)."""
        self._expire()
        token = secrets.token_urlsafe(12)
        self._in_flight[token] = _Expected()
        return token

    def answered(self, token: str) -> None:
        """The submit got its answer (or surely created nothing): forget its token."""
        self._in_flight.pop(token, None)

    def uncertain(self, token: str) -> None:
        """The submit's answer was lost: keep its token for ``ttl`` seconds."""
        entry = self._in_flight.pop(token, None)
        if entry is None:
            return
        self._uncertain[token] = (time.monotonic() + self.ttl, entry)
        self._expire()

    def forget(self, token: str) -> None:
        self._in_flight.pop(token, None)
        held = self._uncertain.pop(token, None)
        if held is not None:
            held[1].wake()

    def clear(self) -> None:
        """The client closed: every token is forgotten, and whoever waits is woken."""
        for entry in self._in_flight.values():
            entry.wake()
        for _, entry in self._uncertain.values():
            entry.wake()
        self._in_flight.clear()
        self._uncertain.clear()

    def _get(self, token: str) -> _Expected | None:
        entry = self._in_flight.get(token)
        if entry is not None:
            return entry
        held = self._uncertain.get(token)
        if held is None:
            return None
        if held[0] < time.monotonic():
            del self._uncertain[token]
            held[1].wake()
            return None
        return held[1]

    def _expire(self) -> None:
        uncertain = self._uncertain
        now = time.monotonic()
        while uncertain:
            token, (expires, entry) = next(iter(uncertain.items()))
            if expires >= now and len(uncertain) <= self.max_uncertain:
                break
            del uncertain[token]
            entry.wake()

    def seen(self, token: str, state: JobState) -> bool:
        """An authenticated delivery carried ``token``: note its job. True if the token is ours.

        The first delivery naming a job for a token wins; a later one naming another id changes
        nothing (tokens are per submit, and one submit makes at most one job).
        """
        entry = self._get(token)
        if entry is None:
            return False
        if entry.job_id is None:
            entry.job_id = state.id
        entry.wake()
        return True

    async def wait(
        self,
        token: str,
        timeout: float,
        lookup: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> str | None:
        """The job id once a delivery names ``token``; ``None`` after ``timeout`` seconds, or
        at once if the token is unknown here and there is no ``lookup`` (the store, where
        other workers' receivers record the tokens they do not know).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = _STORE_POLL_MIN
        while True:
            entry = self._get(token)
            if entry is not None and entry.job_id is not None:
                return entry.job_id
            if lookup is not None:
                found = await lookup(token)
                if found is not None:
                    return found
            elif entry is None:
                return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            pause = min(remaining, step) if lookup is not None else remaining
            step = min(step * 2, _STORE_POLL_MAX)
            if entry is None:
                await asyncio.sleep(pause)
                continue
            if entry.waiter is None or entry.waiter.done():
                if entry.waiter is not None and entry.job_id is None and self._get(token) is None:
                    return None  # forgotten (expired, or the client closed)
                entry.waiter = loop.create_future()
            await asyncio.wait({entry.waiter}, timeout=pause)
