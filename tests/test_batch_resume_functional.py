"""`lipsync-async batch` resumes by request, not by line number (issue 13, item 4)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from lipsync_async.testing import FakeLipsyncServer

from .test_cli_functional import AUDIO, FAST, IMAGE, cli, fake, read_results

__all__ = ["fake"]  # the fixture, shared with test_cli_functional


def _line(prompt: str, **more: Any) -> str:
    return json.dumps(
        {"endpoint": "image", "image": IMAGE, "audio": AUDIO, "prompt": prompt, **more}
    )


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _prompts(fake: FakeLipsyncServer) -> list[str]:
    return sorted(str(job.form_state.get("prompt")) for job in fake.jobs.values())


async def test_shift_reorder_and_edit_lines_between_runs(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """Between runs a line is inserted at the top (every line shifts), two lines swap, one is
    edited, and one request appears twice: the rerun submits only the new, edited and second
    copy of the repeated request, reports the edited line by number, and the emulator's job
    count shows each request ran once per line, none twice."""
    src = tmp_path / "in.jsonl"
    out = tmp_path / "results.jsonl"
    first = [_line(f"p{i}") for i in range(10)]
    _write(src, first)
    r = await cli("batch", str(src), "--out", str(out), "-c", "4", *FAST, fake=fake)
    assert r.code == 0, r.err
    assert len(fake.jobs) == 10

    second = list(first)
    second[3], second[7] = second[7], second[3]  # reorder
    second[5] = _line("p5-edited")  # edit (line 6 of the new file, after the insert)
    second.insert(0, _line("new"))  # shift everything down one line
    second.append(_line("p2"))  # the same request as an earlier line: runs once more
    _write(src, second)
    r = await cli("batch", str(src), "--out", str(out), "-c", "4", *FAST, fake=fake)
    assert r.code == 0, r.err
    assert "resuming: 9 line(s) already finished in" in r.err  # p0..p9 but p5
    assert "1 line(s) changed since the earlier run" in r.err
    assert "lines 7 (was line 6)" in r.err
    assert "1 line(s) repeat a request" in r.err and "lines 12" in r.err
    assert "1 new line(s): lines 1" in r.err
    assert _prompts(fake) == sorted([f"p{i}" for i in range(10)] + ["new", "p5-edited", "p2"])

    # A third run of the same file sends nothing; every line has exactly one result.
    r = await cli("batch", str(src), "--out", str(out), "-c", "4", *FAST, fake=fake)
    assert r.code == 0, r.err
    assert f"resuming: {len(second)} line(s) already finished in" in r.err
    assert len(fake.jobs) == 13
    by_digest: dict[str, int] = {}
    for record in read_results(out):
        assert record["status"] == "completed"
        by_digest[str(record["digest"])] = by_digest.get(str(record["digest"]), 0) + 1
    assert sorted(by_digest.values()) == [1] * 11 + [2]  # p2 twice, on two lines


async def test_local_file_line_without_public_url_is_skipped_not_fatal(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """A line naming a local file without --public-url is reported with its number and
    skipped; the rest of the batch runs (exit 2 for the bad line)."""
    media = tmp_path / "face.png"
    media.write_bytes(b"\x89PNG")
    src = tmp_path / "in.jsonl"
    _write(
        src,
        [
            _line("a"),
            json.dumps({"endpoint": "image", "image": str(media), "audio": AUDIO}),
            _line("b"),
        ],
    )
    out = tmp_path / "results.jsonl"
    r = await cli("batch", str(src), "--out", str(out), *FAST, fake=fake)
    assert r.code == 2, r.err
    assert "in.jsonl:2: skipped" in r.err and "--public-url" in r.err
    assert sorted(rec["line"] for rec in read_results(out)) == [1, 3]  # type: ignore[type-var]
    assert len(fake.jobs) == 2


async def test_batch_with_a_receiver_settles_lost_answers(
    fake: FakeLipsyncServer, tmp_path: Path
) -> None:
    """With --public-url, submits whose answer was dropped are settled by their delivery's
    token before the run reports them: every line completes, one job each, none uncertain."""
    fake.drop_rate = 0.3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = tmp_path / "in.jsonl"
    _write(src, [_line(f"q{i}") for i in range(20)])
    out = tmp_path / "results.jsonl"
    r = await cli(
        "batch", str(src), "--out", str(out), "-c", "8", *FAST,
        "--public-url", f"http://127.0.0.1:{port}", "--listen-port", str(port),
        "--settle-timeout", "20",
        fake=fake,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert fake.requests["dropped"] > 0
    records = read_results(out)
    assert len(records) == 20 and {rec["status"] for rec in records} == {"completed"}
    assert len(fake.jobs) == 20
    assert sorted(str(rec["id"]) for rec in records) == sorted(fake.jobs)
