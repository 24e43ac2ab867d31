"""The bytes every completed job's ``output`` URL serves.

The emulator cannot render video, so every output is the same real MP4 shipped as package data:
one second of 64x64 H.264 test pattern with a silent AAC track, 3.4 KB, ``ftyp`` box first. It
is a valid file (ffprobe reads it, players play it), so a download path can be tested end to end
without pretending bytes are a video.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["SAMPLE_MP4"]

#: Read once at import: handlers serve this one immutable object to every download.
SAMPLE_MP4: bytes = files(__package__).joinpath("sample.mp4").read_bytes()
