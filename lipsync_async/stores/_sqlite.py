"""``SQLiteStore``: one machine, pending jobs that survive a restart; stdlib ``sqlite3`` only.

sqlite3 blocks, so every statement runs on one dedicated thread (a single-worker executor that
owns the connection): the event loop never waits on the disk, and statements never race each
other for the connection. The database is in WAL mode with ``synchronous=NORMAL``: a commit
costs no fsync (a power cut can lose the last commits, a process crash cannot), and readers
never block the writer. Final states resolved together are written in one transaction.

Completion claims (``LipsyncClient(on_complete=...)``) live in the file too, so a callback runs
once per job on this machine, across restarts: a claim names its holder's process id and store
object; one held by a process that no longer runs (checked with ``kill(pid, 0)``) is taken over
with a larger token. A process id reused by an unrelated process before the restart would keep
such a claim held (then that job's callback is not re-run: logged at the retries); the claim
table is pruned like the final states.

The channel reaches listeners in this process only: SQLite cannot push to another process.
Several processes may share the file (WAL allows it) and each finds the others' final states
through :meth:`pending` when it resumes; workers that must resolve each other's deliveries live
belong on :class:`~lipsync_async.stores.RedisStore`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .._models import JobState
from ._base import CLAIM_DONE, CLAIM_HELD, PendingRecord, Store, StoreError
from ._records import Unreadable, dump_record, dump_state, load_record, load_state

__all__ = ["SQLiteStore"]

log = logging.getLogger("lipsync_async.stores")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY, submitted_at REAL NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS finals (
    id TEXT PRIMARY KEY, recorded_at REAL NOT NULL, state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS finals_recorded_at ON finals (recorded_at);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, expires_at REAL NOT NULL, job_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    id TEXT PRIMARY KEY, token INTEGER NOT NULL, holder TEXT, claimed_at REAL NOT NULL
);
"""
_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


class SQLiteStore(Store):
    """Pending jobs and final states in a SQLite file at ``path`` (created if missing).

    ``final_ttl`` seconds: final states older than this are pruned when the store opens.
    ``timeout``: seconds a statement waits for another process's write lock.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, final_ttl: float = 7 * 86400.0, timeout: float = 5.0
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.final_ttl = final_ttl
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._unreadable = Unreadable(f"SQLite store {str(self.path)!r}")
        self._holder = f"{os.getpid()}:{uuid.uuid4().hex}"  # this store object's claims

    def key(self) -> Hashable:
        """``("sqlite", the file's absolute path)``."""
        where = str(self.path) if str(self.path) == ":memory:" else os.path.realpath(self.path)
        return None if where == ":memory:" else ("sqlite", where)

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r} {'open' if self._db is not None else 'closed'}>"

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor, db = self._executor, self._db
        if executor is None or db is None:
            raise StoreError(f"the SQLite store {str(self.path)!r} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, _in_transaction, db, fn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"SQLite store {str(self.path)!r}: {exc}") from exc

    async def _open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lipsync-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._db = await loop.run_in_executor(self._executor, self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"cannot open the SQLite store {str(self.path)!r}: {exc}") from exc

    def _create_private(self) -> None:
        """Create the file ``0600`` before SQLite does (it would use ``0644``, less umask).

        It holds the served-file URLs, whose tokens are the only protection of input files.
        SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they are
        ``0600`` too. An existing file keeps its mode (the owner chose it); a readable one
        is worth a warning.
        """
        if str(self.path) == ":memory:":
            return
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if os.stat(self.path).st_mode & 0o077:
                log.warning(
                    "SQLite store %r is readable by other users; it holds the URLs of served "
                    "files: chmod 600 it (and its -wal and -shm)",
                    str(self.path),
                )
            return
        os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        self._create_private()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see _in_transaction).
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        # Text that is not UTF-8 (a corrupted or hand-edited row) must not make every read of
        # the table fail: it decodes to lone surrogates, which no id check lets through.
        db.text_factory = _decode_text
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("DELETE FROM finals WHERE recorded_at < ?", (time.time() - self.final_ttl,))
            db.execute("DELETE FROM tokens WHERE expires_at < ?", (time.time(),))
            db.execute(
                "DELETE FROM claims WHERE holder IS NULL AND claimed_at < ?",
                (time.time() - self.final_ttl,),
            )
        except BaseException:
            db.close()
            raise
        return db

    async def _close(self) -> None:
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            if db is not None:
                await loop.run_in_executor(executor, db.close)
        finally:
            executor.shutdown(wait=False)

    # -- the contract ------------------------------------------------------------------------

    async def add_pending(self, record: PendingRecord) -> JobState | None:
        row = dump_record(record)

        def add(db: sqlite3.Connection) -> str | None:
            db.execute(
                "INSERT OR REPLACE INTO pending (id, submitted_at, record) VALUES (?, ?, ?)",
                (record.id, record.submitted_at, row),
            )
            found = db.execute("SELECT state FROM finals WHERE id = ?", (record.id,)).fetchone()
            return None if found is None else str(found[0])

        text = await self._call(add)
        return None if text is None else load_state(text)

    async def pending(self) -> list[tuple[PendingRecord, JobState | None]]:
        def read(db: sqlite3.Connection) -> list[tuple[object, object, str | None]]:
            return db.execute(
                "SELECT p.id, p.record, f.state FROM pending p LEFT JOIN finals f ON f.id = p.id"
                " ORDER BY p.submitted_at"
            ).fetchall()

        out: list[tuple[PendingRecord, JobState | None]] = []
        for key, record_text, state_text in await self._call(read):
            # Any column type: the file is anyone's who can write it.
            record = load_record(record_text) if isinstance(record_text, str | bytes) else None
            if record is None:
                self._unreadable.report(key)
                continue
            state = load_state(state_text) if isinstance(state_text, str | bytes) else None
            out.append((record, state))
        return out

    async def record_final(self, state: JobState) -> bool:
        new = await self._call(lambda db: _keep(db, [state]))
        for fresh in new:
            self._announce_local(fresh)
        return bool(new)

    async def finish(self, states: Sequence[JobState], dropped: Iterable[str] = ()) -> None:
        gone = [(s.id,) for s in states] + [(i,) for i in dropped]

        def write(db: sqlite3.Connection) -> list[JobState]:
            new = _keep(db, states)
            db.executemany("DELETE FROM pending WHERE id = ?", gone)
            return new

        for fresh in await self._call(write):
            self._announce_local(fresh)

    async def finals(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        ids = list(job_ids)

        def read(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += db.execute(
                    f"SELECT id, state FROM finals WHERE id IN ({marks})",  # noqa: S608 - only ?s
                    chunk,
                ).fetchall()
            return rows

        out: dict[str, JobState] = {}
        for job_id, text in await self._call(read):
            state = load_state(text)
            if state is not None:
                out[job_id] = state
        return out

    async def record_token(self, token: str, job_id: str) -> None:
        expires = time.time() + self.token_ttl

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM tokens WHERE expires_at < ?", (time.time(),))
            db.execute(
                "INSERT OR IGNORE INTO tokens (token, expires_at, job_id) VALUES (?, ?, ?)",
                (token, expires, job_id),
            )

        await self._call(write)

    async def token_job(self, token: str) -> str | None:
        def read(db: sqlite3.Connection) -> object:
            row = db.execute(
                "SELECT job_id FROM tokens WHERE token = ? AND expires_at >= ?",
                (token, time.time()),
            ).fetchone()
            return None if row is None else row[0]

        found = await self._call(read)
        return found if isinstance(found, str) and found.isprintable() else None

    # -- completion claims -------------------------------------------------------------------

    async def claim(self, job_id: str, claimant: str = "") -> int:
        me = f"{self._holder}:{claimant}"  # "pid:store object:claimant"

        def take(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT holder, token FROM claims WHERE id = ?", (job_id,)
            ).fetchone()
            if row is not None:
                holder, held = row
                if holder is None:
                    return CLAIM_DONE
                if holder == me:
                    return int(held)  # the holder again: a retry whose answer was lost
                if _alive(holder):
                    return CLAIM_HELD
            (token,) = db.execute("SELECT COALESCE(MAX(token), 0) + 1 FROM claims").fetchone()
            db.execute(
                "INSERT OR REPLACE INTO claims (id, token, holder, claimed_at) VALUES (?, ?, ?, ?)",
                (job_id, token, me, time.time()),
            )
            return int(token)

        return await self._call(take)

    async def ack(self, job_id: str, token: int) -> bool:
        mine = self._holder + ":"

        def done(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE claims SET holder = NULL, claimed_at = ? WHERE id = ? AND token = ?"
                " AND substr(holder, 1, ?) = ?",  # held by this store object, any claimant
                (time.time(), job_id, token, len(mine), mine),
            )
            return cur.rowcount == 1

        return await self._call(done)

    async def release(self, job_id: str, token: int) -> None:
        mine = self._holder + ":"

        def drop(db: sqlite3.Connection) -> None:
            # The row stays (tokens are MAX + 1 over the table: they only grow), held by
            # nobody alive: the next claim takes it over.
            db.execute(
                "UPDATE claims SET holder = 'released' WHERE id = ? AND token = ?"
                " AND substr(holder, 1, ?) = ?",
                (job_id, token, len(mine), mine),
            )

        await self._call(drop)


def _alive(holder: object) -> bool:
    """Whether the process that holds a claim (``"pid:..."``) still runs on this machine."""
    try:
        pid = int(str(holder).split(":", 1)[0])
    except ValueError:
        return False  # not one of ours: taken over
    if pid == os.getpid():
        return True  # another store object of this process: it is running the callback
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # a process we may not signal still runs
    return True


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _in_transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    # BEGIN IMMEDIATE takes the write lock up front, so a read-then-write never deadlocks
    # against another process's writer; reads pay nothing for it in WAL mode.
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _keep(db: sqlite3.Connection, states: Sequence[JobState]) -> list[JobState]:
    """Insert the final states not recorded yet; return those (the ones to announce)."""
    now = time.time()
    new: list[JobState] = []
    for state in states:
        if not state.is_final:
            continue
        cur = db.execute(
            "INSERT OR IGNORE INTO finals (id, recorded_at, state) VALUES (?, ?, ?)",
            (state.id, now, dump_state(state)),
        )
        if cur.rowcount:
            new.append(state)
    return new
