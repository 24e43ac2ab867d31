"""``lipsync-async batch``: a JSONL file of requests in, a JSONL file of results out.

Each input line is one request, ``{"endpoint": "image", "image": ..., "audio": ..., ...}``
(the submit flags' names, ``extra`` as an object). Lines are submitted in file order through
``client.submit_many``, at most ``--concurrency`` jobs in flight at once; each finished job's
result is appended to ``--out`` (flushed per line), so a crash or Ctrl-C keeps every finished
line.

Two files make it resumable without ever paying twice, both keyed by the *request*, not the
line number: each record carries ``digest``, a hash of the line's endpoint, ``formState`` and
``webhook`` (what the service is asked to do; local file paths count by their path):

- ``--out`` holds one result per finished line (``{"line": 7, "digest": ..., "id": ...,
  "status": ...}``); a rerun skips a line only if the same request finished (``completed``,
  ``failed`` or ``uncertain``), and runs again those that ended in an ``error``;
- ``--out`` + ``.submitted`` journals each job id, with its digest, the moment its submit is
  answered; a rerun attaches to those jobs by id instead of submitting the same request again.

So inserting, deleting or reordering lines between runs resubmits nothing; an edited line is
a new request: it is reported (with its number) and submitted. The same request on several
lines runs once per line. Records an older version wrote without a digest are matched by line
number, as that version did.

A submit whose answer was lost (``SubmissionUncertainError``) is never sent again: the job may
exist and be billed. With ``--public-url`` (a receiver), the run first waits up to
``--settle-timeout`` seconds for the job's delivery, which names the submit by its correlation
token: a settled line becomes an ordinary job; only those that stay unsettled are reported
``uncertain``.

Spending: a line may say how long its audio is (``"seconds"``, or ``"left_seconds"`` and
``"right_seconds"`` for ``multi``; read for the estimate, never sent), else the service's 5 s
minimum is assumed. ``--dry-run`` prints the total estimate of the lines a run would submit and
sends nothing; ``--max-credits N`` stops submitting before this run's estimate would pass N
(lines it did not submit get no result, so a rerun with a higher cap goes on from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .._client import LipsyncClient
from .._cost import MINIMUM_SECONDS, estimate_credits
from .._errors import JobFailed, LipsyncError, SubmissionUncertainError, ValidationError
from .._job import Job
from .._models import JobState, LipsyncImageMultiRequest, Request
from .._wire import form_state, state_to_wire
from ._common import (
    EXIT_API,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ApiOptions,
    api_options,
    build_request,
    fail,
    local_files,
    open_client,
    run,
)

__all__ = ["batch"]

_FINAL = frozenset({"completed", "failed", "uncertain"})


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 10_000),
    default=16,
    show_default=True,
    help="Jobs in flight at once.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Results, one JSON line per input line (appended; rerun to resume). Required "
    "unless --dry-run.",
)
@click.option(
    "--download",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save each completed output in this directory (as ID.mp4).",
)
@click.option(
    "--max-credits",
    type=click.FloatRange(min=0),
    help="Stop submitting before this run's credit estimate would pass this many credits.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate every line and print the credit estimate of what a run would submit.",
)
@click.option(
    "--settle-timeout",
    type=click.FloatRange(min=0),
    default=900.0,
    show_default=True,
    help="With --public-url: seconds to wait for the delivery of a submit whose answer was "
    "lost, which proves its job exists, before reporting the line uncertain.",
)
@api_options(receiver=True)
def batch(
    opts: ApiOptions,
    file: Path,
    concurrency: int,
    out: Path | None,
    download: Path | None,
    max_credits: float | None,
    dry_run: bool,
    settle_timeout: float,
) -> None:
    """Run every request of a JSONL file, with a live progress bar; resumable.

    Exit 0 if every job completed, 1 if some failed, 2 if some lines were bad (reported with
    their line number and skipped) or --max-credits stopped the submits, 3 on API or network
    errors, 130 on Ctrl-C.
    """
    err = Console(stderr=True, highlight=False)
    todo, bad = _read_input(file, public_url=opts.public_url is not None)
    if out is None and not dry_run:
        fail("--out is required (where results go, and what a rerun resumes from)", EXIT_USAGE)
    journal_path = out.with_name(out.name + ".submitted") if out is not None else None
    state = _Batch(
        bad=len(bad),
        download=download,
        total=len(todo),
        max_credits=max_credits,
        settle_timeout=settle_timeout,
    )
    uncertain = _plan(state, todo, out, journal_path)
    if uncertain:
        click.echo(  # click, not rich: a log line must not wrap at 80 columns
            f"{len(uncertain)} line(s) had a submit whose answer was lost and are not retried "
            f"(the job may exist and be billed): lines {_numbers(uncertain)}",
            err=True,
        )
    if state.finished:
        click.echo(
            f"resuming: {state.finished} line(s) already finished in {out} (the same "
            "request), skipped",
            err=True,
        )
    attached = [item.line for item in state.work if item.job_id is not None]
    if attached and journal_path is not None:
        click.echo(
            f"resuming: re-attaching {len(attached)} job(s) an earlier run submitted (from "
            f"{journal_path.name}), by id, not submitted again: lines {_numbers(attached)}",
            err=True,
        )
    if dry_run or out is None or journal_path is None:  # no --out only with --dry-run
        sys.exit(_dry_run(state))
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
    files = any(local_files(item.request) for item in state.work)
    run(opts, _run(opts, state, out, journal_path, concurrency, err, files))


def _dry_run(batch: _Batch) -> int:
    """Print what a run would submit and its estimate; the exit code a run's bad lines give."""
    to_submit = [item for item in batch.work if item.job_id is None]
    total = sum(item.credits for item in to_submit)
    guessed = sum(item.at_least for item in to_submit)
    attached = len(batch.work) - len(to_submit)
    click.echo(f"dry run: {len(to_submit)} line(s) would be submitted (nothing sent)")
    if attached:
        click.echo(f"{attached} job(s) submitted earlier would be re-attached, at no cost")
    what = "at least " if guessed else ""
    click.echo(f"estimated cost: {what}{total:g} credits")
    if guessed:
        click.echo(
            f"{guessed} line(s) give no audio length and count at the 5 s minimum: add "
            '"seconds" (or "left_seconds" and "right_seconds") to them for a real estimate'
        )
    if batch.max_credits is not None and total > batch.max_credits:
        click.echo(f"over --max-credits {batch.max_credits:g}: a run would stop before that")
    return EXIT_USAGE if batch.bad else EXIT_OK


@attrs.define
class _Item:
    line: int
    request: Request
    job_id: str | None  # from the journal: attach, do not submit again
    credits: float = 0.0  # the estimate, for --max-credits and --dry-run
    at_least: bool = False  # no audio length given: the 5 s minimum
    digest: str = ""


def request_digest(request: Request) -> str:
    """What identifies a line's request across runs: its endpoint, formState and webhook."""
    what = {"endpoint": request.endpoint, "formState": form_state(request)}
    if request.webhook is not None:
        what["webhook"] = request.webhook
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plan(
    batch: _Batch, todo: list[tuple[int, _Line]], out: Path | None, journal_path: Path | None
) -> list[int]:
    """Match this file's lines to earlier runs by request digest; fill ``batch.work``.

    A line whose request finished before is counted and skipped; one whose request was
    submitted (journal) and not finished is attached by id; anything else is submitted, and
    reported when earlier runs exist: as *changed* when it stands where an earlier line whose
    request is gone from the file stood (just after the line matched to that line's
    predecessor), as a *repeat* when another line already ran the same request, else as new.
    The same request on several lines matches as many earlier records, one each. Returns the
    lines skipped because an earlier run left them uncertain.
    """
    digests = {lineno: request_digest(line[0]) for lineno, line in todo}
    legacy = 0

    def digest_of(record: dict[str, Any]) -> str | None:
        nonlocal legacy
        value = record.get("digest")
        if isinstance(value, str):
            return value
        legacy += 1  # written before digests: matched by line number, as it was then
        return digests.get(record["line"])

    # Results: the last record per (request, earlier line) wins; finished ones are reusable.
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for record in _records(out) if out is not None else ():
        key = digest_of(record)
        if key is not None:
            last[(key, record["line"])] = record
    finished: dict[str, list[tuple[str, int]]] = {}  # digest -> (status, earlier line)
    done_ids: set[str] = set()
    old_lines: dict[int, str] = {}  # earlier line number -> its request's digest
    for (key, old_line), record in last.items():
        old_lines[old_line] = key
        if isinstance(record.get("id"), str):
            done_ids.add(record["id"])
        status = str(record.get("status"))
        if status in _FINAL:
            finished.setdefault(key, []).append((status, old_line))
    journal: dict[str, list[tuple[str, int]]] = {}  # digest -> (job id, earlier line)
    for record in _records(journal_path) if journal_path is not None else ():
        key = digest_of(record)
        job_id = record.get("id")
        if key is not None and isinstance(job_id, str) and job_id and job_id not in done_ids:
            ids = journal.setdefault(key, [])
            if all(job_id != known for known, _ in ids):
                ids.append((job_id, record["line"]))
            old_lines.setdefault(record["line"], key)
    ran_before = set(old_lines.values())
    current = set(digests.values())
    uncertain: list[int] = []
    changed: list[str] = []
    repeats: list[int] = []
    fresh: list[int] = []
    matched_to: dict[int, int] = {}  # this file's line -> the earlier line it matched
    for lineno, (request, credits, at_least) in todo:
        key = digests[lineno]
        statuses = finished.get(key)
        if statuses:
            status, matched_to[lineno] = statuses.pop(0)
            batch.count(status)  # counted, so the bar, summary and exit code cover the file
            if status == "uncertain":
                uncertain.append(lineno)
            continue
        attachable = journal.get(key)
        job_id = None
        if attachable:
            job_id, matched_to[lineno] = attachable.pop(0)
        elif old_lines:
            before = matched_to.get(lineno - 1, 0 if lineno == 1 else -1) + 1
            gone = old_lines.get(before)
            if before > 0 and gone is not None and gone not in current:
                changed.append(f"{lineno} (was line {before})")
            elif key in ran_before:
                repeats.append(lineno)
            else:
                fresh.append(lineno)
        batch.work.append(_Item(lineno, request, job_id, credits, at_least, key))
    if legacy:
        click.echo(
            f"{legacy} earlier record(s) carry no request digest (an older version wrote "
            "them): matched by line number",
            err=True,
        )
    if changed:
        shown = ", ".join(changed[:20]) + ("..." if len(changed) > 20 else "")
        click.echo(
            f"{len(changed)} line(s) changed since the earlier run: a different request now, "
            f"submitted as new (the earlier request is not sent again): lines {shown}",
            err=True,
        )
    if repeats:
        click.echo(
            f"{len(repeats)} line(s) repeat a request that already ran for another line, and "
            f"run again, as the file asks: lines {_numbers(repeats)}",
            err=True,
        )
    if fresh:
        click.echo(f"{len(fresh)} new line(s): lines {_numbers(fresh)}", err=True)
    vanished = len({k for k in ran_before if k not in current})
    if vanished:
        click.echo(
            f"{vanished} earlier request(s) match no line of the file now (removed or "
            "edited): not sent again",
            err=True,
        )
    return uncertain


@attrs.define(kw_only=True)
class _Batch:
    bad: int
    download: Path | None
    total: int
    work: list[_Item] = attrs.field(factory=list)
    completed: int = 0
    failed: int = 0
    errors: int = 0
    max_credits: float | None = None
    settle_timeout: float = 0.0  # waiting for the delivery of an uncertain submit
    committed: float = 0.0  # this run's submits, in estimated credits
    capped: list[int] = attrs.field(factory=list)  # lines --max-credits kept from submitting
    resumed: int = 0  # lines already finished when this run started: not this run's work
    stop: asyncio.Event = attrs.field(factory=asyncio.Event)

    def within_budget(self, item: _Item) -> bool:
        """Whether ``item`` may be submitted under ``--max-credits``; counts it if so.

        No await between the check and the count, so concurrent workers cannot both pass the
        cap; once one line does not fit, no later line is submitted either (the file's order).
        """
        if self.max_credits is None:
            return True
        if self.capped or self.committed + item.credits > self.max_credits:
            self.capped.append(item.line)
            return False
        self.committed += item.credits
        return True

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.errors

    def count(self, status: str) -> None:
        if status == "completed":
            self.completed += 1
        elif status == "failed":
            self.failed += 1
        else:  # error, uncertain: not done
            self.errors += 1


def _numbers(lines: list[int]) -> str:
    shown = sorted(lines)[:20]
    more = "..." if len(lines) > len(shown) else ""
    return ", ".join(map(str, shown)) + more


_LENGTHS = ("seconds", "left_seconds", "right_seconds")
_Line = tuple[Request, float, bool]  # the request, its credit estimate, "at least"?


def _read_input(path: Path, *, public_url: bool) -> tuple[list[tuple[int, _Line]], list[int]]:
    """Parse every line; report each bad one with its number and leave it out.

    Without ``--public-url``, a line naming a local file is bad too: nothing could serve the
    file to the service. The rest of the batch runs.
    """
    todo: list[tuple[int, _Line]] = []
    bad: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                line = _parse_line(text)
                files = local_files(line[0])
                if files and not public_url:
                    raise ValidationError(
                        files[0],
                        "is a local file, which needs --public-url (an address where the "
                        "service can fetch it); or upload it and pass its URL",
                    )
                todo.append((lineno, line))
            except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError too
                bad.append(lineno)
                click.echo(f"{path}:{lineno}: skipped: {exc}", err=True)
    return todo, bad


def _parse_line(text: str) -> _Line:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValidationError("line", "must be a JSON object")
    fields = dict(data)
    endpoint = fields.pop("endpoint", None)
    if not isinstance(endpoint, str):
        raise ValidationError("endpoint", "is required: video, image or multi")
    lengths = {k: fields.pop(k) for k in _LENGTHS if k in fields}  # for the estimate only
    request = build_request(endpoint, fields)
    order = request.order if isinstance(request, LipsyncImageMultiRequest) else None
    at_least = not lengths
    if at_least:
        credits = estimate_credits(request.resolution, MINIMUM_SECONDS)
    else:
        credits = estimate_credits(request.resolution, **lengths, order=order)
    return request, credits, at_least


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The readable records of a results or journal file (``line`` an int)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for text in fh:
            try:
                record = json.loads(text)
            except ValueError:  # a line cut short by a crash: its job is redone
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                yield record


def _open_append(path: Path) -> IO[str]:
    """Append mode, after completing a last line a crash may have cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+", encoding="utf-8")
    if fh.tell() > 0:
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":
            fh.write("\n")
    return fh


def _write(fh: IO[str], record: dict[str, Any]) -> None:
    # One small write and a flush per line, on the loop: microseconds into the page cache, and
    # it is what makes every finished line survive a Ctrl-C or a crash of this process.
    fh.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
    fh.flush()


class _Counts(ProgressColumn):
    def render(self, task: Task) -> Text:
        f = task.fields
        text = Text()
        text.append(f"{f['n_done']} done", "green")
        text.append(" · ")
        text.append(f"{f['n_failed']} failed", "red")
        if f["n_errors"]:
            text.append(" · ")
            text.append(f"{f['n_errors']} errors", "magenta")
        text.append(" · ")
        text.append(f"{f['n_pending']} pending", "yellow")
        return text


class _Rate(ProgressColumn):
    """Lines this run finished per second since it started: lines a resume skipped are not
    this run's work, and rich's own sampled speed overstates short bursts."""

    def render(self, task: Task) -> Text:
        rate = _rate(task.fields["n_run"], task.fields["t0"])
        return Text(f"{rate:.1f} jobs/s" if rate else "- jobs/s", "cyan")


def _rate(done: int, started: float) -> float:
    elapsed = time.monotonic() - started
    return done / elapsed if done and elapsed > 0 else 0.0


class _PlainProgress:
    """The bar's figures as a plain line every ``every`` seconds, for a log (not a terminal):
    no cursor movement, no width to wrap at."""

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._last = time.monotonic()

    def update(self, batch: _Batch, started: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        f = _fields(batch, batch.total, started)
        click.echo(
            f"batch: {batch.finished}/{batch.total} {f['n_done']} done, {f['n_failed']} failed, "
            f"{f['n_errors']} errors, {f['n_pending']} pending, "
            f"{_rate(f['n_run'], started):.1f} jobs/s",
            err=True,
        )


async def _run(
    opts: ApiOptions,
    batch: _Batch,
    out: Path,
    journal_path: Path,
    concurrency: int,
    err: Console,
    files: bool,
) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def interrupt() -> None:
        if batch.stop.is_set() and main is not None:  # second Ctrl-C: stop waiting now
            main.cancel()
        batch.stop.set()

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, interrupt)
    started = time.monotonic()
    batch.resumed = batch.finished
    live = err.is_terminal
    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        _Counts(),
        _Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=not live,  # a log gets _PlainProgress lines instead
    )
    plain = _PlainProgress()
    total = batch.total
    try:
        with _open_append(out) as results, _open_append(journal_path) as journal, progress:
            task = progress.add_task(
                "batch", total=total, completed=batch.finished, **_fields(batch, total, started)
            )

            def advance() -> None:
                progress.update(task, completed=batch.finished, **_fields(batch, total, started))
                if not live:
                    plain.update(batch, started)

            if batch.work:
                async with open_client(opts, local_files=files) as client:
                    await _drive(client, batch, concurrency, results, journal, advance)
            if not live:  # the last frame, as a log line
                plain.update(batch, started, force=True)
    except asyncio.CancelledError:
        if not batch.stop.is_set():
            raise
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    took = time.monotonic() - started
    ran = batch.finished - batch.resumed
    summary = (
        f"{batch.completed} completed, {batch.failed} failed, {batch.errors} errors, "
        f"{batch.bad} bad lines skipped, in {took:.1f} s ({ran} this run, "
        f"{_rate(ran, started):.1f} jobs/s); results in {out}"
    )
    if batch.stop.is_set():
        left = total - batch.finished
        click.echo(f"interrupted: {summary}. Rerun to resume the {left} line(s) left.", err=True)
        return EXIT_INTERRUPTED
    click.echo(f"batch: {summary}", err=True)
    if batch.capped:
        click.echo(
            f"stopped submitting at --max-credits {batch.max_credits:g} "
            f"({batch.committed:g} credits estimated for this run's submits): "
            f"{len(batch.capped)} line(s) not submitted, from line {min(batch.capped)}; "
            "rerun with a higher --max-credits to go on",
            err=True,
        )
    if batch.errors:
        return EXIT_API
    if batch.failed:
        return EXIT_FAILED
    return EXIT_USAGE if batch.bad or batch.capped else EXIT_OK


def _fields(batch: _Batch, total: int, started: float) -> dict[str, Any]:
    return {
        "n_done": batch.completed,
        "n_failed": batch.failed,
        "n_errors": batch.errors,
        "n_pending": total - batch.finished,
        "n_run": batch.finished - batch.resumed,
        "t0": started,
    }


async def _drive(
    client: LipsyncClient,
    batch: _Batch,
    concurrency: int,
    results: IO[str],
    journal: IO[str],
    advance: Any,
) -> None:
    """Every line of ``batch.work``, in file order, at most ``concurrency`` jobs at once.

    Submits go through ``client.submit_many`` (a fixed pool of senders; its outcomes come back
    in the order sent, so each is matched to its line by position); each job is then waited
    for (and downloaded) in a task of its own, at most ``concurrency`` of them.
    """
    slots = asyncio.Semaphore(concurrency)
    sent: deque[_Item] = deque()
    waiting: set[asyncio.Task[None]] = set()

    def finish(item: _Item, record: dict[str, Any] | None) -> None:
        slots.release()
        if record is None:  # interrupted while waiting: the journal lets a rerun attach
            return
        record = {"line": record.pop("line"), "digest": item.digest, **record}
        batch.count(record["status"])
        _write(results, record)
        advance()

    async def wait_for(item: _Item, job: Job) -> None:
        record = None
        try:
            record = await _finish(client, batch, item, job)
        finally:
            finish(item, record)

    async def settle_then_wait(item: _Item, exc: SubmissionUncertainError) -> None:
        # With a receiver, the delivery can prove the job exists: then it is this line's job.
        record: dict[str, Any] | None = None
        try:
            job = await _settle(batch, exc)
            if job is None:
                record = {"line": item.line, "id": None, "status": "uncertain", "error": str(exc)}
            else:
                _write(journal, {"line": item.line, "digest": item.digest, "id": job.id})
                record = await _finish(client, batch, item, job)
        finally:
            finish(item, record)

    def start(item: _Item, job: Job) -> None:
        task = asyncio.create_task(wait_for(item, job))
        waiting.add(task)
        task.add_done_callback(waiting.discard)

    def start_settling(item: _Item, exc: SubmissionUncertainError) -> None:
        task = asyncio.create_task(settle_then_wait(item, exc))
        waiting.add(task)
        task.add_done_callback(waiting.discard)

    async def to_submit() -> AsyncIterator[Request]:
        for item in batch.work:
            await slots.acquire()
            if batch.stop.is_set():
                slots.release()
                return
            if item.job_id is not None:
                start(item, client.job(item.job_id))
            elif not batch.within_budget(item):
                slots.release()
            else:
                sent.append(item)
                yield item.request

    try:
        # Not raced against Ctrl-C: a submit cut off halfway could create a job nobody records.
        async for outcome in client.submit_many(to_submit(), concurrency=min(concurrency, 64)):
            item = sent.popleft()
            if isinstance(outcome, Job):
                _write(journal, {"line": item.line, "digest": item.digest, "id": outcome.id})
                start(item, outcome)
            elif isinstance(outcome, SubmissionUncertainError):
                start_settling(item, outcome)
            else:
                finish(
                    item, {"line": item.line, "id": None, "status": "error", "error": str(outcome)}
                )
        while waiting:
            await asyncio.gather(*waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def _finish(
    client: LipsyncClient, batch: _Batch, item: _Item, job: Job
) -> dict[str, Any] | None:
    """Wait, download: the line's result, or None if stopped meanwhile."""
    waiter = asyncio.ensure_future(_outcome(job))
    stopper = asyncio.ensure_future(batch.stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
    if waiter.cancelled():
        return None
    state, error = waiter.result()
    if state is None:
        return {"line": item.line, "id": job.id, "status": "error", "error": error}
    record: dict[str, Any] = {"line": item.line, **state_to_wire(state)}
    if batch.download is not None and state.status.value == "completed":
        try:
            record["file"] = str(await client.download(state, batch.download))
        except (LipsyncError, OSError) as exc:
            # Completed and paid for: a rerun attaches by id (journal) and downloads again.
            return {"line": item.line, "id": job.id, "status": "error", "error": str(exc)}
    return record


async def _settle(batch: _Batch, exc: SubmissionUncertainError) -> Job | None:
    """The job of an uncertain submit, once its delivery proves it exists (a receiver is
    needed); ``None`` if none came within ``--settle-timeout``, or Ctrl-C came first."""
    if not exc.resolvable or batch.settle_timeout <= 0:
        return None
    settle = asyncio.ensure_future(exc.resolve(timeout=batch.settle_timeout))
    stopper = asyncio.ensure_future(batch.stop.wait())
    try:
        await asyncio.wait({settle, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not settle.done():
            settle.cancel()
        await asyncio.gather(settle, stopper, return_exceptions=True)
    if settle.cancelled() or settle.exception() is not None:
        return None
    return settle.result()


async def _outcome(job: Job) -> tuple[JobState | None, str]:
    try:
        return await job, ""
    except JobFailed as exc:
        return exc.state, ""
    except LipsyncError as exc:
        return None, str(exc)
