"""The README's snippets, extracted and run: a snippet that no longer works fails CI.

Every ``python`` block must parse; the Quick start program runs against the emulator; the
*Testing your code* snippet runs under pytest in a project outside this repository, with only
the configuration the README tells users to add.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from lipsync_async.testing import FakeLipsyncServer

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> list[tuple[str, str]]:
    """``(section heading, code)`` for each fenced block of ``language``, in order."""
    out = []
    heading = ""
    for match in re.finditer(
        r"^(#{2,3} [^\n]+)$|^```(\w*)\n(.*?)^```$", README.read_text(), re.M | re.S
    ):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif match.group(2) == language:
            out.append((heading, match.group(3)))
    return out


def section(language: str, heading: str) -> list[str]:
    return [code for h, code in blocks(language) if h == heading]


async def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode()


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIPSYNC_", "PYTEST"))}
    env.update(PYTHONUNBUFFERED="1", **more)
    return env


def test_every_python_snippet_parses() -> None:
    """Each ``python`` block of the README is valid Python (fragments may await at top level)."""
    found = blocks("python")
    assert len(found) >= 6
    for heading, code in found:
        try:
            compile(code, f"README.md ({heading})", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"README.md, section {heading!r}: {exc}")


async def test_quick_start_runs_against_the_emulator(tmp_path: Path) -> None:
    """The Quick start program, as printed, submits, waits and downloads out.mp4 with the key
    and API root from the environment variables it documents."""
    (program,) = [code for code in section("python", "Quick start") if "asyncio.run(" in code]
    (tmp_path / "quickstart.py").write_text(program)
    async with FakeLipsyncServer(job_duration=0.05) as fake:
        env = clean_env(LIPSYNC_API_KEY=fake.api_key, LIPSYNC_BASE_URL=fake.base_url)
        code, out = await run(sys.executable, "quickstart.py", cwd=tmp_path, env=env)
    assert code == 0, out
    assert out.startswith("submitted ")
    assert (tmp_path / "out.mp4").read_bytes()[4:8] == b"ftyp"


async def test_testing_snippet_passes_in_an_outside_project(tmp_path: Path) -> None:
    """The *Testing your code* snippet passes under pytest in a project of its own, with the
    `asyncio_mode = "auto"` setting the README shows and the installed package's fixture."""
    (toml,) = section("toml", "Testing your code")
    assert 'asyncio_mode = "auto"' in toml
    (snippet,) = section("python", "Testing your code")
    (tmp_path / "pyproject.toml").write_text(toml)
    (tmp_path / "test_pipeline.py").write_text(snippet)
    code, out = await run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert code == 0, out
    assert "1 passed" in out
