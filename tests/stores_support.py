"""Helpers for the store tests: a real redis-server, worker subprocesses, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("stores_worker.py")
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on a free loopback port, in a temporary directory.

    No persistence by default; with ``aof=True``, the append-only file is on (``appendfsync
    always``), so a :meth:`stop` then :meth:`start` (same port, same directory) comes back
    with every write acknowledged before the stop.
    """

    def __init__(self, *, aof: bool = False) -> None:
        assert REDIS_SERVER is not None
        self.aof = aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="lipsync-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self._proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.aof else "no",
                "--appendfsync",
                "always",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        self._dir.cleanup()


class Worker:
    """A ``stores_worker.py`` subprocess; ``await worker.event("name")`` reads its output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, mode: str, *args: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), mode, *args, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker exited ({await self.proc.wait()}) before {name!r}")
                data: dict[str, Any] = json.loads(line)
                if data["event"] == name:
                    return data

    async def exited(self, timeout: float = 10.0) -> int:
        """Wait for a clean exit (the client closed: buffered final states written)."""
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no final writes, like a crashed or OOM-killed worker."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
