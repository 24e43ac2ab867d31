"""The ``lipsync-async`` command line (needs the ``cli`` extra: click and rich).

One module per concern: ``_common`` (key and URL options, the client, exit codes, error lines),
``_submit`` (``video``, ``image``, ``multi``, ``status``, ``wait``), ``_costcmd`` (``cost``),
``_batch``, ``_listen`` and ``_emulator``. ``lipsync_async.cli:main`` is the entry point.

Commands are imported when they run, not to list them: ``--help`` and ``cost`` start without
aiohttp, rich or the client (issue 18: under 150 ms). The group knows each command's module and
one-line help (``_COMMANDS``; a test checks that line against the command's own docstring).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = ["main"]


# click 8.2+ raises this for a bare group; 8.1 prints the help itself and exits 0.
_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    cls
    for cls in (getattr(click.exceptions, "NoArgsIsHelpError", None),)
    if isinstance(cls, type) and issubclass(cls, click.UsageError)
)


#: name -> (module, the one-line help ``--help`` lists), sorted as click sorts commands.
_COMMANDS: dict[str, tuple[str, str]] = {
    "batch": ("._batch", "Run every request of a JSONL file, with a live progress bar; resumable."),
    "cost": ("._costcmd", "Estimate a job's credits: 2/s at 480p, 4/s at 720p, 5 s minimum."),
    "emulator": ("._emulator", "Serve a local lipsync.studio emulator until Ctrl-C."),
    "image": ("._submit", "Animate one face from an image and an audio."),
    "listen": ("._listen", "Run a webhook receiver and print every delivery until Ctrl-C."),
    "multi": ("._submit", "A two-speaker conversation from one image and two audios."),
    "status": ("._submit", "Read one job's state (exit 1 if it failed)."),
    "video": ("._submit", "Replace a video's audio, keeping the lips in sync."),
    "wait": ("._submit", "Wait for jobs submitted earlier, printing each as it finishes."),
}


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

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command: click.Command = getattr(importlib.import_module(entry[0], __name__), cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table, not from the commands: listing them must not import them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in _COMMANDS.items()])


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipsync-async", message="%(prog)s %(version)s")
def main() -> None:
    """An asyncio SDK for the lipsync.studio video API, from the shell.

    The key comes from LIPSYNC_API_KEY (or --api-key), the API root from LIPSYNC_BASE_URL
    (or --base-url), the log level from LIPSYNC_LOG_LEVEL (debug, info, warning). Exit codes:
    0 done, 1 a job failed, 2 bad usage or input, 3 API or network error, 130 interrupted.
    """
