"""Streaming a job's output to disk: a temp file beside the target, renamed when complete.

Disk writes go through a thread (batched to ~1 MiB per hop), so a slow disk never stalls the
event loop; any failure removes the partial file.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from yarl import URL

from ._errors import APIConnectionError, APIError

if TYPE_CHECKING:
    from ._http import Transport

__all__ = ["download_to"]

_CHUNK: Final = 256 * 1024
_FLUSH: Final = 1024 * 1024


def _target(path: Path, name: str | None, url: str) -> Path:
    if path.is_dir():
        return path / _file_name(name or URL(url).name)
    return path


def _file_name(name: str) -> str:
    """A plain file name from a job id or a URL's last segment, which the service chose.

    yarl decodes ``%2F`` in a segment, so ``https://cdn/a%2F..%2F..%2Fx`` names ``a/../../x``:
    only the part after the last separator is kept, and ``.``/``..``/empty become the default,
    so the file always lands inside the directory the caller gave.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\0", "")
    return base if base not in ("", ".", "..") else "output.mp4"


def _open_temp(dest: Path) -> tuple[Path, BinaryIO]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    return tmp, open(tmp, "xb")


def _write_all(fh: BinaryIO, chunks: list[bytes]) -> None:
    fh.writelines(chunks)


def _finish(fh: BinaryIO, tmp: Path, dest: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, dest)


def _discard(fh: BinaryIO, tmp: Path) -> None:
    fh.close()
    tmp.unlink(missing_ok=True)


async def download_to(
    transport: Transport,
    url: str,
    path: Path,
    *,
    name: str | None = None,
    progress: Callable[[int, int | None], object] | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Stream ``url`` into ``path`` atomically; return the final path."""
    dest = await asyncio.to_thread(_target, path, name, url)
    async with transport.open_stream(url) as resp:
        total = resp.content_length
        if max_bytes is not None and total is not None and total > max_bytes:
            raise APIError(
                f"download is {total} bytes, over max_bytes={max_bytes}", status=resp.status
            )
        tmp, fh = await asyncio.to_thread(_open_temp, dest)
        try:
            done = 0
            pending: list[bytes] = []
            size = 0
            async for chunk in resp.chunks(_CHUNK):
                done += len(chunk)
                if max_bytes is not None and done > max_bytes:
                    raise APIError(f"download exceeds max_bytes={max_bytes}", status=resp.status)
                pending.append(chunk)
                size += len(chunk)
                if size >= _FLUSH:
                    await asyncio.to_thread(_write_all, fh, pending)
                    pending, size = [], 0
                if progress is not None:
                    progress(done, total)
            if total is not None and done != total:
                raise APIConnectionError(f"download truncated: {done} of {total} bytes")
            if pending:
                await asyncio.to_thread(_write_all, fh, pending)
            await asyncio.to_thread(_finish, fh, tmp, dest)
        except BaseException:
            # Synchronous on purpose: it must run even when we are being cancelled, and closing
            # plus unlinking one file is brief.
            _discard(fh, tmp)
            raise
    return dest
