"""A new user's first hour with ``lipsync-async``, row by row of issue 15's table.

Each test drives the installed command as a user would (a subprocess, the emulator on loopback)
and pins the message and the exit code the README's table promises: 0 done, 1 a job failed,
2 bad usage or input, 3 API or network error, 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lipsync_async.testing import FakeLipsyncServer
from tests.test_cli_functional import AUDIO, FAST, IMAGE, KEY, VIDEO, Result, _env, cli, start

# Several subprocesses per test, on a machine shared with other suites: room beyond the 60 s.
pytestmark = pytest.mark.timeout(180)

SUBMITS = {
    "video": ("video", "--video", VIDEO, "--audio", AUDIO),
    "image": ("image", "--image", IMAGE, "--audio", AUDIO),
    "multi": ("multi", "--image", IMAGE, "--left-audio", AUDIO, "--right-audio", AUDIO),
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeLipsyncServer]:
    async with FakeLipsyncServer(api_key=KEY, job_duration=0.05, seed=3) as server:
        yield server


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def one_line(r: Result) -> str:
    """The single stderr line of a failed command (no usage block, no traceback)."""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: "), r.err
    return lines[0]


async def run_python(code: str, *args: str, timeout: float = 30) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(None),
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


# -- install ------------------------------------------------------------------------------------

# A core-only install: click cannot be imported (a None in sys.modules makes `import` fail).
_NO_CLICK = "import sys; sys.modules['click'] = None; from lipsync_async.cli import main; main()"


async def test_without_click_the_command_names_the_extra() -> None:
    """Without the cli extra, the command prints one line naming `lipsync-async[cli]` and exits
    2, instead of a ModuleNotFoundError traceback."""
    r = await run_python(_NO_CLICK, "image", "--help")
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'lipsync-async[cli]'" in lines[0], r.err
    assert "Traceback" not in r.err and not r.out


# What an offline command imports: each name here costs it start time (issue 18: under 150 ms).
_HEAVY = ("aiohttp", "attrs", "attr", "cattrs", "yarl", "rich.console", "asyncio", "logging")
_IMPORTS_OF = (
    "import sys\n"
    "from lipsync_async.cli import main\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    print(','.join(n for n in {heavy!r} if n in sys.modules), file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    "args", [("--help",), ("cost", "--resolution", "720p", "--seconds", "12")], ids=["help", "cost"]
)
async def test_offline_commands_import_no_client(args: tuple[str, ...]) -> None:
    """`--help` and `cost` import neither aiohttp, the request models (attrs, yarl), the
    converter, rich nor asyncio: they start in the time the interpreter and click take."""
    r = await run_python(_IMPORTS_OF.format(heavy=_HEAVY), *args)
    assert r.code == 0, r.err
    assert r.err.strip().splitlines()[-1:] in ([], [""]), r.err


def test_api_options_repr_hides_the_key() -> None:
    """The CLI's option holder (a plain class, not attrs, for the start time) never shows the
    key in its repr."""
    from lipsync_async._cli._common import ApiOptions

    opts = ApiOptions(api_key="sk_secret_1234", base_url=None, poll_interval=5.0, debug=False)
    assert "sk_secret" not in repr(opts) and "poll_interval=5.0" in repr(opts)


# -- one line, in the command line's words ----------------------------------------------------


async def test_a_bad_choice_is_one_line_not_a_usage_block(fake: FakeLipsyncServer) -> None:
    """`--resolution 1080p` is one stderr line naming the flag and the choices, exit 2."""
    r = await cli(*SUBMITS["image"], "--resolution", "1080p", fake=fake)
    assert r.code == 2
    line = one_line(r)
    assert "--resolution" in line and "480p" in line and "--help" in line
    assert "Usage:" not in r.err and not fake.jobs


async def test_a_missing_local_file_says_no_such_file(fake: FakeLipsyncServer) -> None:
    """A media flag naming a file that does not exist says "no such file" under the flag's
    name, not "must be an http(s) URL"; exit 2, nothing sent."""
    r = await cli("multi", "--image", IMAGE, "--left-audio", "voice.mp3", "--right-audio",
                  AUDIO, fake=fake)  # fmt: skip
    assert r.code == 2
    line = one_line(r)
    assert "--left-audio" in line and "no such file" in line and "voice.mp3" in line
    assert "http(s)" not in line and not fake.jobs


async def test_listen_names_the_flag_not_the_python_argument() -> None:
    """`listen --public-url http://...` says `--allow-insecure`, not `allow_insecure=True`."""
    r = await cli("listen", "--public-url", "http://abc.example.com", fake=None)
    assert r.code == 2
    line = one_line(r)
    assert "--public-url" in line and "--allow-insecure" in line
    assert "allow_insecure=True" not in line


async def test_a_404_at_the_root_hints_at_api_v1(fake: FakeLipsyncServer) -> None:
    """A base URL without `/api/v1` gets a 404: the line says the API root ends in /api/v1."""
    r = await cli(*SUBMITS["image"], "--base-url", fake.url, fake=fake)
    assert r.code == 2
    line = one_line(r)
    assert "404" in line and f"{fake.url}/api/v1" in line
    assert not fake.jobs


async def test_an_unknown_host_fails_fast(fake: FakeLipsyncServer) -> None:
    """A host that does not resolve fails in one line at once (exit 3), not after seconds of
    silent retries."""
    started = time.monotonic()
    r = await cli(*SUBMITS["image"], "--base-url", "https://no-such-host.invalid/api/v1",
                  fake=fake)  # fmt: skip
    assert r.code == 3
    line = one_line(r)
    assert "cannot resolve host 'no-such-host.invalid'" in line and "--base-url" in line
    assert time.monotonic() - started < 6


async def test_a_bad_log_level_is_one_line() -> None:
    """`LIPSYNC_LOG_LEVEL` takes a level name; anything else is one line naming it, exit 2."""
    r = await cli("status", "some-id", fake=None, LIPSYNC_API_KEY="sk_x", LIPSYNC_LOG_LEVEL="loud")
    assert r.code == 2 and "LIPSYNC_LOG_LEVEL" in one_line(r)
    assert "RuntimeWarning" not in r.err


# -- exit codes, per command ------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(SUBMITS))
async def test_submit_commands_exit_codes(fake: FakeLipsyncServer, command: str) -> None:
    """video, image and multi: 0 done, 1 the job failed, 2 bad input, 3 the service refused
    (a wrong key), each error one line."""
    args = SUBMITS[command]
    r = await cli(*args, "--wait", *FAST, fake=fake)
    assert r.code == 0, r.err
    r = await cli(*args, "--prompt", "[fail]", "--wait", *FAST, fake=fake)
    assert r.code == 1 and "failed" in r.err
    r = await cli(*args, "--seed", "x", fake=fake)
    assert r.code == 2 and "--seed" in one_line(r)
    r = await cli(*args, fake=fake, LIPSYNC_API_KEY="sk_wrong_" + "q9" * 8)
    assert r.code == 3 and "401" in one_line(r)


async def test_status_exit_codes(fake: FakeLipsyncServer) -> None:
    """status: 0 completed, 1 failed, 2 an id the service does not know (one line), 3 the
    service unreachable."""
    ok = (await cli(*SUBMITS["image"], "--wait", "--json", *FAST, fake=fake)).out
    bad = (await cli(*SUBMITS["image"], "--prompt", "[fail]", "--wait", "--json", *FAST,
                     fake=fake)).out  # fmt: skip
    assert (await cli("status", json.loads(ok)["id"], fake=fake)).code == 0
    assert (await cli("status", json.loads(bad)["id"], fake=fake)).code == 1
    unknown = str(uuid.uuid4())
    r = await cli("status", unknown, fake=fake)
    assert r.code == 2 and f"no such job: {unknown}" in one_line(r)
    r = await cli("status", unknown, "--base-url", "http://127.0.0.1:9/api/v1",
                  "--max-retries", "0", fake=fake)  # fmt: skip
    assert r.code == 3 and "connect" in one_line(r)


async def test_wait_prints_a_404_once(fake: FakeLipsyncServer) -> None:
    """wait on an unknown id prints its 404 once (not once more from the SDK's log), exit 2."""
    unknown = str(uuid.uuid4())
    r = await cli("wait", unknown, *FAST, fake=fake)
    assert r.code == 2
    line = one_line(r)
    assert unknown in line and "404" in line
    # The random id may itself contain "404" (CI drew 400eba82-4047-...): count outside it.
    assert r.err.replace(unknown, "<id>").count("404") == 1


async def test_cost_exit_codes() -> None:
    """cost: 0 with an estimate, 2 on a bad length (one line)."""
    assert (await cli("cost", "--seconds", "3", fake=None)).code == 0
    r = await cli("cost", "--seconds", "-1", fake=None)
    assert r.code == 2 and "seconds" in one_line(r)


async def _until_line(stream: asyncio.StreamReader, needle: str) -> str:
    """Every line read up to and including the first one containing ``needle``."""
    seen = ""
    while True:
        line = (await asyncio.wait_for(stream.readline(), 15)).decode()
        assert line, f"the command exited before printing {needle!r}"
        seen += line
        if needle in line:
            return seen


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_emulator_exit_code_on_signals(signum: signal.Signals, code: int) -> None:
    """emulator: Ctrl-C (SIGINT) exits 130 as the README says; SIGTERM is a clean stop, 0."""
    process = await start("emulator", "--port", "0", env=_env(None))
    assert process.stdout is not None
    try:
        await _until_line(process.stdout, "serving at")
        process.send_signal(signum)
        await asyncio.wait_for(process.wait(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == code


@pytest.mark.parametrize("command", ["emulator", "listen"])
async def test_a_busy_port_is_one_line_and_exit_2(command: str, busy_port: int) -> None:
    """emulator and listen on a port in use: one line naming --port, exit 2, no traceback."""
    r = await cli(command, "--port", str(busy_port), fake=None, timeout=20)
    assert r.code == 2
    line = one_line(r)
    assert f"--port {busy_port}" in line and "already in use" in line


async def test_a_busy_listen_port_for_a_submit_is_exit_2(
    fake: FakeLipsyncServer, busy_port: int
) -> None:
    """A submit whose receiver (--public-url) cannot bind --listen-port: one line, exit 2."""
    r = await cli(*SUBMITS["image"], "--public-url", "https://hooks.example.com",
                  "--listen-port", str(busy_port), fake=fake)  # fmt: skip
    assert r.code == 2 and "--listen-port" in one_line(r)
    assert not fake.jobs


# -- webhooks from the shell ------------------------------------------------------------------


async def test_webhook_flag_reaches_a_listen_receiver(fake: FakeLipsyncServer) -> None:
    """`image --webhook URL` sends the URL with the submit (not inside formState), and the
    service's delivery lands on a `lipsync-async listen` receiver, which prints it; with
    LIPSYNC_LOG_LEVEL=info the receiver's log shows on stderr."""
    listener = await start("listen", "--json", env=_env(None, LIPSYNC_LOG_LEVEL="info"))
    assert listener.stderr is not None and listener.stdout is not None
    try:
        head = await _until_line(listener.stderr, "webhook URL")
        url = head.split()[-1]
        r = await cli(*SUBMITS["image"], "--webhook", url, fake=fake)
        assert r.code == 0, r.err
        job_id = r.out.strip()
        assert fake.jobs[job_id].webhook == url
        assert "webhook" not in fake.jobs[job_id].form_state
        printed = json.loads(await asyncio.wait_for(listener.stdout.readline(), 15))
        assert printed["id"] == job_id and printed["status"] == "completed"
        listener.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(listener.communicate(), 15)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    assert listener.returncode == 130
    assert "webhook receiver listening" in head  # the SDK's INFO log
    logged = head.replace(head.splitlines()[-1], "") + err.decode()
    assert url.rsplit("/", 1)[-1] not in logged  # the secret is printed once, never logged


async def test_a_bad_webhook_url_names_the_flag(fake: FakeLipsyncServer) -> None:
    """`--webhook` must be an http(s) URL: one line naming the flag, exit 2."""
    r = await cli(*SUBMITS["video"], "--webhook", "hooks.example.com", fake=fake)
    assert r.code == 2 and "--webhook" in one_line(r)


# -- batch: progress off a terminal, resume -----------------------------------------------------


async def test_batch_progress_in_a_log_and_resume_says_what_it_reattached(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """Off a terminal the progress is plain lines (no bar characters, no line over 200
    columns), the rate counts only this run's lines, and a resume prints the jobs it
    re-attached by id instead of submitting them again."""
    requests = tmp_path / "requests.jsonl"
    line = {"endpoint": "image", "image": IMAGE, "audio": AUDIO}
    requests.write_text("\n".join(json.dumps(line) for _ in range(12)) + "\n")
    out = tmp_path / "results.jsonl"
    r = await cli("batch", str(requests), "--out", str(out), "-c", "12", *FAST, fake=fake)
    assert r.code == 0, r.err
    assert "━" not in r.err and all(len(x) < 200 for x in r.err.splitlines())
    assert "(12 this run" in r.err
    # As if interrupted: the last 3 lines' results are gone, their journal entries are not.
    kept = out.read_text().splitlines()
    done = sorted(kept, key=lambda x: json.loads(x)["line"])[:9]
    out.write_text("\n".join(done) + "\n")
    r = await cli("batch", str(requests), "--out", str(out), *FAST, fake=fake)
    assert r.code == 0, r.err
    assert "resuming: 9 line(s) already finished in" in r.err
    assert "re-attaching 3 job(s)" in r.err and "lines 10, 11, 12" in r.err
    assert "(3 this run" in r.err
    assert len(fake.jobs) == 12  # nothing submitted twice


def _budget_file(path: Path) -> None:
    """Ten 6 s lines at 720p (24 credits each), a 7 s two-speaker line in turn (14 credits),
    and a video line with no length (the 5 s minimum at 480p: 10 credits)."""
    lines = [{"endpoint": "image", "image": IMAGE, "audio": AUDIO, "seconds": 6,
              "resolution": "720p"} for _ in range(10)]  # fmt: skip
    lines.append({"endpoint": "multi", "image": IMAGE, "left_audio": AUDIO, "right_audio": AUDIO,
                  "left_seconds": 3, "right_seconds": 4, "order": "left_right"})  # fmt: skip
    lines.append({"endpoint": "video", "video": VIDEO, "audio": AUDIO})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


async def test_batch_dry_run_prints_the_total_estimate(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """batch --dry-run validates every line and prints the total credit estimate (with the
    lines that gave no audio length counted at the minimum), sends nothing, needs no key."""
    requests = tmp_path / "requests.jsonl"
    _budget_file(requests)
    r = await cli("batch", str(requests), "--dry-run", "--max-credits", "100", fake=None)
    assert r.code == 0, r.err
    assert "12 line(s) would be submitted" in r.out
    assert "estimated cost: at least 264 credits" in r.out
    assert "1 line(s) give no audio length" in r.out and "over --max-credits 100" in r.out
    assert not fake.jobs


async def test_batch_max_credits_stops_submitting_and_resumes(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """batch --max-credits N submits lines while this run's estimate stays within N, then
    stops, says so in one line and exits 2. A rerun
    with a higher cap submits the rest, and nothing twice."""
    requests = tmp_path / "requests.jsonl"
    _budget_file(requests)
    out = tmp_path / "results.jsonl"
    r = await cli("batch", str(requests), "--out", str(out), "--max-credits", "100", "-c", "4",
                  *FAST, fake=fake)  # fmt: skip
    assert r.code == 2, r.err
    assert len(fake.jobs) == 4  # 4 x 24 = 96 credits; a fifth would pass 100
    assert "stopped submitting at --max-credits 100 (96 credits" in r.err
    assert "8 line(s) not submitted, from line 5" in r.err
    r = await cli("batch", str(requests), "--out", str(out), "--max-credits", "1000", *FAST,
                  fake=fake)  # fmt: skip
    assert r.code == 0, r.err
    assert len(fake.jobs) == 12
    assert "(8 this run" in r.err
