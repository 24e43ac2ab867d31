"""``lipsync-async cost``: a credit estimate, offline.

Its own module, importing neither aiohttp nor the client: the command starts in the time the
interpreter and click take (issue 18: under 150 ms).
"""

from __future__ import annotations

import sys

import click

from .._choices import ORDERS, RESOLUTIONS
from .._cost import estimate_credits
from .._errors import ValidationError
from ._common import EXIT_OK, EXIT_USAGE, cli_words, echo_json, fail

__all__ = ["cost"]


@click.command()
@click.option("--resolution", type=click.Choice(RESOLUTIONS), help="[default: 480p]")
@click.option(
    "--seconds",
    type=float,
    help="The audio's length (one speaker). Required, or both --left-seconds and --right-seconds.",
)
@click.option("--left-seconds", type=float, help="Left audio's length (two speakers).")
@click.option("--right-seconds", type=float, help="Right audio's length (two speakers).")
@click.option("--order", type=click.Choice(ORDERS), help="Two speakers. [default: meanwhile]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def cost(
    resolution: str | None,
    seconds: float | None,
    left_seconds: float | None,
    right_seconds: float | None,
    order: str | None,
    as_json: bool,
) -> None:
    """Estimate a job's credits: 2/s at 480p, 4/s at 720p, 5 s minimum."""
    try:
        credits = estimate_credits(
            resolution,
            seconds,
            left_seconds=left_seconds,
            right_seconds=right_seconds,
            order=order,
        )
    except ValidationError as exc:
        fail(cli_words(exc), EXIT_USAGE)
    if as_json:
        echo_json({"credits": credits, "resolution": resolution or "480p"})
    else:
        click.echo(f"{credits:g} credits at {resolution or '480p'}")
    sys.exit(EXIT_OK)
