"""``lipsync-async emulator``: serve :class:`~lipsync_async.testing.FakeLipsyncServer`.

Until Ctrl-C (SIGINT, exit 130 as the README's table says) or SIGTERM (exit 0, a clean stop),
so an application under development, or another language's client, can be pointed at a local
lipsync.studio. A port in use is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import sys
from typing import TYPE_CHECKING

import click

from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, fail, setup_logging

if TYPE_CHECKING:
    from lipsync_async.testing import FakeLipsyncServer

__all__ = ["emulator"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8765, show_default=True, help="TCP port (0: any free port).")
@click.option("--api-key", default=None, help="The key clients must send. [default: random]")
@click.option(
    "--job-duration",
    type=float,
    default=0.05,
    show_default=True,
    help="Seconds from submit to final state.",
)
@click.option(
    "--realistic", is_flag=True, help="Take 10-30 s per second of output, like the service."
)
@click.option(
    "--clip-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Assumed length of every audio, for billing and realistic durations.",
)
@click.option(
    "--failure-rate", type=float, default=0.0, show_default=True, help="Fraction of jobs that fail."
)
@click.option("--credits", type=float, default=None, help="Credits per key. [default: unlimited]")
@click.option(
    "--rate-limit",
    type=float,
    default=None,
    help="Requests/s over all keys before 429. [default: none]",
)
@click.option(
    "--server-error-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of requests answered 503.",
)
@click.option(
    "--drop-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of submits dropped without an answer after the job was created.",
)
@click.option(
    "--webhook-duplicate-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of webhook deliveries sent twice.",
)
@click.option(
    "--webhook-early-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of webhook jobs delivered before the submit is answered.",
)
@click.option(
    "--webhook-loss-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of webhook deliveries never sent.",
)
@click.option(
    "--webhook-delay",
    type=float,
    default=0.0,
    show_default=True,
    help="Extra seconds before each webhook delivery.",
)
@click.option("--seed", type=int, default=None, help="Seed the fault patterns.")
def emulator(
    host: str,
    port: int,
    api_key: str | None,
    job_duration: float,
    realistic: bool,
    clip_seconds: float,
    failure_rate: float,
    credits: float | None,
    rate_limit: float | None,
    server_error_rate: float,
    drop_rate: float,
    webhook_duplicate_rate: float,
    webhook_early_rate: float,
    webhook_loss_rate: float,
    webhook_delay: float,
    seed: int | None,
) -> None:
    """Serve a local lipsync.studio emulator until Ctrl-C."""
    # Imported here so `lipsync-async --help` does not pay for aiohttp.web.
    from lipsync_async.testing import FakeLipsyncServer

    fake = FakeLipsyncServer(
        host=host,
        port=port,
        api_key=api_key,
        job_duration=job_duration,
        realistic=realistic,
        clip_seconds=clip_seconds,
        failure_rate=failure_rate,
        credits=credits,
        rate_limit=rate_limit,
        server_error_rate=server_error_rate,
        drop_rate=drop_rate,
        webhook_duplicate_rate=webhook_duplicate_rate,
        webhook_early_rate=webhook_early_rate,
        webhook_loss_rate=webhook_loss_rate,
        webhook_delay=webhook_delay,
        seed=seed,
    )
    setup_logging(api_key, debug=False, default=logging.WARNING)  # a server shows its warnings
    try:
        code = asyncio.run(_serve(fake))
    except KeyboardInterrupt:  # no signal handlers (Windows): Ctrl-C lands here
        code = EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        fail(
            f"--port {port}: the port is already in use (stop what uses it, or pass --port 0 "
            "for any free port)",
            EXIT_USAGE,
        )
    sys.exit(code)


async def _serve(fake: FakeLipsyncServer) -> int:
    stop = asyncio.Event()
    got: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        got.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows' proactor loop: Ctrl-C then ends asyncio.run with
        # KeyboardInterrupt, which still closes the server through `async with`.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, on_signal, signum)
    async with fake:
        click.echo(f"lipsync emulator serving at {fake.base_url}")
        click.echo(f"api key: {fake.api_key}")
        click.echo("Ctrl-C to stop")
        await stop.wait()
    click.echo("stopped")
    return EXIT_INTERRUPTED if got and got[0] == signal.SIGINT else EXIT_OK
