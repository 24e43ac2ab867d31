"""``MemoryStore``: the default, one process, nothing survives it.

It gives a process without a database the same contract as the others (and the tests a
reference): listeners in the same process hear every first final state, which is how a client
and a standalone receiver sharing one ``MemoryStore`` route deliveries to each other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from .._models import JobState
from ._base import PendingRecord, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Pending jobs and final states in dicts; the channel is a list of callbacks.

    ``max_finals`` bounds the final states kept (oldest forgotten first).
    """

    def __init__(self, *, max_finals: int = 100_000) -> None:
        super().__init__()
        self._pending: dict[str, PendingRecord] = {}
        self._finals: dict[str, JobState] = {}  # insertion order: oldest first
        self._max_finals = max_finals
        # token -> (expiry, job id), oldest first; bounded like the finals.
        self._tokens: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryStore pending={len(self._pending)} finals={len(self._finals)}>"

    async def add_pending(self, record: PendingRecord) -> JobState | None:
        self._pending[record.id] = record
        return self._finals.get(record.id)

    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        records = sorted(self._pending.values(), key=lambda r: r.submitted_at)
        return [(r, self._finals.get(r.id)) for r in records]

    async def record_final(self, state: JobState) -> bool:
        return self._keep(state)

    async def finish(self, states: Sequence[JobState], dropped: Iterable[str] = ()) -> None:
        for state in states:
            self._keep(state)
            self._pending.pop(state.id, None)
        for job_id in dropped:
            self._pending.pop(job_id, None)

    async def finals(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        return {i: s for i in job_ids if (s := self._finals.get(i)) is not None}

    async def record_token(self, token: str, job_id: str) -> None:
        tokens = self._tokens
        now = time.monotonic()
        while tokens:
            oldest, (expires, _) = next(iter(tokens.items()))
            if expires >= now and len(tokens) < self._max_finals:
                break
            del tokens[oldest]
        tokens.setdefault(token, (now + self.token_ttl, job_id))

    async def token_job(self, token: str) -> str | None:
        held = self._tokens.get(token)
        return held[1] if held is not None and held[0] >= time.monotonic() else None

    def _keep(self, state: JobState) -> bool:
        if not state.is_final or state.id in self._finals:
            return False
        finals = self._finals
        finals[state.id] = state
        if len(finals) > self._max_finals:  # bounded: forget the oldest outcome
            del finals[next(iter(finals))]
        self._announce_local(state)
        return True
