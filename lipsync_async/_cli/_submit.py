"""One job at a time: ``video``, ``image``, ``multi``, ``status``, ``wait`` and ``cost``.

Machine-readable output (the job id, ``--json`` documents) goes to stdout; progress, notes and
errors go to stderr, so ``ID=$(lipsync-async image ...)`` captures just the id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from .._choices import ORDERS, RESOLUTIONS
from .._client import LipsyncClient
from .._cost import MINIMUM_SECONDS, estimate_credits
from .._errors import JobFailed, JobTimeoutError, LipsyncError, ValidationError
from .._job import Job
from .._models import JobState, LipsyncImageMultiRequest, Request
from .._wire import form_state
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ApiOptions,
    api_options,
    build_request,
    cli_words,
    describe,
    echo_json,
    fail,
    local_files,
    open_client,
    parse_extra,
    run,
    state_json,
)

__all__ = ["image", "multi", "status", "video", "wait"]

F = TypeVar("F", bound=Callable[..., Any])
_SECONDS = click.FloatRange(min=0, min_open=True)


def _submit_options(func: F) -> F:
    """The flags every submit takes, after its media flags."""
    for option in reversed(
        [
            click.option("--resolution", type=click.Choice(RESOLUTIONS), help="[default: 480p]"),
            click.option("--prompt", help="Style text."),
            click.option("--seed", type=int, help="An integer, for repeatable output."),
            click.option(
                "--webhook",
                metavar="URL",
                help="Have the service POST the job's final state here (a `lipsync-async "
                "listen` receiver's URL, say); wins over --public-url's own receiver.",
            ),
            click.option(
                "--extra",
                multiple=True,
                metavar="KEY=VALUE",
                help="A model-specific formState field (VALUE parsed as JSON if it can be).",
            ),
            click.option("--wait", is_flag=True, help="Show progress until the job is done."),
            click.option(
                "--download",
                type=click.Path(dir_okay=True, path_type=Path),
                help="Save the output here (a file, or a directory); implies --wait.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout."),
            click.option(
                "--dry-run", is_flag=True, help="Validate and print the credit estimate only."
            ),
        ]
    ):
        func = option(func)
    return func


@click.command()
@click.option("--video", required=True, help="The video (URL or local file).")
@click.option("--audio", required=True, help="The new audio (URL or local file).")
@click.option("--mask-image", help="Limits the lipsync area (URL or local file).")
@_submit_options
@click.option("--seconds", type=_SECONDS, help="The audio's length, for --dry-run's estimate.")
@api_options(receiver=True)
def video(opts: ApiOptions, video: str, audio: str, mask_image: str | None, **kw: Any) -> None:
    """Replace a video's audio, keeping the lips in sync."""
    _submit("video", {"video": video, "audio": audio, "mask_image": mask_image}, opts, **kw)


@click.command()
@click.option("--image", required=True, help="The face (URL or local file).")
@click.option("--audio", required=True, help="What it says (URL or local file).")
@click.option("--mask-image", help="Limits the lipsync area (URL or local file).")
@_submit_options
@click.option("--seconds", type=_SECONDS, help="The audio's length, for --dry-run's estimate.")
@api_options(receiver=True)
def image(opts: ApiOptions, image: str, audio: str, mask_image: str | None, **kw: Any) -> None:
    """Animate one face from an image and an audio."""
    _submit("image", {"image": image, "audio": audio, "mask_image": mask_image}, opts, **kw)


@click.command()
@click.option("--image", required=True, help="The two faces (URL or local file).")
@click.option("--left-audio", required=True, help="The left speaker (URL or local file).")
@click.option("--right-audio", required=True, help="The right speaker (URL or local file).")
@click.option("--order", type=click.Choice(ORDERS), help="Who speaks when. [default: meanwhile]")
@_submit_options
@click.option("--left-seconds", type=_SECONDS, help="Left audio's length, for --dry-run.")
@click.option("--right-seconds", type=_SECONDS, help="Right audio's length, for --dry-run.")
@api_options(receiver=True)
def multi(
    opts: ApiOptions,
    image: str,
    left_audio: str,
    right_audio: str,
    order: str | None,
    **kw: Any,
) -> None:
    """A two-speaker conversation from one image and two audios."""
    fields = {"image": image, "left_audio": left_audio, "right_audio": right_audio, "order": order}
    _submit("multi", fields, opts, **kw)


def _submit(
    endpoint: str,
    fields: dict[str, Any],
    opts: ApiOptions,
    *,
    resolution: str | None,
    prompt: str | None,
    seed: int | None,
    webhook: str | None,
    extra: tuple[str, ...],
    wait: bool,
    download: Path | None,
    as_json: bool,
    dry_run: bool,
    **lengths: float | None,
) -> None:
    named = {"resolution": resolution, "prompt": prompt, "seed": seed, "webhook": webhook}
    try:
        request = build_request(endpoint, {**fields, **named, "extra": parse_extra(extra)})
    except ValidationError as exc:
        fail(cli_words(exc), EXIT_USAGE, opts)
    if dry_run:
        _dry_run(request, as_json=as_json, **lengths)
        return
    local = local_files(request)
    if local and not opts.public_url:
        fail(
            f"--{local[0].replace('_', '-')}: is a local file: serving it needs --public-url "
            "(an address where the service can fetch it, such as a tunnel to --listen-port); "
            "or upload it and pass its URL",
            EXIT_USAGE,
            opts,
        )
    if local and not wait:
        # The files are served by this process: it must stay up until the job is done.
        click.echo("note: local files are served from this process, so --wait is on", err=True)
        wait = True
    run(opts, _submit_async(request, opts, wait or download is not None, download, as_json))


def _dry_run(request: Request, *, as_json: bool, **lengths: float | None) -> None:
    seconds = lengths.get("seconds")
    left, right = lengths.get("left_seconds"), lengths.get("right_seconds")
    order = request.order if isinstance(request, LipsyncImageMultiRequest) else None
    try:
        if left is not None or right is not None:
            credits = estimate_credits(
                request.resolution, left_seconds=left, right_seconds=right, order=order
            )
        else:
            credits = estimate_credits(request.resolution, seconds or MINIMUM_SECONDS)
    except ValidationError as exc:
        fail(cli_words(exc), EXIT_USAGE)
    at_least = seconds is None and left is None and right is None
    body = form_state(request)
    if as_json:
        echo_json(
            {
                "endpoint": request.endpoint,
                "formState": body,
                "credits": credits,
                "minimum": at_least,
            }
        )
        return
    click.echo(f"dry run: POST /{request.endpoint} (nothing sent)")
    click.echo(f"formState: {json.dumps(body, default=str)}")
    what = "at least " if at_least else ""
    hint = " (pass the audio's length in seconds for a real estimate)" if at_least else ""
    click.echo(f"estimated cost: {what}{credits:g} credits{hint}")


async def _submit_async(
    request: Request, opts: ApiOptions, wait: bool, download: Path | None, as_json: bool
) -> int:
    err = Console(stderr=True)
    async with open_client(opts, local_files=bool(local_files(request))) as client:
        job = await client.submit(request)
        if not wait:
            if as_json:
                echo_json({"id": job.id, "status": "processing"})
            else:
                click.echo(job.id)
            return EXIT_OK
        err.print(f"submitted job {job.id}", highlight=False)
        started = time.monotonic()
        try:
            state = await wait_with_progress(job, err)
        except JobFailed as exc:
            if as_json:
                echo_json(state_json(exc.state))
            click.echo(f"error: {exc}", err=True)
            return EXIT_FAILED
        except asyncio.CancelledError:
            hint = f"job {job.id} goes on at the service: `lipsync-async wait {job.id}`"
            click.echo(hint, err=True)
            raise
        path = await download_with_progress(client, state, download, err) if download else None
        if as_json:
            echo_json(state_json(state, **({"file": str(path)} if path else {})))
        else:
            took = time.monotonic() - started
            click.echo(f"job {state.id} completed in {took:.1f} s: {state.output}")
            if path is not None:
                click.echo(f"saved {path}")
        return EXIT_OK


async def wait_with_progress(job: Job, err: Console) -> JobState:
    """Await ``job`` with a spinner on stderr showing its status and the time spent."""
    started = time.monotonic()
    with err.status(f"job {job.id}: waiting") as spinner:
        while True:
            try:
                return await job.wait(0.5)
            except JobTimeoutError:
                status = job.state.status.value if job.state is not None else "submitted"
                elapsed = time.monotonic() - started
                spinner.update(f"job {job.id}: {status}, {elapsed:.0f} s")


async def download_with_progress(
    client: LipsyncClient, state: JobState, path: Path, err: Console
) -> Path:
    """Download the output with a transient byte-count bar on stderr."""
    columns = (*Progress.get_default_columns()[:2], DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"downloading {state.id}", total=None)
        saved = await client.download(
            state, path, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    return saved


# -- reading jobs -----------------------------------------------------------------------------


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's JSON on stdout.")
@api_options()
def status(opts: ApiOptions, job_id: str, as_json: bool) -> None:
    """Read one job's state (exit 1 if it failed)."""

    async def read() -> int:
        async with open_client(opts) as client:
            state = await client.get_job(job_id)
        if as_json:
            echo_json(state_json(state))
        else:
            click.echo(_line(state))
        return EXIT_FAILED if state.status.value == "failed" else EXIT_OK

    run(opts, read())


def _line(state: JobState) -> str:
    detail = state.output if state.status.value == "completed" else state.error
    return f"{state.id} {state.status.value}{' ' + detail if detail else ''}"


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save each output in this directory (as ID.mp4).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per job on stdout.")
@api_options()
def wait(opts: ApiOptions, job_ids: tuple[str, ...], download: Path | None, as_json: bool) -> None:
    """Wait for jobs submitted earlier, printing each as it finishes.

    Exit 0 if all completed, 1 if any failed, 2 if an id is unknown, 3 if any could not be
    read.
    """
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
    run(opts, _wait_async(opts, job_ids, download, as_json))


async def _wait_async(
    opts: ApiOptions, job_ids: tuple[str, ...], download: Path | None, as_json: bool
) -> int:
    err = Console(stderr=True)
    worst = EXIT_OK
    async with open_client(opts) as client:
        jobs = [client.job(job_id) for job_id in dict.fromkeys(job_ids)]
        done = 0
        with err.status(f"waiting for {len(jobs)} job(s)") as spinner:
            async for job in client.as_completed(jobs):
                done += 1
                spinner.update(f"waiting for {len(jobs)} job(s): {done} done")
                try:
                    state = await job
                except JobFailed as exc:
                    worst = max(worst, EXIT_FAILED)
                    state = exc.state
                except LipsyncError as exc:
                    message, code = describe(exc, opts)
                    worst = max(worst, code)
                    prefix = "" if job.id in message else f"job {job.id}: "
                    click.echo(f"error: {prefix}{message}", err=True)
                    continue
                path = None
                if download is not None and state.status.value == "completed":
                    path = await client.download(state, download)
                if as_json:
                    echo_json(state_json(state, **({"file": str(path)} if path else {})))
                else:
                    click.echo(_line(state) + (f" -> {path}" if path else ""))
    return worst
