"""Start a real nginx on loopback in front of local servers, from ``tests/nginx/*.conf``.

Shared by ``tests/test_keepalive_functional.py`` and ``benchmarks/bench_keepalive.py``
(:func:`nginx_proxy`, one upstream) and ``tests/test_fleet_functional.py``
(:func:`nginx_balancer`, round-robin over a fleet's receivers). nginx
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

__all__ = ["NGINX", "NO_NGINX", "nginx_balancer", "nginx_proxy"]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
NO_NGINX = "nginx is not installed (.ci/run installs it with apt-get)"
_CONFS = Path(__file__).resolve().parent / "nginx"


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
    values = {
        "UPSTREAM": str(upstream_port),
        "KEEPALIVE": f"{int(keepalive_timeout * 1000)}ms",
    }
    async with _nginx("keepalive.conf", values) as port:
        yield port


@contextlib.asynccontextmanager
async def nginx_balancer(upstream_ports: list[int]) -> AsyncIterator[int]:
    """nginx on ``127.0.0.1:{port}``, round-robin over ``127.0.0.1:{p}`` for each upstream
    port; yields ``port``. An upstream that refuses a connection is skipped for a second."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;" for p in upstream_ports
    )
    async with _nginx("roundrobin.conf", {"UPSTREAMS": servers}) as port:
        yield port


@contextlib.asynccontextmanager
async def _nginx(name: str, values: dict[str, str]) -> AsyncIterator[int]:
    if NGINX is None:
        raise RuntimeError(NO_NGINX)
    with tempfile.TemporaryDirectory(prefix="lipsync-nginx-") as tmp:
        port = _free_port()
        conf = (_CONFS / name).read_text().replace("@DIR@", tmp).replace("@PORT@", str(port))
        for key, value in values.items():
            conf = conf.replace(f"@{key}@", value)
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
