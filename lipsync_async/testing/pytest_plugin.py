"""The ``lipsync_emulator`` pytest fixture, loaded through the ``pytest11`` entry point.

Every pytest run in an environment where lipsync-async is installed loads this module, so it
imports nothing heavy (the emulator and aiohttp load when the fixture is first used) and never
fails to import: without pytest-asyncio the fixture still exists but fails with a message that
says what to install.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    # Imported here, not at the top: this module loads in every pytest run.
    from lipsync_async.testing import FakeLipsyncServer

__all__ = ["lipsync_emulator"]


async def _emulator() -> AsyncIterator[FakeLipsyncServer]:
    """A started :class:`~lipsync_async.testing.FakeLipsyncServer` with default knobs, closed
    after the test. Change knobs through its attributes; use ``.base_url`` and ``.api_key``."""
    # Imported here, not at the top: this module loads in every pytest run.
    from lipsync_async.testing import FakeLipsyncServer

    async with FakeLipsyncServer() as fake:
        yield fake


def _needs_pytest_asyncio() -> NoReturn:
    pytest.fail(
        "the lipsync_emulator fixture needs pytest-asyncio: pip install 'lipsync-async[testing]' "
        '(or pytest-asyncio), and set asyncio_mode = "auto" in your pytest configuration',
        pytrace=False,
    )


# Either a real async fixture or one that explains what is missing; typed loosely because the
# two decorators return different (private) fixture types.
lipsync_emulator: object
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the dev extra always has it
    lipsync_emulator = pytest.fixture(_needs_pytest_asyncio, name="lipsync_emulator")
else:
    lipsync_emulator = pytest_asyncio.fixture(_emulator, name="lipsync_emulator")
