"""``RedisStore``: a fleet of workers behind a load balancer; redis-py asyncio (an extra).

The invariants, and why each holds:

**Keys.** Every key is ``{prefix}:...``: the braces are a Redis Cluster *hash tag*, so all of
a deployment's keys live in one slot and every script below runs on a Cluster node as it does
on a single server (a script may only touch keys of one slot; those it derives from a worker
id, such as ``{prefix}:jobs:<worker>``, share the tag too)::

    {prefix}:pending         hash   job id -> record JSON (what was submitted)
    {prefix}:owner           hash   job id -> worker id owning it
    {prefix}:jobs:<worker>   set    the job ids a worker owns
    {prefix}:leases          zset   worker id -> lease expiry (ms, the Redis server's clock)
    {prefix}:instances       hash   worker id -> the store object renewing its lease now
    {prefix}:final:<id>      string a final state (TTL final_ttl, or unknown_ttl)
    {prefix}:unknown         list   ids of final states no worker submitted (the cap, below)
    {prefix}:claim:<id>      "<worker>|<instance>|<token>|<claimant>" while held, "done" once acked
    {prefix}:fence           counter the fencing tokens
    {prefix}:token:<token>   string a correlation token's job id (TTL token_ttl)
    {prefix}:to:<worker>     channel a worker's deliveries (pub/sub)

**Ownership and lease.** A submit records its job under the submitting worker (``worker``, a
random id unless you name one). Each store object renews its worker's lease with one command
every ``lease / 3`` seconds, whatever the number of jobs (a ``ZADD`` into ``{prefix}:leases``
whose score is the expiry computed from the Redis server's ``TIME`` inside the script). A
worker is alive while its score is in the future. Only the Redis server's clock is ever read,
so the workers' clocks may be skewed by any amount; what matters is that a worker's event loop
renews within the lease (it has two missed renewals of slack). ``lease`` defaults to 30 s: a
crashed worker's jobs are adopted 30 to 40 s after its last renewal. :meth:`pending` renews the
caller's lease and moves the jobs of expired workers to the caller, 1,000 per script call (a
worker that owns nothing more is forgotten), calling again until none is left: Redis is never
blocked for a whole dead worker's set, and live workers adopting at the same time share the
orphans. Scripts run one at a time and each moves a job out of its dead owner's set, so each
orphan is adopted by exactly one live worker. The heartbeat also reports expired workers, and a
client adopts their jobs on its own (``LipsyncClient`` calls :meth:`pending` then), so orphans
do not wait for someone to restart. A clean :meth:`close` ends the lease at once (score 0): the
jobs it leaves pending are adoptable immediately. A worker restarted with the same ``worker``
id before its jobs were adopted finds them its own again. A worker cut off from Redis for
longer than the lease may have its jobs adopted while it still tracks them: both then poll them
(and the completion claim below keeps ``on_complete`` single, but for a callback running while
its lease ran out). After an outage of Redis itself longer than the lease, every lease has run
out by the server's clock: a worker whose heartbeat was failing waits one lease after it
succeeds again before adopting, so the live workers renew first and only the dead ones' jobs
move.

**Routing.** A final state is recorded once: the script ``SET NX``es ``{prefix}:final:<id>``
and, only if that was the first record, looks up the job's owner and ``PUBLISH``es the state
on that owner's own channel ``{prefix}:to:<owner>`` (nothing when the recorder is the owner,
or the id has no owner). One delivery therefore costs the same few commands whether the fleet
has 2 workers or 200: one hash lookup, one key, one publish heard by one subscriber. Why a
channel per worker rather than a stream per worker with a consumer group: the keys already
are the durable record (a worker that was not listening finds the final key when it resyncs,
when it resumes with :meth:`pending`, or when another worker adopts its job: adoption reads
the final keys), so the channel only has to wake a live owner *now*; pub/sub does that with no
server-side state, where streams would add offsets, acknowledgements and trimming to restate
what the keys say. Pub/sub drops messages while a subscriber is disconnected, so the
subscriber resyncs after every (re)subscribe: it reads the final keys of the jobs its process
tracks (``MGET``); any job still missed falls back to polling after the grace period. The
message is the state JSON alone: a worker never publishes to itself.

**Unknown ids.** A final state for an id nobody submitted (yet: a delivery can beat its
submit's answer) is kept ``unknown_ttl`` seconds (1 h by default, as long as a correlation
token) and at most ``max_unknown`` of them (10,000): past that, the oldest is deleted. A
holder of the receiver's secret cannot fill Redis; a submit answered later than that loses
only the shortcut (it is polled).

**Completion claims** (``LipsyncClient(on_complete=...)``). :meth:`claim` sets
``{prefix}:claim:<id>`` to this worker, this store object and a fresh token from
``INCR {prefix}:fence``, unless the job is ``done`` or held by a live holder: its worker's
lease runs *and* is renewed by the very store object that claimed (``{prefix}:instances``,
set by each renewal). A worker restarted under the same id is a new store object, so the
claims of its dead incarnation are taken over by whoever observes the job next, the restarted
worker or an adopter (its lease may have ended before it came back, and its jobs moved on:
judged by the worker id alone, such a claim stayed held for good). The holder itself (same
store object, same ``claimant``) claiming again gets its own token back: a claim retried
because the connection was cut after Redis ran it would otherwise find itself "held" for
good, and its callback would never run. :meth:`ack` marks it ``done`` only if the token
still holds it. A worker that dies inside the callback leaves a claim whose holder's lease
expires; the job stayed pending (its record is dropped only after the ack), so the adopter
resolves it, claims it with a new, larger token and runs the callback again.

Reconnects: commands retry connection errors with exponential backoff (``retries``), then fail
with :class:`StoreError`; the subscriber reconnects forever with backoff capped at 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._errors import ValidationError
from .._models import JobState
from .._tasks import cancel_and_wait
from ._base import CLAIM_DONE, CLAIM_HELD, PendingRecord, Store, StoreError
from ._records import Unreadable, dump_record, dump_state, load_record, load_state

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

__all__ = ["RedisStore"]

log = logging.getLogger("lipsync_async.stores")

_CHUNK: Final = 500  # states per script call / ids per MGET
_ADOPT: Final = 1000  # orphans moved per adoption script call
_WORKER_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Every script that reads the clock reads the server's; before Redis 5 a script must ask for
# effects replication before TIME is followed by writes (a no-op from Redis 7 on).
_NOW: Final = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: pending, owner, jobs:W, leases, final:id. ARGV: head, W, lease ms, id, record, final ttl.
_ADD: Final = (
    _NOW
    + """
local H, W, id = ARGV[1], ARGV[2], ARGV[4]
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), W)
redis.call('HSET', KEYS[1], id, ARGV[5])
local prev = redis.call('HGET', KEYS[2], id)
if prev and prev ~= W then redis.call('SREM', H .. 'jobs:' .. prev, id) end
redis.call('HSET', KEYS[2], id, W)
redis.call('SADD', KEYS[3], id)
local found = redis.call('GET', KEYS[5])
if found then redis.call('EXPIRE', KEYS[5], ARGV[6]) end
return found
"""
)

# KEYS: pending, owner, unknown, final keys... ARGV: head, W, final ttl, unknown ttl,
# max unknown, '1' to drop from pending, then per state: id, body. 1 per new state, else 0.
_KEEP: Final = """
local H, W, cap = ARGV[1], ARGV[2], tonumber(ARGV[5])
local new = {}
for k = 1, #KEYS - 3 do
  local id, body = ARGV[5 + 2 * k], ARGV[6 + 2 * k]
  local owner = redis.call('HGET', KEYS[2], id)
  local known = owner or redis.call('HEXISTS', KEYS[1], id) == 1
  local ttl = ARGV[4]
  if known then ttl = ARGV[3] end
  if redis.call('SET', KEYS[k + 3], body, 'NX', 'EX', ttl) then
    new[k] = 1
    if owner and owner ~= W then redis.call('PUBLISH', H .. 'to:' .. owner, body) end
    if not known then
      redis.call('RPUSH', KEYS[3], id)
      if redis.call('LLEN', KEYS[3]) > cap then
        local old = redis.call('LPOP', KEYS[3])
        if redis.call('HEXISTS', KEYS[1], old) == 0 then redis.call('DEL', H .. 'final:' .. old) end
      end
    end
  else
    new[k] = 0
  end
  if ARGV[6] == '1' then
    redis.call('HDEL', KEYS[1], id)
    if owner then
      redis.call('HDEL', KEYS[2], id)
      redis.call('SREM', H .. 'jobs:' .. owner, id)
    end
  end
end
return new
"""

# KEYS: pending, owner. ARGV: head, ids... (jobs whose tracking ended without a state)
_DROP: Final = """
for k = 2, #ARGV do
  local id = ARGV[k]
  local owner = redis.call('HGET', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id)
  if owner then
    redis.call('HDEL', KEYS[2], id)
    redis.call('SREM', ARGV[1] .. 'jobs:' .. owner, id)
  end
end
return 0
"""

# KEYS: leases, owner, jobs:W, instances. ARGV: head, W, lease ms, chunk. Renews W's lease and
# moves at most `chunk` jobs of expired workers to W (an expired worker leaves the leases, and
# the instances, once it owns nothing); returns how many moved. Called until it moves fewer
# than `chunk`: Redis is never blocked for a whole dead worker's set, and live workers adopting
# at once share the orphans.
_PENDING: Final = (
    _NOW
    + """
local H, W, room = ARGV[1], ARGV[2], tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), W)
local adopted = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if adopted >= room then break end
  local set = H .. 'jobs:' .. dead
  local ids = redis.call('SPOP', set, room - adopted)
  for _, id in ipairs(ids) do
    redis.call('HSET', KEYS[2], id, W)
    redis.call('SADD', KEYS[3], id)
  end
  adopted = adopted + #ids
  if redis.call('EXISTS', set) == 0 then
    redis.call('ZREM', KEYS[1], dead)
    redis.call('HDEL', KEYS[4], dead)
  end
end
return adopted
"""
)

# KEYS: leases, instances. ARGV: W, lease ms, instance. The heartbeat: renew, say which store
# object renews it (a claim of an earlier one of W's is a dead holder's), and count the expired
# workers.
_BEAT: Final = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return redis.call('ZCOUNT', KEYS[1], '-inf', now)
"""
)

# KEYS: leases, jobs:W, instances. ARGV: W. A clean close: the lease ends now (or is
# forgotten if W owns nothing), so what W leaves pending is adoptable at once.
_HAND_BACK: Final = """
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
end
return 0
"""

# KEYS: claim:id, fence, leases, instances. ARGV: W, instance, ttl, claimant. A token, 0 (held)
# or -1 (done). The claim's value is "W|instance|token|claimant": the same holder claiming
# again (a retry whose answer was lost) gets its token back. A claim is held while its
# worker's lease runs *and* that worker's lease is renewed by the very store object that
# claimed: a worker restarted under the same id is a new instance, and the dead one's claims
# are taken over (by anyone: the job may have been adopted meanwhile).
_CLAIM: Final = (
    _NOW
    + """
local held = redis.call('GET', KEYS[1])
if held == 'done' then return -1 end
if held then
  local w, inst, tok, who = string.match(held, '^(.-)|(.-)|(.-)|(.*)$')
  if w == ARGV[1] and inst == ARGV[2] and who == ARGV[4] then return tonumber(tok) end
  local lease = w and redis.call('ZSCORE', KEYS[3], w)
  if lease and tonumber(lease) > now and redis.call('HGET', KEYS[4], w) == inst then
    return 0
  end
end
local token = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. '|' .. ARGV[2] .. '|' .. token .. '|' .. ARGV[4]
redis.call('SET', KEYS[1], value, 'EX', ARGV[3])
return token
"""
)

# KEYS: claim:id. ARGV: "W|instance|token|". Deletes the claim if that token still holds it.
_RELEASE: Final = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: claim:id. ARGV: "W|instance|token|", ttl. 1 if that token still held the claim (now
# done).
_ACK: Final = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
  return 1
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class RedisStore(Store):
    """Pending jobs, their owners, final states and the delivery channels in Redis.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS), as redis-py reads it; the
            default is ``redis://127.0.0.1:6379/0``.
        client: a ``redis.asyncio.Redis`` you built yourself (Sentinel's ``master_for``, TLS
            or auth options of your own) instead of ``url``; the store uses it for commands and
            its ``pubsub()`` for the channel, and never closes it.
        prefix: namespace of every key and channel (as the hash tag ``{prefix}``); the workers
            of one deployment share it. No braces.
        worker: this worker's id, owner of the jobs it submits (letters, digits, ``._:-``).
            Random by default; give a stable one (a pod or host name) so that a restarted
            worker takes its jobs back at once instead of after the lease. Two live processes
            must never share one.
        lease: seconds a worker's ownership lasts without renewal (renewed every third of it).
        final_ttl: seconds a final state (and an acknowledged completion) is kept.
        unknown_ttl: seconds a final state for an id no worker submitted is kept.
        max_unknown: how many such states are kept at most (oldest deleted first).
        retries: retries of a command on connection errors before :class:`StoreError`.
        timeout: socket timeout of one command, seconds (and the longest wait for a
            connection from the pool).
        max_connections: connections to Redis for commands (the subscriber has its own).

    Two ``RedisStore`` objects for the same server, database and prefix are one store
    (:meth:`key`): a receiver and a client given one each use the client's.
    """

    shared = True

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "lipsync",
        worker: str | None = None,
        lease: float = 30.0,
        final_ttl: float = 7 * 86400.0,
        unknown_ttl: float = 3600.0,
        max_unknown: int = 10_000,
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
        if url is not None and client is not None:
            raise ValidationError("client", "give a url or a client, not both")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValidationError("prefix", "must be non-empty, without braces")
        if worker is not None and not _WORKER_ID.fullmatch(worker):
            raise ValidationError("worker", "1 to 128 letters, digits or ._:-")
        if not lease > 0:
            raise ValidationError("lease", f"must be > 0, got {lease!r}")
        if isinstance(max_unknown, bool) or not isinstance(max_unknown, int) or max_unknown < 1:
            raise ValidationError("max_unknown", f"must be an integer >= 1, got {max_unknown!r}")
        super().__init__()
        self.url = url if url is not None or client is not None else "redis://127.0.0.1:6379/0"
        self.prefix = prefix
        self.worker = worker or uuid.uuid4().hex
        self.instance = uuid.uuid4().hex  # this store object: a restarted worker is another
        self.lease = float(lease)
        self.final_ttl = max(1, int(final_ttl))
        self.unknown_ttl = max(1, int(unknown_ttl))
        self.max_unknown = max_unknown
        self.retries = retries
        self.timeout = timeout
        self.max_connections = max_connections
        self.announced = 0  # first final states this process recorded
        self.routed = 0  # final states heard from other processes
        self.adopted = 0  # orphaned jobs this worker took over
        head = f"{{{prefix}}}:"
        self._head = head
        self._pending_key = head + "pending"
        self._owner_key = head + "owner"
        self._jobs_key = f"{head}jobs:{self.worker}"
        self._leases_key = head + "leases"
        self._instances_key = head + "instances"
        self._unknown_key = head + "unknown"
        self._fence_key = head + "fence"
        self._channel = f"{head}to:{self.worker}"
        self._user_client = client
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._subscriber: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._adopting: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._batch: list[tuple[JobState, asyncio.Future[bool]]] = []
        self._token_batch: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unreadable = Unreadable(f"Redis store {prefix!r}")

    def __repr__(self) -> str:  # the URL may carry a password
        state = "open" if self._redis else "closed"
        return f"<RedisStore prefix={self.prefix!r} worker={self.worker!r} {state}>"

    def key(self) -> Hashable:
        """``("redis", host, port, unix path, db, prefix)``: credentials play no part."""
        if self._user_client is not None:
            pool = getattr(self._user_client, "connection_pool", None)
            kwargs: dict[str, Any] = dict(getattr(pool, "connection_kwargs", {}) or {})
            if not kwargs.get("host") and not kwargs.get("path"):
                return ("redis-client", id(self._user_client), self.prefix)
        else:
            from redis.asyncio.connection import parse_url

            assert self.url is not None  # noqa: S101 - set when there is no client
            kwargs = dict(parse_url(self.url))
        return (
            "redis",
            kwargs.get("host"),
            int(kwargs.get("port") or 6379),
            kwargs.get("path"),
            int(kwargs.get("db") or 0),
            self.prefix,
        )

    def _final_key(self, job_id: str) -> str:
        return f"{self._head}final:{job_id}"

    def _claim_key(self, job_id: str) -> str:
        return f"{self._head}claim:{job_id}"

    def script_keys(self, job_id: str = "x") -> dict[str, list[str]]:
        """The keys each script is called with (for a job ``job_id``): one slot for all."""
        return {
            "add": [
                self._pending_key,
                self._owner_key,
                self._jobs_key,
                self._leases_key,
                self._final_key(job_id),
            ],
            "keep": [
                self._pending_key,
                self._owner_key,
                self._unknown_key,
                self._final_key(job_id),
            ],
            "drop": [self._pending_key, self._owner_key],
            "pending": [
                self._leases_key,
                self._owner_key,
                self._jobs_key,
                self._instances_key,
            ],
            "beat": [self._leases_key, self._instances_key],
            "hand_back": [self._leases_key, self._jobs_key, self._instances_key],
            "claim": [
                self._claim_key(job_id),
                self._fence_key,
                self._leases_key,
                self._instances_key,
            ],
            "ack": [self._claim_key(job_id)],
            "release": [self._claim_key(job_id)],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def _client(self, retries: int) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        assert self.url is not None  # noqa: S101 - only without a user's client
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
        client = self._user_client or self._client(self.retries)
        self._scripts = {
            name: client.register_script(text)
            for name, text in (
                ("add", _ADD),
                ("keep", _KEEP),
                ("drop", _DROP),
                ("pending", _PENDING),
                ("beat", _BEAT),
                ("hand_back", _HAND_BACK),
                ("claim", _CLAIM),
                ("ack", _ACK),
                ("release", _RELEASE),
            )
        }
        async with self._guard("cannot reach Redis"):
            try:
                await self._beat()
            except BaseException:
                if client is not self._user_client:
                    await client.aclose()
                raise
        self._redis = client
        self._heart = asyncio.get_running_loop().create_task(
            self._beat_forever(), name="lipsync-redis-lease"
        )
        self._listening_changed()

    async def _close(self) -> None:
        if self._writer is not None:  # deliveries accepted must be written before we go
            await asyncio.gather(self._writer, return_exceptions=True)
        tasks = [t for t in (self._subscriber, self._heart, self._adopting) if t is not None]
        self._subscriber = self._heart = self._adopting = None
        await cancel_and_wait(tasks)  # one cancel can be swallowed by redis-py (see _tasks)
        client, self._redis = self._redis, None
        if client is None:
            return
        try:
            # The lease ends now: what this worker leaves pending is adoptable at once.
            async with asyncio.timeout(self.timeout):
                await self._scripts["hand_back"](
                    keys=[self._leases_key, self._jobs_key, self._instances_key],
                    args=[self.worker],
                )
        except Exception as exc:
            log.warning("closing: could not end this worker's lease (%s): it expires", exc)
        finally:
            if client is not self._user_client:
                await client.aclose()

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Around every command: Redis errors become :class:`StoreError`, and a cancel that
        redis-py swallowed is raised again.

        On Python 3.11, redis-py sends each command through ``asyncio.wait_for``, which
        returns the command's result instead of raising when its task is cancelled in the
        loop step the command completes in (3.12 raises). A cancelled caller must see the
        cancel (as on 3.12): else a cancelled submit goes on, a timeout around a store call
        never fires, and a task stopped by ``close()`` goes on looping.
        """
        from redis.exceptions import RedisError

        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis store: {what}: {exc}") from exc
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError  # requested while the command ran, and swallowed

    def _open_client(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreError("the Redis store is not open")
        return self._redis

    # -- the lease ---------------------------------------------------------------------------

    async def _beat(self) -> int:
        """Renew this worker's lease as this store object; how many workers have expired."""
        return int(
            await self._scripts["beat"](
                keys=[self._leases_key, self._instances_key],
                args=[self.worker, self._lease_ms, self.instance],
            )
        )

    async def _beat_forever(self) -> None:
        """One renewal every third of the lease; expired workers start an adoption."""
        failing = False
        loop = asyncio.get_running_loop()
        quiet_until = 0.0
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                async with self._guard("cannot renew this worker's lease"):
                    expired = await self._beat()
            except StoreError as exc:
                if not failing:
                    log.warning("%s; retrying every %.3g s", exc, self.lease / 3)
                failing = True
                continue
            if failing:
                log.warning("Redis store: this worker's lease is renewed again")
                # After an outage longer than the lease, every worker looks expired to the
                # first one back: adopting now would take the whole fleet's jobs. Wait one
                # lease, in which every live worker renews; only the dead stay expired.
                quiet_until = loop.time() + self.lease
            failing = False
            if (
                expired
                and self._orphan_hooks
                and self._adopting is None
                and loop.time() >= quiet_until
            ):
                self._adopting = asyncio.get_running_loop().create_task(self._adopt())

    async def _adopt(self) -> None:
        try:
            for hook in list(self._orphan_hooks):
                try:
                    await hook()
                except Exception:
                    log.exception("adopting the jobs of an expired worker failed")
        finally:
            self._adopting = None

    # -- the contract ------------------------------------------------------------------------

    async def add_pending(self, record: PendingRecord) -> JobState | None:
        self._open_client()
        async with self._guard(f"cannot record job {record.id}"):
            found = await self._scripts["add"](
                keys=self.script_keys(record.id)["add"],
                args=[
                    self._head,
                    self.worker,
                    self._lease_ms,
                    record.id,
                    dump_record(record),
                    self.final_ttl,
                ],
            )
        return None if found is None else load_state(found)

    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        client = self._open_client()
        adopted = 0
        while True:
            async with self._guard("cannot list pending jobs"):
                moved = int(
                    await self._scripts["pending"](
                        keys=[
                            self._leases_key,
                            self._owner_key,
                            self._jobs_key,
                            self._instances_key,
                        ],
                        args=[self._head, self.worker, self._lease_ms, _ADOPT],
                    )
                )
            adopted += moved
            if moved < _ADOPT:
                break
        async with self._guard("cannot list pending jobs"):
            ids = [_text(i) for i in await client.smembers(self._jobs_key)]
        if adopted:
            self.adopted += adopted
            log.info("adopted %d jobs of expired workers", adopted)
        readable = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            async with self._guard("cannot list pending jobs"):
                texts = await client.hmget(self._pending_key, chunk)
            for field, text in zip(chunk, texts, strict=True):
                if text is None:
                    continue  # finished meanwhile
                record = load_record(text)
                if record is None:
                    self._unreadable.report(field)
                else:
                    readable.append(attrs.evolve(record, owner=self.worker))
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
                    pipe.set(f"{self._head}token:{token}", job_id, nx=True, ex=ttl)
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
            self._open_client()
            async with self._guard("cannot drop finished jobs"):
                await self._scripts["drop"](
                    keys=[self._pending_key, self._owner_key], args=[self._head, *gone]
                )

    async def _keep(self, states: Sequence[JobState], *, drop: bool) -> list[bool]:
        """Record final states; True for each that was new (and so routed to its owner)."""
        self._open_client()
        new: list[bool] = []
        for start in range(0, len(states), _CHUNK):
            chunk = states[start : start + _CHUNK]
            args: list[Any] = [
                self._head,
                self.worker,
                self.final_ttl,
                self.unknown_ttl,
                self.max_unknown,
                "1" if drop else "0",
            ]
            for state in chunk:
                args += (state.id, dump_state(state))
            async with self._guard(f"cannot record the final state of job {chunk[0].id}"):
                flags = await self._scripts["keep"](
                    keys=[
                        self._pending_key,
                        self._owner_key,
                        self._unknown_key,
                        *(self._final_key(s.id) for s in chunk),
                    ],
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
            raw = await client.get(f"{self._head}token:{token}")
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                return None
        return raw if isinstance(raw, str) and raw and raw.isprintable() else None

    # -- completion claims -------------------------------------------------------------------

    async def claim(self, job_id: str, claimant: str = "") -> int:
        self._open_client()
        async with self._guard(f"cannot claim the completion of job {job_id}"):
            token = await self._scripts["claim"](
                keys=[
                    self._claim_key(job_id),
                    self._fence_key,
                    self._leases_key,
                    self._instances_key,
                ],
                args=[self.worker, self.instance, self.final_ttl, claimant],
            )
        token = int(token)
        return token if token > 0 else (CLAIM_DONE if token < 0 else CLAIM_HELD)

    async def ack(self, job_id: str, token: int) -> bool:
        self._open_client()
        async with self._guard(f"cannot acknowledge the completion of job {job_id}"):
            done = await self._scripts["ack"](
                keys=[self._claim_key(job_id)],
                args=[f"{self.worker}|{self.instance}|{token}|", self.final_ttl],
            )
        return int(done) == 1

    async def release(self, job_id: str, token: int) -> None:
        self._open_client()
        async with self._guard(f"cannot release the completion claim of job {job_id}"):
            await self._scripts["release"](
                keys=[self._claim_key(job_id)], args=[f"{self.worker}|{self.instance}|{token}|"]
            )

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
        # A user's client is the user's: its pubsub() is the channel's connection.
        own = self._user_client is None
        client = self._client(0) if own else self._user_client
        assert client is not None  # noqa: S101 - one or the other
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
            if own:
                await client.aclose()

    def _on_message(self, data: bytes | str) -> None:
        state = load_state(data)
        if state is None:
            log.warning(
                "Redis channel %s: ignored a message that is not a job state", self._channel
            )
            return
        self.routed += 1
        self._announce_local(state)
