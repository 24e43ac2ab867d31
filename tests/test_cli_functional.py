"""The ``lipsync-async`` command, driven as a subprocess against an emulator on loopback.

The emulator runs in the test's own event loop, so every CLI call is awaited as an asyncio
subprocess (a blocking ``subprocess.run`` would stall the server it talks to).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import attrs
import pytest

from lipsync_async.testing import FakeLipsyncServer

KEY = "sk_test_cli_" + "k3y" * 6
WRONG_KEY = "sk_wrong_" + "x7" * 8
IMAGE = "https://media.example.com/face.png"
AUDIO = "https://media.example.com/voice.mp3"
VIDEO = "https://media.example.com/clip.mp4"
FAST = ("--poll-interval", "0.05")
MULTI = ("multi", "--image", IMAGE, "--left-audio", AUDIO, "--right-audio", AUDIO)


@attrs.define
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
async def fake() -> AsyncIterator[FakeLipsyncServer]:
    async with FakeLipsyncServer(api_key=KEY, job_duration=0.05, seed=2) as server:
        yield server


def _env(fake: FakeLipsyncServer | None, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200")
    if fake is not None:
        env.update(LIPSYNC_API_KEY=fake.api_key, LIPSYNC_BASE_URL=fake.base_url)
    env.update(more)
    return env


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lipsync_async.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def cli(
    *args: str, fake: FakeLipsyncServer | None, timeout: float = 30, **env: str
) -> Result:
    process = await start(*args, env=_env(fake, **env))
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    result = Result(process.returncode, out.decode(), err.decode())
    for key in (KEY, WRONG_KEY):
        assert key not in result.out and key not in result.err, "the API key was printed"
    return result


# -- single submits -----------------------------------------------------------------------------


async def test_submit_prints_only_the_job_id(fake: FakeLipsyncServer) -> None:
    """Without --wait a submit prints the job id alone on stdout (for `ID=$(...)`), exit 0."""
    r = await cli("image", "--image", IMAGE, "--audio", AUDIO, fake=fake)
    assert r.code == 0, r.err
    job_id = r.out.strip()
    assert str(uuid.UUID(job_id)) == job_id and job_id in fake.jobs


async def test_submit_wait_json_and_download(fake: FakeLipsyncServer, tmp_path: Path) -> None:
    """--wait --json --download: waits, saves the output, prints the state JSON with the file."""
    target = tmp_path / "out.mp4"
    r = await cli(
        "video", "--video", VIDEO, "--audio", AUDIO, "--resolution", "720p", "--seed", "7",
        "--wait", "--json", "--download", str(target), *FAST, fake=fake,
    )  # fmt: skip
    assert r.code == 0, r.err
    state = json.loads(r.out)
    assert state["status"] == "completed" and state["file"] == str(target)
    assert target.read_bytes()[4:8] == b"ftyp"
    assert fake.jobs[state["id"]].form_state == {
        "video": VIDEO, "audio": AUDIO, "resolution": "720p", "seed": 7,
    }  # fmt: skip


async def test_wait_prints_a_human_line(fake: FakeLipsyncServer) -> None:
    """--wait without --json prints one line naming the job and its output URL."""
    r = await cli("image", "--image", IMAGE, "--audio", AUDIO, "--wait", *FAST, fake=fake)
    assert r.code == 0, r.err
    assert "completed" in r.out and "/files/" in r.out


async def test_extra_values_are_json_decoded_when_they_parse(fake: FakeLipsyncServer) -> None:
    """--extra KEY=VALUE passes model fields through: JSON values decoded, others as strings."""
    r = await cli(
        "multi", "--image", IMAGE, "--left-audio", AUDIO, "--right-audio", AUDIO,
        "--order", "left_right", "--extra", "steps=30", "--extra", "style=anime",
        "--extra", 'cfg={"a": [1, 2]}', fake=fake,
    )  # fmt: skip
    assert r.code == 0, r.err
    form = fake.jobs[r.out.strip()].form_state
    assert form["steps"] == 30 and form["style"] == "anime" and form["cfg"] == {"a": [1, 2]}
    assert form["order"] == "left_right"


async def test_dry_run_estimates_and_sends_nothing(fake: FakeLipsyncServer) -> None:
    """--dry-run validates, prints the formState and the credit estimate, and sends nothing
    (no key needed)."""
    r = await cli(
        "image", "--image", IMAGE, "--audio", AUDIO, "--resolution", "720p",
        "--seconds", "12", "--dry-run", fake=None,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "48 credits" in r.out and IMAGE in r.out
    r = await cli(
        "multi", "--image", IMAGE, "--left-audio", AUDIO, "--right-audio", AUDIO,
        "--left-seconds", "6", "--right-seconds", "4", "--order", "left_right",
        "--dry-run", "--json", fake=fake,
    )  # fmt: skip
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["credits"] == 20.0 and plan["endpoint"] == "lipsync-image-multi"
    assert not fake.jobs and not fake.requests


async def test_cost_command() -> None:
    """`cost` prints the SPEC's billing: 720p 4 credits/s; multi sums unless meanwhile."""
    r = await cli("cost", "--resolution", "720p", "--seconds", "12", fake=None)
    assert (r.code, r.out.strip()) == (0, "48 credits at 720p")
    r = await cli("cost", "--left-seconds", "6", "--right-seconds", "4", "--json", fake=None)
    assert r.code == 0 and json.loads(r.out)["credits"] == 12.0
    r = await cli("cost", "--seconds", "0", fake=None)
    assert r.code == 2 and "seconds" in r.err


async def test_local_file_without_public_url_is_a_usage_error(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """A media flag naming a local file needs --public-url (the service must fetch it): exit 2
    with one line that names the flag and says so (no note that the command goes on, as it
    does with --public-url), before any request."""
    face = tmp_path / "face.png"
    face.write_bytes(b"\x89PNG fake")
    r = await cli("image", "--image", str(face), "--audio", AUDIO, fake=fake)
    assert r.code == 2
    assert r.err.startswith("error: --image: ") and "--public-url" in r.err, r.err
    assert r.err.count("\n") == 1, r.err
    assert not fake.jobs


# -- reading jobs -------------------------------------------------------------------------------


async def test_status_and_wait_with_download(fake: FakeLipsyncServer, tmp_path: Path) -> None:
    """`status ID` reads one state; `wait ID ID --download DIR` waits for both, saves each
    output as DIR/ID.mp4 and exits 1 because one of them failed."""
    ok = (await cli("image", "--image", IMAGE, "--audio", AUDIO, fake=fake)).out.strip()
    bad = (
        await cli("image", "--image", IMAGE, "--audio", AUDIO, "--prompt", "[fail]", fake=fake)
    ).out.strip()
    r = await cli("wait", ok, bad, "--download", str(tmp_path / "dl"), *FAST, fake=fake)
    assert r.code == 1, r.err
    assert (tmp_path / "dl" / f"{ok}.mp4").exists()
    assert not (tmp_path / "dl" / f"{bad}.mp4").exists()
    assert f"{ok} completed" in r.out and f"{bad} failed" in r.out
    r = await cli("status", ok, "--json", fake=fake)
    assert r.code == 0 and json.loads(r.out)["status"] == "completed"
    r = await cli("status", bad, fake=fake)
    assert r.code == 1 and "failed" in r.out


# -- exit codes ---------------------------------------------------------------------------------


async def test_exit_1_when_the_job_fails(fake: FakeLipsyncServer) -> None:
    """A job the service fails exits 1 with its error on one stderr line, no traceback."""
    r = await cli(
        "image", "--image", IMAGE, "--audio", AUDIO, "--prompt", "[fail]", "--wait", *FAST,
        fake=fake,
    )  # fmt: skip
    assert r.code == 1
    assert "failed" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("image", "--image", "ftp://nope", "--audio", AUDIO), "image"),
        (("image", "--image", IMAGE), "--audio"),
        (("image", "--image", IMAGE, "--audio", AUDIO, "--resolution", "1080p"), "resolution"),
        (("image", "--image", IMAGE, "--audio", AUDIO, "--extra", "novalue"), "KEY=VALUE"),
        ((*MULTI, "--extra", "order=x"), "extra"),
        (("batch", "missing.jsonl", "--out", "x.jsonl"), "missing.jsonl"),
    ],
)
async def test_exit_2_on_bad_usage_or_input(
    fake: FakeLipsyncServer, args: tuple[str, ...], needle: str
) -> None:
    """Bad flags or input fail before any request with exit 2 and a message naming the field."""
    r = await cli(*args, fake=fake)
    assert r.code == 2, r.err
    assert needle in r.err and "Traceback" not in r.err
    assert not fake.jobs


async def test_exit_2_without_a_key(fake: FakeLipsyncServer) -> None:
    """No LIPSYNC_API_KEY and no --api-key: exit 2, telling how to pass one."""
    r = await cli("image", "--image", IMAGE, "--audio", AUDIO, fake=None)
    assert r.code == 2 and "LIPSYNC_API_KEY" in r.err


async def test_exit_3_on_api_errors_and_the_key_is_never_shown(fake: FakeLipsyncServer) -> None:
    """A refused key (401) exits 3 in one line; with --debug a traceback, yet neither the
    wrong key nor the right one appears anywhere (checked by `cli` on every call)."""
    r = await cli("image", "--image", IMAGE, "--audio", AUDIO, "--api-key", WRONG_KEY, fake=fake)
    assert r.code == 3 and "401" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = await cli(
        "image", "--image", IMAGE, "--audio", AUDIO, "--debug", fake=fake,
        LIPSYNC_API_KEY=WRONG_KEY,
    )  # fmt: skip
    assert r.code == 3 and "Traceback" in r.err
    r = await cli("status", str(uuid.uuid4()), "--debug", *FAST, fake=fake)
    assert r.code == 2 and "404" in r.err  # an unknown id is bad input (README's table)


async def test_exit_3_on_network_errors(fake: FakeLipsyncServer) -> None:
    """No server at the base URL: exit 3, one line naming the connection failure."""
    r = await cli(
        "image", "--image", IMAGE, "--audio", AUDIO, "--base-url", "http://127.0.0.1:9/api/v1",
        "--max-retries", "0", fake=fake,
    )  # fmt: skip
    assert r.code == 3 and "connect" in r.err


async def test_exit_3_when_a_submit_is_uncertain(fake: FakeLipsyncServer) -> None:
    """A submit whose answer is lost exits 3 and tells the user the job may exist."""
    fake.drop_rate = 1.0
    r = await cli("image", "--image", IMAGE, "--audio", AUDIO, fake=fake)
    assert r.code == 3
    assert "may exist" in r.err
    assert len(fake.jobs) == 1  # created once, never resubmitted


# -- batch --------------------------------------------------------------------------------------

BAD_LINES = {11: "{not json", 52: "[1, 2]", 78: '{"endpoint": "nope"}', 150: ""}


def write_batch(path: Path, count: int = 200) -> set[int]:
    """``count`` lines over the three endpoints; a few bad ones and a few that fail."""
    good = set()
    with path.open("w") as fh:
        for n in range(1, count + 1):
            if n in BAD_LINES:
                text = BAD_LINES[n]
                if n == 150:
                    text = json.dumps({"endpoint": "image", "image": "ftp://x", "audio": AUDIO})
                fh.write(text + "\n")
                continue
            good.add(n)
            prompt = "[fail]" if n % 50 == 7 else f"line {n}"
            if n % 3 == 0:
                line = {"endpoint": "video", "video": VIDEO, "audio": AUDIO, "prompt": prompt}
            elif n % 3 == 1:
                line = {"endpoint": "image", "image": IMAGE, "audio": AUDIO, "prompt": prompt}
            else:
                line = {"endpoint": "multi", "image": IMAGE, "left_audio": AUDIO,
                        "right_audio": AUDIO, "prompt": prompt}  # fmt: skip
            fh.write(json.dumps(line) + "\n")
    return good


def read_results(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_batch_of_200_with_bad_lines_then_resume(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """A 200-line batch: bad lines are reported with their numbers and skipped, every good
    line gets one result line (with its line number), failed jobs make the exit 1; a rerun
    skips every finished line and submits nothing."""
    good = write_batch(tmp_path / "in.jsonl")
    out = tmp_path / "results.jsonl"
    args = ("batch", str(tmp_path / "in.jsonl"), "--out", str(out), "-c", "32", *FAST)
    r = await cli(*args, fake=fake)
    assert r.code == 1, r.err
    for n in BAD_LINES:
        assert f"in.jsonl:{n}: skipped" in r.err
    results = read_results(out)
    assert sorted(rec["line"] for rec in results) == sorted(good)  # type: ignore[type-var]
    failed = {rec["line"] for rec in results if rec["status"] == "failed"}
    assert failed == {n for n in good if n % 50 == 7}
    assert all(rec["status"] == "completed" for rec in results if rec["line"] not in failed)
    assert "done" in r.err and "pending" in r.err  # the progress bar's last frame
    assert len(fake.jobs) == len(good)

    r = await cli(*args, fake=fake)
    assert r.code == 1, r.err
    assert f"resuming: {len(good)} line(s) already" in r.err
    assert len(fake.jobs) == len(good)  # nothing submitted twice
    assert len(read_results(out)) == len(good)


async def test_batch_ctrl_c_keeps_finished_lines_and_resumes_without_paying_twice(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """SIGINT mid-batch exits 130 with every result line complete; the rerun attaches to the
    jobs that were in flight (journal) and finishes the rest: one job per line, never two."""
    good = write_batch(tmp_path / "in.jsonl")
    out = tmp_path / "results.jsonl"
    args = ("batch", str(tmp_path / "in.jsonl"), "--out", str(out), "-c", "8", *FAST)
    fake.job_duration = 0.4
    process = await start(*args, env=_env(fake))
    try:
        async with asyncio.timeout(20):
            # Another process writes the file: there is no event to wait on, so poll it.
            while not out.exists() or out.read_text().count("\n") < 8:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Rerun to resume" in err
    assert KEY.encode() not in err
    kept = read_results(out)  # every line parses: nothing half-written
    assert 8 <= len(kept) < len(good)
    in_flight = len(fake.jobs) - len(kept)
    assert in_flight > 0

    fake.job_duration = 0.05
    r = await cli(*args, fake=fake)
    assert r.code == 1, r.err  # the [fail] lines
    assert sorted(rec["line"] for rec in read_results(out)) == sorted(good)  # type: ignore[type-var]
    assert len(fake.jobs) == len(good)  # in-flight jobs were attached by id, not resubmitted


# -- listen -------------------------------------------------------------------------------------


async def test_listen_prints_deliveries() -> None:
    """`listen` prints its webhook URL on stderr, each accepted delivery on stdout, and exits
    130 on Ctrl-C (the README's table); a POST without the secret is refused."""
    process = await start("listen", "--json", env=_env(None))
    assert process.stderr is not None and process.stdout is not None
    try:
        url = ""
        while not url:
            line = (await asyncio.wait_for(process.stderr.readline(), 15)).decode()
            assert line, "listen exited early"
            if "webhook URL" in line:
                url = line.split()[-1]
        state = {"id": "job-1", "model": "lipsync-image", "status": "completed",
                 "output": "https://cdn.example.com/1.mp4", "error": "",
                 "executionTime": 1200, "timings": None}  # fmt: skip
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=state) as answer:
                assert answer.status == 200
            async with http.post(url.rsplit("/", 1)[0] + "/wrong-secret-000000", json=state) as a:
                assert a.status == 404
        printed = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
        assert printed["id"] == "job-1" and printed["status"] == "completed"
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
