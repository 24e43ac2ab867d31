"""Local files as inputs: the registry of files the webhook receiver serves, and its handler.

The service fetches media by URL only, so a ``pathlib.Path`` input is registered here at submit
and the service gets ``{public_url}{path}/files/{token}/{name}``: ``token`` is a fresh
``secrets.token_urlsafe(32)`` per file per submit (256 bits), ``name`` a sanitised copy of the
file's name (services and CDNs like an extension). The URL does not carry the receiver's
webhook secret: input URLs end up in more places (the service's job record, fetch logs) than
a webhook URL, and one leaking must not let anyone forge deliveries.

Only registered files are served. The handler looks the token up in a dict; nothing from the
request is ever joined to a path, so there is no traversal to defend against. And the file
served is the file registered: its device and inode are taken at registration, and each
request opens the path without following a final symlink (``O_NOFOLLOW``), checks the open
file is that same inode, and serves *that open file* (through ``/proc/self/fd``), so a file
swapped afterwards for a symlink to a private key, or for another file, is a 404, with no
window between the check and the read. A file stays
served until its job ends (final state, tracking error, ``cancel()``, client close) plus
``grace`` seconds, then its URL is a 404. Expiries share one timer: every entry waits the same
``grace``, so a deque in due order replaces a heap or a timer per job.

Bytes go out through ``aiohttp.web.FileResponse``: ranges, HEAD, ``sendfile`` from disk (or
reads in a thread), never a whole file in memory and never a blocking read on the loop. This
module imports ``aiohttp.web`` next to ``_webhook`` because it is the receiver's other half;
keeping it apart keeps ``_webhook`` about deliveries.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import secrets
import stat
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from aiohttp import hdrs, web

from ._errors import ValidationError
from ._models import check_file

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.web_request import BaseRequest

    from ._job import Job

__all__ = ["FileRegistry", "safe_name"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME: Final = 100
# The stdlib table varies by platform (it reads /etc/mime.types); these are the media types the
# service takes, pinned so a fetcher that trusts Content-Type sees the same on every machine.
_MEDIA_TYPES: Final = {
    ".aac": "audio/aac",
    ".flac": "audio/flac",
    ".gif": "image/gif",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".m4a": "audio/mp4",
    ".mov": "video/quicktime",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".png": "image/png",
    ".wav": "audio/wav",
    ".webm": "video/webm",
    ".webp": "image/webp",
}


def safe_name(path: Path) -> str:
    """The last URL segment for ``path``: its name reduced to ``[A-Za-z0-9._-]``, never empty.

    Cosmetic (the token alone finds the file), but it keeps the extension for fetchers that
    sniff by name, and it never carries ``/``, ``..`` or anything needing escapes.
    """
    stem, suffix = os.path.splitext(path.name)
    stem = _UNSAFE.sub("_", stem).strip("._") or "file"
    suffix = "." + _UNSAFE.sub("", suffix[1:]) if len(suffix) > 1 else ""
    return stem[: _MAX_NAME - len(suffix[:16])] + suffix[:16]


def content_type(name: str) -> str:
    """The Content-Type a file named ``name`` is served with."""
    ext = os.path.splitext(name)[1].lower()
    return _MEDIA_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class _Served(NamedTuple):
    path: Path
    name: str
    content_type: str
    identity: tuple[int, int]  # (st_dev, st_ino) at registration


class _PlainFileResponse(web.FileResponse):
    """A ``FileResponse`` that sends exactly the registered file, from a descriptor we opened.

    aiohttp's would send a ``.gz``/``.br`` sibling of the file when the fetcher accepts that
    encoding; a stale ``clip.mp4.gz`` next to ``clip.mp4`` must not stand in for it, so the
    request it sees has no ``Accept-Encoding``. It opens ``/proc/self/fd/N`` (the inode our
    descriptor holds, whatever the path names now); the descriptor is closed once sent.
    """

    def __init__(self, fd: int, headers: dict[str, str]) -> None:
        super().__init__(_fd_path(fd), headers=headers)
        self._fd: int | None = fd

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if hdrs.ACCEPT_ENCODING in request.headers:
            headers = request.headers.copy()
            del headers[hdrs.ACCEPT_ENCODING]
            request = request.clone(headers=headers)
        try:
            return await super().prepare(request)
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)


def _fd_path(fd: int) -> str:
    # Linux: /proc/self/fd/N opens the same inode (a magic link, not a path lookup); BSDs and
    # macOS: /dev/fd/N duplicates the descriptor.
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO put in the file's place must not hang the open
    | getattr(os, "O_CLOEXEC", 0)
)


def _close_opened(opening: asyncio.Future[int | None]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        fd = opening.result()
        if fd is not None:
            os.close(fd)


def _open_registered(served: _Served) -> int | None:
    """Open the registered file, or ``None`` if the path no longer holds that inode."""
    try:
        fd = os.open(served.path, _OPEN_FLAGS)
    except OSError:  # gone, unreadable, or a symlink now (ELOOP with O_NOFOLLOW)
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != served.identity:
        os.close(fd)
        return None
    return fd


def _not_found() -> web.Response:
    return web.Response(status=404, body=b'{"error":"not found"}', content_type="application/json")


class FileRegistry:
    """Local files a receiver serves, by token, until their jobs end plus ``grace`` seconds."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._files: dict[str, _Served] = {}
        self._expiring: deque[tuple[float, tuple[str, ...]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.served = 0  # responses with a file (a figure for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._files)

    def add(self, field: str, path: os.PathLike[str]) -> tuple[str, str]:
        """Register ``path`` under a fresh token; return ``(token, name)`` for its URL.

        Checked again here (a ``ValidationError`` naming ``field``): the file may have gone
        since the request was built. The absolute path is kept, so a later ``chdir`` changes
        nothing.
        """
        resolved = Path(check_file(field, path)).resolve()
        try:
            st = os.stat(resolved)
        except OSError as exc:  # gone between the check and here
            raise ValidationError(field, f"cannot use {str(path)!r:.200}: {exc}") from None
        self._loop = asyncio.get_running_loop()
        token = secrets.token_urlsafe(32)
        name = safe_name(resolved)
        self._files[token] = _Served(resolved, name, content_type(name), (st.st_dev, st.st_ino))
        return token, name

    def discard(self, tokens: Iterable[str]) -> None:
        """Stop serving ``tokens`` now (a submit that surely created no job)."""
        for token in tokens:
            self._files.pop(token, None)

    def expire(self, tokens: Iterable[str]) -> None:
        """Stop serving ``tokens`` after ``grace`` seconds (or now, with a grace of 0)."""
        live = tuple(t for t in tokens if t in self._files)
        if not live:
            return
        if self.grace <= 0:
            self.discard(live)
            return
        loop = self._loop
        if loop is None or loop.is_closed():  # nothing left to serve them on
            self.discard(live)
            return
        self._expiring.append((loop.time() + self.grace, live))
        if self._timer is None:
            self._timer = loop.call_at(self._expiring[0][0], self._sweep)

    def expire_with(self, job: Job, tokens: Iterable[str]) -> None:
        """Expire ``tokens`` ``grace`` seconds after ``job`` ends, however it ends.

        A done callback, like any user's: it fires once for every ending, ``cancel()`` and
        client close included.
        """
        kept = tuple(tokens)
        job.add_done_callback(lambda _: self.expire(kept))

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # noqa: S101 - a timer runs on the loop that set it
        now = loop.time()
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            self.discard(expiring.popleft()[1])
        if expiring:
            self._timer = loop.call_at(expiring[0][0], self._sweep)

    def clear(self) -> None:
        """Forget every file and pending expiry (the receiver stopped)."""
        self._files.clear()
        self._expiring.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET``/``HEAD {path}/files/{token}/{name}``: the registered file, or 404."""
        # The token is the secret; the name is cosmetic but must match, so each file has one URL.
        served = self._files.get(request.match_info.get("token", ""))
        if served is None or request.match_info.get("name") != served.name:
            return _not_found()
        opening = asyncio.get_running_loop().run_in_executor(None, _open_registered, served)
        try:
            fd = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the server stops: close what the thread opens
            opening.add_done_callback(_close_opened)
            raise
        if fd is None:
            return _not_found()
        self.served += 1
        return _PlainFileResponse(
            fd,
            headers={
                hdrs.CONTENT_TYPE: served.content_type,
                # A cached copy would outlive the URL's expiry; this is not a public asset.
                hdrs.CACHE_CONTROL: "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )
