"""Start a real nginx on loopback in front of a local server, from ``tests/nginx/*.conf``.

Shared by ``tests/test_keepalive_functional.py`` and ``benchmarks/bench_keepalive.py``. nginx
is a system package (CI installs it in ``.ci/run``); :data:`NGINX` is ``None`` when it is
absent, and the test skips with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["NGINX", "NO_NGINX", "nginx_proxy"]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
NO_NGINX = "nginx is not installed (.ci/run installs it with apt-get)"
_CONF = Path(__file__).resolve().parent / "nginx" / "keepalive.conf"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _listening(port: int, proc: asyncio.subprocess.Process, limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError("nginx did not start listening") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def nginx_proxy(upstream_port: int, *, keepalive_timeout: float) -> AsyncIterator[int]:
    """nginx proxying ``127.0.0.1:{port}`` to ``127.0.0.1:{upstream_port}``; yields ``port``.

    ``keepalive_timeout`` (seconds) is how long nginx keeps an idle client connection.
    """
    if NGINX is None:
        raise RuntimeError(NO_NGINX)
    with tempfile.TemporaryDirectory(prefix="lipsync-nginx-") as tmp:
        port = _free_port()
        conf = (
            _CONF.read_text()
            .replace("@DIR@", tmp)
            .replace("@PORT@", str(port))
            .replace("@UPSTREAM@", str(upstream_port))
            .replace("@KEEPALIVE@", f"{int(keepalive_timeout * 1000)}ms")
        )
        path = Path(tmp) / "nginx.conf"
        path.write_text(conf)
        proc = await asyncio.create_subprocess_exec(
            NGINX,
            "-p",
            tmp,
            "-c",
            str(path),
            "-e",
            str(Path(tmp) / "error.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await _listening(port, proc, 10.0)
            yield port
        finally:
            if proc.returncode is None:
                proc.terminate()  # SIGTERM: fast shutdown, this process's own child only
                try:
                    await asyncio.wait_for(proc.wait(), 10.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
