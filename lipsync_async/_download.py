"""Streaming a job's output to disk: a temp file beside the target, renamed when complete.

Disk writes go through a thread (batched to ~1 MiB per hop), so a slow disk never stalls the
event loop; any failure removes the partial file.

The output host is not trusted with the caller's disk (see SECURITY.md's trust table): into a
directory, the file gets a plain name that is never a dotfile (``.bashrc`` becomes
``output.mp4``) and never replaces an existing file unless the caller passes ``overwrite``
(the final step is a hard link, which fails if the name exists, rather than a rename that
would replace it). An explicit file path is the caller's own choice and is replaced.
A body sent with a ``Content-Encoding`` is decompressed by aiohttp, so its ``Content-Length``
(the compressed size) says nothing about the bytes we count: only ``max_bytes`` applies then.

Output URLs expire (signed CDN URLs): :func:`refetch_expired` answers a 403, 404 or 410 from a
job's output by reading the job again for a fresh URL and trying that once; when it fails too,
the error says the URL was refreshed and still refused.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from yarl import URL

from ._errors import APIConnectionError, APIError, LipsyncError, ValidationError

if TYPE_CHECKING:
    from ._http import Transport
    from ._models import JobState

__all__ = ["download_to", "refetch_expired"]

_EXPIRED: Final = frozenset({403, 404, 410})

_CHUNK: Final = 256 * 1024
_FLUSH: Final = 1024 * 1024


_DEFAULT_NAME: Final = "output.mp4"


def _target(path: Path, name: str | None, url: str, overwrite: bool) -> tuple[Path, bool]:
    """The file to write and whether it may replace an existing one."""
    if not path.is_dir():
        return path, True  # named by the caller: theirs to replace
    dest = path / _file_name(name or URL(url).name)
    if not overwrite and dest.exists():
        raise ValidationError(
            "path", f"{dest.name!r} already exists in {str(path)!r}; pass overwrite=True"
        )
    return dest, overwrite


def _file_name(name: str) -> str:
    """A plain file name from a job id or a URL's last segment, which the service chose.

    yarl decodes ``%2F`` in a segment, so ``https://cdn/a%2F..%2F..%2Fx`` names ``a/../../x``:
    only the part after the last separator is kept, and an empty name or one starting with
    ``.`` (``..``, ``.bashrc``, ``.ssh``) becomes the default, so the file always lands inside
    the directory the caller gave and is never a hidden file there.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\0", "")
    return base if base and not base.startswith(".") else _DEFAULT_NAME


def _open_temp(dest: Path) -> tuple[Path, BinaryIO]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    return tmp, open(tmp, "xb")


def _write_all(fh: BinaryIO, chunks: list[bytes]) -> None:
    fh.writelines(chunks)


def _finish(fh: BinaryIO, tmp: Path, dest: Path, replace: bool) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    if not replace:
        try:
            os.link(tmp, dest)  # atomic, and fails if something took the name meanwhile
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise ValidationError(
                "path", f"{dest.name!r} already exists; pass overwrite=True"
            ) from None
        except OSError:  # a filesystem without hard links: check, then rename
            if dest.exists():
                tmp.unlink(missing_ok=True)
                raise ValidationError(
                    "path", f"{dest.name!r} already exists; pass overwrite=True"
                ) from None
        else:
            tmp.unlink()
            return
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
    overwrite: bool = False,
) -> Path:
    """Stream ``url`` into ``path`` atomically; return the final path."""
    dest, replace = await asyncio.to_thread(_target, path, name, url, overwrite)
    async with transport.open_stream(url) as resp:
        # Decompressed on the fly: the Content-Length counts other bytes than ours.
        total = None if resp.encoded else resp.content_length
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
            await asyncio.to_thread(_finish, fh, tmp, dest, replace)
        except BaseException:
            # Synchronous on purpose: it must run even when we are being cancelled, and closing
            # plus unlinking one file is brief.
            _discard(fh, tmp)
            raise
    return dest


async def refetch_expired(
    fetch: Callable[[str], Awaitable[Path]],
    url: str,
    job_id: str,
    read: Callable[[str], Awaitable[JobState]],
    output_of: Callable[[JobState], str],
) -> Path:
    """``fetch(url)``; on 403/404/410, ``read`` the job again and fetch its fresh URL once."""
    try:
        return await fetch(url)
    except APIError as exc:
        if exc.status not in _EXPIRED:
            raise
        first = exc
    try:
        fresh = output_of(await read(job_id))
    except LipsyncError as exc:
        raise APIError(
            f"the output URL answered {first.status} (expired?) and reading the "
            f"job again for a fresh one failed: {exc}",
            status=first.status,
            job_id=job_id,
        ) from exc
    try:
        return await fetch(fresh)
    except APIError as exc:
        if exc.status not in _EXPIRED:
            raise
        raise APIError(
            f"the output URL answered {first.status}; the job was read again for "
            f"a fresh URL{'' if fresh != url else ' (the same one)'}, which answered "
            f"{exc.status} too",
            status=exc.status,
            job_id=job_id,
        ) from exc
