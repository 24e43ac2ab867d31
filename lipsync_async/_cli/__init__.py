"""The ``lipsync-async`` command line (needs the ``cli`` extra: click and rich).

One module per concern: ``_common`` (key and URL options, the client, exit codes, error lines),
``_submit`` (``video``, ``image``, ``multi``, ``status``, ``wait``, ``cost``), ``_batch``,
``_listen`` and ``_emulator``. ``lipsync_async.cli:main`` is the entry point.
"""

from __future__ import annotations

import click

from ._batch import batch
from ._emulator import emulator
from ._listen import listen
from ._submit import cost, image, multi, status, video, wait

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipsync-async", message="%(prog)s %(version)s")
def main() -> None:
    """An asyncio SDK for the lipsync.studio video API, from the shell.

    The key comes from LIPSYNC_API_KEY (or --api-key). Exit codes: 0 done, 1 a job failed,
    2 bad usage or input, 3 API or network error, 130 interrupted.
    """


for _command in (video, image, multi, status, wait, batch, cost, listen, emulator):
    main.add_command(_command)
