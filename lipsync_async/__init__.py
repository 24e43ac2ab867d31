"""lipsync_async: an asyncio-native SDK for the lipsync.studio video API.

Submit lipsync jobs and get awaitable :class:`Job` handles that resolve by polling (one
scheduler for all jobs) or through an embedded :class:`WebhookReceiver`::

    async with LipsyncClient() as client:
        job = await client.lipsync_image(image=url, audio=url, resolution="720p")
        state = await job
        await client.download(state, "out.mp4")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "ASGIApp",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "InsufficientCreditsError",
    "Job",
    "JobFailed",
    "JobState",
    "JobStatus",
    "JobTimeoutError",
    "LipsyncClient",
    "LipsyncError",
    "LipsyncImageMultiRequest",
    "LipsyncImageRequest",
    "LipsyncVideoRequest",
    "NotFoundError",
    "Order",
    "RateLimitError",
    "Request",
    "Resolution",
    "ServerError",
    "SubmissionUncertainError",
    "ValidationError",
    "WebhookReceiver",
    "estimate_credits",
]


if TYPE_CHECKING:
    # What type checkers see: the names themselves, and a plain string attribute for the
    # version. The lazy module ``__getattr__`` below is hidden from them, so a misspelled
    # import (``from lipsync_async import LipsyncClinet``) is an error in mypy and pyright
    # instead of an ``Any``.
    from ._asgi import ASGIApp
    from ._client import LipsyncClient
    from ._cost import estimate_credits
    from ._errors import (
        APIConnectionError,
        APIError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ClientClosedError,
        InsufficientCreditsError,
        JobFailed,
        JobTimeoutError,
        LipsyncError,
        NotFoundError,
        RateLimitError,
        ServerError,
        SubmissionUncertainError,
        ValidationError,
    )
    from ._job import Job
    from ._models import (
        JobState,
        JobStatus,
        LipsyncImageMultiRequest,
        LipsyncImageRequest,
        LipsyncVideoRequest,
        Order,
        Request,
        Resolution,
    )
    from ._webhook import WebhookReceiver

    __version__: str
else:
    # At run time each name is imported on first use: ``import lipsync_async`` (and the
    # command line's ``--help`` and ``cost``, which live in this package) does not pay for
    # aiohttp, cattrs and asyncio until something needs them (issue 18). ``from lipsync_async
    # import LipsyncClient`` works as before: the import system calls ``__getattr__``.
    from . import _errors

    _WHERE = {
        "ASGIApp": "._asgi",
        "LipsyncClient": "._client",
        "estimate_credits": "._cost",
        "Job": "._job",
        "WebhookReceiver": "._webhook",
        # Every public error, from the error module's own list (it imports nothing heavy).
        **dict.fromkeys((n for n in _errors.__all__ if n != "excerpt"), "._errors"),
        **dict.fromkeys(
            (
                "JobState",
                "JobStatus",
                "LipsyncImageMultiRequest",
                "LipsyncImageRequest",
                "LipsyncVideoRequest",
                "Order",
                "Request",
                "Resolution",
            ),
            "._models",
        ),
    }

    def __getattr__(name: str) -> object:
        where = _WHERE.get(name)
        if where is not None:
            from importlib import import_module

            value = getattr(import_module(where, __name__), name)
            globals()[name] = value  # the next access is a plain attribute
            return value
        # Lazy, like stamina: the version comes from the installed metadata when there is one.
        if name == "__version__":
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version("lipsync-async")
            except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
                from ._version import __version__

                return __version__
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
