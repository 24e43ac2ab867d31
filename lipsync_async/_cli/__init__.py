"""The ``lipsync-async`` command line (needs the ``cli`` extra: click and rich).

One module per concern: ``_common`` (key and URL options, the client, exit codes, error lines),
``_submit`` (``video``, ``image``, ``multi``, ``status``, ``wait``, ``cost``), ``_batch``,
``_listen`` and ``_emulator``. ``lipsync_async.cli:main`` is the entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from ._batch import batch
from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._emulator import emulator
from ._listen import listen
from ._submit import cost, image, multi, status, video, wait

__all__ = ["main"]


# click 8.2+ raises this for a bare group; 8.1 prints the help itself and exits 0.
_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    cls
    for cls in (getattr(click.exceptions, "NoArgsIsHelpError", None),)
    if isinstance(cls, type) and issubclass(cls, click.UsageError)
)


class _OneLineErrors(click.Group):
    """A group whose usage errors are one line on stderr, not click's usage block.

    ``--resolution 1080p`` prints ``error: Invalid value for '--resolution': ...`` and a
    pointer to ``--help``, then exits 2, like every other error of the command.
    """

    def main(  # always exits, like click in standalone mode
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # `lipsync-async` alone: the help, as click prints it
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "lipsync-async"
            message = exc.format_message().rstrip(".")
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:  # a bad file argument, for one
            click.echo(f"error: {exc.format_message().rstrip('.')}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C at a prompt, or while click parsed
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipsync-async", message="%(prog)s %(version)s")
def main() -> None:
    """An asyncio SDK for the lipsync.studio video API, from the shell.

    The key comes from LIPSYNC_API_KEY (or --api-key), the API root from LIPSYNC_BASE_URL
    (or --base-url), the log level from LIPSYNC_LOG_LEVEL (debug, info, warning). Exit codes:
    0 done, 1 a job failed, 2 bad usage or input, 3 API or network error, 130 interrupted.
    """


for _command in (video, image, multi, status, wait, batch, cost, listen, emulator):
    main.add_command(_command)
