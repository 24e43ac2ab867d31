"""Where the examples send their jobs: the real API if you have a key, else a local emulator.

Every example starts with ``async with target() as t:`` and builds its client from ``t``. With
``LIPSYNC_API_KEY`` set, ``t`` points at lipsync.studio (or ``LIPSYNC_BASE_URL``) and jobs are
real, billed and take minutes; without it, a :class:`FakeLipsyncServer` runs in this process
and jobs take a fraction of a second (``LIPSYNC_EXAMPLE_FAST=1`` makes them shorter still).

The media URLs below are placeholders the emulator accepts; for real jobs, point them at your
own files with ``LIPSYNC_EXAMPLE_IMAGE``, ``LIPSYNC_EXAMPLE_AUDIO`` and ``LIPSYNC_EXAMPLE_VIDEO``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from lipsync_async.testing import FakeLipsyncServer

IMAGE = os.environ.get("LIPSYNC_EXAMPLE_IMAGE", "https://media.example.com/face.png")
AUDIO = os.environ.get("LIPSYNC_EXAMPLE_AUDIO", "https://media.example.com/voice.mp3")
VIDEO = os.environ.get("LIPSYNC_EXAMPLE_VIDEO", "https://media.example.com/clip.mp4")


@dataclass(frozen=True)
class Target:
    """What a client needs: the key, the API root, and a poll interval suited to it."""

    api_key: str
    base_url: str | None  # None: the client's default (LIPSYNC_BASE_URL, then lipsync.studio)
    poll_interval: float
    fake: FakeLipsyncServer | None  # the emulator, when there is no real key

    def __repr__(self) -> str:  # never print the key
        return f"Target({self.base_url or 'lipsync.studio'!r}, emulated={self.fake is not None})"


@asynccontextmanager
async def target(**emulator_knobs: Any) -> AsyncIterator[Target]:
    """The real API when ``LIPSYNC_API_KEY`` is set, else an emulator with ``emulator_knobs``."""
    key = os.environ.get("LIPSYNC_API_KEY")
    if key:
        # The service asks clients to poll every 5 to 10 s.
        yield Target(key, os.environ.get("LIPSYNC_BASE_URL"), 5.0, None)
        return
    fast = os.environ.get("LIPSYNC_EXAMPLE_FAST") == "1"
    emulator_knobs.setdefault("job_duration", 0.05 if fast else 0.5)
    async with FakeLipsyncServer(**emulator_knobs) as fake:
        print(f"(no LIPSYNC_API_KEY: using a local emulator at {fake.base_url})")
        yield Target(fake.api_key, fake.base_url, 0.05 if fast else 0.2, fake)
