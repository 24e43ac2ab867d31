"""What every API command shares: the key and URL options, the client, requests, exit codes.

Exit codes are a contract scripts rely on: 0 done, 1 a job failed, 2 bad usage or input
(click's own usage errors, a missing file, an unknown job id, a busy port), 3 an API or network
error, 130 interrupted. Errors are one line on stderr, in the command line's words (``--image``,
``--allow-insecure``), not the Python API's; ``--debug`` adds the traceback and the SDK's debug
log, ``LIPSYNC_LOG_LEVEL`` the log alone. The API key is scrubbed from everything this module
prints, on top of the SDK's promise never to show it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from .._errors import (
    APIConnectionError,
    JobFailed,
    JobTimeoutError,
    LipsyncError,
    NotFoundError,
    SubmissionUncertainError,
    ValidationError,
)

if TYPE_CHECKING:
    import logging
    from pathlib import Path

    from .._client import LipsyncClient
    from .._models import JobState, Request

# aiohttp (through the client, the receiver), cattrs (the converter), attrs and yarl (the request
# models), logging, json, socket and pathlib are imported by the functions that use them, not
# here: `--help` and `cost` start in the time the interpreter and click take (issue 18: under
# 150 ms; `python -X importtime -m lipsync_async.cli --help` shows what a start imports).

__all__ = [
    "EXIT_API",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ApiOptions",
    "PortInUse",
    "api_options",
    "build_request",
    "cli_words",
    "describe",
    "echo_json",
    "open_client",
    "run",
    "setup_logging",
    "state_json",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_API: Final = 3
EXIT_INTERRUPTED: Final = 130

#: Endpoint names a user may type (CLI subcommands, a batch line's "endpoint"), and the name of
#: the request model each builds (a name, so that listing them does not import the models).
ENDPOINT_CLASSES: Final[Mapping[str, str]] = {
    "video": "LipsyncVideoRequest",
    "image": "LipsyncImageRequest",
    "multi": "LipsyncImageMultiRequest",
    "image-multi": "LipsyncImageMultiRequest",
    "lipsync-video": "LipsyncVideoRequest",
    "lipsync-image": "LipsyncImageRequest",
    "lipsync-image-multi": "LipsyncImageMultiRequest",
}
_MEDIA: Final = frozenset({"video", "image", "audio", "left_audio", "right_audio", "mask_image"})

T = TypeVar("T")


class ApiOptions:
    """The options every command that talks to the API takes.

    A plain slotted class, not attrs: ``_common`` is imported by every command, ``--help`` and
    ``cost`` included, and attrs alone is a sixth of the 150 ms start budget (issue 18).
    """

    __slots__ = (
        "api_key",
        "base_url",
        "debug",
        "listen_host",
        "listen_port",
        "log_level",
        "max_retries",
        "poll_interval",
        "public_url",
    )

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        poll_interval: float,
        debug: bool,
        max_retries: int = 5,
        public_url: str | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        log_level: int | None = None,  # without --debug or LIPSYNC_LOG_LEVEL (None: silent)
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.poll_interval = poll_interval
        self.debug = debug
        self.max_retries = max_retries
        self.public_url = public_url
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.log_level = log_level

    def __repr__(self) -> str:  # never the key
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if n != "api_key")
        return f"ApiOptions({shown})"


def api_options(*, receiver: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Add ``--api-key``, ``--base-url``, ``--poll-interval``, ``--debug`` (and, with
    ``receiver``, ``--public-url``, ``--listen-host``, ``--listen-port``), passed to the command
    as one ``opts: ApiOptions`` keyword."""
    options = [
        click.option(
            "--api-key",
            envvar="LIPSYNC_API_KEY",
            show_envvar=True,
            help="Your sk_... key (prefer the environment variable: arguments show in `ps`).",
        ),
        click.option(
            "--base-url",
            envvar="LIPSYNC_BASE_URL",
            show_envvar=True,
            help="API root. [default: https://lipsync.studio/api/v1]",
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(min=0.01),
            default=5.0,
            show_default=True,
            help="Seconds between status reads of a job (the service asks 5-10).",
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(0, 100),
            default=5,
            show_default=True,
            help="Retries of a request on transient errors (never a submit that may have landed).",
        ),
        click.option("--debug", is_flag=True, help="Show tracebacks and the SDK's debug log."),
    ]
    if receiver:
        options += [
            click.option(
                "--public-url",
                default=None,
                help="Where the service can reach this machine (a tunnel to --listen-port): "
                "jobs then resolve by webhook, and local media files are served from here.",
            ),
            click.option(
                "--listen-host", default="127.0.0.1", show_default=True, help="Receiver interface."
            ),
            click.option(
                "--listen-port",
                type=click.IntRange(0, 65535),
                default=0,
                show_default=True,
                help="Receiver port (0: any free port).",
            ),
        ]
    names = ApiOptions.__slots__

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> T:
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            return func(opts=ApiOptions(**given), **kwargs)

        command: Callable[..., T] = wrapper
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


# -- requests ---------------------------------------------------------------------------------


def parse_extra(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is taken as JSON, else as a string."""
    import json

    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--extra")
        try:
            extra[key] = json.loads(raw)
        except ValueError:
            extra[key] = raw
    return extra


def media(value: str) -> str | Path:
    """A media value: anything without a ``scheme://`` is a local file (served by the receiver),
    so a mistyped path is "no such file", not "must be an http(s) URL"."""
    if "://" not in value and value:
        from pathlib import Path

        return Path(value)
    return value


def build_request(endpoint: str, fields: Mapping[str, Any]) -> Request:
    """A request model from loose fields (CLI flags or a batch line); ``ValidationError`` if bad.

    ``None`` values mean "not given". Media strings naming an existing file become paths.
    """
    import attrs

    from .. import _models

    name = ENDPOINT_CLASSES.get(endpoint)
    if name is None:
        raise ValidationError("endpoint", f"must be video, image or multi, got {endpoint!r:.40}")
    cls: type[Request] = getattr(_models, name)
    known = {a.name for a in attrs.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValidationError(
            unknown[0], "is not a field of this endpoint (model-specific ones go in extra)"
        )
    kwargs: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        kwargs[name] = media(value) if name in _MEDIA and isinstance(value, str) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [n for n in cls.media_fields if n != "mask_image" and n not in kwargs]
        field = missing[0] if missing else "request"
        raise ValidationError(field, "is required") from exc


def local_files(request: Request) -> list[str]:
    """Names of the request's media fields that are local files."""
    from pathlib import Path

    return [n for n in request.media_fields if isinstance(getattr(request, n, None), Path)]


# -- the client -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_client(
    opts: ApiOptions, *, local_files: bool = False, **kwargs: Any
) -> AsyncIterator[LipsyncClient]:
    """A client from the options; with ``--public-url``, a receiver for webhooks and files."""
    if not opts.api_key:
        raise ValidationError("api key", "missing: set LIPSYNC_API_KEY or pass --api-key")
    if local_files and not opts.public_url:
        raise ValidationError(
            "media",
            "a local file needs --public-url (an address where the service can fetch it, "
            "such as a tunnel to --listen-port); or upload it and pass its URL",
        )
    from .._client import LipsyncClient
    from .._webhook import WebhookReceiver

    receiver = None
    if opts.public_url:
        receiver = WebhookReceiver(
            opts.public_url, host=opts.listen_host, port=opts.listen_port, allow_insecure=True
        )
    await check_host(opts.base_url)
    client = LipsyncClient(
        opts.api_key,
        base_url=opts.base_url,
        poll_interval=opts.poll_interval,
        webhook=receiver,
        webhook_grace=max(30.0, 6 * opts.poll_interval),
        max_retries=opts.max_retries,
        **kwargs,
    )
    try:
        async with client:
            yield client
    except OSError as exc:  # the receiver's port (the body's own OSErrors pass through)
        if exc.errno == errno.EADDRINUSE and receiver is not None and not receiver.running:
            raise PortInUse("--listen-port", opts.listen_port) from exc
        raise


class PortInUse(Exception):
    """A port the user named is taken: one line and exit 2, not a traceback."""

    def __init__(self, flag: str, port: int) -> None:
        super().__init__(
            f"{flag} {port}: the port is already in use (stop what uses it, or pass "
            f"{flag} 0 for any free port)"
        )


_DNS_TIMEOUT: Final = 10.0


async def check_host(base_url: str | None) -> None:
    """Fail fast, in one line, on a host name that does not resolve.

    The transport retries connection errors (a DNS hiccup is one), which for a typo in
    ``--base-url`` means seconds of silent retries before the same error: one lookup first
    tells the two apart. A lookup that times out is left to the transport.
    """
    import socket

    from yarl import URL

    from .._client import DEFAULT_BASE_URL

    url = URL(base_url) if base_url else URL(DEFAULT_BASE_URL)
    host = url.host
    if not host:
        return  # the client's own validation names the problem
    import asyncio

    try:
        async with asyncio.timeout(_DNS_TIMEOUT):
            await asyncio.get_running_loop().getaddrinfo(host, url.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        where = "--base-url (LIPSYNC_BASE_URL)" if base_url else "the default API root"
        raise APIConnectionError(
            f"cannot resolve host {host!r} of {where}: {exc.strerror or exc}"
        ) from None
    except TimeoutError:
        pass


# -- output -----------------------------------------------------------------------------------


def state_json(state: JobState, **more: Any) -> dict[str, Any]:
    """The job's wire JSON (the service's seven keys), plus ``more``."""
    from .._wire import state_to_wire

    return {**state_to_wire(state), **more}


def echo_json(data: Any) -> None:
    """One JSON document on one line of stdout."""
    import json

    click.echo(json.dumps(data, default=str, separators=(",", ":")))


def scrub(text: str, secret: str | None) -> str:
    """``text`` with the API key replaced, in case anything ever printed it."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "sk_***")
    return text


def fail(message: str, code: int, opts: ApiOptions | None = None) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    key = opts.api_key if opts is not None else None
    click.echo(scrub(f"error: {message}", key), err=True)
    sys.exit(code)


#: The Python API's words in SDK messages, and the command line's for the same thing.
_CLI_WORDS: Final = (
    ("pass allow_insecure=True", "pass --allow-insecure"),
    ("allow_insecure=True", "--allow-insecure"),
    (
        "a public receiver (LipsyncClient(webhook=WebhookReceiver(public_url=...)))",
        "--public-url",
    ),
    ("pass api_key= or set LIPSYNC_API_KEY", "set LIPSYNC_API_KEY or pass --api-key"),
)
_FLAGS: Final = frozenset(
    {
        "video", "image", "audio", "left_audio", "right_audio", "mask_image", "order",
        "resolution", "prompt", "seed", "webhook", "extra", "public_url", "api_key",
        "base_url", "poll_interval", "max_retries", "secret", "path", "port", "host",
    }
)  # fmt: skip


def cli_words(exc: ValidationError) -> str:
    """A ``ValidationError`` as the command line says it: ``--left-audio: no such file ...``."""
    text = str(exc)
    for python, shell in _CLI_WORDS:
        text = text.replace(python, shell)
    field = exc.field
    if field in _FLAGS and text.startswith(f"{field}: "):
        text = f"--{field.replace('_', '-')}: " + text[len(field) + 2 :]
    if field in _MEDIA and ": no such file: " in text:
        text += " (a URL starts with http:// or https://)"
    return text


def _not_found(exc: NotFoundError, base_url: str | None) -> str:
    """A 404, with a hint when the base URL is not the API root (it ends in ``/api/v1``)."""
    from yarl import URL

    root = URL(base_url) if base_url else None
    if root is None or root.path.rstrip("/").endswith("/api/v1"):
        if exc.job_id:
            return f"no such job: {exc.job_id} (HTTP 404: {exc.message})"
        return str(exc)
    return (
        f"HTTP 404 from --base-url {str(root)!r}: is it the API root? That ends in /api/v1, "
        f"e.g. {str(root).rstrip('/')}/api/v1"
    )


def setup_logging(key: str | None, *, debug: bool, default: int | None = None) -> None:
    """The SDK's log on stderr: everything with ``--debug``, else ``LIPSYNC_LOG_LEVEL`` if set,
    else ``default`` (``None``: silent, the command reports errors itself).

    ``LIPSYNC_LOG_LEVEL`` takes a level name (``debug``, ``info``, ``warning``, ``error``) or
    number; an unknown value is one line and exit 2. Lines go through the key scrubber too.
    """
    import logging

    level: int | None = logging.DEBUG if debug else None
    raw = os.environ.get("LIPSYNC_LOG_LEVEL", "").strip()
    if level is None and raw:
        level = int(raw) if raw.isdigit() else logging.getLevelNamesMapping().get(raw.upper())
        if level is None:
            fail(
                f"LIPSYNC_LOG_LEVEL: must be debug, info, warning, error or a number, got {raw!r}",
                EXIT_USAGE,
            )
    if level is None:
        level = default
    logger = logging.getLogger("lipsync_async")
    if level is None:
        # The command reports every error itself, in one line; without this, Python's
        # last-resort handler would print the SDK's warnings as a second copy.
        logger.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_scrubbing(key))
    logger.addHandler(handler)
    logger.setLevel(level)


def _scrubbing(secret: str | None) -> logging.Formatter:
    """A log formatter that scrubs the key (a factory: ``logging`` is imported when used)."""
    import logging

    class _Scrubbing(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return scrub(super().format(record), secret)

    return _Scrubbing("%(asctime)s %(levelname)s %(name)s: %(message)s")


def describe(exc: BaseException, opts: ApiOptions | None = None) -> tuple[str, int]:
    """One line and an exit code for an error that ends a command."""
    if isinstance(exc, JobFailed):
        return str(exc), EXIT_FAILED
    if isinstance(exc, ValidationError):
        return cli_words(exc), EXIT_USAGE
    if isinstance(exc, PortInUse):
        return str(exc), EXIT_USAGE
    if isinstance(exc, NotFoundError):  # an id or a --base-url the service does not know
        return _not_found(exc, opts.base_url if opts is not None else None), EXIT_USAGE
    if isinstance(exc, SubmissionUncertainError):
        return (
            f"{exc}. The job may exist at the service and be billed: check before submitting again",
            EXIT_API,
        )
    if isinstance(exc, JobTimeoutError):
        return f"{exc}; resume with `lipsync-async wait ID`", EXIT_API
    if isinstance(exc, LipsyncError):
        return str(exc), EXIT_API
    if isinstance(exc, OSError):
        if exc.errno == errno.EADDRINUSE:
            return f"the port is already in use ({exc.strerror})", EXIT_USAGE
        return f"{type(exc).__name__}: {exc}", EXIT_API
    return f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)", EXIT_API


def run(opts: ApiOptions, main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run ``main`` (which returns an exit code) and exit; errors become one line and a code."""
    try:
        setup_logging(opts.api_key, debug=opts.debug, default=opts.log_level)
    except SystemExit:  # a bad LIPSYNC_LOG_LEVEL: `main` never runs
        main.close()
        raise
    import asyncio  # here, not at the top: `--help` and `cost` never start a loop

    try:
        code = asyncio.run(main)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        message, code = describe(exc, opts)
        if opts.debug:
            import traceback

            trace = "".join(traceback.format_exception(exc))
            click.echo(scrub(trace, opts.api_key), err=True, nl=False)
        fail(message, code, opts)
    sys.exit(code)
