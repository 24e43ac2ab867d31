"""Where pending jobs and deliveries live, so they outlive a process and reach other workers.

* :class:`MemoryStore`: one process (what a client without ``store=`` does, through the
  interface);
* :class:`SQLiteStore`: one machine; a restarted worker resumes its jobs with
  ``await client.pending()``;
* :class:`RedisStore`: many workers behind a load balancer; each job is owned by the worker
  that submitted (or adopted) it under a lease, and a webhook accepted by any worker is sent
  to the owner alone (needs the ``redis`` extra).

Equal stores (same backend, location and prefix: :meth:`Store.key`) are one store. Every store
holds the completion claims behind ``LipsyncClient(on_complete=...)`` (:meth:`Store.claim`,
:meth:`Store.ack`): once per job fleet-wide on Redis, per machine on SQLite, per process in
memory.

Pass one to ``LipsyncClient(store=...)`` and, for a process that only listens, to
``WebhookReceiver(store=...)``. :class:`Store` is the interface, for another backend.
"""

from __future__ import annotations

from ._base import CLAIM_DONE, CLAIM_HELD, PendingRecord, Store, StoreError
from ._memory import MemoryStore
from ._redis import RedisStore
from ._sqlite import SQLiteStore

__all__ = [
    "CLAIM_DONE",
    "CLAIM_HELD",
    "MemoryStore",
    "PendingRecord",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreError",
]
