"""``lipsync-async listen``: a standalone webhook receiver that prints each delivery.

For a process that only listens (the submits come from elsewhere, with this receiver's URL as
their ``webhook``), or to see what the service sends. The URL carries the receiver's secret, so
it is printed once, on stderr, and never logged. Ctrl-C (SIGINT) exits 130 as the README's
table says, SIGTERM 0 (a clean stop); a port in use is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal

import click

from .._models import JobState
from .._webhook import WebhookReceiver
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    ApiOptions,
    PortInUse,
    echo_json,
    run,
    state_json,
)
from ._submit import _line

__all__ = ["listen"]


@click.command()
@click.option(
    "--public-url",
    default=None,
    help="Where the service reaches this machine (a tunnel, a load balancer). "
    "[default: this machine's own address, for the emulator]",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (0: any free one).")
@click.option("--path", default="/webhooks/lipsync", show_default=True, help="The route.")
@click.option(
    "--secret",
    envvar="LIPSYNC_WEBHOOK_SECRET",
    show_envvar=True,
    help="The URL's secret, shared by workers behind one URL. [default: random]",
)
@click.option("--allow-insecure", is_flag=True, help="Accept an http:// public URL (tunnels).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per delivery.")
@click.option("--debug", is_flag=True, help="Show tracebacks and the SDK's debug log.")
def listen(
    public_url: str | None,
    host: str,
    port: int,
    path: str,
    secret: str | None,
    allow_insecure: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Run a webhook receiver and print every delivery until Ctrl-C."""
    # A long-running listener shows the receiver's warnings (a failing on_delivery, a store
    # that cannot record) by default; LIPSYNC_LOG_LEVEL or --debug show more.
    opts = ApiOptions(
        api_key=secret, base_url=None, poll_interval=5.0, debug=debug, log_level=logging.WARNING
    )

    def show(state: JobState) -> None:
        if as_json:
            echo_json(state_json(state))
        else:
            click.echo(_line(state))

    async def serve() -> int:
        receiver = WebhookReceiver(
            public_url,
            host=host,
            port=port,
            path=path,
            secret=secret,
            allow_insecure=allow_insecure,
            on_delivery=show,
        )
        stop = asyncio.Event()
        got: list[int] = []
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            got.append(signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, on_signal, signum)
        try:
            await receiver.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse("--port", port) from None
            raise
        try:
            click.echo(f"listening on {host}:{receiver.port}", err=True)
            click.echo(f"webhook URL (keep it secret): {receiver.url}", err=True)
            await stop.wait()
        finally:
            await receiver.close()
        click.echo("stopped", err=True)
        return EXIT_INTERRUPTED if got and got[0] == signal.SIGINT else EXIT_OK

    run(opts, serve())
