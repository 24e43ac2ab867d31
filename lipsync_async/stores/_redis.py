"""``RedisStore``: many workers behind one load balancer; redis-py's asyncio client (an extra).

The channel is **pub/sub plus keys**, not streams. Why:

* the keys are already the durable record: a final state is ``SET NX`` under
  ``{prefix}:final:{id}`` (with a TTL) and a pending job is a field of the ``{prefix}:pending``
  hash. A worker that was gone finds both with :meth:`pending` when it resumes, so the channel
  itself does not need to keep anything;
* what the channel must do is wake the worker awaiting a job *now*, and fan out to every worker
  (any of them may track the job: the submitter, or one that resumed it). Pub/sub is exactly a
  broadcast with no state on the server; a stream would need a consumer group per worker (a
  group load-balances, it does not broadcast), read offsets to keep, and trimming, to restate
  what the keys already say;
* pub/sub drops messages while a subscriber is disconnected. The subscriber therefore resyncs
  after every (re)subscribe: it reads the final keys of the jobs its process tracks (``MGET``),
  which closes the gap; and any job still missed falls back to polling after the grace period.

"Exactly once" comes from the script that records a state: ``SET NX`` and ``PUBLISH`` run
atomically, so only the first record of a job's outcome is announced; a duplicated webhook,
or the same outcome learnt by two workers, announces nothing more. Each message carries its
sender's origin, so a process never hears its own announcements back.

Reconnects: commands retry connection errors with exponential backoff (``retries``), then fail
with :class:`StoreError`; the subscriber reconnects forever with backoff capped at 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from .._models import JobState
from ._base import PendingRecord, Store, StoreError
from ._records import Unreadable, dump_record, dump_state, load_record, load_state

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

__all__ = ["RedisStore"]

log = logging.getLogger("lipsync_async.stores")

_CHUNK: Final = 500  # states per script call / ids per MGET

# KEYS[1] pending hash, KEYS[2] final key; ARGV[1] job id, ARGV[2] record.
_ADD: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('GET', KEYS[2])
"""

# KEYS[1] pending hash, KEYS[2..] final keys; ARGV[1] ttl, ARGV[2] channel, ARGV[3] origin,
# ARGV[4] '1' to drop the jobs from pending, then per state: id, body. Returns 1 per new state
# (announced), 0 per known one.
_KEEP: Final = """
local new = {}
for k = 1, #KEYS - 1 do
  local id, body = ARGV[3 + 2 * k], ARGV[4 + 2 * k]
  if redis.call('SET', KEYS[k + 1], body, 'NX', 'EX', ARGV[1]) then
    redis.call('PUBLISH', ARGV[2], ARGV[3] .. body)
    new[k] = 1
  else
    new[k] = 0
  end
  if ARGV[4] == '1' then redis.call('HDEL', KEYS[1], id) end
end
return new
"""


class RedisStore(Store):
    """Pending jobs, final states and the delivery channel in Redis at ``url``.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS), as redis-py reads it.
        prefix: namespace of every key and of the channel; workers of one deployment share it.
        final_ttl: seconds a final state is kept (long enough for any worker to come back).
        retries: retries of a command on connection errors before :class:`StoreError`.
        timeout: socket timeout of one command, seconds (and the longest wait for a
            connection from the pool).
        max_connections: connections to Redis for commands (the subscriber has its own).
    """

    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "lipsync",
        final_ttl: float = 7 * 86400.0,
        retries: int = 3,
        timeout: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401 - fail at construction, not at the first submit
        except ImportError as exc:  # pragma: no cover - the test environment has the extra
            raise StoreError(
                "RedisStore needs redis-py: pip install 'lipsync-async[redis]'"
            ) from exc
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.final_ttl = int(final_ttl)
        self.retries = retries
        self.timeout = timeout
        self.max_connections = max_connections
        self.origin = uuid.uuid4().hex  # fixed length: messages are origin + state JSON
        self.announced = 0  # first final states this process published
        self.routed = 0  # final states heard from other processes
        self._pending_key = f"{prefix}:pending"
        self._channel = f"{prefix}:deliveries"
        self._redis: aioredis.Redis | None = None
        self._add: AsyncScript | None = None
        self._keep_script: AsyncScript | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._batch: list[tuple[JobState, asyncio.Future[bool]]] = []
        self._token_batch: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unreadable = Unreadable(f"Redis store {prefix!r}")

    def __repr__(self) -> str:  # the URL may carry a password
        return f"<RedisStore prefix={self.prefix!r} {'open' if self._redis else 'closed'}>"

    def _final_key(self, job_id: str) -> str:
        return f"{self.prefix}:final:{job_id}"

    # -- lifecycle ---------------------------------------------------------------------------

    def _client(self, retries: int) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        # A blocking pool: a burst of deliveries waits for one of ``max_connections`` instead
        # of opening a connection each (and meeting "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_connect_timeout=min(self.timeout, 2.0),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
            retry_on_error=[ConnectionError, TimeoutError],
            health_check_interval=10,
        )
        return aioredis.Redis.from_pool(pool)

    async def _open(self) -> None:
        client = self._client(self.retries)
        async with self._guard("cannot reach Redis"):
            try:
                await client.ping()
            except BaseException:
                await client.aclose()
                raise
        self._redis = client
        self._add = client.register_script(_ADD)
        self._keep_script = client.register_script(_KEEP)
        self._listening_changed()

    async def _close(self) -> None:
        if self._writer is not None:  # deliveries accepted must be written before we go
            await asyncio.gather(self._writer, return_exceptions=True)
        task, self._subscriber = self._subscriber, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis store: {what}: {exc}") from exc

    def _open_client(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreError("the Redis store is not open")
        return self._redis

    # -- the contract ------------------------------------------------------------------------

    async def add_pending(self, record: PendingRecord) -> JobState | None:
        self._open_client()
        assert self._add is not None  # noqa: S101 - set with the client
        async with self._guard(f"cannot record job {record.id}"):
            found = await self._add(
                keys=[self._pending_key, self._final_key(record.id)],
                args=[record.id, dump_record(record)],
            )
        return None if found is None else load_state(found)

    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        client = self._open_client()
        async with self._guard("cannot list pending jobs"):
            raw = await client.hgetall(self._pending_key)
        readable = []
        for field, text in raw.items():
            record = load_record(text)
            if record is None:
                self._unreadable.report(field)
            else:
                readable.append(record)
        records = sorted(readable, key=lambda r: r.submitted_at)
        finals = await self.finals([r.id for r in records])
        return [(r, finals.get(r.id)) for r in records]

    async def record_final(self, state: JobState) -> bool:
        # Deliveries arrive concurrently (one handler task each); they share one script call
        # per round trip instead of one each: a single writer task drains what accumulated
        # while its previous call was in flight. Cancelling one caller leaves the others be.
        if not state.is_final:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((state, fut))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        return await fut

    async def _write_batches(self) -> None:
        try:
            while self._batch or self._token_batch:
                batch, self._batch = self._batch, []
                if batch:
                    try:
                        flags = await self._keep([s for s, _ in batch], drop=False)
                    except Exception as exc:
                        for _, fut in batch:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                    for (_, fut), flag in zip(batch, flags, strict=True):
                        if not fut.done():
                            fut.set_result(flag)
                tokens, self._token_batch = self._token_batch, []
                if tokens:
                    await self._write_tokens(tokens)
        finally:
            self._writer = None
            for _, fut in self._batch:  # cancelled (the store closes): nobody writes these
                fut.cancel()
            for *_, fut in self._token_batch:
                fut.cancel()
            self._token_batch = []

    async def _write_tokens(self, batch: list[tuple[str, str, asyncio.Future[bool]]]) -> None:
        """One pipeline for every token recorded while the previous write was in flight."""
        ttl = max(1, int(self.token_ttl))
        try:
            client = self._open_client()
            async with self._guard("cannot record correlation tokens"):
                pipe = client.pipeline(transaction=False)
                for token, job_id, _ in batch:
                    # NX: the first job named for a token stays; EX: gone after token_ttl.
                    pipe.set(f"{self.prefix}:token:{token}", job_id, nx=True, ex=ttl)
                await pipe.execute()
        except Exception as exc:
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for *_, fut in batch:
            if not fut.done():
                fut.set_result(True)

    async def finish(self, states: Sequence[JobState], dropped: Iterable[str] = ()) -> None:
        await self._keep([s for s in states if s.is_final], drop=True)
        gone = list(dropped)
        if gone:
            client = self._open_client()
            async with self._guard("cannot drop finished jobs"):
                await client.hdel(self._pending_key, *gone)

    async def _keep(self, states: Sequence[JobState], *, drop: bool) -> list[bool]:
        """Record final states; True for each that was new (and so announced)."""
        self._open_client()
        assert self._keep_script is not None  # noqa: S101 - set with the client
        new: list[bool] = []
        for start in range(0, len(states), _CHUNK):
            chunk = states[start : start + _CHUNK]
            args: list[Any] = [self.final_ttl, self._channel, self.origin, "1" if drop else "0"]
            for state in chunk:
                args += (state.id, dump_state(state))
            async with self._guard(f"cannot record the final state of job {chunk[0].id}"):
                flags = await self._keep_script(
                    keys=[self._pending_key, *(self._final_key(s.id) for s in chunk)],
                    args=args,
                )
            new += (int(flag) == 1 for flag in flags)
        self.announced += sum(new)
        return new

    async def finals(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        client = self._open_client()
        ids = list(job_ids)
        out: dict[str, JobState] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            async with self._guard("cannot read final states"):
                values = await client.mget([self._final_key(i) for i in chunk])
            for job_id, text in zip(chunk, values, strict=True):
                if text is not None and (state := load_state(text)) is not None:
                    out[job_id] = state
        return out

    async def record_token(self, token: str, job_id: str) -> None:
        # Batched with the final states' writer: deliveries come concurrently, and one
        # connection per token write would starve the pool the submits need.
        self._open_client()
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._token_batch.append((token, job_id, fut))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        await fut

    async def token_job(self, token: str) -> str | None:
        client = self._open_client()
        async with self._guard("cannot read a correlation token"):
            raw = await client.get(f"{self.prefix}:token:{token}")
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                return None
        return raw if isinstance(raw, str) and raw and raw.isprintable() else None

    # -- the subscriber ----------------------------------------------------------------------

    async def ready(self, timeout: float = 5.0) -> bool:
        """Wait until the subscriber listens (announcements from now on reach this process)."""
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    def _listening_changed(self) -> None:
        if self._listeners and self._subscriber is None and self._redis is not None:
            self._subscriber = asyncio.get_running_loop().create_task(
                self._subscribe_forever(), name="lipsync-redis-subscriber"
            )

    async def _subscribe_forever(self) -> None:
        from redis.exceptions import RedisError

        backoff = 0.05
        # Its own connection without command retries: a dropped connection must surface here,
        # so that we know to resync, instead of being silently re-established by redis-py.
        client = self._client(0)
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self._channel)
                    self._subscribed.set()
                    await self._resync_all()  # what was announced while we were not listening
                    backoff = 0.05
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._on_message(message["data"])
                except (RedisError, OSError) as exc:
                    self._subscribed.clear()
                    log.warning("Redis subscriber lost its connection (%s); reconnecting", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                except Exception:
                    # Supervised: a bug (ours, or in what a message triggers) must not end
                    # routing silently. Logged with its traceback, then the subscriber starts
                    # over, resyncing as after a reconnect, with the same capped backoff.
                    self._subscribed.clear()
                    log.exception(
                        "Redis subscriber failed unexpectedly; restarting in %.2f s", backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            self._subscribed.clear()
            await client.aclose()

    def _on_message(self, data: bytes) -> None:
        origin = self.origin.encode()
        if data[: len(origin)] == origin:
            return  # our own announcement: this process knew first
        state = load_state(data[len(origin) :])
        if state is None:
            log.warning(
                "Redis channel %s: ignored a message that is not a job state", self._channel
            )
            return
        self.routed += 1
        self._announce_local(state)
