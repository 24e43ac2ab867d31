"""Test against a local lipsync.studio: the emulator and what it records.

:class:`FakeLipsyncServer` speaks the service's wire protocol on 127.0.0.1 with knobs for the
service's failure modes; :class:`FakeJob` and :class:`Delivery` are what it lets a test inspect.
The ``lipsync_emulator`` pytest fixture (registered by the package's ``pytest11`` entry point)
yields a started server, and ``lipsync-async emulator`` runs one from the command line.
"""

from __future__ import annotations

from ._jobs import Delivery, FakeJob
from ._server import FakeLipsyncServer

__all__ = ["Delivery", "FakeJob", "FakeLipsyncServer"]
